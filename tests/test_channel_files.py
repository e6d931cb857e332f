"""`predict --input NAME=FILE ...`: one case from separate channel files, as its manifest would be."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from helpers import assert_user_error, ball, cli, make_model, save_nifti
from vox2vox.data.channel_files import channel_files_spec
from vox2vox.errors import Vox2VoxError


def test_channel_files_predict_as_the_manifest_does(tmp_path, capsys):
    model = make_model(tmp_path / "model.safetensors", in_channels=2)  # channels c0, c1
    image, _ = ball(0)
    affine = np.diag([1.0, 1.2, 0.9, 1.0])
    a = save_nifti(tmp_path / "in" / "sub01_c0.nii.gz", image, affine)
    b = save_nifti(tmp_path / "in" / "sub01_c1.nii.gz", image[::-1].copy() * 0.5 + 3, affine)
    (tmp_path / "in" / "cases.csv").write_text("id,c0,c1\nsub01,sub01_c0.nii.gz,sub01_c1.nii.gz\n")

    code, _, err = cli(capsys, "predict", "--model", model, "--input", tmp_path / "in" / "cases.csv",
                       "--output", tmp_path / "by_manifest", "--save-probabilities", "--device", "cpu")
    assert code == 0, err
    # Given in the other order: the channels follow the model's names, not the command line's.
    code, out, err = cli(capsys, "predict", "--model", model, "--input", f"c1={b}", "--input", f"c0={a}",
                         "--output", tmp_path / "by_files", "--save-probabilities", "--device", "cpu")
    assert code == 0, err
    assert "wrote 1 prediction" in out
    manifest = nib.load(tmp_path / "by_manifest" / "sub01.nii.gz")
    files = nib.load(tmp_path / "by_files" / "sub01.nii.gz")  # the case id: the files' common start
    np.testing.assert_array_equal(np.asarray(files.dataobj), np.asarray(manifest.dataobj))
    np.testing.assert_array_equal(files.affine, manifest.affine)
    np.testing.assert_array_equal(np.load(tmp_path / "by_files" / "sub01.npz")["probabilities"],
                                  np.load(tmp_path / "by_manifest" / "sub01.npz")["probabilities"])


@pytest.mark.parametrize("given, needle", [
    (["c0"], "missing channel(s) c1"),
    (["c0", "c1", "t2"], "unknown channel(s) t2"),
    (["c0", "c0"], "given twice"),
])
def test_channel_names_are_checked_against_the_model(tmp_path, capsys, given, needle):
    model = make_model(tmp_path / "model.safetensors", in_channels=2)
    image = save_nifti(tmp_path / "a.nii.gz", ball(0)[0])
    args = [arg for name in given for arg in ("--input", f"{name}={image}")]
    line = assert_user_error(cli(capsys, "predict", "--model", model, *args, "--output", tmp_path / "out"), needle)
    assert "--input" in line
    assert not (tmp_path / "out").exists()


def test_case_id_and_order(tmp_path):
    a = save_nifti(tmp_path / "sub7_t1.nii.gz", ball(0)[0])
    b = save_nifti(tmp_path / "sub7_flair.nii.gz", ball(1)[0])
    spec = channel_files_spec([f"flair={b}", f"t1={a}"], ["t1", "flair"])
    assert spec.cases[0].case_id == "sub7" and spec.channel_names == ("t1", "flair")
    assert list(spec.cases[0].channels.values()) == [a, b]
    with pytest.raises(Vox2VoxError, match="not found"):
        channel_files_spec([f"t1={tmp_path / 'nope.nii.gz'}"], None)
