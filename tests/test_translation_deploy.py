"""Translation models wherever a segmentation model goes: `vox2vox export` (ONNX, TorchScript) with
a translation contract, exported files in `predict` and `--fill-missing`, the Python API's
`Synthesis`, and `vox2vox info` cards of translation runs and exported files.

Mostly tiny untrained generators on 32^3 phantoms (what is checked is that every path computes
the same synthesis, not that it is a good one); one tiny trained run for the card's scores, and
one real BraTS 2018 case (../shared/data) for a non-canonical orientation and resampling.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import pytest
import torch

from helpers import (
    assert_user_error,
    cli,
    make_model,
    tiny_brats_segmenter,
    tiny_overrides,
    translation_checkpoint,
)
from vox2vox import Synthesis, load_model
from vox2vox.data.layouts import discover
from vox2vox.data.synthetic import write_brats_folder
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.export import VERIFY_TOLERANCE, verify_tolerance

SHAPE = (32, 32, 32)
#: Anisotropic phantoms: resampling to the models' 1.25 mm grid and back is on every path.
SPACING = (1.0, 1.25, 1.5)
FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}


def _main(*argv) -> int:
    from vox2vox.cli import main  # called directly: capsys is function-scoped, the fixtures are not

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Phantoms, a checkpoint, its two exports, and `vox2vox predict`'s output for each."""
    root = tmp_path_factory.mktemp("xlate")
    data = root / "data"
    write_brats_folder(data, n_cases=2, seed=5, shape=SHAPE, spacing=SPACING)
    models = {"pytorch": translation_checkpoint(root / "best.safetensors")}
    for fmt, name in FORMATS.items():
        models[fmt] = root / name
        assert _main("export", models["pytorch"], "--format", fmt, "--out", models[fmt]) == 0
    outputs = {}
    for kind, model in models.items():
        outputs[kind] = root / f"pred_{kind}"
        assert _main("predict", "--model", model, "--input", data, "--output", outputs[kind], "--no-progress") == 0
    return {"root": root, "data": data, "models": models, "outputs": outputs,
            "cases": [c.case_id for c in discover(data).cases]}


