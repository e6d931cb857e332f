"""The catalogue of bad inputs (docs/bad-inputs.md), each through the command line.

Every bad input must give exit status 2, exactly one line on stderr that names the file (or config
key) and the problem, no traceback, and nothing half-written in the output folder.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import resource
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import vox2vox.atomic
from helpers import (
    SHAPE,
    TINY,
    TINY_SETTINGS,
    assert_nothing_written,
    assert_user_error,
    ball,
    cli,
    make_manifest,
    make_model,
    no_temporary_files,
    save_nifti,
)
from vox2vox.config import Config
from vox2vox.data.labels import get_convention
from vox2vox.model.checkpoint import Checkpoint, save_checkpoint
from vox2vox.model.generator import Generator


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "model.safetensors")


# ---- bad volume files -----------------------------------------------------------------------------
def _missing(path: Path) -> None:
    path.unlink()


def _not_an_image(path: Path) -> None:
    path.write_text("id,name\n1,this is a spreadsheet, not a volume\n")


def _not_nifti_inside_gzip(path: Path) -> None:
    path.write_bytes(gzip.compress(b"plain text, gzipped, named .nii.gz" * 20))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _nan_voxels(path: Path) -> None:
    data = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
    data[5, 5, 5] = np.nan
    data[6, 6, 6] = np.inf
    save_nifti(path, data)


def _two_d(path: Path) -> None:
    save_nifti(path, np.ones(SHAPE[:2], np.float32))


def _five_d(path: Path) -> None:
    save_nifti(path, np.ones((*SHAPE, 2, 2), np.float32))


def _header_declaring(path: Path, shape: tuple[int, ...]) -> None:
    """A small .nii.gz whose header declares ``shape`` (with a few bytes of voxel data)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape)
    header.set_sform(np.eye(4), code=1)
    raw = header.binaryblock + b"\0" * (int(header["vox_offset"]) - len(header.binaryblock)) + b"\0" * 64
    path.write_bytes(gzip.compress(raw))


def _huge_header(path: Path) -> None:
    _header_declaring(path, (30000, 30000, 30000))


def _zero_size(path: Path) -> None:
    _header_declaring(path, (16, 0, 16))


def _rgb(path: Path) -> None:
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    save_nifti(path, rgb)


def _overflowing_scale(path: Path) -> None:
    data = (np.arange(np.prod(SHAPE)) % 300).reshape(SHAPE).astype(np.int16)
    data[5, 5, 5] = 1000  # 1000 * 1e36 is past float32's 3.4e38; the rest fits
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(1e36, 0.0)
    nib.save(img, str(path))


#: name -> (how to spoil a file, words the message must contain)
BAD_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "huge-header": (_huge_header, "header declares 30000x30000x30000"),
    "zero-size": (_zero_size, "zero-size dimension"),
    "rgb": (_rgb, "RGB"),
    "overflow": (_overflowing_scale, "beyond the float32 range"),
    "missing": (_missing, "not found"),
    "not-an-image": (_not_an_image, "not a NIfTI"),
    "gzipped-text": (_not_nifti_inside_gzip, "NIfTI"),
    "truncated": (_truncated, "corrupt"),
    "zero-bytes": (_zero_bytes, "0 bytes"),
    "nan-inf": (_nan_voxels, "2 NaN/Inf voxels"),
    "2d": (_two_d, "dimensions"),
    "5d": (_five_d, "dimensions"),
}
# `vox2vox dataset` lists problems in its table; its one stderr line names the file and the count.
DATASET_WORDS = {"missing": "missing channel", "overflow": "1 NaN/Inf voxels"}


def test_planned_train_keeps_the_one_line_rule(tmp_path, capsys):
    """Without --config, train plans from the data first: a bad file is still one line, and
    nothing (no plan.toml) is written; a used run folder is refused before any planning."""
    manifest = make_manifest(tmp_path / "data")
    target = tmp_path / "data" / "case_001_image.nii.gz"
    target.write_bytes(b"not a volume")
    run = tmp_path / "run"
    assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY_SETTINGS), target)
    assert_nothing_written(run)
    used = tmp_path / "used"
    (used / "checkpoints").mkdir(parents=True)
    (used / "checkpoints" / "last.safetensors").write_bytes(b"")
    line = assert_user_error(cli(capsys, "train", "--data", manifest, "--out", used, *TINY_SETTINGS), used)
    assert "already holds a run" in line
    assert sorted(p.name for p in used.rglob("*")) == ["checkpoints", "last.safetensors"]


@pytest.mark.parametrize("bad", list(BAD_FILES))
def test_bad_image_file_in_train(tmp_path, capsys, bad):
    spoil, words = BAD_FILES[bad]
    manifest = make_manifest(tmp_path / "data")
    target = tmp_path / "data" / "case_001_image.nii.gz"
    spoil(target)
    run = tmp_path / "run"
    line = assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY), target)
    assert words in line
    assert_nothing_written(run)


@pytest.mark.parametrize("bad", list(BAD_FILES))
def test_bad_label_file_in_train(tmp_path, capsys, bad):
    spoil, words = BAD_FILES[bad]
    manifest = make_manifest(tmp_path / "data")
    target = tmp_path / "data" / "case_000_seg.nii.gz"
    spoil(target)
    run = tmp_path / "run"
    line = assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY), target)
    assert words in line
    assert_nothing_written(run)


@pytest.mark.parametrize("bad", list(BAD_FILES))
def test_bad_image_file_in_predict(tmp_path, capsys, model, bad):
    spoil, words = BAD_FILES[bad]
    manifest = make_manifest(tmp_path / "data", n_cases=1)
    target = tmp_path / "data" / "case_000_image.nii.gz"
    spoil(target)
    out = tmp_path / "pred"
    result = cli(capsys, "predict", "--model", model, "--input", manifest, "--output", out, "--no-progress")
    line = assert_user_error(result, target, "case_000")
    assert words in line
    assert_nothing_written(out)


@pytest.mark.parametrize("bad", [b for b in BAD_FILES if b != "missing"])
def test_bad_single_image_in_predict(tmp_path, capsys, model, bad):
    spoil, words = BAD_FILES[bad]
    image = save_nifti(tmp_path / "scan.nii.gz", ball(0)[0])
    spoil(image)
    out = tmp_path / "pred"
    result = cli(capsys, "predict", "--model", model, "--input", image, "--output", out, "--no-progress")
    assert words in assert_user_error(result, image)
    assert_nothing_written(out)


def test_missing_single_image_in_predict(tmp_path, capsys, model):
    image = tmp_path / "scan.nii.gz"
    out = tmp_path / "pred"
    result = cli(capsys, "predict", "--model", model, "--input", image, "--output", out)
    assert_user_error(result, image, "not found")
    assert_nothing_written(out)


