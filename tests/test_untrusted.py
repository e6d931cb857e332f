"""Untrusted files: no code runs from a checkpoint, and no manifest makes vox2vox write elsewhere."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import (
    TINY,
    assert_user_error,
    ball,
    cli,
    make_manifest,
    make_model,
    save_nifti,
)
from vox2vox.errors import Vox2VoxError
from vox2vox.model.checkpoint import load_checkpoint


class _CreatesFile:
    """Unpickling this object creates ``path`` (``open(path, "w")`` runs as the pickle loads)."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"state_dict": _CreatesFile(marker)}, protocol=2)


def evil_torch_zip(marker: Path) -> bytes:
    """The zip container ``torch.save`` writes, with the malicious pickle inside."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("archive/data.pkl", evil_pickle(marker))
        zf.writestr("archive/version", "3\n")
    return buffer.getvalue()


def test_the_planted_pickle_really_runs_code(tmp_path):
    # Control: without vox2vox's refusal, loading this file WOULD create the marker.
    marker = tmp_path / "control-marker"
    pickle.loads(evil_pickle(marker))
    assert marker.exists()


@pytest.mark.parametrize(
    "name, payload",
    [
        ("evil.pt", evil_pickle),
        ("evil.pth", evil_torch_zip),
        ("evil.ckpt", evil_pickle),
        ("evil.safetensors", evil_pickle),  # a pickle wearing the safe suffix
        ("evil.safetensors", evil_torch_zip),
        ("evil", evil_pickle),  # no suffix at all
    ],
)
def test_pickle_checkpoints_are_refused_through_predict(tmp_path, capsys, name, payload):
    marker = tmp_path / "pwned"
    model = tmp_path / name
    model.write_bytes(payload(marker))
    image = save_nifti(tmp_path / "scan.nii.gz", ball(0)[0])
    out = tmp_path / "pred"
    line = assert_user_error(cli(capsys, "predict", "--model", model, "--input", image, "--output", out), model)
    assert "pickle" in line or "not a safetensors" in line
    assert not marker.exists()
    assert not out.exists()


def test_a_pickle_as_the_resume_checkpoint_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    manifest = make_manifest(tmp_path / "data")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    last = run / "checkpoints" / "last.safetensors"
    last.write_bytes(evil_pickle(marker))
    line = assert_user_error(cli(capsys, "train", "--data", manifest, "--out", run, "--resume", *TINY), last)
    assert "pickle" in line
    assert not marker.exists()


def test_safetensors_without_vox2vox_metadata_are_refused(tmp_path, capsys):
    plain = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(plain))
    with pytest.raises(Vox2VoxError, match="without vox2vox metadata"):
        load_checkpoint(plain)
    image = save_nifti(tmp_path / "scan.nii.gz", ball(0)[0])
    line = assert_user_error(cli(capsys, "predict", "--model", plain, "--input", image, "--output", tmp_path / "p"),
                             plain)
    assert "vox2vox metadata" in line


@pytest.mark.parametrize(
    "metadata, words",
    [
        ({"vox2vox": "{not json"}, "corrupt vox2vox metadata"),
        ({"vox2vox": '{"format": "something-else", "format_version": 1}'}, "unsupported checkpoint format"),
        ({"vox2vox": '{"format": "vox2vox-checkpoint", "format_version": 99}'}, "unsupported checkpoint format"),
    ],
)
def test_safetensors_with_foreign_metadata_are_refused(tmp_path, metadata, words):
    path = tmp_path / "odd.safetensors"
    save_file({"generator.w": torch.zeros(3)}, str(path), metadata=metadata)
    with pytest.raises(Vox2VoxError, match=words):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "case_id",
    ["../../escaped", "../escaped", "sub/escaped", "{tmp}/escaped-abs", "..", ".hidden", "a\\b", "tab\there"],
)
@pytest.mark.parametrize("command", ["predict", "train", "dataset", "evaluate"])
def test_case_ids_that_are_not_file_names_are_refused(tmp_path, capsys, case_id, command):
    # An absolute id points into this test's own folder, so a failure cannot touch anything else.
    case_id = case_id.replace("{tmp}", str(tmp_path))
    work = tmp_path / "deep" / "er"
    manifest = make_manifest(work / "data")
    manifest.write_text(manifest.read_text().replace("case_000,", f'"{case_id}",'))
    out = work / "out"
    model = make_model(tmp_path / "m.safetensors")
    argv = {
        "predict": ["predict", "--model", model, "--input", manifest, "--output", out, "--no-progress"],
        "train": ["train", "--data", manifest, "--out", out, *TINY],
        "dataset": ["dataset", manifest],
        "evaluate": ["evaluate", "--pred", work / "data", "--truth", manifest, "--out", out / "e.csv"],
    }[command]
    before = sorted(p for p in tmp_path.rglob("*") if p != tmp_path / "m.safetensors")
    line = assert_user_error(cli(capsys, *argv), manifest)
    assert "cannot be used as a file name" in line
    after = sorted(p for p in tmp_path.rglob("*") if p != tmp_path / "m.safetensors")
    assert after == before  # nothing written anywhere (inside or outside the output folder)
    assert not (tmp_path / "escaped-abs.nii.gz").exists()


def test_manifest_paths_through_dotdot_and_symlinks_are_read_but_never_written(tmp_path, capsys):
    # Images live outside the manifest's folder (../outside and a symlinked folder): reading them
    # is fine; the only file written is <output>/<case id>.nii.gz.
    outside = tmp_path / "outside"
    image = save_nifti(outside / "img.nii.gz", ball(0)[0])
    data = tmp_path / "data"
    data.mkdir()
    (data / "linked").symlink_to(outside, target_is_directory=True)
    (data / "manifest.csv").write_text("id,image\nfirst,../outside/img.nii.gz\nsecond,linked/img.nii.gz\n")
    model = make_model(tmp_path / "m.safetensors")
    out = tmp_path / "pred"
    before = {p: p.stat().st_mtime_ns for p in outside.rglob("*")}
    code, _, err = cli(capsys, "predict", "--model", model, "--input", data / "manifest.csv", "--output", out,
                       "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["first.nii.gz", "labels.json", "second.nii.gz"]
    assert {p: p.stat().st_mtime_ns for p in outside.rglob("*")} == before
    assert image.is_file()


def test_a_symlink_planted_in_the_output_folder_is_replaced_not_followed(tmp_path, capsys):
    # A link <output>/<id>.nii.gz -> a file elsewhere must not make predict overwrite that file.
    victim = tmp_path / "precious.txt"
    victim.write_text("do not touch\n")
    out = tmp_path / "pred"
    out.mkdir()
    (out / "scan.nii.gz").symlink_to(victim)
    image = save_nifti(tmp_path / "scan.nii.gz", ball(0)[0])
    model = make_model(tmp_path / "m.safetensors")
    code, _, err = cli(capsys, "predict", "--model", model, "--input", image, "--output", out, "--no-progress")
    assert code == 0, err
    assert victim.read_text() == "do not touch\n"
    written = out / "scan.nii.gz"
    assert written.is_file() and not written.is_symlink()
    assert sorted(os.listdir(out)) == ["labels.json", "scan.nii.gz"]
