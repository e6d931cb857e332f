"""`vox2vox export` (ONNX, TorchScript) and exported models in `predict` and the Python API.

On a real case (../shared/data, mri-spinalcord t2: 60x55x52 in PSR orientation, resampled to
1.5 mm by the model's preprocessing) with tiny randomly initialised generators of both
architectures: the exported files must give the checkpoint's label maps exactly and its
probabilities within 1e-4, through the same command and the same grid-writing path.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch

from helpers import assert_user_error, cli
from vox2vox.config import Config
from vox2vox.data.labels import get_convention
from vox2vox.data.profile import profile_from_records
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.contract import FORMAT
from vox2vox.infer.inference import read_model
from vox2vox.model.checkpoint import Checkpoint, save_checkpoint
from vox2vox.model.residual import build_generator

CASE = Path("mri-spinalcord/t2/t2.nii.gz")
ARCHS = ("paper", "residual")
#: What each tiny model's training "chose" (state["predict"]), so predict's defaults use both paths.
CHOSEN = {"paper": {"tta": True, "largest_component": "off", "foreground_threshold": None},
          "residual": {"tta": False, "largest_component": "class", "foreground_threshold": 0.4}}


def tiny_checkpoint(path: Path, arch: str) -> Path:
    """A randomly initialised one-channel binary generator with the real case's preprocessing."""
    config = Config.from_dict({
        "generator": {"arch": arch, "in_channels": 1, "n_classes": 2, "base_filters": 4,
                      "max_filters": 8 if arch == "paper" else 16, "depth": 3, "bottleneck_blocks": 1},
        "discriminator": {"in_channels": 1, "n_classes": 2, "base_filters": 4, "max_filters": 8},
        "preprocess": {"target_spacing": [1.5, 1.5, 1.5], "pad_multiple": 8},
        "train": {"patch_size": [24, 24, 24]},
    })
    torch.manual_seed(1)
    generator = build_generator(config.generator)
    with torch.no_grad():  # wider logits: label ties between runtimes become vanishingly rare
        last = [m for m in generator.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)][-1]
        last.weight.mul_(8.0)
    state = {"channels": ["t2"], "convention": get_convention("binary").to_json(), "layout": "single",
             "epoch": 3, "step": 30, "predict": CHOSEN[arch]}
    save_checkpoint(path, Checkpoint(config=config.to_dict(), generator=generator.state_dict(), state=state))
    return path


@pytest.fixture(scope="module", params=ARCHS)
def exported(request, tmp_path_factory, shared_data):
    """One arch: checkpoint, its two exports, and predict's output for each (CLI, probabilities)."""
    arch = request.param
    root = tmp_path_factory.mktemp(f"export_{arch}")
    ckpt = tiny_checkpoint(root / "best.safetensors", arch)
    image = shared_data / CASE
    models = {"pytorch": ckpt, "onnx": root / "model.onnx", "torchscript": root / "model.pt"}
    from vox2vox.cli import main  # called directly: capsys is function-scoped, this fixture is not

    for fmt in ("onnx", "torchscript"):
        assert main(["export", str(ckpt), "--format", fmt, "--out", str(models[fmt])]) == 0
    outputs = {}
    for name, model in models.items():
        out = root / f"pred_{name}"
        assert main(["predict", "--model", str(model), "--input", str(image), "--output", str(out),
                     "--save-probabilities", "--no-progress"]) == 0
        outputs[name] = out / "t2.nii.gz"
    return {"arch": arch, "root": root, "ckpt": ckpt, "image": image, "models": models, "outputs": outputs}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ("onnx", "torchscript"))