@pytest.mark.parametrize("bad", list(BAD_FILES))
def test_bad_file_in_dataset_check(tmp_path, capsys, bad):
    spoil, words = BAD_FILES[bad]
    manifest = make_manifest(tmp_path / "data")
    target = tmp_path / "data" / "case_001_image.nii.gz"
    spoil(target)
    code, out, err = result = cli(capsys, "dataset", manifest)
    assert_user_error(result, target.name, "1 error")
    assert DATASET_WORDS.get(bad, words) in out  # the full table still lists the problem


# A missing prediction is not an error: evaluate scores it as empty (the BraTS rule).
@pytest.mark.parametrize("bad", [b for b in BAD_FILES if b != "missing"])
def test_bad_prediction_file_in_evaluate(tmp_path, capsys, bad):
    spoil, words = BAD_FILES[bad]
    truth = tmp_path / "truth"
    save_nifti(truth / "case_000.nii.gz", ball(0)[1])
    pred = save_nifti(tmp_path / "pred" / "case_000.nii.gz", ball(0)[1])
    spoil(pred)
    csv = tmp_path / "scores" / "eval.csv"
    line = assert_user_error(cli(capsys, "evaluate", "--pred", pred.parent, "--truth", truth, "--out", csv), pred)
    assert words in line
    assert_nothing_written(csv.parent)


def test_missing_folders_in_evaluate(tmp_path, capsys):
    truth = tmp_path / "truth"
    save_nifti(truth / "case_000.nii.gz", ball(0)[1])
    assert_user_error(cli(capsys, "evaluate", "--pred", tmp_path / "nope", "--truth", truth), tmp_path / "nope")
    (tmp_path / "pred").mkdir()
    assert_user_error(cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--truth", tmp_path / "t2"),
                      tmp_path / "t2", "not found")


# ---- grids and labels -----------------------------------------------------------------------------
def test_channels_with_different_shapes(tmp_path, capsys, model):
    manifest = make_manifest(tmp_path / "data", channels=("t1", "t2"))
    odd = tmp_path / "data" / "case_001_t2.nii.gz"
    save_nifti(odd, np.ones((16, 16, 12), np.float32))
    run = tmp_path / "run"
    assert "shape" in assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY), odd)
    assert_nothing_written(run)
    code, out, _ = result = cli(capsys, "dataset", manifest)
    assert_user_error(result, odd.name)
    assert "differs" in out
    two_channel = make_model(tmp_path / "m2.safetensors", in_channels=2)
    pred = tmp_path / "pred"
    result = cli(capsys, "predict", "--model", two_channel, "--input", manifest, "--output", pred, "--no-progress")
    assert "shape" in assert_user_error(result, odd)
    # The healthy case was still predicted; the broken one left nothing behind.
    assert sorted(p.name for p in pred.iterdir()) == ["case_000.nii.gz", "labels.json"]  # and the label record


@pytest.mark.parametrize("change", ["affine", "shape"])
def test_label_on_another_grid(tmp_path, capsys, change):
    manifest = make_manifest(tmp_path / "data")
    seg = tmp_path / "data" / "case_000_seg.nii.gz"
    label = ball(0)[1]
    if change == "affine":
        affine = np.diag([1.0, 1.0, 2.0, 1.0])
        save_nifti(seg, label, affine)
    else:
        save_nifti(seg, label[:, :, :-2])
    run = tmp_path / "run"
    line = assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY), seg)
    assert change in line
    assert_nothing_written(run)
    assert_user_error(cli(capsys, "dataset", manifest), seg.name)


def test_prediction_on_another_grid_than_truth(tmp_path, capsys):
    truth = save_nifti(tmp_path / "truth" / "case_000.nii.gz", ball(0)[1])
    pred = save_nifti(tmp_path / "pred" / "case_000.nii.gz", ball(0)[1], np.diag([2.0, 1.0, 1.0, 1.0]))
    csv = tmp_path / "scores" / "eval.csv"
    line = assert_user_error(cli(capsys, "evaluate", "--pred", pred.parent, "--truth", truth.parent, "--out", csv),
                             pred)
    assert "grid differs" in line
    assert_nothing_written(csv.parent)


def test_label_values_outside_the_convention(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data")
    seg = tmp_path / "data" / "case_001_seg.nii.gz"
    label = ball(1)[1]
    label[0, 0, 0] = 7
    save_nifti(seg, label)
    run = tmp_path / "run"
    result = cli(capsys, "train", "--data", manifest, "--out", run, "--set", 'data.convention="binary"', *TINY)
    assert "label values 7" in assert_user_error(result, seg, "binary")
    assert_nothing_written(run)
    code, out, _ = result = cli(capsys, "dataset", manifest, "--convention", "binary")
    assert_user_error(result, seg.name)
    assert "label values [7]" in out


def test_negative_labels_without_a_convention(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data")
    seg = tmp_path / "data" / "case_001_seg.nii.gz"
    save_nifti(seg, ball(1)[1].astype(np.int16) - 1)
    run = tmp_path / "run"
    assert "negative" in assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY), seg)
    assert_nothing_written(run)


# ---- datasets and manifests -----------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "dataset", "predict", "evaluate"])
def test_empty_dataset_folder(tmp_path, capsys, model, command):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    argv = {
        "train": ["train", "--data", empty, "--out", out, *TINY],
        "dataset": ["dataset", empty],
        "predict": ["predict", "--model", model, "--input", empty, "--output", out],
        "evaluate": ["evaluate", "--pred", empty, "--truth", empty, "--out", out / "e.csv"],
    }[command]
    assert_user_error(cli(capsys, *argv), empty)
    assert_nothing_written(out)


def _manifest_without_channel(manifest: Path) -> str:
    manifest.write_text("id,label\ncase_000,case_000_seg.nii.gz\n")
    return "no image channel"


def _manifest_short_row(manifest: Path) -> str:
    manifest.write_text("id,image,label\ncase_000,case_000_image.nii.gz\n")
    return "line 2 has 2 columns"


def _manifest_without_id(manifest: Path) -> str:
    manifest.write_text("image,label\ncase_000_image.nii.gz,case_000_seg.nii.gz\n")
    return "first column must be 'id'"


def _manifest_duplicate_id(manifest: Path) -> str:
    manifest.write_text(manifest.read_text().replace("case_001,", "case_000,"))
    return "repeated"


def _manifest_missing_path(manifest: Path) -> str:
    manifest.write_text(manifest.read_text().replace("case_001_image.nii.gz", "nowhere/case_001_image.nii.gz"))
    return "nowhere"


def _manifest_empty(manifest: Path) -> str:
    manifest.write_text("")
    return "empty"


def _manifest_not_utf8(manifest: Path) -> str:
    manifest.write_bytes(b"\xff\xfe\x00id,image\n\x80\x81\n")
    return "cannot read manifest"


def _manifest_overlong_field(manifest: Path) -> str:
    manifest.write_text(manifest.read_text() + "case_002," + "x" * 200_000 + ",y.nii.gz\n")
    return "malformed CSV"


def _manifest_nul_byte(manifest: Path) -> str:
    manifest.write_bytes(manifest.read_bytes() + b"case_002,a\0b.nii.gz,c.nii.gz\n")
    return "malformed CSV"