def _read(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    image = nib.load(path)
    return np.asanyarray(image.dataobj), image


# ---- export and predict -----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_translation_model_writes_the_checkpoints_synthesis(setup, fmt):
    for case_id in setup["cases"]:
        want, ref = _read(setup["outputs"]["pytorch"] / f"{case_id}.nii.gz")
        got, img = _read(setup["outputs"][fmt] / f"{case_id}.nii.gz")
        assert got.shape == want.shape == SHAPE and img.get_data_dtype() == np.float32
        np.testing.assert_allclose(img.affine, ref.affine)
        assert img.header["descrip"] == ref.header["descrip"]
        assert b"synthetic flair, z-scored" in img.header["descrip"].tobytes()
        assert np.abs(want).max() > 1.0  # a synthesis of some range, not zeros
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        assert np.array_equal(got == 0, want == 0)  # the same background outside the source foreground


def test_translation_contract_describes_the_synthesis(setup):
    proto = onnx.load(str(setup["models"]["onnx"]))
    assert [o.name for o in proto.graph.output] == ["synthesis"] and [i.name for i in proto.graph.input] == ["image"]
    doc = json.loads({p.key: p.value for p in proto.metadata_props}["vox2vox"])
    with zipfile.ZipFile(setup["models"]["torchscript"]) as archive:
        name = next(n for n in archive.namelist() if n.endswith("extra/vox2vox.json"))
        ts_doc = json.loads(archive.read(name))
    for d in (doc, ts_doc):
        assert d["format_version"] == 2 and d["labels"] is None
        assert d["task"] == {"kind": "translate", "source": ["t1"], "target": ["flair"], "head": "linear",
                             "lambda_l1": 100.0, "lambda_ssim": 0.0, "select": "mae"}
        assert d["input"]["channels"] == ["t1"] and d["input"]["normalization"]["method"] == "zscore-nonzero"
        assert "source channels' foreground" in d["input"]["normalization"]["meaning"]
        assert d["output"]["name"] == "synthesis" and d["output"]["channels"] == ["flair"]
        assert d["output"]["kind"] == "linear" and d["output"]["intensity"]["scale"] == "z-scored"
        assert "unknown" in d["output"]["intensity"]["restore"]
        assert d["predict"] == {"tta": False} and "convention" not in d["state"]
        assert d["source"]["best_score"] == -0.75 and "torch" in d["source"]["versions"]


def test_verification_tolerance_scales_with_an_unbounded_output():
    small, large = torch.full((1, 1, 2, 2, 2), 0.5), torch.full((1, 1, 2, 2, 2), -40.0)
    assert verify_tolerance(small, "linear") == VERIFY_TOLERANCE
    assert verify_tolerance(large, "linear") == pytest.approx(40 * VERIFY_TOLERANCE)
    for kind in ("classes", "regions", "tanh"):  # bounded outputs: absolute
        assert verify_tolerance(large, kind) == VERIFY_TOLERANCE


def test_ct_window_tanh_translation_exports_and_predicts_hounsfield_units(tmp_path, capsys):
    # A CT "translation" (tanh head, HU restored): the output of a bounded head, written clipped to the window.
    data = tmp_path / "data"
    write_brats_folder(data, n_cases=1, seed=1, shape=SHAPE)
    prep = {"normalize": "ct-window", "ct_window": [-100.0, 400.0], "pad_multiple": 8}
    ckpt = translation_checkpoint(tmp_path / "ct.safetensors", prep=prep, head="tanh")
    code, out, err = cli(capsys, "export", ckpt, "--out", tmp_path / "ct.pt")
    assert code == 0, err
    assert "synthesises flair (tanh head; written HU) as output 'synthesis'" in out
    for model, folder in ((ckpt, "a"), (tmp_path / "ct.pt", "b")):
        assert cli(capsys, "predict", "--model", model, "--input", data, "--output", tmp_path / folder,
                   "--no-progress")[0] == 0
    a, img = _read(next((tmp_path / "a").glob("*.nii.gz")))
    b, _ = _read(next((tmp_path / "b").glob("*.nii.gz")))
    assert -100.0 <= a.min() and a.max() <= 400.0 and b"HU" in img.header["descrip"].tobytes()
    np.testing.assert_allclose(b, a, atol=1e-3)  # 1e-4 of the tanh range is 0.05 HU of this window


def test_fill_missing_with_an_exported_translator(setup, tmp_path, capsys):
    seg = tiny_brats_segmenter(tmp_path / "seg.safetensors")
    missing = tmp_path / "no_flair"
    for case_id in setup["cases"]:
        shutil.copytree(setup["data"] / case_id, missing / case_id)
        (missing / case_id / f"{case_id}_flair.nii.gz").unlink()
    labels = {}
    for kind in ("pytorch", "onnx", "torchscript"):
        out = tmp_path / kind
        code, _, err = cli(capsys, "predict", "--model", seg, "--input", missing, "--output", out, "--layout", "brats",
                           "--fill-missing", f"flair={setup['models'][kind]}", "--fill-unchecked", "--no-progress")
        assert code == 0, err
        labels[kind] = [_read(out / f"{c}.nii.gz")[0] for c in setup["cases"]]
    for kind in ("onnx", "torchscript"):
        for want, got in zip(labels["pytorch"], labels[kind], strict=True):
            # The synthesised FLAIR agrees to ~1e-6; an untrained segmenter's near-ties may still flip a voxel.
            assert got.shape == SHAPE and np.mean(got == want) > 0.999


def test_loader_refuses_translation_metadata_that_contradicts_itself(setup, tmp_path, capsys):
    data = setup["data"]

    def rewritten(edit, graph=None) -> Path:
        proto = onnx.load(str(setup["models"]["onnx"]))
        entry = next(p for p in proto.metadata_props if p.key == "vox2vox")
        doc = json.loads(entry.value)
        edit(doc)
        entry.value = json.dumps(doc)
        if graph:
            graph(proto.graph)
        path = tmp_path / f"bad{len(list(tmp_path.glob('*.onnx')))}.onnx"
        path.write_bytes(proto.SerializeToString())
        return path

    def rename_output(graph) -> None:
        for node in graph.node:
            node.output[:] = ["probabilities" if o == "synthesis" else o for o in node.output]
        graph.output[0].name = "probabilities"

    cases = [
        (rewritten(lambda d: d.update(format_version=1)), ["task"]),
        (rewritten(lambda d: d["output"].update(name="probabilities")), ["'probabilities'", "'synthesis'"]),
        (rewritten(lambda d: None, graph=rename_output), ["outputs", "['probabilities']", "'synthesis'"]),
        (rewritten(lambda d: d["task"].update(kind="segment")), ["label convention"]),
        (rewritten(lambda d: d["state"].update(channels=["t2"])), ["contradicts itself", "t2"]),
    ]
    for path, needles in cases:
        assert_user_error(cli(capsys, "predict", "--model", path, "--input", data, "--output", tmp_path / "x",
                              "--no-progress"), path.name, *needles)
    assert not (tmp_path / "x").exists()


def test_segmentation_exports_stay_format_v1_and_old_v1_files_load(tmp_path, capsys):
    ckpt = make_model(tmp_path / "seg.safetensors")
    onnx_file = tmp_path / "seg.onnx"
    assert cli(capsys, "export", ckpt, "--out", onnx_file)[0] == 0
    proto = onnx.load(str(onnx_file))
    entry = next(p for p in proto.metadata_props if p.key == "vox2vox")
    doc = json.loads(entry.value)
    assert doc["format_version"] == 1 and doc["task"] == {"kind": "segment"}
    assert doc["output"]["name"] == "probabilities" and doc["labels"]["convention"] == "binary"
    # A file of the first export format: no task section (segmentation implied).
    del doc["task"]
    entry.value = json.dumps(doc)
    old = tmp_path / "old.onnx"
    old.write_bytes(proto.SerializeToString())
    model = load_model(old, device="cpu")
    assert model.task == "segment" and list(model.classes) == [0, 1]
    image = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(image).labels, load_model(ckpt, device="cpu").predict(image).labels)