def test_exported_models_predict_the_checkpoints_labels_and_probabilities(exported, fmt):
    ref_file, got_file = exported["outputs"]["pytorch"], exported["outputs"][fmt]
    ref, got, source = nib.load(ref_file), nib.load(got_file), nib.load(exported["image"])
    # On the input's own grid (PSR, not the canonical one the network ran on).
    assert got.shape == source.shape == (60, 55, 52)
    np.testing.assert_allclose(got.affine, source.affine, atol=1e-5)
    ref_labels, got_labels = np.asarray(ref.dataobj), np.asarray(got.dataobj)
    assert set(np.unique(ref_labels)) == {0, 1}  # a map with both classes, not a trivial one
    np.testing.assert_array_equal(got_labels, ref_labels)
    ref_p = np.load(ref_file.with_name("t2.npz"))["probabilities"]
    got_p = np.load(got_file.with_name("t2.npz"))["probabilities"]
    assert got_p.shape == ref_p.shape == (2, 52, 55, 60)
    assert float(np.abs(got_p - ref_p).max()) <= 1e-4


def test_metadata_carries_the_input_contract(exported):
    ckpt = exported["ckpt"]
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    proto = onnx.load(str(exported["models"]["onnx"]))
    onnx_doc = json.loads({p.key: p.value for p in proto.metadata_props}["vox2vox"])
    with zipfile.ZipFile(exported["models"]["torchscript"]) as archive:
        [name] = [n for n in archive.namelist() if n.endswith("extra/vox2vox.json")]
        ts_doc = json.loads(archive.read(name))
    for doc, backend in ((onnx_doc, "onnx"), (ts_doc, "torchscript")):
        assert doc["format"] == FORMAT and doc["backend"] == backend
        source = dict(doc["source"])
        assert "torch" in source.pop("versions")  # the libraries it was trained with, for its model card
        assert source == {"file": "best.safetensors", "sha256": sha, "epoch": 3, "step": 30}
        assert doc["format_version"] == 1 and doc["task"] == {"kind": "segment"}  # v1: readable by older versions
        assert doc["vox2vox_version"] == __import__("vox2vox").__version__
        contract = doc["input"]
        assert contract["channels"] == ["t2"] and contract["size_multiple"] == 8
        assert contract["normalization"]["method"] == "zscore-nonzero"
        assert contract["target_spacing_mm"] == [1.5, 1.5, 1.5] and contract["preprocess"]["pad_multiple"] == 8
        assert contract["training_patch"] == [24, 24, 24]
        assert doc["labels"]["classes"] == [{"class": 0, "value": 0, "name": "background"},
                                            {"class": 1, "value": 1, "name": "foreground"}]
        assert doc["predict"] == CHOSEN[exported["arch"]]
        assert doc["generator"]["arch"] == exported["arch"]
    # Batch and spatial axes are dynamic in the graph; channels are fixed.
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "D", "H", "W"]
    # Instance norms as explicit two-pass means: ONNX Runtime's fused kernel is inaccurate on volumes.
    assert "InstanceNormalization" not in {node.op_type for node in proto.graph.node}
    # Loading an export gives back the checkpoint's config and what prediction reads of its state.
    original = read_model(ckpt)
    for fmt in ("onnx", "torchscript"):
        model = read_model(exported["models"][fmt])
        assert model.backend == fmt and model.config == original.config
        assert model.generator.contract["source"]["sha256"] == sha
        for key in ("channels", "convention", "layout", "predict"):
            assert model.record.to_json()[key] == original.record.to_json()[key]


def test_exported_model_runs_any_batch_and_size_and_checks_its_input(exported):
    original = read_model(exported["ckpt"])
    for fmt in ("onnx", "torchscript"):
        net = read_model(exported["models"][fmt]).generator
        x = torch.randn(3, 1, 16, 24, 40)
        with torch.no_grad():
            assert float((net(x) - original.generator(x)).abs().max()) <= 1e-4
        with pytest.raises(Exception, match="multiple of 8"):
            net(torch.randn(1, 1, 16, 20, 16))