MANIFEST_PROBLEMS = [_manifest_without_channel, _manifest_short_row, _manifest_without_id,
                     _manifest_duplicate_id, _manifest_missing_path, _manifest_empty, _manifest_not_utf8,
                     _manifest_overlong_field, _manifest_nul_byte]


@pytest.mark.parametrize("problem", MANIFEST_PROBLEMS, ids=lambda f: f.__name__.removeprefix("_manifest_"))
@pytest.mark.parametrize("command", ["train", "dataset", "predict"])
def test_bad_manifest(tmp_path, capsys, model, problem, command):
    manifest = make_manifest(tmp_path / "data")
    words = problem(manifest)
    out = tmp_path / "out"
    argv = {
        "train": ["train", "--data", manifest, "--out", out, *TINY],
        "dataset": ["dataset", manifest],
        "predict": ["predict", "--model", model, "--input", manifest, "--output", out, "--no-progress"],
    }[command]
    line = assert_user_error(cli(capsys, *argv), "manifest.csv" if problem is not _manifest_missing_path else "")
    if command != "dataset" or problem is not _manifest_missing_path:
        assert words in line
    if command == "predict" and problem is _manifest_missing_path:
        # The healthy case is predicted; the broken one leaves nothing behind.
        assert sorted(p.name for p in out.iterdir()) == ["case_000.nii.gz", "labels.json"]
    else:
        assert_nothing_written(out)


# ---- configuration --------------------------------------------------------------------------------
CONFIG_PROBLEMS = {
    "unknown-key": ({"train": {"epochz": 3}}, "'train.epochz'"),
    "unknown-section": ({"trainer": {"epochs": 3}}, "'trainer'"),
    "wrong-type": ({"train": {"epochs": "many"}}, "train.epochs='many': expected an integer"),
    "bool-for-int": ({"train": {"batch_size": True}}, "train.batch_size=True"),
    "patch-not-multiple": ({"train": {"patch_size": [24, 24, 24]}, "generator": {"depth": 4}}, "multiple of"),
    "negative-lr": ({"optim": {"lr_g": -0.001}}, "optim.lr_g"),
    "zero-epochs": ({"train": {"epochs": 0}}, "train.epochs=0"),
    "bad-choice": ({"train": {"device": "tpu"}}, "train.device='tpu'"),
    "not-a-table": ([1, 2, 3], "top level"),
}


@pytest.mark.parametrize("problem", list(CONFIG_PROBLEMS))
def test_bad_config_file(tmp_path, capsys, problem):
    content, words = CONFIG_PROBLEMS[problem]
    manifest = make_manifest(tmp_path / "data")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(content))
    run = tmp_path / "run"
    line = assert_user_error(cli(capsys, "train", "--data", manifest, "--config", config, "--out", run), config)
    assert words in line
    assert_nothing_written(run)


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.patch_size=[20,20,20]", "multiple of"),
        ("optim.lr_d=-1", "optim.lr_d"),
        ("train.nope=1", "'train.nope'"),
        ("train.epochs=1.5", "expected an integer"),
        ("train.epochs", "section.key=value"),
    ],
)
def test_bad_config_override(tmp_path, capsys, override, words):
    manifest = make_manifest(tmp_path / "data")
    run = tmp_path / "run"
    line = assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY, "--set", override))
    assert words in line
    assert_nothing_written(run)


def test_config_file_that_is_not_json_or_missing(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data")
    broken = tmp_path / "config.json"
    broken.write_text("{train: epochs = 3")
    assert_user_error(cli(capsys, "train", "--data", manifest, "--config", broken), broken, "not valid")
    toml = tmp_path / "config.toml"
    toml.write_text("[train\nepochs=")
    assert_user_error(cli(capsys, "train", "--data", manifest, "--config", toml), toml, "not valid")
    missing = tmp_path / "none.json"
    assert_user_error(cli(capsys, "train", "--data", manifest, "--config", missing), missing, "cannot read")


# ---- checkpoints ----------------------------------------------------------------------------------
def test_checkpoint_channel_count_does_not_match_the_data(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data", channels=("t1", "t2"))
    model = make_model(tmp_path / "one_channel.safetensors", in_channels=1)
    out = tmp_path / "pred"
    result = cli(capsys, "predict", "--model", model, "--input", manifest, "--output", out)
    assert_user_error(result, manifest, "2 channel(s)", "trained on 1")
    assert_nothing_written(out)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":"])
def test_damaged_checkpoint(tmp_path, capsys, content):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(content)
    image = save_nifti(tmp_path / "scan.nii.gz", ball(0)[0])
    out = tmp_path / "pred"
    assert_user_error(cli(capsys, "predict", "--model", ckpt, "--input", image, "--output", out), ckpt)
    assert_nothing_written(out)


def test_truncated_checkpoint(tmp_path, capsys, model):
    ckpt = tmp_path / "model.safetensors"
    data = model.read_bytes()
    ckpt.write_bytes(data[: len(data) - 100])
    image = save_nifti(tmp_path / "scan.nii.gz", ball(0)[0])
    out = tmp_path / "pred"
    assert_user_error(cli(capsys, "predict", "--model", ckpt, "--input", image, "--output", out), ckpt)
    assert_nothing_written(out)


def test_run_directory_without_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    image = save_nifti(tmp_path / "scan.nii.gz", ball(0)[0])
    assert_user_error(cli(capsys, "predict", "--model", run, "--input", image, "--output", tmp_path / "p"),
                      run, "no checkpoint")


# ---- outputs that cannot be written ---------------------------------------------------------------
# Tests run as root, which chmod cannot stop from writing. A folder path that runs THROUGH a regular
# file fails for every user (ENOTDIR: the kernel cannot look up a name inside a file).
@pytest.fixture
def blocker(tmp_path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("I am a file, not a folder\n")
    return path


def test_train_output_under_a_file(tmp_path, capsys, blocker):
    manifest = make_manifest(tmp_path / "data")
    run = blocker / "run"
    assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY), blocker)
    assert blocker.read_text() == "I am a file, not a folder\n"


def test_train_output_is_a_file(tmp_path, capsys, blocker):
    manifest = make_manifest(tmp_path / "data")
    assert_user_error(cli(capsys, "train", "--data", manifest, "--out", blocker, *TINY), blocker)
    assert blocker.read_text() == "I am a file, not a folder\n"


def test_predict_output_under_a_file(tmp_path, capsys, model, blocker):
    image = save_nifti(tmp_path / "scan.nii.gz", ball(0)[0])
    out = blocker / "pred"
    result = cli(capsys, "predict", "--model", model, "--input", image, "--output", out, "--no-progress")
    assert_user_error(result, blocker, "cannot create output folder")


def test_evaluate_output_under_a_file(tmp_path, capsys, blocker):
    truth = save_nifti(tmp_path / "truth" / "case_000.nii.gz", ball(0)[1])
    pred = save_nifti(tmp_path / "pred" / "case_000.nii.gz", ball(0)[1])
    result = cli(capsys, "evaluate", "--pred", pred.parent, "--truth", truth.parent, "--out", blocker / "e.csv")
    assert_user_error(result, blocker, "cannot create output folder")


