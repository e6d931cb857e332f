"""Dataset discovery, checking, loading and the preprocessed-case cache."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vox2vox.datasets import check_dataset, discover, load_case, write_manifest
from vox2vox.errors import Vox2VoxError
from vox2vox.labels import get_convention
from vox2vox.preprocessing import PreprocessConfig

AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS like BraTS
SHAPE = (12, 14, 10)


def _phantom(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = np.zeros(SHAPE, np.float32)
    image[2:10, 3:11, 2:8] = rng.uniform(50, 150, size=(8, 8, 6))
    label = np.zeros(SHAPE, np.uint8)
    label[4:7, 5:8, 3:6] = 2
    label[5, 6, 4] = 4
    label[4, 5, 3] = 1
    return image, label


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _brats_folder(root: Path, ids=("BraTS20_Training_001", "BraTS20_Training_002"), *, sep="_",
                  channels=("t1", "t1ce", "t2", "flair")) -> Path:
    for index, case_id in enumerate(ids):
        image, label = _phantom(index)
        for offset, name in enumerate(channels):
            _save(root / case_id / f"{case_id}{sep}{name}.nii.gz", image + offset)
        if sep == "-":
            label = np.where(label == 4, 3, label).astype(np.uint8)
        _save(root / case_id / f"{case_id}{sep}seg.nii.gz", label)
    return root


def test_brats_layout_detected_and_loaded(tmp_path):
    root = _brats_folder(tmp_path / "brats")
    spec = discover(root)
    assert spec.layout == "brats" and spec.convention == "brats"
    assert spec.channel_names == ("t1", "t1ce", "t2", "flair")
    assert [c.case_id for c in spec.cases] == ["BraTS20_Training_001", "BraTS20_Training_002"]
    report = check_dataset(spec)
    assert report.ok, report.format()
    case = load_case(spec.cases[0], convention=get_convention("brats"), prep=PreprocessConfig(pad_multiple=8))
    assert case.image.shape[0] == 4 and case.image.dtype == np.float32
    assert case.label.dtype == np.int64 and set(np.unique(case.label)) == {0, 1, 2, 3}
    assert all(n % 8 == 0 for n in case.image.shape[1:])
    assert case.geometry.shape == SHAPE
    json.dumps(case.record)


def test_brats2023_layout(tmp_path):
    root = _brats_folder(tmp_path / "b23", ids=("BraTS-GLI-00000-000",), sep="-",
                         channels=("t1n", "t1c", "t2w", "t2f"))
    spec = discover(root)
    assert spec.layout == "brats2023" and spec.channel_names == ("t1n", "t1c", "t2w", "t2f")
    assert spec.convention == "brats2023"
    assert check_dataset(spec).ok


def test_pairing_by_id_not_position(tmp_path):
    root = _brats_folder(tmp_path / "b")
    # A stray file that sorts first must not shift the pairing.
    _save(root / "BraTS20_Training_001" / "AAA_notes.nii.gz", np.zeros(SHAPE, np.float32))
    spec = discover(root)
    case = spec.cases[0]
    assert case.channels["t1"].name == "BraTS20_Training_001_t1.nii.gz"
    assert case.label.name == "BraTS20_Training_001_seg.nii.gz"


def test_missing_channel_reported(tmp_path):
    root = _brats_folder(tmp_path / "b")
    (root / "BraTS20_Training_002" / "BraTS20_Training_002_t2.nii.gz").unlink()
    report = check_dataset(discover(root))
    assert not report.ok
    text = report.format()
    assert "BraTS20_Training_002_t2.nii.gz: missing channel 't2'" in text


def test_cache_skips_decoding(tmp_path, monkeypatch):
    root = _brats_folder(tmp_path / "b")
    spec = discover(root)
    prep = PreprocessConfig(cache_dir=str(tmp_path / "cache"))
    first = load_case(spec.cases[0], convention=get_convention("brats"), prep=prep)
    import vox2vox.datasets as ds

    def fail(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(ds, "read_channels", fail)
    second = load_case(spec.cases[0], convention=get_convention("brats"), prep=prep)
    assert np.array_equal(first.image, second.image) and np.array_equal(first.label, second.label)
    assert second.record == first.record and second.geometry.same_grid(first.geometry)
    assert not list((tmp_path / "cache").glob("*.pkl"))


def test_manifest_relative_paths(tmp_path):
    root = _brats_folder(tmp_path / "b", ids=("p1",))
    manifest = write_manifest(
        tmp_path / "lists" / "train.csv",
        [("p1", {"flair": root / "p1" / "p1_flair.nii.gz", "t1": root / "p1" / "p1_t1.nii.gz"},
          root / "p1" / "p1_seg.nii.gz")],
    )
    assert "../b/p1/p1_flair.nii.gz" in manifest.read_text()
    spec = discover(manifest)
    assert spec.layout == "manifest" and spec.channel_names == ("flair", "t1")
    assert check_dataset(spec, convention="brats").ok


def test_unknown_layout_message(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.json").write_text("{}")
    with pytest.raises(Vox2VoxError, match="cannot tell the dataset layout"):
        discover(tmp_path / "empty")