# ---- Python API ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pytorch", "onnx"])
def test_api_synthesis_is_predicts_output_voxel_for_voxel(setup, kind, tmp_path):
    model = load_model(setup["models"][kind], device="cpu")
    assert model.task == "translate" and model.channels == ["t1"] and model.targets == ["flair"]
    assert "translate ['t1'] -> ['flair']" in repr(model) and "written z-scored" in repr(model)
    case_id = setup["cases"][0]
    t1 = setup["data"] / case_id / f"{case_id}_t1.nii.gz"
    want, ref = _read(setup["outputs"][kind] / f"{case_id}.nii.gz")
    for given in (t1, [t1], {"t1": t1}, setup["data"] / case_id):
        result = model.predict(given)
        assert isinstance(result, Synthesis) and result.targets == ("flair",) and result.scale == "z-scored"
        assert result.volumes.shape == (1, *SHAPE) and result.volumes.dtype == np.float32
        np.testing.assert_array_equal(result.volume, want)
        np.testing.assert_allclose(result.affine, ref.affine)
        assert result.spacing == pytest.approx(SPACING)
    saved = result.save(tmp_path / "synth.nii.gz")
    data, img = _read(saved)
    np.testing.assert_array_equal(data, want)
    assert img.header["descrip"] == ref.header["descrip"] and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, ref.affine)