def test_python_api_on_file_array_and_exports(exported):
    import vox2vox

    image = exported["image"]
    expected = np.asarray(nib.load(exported["outputs"]["pytorch"]).dataobj)
    source = nib.load(image)
    for name in ("pytorch", "onnx"):
        model = vox2vox.load_model(exported["models"][name], device="cpu")
        assert model.channels == ["t2"] and model.classes == {0: "background", 1: "foreground"}
        result = model.predict(image)
        np.testing.assert_array_equal(result.labels, expected)
        np.testing.assert_allclose(result.affine, source.affine, atol=1e-5)
        # An array with its affine is predicted as the file is (reoriented like a read).
        from_array = model.predict(np.asarray(source.dataobj, dtype=np.float32), affine=source.affine,
                                   probabilities=True)
        np.testing.assert_array_equal(from_array.labels, expected)
        assert from_array.probabilities.shape == (2, 60, 55, 52)
        np.testing.assert_allclose(from_array.probabilities.sum(0), 1.0, atol=1e-5)
        written = result.save(exported["root"] / f"api_{name}.nii.gz")
        np.testing.assert_array_equal(np.asarray(nib.load(written).dataobj), expected)
    # Sliding windows (MONAI's blending over 16^3 windows) go through the same backend call.
    sliding = [vox2vox.load_model(exported["models"][name], device="cpu").predict(
        image, mode="sliding", window=(16, 16, 16), overlap=0.25, tta=False, probabilities=True)
        for name in ("pytorch", "torchscript")]
    assert float(np.abs(sliding[0].probabilities - sliding[1].probabilities).max()) <= 1e-4
    # A list of channel files, and the refusal of an array without a grid when the model resamples.
    np.testing.assert_array_equal(model.predict([image]).labels, expected)
    assert_api_error(lambda: model.predict(np.zeros((60, 55, 52), np.float32)), "spacing=")
    assert_api_error(lambda: model.predict(np.zeros((2, 8, 8, 8), np.float32), spacing=(1, 1, 1)), "C = 1")


def assert_api_error(call, needle: str) -> None:
    from vox2vox.errors import Vox2VoxError

    with pytest.raises(Vox2VoxError) as info:
        call()
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_python_api_array_with_spacing_keeps_the_arrays_axes(tmp_path):
    """A canonical array with spacing only: labels come back on the array's own axes."""
    import vox2vox

    ckpt = tiny_checkpoint(tmp_path / "best.safetensors", "paper")
    rng = np.random.default_rng(0)
    volume = np.zeros((30, 20, 24), np.float32)
    volume[4:26, 3:17, 5:20] = rng.normal(100, 20, (22, 14, 15))
    model = vox2vox.load_model(ckpt, device="cpu")
    result = model.predict(volume, spacing=(1.0, 1.2, 1.5), tta=False)
    assert result.labels.shape == volume.shape
    np.testing.assert_allclose(result.spacing, (1.0, 1.2, 1.5))
    assert np.all(result.labels[volume == 0][:10] >= 0)
    # The same volume as a file gives the same labels.
    path = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.2, 1.5, 1.0])), str(path))
    np.testing.assert_array_equal(model.predict(path, tta=False).labels, result.labels)


def test_import_vox2vox_and_cli_parser_do_not_import_torch():
    code = ("import sys, vox2vox, vox2vox.cli; vox2vox.cli.build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(vox2vox.__version__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# ---- refusals: one line, exit 2, nothing written ------------------------------------------------
@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("small") / "best.safetensors", "paper")


def test_export_refuses_bad_format_names_and_outputs(capsys, tmp_path, small_ckpt):
    assert_user_error(cli(capsys, "export", small_ckpt, "--format", "tflite", "--out", tmp_path / "m.tflite"),
                      "--format tflite", "onnx or torchscript")
    assert_user_error(cli(capsys, "export", small_ckpt, "--out", tmp_path / "m.bin"), "m.bin", "--format")
    assert_user_error(cli(capsys, "export", small_ckpt, "--format", "onnx", "--out", tmp_path / "m.pt"),
                      "m.pt", ".onnx")
    (tmp_path / "folder.onnx").mkdir()
    assert_user_error(cli(capsys, "export", small_ckpt, "--out", tmp_path / "folder.onnx"), "is a folder")
    (tmp_path / "plain").write_text("a file, not a folder")
    assert_user_error(cli(capsys, "export", small_ckpt, "--out", tmp_path / "plain" / "m.onnx"),
                      "cannot create output folder")
    assert_user_error(cli(capsys, "export", tmp_path / "missing_run", "--out", tmp_path / "m.onnx"),
                      "no checkpoint found")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.onnx", "plain"]  # nothing written


