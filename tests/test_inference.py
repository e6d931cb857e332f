"""Inference: whole vs sliding window, flips, ensembles; predicting a dataset folder on disk."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from vox2vox.config import Config
from vox2vox.data.labels import get_convention
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.inference import (
    FLIP_AXES,
    InferenceConfig,
    fast_inference_model,
    predict_dataset,
    predict_probabilities,
    read_model,
)
from vox2vox.infer.options import PredictionOptions
from vox2vox.model.blocks import PhaseTransposedConv3d
from vox2vox.model.checkpoint import Checkpoint, save_checkpoint
from vox2vox.model.generator import Generator, GeneratorConfig


def make_generator(seed: int = 0, **overrides) -> Generator:
    torch.manual_seed(seed)
    cfg = dict(in_channels=2, n_classes=3, base_filters=4, max_filters=8, depth=2, bottleneck_blocks=1,
               dropout=0.0, norm="none")
    cfg.update(overrides)
    return Generator(GeneratorConfig(**cfg)).eval()


def image(shape=(2, 40, 40, 24), seed=1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_whole_volume_equals_one_forward_pass_and_pads_after_the_data():
    net = make_generator()
    x = image((2, 30, 33, 20))  # not multiples of 4: padded to 32x36x20, then cropped
    probs = predict_probabilities([net], x, config=InferenceConfig(mode="whole"))
    assert probs.shape == (3, 30, 33, 20) and probs.dtype == np.float32
    padded = torch.nn.functional.pad(torch.from_numpy(x)[None], (0, 0, 0, 3, 0, 2))
    with torch.inference_mode():
        expected = net(padded)[0, :, :30, :33, :20].numpy()
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_sliding_equals_whole_where_theory_says_it_must():
    # Kernel 2, stride 2 down and up, no bottleneck: each output voxel depends only on its aligned
    # 4^3 block of input (2 ** depth), so windows whose corners lie on multiples of 4 compute
    # exactly what the whole pass computes, and any blend of equal values is that value.
    net = make_generator(kernel_size=2, bottleneck_blocks=0)
    x = image((2, 32, 24, 16))  # windows of 16 at overlap 0.5 start at 0, 8, 16 (32 - 16) and 0, 8
    whole = predict_probabilities([net], x, config=InferenceConfig(mode="whole"))
    sliding = predict_probabilities([net], x, config=InferenceConfig(mode="sliding", window=(16, 16, 16), overlap=0.5))
    np.testing.assert_allclose(sliding, whole, rtol=0, atol=1e-5)


def test_sliding_approximates_whole_for_a_wide_receptive_field():
    # Kernel 4 and a bottleneck: voxels near a window's inner border see zeros instead of their
    # neighbours, so windows differ from the whole pass there; Gaussian blending weights window
    # centres, so the blend stays close. No exact bound: a loose tolerance on the mean and a
    # looser one on the worst voxel, and the class decisions almost all agree.
    net = make_generator(kernel_size=4, bottleneck_blocks=1)
    x = image((2, 48, 48, 32))
    whole = predict_probabilities([net], x, config=InferenceConfig(mode="whole"))
    sliding = predict_probabilities([net], x, config=InferenceConfig(mode="sliding", window=(32, 32, 32), overlap=0.5))
    diff = np.abs(sliding - whole)
    assert diff.mean() < 0.02
    assert diff.max() < 0.5
    assert (sliding.argmax(0) == whole.argmax(0)).mean() > 0.95


def test_flip_tta_is_the_mean_of_the_manual_flips():
    net = make_generator(kernel_size=4)
    x = image((2, 16, 20, 12))
    tta = predict_probabilities([net], x, config=InferenceConfig(mode="whole", tta_flips=True))
    t = torch.from_numpy(x)[None]
    outs = []
    with torch.inference_mode():
        for axes in FLIP_AXES:
            xi = torch.flip(t, axes) if axes else t
            yi = net(xi)
            outs.append((torch.flip(yi, axes) if axes else yi)[0].numpy())
    assert len(outs) == 8
    np.testing.assert_allclose(tta, np.mean(outs, axis=0), rtol=0, atol=1e-6)
    # Flips matter for this network (otherwise the test would prove nothing).
    plain = predict_probabilities([net], x, config=InferenceConfig(mode="whole"))
    assert np.abs(plain - tta).max() > 1e-3


def test_ensemble_of_identical_models_equals_one_model_and_of_two_is_their_mean():
    a, b = make_generator(seed=0), make_generator(seed=0)
    c = make_generator(seed=5)
    x = image((2, 16, 16, 16))
    one = predict_probabilities([a], x, config=InferenceConfig(mode="whole"))
    np.testing.assert_array_equal(predict_probabilities([a, b], x, config=InferenceConfig(mode="whole")), one)
    other = predict_probabilities([c], x, config=InferenceConfig(mode="whole"))
    mixed = predict_probabilities([a, c], x, config=InferenceConfig(mode="whole"))
    np.testing.assert_allclose(mixed, (one + other) / 2, rtol=0, atol=1e-6)


def test_channels_last_gives_the_same_probabilities():
    net = make_generator(kernel_size=4)
    x = image((2, 16, 16, 16))
    plain = predict_probabilities([net], x, config=InferenceConfig(mode="whole"))
    cl = predict_probabilities([net], x, config=InferenceConfig(mode="whole", channels_last=True))
    np.testing.assert_allclose(cl, plain, rtol=0, atol=1e-5)


def test_auto_mode_switches_to_sliding_above_the_voxel_budget():
    net = make_generator(kernel_size=2, bottleneck_blocks=0)
    x = image((2, 16, 16, 16))
    small_budget = InferenceConfig(mode="auto", max_whole_voxels=1000, window=(8, 8, 8), overlap=0.5)
    np.testing.assert_allclose(
        predict_probabilities([net], x, config=small_budget),
        predict_probabilities([net], x, config=InferenceConfig(mode="whole")),
        atol=1e-5,
    )


def test_bad_inputs_and_options_are_one_line_errors():
    net = make_generator()
    with pytest.raises(Vox2VoxError, match=r"\(C, D, H, W\)"):
        predict_probabilities([net], np.zeros((8, 8, 8), np.float32))
    with pytest.raises(Vox2VoxError, match="no model"):
        predict_probabilities([], image())
    with pytest.raises(Vox2VoxError, match="overlap"):
        InferenceConfig(overlap=1.0)
    with pytest.raises(Vox2VoxError, match="amp"):
        InferenceConfig(amp="fp8")  # type: ignore[arg-type]


# ---- predicting a dataset on disk -------------------------------------------------------------

def save_tiny_checkpoint(path, *, in_channels=1, n_classes=2, convention="binary", channels=("image",), seed=0):
    """A random-weight checkpoint with the state keys prediction needs (as training writes them)."""
    config = Config().with_overrides([
        f"generator.in_channels={in_channels}", f"generator.n_classes={n_classes}",
        "generator.base_filters=4", "generator.max_filters=8", "generator.depth=2",
        "generator.bottleneck_blocks=1", "generator.norm=\"none\"", "generator.dropout=0.0",
        "preprocess.pad_multiple=4",
    ])
    torch.manual_seed(seed)
    generator = Generator(config.generator)
    state = {"channels": list(channels), "layout": "single", "convention": get_convention(convention).to_json()}
    save_checkpoint(path, Checkpoint(config=config.to_dict(), generator=generator.state_dict(), state=state))
    return path


def write_manifest_folder(root, n=3, shape=(14, 12, 10)):
    rng = np.random.default_rng(0)
    lines = ["id,image"]
    for i in range(n):
        data = rng.normal(100, 20, size=shape).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.2, 2.0, 1.0])), root / f"c{i}.nii.gz")
        lines.append(f"c{i},c{i}.nii.gz")
    (root / "cases.csv").write_text("\n".join(lines) + "\n")
    return root / "cases.csv"


def test_failing_case_is_reported_and_the_others_go_on(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "m.safetensors")
    manifest = write_manifest_folder(tmp_path)
    (tmp_path / "c1.nii.gz").write_bytes(b"not a nifti file at all")
    out = tmp_path / "pred"
    report = predict_dataset([read_model(ckpt)], manifest, out, PredictionOptions(progress=False))
    assert sorted(report.written) == ["c0", "c2"]
    assert list(report.failed) == ["c1"] and "c1.nii.gz" in report.failed["c1"]
    # No temporary left; labels.json records the label convention for `evaluate`.
    assert sorted(p.name for p in out.iterdir()) == ["c0.nii.gz", "c2.nii.gz", "labels.json"]


def test_existing_outputs_are_replaced_atomically_and_probabilities_saved(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "m.safetensors")
    manifest = write_manifest_folder(tmp_path, n=1)
    out = tmp_path / "pred"
    out.mkdir()
    (out / "c0.nii.gz").write_bytes(b"old junk")
    model = read_model(ckpt)
    report = predict_dataset([model], manifest, out, PredictionOptions(progress=False, save_probabilities="npz"))
    labels = nib.load(out / "c0.nii.gz")
    assert labels.shape == (14, 12, 10) and np.issubdtype(labels.get_data_dtype(), np.integer)
    with np.load(report.probabilities["c0"]) as npz:
        probs = npz["probabilities"]
        np.testing.assert_allclose(npz["affine"], labels.affine)
        assert list(npz["labels"]) == [0, 1]
    # nnU-Net order: (C, Z, Y, X), the reverse of the NIfTI voxel axes.
    assert probs.shape == (2, 10, 12, 14) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0).transpose(2, 1, 0), np.asarray(labels.dataobj))

    report = predict_dataset([model], manifest, out, PredictionOptions(progress=False, save_probabilities="nifti"))
    probs_img = nib.load(report.probabilities["c0"])
    assert probs_img.shape == (14, 12, 10, 2) and probs_img.get_data_dtype() == np.float32
    np.testing.assert_allclose(probs_img.affine, labels.affine)
    np.testing.assert_allclose(np.asarray(probs_img.dataobj), probs.transpose(3, 2, 1, 0), atol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == ["c0.nii.gz", "c0.npz", "c0_probs.nii.gz", "labels.json"]


def test_postprocessing_is_applied_to_written_labels(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "m.safetensors")
    manifest = write_manifest_folder(tmp_path, n=1)
    model = read_model(ckpt)
    plain = predict_dataset([model], manifest, tmp_path / "a", PredictionOptions(progress=False))
    largest = predict_dataset([model], manifest, tmp_path / "b", PredictionOptions(progress=False, largest_component="class"))
    a = np.asarray(nib.load(plain.written["c0"]).dataobj)
    b = np.asarray(nib.load(largest.written["c0"]).dataobj)
    # Post-processing only removes foreground, leaving one component.
    assert np.all(b <= a)
    from scipy import ndimage

    assert ndimage.label(b == 1, structure=np.ones((3, 3, 3)))[1] <= 1


def test_ensemble_members_must_agree(tmp_path):
    one = read_model(save_tiny_checkpoint(tmp_path / "a.safetensors"))
    other = read_model(save_tiny_checkpoint(tmp_path / "b.safetensors", n_classes=3,
                                            convention={"values": {"0": "bg", "1": "a", "2": "b"}}))
    manifest = write_manifest_folder(tmp_path, n=1)
    with pytest.raises(Vox2VoxError, match="ensemble"):
        predict_dataset([one, other], manifest, tmp_path / "p", PredictionOptions(progress=False))


def test_fast_layers_match_the_transposed_convs_and_leave_the_model_alone():
    net = make_generator(kernel_size=4)
    fast = fast_inference_model(net)
    assert isinstance(fast.head, PhaseTransposedConv3d) and isinstance(net.head, torch.nn.ConvTranspose3d)
    assert fast.encoder is net.encoder  # shared, not copied
    x = torch.from_numpy(image((2, 16, 12, 8)))[None]
    with torch.inference_mode():
        np.testing.assert_allclose(fast(x).numpy(), net(x).numpy(), rtol=0, atol=1e-6)
        deconv = torch.nn.ConvTranspose3d(5, 3, 4, 2, 1)
        np.testing.assert_allclose(PhaseTransposedConv3d(deconv)(x[:, :1].expand(1, 5, -1, -1, -1)).numpy(),
                                   deconv(x[:, :1].expand(1, 5, -1, -1, -1)).numpy(), rtol=0, atol=1e-5)
    assert fast_inference_model(net) is fast  # cached
    with torch.no_grad():
        net.head.weight.mul_(2.0)  # as an optimiser step would: the cache must notice
    assert fast_inference_model(net) is not fast
    plain = predict_probabilities([net], image((2, 16, 12, 8)), config=InferenceConfig(mode="whole", fast_layers=False))
    quick = predict_probabilities([net], image((2, 16, 12, 8)), config=InferenceConfig(mode="whole"))
    np.testing.assert_allclose(quick, plain, rtol=0, atol=1e-6)


def test_postprocessing_the_convention_cannot_do_is_refused_before_any_case(tmp_path):
    model = read_model(save_tiny_checkpoint(tmp_path / "m.safetensors"))  # binary: no ET region
    manifest = write_manifest_folder(tmp_path, n=1)
    with pytest.raises(Vox2VoxError, match="ET"):
        predict_dataset([model], manifest, tmp_path / "p", PredictionOptions(progress=False, min_et_voxels=10))
    assert not (tmp_path / "p").exists()


def test_bf16_on_the_cpu_is_close_to_float32_and_fp16_is_refused():
    net = make_generator(kernel_size=4)
    x = image((2, 16, 16, 16))
    fp32 = predict_probabilities([net], x, config=InferenceConfig(mode="whole"))
    bf16 = predict_probabilities([net], x, config=InferenceConfig(mode="whole", amp="bf16"))
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16.sum(0), 1.0, atol=1e-5)  # the softmax stays float32
    assert np.abs(bf16 - fp32).mean() < 0.02
    assert (bf16.argmax(0) == fp32.argmax(0)).mean() > 0.9
    with pytest.raises(Vox2VoxError, match="fp16"):
        predict_probabilities([net], x, config=InferenceConfig(mode="whole", amp="fp16"))


def test_the_foreground_threshold_moves_the_boundary_for_classes_and_regions():
    from vox2vox.model.outputs import output_head

    binary = output_head(get_convention("binary"))
    p_fg = np.array([0.1, 0.25, 0.35, 0.45, 0.55])
    probs = np.stack([1 - p_fg, p_fg]).reshape(2, 5, 1, 1)
    assert binary.to_classes(probs).ravel().tolist() == [0, 0, 0, 0, 1]
    assert binary.to_classes(probs, 0.3).ravel().tolist() == [0, 0, 1, 1, 1]
    # Several classes: the threshold decides foreground (1 - P(background)), the class is the most
    # probable foreground class, even where the background alone is the most probable.
    three = output_head(get_convention("brats"))
    probs = np.zeros((4, 2, 1, 1))
    probs[:, 0, 0, 0] = [0.4, 0.35, 0.15, 0.1]
    probs[:, 1, 0, 0] = [0.8, 0.05, 0.1, 0.05]
    assert three.to_classes(probs).ravel().tolist() == [0, 0]
    assert three.to_classes(probs, 0.5).ravel().tolist() == [1, 0]
    # Regions (WT, TC, ET sigmoids): every region counts from the threshold on.
    regions = output_head(get_convention("brats"), "regions")
    sig = np.array([0.45, 0.35, 0.1]).reshape(3, 1, 1, 1)
    assert regions.to_classes(sig).item() == 0
    assert regions.to_classes(sig, 0.4).item() == regions.region_class[0]
    assert regions.to_classes(sig, 0.3).item() == regions.region_class[1]
    for bad in (0, 1, 1.5, -0.2, float("nan"), True):
        with pytest.raises(Vox2VoxError, match="threshold"):
            binary.to_classes(probs[:2], bad)


def test_predict_applies_the_threshold_training_chose_and_the_command_line_overrides_it(tmp_path, capsys):
    from vox2vox.cli import main
    from vox2vox.model.checkpoint import load_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "m.safetensors")
    manifest = write_manifest_folder(tmp_path, n=1)

    def foreground(name, *flags):
        assert main(["predict", "--model", str(ckpt), "--input", str(manifest), "--output", str(tmp_path / name),
                     "--no-progress", *flags]) == 0
        return int((np.asarray(nib.load(tmp_path / name / "c0.nii.gz").dataobj) > 0).sum())

    plain = foreground("plain")
    low = foreground("low", "--threshold", "0.05")
    high = foreground("high", "--threshold", "0.95")
    assert high <= plain <= low and high < low  # a random model's probabilities spread around 0.5
    checkpoint = load_checkpoint(ckpt)
    checkpoint.state["predict"] = {"tta": False, "largest_component": "off", "foreground_threshold": 0.05}
    save_checkpoint(ckpt, checkpoint)
    assert foreground("recorded") == low
    assert foreground("forced_argmax", "--threshold", "argmax") == plain
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", str(ckpt), "--input", str(manifest), "--output", str(tmp_path / "x"),
              "--threshold", "1.5"])
    assert exit_info.value.code == 2 and "strictly between 0 and 1" in capsys.readouterr().err
    checkpoint.state["predict"]["foreground_threshold"] = "high"
    save_checkpoint(ckpt, checkpoint)
    assert main(["predict", "--model", str(ckpt), "--input", str(manifest), "--output", str(tmp_path / "y"),
                 "--no-progress"]) == 2
    assert "recorded foreground threshold 'high'" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