def test_api_arrays_with_spacing_or_affine_are_read_as_files(setup, tmp_path, capsys):
    model = load_model(setup["models"]["pytorch"], device="cpu")
    case_id = setup["cases"][1]
    source = nib.load(setup["data"] / case_id / f"{case_id}_t1.nii.gz")
    array = np.asanyarray(source.dataobj).astype(np.float32)
    by_affine = model.predict(array, affine=source.affine)
    want, _ = _read(setup["outputs"]["pytorch"] / f"{case_id}.nii.gz")
    np.testing.assert_array_equal(by_affine.volume, want)
    # Spacing alone: the array's axes as given, as a file with a diagonal affine of that spacing.
    flipped = np.ascontiguousarray(array[::-1].transpose(1, 0, 2))
    spacing = (SPACING[1], SPACING[0], SPACING[2])
    file = tmp_path / "in" / "t1.nii.gz"
    file.parent.mkdir()
    nib.save(nib.Nifti1Image(flipped, np.diag([*spacing, 1.0])), str(file))
    assert cli(capsys, "predict", "--model", setup["models"]["pytorch"], "--input", file, "--output",
               tmp_path / "out", "--no-progress")[0] == 0  # a single image is the one-source model's t1
    by_spacing = model.predict(flipped, spacing=spacing)
    np.testing.assert_array_equal(by_spacing.volume, _read(tmp_path / "out" / "t1.nii.gz")[0])
    assert by_spacing.volume.shape == flipped.shape
    # A mask replaces the source foreground: the synthesis is 0 outside it.
    mask = np.zeros(array.shape, bool)
    mask[4:28, 4:28, 4:28] = True
    masked = model.predict(array, affine=source.affine, mask=mask)
    assert np.all(masked.volume[~mask] == 0) and np.any(masked.volume[mask] != 0)


def test_api_predict_folder_synthesises_like_predict(setup, tmp_path):
    report = load_model(setup["models"]["torchscript"], device="cpu").predict_folder(
        setup["data"], tmp_path / "out", progress=False)
    assert sorted(report.written) == sorted(setup["cases"]) and not report.failed
    for case_id in setup["cases"]:
        got, img = _read(tmp_path / "out" / f"{case_id}.nii.gz")
        want, ref = _read(setup["outputs"]["torchscript"] / f"{case_id}.nii.gz")
        np.testing.assert_array_equal(got, want)
        assert img.header["descrip"] == ref.header["descrip"]


def test_api_refuses_segmentation_options_for_translation_models(setup, tmp_path):
    model = load_model(setup["models"]["onnx"], device="cpu")
    case_id = setup["cases"][0]
    t1 = setup["data"] / case_id / f"{case_id}_t1.nii.gz"
    for option in ({"probabilities": True}, {"uncertainty": True}, {"largest_component": "class"},
                   {"min_et_voxels": 10}):
        with pytest.raises(Vox2VoxError, match=f"a translation model; {next(iter(option))}= applies to segmentation"):
            model.predict(t1, **option)
    for option in ({"save_probabilities": "npz"}, {"output_format": "seg-nrrd"}, {"save_uncertainty": True}):
        with pytest.raises(Vox2VoxError, match="applies to segmentation"):
            model.predict_folder(setup["data"], tmp_path / "x", **option)
    assert not (tmp_path / "x").exists()
    with pytest.raises(Vox2VoxError, match="no classes; it synthesises flair"):
        _ = model.classes
    with pytest.raises(Vox2VoxError, match="spacing=, affine= and mask= are for arrays"):
        model.predict(t1, spacing=(1, 1, 1))
    with pytest.raises(Vox2VoxError, match="resamples to"):  # the model resamples: an array needs its grid
        model.predict(np.zeros(SHAPE, np.float32))
    with pytest.raises(Vox2VoxError, match="2 cases"):
        model.predict(setup["data"])
    seg = load_model(make_model(tmp_path / "seg.safetensors"), device="cpu")
    with pytest.raises(Vox2VoxError, match="synthesises no channels"):
        _ = seg.targets
    with pytest.raises(Vox2VoxError, match="translation models only"):
        load_model([setup["models"]["pytorch"], tmp_path / "seg.safetensors"], device="cpu")