def test_demo_output_under_a_file(capsys, blocker):
    assert_user_error(cli(capsys, "demo", "--out", blocker / "demo", "--size", "tiny"), blocker)


# ---- a full disk ----------------------------------------------------------------------------------
def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def full_disk(monkeypatch):
    """Every atomic write fails as a full disk fails it: flushing the data reports ENOSPC."""
    monkeypatch.setattr(vox2vox.atomic, "_fsync", _disk_full)


def test_predict_on_a_full_disk(tmp_path, capsys, model, full_disk):
    image = save_nifti(tmp_path / "scan.nii.gz", ball(0)[0])
    out = tmp_path / "pred"
    result = cli(capsys, "predict", "--model", model, "--input", image, "--output", out, "--no-progress")
    assert_user_error(result, out / "scan.nii.gz", "No space left on device")
    assert_nothing_written(out)


def test_train_on_a_full_disk(tmp_path, capsys, full_disk):
    manifest = make_manifest(tmp_path / "data")
    run = tmp_path / "run"
    line = assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY), run)
    assert "No space left on device" in line
    assert not no_temporary_files(run) and not (run / "checkpoints").exists()


def test_evaluate_on_a_full_disk(tmp_path, capsys, full_disk):
    truth = save_nifti(tmp_path / "truth" / "case_000.nii.gz", ball(0)[1])
    pred = save_nifti(tmp_path / "pred" / "case_000.nii.gz", ball(0)[1])
    csv = tmp_path / "scores" / "eval.csv"
    result = cli(capsys, "evaluate", "--pred", pred.parent, "--truth", truth.parent, "--out", csv)
    assert_user_error(result, csv, "No space left on device")
    assert_nothing_written(csv.parent)


@contextlib.contextmanager
def file_size_limit(limit: int = 16 * 1024) -> Iterator[None]:
    """A real write failure from the kernel, for root too: under RLIMIT_FSIZE any write past
    ``limit`` bytes fails with EFBIG (Python ignores SIGXFSZ, so the write returns the error)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_predict_when_the_kernel_refuses_the_write(tmp_path, capsys, model):
    image = save_nifti(tmp_path / "scan.nii.gz", np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32))
    out = tmp_path / "pred"
    argv = ["predict", "--model", model, "--input", image, "--output", out, "--no-progress",
            "--save-probabilities", "nifti"]
    # The label map (~1 KiB compressed) fits; the float32 probabilities (~1 MiB) do not.
    with file_size_limit():
        result = cli(capsys, *argv)
    line = assert_user_error(result, out / "scan_probs.nii.gz")
    assert "File too large" in line
    assert not no_temporary_files(out)


# ---- issue 13: numbers ----------------------------------------------------------------------------
# Every float field of every section, nested sections and lists included, through a JSON file
# (Python's json reads NaN/Infinity), a TOML file (nan/inf) and --set.
NONFINITE_FIELDS = [
    ("loss", "lambda_dice", "NaN", "nan"),
    ("loss", "lambda_ce", "Infinity", "inf"),
    ("optim", "lr_g", "-Infinity", "-inf"),
    ("train", "foreground_prob", "NaN", "nan"),
    ("data", "val_fraction", "NaN", "nan"),
    ("generator", "dropout", "NaN", "nan"),
    ("augment", "gain_range", "[0.9, Infinity]", "[0.9, inf]"),
    ("preprocess", "ct_window", "[-Infinity, 100]", "[-inf, 100]"),
]


@pytest.mark.parametrize("source", ["json", "toml", "set"])
@pytest.mark.parametrize("section, key, json_value, toml_value", NONFINITE_FIELDS)
def test_nonfinite_config_values_are_refused(tmp_path, capsys, source, section, key, json_value, toml_value):
    manifest = make_manifest(tmp_path / "data")
    run = tmp_path / "run"
    argv = ["train", "--data", manifest, "--out", run, *TINY]
    if source == "json":
        config = tmp_path / "config.json"
        config.write_text(f'{{"{section}": {{"{key}": {json_value}}}}}')
        argv += ["--config", config]
    elif source == "toml":
        config = tmp_path / "config.toml"
        config.write_text(f"[{section}]\n{key} = {toml_value}\n")
        argv += ["--config", config]
    else:
        argv += ["--set", f"{section}.{key}={json_value}"]
    line = assert_user_error(cli(capsys, *argv), f"{section}.{key}", "finite")
    if source != "set":
        assert str(config) in line
    assert_nothing_written(run)


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.patch_size=[1048576,1048576,1048576]", "train.patch_size"),
        ("generator.kernel_size=100000", "generator.kernel_size"),
        ("discriminator.n_strided=100000", "discriminator.n_strided"),
        ("train.batch_size=100000000000", "train.batch_size"),
        ("train.seed=" + "9" * 40, "train.seed"),
        ("optim.lr_g=" + "9" * 400, "optim.lr_g"),
    ],
)
def test_absurd_sizes_in_plan_and_train(tmp_path, capsys, override, words):
    assert_user_error(cli(capsys, "plan", "--set", override), words)
    manifest = make_manifest(tmp_path / "data")
    run = tmp_path / "run"
    assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY, "--set", override), words)
    assert_nothing_written(run)


def _with_nan_weight(model: Path, target: Path) -> Path:
    from vox2vox.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(model)
    name = next(iter(ckpt.generator))
    ckpt.generator[name] = ckpt.generator[name].clone()
    ckpt.generator[name].view(-1)[0] = float("nan")
    save_checkpoint(target, ckpt)
    return target


def test_checkpoint_with_nan_weights_is_refused(tmp_path, capsys, model):
    bad = _with_nan_weight(model, tmp_path / "nan.safetensors")
    image = save_nifti(tmp_path / "scan.nii.gz", ball(0)[0])
    out = tmp_path / "pred"
    line = assert_user_error(cli(capsys, "predict", "--model", bad, "--input", image, "--output", out), bad)
    assert "NaN/Inf" in line
    assert_nothing_written(out)


def _nan_after(monkeypatch, good_calls: int) -> None:
    """The Dice loss turns NaN after ``good_calls`` train steps (a real NaN: it reaches the weights)."""
    import vox2vox.train.distributed as dist

    real = dist.batch_dice_loss
    calls = {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] > good_calls else value

    monkeypatch.setattr(dist, "batch_dice_loss", loss)


@pytest.mark.parametrize("validation", [False, True])
def test_training_stops_on_a_nonfinite_loss(tmp_path, capsys, monkeypatch, validation):
    from vox2vox.model.checkpoint import load_checkpoint

    manifest = make_manifest(tmp_path / "data", n_cases=3 if validation else 2)
    run = tmp_path / "run"
    _nan_after(monkeypatch, good_calls=2)  # epoch 1 trains 2 cases; epoch 2 diverges
    argv = ["train", "--data", manifest, "--out", run, *TINY, "--set", "train.epochs=4"]
    if validation:
        argv += ["--set", "data.val_cases=1"]
    code, _, err = cli(capsys, *argv)
    # Epoch 1's log line comes first; then the one error line, and no traceback.
    lines = [line.rsplit("\r", 1)[-1] for line in err.split("\n") if line.rsplit("\r", 1)[-1].strip()]
    assert code == 2 and "Traceback" not in err, err
    assert [line for line in lines if "error" in line] == lines[-1:]
    for needle in (run, "non-finite", "epoch 2", "last good checkpoint"):
        assert str(needle) in lines[-1]
    last = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert last.state["epoch"] == 1  # the diverged epoch was not saved
    best = run / "checkpoints" / "best.safetensors"
    if validation:
        assert load_checkpoint(best).state["best_epoch"] == 1
    else:
        assert not best.exists()
    logged = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in logged] == [1]


# ---- issue 13: labels -----------------------------------------------------------------------------
def _relabel(manifest: Path, change: Callable[[np.ndarray, int], np.ndarray], dtype=np.int64) -> None:
    for i, seg in enumerate(sorted(manifest.parent.glob("case_*_seg.nii.gz"))):
        label = np.asarray(nib.load(str(seg)).dataobj).astype(np.int64)
        nib.save(nib.Nifti1Image(change(label, i).astype(dtype), np.eye(4), dtype=dtype), str(seg))


def _trained_convention(run: Path) -> tuple[int, list[int]]:
    from vox2vox.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run / "checkpoints" / "last.safetensors")
    values = sorted(int(v) for v in ckpt.state["convention"]["values"])
    return ckpt.config["generator"]["n_classes"], values


def test_0_255_masks_train_a_binary_model_with_a_note(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data")
    _relabel(manifest, lambda label, i: label * 255, np.uint8)
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", manifest, "--out", run, *TINY)
    assert code == 0, err
    assert "0 and 255" in err and "binary" in err
    assert _trained_convention(run) == (2, [0, 255])


def test_huge_label_value_is_a_class_not_an_allocation(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data")
    _relabel(manifest, lambda label, i: np.where(label > 0, 2**40, 0) if i == 0 else label)
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", manifest, "--out", run, *TINY)
    assert code == 0, err
    assert _trained_convention(run) == (3, [0, 1, 2**40])


def test_more_than_64_label_values_need_a_declared_convention(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data")
    _relabel(manifest, lambda label, i: np.arange(label.size).reshape(label.shape) % 100, np.uint8)
    run = tmp_path / "run"
    line = assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY), "100 distinct", "64")
    assert "convention" in line
    assert_nothing_written(run)
    code, out, _ = result = cli(capsys, "dataset", manifest)
    assert_user_error(result, "100 distinct")
    # Declared, the same labels are accepted.
    values = {str(v): f"c{v}" for v in range(100)}
    conv = tmp_path / "hundred.json"
    conv.write_text(json.dumps({"values": values}))
    code, out, err = cli(capsys, "dataset", manifest, "--convention", conv)
    assert code == 0, err


def _ignore_convention(path: Path) -> Path:
    path.write_text(json.dumps({"name": "with-ignore", "values": {"0": "background", "1": "ball"},
                                "regions": {"ball": [1]}, "ignore": 9}))
    return path


def test_ignore_label_trains_and_is_left_out_of_the_scores(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data", n_cases=3)
    _relabel(manifest, lambda label, i: np.where(np.indices(label.shape)[0] < 3, 9, label), np.uint8)
    conv = _ignore_convention(tmp_path / "conv.json")
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", manifest, "--out", run, *TINY,
                       "--set", f"data.convention={json.dumps(str(conv))}", "--set", "data.val_cases=1")
    assert code == 0, err
    assert _trained_convention(run) == (2, [0, 1])
    # Evaluate: a prediction that differs from the truth only where the truth is 'ignore' scores 1.
    truth_label = ball(0)[1].copy()
    truth_label[:3] = 9
    truth = save_nifti(tmp_path / "truth" / "case_000.nii.gz", truth_label)
    pred_label = ball(0)[1].copy()
    pred_label[:3] = 1
    save_nifti(tmp_path / "pred" / "case_000.nii.gz", pred_label)
    code, out, err = cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--truth", truth.parent,
                         "--convention", conv, "--out", tmp_path / "e" / "e.csv")
    assert code == 0, err
    summary = json.loads((tmp_path / "e" / "e_summary.json").read_text())
    assert summary["summary"]["ball"]["dice"]["mean"] == pytest.approx(1.0)


# ---- issue 13: one clear line for every user error --------------------------------------------------
def _rewrite_metadata(model: Path, target: Path, change: Callable[[dict], object]) -> Path:
    """A copy of ``model`` whose vox2vox JSON metadata went through ``change`` (tensors kept)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(model), framework="pt") as f:
        meta = json.loads(f.metadata()["vox2vox"])
    changed = change(meta)
    text = changed if isinstance(changed, str) else json.dumps(meta)
    save_file(load_file(str(model)), str(target), metadata={"vox2vox": text})
    return target


