"""The ``folders`` layout: one subfolder per case, the same file names in each (real and synthetic)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vox2vox.cli import main
from vox2vox.data.labels import get_convention
from vox2vox.data.layouts import discover
from vox2vox.data.loading import load_case, read_case
from vox2vox.data.manifest import write_spec_manifest
from vox2vox.data.preprocessing import PreprocessConfig
from vox2vox.errors import Vox2VoxError

SHAPE = (8, 9, 7)


def _save(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def _case_folders(root: Path, names: tuple[str, ...], ids: tuple[str, ...] = ("p01", "p02", "p03")) -> Path:
    """Case folders holding ``<name>.nii.gz`` for each name; names with 'seg'/'mask'/'gt' get 0/1 maps."""
    rng = np.random.default_rng(0)
    for case_id in ids:
        for name in names:
            if any(w in name.lower() for w in ("seg", "mask", "gt", "label")):
                data = np.zeros(SHAPE, np.uint8)
                data[2:5, 3:6, 2:4] = 1
            else:
                data = rng.uniform(0, 100, SHAPE).astype(np.float32)
            _save(root / case_id / f"{name}.nii.gz", data)
        (root / case_id / "notes.txt").write_text("ignored")
    return root


# ---- real folders in ../shared/data -----------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "channels", "n_cases", "label", "mask"),
    [
        ("brats2018-deepvoxnet2", ("FLAIR", "T1"), 6, "GT_W.nii.gz", None),
        ("brats2015-deepmedic", ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd"), 2, "OTMultiClass.nii.gz",
         "brainmask.nii.gz"),
        ("ct-sarcoma", ("CT_image",), 5, "CT_mask.nii.gz", None),
    ],
)
def test_real_folders_are_detected(shared_data, folder, channels, n_cases, label, mask):
    spec = discover(shared_data / folder)
    assert spec.layout == "folders"
    assert spec.channel_names == channels
    assert len(spec.cases) == n_cases
    assert spec.convention == "auto"
    for case in spec.cases:
        assert case.case_id == case.label.parent.name  # id = the case folder's name
        assert case.label.name == label and case.label.is_file()
        assert (case.mask.name if case.mask else None) == mask
        assert [p.name for p in case.channels.values()] == [f"{c}.nii.gz" for c in channels]


def test_brats2015_labels_load_with_the_2015_convention(shared_data):
    case = discover(shared_data / "brats2015-deepmedic").cases[0]
    _, raw, _ = read_case(case)
    assert set(np.unique(raw).astype(int)) == {0, 1, 2, 3, 4}
    conv = get_convention("brats2015")
    # load_case also uses the case's brain mask (z-score and crop inside it).
    loaded = load_case(case, convention=conv, prep=PreprocessConfig())
    assert loaded.image.shape[0] == 2
    assert set(np.unique(conv.to_source(loaded.label)).astype(int)) == {0, 1, 2, 4}  # 3 folded into 1


def test_dataset_cli_on_real_folder_with_brats2015(shared_data, capsys):
    code = main(["dataset", str(shared_data / "brats2015-deepmedic"), "--convention", "brats2015"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "layout: folders" in out.out and "masks: 2" in out.out
    assert out.err == ""


def test_spinalcord_is_not_a_folders_dataset(shared_data, capsys):
    with pytest.raises(Vox2VoxError, match="share no file name.*manifest") as info:
        discover(shared_data / "mri-spinalcord")
    assert "\n" not in str(info.value) and "mri-spinalcord" in str(info.value)
    code = main(["dataset", str(shared_data / "mri-spinalcord")])
    err = capsys.readouterr().err
    assert code == 2
    assert "GDCM" not in err and "WARNING" not in err
    assert len(err.strip().splitlines()) == 1 and "t1w.nii.gz" in err


def test_write_manifest_round_trip_on_real_folder(shared_data, tmp_path, capsys):
    csv_path = tmp_path / "deepmedic.csv"
    assert main(["dataset", str(shared_data / "brats2015-deepmedic"), "--write-manifest", str(csv_path)]) in (0, 2)
    assert f"manifest: {csv_path}" in capsys.readouterr().out
    found, again = discover(shared_data / "brats2015-deepmedic"), discover(csv_path)
    assert again.layout == "manifest" and again.channel_names == found.channel_names

    def resolved(spec):
        return [
            (c.case_id, {k: Path(v).resolve() for k, v in c.channels.items()},
             c.label.resolve(), c.mask.resolve() if c.mask else None)
            for c in spec.cases
        ]

    assert resolved(again) == resolved(found)


# ---- synthetic folders -------------------------------------------------------------------------


def test_two_label_candidates_need_label_name(tmp_path):
    root = _case_folders(tmp_path / "data", ("T1", "T2", "tumour_seg", "organ_mask"))
    with pytest.raises(Vox2VoxError, match=r"several files look like the label \(organ_mask, tumour_seg\).*--label-name"):
        discover(root)
    spec = discover(root, label_name="tumour_seg.nii.gz")
    assert spec.layout == "folders" and spec.channel_names == ("T1", "T2")
    assert all(c.label.name == "tumour_seg.nii.gz" and c.mask is None for c in spec.cases)
    with pytest.raises(Vox2VoxError, match="matches no file"):
        discover(root, label_name="liver")


def test_label_name_and_channels_on_the_cli(tmp_path, capsys):
    root = _case_folders(tmp_path / "data", ("T1", "T2", "tumour_seg", "organ_mask"))
    assert main(["dataset", str(root), "--label-name", "ORGAN_MASK", "--channels", "T2,T1"]) == 0
    out = capsys.readouterr().out
    assert "channels: T2, T1" in out and "cases: 3" in out


def test_channels_pick_and_order(tmp_path):
    root = _case_folders(tmp_path / "data", ("flair", "t1", "t2", "seg"))
    spec = discover(root, channel_names=["t2", "flair"])
    assert spec.channel_names == ("t2", "flair")
    assert [p.name for p in spec.cases[0].channels.values()] == ["t2.nii.gz", "flair.nii.gz"]
    assert load_case(spec.cases[0], convention=None, prep=PreprocessConfig()).image.shape[0] == 2
    with pytest.raises(Vox2VoxError, match="is the label"):
        discover(root, channel_names=["seg"])


def test_a_channel_is_named_by_the_first_token_of_its_file_only_when_that_is_unambiguous(tmp_path):
    root = _case_folders(tmp_path / "data", ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd", "T2_a", "T2_b", "GT"))
    spec = discover(root, channel_names=["flair", "T1C"])
    assert spec.channel_names == ("Flair_subtrMeanDivStd", "T1c_subtrMeanDivStd")
    with pytest.raises(Vox2VoxError, match="'t1' matches no shared file"):  # t1 is not t1c
        discover(root, channel_names=["t1"])
    with pytest.raises(Vox2VoxError, match="'t2' matches no shared file"):  # T2_a or T2_b: never a guess
        discover(root, channel_names=["t2"])


def test_brain_mask_beside_label_becomes_the_mask(tmp_path):
    root = _case_folders(tmp_path / "data", ("T1", "T1_brain_mask", "GT"))
    spec = discover(root)
    assert spec.channel_names == ("T1",)
    assert all(c.label.name == "GT.nii.gz" and c.mask.name == "T1_brain_mask.nii.gz" for c in spec.cases)


def test_case_missing_a_channel_is_reported_not_dropped(tmp_path):
    from vox2vox.data.checking import check_dataset

    root = _case_folders(tmp_path / "data", ("t1", "t2", "label"))
    (root / "p02" / "t2.nii.gz").unlink()
    spec = discover(root)
    assert spec.channel_names == ("t1", "t2")
    report = check_dataset(spec)
    assert not report.ok
    assert any(p.case_id == "p02" and "missing channel" in p.message for p in report.problems)


def test_one_case_folder_is_a_dataset_of_one(tmp_path):
    root = _case_folders(tmp_path / "data", ("CT_image", "CT_mask"), ids=("STS_1",))
    spec = discover(root / "STS_1")
    assert spec.layout == "folders" and [c.case_id for c in spec.cases] == ["STS_1"]
    assert spec.cases[0].label.name == "CT_mask.nii.gz"


def test_label_name_refused_outside_folders_layout(tmp_path):
    root = _case_folders(tmp_path / "data", ("t1", "seg"))
    csv_path = write_spec_manifest(discover(root), tmp_path / "cases.csv")
    with pytest.raises(Vox2VoxError, match="folders layout only"):
        discover(csv_path, label_name="seg")
    assert discover(csv_path, channel_names=("t1",)).channel_names == ("t1",)


def test_folder_without_dicom_is_not_read_as_a_series(tmp_path, capfd):
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "LICENSE").write_text("MIT")
    (folder / "notes.bin").write_bytes(b"\0" * 200)
    with pytest.raises(Vox2VoxError, match="cannot tell the dataset layout"):
        discover(folder)
    assert "GDCM" not in capfd.readouterr().err


def test_train_takes_label_name_and_channels_from_config(tmp_path):
    import json

    root = _case_folders(tmp_path / "data", ("T1", "T2", "tumour_seg", "organ_mask"))
    run = tmp_path / "run"
    tiny = [
        "--set", "generator.base_filters=4", "--set", "generator.depth=3", "--set", "generator.bottleneck_blocks=1",
        "--set", "discriminator.base_filters=4", "--set", "train.patch_size=[32,32,32]",
        "--set", "train.batch_size=1", "--set", "train.epochs=1", "--set", "data.val_cases=0",
    ]
    args = ["train", "--config", "paper", "--data", str(root), "--out", str(run), "--device", "cpu", *tiny]
    assert main([*args, "--set", 'data.channels=["T2"]']) == 2  # two label candidates: refused
    assert main([*args, "--set", "data.label_name=tumour_seg", "--set", 'data.channels=["T2"]']) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["label_name"] == "tumour_seg" and saved["data"]["channels"] == ["T2"]
    assert saved["generator"]["in_channels"] == 1  # one channel chosen of the two found
    # predict picks the same channel (by name) and the same label file out of the same folders.
    assert main(["predict", "--model", str(run), "--input", str(root), "--output", str(tmp_path / "pred"),
                 "--device", "cpu", "--no-progress"]) == 0
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == len([p for p in root.iterdir() if p.is_dir()])