def test_api_and_predict_with_two_targets(setup, tmp_path, capsys):
    ckpt = translation_checkpoint(tmp_path / "two.safetensors", target=("flair", "t2"))
    model = load_model(ckpt, device="cpu")
    case_id = setup["cases"][0]
    result = model.predict(setup["data"] / case_id / f"{case_id}_t1.nii.gz")
    assert result.volumes.shape == (2, *SHAPE) and result.targets == ("flair", "t2")
    with pytest.raises(Vox2VoxError, match="2 targets"):
        _ = result.volume
    with pytest.raises(Vox2VoxError, match="name one with target="):
        result.save(tmp_path / "x.nii.gz")
    assert cli(capsys, "predict", "--model", ckpt, "--input", setup["data"], "--output", tmp_path / "out",
               "--no-progress")[0] == 0
    for name in ("flair", "t2"):
        saved = _read(result.save(tmp_path / f"{name}.nii.gz", target=name))
        want = _read(tmp_path / "out" / f"{case_id}_{name}.nii.gz")
        np.testing.assert_array_equal(saved[0], want[0])
        assert saved[1].header["descrip"] == want[1].header["descrip"]
        assert f"synthetic {name}".encode() in saved[1].header["descrip"].tobytes()


# ---- model cards ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A T1 -> FLAIR run of two epochs (validation on one case) and its ONNX export."""
    root = tmp_path_factory.mktemp("card")
    write_brats_folder(root / "data", n_cases=3, seed=3, shape=SHAPE)
    settings = tiny_overrides({
        "task.kind": '"translate"', "task.source": '["t1"]', "task.target": '["flair"]',
        "train.patch_size": "[32,32,32]", "train.batch_size": "1", "train.patches_per_case": "1",
        "data.val_cases": "1", "train.device": '"cpu"', "train.epochs": "2",
    })
    assert _main("train", "--config", "paper", "--data", root / "data", "--out", root / "run", *settings) == 0
    assert _main("export", root / "run", "--out", root / "run.onnx") == 0
    return root


def _fields(out: str) -> dict[str, str]:
    return {k: v.strip() for k, v in (line.split(None, 1) for line in out.splitlines() if not line.startswith(" "))}


def test_info_of_a_translation_run_and_its_export(trained, capsys):
    metrics = [json.loads(line) for line in (trained / "run" / "metrics.jsonl").read_text().splitlines()]
    scored = [m for m in metrics if "val_score" in m]
    best = max(scored, key=lambda m: m["val_score"])
    cards = {}
    for model in (trained / "run", trained / "run.onnx"):
        code, out, err = cli(capsys, "info", model)
        assert code == 0, err
        fields = cards[model.suffix or "run"] = _fields(out)
        assert fields["task"] == "translate t1 -> flair (synthesised volumes)"
        assert fields["channels"] == "t1" and "labels" not in fields
        assert fields["output"].startswith("flair: linear head")
        assert fields["intensity"].startswith("written z-scored: z-scored over the source foreground")
        assert fields["objective"] == "1 x LSGAN adversarial + 100 x L1"
        assert fields["validation"].startswith(f"best MAE {best['val_mae']:.4f} (epoch {best['epoch']}), last ")
        assert "lower is better" in fields["validation"] and "Dice" not in out
        assert "2 epochs" in fields["training"] and "torch" in fields["versions"]
    assert "exported" not in cards["run"]
    assert cards[".onnx"]["exported"].startswith("onnx, opset 17 (export format v2")
    assert "output 'synthesis'" in cards[".onnx"]["exported"] and "from best.safetensors" in cards[".onnx"]["exported"]
    for key in ("task", "validation", "training", "objective", "intensity"):
        assert cards["run"][key] == cards[".onnx"][key]


def test_info_json_of_a_translation_model(trained, capsys):
    for model in (trained / "run", trained / "run.onnx"):
        code, out, _ = cli(capsys, "info", model, "--json")
        assert code == 0
        card = json.loads(out)
        assert card["labels"] is None and card["channels"] == ["t1"]
        task = card["task"]
        assert task["kind"] == "translate" and task["source"] == ["t1"] and task["target"] == ["flair"]
        assert task["head"] == "linear" and task["intensity"]["scale"] == "z-scored" and task["select"] == "mae"
        assert task["objective"] == {"adversarial": True, "lambda_adv": 1.0, "adversarial_start": 0.0,
                                     "lambda_l1": 100.0, "lambda_ssim": 0.0}
        training = card["training"]
        assert training["metric"] == "mae" and training["best_mae"] == pytest.approx(-training["best_score"])
        assert (card["exported"] is None) == (model.suffix != ".onnx")