def _set(path: str, value: object) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        *parents, last = path.split(".")
        node = meta
        for key in parents:
            node = node[key]
        node[last] = value
    return change


METADATA_PROBLEMS = {
    "config-not-a-table": (_set("config", [1, 2]), "config"),
    "config-wrong-type": (_set("config.generator.depth", "three"), "generator.depth"),
    "config-nan": (_set("config.loss.lambda_dice", float("nan")), "loss.lambda_dice"),
    "state-not-an-object": (_set("state", "x"), "state"),
    "epoch-wrong-type": (_set("state.epoch", "one"), "state.epoch"),
    "channels-wrong-type": (_set("state.channels", 5), "state.channels"),
    "convention-wrong-type": (_set("state.convention", 5), "state.convention"),
    "optimizers-wrong-type": (_set("optimizers", "adam"), "optimizers"),
    "deeply-nested": (lambda meta: "[" * 100000 + "]" * 100000, "metadata"),
    "classes-disagree": (_set("state.convention", {"values": {"0": "a", "1": "b", "2": "c"}}), "3"),
}


@pytest.mark.parametrize("problem", list(METADATA_PROBLEMS))
def test_malformed_checkpoint_metadata(tmp_path, capsys, model, problem):
    change, words = METADATA_PROBLEMS[problem]
    bad = _rewrite_metadata(model, tmp_path / "bad.safetensors", change)
    image = save_nifti(tmp_path / "scan.nii.gz", ball(0)[0])
    out = tmp_path / "pred"
    assert words in assert_user_error(cli(capsys, "predict", "--model", bad, "--input", image, "--output", out), bad)
    assert_nothing_written(out)


def _change_tensors(model: Path, target: Path, change: Callable[[dict], None]) -> Path:
    from vox2vox.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(model)
    change(ckpt.generator)
    save_checkpoint(target, ckpt)
    return target


def _drop_first(weights: dict) -> None:
    del weights[next(iter(weights))]


def _grow_first(weights: dict) -> None:
    name = next(iter(weights))
    weights[name] = torch.zeros(*(s + 1 for s in weights[name].shape))


