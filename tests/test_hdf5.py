"""HDF5 volumes: the earlier implementation's ``<name>.im`` / ``<name>.seg`` pairs and ``file.h5:dataset``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

h5py = pytest.importorskip("h5py", reason="h5py is in the test extra: pip install -e '.[test]'")

from vox2vox.cli import main  # noqa: E402
from vox2vox.data.checking import check_dataset  # noqa: E402
from vox2vox.data.hdf5 import file_of, is_hdf5_address, split_address, write_hdf5  # noqa: E402
from vox2vox.data.io import format_of, read_channels, read_volume  # noqa: E402
from vox2vox.data.layouts import discover  # noqa: E402
from vox2vox.data.loading import load_case  # noqa: E402
from vox2vox.data.preprocessing import PreprocessConfig  # noqa: E402
from vox2vox.data.synthetic import make_phantom  # noqa: E402
from vox2vox.errors import Vox2VoxError  # noqa: E402

SHAPE = (32, 32, 24)


def _write_legacy(path, array) -> None:
    """Write a file the way the earlier implementation's users did: h5py, dataset ``data``, no suffix."""
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data", data=array)


def _legacy_folder(folder, n_cases: int = 3, *, suffix: str = "") -> list[str]:
    """Single-channel FLAIR images with binary whole-tumour masks, as the earlier code trained on."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    ids = []
    for index in range(n_cases):
        image, label = make_phantom(shape=SHAPE, rng=rng)
        case_id = f"ct{index:02d}"
        _write_legacy(folder / f"{case_id}.im{suffix}", image[3])
        _write_legacy(folder / f"{case_id}.seg{suffix}", (label > 0).astype(np.uint8))
        ids.append(case_id)
    return ids


def test_addresses_are_recognised_by_name():
    assert split_address("a/b.h5:img") == (Path("a/b.h5"), "img")
    assert split_address("a/b.nii.gz") == (Path("a/b.nii.gz"), None)
    assert file_of("x/scan.hdf5:grp/vol").name == "scan.hdf5"
    for name in ("c.im", "c.seg", "c.im.h5", "c.seg.hdf5", "v.h5", "v.h5:data"):
        assert is_hdf5_address(name) and format_of(name) == "hdf5", name
    assert format_of("v.nii.gz") == "nifti"
    assert not is_hdf5_address("notes:txt")


def test_legacy_file_reads_as_one_mm_identity(tmp_path):
    array = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    _write_legacy(tmp_path / "case.im", array)
    data, geometry = read_volume(tmp_path / "case.im")
    np.testing.assert_array_equal(data, array)
    np.testing.assert_allclose(geometry.affine, np.eye(4))
    assert geometry.spacing == (1.0, 1.0, 1.0)


def test_named_dataset_with_spacing_and_channels(tmp_path):
    path = tmp_path / "multi.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("images/t1", data=np.ones(SHAPE, np.float32)).attrs["spacing"] = [1.0, 1.5, 3.0]
        handle.create_dataset("stack", data=np.zeros((2, *SHAPE), np.int16))
    data, geometry = read_volume(f"{path}:images/t1")
    assert data.shape == SHAPE and geometry.spacing == (1.0, 1.5, 3.0)
    stack, _ = read_channels(f"{path}:stack")
    assert stack.shape == (2, *SHAPE) and stack.dtype == np.int16
    # Two datasets and none called "data": the user must name one, and the message says how.
    with pytest.raises(Vox2VoxError, match=r"multi\.h5:<dataset>"):
        read_volume(path)
    with pytest.raises(Vox2VoxError, match="no dataset 'nope'"):
        read_volume(f"{path}:nope")


def test_affine_attribute_and_bad_files(tmp_path):
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    with h5py.File(tmp_path / "a.h5", "w") as handle:
        handle.attrs["affine"] = affine
        handle.create_dataset("data", data=np.zeros(SHAPE, np.float32))
    _, geometry = read_volume(tmp_path / "a.h5")
    # The LAS file is reoriented to RAS+ like any NIfTI; the source affine is kept for writing back.
    np.testing.assert_allclose(geometry.source_affine, affine)
    assert geometry.orientation == "LAS" and geometry.spacing == (2.0, 2.0, 2.0)

    (tmp_path / "fake.im").write_text("not hdf5")
    with pytest.raises(Vox2VoxError, match=r"fake\.im: not a readable HDF5"):
        read_volume(tmp_path / "fake.im")
    with pytest.raises(Vox2VoxError, match="file not found"):
        read_volume(tmp_path / "missing.seg")


def test_write_hdf5_round_trip(tmp_path):
    array = np.random.default_rng(0).random(SHAPE, dtype=np.float32)
    write_hdf5(tmp_path / "r.im.h5", array, spacing=(0.5, 0.5, 2.0))
    data, geometry = read_volume(tmp_path / "r.im.h5")
    np.testing.assert_array_equal(data, array)
    assert geometry.spacing == (0.5, 0.5, 2.0)


@pytest.mark.parametrize("suffix", ["", ".h5"])
def test_legacy_folder_is_discovered_and_checked(tmp_path, suffix):
    ids = _legacy_folder(tmp_path / "train", suffix=suffix)
    spec = discover(tmp_path / "train")
    assert spec.layout == "hdf5" and spec.channel_names == ("image",)
    assert [c.case_id for c in spec.cases] == ids
    assert all(c.label is not None and c.label.name == f"{c.case_id}.seg{suffix}" for c in spec.cases)
    report = check_dataset(spec)
    assert report.ok, report.format()
    loaded = load_case(spec.cases[0], convention=None, prep=PreprocessConfig())
    assert loaded.image.shape[0] == 1 and set(np.unique(loaded.label)) <= {0, 1}


def test_manifest_cells_name_datasets(tmp_path):
    rng = np.random.default_rng(1)
    image, label = make_phantom(shape=SHAPE, rng=rng)
    with h5py.File(tmp_path / "case.h5", "w") as handle:
        handle.create_dataset("flair", data=image[3])
        handle.create_dataset("t1", data=image[0])
        handle.create_dataset("seg", data=label)
    (tmp_path / "m.csv").write_text("id,flair,t1,label\nc1,case.h5:flair,case.h5:t1,case.h5:seg\n")
    spec = discover(tmp_path / "m.csv")
    assert check_dataset(spec).ok
    cache = tmp_path / "cache"
    loaded = load_case(spec.cases[0], convention=None, prep=PreprocessConfig(cache_dir=str(cache)))
    assert loaded.image.shape[0] == 2
    assert any(cache.iterdir())  # the cache key stats the file behind "case.h5:flair"


@pytest.mark.slow
def test_legacy_pairs_train_and_predict(tmp_path):
    """A folder in the earlier layout goes through train -> predict -> evaluate like any dataset."""
    data = tmp_path / "legacy" / "train"
    ids = _legacy_folder(data)
    run = tmp_path / "run"
    tiny = [
        "--set", "generator.base_filters=4", "--set", "generator.depth=3",
        "--set", "generator.bottleneck_blocks=1", "--set", "discriminator.base_filters=4",
        "--set", "train.patch_size=[24,24,24]", "--set", "train.batch_size=1",
        "--set", "data.val_cases=1", "--set", "train.epochs=1",
    ]
    assert main(["train", "--config", "paper", "--data", str(data), "--out", str(run), *tiny]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and np.isfinite(rows[-1]["loss_g"])

    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(run), "--input", str(data), "--output", str(pred), "--device", "cpu"]) == 0
    for case_id in ids:
        out = nib.load(pred / f"{case_id}.nii.gz")
        assert out.shape == SHAPE
        np.testing.assert_allclose(out.affine, np.eye(4))  # HDF5 without attributes: 1 mm identity
        assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1}
    assert main(["evaluate", "--pred", str(pred), "--truth", str(data), "--regions", "labels",
                 "--out", str(tmp_path / "scores.csv")]) == 0
    assert (tmp_path / "scores.csv").read_text().count("\n") >= len(ids)