def test_export_refuses_a_folder_it_may_not_write_in(capsys, tmp_path, small_ckpt, monkeypatch):
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == tmp_path else real_access(path, mode))
    assert_user_error(cli(capsys, "export", small_ckpt, "--out", tmp_path / "m.onnx"), "permission denied")
    assert not (tmp_path / "m.onnx").exists()


def test_export_without_onnx_packages_names_the_extra(capsys, tmp_path, small_ckpt, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    line = assert_user_error(cli(capsys, "export", small_ckpt, "--out", tmp_path / "m.onnx"), "onnxruntime")
    assert "vox2vox[onnx]" in line
    assert not (tmp_path / "m.onnx").exists()
    # Predicting an ONNX file needs ONNX Runtime too.
    (tmp_path / "x.onnx").write_bytes(b"not used")
    assert_user_error(cli(capsys, "predict", "--model", tmp_path / "x.onnx", "--input", tmp_path,
                          "--output", tmp_path / "o"), "ONNX Runtime", "vox2vox[onnx]")


def test_export_of_an_exported_file_is_refused(capsys, tmp_path, exported):
    assert_user_error(cli(capsys, "export", exported["models"]["onnx"], "--out", tmp_path / "again.pt"),
                      "already an exported model")


def _identity_onnx(path: Path, metadata: dict[str, str] | None = None) -> Path:
    node = onnx.helper.make_node("Identity", ["image"], ["probabilities"])
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([node], "g", [value("image", onnx.TensorProto.FLOAT, None)],
                                   [value("probabilities", onnx.TensorProto.FLOAT, None)])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, text in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, text
    onnx.save(model, str(path))
    return path


def _predict_args(model: Path, shared_data: Path, out: Path) -> list:
    return ["predict", "--model", model, "--input", shared_data / CASE, "--output", out]


def test_predict_refuses_exports_without_valid_metadata(capsys, tmp_path, shared_data, exported):
    out = tmp_path / "out"
    cases = {
        _identity_onnx(tmp_path / "plain.onnx"): "without vox2vox metadata",
        _identity_onnx(tmp_path / "corrupt.onnx", {"vox2vox": "{not json"}): "corrupt vox2vox metadata",
        _identity_onnx(tmp_path / "other.onnx", {"vox2vox": json.dumps({"format": "x"})}): "unknown format",
    }
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    cases[garbage] = "not a readable ONNX model"
    # The TorchScript metadata under an ONNX name (and the reverse) is refused by its backend field.
    doc = json.loads(zipfile.ZipFile(exported["models"]["torchscript"]).read(
        next(n for n in zipfile.ZipFile(exported["models"]["torchscript"]).namelist() if n.endswith("vox2vox.json"))))
    cases[_identity_onnx(tmp_path / "wrong.onnx", {"vox2vox": json.dumps(doc)})] = "'torchscript' export"
    scripted = torch.jit.script(torch.nn.Identity())
    torch.jit.save(scripted, str(tmp_path / "bare.pt"))
    cases[tmp_path / "bare.pt"] = "without vox2vox metadata"
    (tmp_path / "text.pt").write_text("hello")
    cases[tmp_path / "text.pt"] = "not a TorchScript archive"
    for model, needle in cases.items():
        assert_user_error(cli(capsys, *_predict_args(model, shared_data, out)), model.name, needle)
    assert not out.exists()


class _Tripwire:
    """Unpickling this creates a file: proof that a refused file was not deserialised."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_predict_refuses_a_torch_save_pickle_named_pt_without_unpickling_it(capsys, tmp_path, shared_data):
    marker = tmp_path / "unpickled"
    torch.save({"generator": _Tripwire(marker)}, str(tmp_path / "model.pt"))
    assert_user_error(cli(capsys, *_predict_args(tmp_path / "model.pt", shared_data, tmp_path / "out")),
                      "model.pt", "refusing a pickle-based file")
    assert not marker.exists()


def test_predict_refuses_mixed_precision_for_onnx(capsys, tmp_path, shared_data, exported):
    line = assert_user_error(cli(capsys, *_predict_args(exported["models"]["onnx"], shared_data, tmp_path / "o"),
                                 "--amp", "bf16", "--device", "cpu", "--no-progress"), "float32")
    assert "--amp off" in line


def test_python_api_predict_folder_is_predict_and_predict_takes_one_case(tmp_path, shared_data, small_ckpt):
    import vox2vox

    image = shared_data / CASE
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"id,t2\na,{image}\nb,{image}\n")
    model = vox2vox.load_model(small_ckpt, device="cpu")
    report = model.predict_folder(manifest, tmp_path / "out", progress=False, tta=False)
    assert sorted(report.written) == ["a", "b"] and not report.failed
    expected = model.predict(image, tta=False).labels
    for case in ("a", "b"):
        np.testing.assert_array_equal(np.asarray(nib.load(report.written[case]).dataobj), expected)
    assert_api_error(lambda: model.predict(manifest), "holds 2 cases")
    assert_api_error(lambda: model.predict(image, spacing=(1, 1, 1)), "for arrays")


def test_two_pass_instance_norm_is_accurate_in_onnx_runtime():
    """The exported norm stays within float32 rounding of a float64 reference on a volume with an
    offset mean. (ONNX Runtime 1.32's own InstanceNormalization, what the exporter makes of the
    norm otherwise, was 2.4e-5 off here and 1.9e-3 at 4x240x240x160: the reason it is replaced.)"""
    import io

    import onnxruntime as ort

    from vox2vox.infer.export import _portable

    norm = _portable(torch.nn.Sequential(torch.nn.GroupNorm(2, 2, eps=1e-3)))
    assert "TwoPassInstanceNorm" in repr(norm)
    x = torch.randn((1, 2, 96, 96, 64), generator=torch.Generator().manual_seed(0)) * 3 + 5
    reference = torch.nn.functional.group_norm(x.double(), 2, eps=1e-3)
    buffer = io.BytesIO()
    torch.onnx.export(norm, (x,), buffer, dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {2: "D"}})
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    error = float(np.abs(session.run(None, {"x": x.numpy()})[0] - reference.numpy()).max())
    assert error < 1e-5


def test_onnx_on_a_cuda_device_without_the_cuda_provider_runs_on_the_cpu(exported, capsys, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    model = read_model(exported["models"]["onnx"], device="cuda")
    assert model.generator.session.get_providers() == ["CPUExecutionProvider"]
    assert "no CUDA provider" in capsys.readouterr().err


def test_amp_auto_is_off_for_onnx_and_explicit_amp_is_refused():
    from vox2vox.errors import Vox2VoxError
    from vox2vox.infer.backends import check_precision, prediction_amp

    assert prediction_amp("auto", torch.device("cuda"), ["pytorch", "onnx"]) == "off"  # no GPU needed
    assert prediction_amp("bf16", torch.device("cpu"), ["onnx"]) == "bf16"

    class Onnx(torch.nn.Module):
        backend, path = "onnx", Path("m.onnx")

    check_precision([Onnx()], "off")
    with pytest.raises(Vox2VoxError, match="m.onnx: an ONNX model runs in float32"):
        check_precision([Onnx()], "bf16")


def test_exported_region_model_predicts_the_checkpoints_labels(tmp_path, shared_data, capsys):
    """A region-output model (sigmoid WT/TC/ET of BraTS) exported: the contract says so, and the
    ONNX file (CLI and Python API) gives the checkpoint's labels, read back through the regions."""
    import vox2vox
    from vox2vox.model.outputs import output_head

    convention = get_convention("brats")
    config = Config.from_dict({
        "generator": {"arch": "residual", "in_channels": 1, "n_classes": 3, "output": "regions",
                      "base_filters": 4, "max_filters": 16, "depth": 3},
        "discriminator": {"in_channels": 1, "n_classes": 3, "base_filters": 4, "max_filters": 8},
        "preprocess": {"target_spacing": [1.5, 1.5, 1.5], "pad_multiple": 8},
        "train": {"patch_size": [24, 24, 24]},
    })
    torch.manual_seed(2)
    generator = build_generator(config.generator)
    with torch.no_grad():  # wide logits: several regions present, no ties at 0.5 between runtimes
        last = [m for m in generator.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)][-1]
        last.weight.mul_(8.0)
    # A training-data profile of 0.1 mm cases: the real case (about 1 mm) is out of distribution.
    profile = profile_from_records([{"intensity": [{"min": 0.0, "max": 1000.0, "p00_5": 0.0, "median": 300.0, "p99_5": 900.0}],
                                     "original_spacing": [0.1, 0.1, 0.1], "original_shape": [60, 55, 52]}],
                                   ["t2"], n_train=1, n_val=0)
    ckpt = tmp_path / "best.safetensors"
    save_checkpoint(ckpt, Checkpoint(config=config.to_dict(), generator=generator.state_dict(),
                                     state={"channels": ["t2"], "convention": convention.to_json(), "layout": "single",
                                            "data_profile": profile.to_json()}))
    onnx_path = tmp_path / "regions.onnx"
    assert cli(capsys, "export", ckpt, "--format", "onnx", "--out", onnx_path)[0] == 0
    contract = json.loads({p.key: p.value for p in onnx.load(onnx_path).metadata_props}["vox2vox"])
    assert contract["generator"]["output"] == contract["output"]["kind"] == "regions"
    assert contract["output"]["channels"] == ["WT", "TC", "ET"]
    assert [r["innermost_value"] for r in contract["output"]["regions"]] == [2, 1, 4]

    image = shared_data / CASE
    labels = {}
    for name, model in (("pytorch", ckpt), ("onnx", onnx_path)):
        out = tmp_path / f"pred_{name}"
        code, _, err = cli(capsys, "predict", "--model", model, "--input", image, "--output", out,
                           "--save-probabilities", "--no-progress")
        assert code == 0 and "unlike the model's training data: spacing" in err, err
        labels[name] = np.asarray(nib.load(out / "t2.nii.gz").dataobj)
    np.testing.assert_array_equal(labels["onnx"], labels["pytorch"])
    assert len(np.unique(labels["pytorch"])) >= 3 and set(np.unique(labels["pytorch"])) <= {0, 1, 2, 4}
    # The labels follow the regions' chain (not an argmax over WT/TC/ET): read back from the probabilities.
    with np.load(tmp_path / "pred_onnx" / "t2.npz") as npz:
        probs = npz["probabilities"].transpose(0, 3, 2, 1)
        assert list(npz["channels"]) == ["WT", "TC", "ET"]
    head = output_head(convention, "regions")
    np.testing.assert_array_equal(convention.to_source(head.to_classes(probs)), labels["onnx"])
    assert not np.array_equal(convention.to_source(probs.argmax(0)), labels["onnx"])
    # The Python API on the export: the same labels, the probabilities named by region.
    with pytest.warns(UserWarning, match="unlike the model's training data: spacing"):
        result = vox2vox.load_model(onnx_path, device="cpu").predict(image, probabilities=True)
    np.testing.assert_array_equal(result.labels, labels["pytorch"])
    assert result.channel_names == ("WT", "TC", "ET") and result.probabilities.shape[0] == 3
    assert result.warnings and "spacing" in result.warnings[0]
    # A contract whose output kind contradicts its config is refused, not read as classes.
    proto = onnx.load(onnx_path)
    entry = next(p for p in proto.metadata_props if p.key == "vox2vox")
    contract["generator"]["output"] = "classes"
    entry.value = json.dumps(contract)
    onnx.save(proto, tmp_path / "tampered.onnx")
    with pytest.raises(Vox2VoxError, match="generator.output is 'classes' in the contract but 'regions'"):
        read_model(tmp_path / "tampered.onnx")