@pytest.mark.parametrize("change, words", [(_drop_first, "missing"), (_grow_first, "shape differs")])
def test_missing_or_misshaped_tensors_in_predict(tmp_path, capsys, model, change, words):
    bad = _change_tensors(model, tmp_path / "bad.safetensors", change)
    image = save_nifti(tmp_path / "scan.nii.gz", ball(0)[0])
    out = tmp_path / "pred"
    line = assert_user_error(cli(capsys, "predict", "--model", bad, "--input", image, "--output", out), bad)
    assert words in line
    assert_nothing_written(out)


@pytest.mark.parametrize("change, words", [(_drop_first, "missing"), (_grow_first, "shape differs")])
def test_state_dict_mismatch_on_resume(tmp_path, capsys, change, words):
    manifest = make_manifest(tmp_path / "data")
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", manifest, "--out", run, *TINY)
    assert code == 0, err
    last = run / "checkpoints" / "last.safetensors"
    _change_tensors(last, last, change)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = cli(capsys, "train", "--data", manifest, "--out", run, *TINY, "--set", "train.epochs=2", "--resume")
    assert words in assert_user_error(result, last)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_evaluate_without_any_matching_prediction(tmp_path, capsys):
    truth = save_nifti(tmp_path / "truth" / "case_000.nii.gz", ball(0)[1])
    save_nifti(tmp_path / "pred" / "other_case.nii.gz", ball(0)[1])
    csv = tmp_path / "scores" / "eval.csv"
    result = cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--truth", truth.parent, "--out", csv)
    assert_user_error(result, tmp_path / "pred", "no prediction matches", "case_000", "other_case")
    assert_nothing_written(csv.parent)


def test_evaluate_truth_against_itself(tmp_path, capsys):
    truth = save_nifti(tmp_path / "truth" / "case_000.nii.gz", ball(0)[1])
    csv = tmp_path / "scores" / "eval.csv"
    result = cli(capsys, "evaluate", "--pred", truth.parent, "--truth", truth.parent, "--out", csv)
    assert_user_error(result, "truth files themselves")
    assert_nothing_written(csv.parent)


# ---- issue 13: DICOM geometry -----------------------------------------------------------------------
def write_dicom_series(folder: Path, positions: list[float], *, shifted: int | None = None,
                       size: tuple[int, int] = (8, 6)) -> Path:
    """A CT series of ``size`` (columns, rows) slices at ``positions`` mm along z, written by SimpleITK
    with the geometry tags a scanner writes; slice ``shifted`` is moved 5 mm in-plane. Pixel values
    are ``column + columns * row + 100 * slice index``."""
    import locale

    import SimpleITK as sitk

    # GDCM's DICOM writer switches the process locale to "C" and leaves it there (later tests
    # would decode subprocess output as ASCII): restore it.
    saved_locale = locale.setlocale(locale.LC_ALL)
    try:
        return _write_dicom_slices(sitk, folder, positions, shifted=shifted, size=size)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)


def _write_dicom_slices(sitk, folder: Path, positions: list[float], *, shifted: int | None,
                        size: tuple[int, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.7.1"
    for i, z in enumerate(positions):
        pixels = (np.arange(size[0] * size[1]).reshape(size[1], size[0]) + 100 * i).astype(np.int16)
        image = sitk.GetImageFromArray(pixels[None])
        x = 5.0 if i == shifted else 0.0
        tags = {"0008|0060": "CT", "0020|000d": series + ".0", "0020|000e": series, "0020|0013": str(i + 1),
                "0020|0032": f"{x}\\0\\{z}", "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": "0.5\\0.75",
                "0008|0018": f"{series}.{i + 1}", "0008|0016": "1.2.840.10008.5.1.4.1.1.2"}
        for key, value in tags.items():
            image.SetMetaData(key, value)
        image.SetSpacing((0.75, 0.5, 1.0))  # the writer takes PixelSpacing and the position from these
        image.SetOrigin((x, 0.0, float(z)))
        writer.SetFileName(str(folder / f"slice{i:03d}.dcm"))
        writer.Execute(image)
    return folder


DICOM_PROBLEMS = {
    "missing-slice": ([0, 2, 4, 8, 10], None, ["4 mm gap", "4.00 and 8.00", "1 missing slice", "--allow-nonuniform"]),
    "uneven": ([0, 2, 4, 5, 7, 9], None, ["uneven", "--allow-nonuniform"]),
    "duplicate": ([0, 2, 2, 4], None, ["same position", "duplicate"]),
    "single-slice": ([0], None, ["single slice", "3D"]),
    "shifted-slice": ([0, 2, 4, 6], 2, ["shifted in-plane"]),
}


@pytest.mark.parametrize("problem", list(DICOM_PROBLEMS))
def test_dicom_series_geometry_is_checked(tmp_path, capsys, model, problem):
    positions, shifted, words = DICOM_PROBLEMS[problem]
    series = write_dicom_series(tmp_path / "series", positions, shifted=shifted)
    out = tmp_path / "pred"
    line = assert_user_error(cli(capsys, "predict", "--model", model, "--input", series, "--output", out,
                                 "--no-progress"), series)
    for word in words:
        assert word in line
    assert_nothing_written(out)
    code, _, _ = result = cli(capsys, "dataset", series)
    assert_user_error(result, series)


def test_nonuniform_dicom_series_is_resampled_when_allowed(tmp_path, capsys, model):
    from vox2vox.data.dicom import allow_nonuniform
    from vox2vox.data.io import read_volume

    full, _ = read_volume(write_dicom_series(tmp_path / "full", [0, 2, 4, 6, 8, 10]))
    gappy = write_dicom_series(tmp_path / "gappy", [0, 2, 4, 8, 10])
    with allow_nonuniform():
        volume, geometry = read_volume(gappy)
    assert volume.shape == (8, 6, 6) and geometry.spacing == pytest.approx((0.75, 0.5, 2.0))
    # Slice values are 100 * written index: slices 0-2 and 3-4 land at z = 0, 2, 4 and 8, 10 mm, and
    # z = 6 mm is halfway between its neighbours.
    assert np.array_equal(volume[..., :3], full[..., :3])
    assert np.array_equal(volume[..., 4:], full[..., 3:5])
    assert np.allclose(volume[..., 3], (full[..., 2] + full[..., 3]) / 2)
    out = tmp_path / "pred"
    code, _, err = cli(capsys, "predict", "--model", model, "--input", gappy, "--output", out, "--no-progress",
                       "--allow-nonuniform")
    assert code == 0, err
    assert nib.load(str(out / "gappy.nii.gz")).shape == (8, 6, 6)


@pytest.fixture
def shared_series(shared_data, tmp_path) -> tuple[Path, list[Path]]:
    """A copy of the shared CT series and its files in slice order (GDCM's, along the normal)."""
    import shutil

    import SimpleITK as sitk

    source = shared_data / "ct-totalsegmentator" / "dicom_case" / "example_ct_dicom"
    copy = tmp_path / "series"
    shutil.copytree(source, copy)
    reader = sitk.ImageSeriesReader()
    files = [Path(f) for f in reader.GetGDCMSeriesFileNames(str(copy), reader.GetGDCMSeriesIDs(str(copy))[0])]
    return copy, files


def test_real_dicom_series_with_removed_slices_is_refused(shared_series, capsys, model, tmp_path):
    series, files = shared_series
    for f in files[8:10]:
        f.unlink()
    out = tmp_path / "pred"
    line = assert_user_error(cli(capsys, "predict", "--model", model, "--input", series, "--output", out,
                                 "--no-progress"), series)
    assert "6 mm gap" in line and "2 missing slice(s)" in line
    assert_nothing_written(out)


def test_real_dicom_series_resampled_onto_simpleitk_positions(shared_series):
    import SimpleITK as sitk

    from vox2vox.data.dicom import allow_nonuniform
    from vox2vox.data.io import read_volume

    series, files = shared_series
    full, full_geometry = read_volume(series)
    removed = files[8:10]
    kept = [f for f in files if f not in removed]
    for f in removed:
        f.unlink()
    with allow_nonuniform():
        volume, geometry = read_volume(series)
    assert volume.shape == full.shape
    np.testing.assert_allclose(geometry.affine, full_geometry.affine, atol=1e-4)
    # Every kept slice lies where SimpleITK places it in the world, with its own pixels.
    inverse = np.linalg.inv(geometry.affine)
    for f in kept:
        image = sitk.ReadImage(str(f))
        lps = np.asarray(image.GetOrigin())
        ras = np.array([-lps[0], -lps[1], lps[2], 1.0])
        i, j, k, _ = inverse @ ras
        assert abs(k - round(k)) < 1e-3 and abs(i - round(i)) < 1e-3 and abs(j - round(j)) < 1e-3
        np.testing.assert_array_equal(volume[..., int(round(k))], full[..., int(round(k))])
    # The removed slices are interpolated linearly between their kept neighbours (2 mm apart each).
    gap = [int(round((inverse @ np.array([-p[0], -p[1], p[2], 1.0]))[2]))
           for p in (np.asarray(sitk.ReadImage(str(f)).GetOrigin()) for f in (files[7], files[10]))]
    low, high = sorted(gap)
    assert high - low == 3
    for step in (1, 2):
        expected = full[..., low] + (full[..., high] - full[..., low]) * step / 3
        np.testing.assert_allclose(volume[..., low + step], expected, rtol=1e-5, atol=1e-3)


DEEP = "[" * 100_000 + "]" * 100_000


def test_deeply_nested_json_everywhere(tmp_path, capsys, model):
    manifest = make_manifest(tmp_path / "data")
    run = tmp_path / "run"
    config = tmp_path / "config.json"
    config.write_text(DEEP)
    assert_user_error(cli(capsys, "train", "--data", manifest, "--config", config, "--out", run), config)
    assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY, "--set", f"train.seed={DEEP}"),
                      "train.seed")
    conv = tmp_path / "conv.json"
    conv.write_text(DEEP)
    assert_user_error(cli(capsys, "dataset", manifest, "--convention", conv), conv)
    msd = tmp_path / "msd"
    msd.mkdir()
    (msd / "dataset.json").write_text(DEEP)
    assert_user_error(cli(capsys, "dataset", msd), msd / "dataset.json")
    assert_user_error(cli(capsys, "train", "--data", msd, "--out", run, *TINY), msd / "dataset.json")
    assert_nothing_written(run)


