"""Reading and writing volumes: canonical orientation, exact round trips, clear errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vox2vox.data.io import read_channels, read_volume, write_volume
from vox2vox.errors import Vox2VoxError


def _lps_affine(spacing=(1.0, 2.0, 3.0)) -> np.ndarray:
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    return affine


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_read_reorients_to_ras_like_nibabel(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    path = _save(tmp_path / "a.nii.gz", data, _lps_affine())
    array, geo = read_volume(path)
    canonical = nib.as_closest_canonical(nib.load(str(path)))
    assert np.array_equal(array, np.asanyarray(canonical.dataobj))
    assert np.allclose(geo.affine, canonical.affine)
    assert geo.orientation == "LPS"
    assert geo.spacing == pytest.approx((1.0, 2.0, 3.0))
    assert array.dtype == np.int16  # integers stay exact


def test_permuted_axes_round_trip_exactly(tmp_path):
    # PSR orientation (as the spinal-cord T2): axes permuted AND flipped.
    affine = np.array([[0, 0, 1, -5], [-1, 0, 0, 7], [0, -1, 0, 3], [0, 0, 0, 1]], dtype=float)
    data = np.random.default_rng(0).integers(0, 5, size=(3, 4, 5)).astype(np.uint8)
    src = _save(tmp_path / "psr.nii", data, affine)
    array, geo = read_volume(src)
    assert geo.shape == (5, 3, 4) and geo.source_shape == (3, 4, 5)
    out = tmp_path / "out" / "pred.nii.gz"
    write_volume(array, geo, out)
    back = nib.load(str(out))
    assert np.array_equal(np.asanyarray(back.dataobj), data)
    assert np.allclose(back.affine, affine)
    assert back.shape == data.shape


def test_int64_labels_written_as_uint8(tmp_path):
    src = _save(tmp_path / "a.nii.gz", np.zeros((2, 3, 4), np.float32), _lps_affine())
    _, geo = read_volume(src)
    labels = np.zeros(geo.shape, dtype=np.int64)
    labels[0, 0, 0] = 4
    write_volume(labels, geo, tmp_path / "l.nii.gz")
    img = nib.load(str(tmp_path / "l.nii.gz"))
    assert img.get_data_dtype() == np.uint8


def test_4d_reads_channels_first(tmp_path):
    data = np.random.default_rng(0).random((4, 5, 6, 3)).astype(np.float32)
    path = _save(tmp_path / "msd.nii.gz", data, np.eye(4))
    array, geo = read_channels(path)
    assert array.shape == (3, 4, 5, 6) and geo.shape == (4, 5, 6)
    with pytest.raises(Vox2VoxError, match="4D with 3 volumes"):
        read_volume(path)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p, "file not found"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty"),
        (lambda p: (p.write_bytes(b"hello, not an image" * 30), p)[1], "not a NIfTI|cannot read|damaged"),
    ],
)
def test_bad_files_raise_one_line_errors(tmp_path, make, match):
    path = make(tmp_path / "bad.nii")
    with pytest.raises(Vox2VoxError, match=match) as info:
        read_volume(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_truncated_gzip(tmp_path):
    good = _save(tmp_path / "good.nii.gz", np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.eye(4))
    raw = good.read_bytes()
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(Vox2VoxError, match="trunc.nii.gz") as info:
        read_volume(bad)
    assert "\n" not in str(info.value)


def test_2d_and_5d_rejected(tmp_path):
    two_d = _save(tmp_path / "2d.nii", np.zeros((4, 5), np.float32), np.eye(4))
    with pytest.raises(Vox2VoxError, match="dimensions"):
        read_volume(two_d)
    five_d = _save(tmp_path / "5d.nii", np.zeros((2, 2, 2, 2, 2), np.float32), np.eye(4))
    with pytest.raises(Vox2VoxError, match="dimensions"):
        read_volume(five_d)


def test_nonfinite_policy(tmp_path):
    data = np.ones((3, 3, 3), np.float32)
    data[1, 1, 1] = np.nan
    path = _save(tmp_path / "nan.nii.gz", data, np.eye(4))
    with pytest.raises(Vox2VoxError, match="1 NaN/Inf"):
        read_volume(path)
    zeroed, _ = read_volume(path, nonfinite="zero")
    assert zeroed[1, 1, 1] == 0
    kept, _ = read_volume(path, nonfinite="keep")
    assert np.isnan(kept[1, 1, 1])


def test_nrrd_and_mha_through_simpleitk_match_nifti(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    data = np.random.default_rng(0).integers(0, 100, size=(6, 7, 8)).astype(np.int16)
    nifti = _save(tmp_path / "a.nii.gz", data, _lps_affine((0.5, 0.7, 2.0)))
    ref, ref_geo = read_volume(nifti)
    image = sitk.ReadImage(str(nifti))
    for suffix in (".nrrd", ".mha"):
        path = tmp_path / f"a{suffix}"
        sitk.WriteImage(image, str(path))
        array, geo = read_volume(path)
        assert np.array_equal(array, ref)
        assert np.allclose(geo.affine, ref_geo.affine, atol=1e-5)


def test_dicom_series_matches_its_nifti_label(shared_data):
    case = shared_data / "ct-totalsegmentator" / "dicom_case"
    ct, ct_geo = read_volume(case / "example_ct_dicom")  # JPEG 2000 lossless slices
    seg, seg_geo = read_volume(case / "example_seg_dicom.nii.gz")
    assert ct.shape == seg.shape == (512, 512, 20)
    assert np.allclose(ct_geo.affine, seg_geo.affine, atol=1e-3)
    assert ct_geo.spacing == pytest.approx((0.9766, 0.9766, 2.0), abs=1e-3)
    assert ct.min() >= -1100 and ct.max() > 1000  # Hounsfield units, rescale applied


def test_spinalcord_psr_round_trip(shared_data, tmp_path):
    src = shared_data / "mri-spinalcord" / "t2" / "t2_seg-manual.nii.gz"
    label, geo = read_volume(src)
    assert geo.orientation == "PSR" and geo.shape == (52, 60, 55)
    write_volume(label, geo, tmp_path / "seg.nii.gz")
    original, written = nib.load(str(src)), nib.load(str(tmp_path / "seg.nii.gz"))
    assert np.array_equal(np.asanyarray(written.dataobj), np.asanyarray(original.dataobj))
    assert np.allclose(written.affine, original.affine, atol=1e-5)


def test_disagreeing_sform_and_qform_warn_naming_the_file(tmp_path):
    import warnings

    from vox2vox.errors import Vox2VoxWarning

    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    img = nib.Nifti1Image(data, np.eye(4))
    shifted = np.eye(4)
    shifted[:3, 3] = [0.0, 0.0, 5.0]
    img.set_qform(shifted, code=1)
    img.set_sform(np.eye(4), code=2)
    both = tmp_path / "both.nii.gz"
    nib.save(img, both)
    agree = tmp_path / "agree.nii.gz"
    same = nib.Nifti1Image(data, np.eye(4))
    same.set_qform(np.eye(4), code=1)
    same.set_sform(np.eye(4), code=2)
    nib.save(same, agree)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume, geometry = read_volume(both)
        read_volume(agree)
    found = [w for w in caught if issubclass(w.category, Vox2VoxWarning)]
    assert len(found) == 1, [str(w.message) for w in caught]
    message = str(found[0].message)
    assert str(both) in message and "sform and qform disagree" in message and "5 mm" in message
    np.testing.assert_allclose(geometry.affine, np.eye(4))  # the sform, as nibabel reads it
