"""The translate task: training learns, predictions sit on the input grid, metrics are right,
--fill-missing segments cases without a channel, and bad task configs are one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import vox2vox.train.training as training
from helpers import (
    TINY,
    assert_user_error,
    cli,
    make_manifest,
    tiny_brats_segmenter,
    tiny_overrides,
)
from vox2vox.data.cases import CaseFiles
from vox2vox.data.io import read_volume
from vox2vox.data.layouts import discover
from vox2vox.data.preprocessing import PreprocessConfig
from vox2vox.data.synthetic import write_brats_folder
from vox2vox.data.translation import read_translation_case, restore_synthesis
from vox2vox.infer.inference import read_model
from vox2vox.infer.translation import synthesise_case
from vox2vox.model.checkpoint import file_sha256, load_checkpoint, read_metadata
from vox2vox.model.residual import build_generator
from vox2vox.model.translation import TaskConfig, translation_loss
from vox2vox.report.image_metrics import mae, normalise_pair, psnr, ssim, translation_scores

SHAPE = (32, 32, 32)

#: T1 -> FLAIR with tiny networks: seconds on one core.
TRANSLATE = tiny_overrides({
    "task.kind": '"translate"', "task.source": '["t1"]', "task.target": '["flair"]',
    "train.patch_size": "[32,32,32]", "train.batch_size": "2", "train.patches_per_case": "2",
    "train.foreground_prob": "1.0", "data.val_cases": "1", "train.device": '"cpu"',
    "optim.lr_g": "0.002", "augment.p_untouched": "1.0", "generator.dropout": "0.0",
})


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms") / "data"
    write_brats_folder(root, n_cases=4, seed=3, shape=SHAPE)
    return root


@pytest.fixture(scope="module")
def translator(phantoms, tmp_path_factory) -> Path:
    """A T1 -> FLAIR model trained for a few seconds (a module fixture: several tests use it)."""
    run = tmp_path_factory.mktemp("runs") / "t1-flair"
    code = _cli_main("train", "--config", "paper", "--data", phantoms, "--out", run, *TRANSLATE,
                     "--set", "train.epochs=20", "--set", "train.val_every=20")
    assert code == 0
    return run


def _cli_main(*argv) -> int:
    from vox2vox.cli import main

    return main([str(a) for a in argv])


@pytest.mark.slow
def test_translation_learns_beyond_the_untrained_model(phantoms, translator):
    model = read_model(translator)
    assert model.config.task.translate and model.config.generator.output == "linear"
    assert model.config.generator.in_channels == 1 and model.config.generator.n_classes == 1
    untrained = dataclasses.replace(model, generator=_fresh_generator(model))
    split = json.loads((translator / "split.json").read_text())
    cases = {c.case_id: c for c in discover(phantoms).cases}
    scores: dict[str, dict[str, list[float]]] = {"trained": {}, "untrained": {}}
    for name, m in (("trained", model), ("untrained", untrained)):
        for part in ("train", "val"):
            for case_id in split[part]:
                volumes, scale, _ = synthesise_case([m], cases[case_id])
                assert scale == "z-scored"
                real, _ = read_volume(cases[case_id].channels["flair"])
                got = translation_scores(volumes[0], real, real > 0)
                for metric in ("ssim", "mae"):
                    scores[name].setdefault(f"{part}_{metric}", []).append(got[metric])
    trained = {k: float(np.mean(v)) for k, v in scores["trained"].items()}
    untrained = {k: float(np.mean(v)) for k, v in scores["untrained"].items()}
    # The phantoms' voxel noise is independent between channels, so no synthesis reaches a high
    # SSIM on unseen cases in seconds; the training cases show learning, the held-out case a lower error.
    assert trained["train_ssim"] > untrained["train_ssim"] + 0.1, (trained, untrained)
    assert trained["train_mae"] < untrained["train_mae"] - 0.1, (trained, untrained)
    assert trained["val_mae"] < untrained["val_mae"], (trained, untrained)


def _fresh_generator(model) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_generator(model.config.generator).eval()


@pytest.mark.slow
def test_synthesised_volume_is_float32_on_the_input_grid(phantoms, translator, tmp_path, capsys):
    out = tmp_path / "synth"
    code, stdout, err = cli(capsys, "predict", "--model", translator, "--input", phantoms, "--output", out, "--no-progress")
    assert code == 0, err
    for case in discover(phantoms).cases:
        written = nib.load(out / f"{case.case_id}.nii.gz")
        source = nib.load(case.channels["t1"])
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine)
        assert written.get_data_dtype() == np.float32
        description = written.header["descrip"].tobytes().decode()
        assert "synthetic flair" in description and "z-scored" in description
        data = np.asanyarray(written.dataobj)
        assert np.all(data[np.asanyarray(source.dataobj) == 0] == 0)  # background outside the source's head


def test_resampled_synthesis_comes_back_on_the_input_grid(phantoms):
    """With resampling and cropping in preprocessing, the undo still gives the input's shape and grid."""
    prep = PreprocessConfig(target_spacing=(2.0, 1.5, 1.0), pad_multiple=8)
    case = discover(phantoms).cases[1]
    loaded, mask = read_translation_case(case, ["t1"], n_source=1, prep=prep)
    assert loaded.image.shape[1:] != SHAPE
    fake = loaded.image[:1] * 2.0  # any volume on the preprocessed grid
    restored, scale = restore_synthesis(fake, loaded, mask, prep=prep, head="linear")
    assert restored.shape == (1, *SHAPE) and scale == "z-scored"
    assert np.all(restored[0][~mask] == 0)