# ---- issue 13: files named inside headers -------------------------------------------------------------
def _metaimage(folder: Path, data_file: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    header = folder / "scan.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\n"
                      f"ElementSpacing = 1 1 1\nElementDataFile = {data_file}\n")
    return header


@pytest.mark.parametrize("where", ["absolute", "escaping", "escaping-list"])
def test_metaimage_data_file_outside_its_folder_is_refused(tmp_path, capsys, model, where):
    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(range(64)))
    name = {"absolute": str(secret), "escaping": "../secret.raw", "escaping-list": "LIST\n../secret.raw"}[where]
    header = _metaimage(tmp_path / "scans", name)
    out = tmp_path / "pred"
    line = assert_user_error(cli(capsys, "predict", "--model", model, "--input", header, "--output", out,
                                 "--no-progress"), header)
    assert "absolute path" in line if where == "absolute" else "outside its own folder" in line
    assert_nothing_written(out)


def test_metaimage_data_file_beside_its_header_is_read(tmp_path):
    from vox2vox.data.io import read_volume

    header = _metaimage(tmp_path / "scans", "scan.raw")
    (tmp_path / "scans" / "scan.raw").write_bytes(bytes(range(64)))
    volume, _ = read_volume(header)
    assert volume.shape == (4, 4, 4) and int(volume.max()) == 63


# ---- issue 13: runs and outputs -----------------------------------------------------------------------
def test_resume_on_an_empty_or_missing_folder_writes_nothing(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data")
    empty = tmp_path / "empty"
    empty.mkdir()
    for run in (empty, tmp_path / "missing"):
        line = assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY, "--resume"), run)
        assert "nothing to resume" in line
        assert_nothing_written(run)
    assert not (tmp_path / "missing").exists()


def test_a_new_run_does_not_touch_a_finished_one(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data")
    run = tmp_path / "run"
    assert cli(capsys, "train", "--data", manifest, "--out", run, *TINY)[0] == 0
    # The finished run's split as its user edited it: a refused new run must not rewrite it.
    (run / "split.json").write_text('{"train": ["case_000", "case_001"], "val": []}\n')
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert "already holds a run" in assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY), run)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def _lock(run: Path, pid: int, host: str | None = None) -> Path:
    import socket

    from vox2vox.train.runlock import LOCK_NAME

    run.mkdir(parents=True, exist_ok=True)
    lock = run / LOCK_NAME
    lock.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "earlier"}))
    return lock


def test_second_train_process_on_a_run_folder_is_refused(tmp_path, capsys):
    import subprocess
    import sys

    manifest = make_manifest(tmp_path / "data")
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = _lock(run, holder.pid)
        line = assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY), run)
        assert f"pid {holder.pid}" in line and "in use" in line and str(lock) in line
        assert sorted(p.name for p in run.iterdir()) == [lock.name]  # nothing else written
        # A lock held on another host cannot be checked from here: refused too.
        _lock(run, 1, host="another-host")
        assert "another-host" in assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY))
    finally:
        holder.kill()
        holder.wait()


def test_stale_run_lock_is_recovered(tmp_path, capsys):
    import subprocess
    import sys

    manifest = make_manifest(tmp_path / "data")
    run = tmp_path / "run"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock = _lock(run, gone.pid)
    code, _, err = cli(capsys, "train", "--data", manifest, "--out", run, *TINY)
    assert code == 0, err
    assert "stale run lock" in err
    assert (run / "checkpoints" / "last.safetensors").is_file()
    assert not lock.exists()  # released at the end of the run