def test_info_with_ssim_selection_and_no_adversarial_term(tmp_path, capsys):
    ckpt2 = translation_checkpoint(tmp_path / "ssim.safetensors", state={"best_score": 0.61, "best_epoch": 3},
                                   task={"select": "ssim", "lambda_ssim": 5.0}, loss={"adversarial": False})
    code, out, err = cli(capsys, "info", ckpt2)
    assert code == 0, err
    fields = _fields(out)
    assert fields["objective"] == "100 x L1 + 5 x (1 - SSIM) (no adversarial term)"
    assert fields["validation"].startswith("best SSIM 0.6100 (epoch 3)") and "higher is better" in fields["validation"]


def test_info_of_a_segmentation_export_shows_labels_and_the_export(tmp_path, capsys):
    ckpt = make_model(tmp_path / "seg.safetensors")
    assert cli(capsys, "export", ckpt, "--out", tmp_path / "seg.pt")[0] == 0
    code, out, err = cli(capsys, "info", tmp_path / "seg.pt")
    assert code == 0, err
    fields = _fields(out)
    assert fields["exported"].startswith("torchscript (export format v1") and "output 'probabilities'" in fields["exported"]
    assert fields["labels"].startswith("binary") and "task" not in fields and fields["channels"] == "c0"
    assert json.loads(cli(capsys, "info", tmp_path / "seg.pt", "--json")[1])["task"] == {"kind": "segment"}
    # A file named like an export that is not one: one line, nothing run.
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a protobuf at all")
    assert_user_error(cli(capsys, "info", fake), "fake.onnx")


# ---- one real case ------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_brats_t1_to_flair_export_and_api_match_predict(shared_data, tmp_path, capsys):
    """BraTS 2018 (240x240x155, LPS: reoriented) T1 -> FLAIR at 3 mm: checkpoint, ONNX export and
    the API give the same synthesis on the input's grid."""
    case = shared_data / "brats2018-deepvoxnet2" / "case_0"
    manifest = tmp_path / "cases.csv"
    manifest.write_text(f"id,T1,FLAIR\ncase_0,{case / 'T1.nii.gz'},{case / 'FLAIR.nii.gz'}\n")
    ckpt = translation_checkpoint(tmp_path / "best.safetensors", source=("T1",), target=("FLAIR",),
                                  prep={"target_spacing": [3.0, 3.0, 3.0], "pad_multiple": 8})
    assert cli(capsys, "export", ckpt, "--out", tmp_path / "m.onnx")[0] == 0
    outs = {}
    for name, model in (("pt", ckpt), ("onnx", tmp_path / "m.onnx")):
        code, _, err = cli(capsys, "predict", "--model", model, "--input", manifest, "--output", tmp_path / name,
                           "--no-progress")
        assert code == 0, err
        outs[name] = _read(tmp_path / name / "case_0.nii.gz")
    source = nib.load(case / "T1.nii.gz")
    want, img = outs["pt"]
    assert want.shape == source.shape and np.allclose(img.affine, source.affine)
    assert np.all(want[np.asanyarray(source.dataobj) == 0] == 0)
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(outs["onnx"][0], want, rtol=0, atol=1e-4 * scale)
    model = load_model(tmp_path / "m.onnx", device="cpu")
    result = model.predict([case / "T1.nii.gz"])
    np.testing.assert_array_equal(result.volume, outs["onnx"][0])
    # Saved from the input's (LPS) voxel order back onto its grid: predict's file, header included.
    saved, saved_img = _read(result.save(tmp_path / "api.nii.gz"))
    np.testing.assert_array_equal(saved, outs["onnx"][0])
    np.testing.assert_allclose(saved_img.affine, source.affine)
    assert saved_img.header["descrip"] == outs["onnx"][1].header["descrip"]
    by_array = model.predict(np.asanyarray(source.dataobj), affine=source.affine)
    np.testing.assert_array_equal(by_array.volume, outs["onnx"][0])