def test_ct_window_synthesis_is_restored_to_hounsfield_units():
    geometry_case = np.zeros((1, 16, 16, 16), np.float32)
    prep = PreprocessConfig(normalize="ct-window", ct_window=(-1000.0, 1000.0), crop_foreground=False, pad_multiple=1)
    from vox2vox.data.preprocessing import LoadedCase, preprocess

    _, _, record = preprocess(geometry_case, None, spacing=(1.0, 1.0, 1.0), config=prep)
    loaded = LoadedCase("c", geometry_case, None, None, record)  # type: ignore[arg-type]
    mask = np.zeros((16, 16, 16), bool)
    mask[4:12, 4:12, 4:12] = True
    tanh_out = np.full((1, 16, 16, 16), 0.5, np.float32)  # tanh 0.5 -> window 0.75 -> 500 HU
    restored, scale = restore_synthesis(tanh_out, loaded, mask, prep=prep, head="tanh")
    assert scale == "HU"
    assert np.allclose(restored[0][mask], 500.0) and np.allclose(restored[0][~mask], -1000.0)


def test_translation_loss_is_l1_plus_ssim():
    torch.manual_seed(0)
    real = torch.randn(2, 1, 24, 24, 24)
    fake = real + 0.5
    task = TaskConfig(kind="translate", target=("flair",), lambda_l1=100.0, lambda_ssim=0.0)
    loss, parts = translation_loss(fake, real, task)
    assert float(loss) == pytest.approx(50.0, rel=1e-5) and parts["loss_l1"] == pytest.approx(0.5, rel=1e-5)
    with_ssim = dataclasses.replace(task, lambda_ssim=2.0)
    loss, parts = translation_loss(fake, real, with_ssim)
    assert parts["loss_ssim"] > 0.05  # a shifted volume is not structurally identical
    assert float(loss) == pytest.approx(50.0 + 2.0 * parts["loss_ssim"], rel=1e-5)
    loss, parts = translation_loss(real, real, with_ssim)
    assert float(loss) == pytest.approx(0.0, abs=1e-4)


# ---- metrics against independent computations -------------------------------------------------
def _numpy_ssim_map(x: np.ndarray, y: np.ndarray, data_range: float, win: int = 11, sigma: float = 1.5) -> np.ndarray:
    """SSIM (Wang et al. 2004) with a separable Gaussian window, 'valid' region only, in float64."""
    t = np.arange(win) - (win - 1) / 2
    g = np.exp(-(t**2) / (2 * sigma**2))
    g /= g.sum()

    def blur(a):
        for axis in range(3):
            a = ndimage.correlate1d(a, g, axis=axis, mode="constant")
        h = win // 2
        return a[h:-h, h:-h, h:-h]

    x, y = x.astype(np.float64), y.astype(np.float64)
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))


def test_metrics_match_independent_computations():
    rng = np.random.default_rng(0)
    truth = ndimage.gaussian_filter(rng.normal(size=(30, 28, 26)), 2).astype(np.float32)
    pred = (truth + 0.1 * rng.normal(size=truth.shape)).astype(np.float32)
    mask = np.zeros(truth.shape, bool)
    mask[3:25, 4:22, 2:24] = True
    diff = (pred - truth)[mask].astype(np.float64)
    assert mae(pred, truth, mask) == pytest.approx(np.abs(diff).mean(), rel=1e-5)
    span = 2.5
    assert psnr(pred, truth, mask, value_range=span) == pytest.approx(10 * np.log10(span**2 / (diff**2).mean()), rel=1e-5)
    full = np.ones(truth.shape, bool)
    expected = _numpy_ssim_map(pred, truth, span).mean()
    assert ssim(pred, truth, full, value_range=span) == pytest.approx(expected, abs=1e-4)
    # Inside a mask: the map's values at the mask's voxels (window centres) only.
    ssim_map = _numpy_ssim_map(pred, truth, span)
    centres = mask[5:-5, 5:-5, 5:-5]
    assert ssim(pred, truth, mask, value_range=span) == pytest.approx(ssim_map[centres].mean(), abs=1e-4)