def test_intensities_near_the_float32_limit_are_normalised(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data")
    image = ball(1)[0]
    image[image > 0] = 3e38
    image[5, 5, 5] = -3e38
    save_nifti(tmp_path / "data" / "case_001_image.nii.gz", image)
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", manifest, "--out", run, *TINY)
    assert code == 0 and "Warning" not in err, err


def test_a_model_output_of_nan_is_refused(tmp_path, capsys):
    config = Config.from_dict({
        "generator": {"in_channels": 1, "n_classes": 2, "base_filters": 4, "max_filters": 8, "depth": 3,
                      "bottleneck_blocks": 1},
        "discriminator": {"in_channels": 1, "n_classes": 2, "base_filters": 4, "max_filters": 8},
        "train": {"patch_size": [24, 24, 24]}, "preprocess": {"normalize": "none"},
    })
    torch.manual_seed(0)
    state = {"channels": ["image"], "convention": get_convention("binary").to_json(), "layout": "single"}
    model = tmp_path / "raw.safetensors"
    save_checkpoint(model, Checkpoint(config=config.to_dict(), generator=Generator(config.generator).state_dict(),
                                      state=state))
    image = ball(0)[0]
    image[image > 0] = 3e38  # un-normalised, the convolutions overflow
    scan = save_nifti(tmp_path / "scan.nii.gz", image)
    out = tmp_path / "pred"
    line = assert_user_error(cli(capsys, "predict", "--model", model, "--input", scan, "--output", out,
                                 "--no-progress"), scan)
    assert "NaN/Inf" in line
    assert_nothing_written(out)


def test_evaluate_keeps_large_label_values_apart(tmp_path, capsys):
    truth_label = ball(0)[1].astype(np.int64) * (2**32 + 1)  # wraps onto 1 in int32
    truth = tmp_path / "truth" / "case_000.nii.gz"
    truth.parent.mkdir()
    nib.save(nib.Nifti1Image(truth_label, np.eye(4), dtype=np.int64), str(truth))
    save_nifti(tmp_path / "pred" / "case_000.nii.gz", ball(0)[1])
    code, out, err = cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--truth", truth.parent,
                         "--regions", "labels", "--out", tmp_path / "e" / "e.csv")
    assert code == 0, err
    summary = json.loads((tmp_path / "e" / "e_summary.json").read_text())["summary"]
    # Two labels kept apart (two regions that do not overlap), plus their union, which does.
    labels = sorted(k for k in summary if k != "foreground")
    assert len(labels) == 2 and "foreground" in summary
    assert all(summary[k]["dice"]["mean"] == 0.0 for k in labels)
    assert summary["foreground"]["dice"]["mean"] == 1.0


def test_resume_with_a_corrupt_metrics_log(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data")
    run = tmp_path / "run"
    assert cli(capsys, "train", "--data", manifest, "--out", run, *TINY)[0] == 0
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{not json\n')
    result = cli(capsys, "train", "--data", manifest, "--out", run, *TINY, "--set", "train.epochs=2", "--resume")
    assert "metrics log" in assert_user_error(result, run / "metrics.jsonl")


def test_nrrd_detached_data_file_outside_its_folder_is_refused(tmp_path, capsys, model):
    (tmp_path / "secret.raw").write_bytes(bytes(64))
    header = tmp_path / "scans" / "scan.nhdr"
    header.parent.mkdir()
    header.write_text("NRRD0004\ntype: uchar\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n"
                      "data file: ../secret.raw\n\n")
    out = tmp_path / "pred"
    line = assert_user_error(cli(capsys, "predict", "--model", model, "--input", header, "--output", out,
                                 "--no-progress"), header)
    assert "outside its own folder" in line


@pytest.mark.parametrize("content", ["[" * 100_000, '{"k": "three", "folds": 1}', "not json"])
def test_malformed_saved_folds(tmp_path, capsys, content):
    cv = tmp_path / "cv"
    cv.mkdir()
    (cv / "folds.json").write_text(content)
    image = save_nifti(tmp_path / "scan.nii.gz", ball(0)[0])
    result = cli(capsys, "predict", "--model", cv, "--input", image, "--output", tmp_path / "pred")
    assert_user_error(result, cv / "folds.json")


def test_cv_resume_on_an_empty_folder_writes_nothing(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data", n_cases=3)
    cv = tmp_path / "cv"
    result = cli(capsys, "cv", "--data", manifest, "--folds", "3", "--out", cv, *TINY_SETTINGS, "--resume")
    assert "nothing to resume" in assert_user_error(result, cv / "fold_0")
    assert not cv.exists()


@pytest.mark.parametrize("spacing", ["0 1 1", "nan 1 1"])
def test_metaimage_with_a_degenerate_spacing(tmp_path, capsys, model, spacing):
    header = _metaimage(tmp_path / "scans", "scan.raw")
    header.write_text(header.read_text().replace("ElementSpacing = 1 1 1", f"ElementSpacing = {spacing}"))
    (tmp_path / "scans" / "scan.raw").write_bytes(bytes(range(64)))
    out = tmp_path / "pred"
    assert_user_error(cli(capsys, "predict", "--model", model, "--input", header, "--output", out, "--no-progress"),
                      header)
    assert_nothing_written(out)


@pytest.mark.parametrize("override, words", [
    ("preprocess.target_spacing=[1e-6,1e-6,1e-6]", "resampling would make"),
    ("preprocess.pad_multiple=100000000000", "preprocess.pad_multiple"),
])
def test_preprocessing_sizes_are_checked_before_allocating(tmp_path, capsys, override, words):
    manifest = make_manifest(tmp_path / "data")
    run = tmp_path / "run"
    assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY, "--set", override), words)
    assert_nothing_written(run)


def test_real_dicom_series_with_a_truncated_slice_is_refused(shared_series, capsys, model, tmp_path):
    series, files = shared_series
    damaged = files[9]
    damaged.write_bytes(damaged.read_bytes()[:600])  # GDCM leaves it out of the series: a gap
    out = tmp_path / "pred"
    line = assert_user_error(cli(capsys, "predict", "--model", model, "--input", series, "--output", out,
                                 "--no-progress"), series)
    assert "4 mm gap" in line and damaged.name in line
    assert_nothing_written(out)


@pytest.mark.parametrize("override, words", [
    ("loss.class_weights=[1]", "one weight per class"),
    ("loss.class_weights=[-1,1]", "loss.class_weights"),
    ("loss.eps=0", "loss.eps"),
    ("loss.eps=-1", "loss.eps"),
    ("augment.gain_range=[1e300,1e300]", "augment.gain_range"),
    ("augment.scale_range=[1e-300,1e-300]", "augment.scale_range"),
    ("augment.elastic_sigma=1e300", "augment.elastic_sigma"),
    ("augment.elastic_points=100000", "augment.elastic_points"),
])
def test_loss_and_augmentation_values_that_train_garbage(tmp_path, capsys, override, words):
    manifest = make_manifest(tmp_path / "data")
    run = tmp_path / "run"
    assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, *TINY, "--set", override), words)
    assert_nothing_written(run)
