"""Dataset discovery, checking, loading and the preprocessed-case cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import tiny_overrides
from vox2vox.data.checking import check_dataset
from vox2vox.data.labels import get_convention
from vox2vox.data.layouts import discover
from vox2vox.data.loading import load_case
from vox2vox.data.manifest import write_manifest
from vox2vox.data.preprocessing import PreprocessConfig
from vox2vox.errors import Vox2VoxError

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


def test_brats_files_of_several_cases_in_one_folder_are_one_case_each(tmp_path):
    nested = _brats_folder(tmp_path / "nested")
    flat = tmp_path / "flat"
    flat.mkdir()
    for case in discover(nested).cases:
        for f in [*case.channels.values(), case.label]:
            (flat / f.name).symlink_to(f)
    spec = discover(flat)
    assert spec.layout == "brats"
    assert [c.case_id for c in spec.cases] == ["BraTS20_Training_001", "BraTS20_Training_002"]
    assert all(p.is_file() for c in spec.cases for p in [*c.channels.values(), c.label])


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
    import vox2vox.data.loading as ds

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


# ---- real data in ../shared/data ----------------------------------------------------------------


def _manifest_facts(shared_data: Path) -> dict[str, dict]:
    """MANIFEST.tsv rows by relative path: on-disk shape, spacing, and label value counts."""
    facts = {}
    lines = (shared_data / "MANIFEST.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t"), strict=True))
        counts = None
        if not row["values"].startswith("range"):
            counts = {int(k): int(v) for k, v in (item.split(":") for item in row["values"].split())}
        facts[row["path"]] = {
            "shape": tuple(int(v) for v in row["shape"].split("x")),
            "spacing": tuple(float(v) for v in row["spacing_mm"].split("x")),
            "counts": counts,
        }
    return facts


def _shared_manifests(shared: Path, out: Path) -> dict[str, tuple[Path, str | None, int]]:
    """One manifest per shared folder, written into ``out``: name -> (csv, convention, channels)."""
    brats18 = sorted(p for p in (shared / "brats2018-deepvoxnet2").iterdir() if p.is_dir())
    brats15 = sorted(p for p in (shared / "brats2015-deepmedic").iterdir() if p.is_dir())
    sarcoma = sorted(p for p in (shared / "ct-sarcoma").iterdir() if p.is_dir())
    ts = shared / "ct-totalsegmentator"
    cord = shared / "mri-spinalcord"
    manifests = {
        "brats2018": (write_manifest(out / "brats2018.csv", [
            (p.name, {"flair": p / "FLAIR.nii.gz", "t1": p / "T1.nii.gz"}, p / "GT_W.nii.gz") for p in brats18
        ]), "binary", 2),
        "brats2015": (write_manifest(out / "brats2015.csv", [
            (p.name, {"flair": p / "Flair_subtrMeanDivStd.nii.gz", "t1c": p / "T1c_subtrMeanDivStd.nii.gz"},
             p / "OTMultiClass.nii.gz") for p in brats15
        ], masks={p.name: p / "brainmask.nii.gz" for p in brats15}), "brats2015", 2),
        "sarcoma": (write_manifest(out / "sarcoma.csv", [
            (p.name, {"ct": p / "CT_image.nii.gz"}, p / "CT_mask.nii.gz") for p in sarcoma
        ]), "binary", 1),
        "totalseg-abdomen": (write_manifest(out / "ts_abdomen.csv", [
            ("example_ct_sm", {"ct": ts / "example_ct" / "example_ct_sm.nii.gz"},
             ts / "example_ct" / "example_seg_v2.nii.gz"),
        ]), str(ts / "class_map_v2_total.json"), 1),
        "totalseg-aorta": (write_manifest(out / "ts_aorta.csv", [
            ("aorta", {"ct": ts / "aorta_case" / "ct_cropped.nii.gz"},
             ts / "aorta_case" / "aorta_true_false_lumen.nii.gz"),
        ]), None, 1),
        "totalseg-dicom": (write_manifest(out / "ts_dicom.csv", [
            ("dicom", {"ct": ts / "dicom_case" / "example_ct_dicom"},
             ts / "dicom_case" / "example_seg_dicom.nii.gz"),
        ]), str(ts / "class_map_v2_total.json"), 1),
        "spinalcord": (write_manifest(out / "cord.csv", [
            ("t1", {"mri": cord / "t1" / "t1w.nii.gz"}, cord / "t1" / "t1w_seg-manual.nii.gz"),
            ("t2", {"mri": cord / "t2" / "t2.nii.gz"}, cord / "t2" / "t2_seg-manual.nii.gz"),
        ]), "binary", 1),
    }
    return manifests


# Which case of each manifest the fast test loads fully (BraTS volumes take ~1 s each to decode).
_FAST_CASE = {"brats2018": 0, "brats2015": 0, "sarcoma": 1, "totalseg-abdomen": 0,
              "totalseg-aorta": 0, "totalseg-dicom": 0, "spinalcord": 1}


@pytest.mark.parametrize("name", list(_FAST_CASE))
def test_every_shared_folder_loads_through_a_manifest(shared_data, tmp_path, name):
    from vox2vox.data.preprocessing import undo_preprocessing

    csv_path, convention, n_channels = _shared_manifests(shared_data, tmp_path)[name]
    spec = discover(csv_path)
    assert spec.layout == "manifest" and len(spec.channel_names) == n_channels
    case = spec.cases[_FAST_CASE[name]]
    conv = get_convention(convention) if convention else None
    loaded = load_case(case, convention=conv, prep=PreprocessConfig(pad_multiple=16))
    assert loaded.image.shape[0] == n_channels
    assert all(n % 16 == 0 for n in loaded.image.shape[1:])
    assert np.isfinite(loaded.image).all()

    facts = _manifest_facts(shared_data)
    label_key = str(case.label.resolve().relative_to(shared_data.resolve()))
    expected = facts[label_key]
    geo = loaded.geometry
    assert geo.source_shape == expected["shape"]
    source_spacing = tuple(np.linalg.norm(geo.source_affine[:3, :3], axis=0))
    assert source_spacing == pytest.approx(expected["spacing"], abs=5e-4)

    # Undoing crop + pad gives back every label voxel: counts equal MANIFEST.tsv's.
    classes = undo_preprocessing(loaded.label, loaded.record)
    assert classes.shape == geo.shape
    source = conv.to_source(classes) if conv else classes
    if name == "brats2015":  # label 3 (non-enhancing) folds into 1
        counts = dict(expected["counts"])
        counts[1] += counts.pop(3)
    else:
        counts = expected["counts"]
    values, n = np.unique(source, return_counts=True)
    assert dict(zip(values.tolist(), n.tolist(), strict=True)) == counts


def test_sarcoma_resampled_to_isotropic_with_ct_window(shared_data, tmp_path):
    csv_path, _, _ = _shared_manifests(shared_data, tmp_path)["sarcoma"]
    case = discover(csv_path).cases[0]
    prep = PreprocessConfig(normalize="ct-window", ct_window=(-200, 300), target_spacing=(2.0, 2.0, 2.0),
                            crop_foreground=False, pad_multiple=1)
    loaded = load_case(case, convention=get_convention("binary"), prep=prep)
    assert loaded.spacing == pytest.approx((2.0, 2.0, 2.0), rel=0.02)
    assert 0.0 <= loaded.image.min() and loaded.image.max() <= 1.0
    # STS_008: 141 x 137 x 51 voxels of 0.977 x 0.977 x 3.27 mm -> 2 mm voxels.
    assert loaded.image.shape[1:] == (69, 67, 83)
    assert loaded.label.sum() > 0


def test_brats_layout_from_shared_cases(shared_data, tmp_path):
    """A BraTS 2018-21 folder whose files are the shared cases under BraTS names (symlinks)."""
    src = shared_data / "brats2015-deepmedic" / "brats_2013_pat0006_1"
    case_dir = tmp_path / "BraTS" / "pat0006"
    case_dir.mkdir(parents=True)
    for name, file in {"flair": "Flair_subtrMeanDivStd", "t1ce": "T1c_subtrMeanDivStd",
                       "t1": "T1c_subtrMeanDivStd", "t2": "Flair_subtrMeanDivStd",
                       "seg": "OTMultiClass"}.items():
        (case_dir / f"pat0006_{name}.nii.gz").symlink_to(src / f"{file}.nii.gz")
    spec = discover(tmp_path / "BraTS")
    assert spec.layout == "brats" and spec.cases[0].case_id == "pat0006"
    # The 2015 file holds label 3, which the 2018-21 convention does not know: an error...
    report = check_dataset(spec)
    assert not report.ok and "label values [3] not in convention 'brats'" in report.format()
    # ...and the 2015 convention accepts it.
    assert check_dataset(spec, convention="brats2015").ok


def _copy_case(shared_data: Path, out: Path) -> Path:
    """A copied spinal-cord T1 case (small) as a one-case manifest folder."""
    src = shared_data / "mri-spinalcord" / "t1"
    out.mkdir(parents=True)
    shutil.copy(src / "t1w.nii.gz", out / "t1w.nii.gz")
    shutil.copy(src / "t1w_seg-manual.nii.gz", out / "seg.nii.gz")
    shutil.copy(src / "t1w.nii.gz", out / "t1w_copy.nii.gz")
    (out / "cases.csv").write_text("id,a,b,label\ncord,t1w.nii.gz,t1w_copy.nii.gz,seg.nii.gz\n")
    return out / "cases.csv"


def _plant(path: Path, change) -> None:
    img = nib.load(str(path))
    data, affine = change(np.asanyarray(img.dataobj).copy(), img.affine.copy())
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _nan(d, a):
    d = d.astype(np.float32)
    d[5, 5, 5] = np.nan
    return d, a


def _shift(d, a):
    a[:3, 3] += 2.0
    return d, a


def _bad_label(d, a):
    d[0, 0, 0] = 7
    return d, a


@pytest.mark.parametrize(
    "file, change, expected",
    [
        ("t1w_copy.nii.gz", _nan, "t1w_copy.nii.gz: 1 NaN/Inf voxels"),
        ("t1w_copy.nii.gz", lambda d, a: (d[:-1], a), "t1w_copy.nii.gz: shape (41, 76, 77) differs"),
        ("seg.nii.gz", _shift, "seg.nii.gz: voxel-to-world affine differs"),
        ("seg.nii.gz", _bad_label, "seg.nii.gz: label values [7] not in convention 'binary'"),
        ("t1w_copy.nii.gz", lambda d, a: (np.zeros_like(d), a), "t1w_copy.nii.gz: empty image"),
        ("t1w_copy.nii.gz", None, "t1w_copy.nii.gz: missing channel 'b'"),
    ],
)
def test_planted_problems_are_reported(shared_data, tmp_path, file, change, expected):
    manifest = _copy_case(shared_data, tmp_path / "copy")
    clean = check_dataset(discover(manifest), convention="binary")
    assert clean.ok, clean.format()
    if change is None:
        (manifest.parent / file).unlink()
    else:
        _plant(manifest.parent / file, change)
    report = check_dataset(discover(manifest), convention="binary")
    assert not report.ok
    text = report.format()
    assert expected in text, text
    assert any(line.startswith("ERROR") and expected in line for line in text.splitlines())


def test_dataset_cli_exits_2_on_planted_problem(shared_data, tmp_path, capsys):
    from vox2vox.cli import main

    manifest = _copy_case(shared_data, tmp_path / "copy")
    assert main(["dataset", str(manifest), "--convention", "binary"]) == 0
    _plant(manifest.parent / "seg.nii.gz", _bad_label)
    assert main(["dataset", str(manifest), "--convention", "binary"]) == 2
    assert "label values [7]" in capsys.readouterr().out


def test_dicom_series_as_single_case(shared_data):
    spec = discover(shared_data / "ct-totalsegmentator" / "dicom_case" / "example_ct_dicom")
    assert spec.layout == "single" and spec.channel_names == ("image",)


@pytest.mark.slow
def test_check_every_shared_manifest(shared_data, tmp_path):
    for name, (csv_path, convention, _) in _shared_manifests(shared_data, tmp_path).items():
        report = check_dataset(discover(csv_path), convention=convention)
        assert report.ok, f"{name}\n{report.format()}"


def test_msd_layout_4d_channels(tmp_path):
    root = tmp_path / "Task01_BrainTumour"
    entries = []
    for index, case_id in enumerate(["BRATS_001", "BRATS_002"]):
        image, label = _phantom(index)
        stack = np.stack([image + k for k in range(4)], axis=-1)  # MSD: channels on the 4th axis
        _save(root / "imagesTr" / f"{case_id}.nii.gz", stack)
        _save(root / "labelsTr" / f"{case_id}.nii.gz", np.where(label == 4, 3, label).astype(np.uint8))
        entries.append({"image": f"./imagesTr/{case_id}.nii.gz", "label": f"./labelsTr/{case_id}.nii.gz"})
    meta = {
        "name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "training": entries, "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = discover(root)
    assert spec.layout == "msd" and spec.channel_names == ("FLAIR", "T1w", "t1gd", "T2w")
    assert spec.label_convention().source_values == (0, 1, 2, 3)
    assert check_dataset(spec).ok
    case = load_case(spec.cases[1], convention=spec.label_convention(), prep=PreprocessConfig(pad_multiple=1))
    assert case.image.shape[0] == 4
    # Channel k was written as image + k: after z-scoring each channel equals the first.
    assert np.allclose(case.image[0], case.image[3], atol=1e-4)
    assert discover(root / "dataset.json").layout == "msd"


def test_nnunet_layout_pairs_channels_by_suffix(tmp_path):
    root = tmp_path / "Dataset001_Test"
    for index, case_id in enumerate(["case_a", "case_b"]):
        image, label = _phantom(index)
        for k in range(2):
            _save(root / "imagesTr" / f"{case_id}_{k:04d}.nii.gz", image * (k + 1))
        _save(root / "labelsTr" / f"{case_id}.nii.gz", (label > 0).astype(np.uint8))
    meta = {"channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "lesion": 1},
            "numTraining": 2, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = discover(root)
    assert spec.layout == "nnunet" and spec.channel_names == ("CT", "PET")
    assert [c.case_id for c in spec.cases] == ["case_a", "case_b"]
    assert spec.cases[1].channels["PET"].name == "case_b_0001.nii.gz"
    assert spec.label_convention().class_names == ("background", "lesion")
    (root / "imagesTr" / "case_b_0001.nii.gz").unlink()
    report = check_dataset(spec)
    assert not report.ok and "case_b_0001.nii.gz: missing channel 'PET'" in report.format()


def test_cache_misses_when_file_or_config_changes(tmp_path):
    root = _brats_folder(tmp_path / "b", ids=("p1",))
    case = discover(root).cases[0]
    cache = tmp_path / "cache"
    conv = get_convention("brats")
    load_case(case, convention=conv, prep=PreprocessConfig(cache_dir=str(cache)))
    load_case(case, convention=conv, prep=PreprocessConfig(cache_dir=str(cache), pad_multiple=8))
    assert len(list(cache.glob("*.npz"))) == 2
    image, label = _phantom(5)
    _save(root / "p1" / "p1_t1.nii.gz", image * 3)
    load_case(case, convention=conv, prep=PreprocessConfig(cache_dir=str(cache)))
    assert len(list(cache.glob("*.npz"))) == 3
    assert len(list(cache.glob("*.json"))) == 3


def test_unlabelled_single_image(tmp_path):
    image, _ = _phantom(0)
    _save(tmp_path / "scan.nii.gz", image)
    spec = discover(tmp_path / "scan.nii.gz")
    assert spec.layout == "single" and spec.cases[0].case_id == "scan" and spec.cases[0].label is None
    case = load_case(spec.cases[0], convention=None, prep=PreprocessConfig())
    assert case.label is None and case.image.shape[0] == 1


_TINY = tiny_overrides({"train.patch_size": "[32,32,32]", "train.batch_size": "1", "train.epochs": "1",
                        "data.val_cases": "0"})


@pytest.mark.slow
@pytest.mark.parametrize("name", ["spinalcord", "brats2018"])
def test_short_training_run_and_prediction_on_real_data(shared_data, tmp_path, name):
    """A few steps on real data, then predictions that lie exactly on their inputs (PSR included)."""
    from vox2vox.cli import main

    csv_path, convention, _ = _shared_manifests(shared_data, tmp_path)[name]
    if name == "brats2018":  # one case is enough to show the path works
        lines = csv_path.read_text().splitlines()
        csv_path.write_text("\n".join(lines[:2]) + "\n")
    run = tmp_path / "run"
    assert main(["train", "--config", "paper", "--data", str(csv_path), "--out", str(run), "--set", f"data.convention={json.dumps(convention)}",
                 "--device", "cpu", *_TINY]) == 0
    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(run), "--input", str(csv_path), "--output", str(pred), "--device", "cpu"]) == 0
    for case in discover(csv_path).cases:
        source = nib.load(str(next(iter(case.channels.values()))))
        out = nib.load(str(pred / f"{case.case_id}.nii.gz"))
        assert out.shape == source.shape
        assert np.allclose(out.affine, source.affine, atol=1e-5)
        assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1}


def test_one_brats_case_folder_is_a_dataset_of_one(tmp_path):
    root = _brats_folder(tmp_path / "b")
    spec = discover(root / "BraTS20_Training_002")
    assert spec.layout == "brats" and [c.case_id for c in spec.cases] == ["BraTS20_Training_002"]