def test_identical_volumes_score_perfectly_whatever_their_scale():
    rng = np.random.default_rng(1)
    truth = ndimage.gaussian_filter(rng.normal(size=(24, 24, 24)), 1.5).astype(np.float32) * 300 + 900
    mask = np.zeros(truth.shape, bool)
    mask[2:22, 3:21, 4:20] = True
    scores = translation_scores(0.01 * truth - 4.0, truth, mask)  # another gain and offset: z-scoring removes them
    assert scores["mae"] == pytest.approx(0.0, abs=1e-5)
    assert scores["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert scores["psnr"] > 80 or scores["psnr"] == float("inf")
    p, t = normalise_pair(0.01 * truth - 4.0, truth, mask)
    assert abs(float(t[mask].mean())) < 1e-5 and float(t[mask].std()) == pytest.approx(1.0, rel=1e-4)
    assert np.all(p[~mask] == 0)


def test_evaluate_translate_writes_csv_summary_and_report(phantoms, tmp_path, capsys):
    # Predictions: each case's real FLAIR with noise (a stand-in for a synthesis).
    pred = tmp_path / "pred"
    pred.mkdir()
    for case in discover(phantoms).cases:
        real = nib.load(case.channels["flair"])
        data = np.asanyarray(real.dataobj).astype(np.float32)
        noisy = data + np.random.default_rng(0).normal(0, 50, data.shape).astype(np.float32) * (data > 0)
        nib.save(nib.Nifti1Image(noisy, real.affine), str(pred / f"{case.case_id}.nii.gz"))
    out = tmp_path / "eval" / "scores.csv"
    code, stdout, err = cli(capsys, "evaluate", "--task", "translate", "--pred", pred, "--truth", phantoms,
                            "--target", "flair", "--source", "t1", "--out", out)
    assert code == 0, err
    rows = out.read_text().splitlines()
    assert rows[0] == "case,mae,psnr,ssim,voxels,mask" and len(rows) == 5
    assert "real foreground" in rows[1]
    assert (out.parent / "scores_summary.json").is_file()
    page = (out.parent / "scores_report.html").read_text()
    assert "data:image/png;base64" in page and "SSIM" in page
    # Several channels and no --target: one line asking for it.
    assert_user_error(cli(capsys, "evaluate", "--task", "translate", "--pred", pred, "--truth", phantoms), "--target")


# ---- missing-modality segmentation ------------------------------------------------------------
@pytest.mark.slow
def test_fill_missing_segments_with_the_synthesised_channel(phantoms, translator, tmp_path, capsys):
    seg = tiny_brats_segmenter(tmp_path / "seg.safetensors")
    cases = [c.case_id for c in discover(phantoms).cases][:2]
    # The input: t1 only (the FLAIR files removed).
    missing = tmp_path / "no_flair"
    for case_id in cases:
        shutil.copytree(phantoms / case_id, missing / case_id)
        (missing / case_id / f"{case_id}_flair.nii.gz").unlink()
    assert_user_error(cli(capsys, "predict", "--model", seg, "--input", missing, "--output", tmp_path / "x",
                          "--fill-missing", "t2=" + str(translator), "--layout", "brats", "--no-progress"), "t2", "t1, flair")
    filled = tmp_path / "filled"
    code, _, err = cli(capsys, "predict", "--model", seg, "--input", missing, "--output", filled,
                       "--fill-missing", f"flair={translator}", "--fill-unchecked", "--layout", "brats", "--no-progress")
    assert code == 0, err
    assert "UNMEASURED" in err
    # The same as writing the synthesised FLAIR into the cases and segmenting them as usual.
    synth = tmp_path / "synth"
    assert cli(capsys, "predict", "--model", translator, "--input", missing, "--output", synth, "--layout", "brats",
               "--no-progress")[0] == 0
    with_synth = tmp_path / "with_synth"
    for case_id in cases:
        shutil.copytree(missing / case_id, with_synth / case_id)
        shutil.copy(synth / f"{case_id}.nii.gz", with_synth / case_id / f"{case_id}_flair.nii.gz")
    reference = tmp_path / "reference"
    assert cli(capsys, "predict", "--model", seg, "--input", with_synth, "--output", reference, "--no-progress")[0] == 0
    for case_id in cases:
        a, geo = read_volume(filled / f"{case_id}.nii.gz")
        b, _ = read_volume(reference / f"{case_id}.nii.gz")
        assert a.shape == SHAPE and np.array_equal(a, b)
        source = CaseFiles(case_id, {"t1": missing / case_id / f"{case_id}_t1.nii.gz"}, None)
        assert geo.same_grid(read_volume(source.channels["t1"])[1])


def test_several_source_contrasts_translate_to_flair(phantoms, tmp_path, capsys):
    run = tmp_path / "three-to-flair"
    code, _, err = cli(capsys, "train", "--config", "paper", "--data", phantoms, "--out", run, *TRANSLATE,
                       "--set", 'task.source=["t1","t1ce","t2"]', "--set", "train.epochs=2", "--no-progress")
    assert code == 0, err
    model = read_model(run)
    assert model.config.generator.in_channels == 3 and model.channels == ["t1", "t1ce", "t2"]
    case_id = discover(phantoms).cases[0].case_id
    sources = tmp_path / "sources" / case_id
    shutil.copytree(phantoms / case_id, sources)
    (sources / f"{case_id}_flair.nii.gz").unlink()
    assert cli(capsys, "predict", "--model", run, "--input", sources.parent, "--output", tmp_path / "out",
               "--layout", "brats", "--no-progress")[0] == 0
    volume, _ = read_volume(tmp_path / "out" / f"{case_id}.nii.gz")
    assert volume.shape == SHAPE and np.isfinite(volume).all() and volume.std() > 0


# ---- bad task configs -------------------------------------------------------------------------
@pytest.mark.parametrize(("settings", "needles"), [
    ({"task.target": '["t3"]'}, ["'t3'", "t1, t1ce, t2, flair"]),
    ({"task.source": '["flair"]'}, ["'flair'", "source"]),
    ({"task.source": '["t1", "t1"]'}, ["named twice"]),
    ({"task.target": "null"}, ["task.target"]),
    ({"task.head": '"tanh"'}, ["tanh", "ct-window"]),
    ({"task.lambda_l1": "0"}, ["lambda_l1"]),
])
def test_bad_task_configs_are_refused_in_one_line(phantoms, tmp_path, capsys, settings, needles):
    args = [*TRANSLATE, *(a for k, v in settings.items() for a in ("--set", f"{k}={v}")), "--set", "train.epochs=1"]
    result = cli(capsys, "train", "--config", "paper", "--data", phantoms, "--out", tmp_path / "run", *args)
    assert_user_error(result, *needles)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_fill_missing_and_evaluate_mistakes_are_one_line(phantoms, translator, tmp_path, capsys):
    seg = tiny_brats_segmenter(tmp_path / "seg.safetensors")
    assert_user_error(cli(capsys, "predict", "--model", seg, "--input", phantoms, "--output", tmp_path / "x",
                          "--fill-missing", "flair"), "CHANNEL=MODEL")
    assert_user_error(cli(capsys, "predict", "--model", seg, "--input", phantoms, "--output", tmp_path / "x",
                          "--fill-missing", f"t1={translator}"), "synthesises flair, not t1")
    assert_user_error(cli(capsys, "predict", "--model", translator, "--input", phantoms, "--output", tmp_path / "x",
                          "--largest-component"), "a translation model", "--largest-component")
    # A synthesised volume on another grid than the real one.
    case = discover(phantoms).cases[0]
    real = nib.load(case.channels["flair"])
    pred = tmp_path / "pred"
    pred.mkdir()
    nib.save(nib.Nifti1Image(np.asanyarray(real.dataobj)[:, :, :30], real.affine), str(pred / f"{case.case_id}.nii.gz"))
    assert_user_error(cli(capsys, "evaluate", "--task", "translate", "--pred", pred, "--truth", phantoms,
                          "--target", "flair"), f"{case.case_id}.nii.gz", "not on the grid")
    # One mask file for several cases.
    nib.save(real, str(pred / f"{case.case_id}.nii.gz"))
    nib.save(real, str(pred / "other.nii.gz"))
    assert_user_error(cli(capsys, "evaluate", "--task", "translate", "--pred", pred, "--truth", phantoms,
                          "--target", "flair", "--mask", case.channels["t1"]), "one mask file for 4 cases")


def test_a_ct_target_is_also_scored_in_hounsfield_units(shared_data, tmp_path):
    import json

    import nibabel as nib

    from vox2vox.report.translation import evaluate_translation

    case = shared_data / "ct-sarcoma" / "STS_008"
    real = nib.load(case / "CT_image.nii.gz")
    hu = np.asarray(real.dataobj, dtype=np.float32)
    synth = hu + 40.0  # a constant 40 HU offset
    (tmp_path / "synth").mkdir()
    nib.save(nib.Nifti1Image(synth, real.affine), tmp_path / "synth" / "STS_008.nii.gz")
    (tmp_path / "real").mkdir()
    nib.save(nib.Nifti1Image(hu, real.affine), tmp_path / "real" / "STS_008.nii.gz")
    result = evaluate_translation(tmp_path / "synth", tmp_path / "real", out_csv=tmp_path / "t.csv")
    row = result.rows[0]
    mask = hu != -1000.0  # the real volume's foreground (its floor is the background)
    clipped = np.clip(hu, -1024, 3000)
    expected = np.abs(np.clip(synth, -1024, 3000) - clipped)[mask]
    assert row["mae_hu"] == pytest.approx(float(expected.mean()), rel=1e-4)
    assert row["psnr_hu"] == pytest.approx(10 * np.log10(4024.0**2 / float((expected**2).mean())), rel=1e-4)
    assert 0.8 < row["ssim_hu"] < 1.0 and 0.8 < row["ssim_hu_mask"] < 1.0
    assert row["mae"] == pytest.approx(0.0, abs=1e-3)  # z-scoring hides an offset: why HU columns exist
    summary = json.loads((tmp_path / "t_summary.json").read_text())
    assert "4024 HU" in summary["columns"]["psnr_hu"] and "z-scored" in summary["columns"]["mae"]


#: A seconds-long translation run on two-channel manifest cases (t1 -> t2).
TINY_TRANSLATE = [*TINY, "--set", 'task.kind="translate"', "--set", 'task.source=["t1"]',
                  "--set", 'task.target=["t2"]']


def _translation_run(root: Path, capsys, *extra) -> tuple[Path, str]:
    manifest = make_manifest(root / "data", n_cases=3, channels=("t1", "t2"))
    out = root / "run"
    code, _, err = cli(capsys, "train", "--data", manifest, "--out", out, *TINY_TRANSLATE, *extra)
    assert code == 0, err
    return out, err


def test_a_translation_run_with_init_from_starts_from_the_source_weights(tmp_path, capsys, monkeypatch):
    source, _ = _translation_run(tmp_path / "source", capsys)
    seen: dict[str, torch.Tensor] = {}
    original = training.train_step

    def recording(state, *args, **kwargs):
        if not seen:
            seen.update({k: v.clone() for k, v in state.generator.state_dict().items()})
        return original(state, *args, **kwargs)

    monkeypatch.setattr(training, "train_step", recording)
    out, err = _translation_run(tmp_path / "tuned", capsys, "--init-from", source)
    src = load_checkpoint(source / "checkpoints" / "best.safetensors")
    for name, tensor in src.generator.items():
        assert torch.equal(seen[name], tensor), name
    recorded = read_metadata(out / "checkpoints" / "last.safetensors")["state"]["init_from"]
    assert recorded["sha256"] == file_sha256(source / "checkpoints" / "best.safetensors")
    assert "fine-tuning from" in err


def test_init_from_refuses_a_model_with_other_outputs_for_a_translation(tmp_path, capsys):
    source, _ = _translation_run(tmp_path / "source", capsys)
    manifest = make_manifest(tmp_path / "data", n_cases=3, channels=("t1", "t2", "flair"))
    out = tmp_path / "two-targets"
    result = cli(capsys, "train", "--data", manifest, "--out", out, *TINY_TRANSLATE,
                 "--set", 'task.target=["t2","flair"]', "--init-from", source)
    assert_user_error(result, "output channel", "--reinit-head")
    assert not out.exists()


def test_a_translation_run_with_train_log_tensorboard_writes_event_files(tmp_path, capsys):
    out, _ = _translation_run(tmp_path, capsys, "--set", "data.val_cases=1", "--set", 'train.log="tensorboard"')
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert "val_mae" in events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("val_mae")] == [r["step"] for r in rows]
    assert [e.value for e in events.Scalars("val_mae")] == pytest.approx([r["val_mae"] for r in rows], rel=1e-6)
