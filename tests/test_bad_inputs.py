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

import vox2vox.atomic
from helpers import (
    SHAPE,
    TINY,
    assert_nothing_written,
    assert_user_error,
    ball,
    cli,
    make_manifest,
    make_model,
    no_temporary_files,
    save_nifti,
)


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


#: name -> (how to spoil a file, words the message must contain)
BAD_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
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
DATASET_WORDS = {"missing": "missing channel"}


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
    assert sorted(p.name for p in pred.iterdir()) == ["case_000.nii.gz"]


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


MANIFEST_PROBLEMS = [_manifest_without_channel, _manifest_short_row, _manifest_without_id,
                     _manifest_duplicate_id, _manifest_missing_path, _manifest_empty, _manifest_not_utf8]


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
        assert sorted(p.name for p in out.iterdir()) == ["case_000.nii.gz"]
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
