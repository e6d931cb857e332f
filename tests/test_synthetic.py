"""Phantoms: shapes, dtypes, label layout, contrasts, determinism and the BraTS folder writer."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from vox2vox.data.synthetic import CHANNELS, make_phantom, write_brats_folder

SMALL = (32, 32, 32)


def _phantom(seed: int = 0, **kwargs):
    return make_phantom(rng=np.random.default_rng(seed), **kwargs)


def test_shapes_dtypes_and_label_values() -> None:
    image, label = _phantom(shape=(32, 28, 24))
    assert image.shape == (4, 32, 28, 24) and image.dtype == np.float32
    assert label.shape == (32, 28, 24) and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1, 2, 4}
    assert np.isfinite(image).all()


def test_background_exactly_zero_and_tumour_inside_head() -> None:
    image, label = _phantom(1)
    head = image[0] > 0
    # Every channel shares the same head support; corners are outside it.
    for c in range(1, 4):
        assert np.array_equal(image[c] > 0, head)
    assert image[:, 0, 0, 0].tolist() == [0.0] * 4
    assert 0.15 < head.mean() < 0.6
    assert np.all(head[label > 0])


def test_tumour_nesting_core_in_rim_in_oedema() -> None:
    _, label = _phantom(2)
    core = label == 1
    tumour_core = np.isin(label, (1, 4))
    whole = label > 0
    # Growing the core by one voxel stays inside the tumour core; the ring around the tumour
    # core is (almost all) oedema, so the enhancing rim sits inside an oedema shell.
    assert np.all(tumour_core[ndimage.binary_dilation(core)])
    ring = ndimage.binary_dilation(tumour_core) & ~tumour_core
    assert whole[ring].mean() > 0.9 and np.all(label[ring & whole] == 2)
    # Whole-tumour size: an equivalent-sphere radius of roughly 8-16 voxels at 64^3.
    _, label64 = _phantom(2, shape=(64, 64, 64))
    radius = (3 * (label64 > 0).sum() / (4 * np.pi)) ** (1 / 3)
    assert 5 <= radius <= 18


@pytest.mark.parametrize("seed", [0, 5])
def test_contrasts_make_the_tumour_visible(seed: int) -> None:
    image, label = _phantom(seed, shape=(48, 48, 48))
    head = image[0] > 0
    normal = head & (label == 0)
    t1, t1ce, t2, flair = (image[CHANNELS.index(n)] for n in ("t1", "t1ce", "t2", "flair"))

    def ratio(channel: np.ndarray, value: int) -> float:
        return float(np.median(channel[label == value]) / np.median(channel[normal]))

    assert ratio(flair, 2) > 1.5  # oedema bright on FLAIR
    assert ratio(t2, 2) > 1.3  # and on T2
    assert ratio(t1ce, 4) > 1.5  # enhancing rim bright on T1ce
    assert ratio(t1, 1) < 0.8  # necrotic core dark on T1


def test_deterministic_from_rng_and_varies_with_seed() -> None:
    a_img, a_lab = _phantom(7, shape=SMALL)
    b_img, b_lab = _phantom(7, shape=SMALL)
    c_img, c_lab = _phantom(8, shape=SMALL)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_lab, c_lab)


def test_empty_probability() -> None:
    image, label = _phantom(0, shape=SMALL, p_empty=1.0)
    assert not label.any()
    assert (image > 0).any()


def test_anisotropic_spacing_keeps_anatomy_in_mm() -> None:
    _, iso = _phantom(3, shape=(48, 48, 48), spacing=(1.0, 1.0, 1.0))
    _, aniso = _phantom(3, shape=(48, 48, 24), spacing=(1.0, 1.0, 2.0))
    vol_iso = (iso > 0).sum() * 1.0
    vol_aniso = (aniso > 0).sum() * 2.0
    assert 0.6 < vol_aniso / vol_iso < 1.6


def test_fast_enough() -> None:
    _phantom(0, shape=(64, 64, 64))  # warm-up
    start = time.perf_counter()
    _phantom(1, shape=(64, 64, 64))
    # ~0.09 s on an idle 2-core machine; the margin absorbs other jobs sharing the CPU.
    assert time.perf_counter() - start < 1.0


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="shape"):
        _phantom(shape=(8, 8, 8))
    with pytest.raises(ValueError, match="spacing"):
        _phantom(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="p_empty"):
        _phantom(p_empty=1.5)


def test_write_brats_folder_layout_and_geometry(tmp_path) -> None:
    ids = write_brats_folder(tmp_path, n_cases=2, seed=4, shape=(24, 20, 16), spacing=(1.0, 1.5, 2.0))
    assert ids == ["Phantom_000", "Phantom_001"]
    for case_id in ids:
        names = sorted(p.name for p in (tmp_path / case_id).iterdir())
        assert names == sorted(f"{case_id}_{s}.nii.gz" for s in (*CHANNELS, "seg"))
        seg = nib.load(tmp_path / case_id / f"{case_id}_seg.nii.gz")
        t1 = nib.load(tmp_path / case_id / f"{case_id}_t1.nii.gz")
        assert seg.get_data_dtype() == np.uint8 and t1.get_data_dtype() == np.float32
        assert seg.shape == (24, 20, 16)
        np.testing.assert_allclose(seg.header.get_zooms(), (1.0, 1.5, 2.0))
        np.testing.assert_allclose(np.diag(seg.affine)[:3], (-1.0, -1.5, 2.0))
        assert nib.aff2axcodes(seg.affine) == ("L", "P", "S")
        np.testing.assert_array_equal(seg.affine, t1.affine)
        assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 4}
    # No temporary files left behind by the atomic writes.
    assert not [p for p in tmp_path.rglob(".*")]


def test_write_brats_folder_is_prefix_stable(tmp_path) -> None:
    write_brats_folder(tmp_path / "a", n_cases=1, seed=9, shape=SMALL)
    write_brats_folder(tmp_path / "b", n_cases=3, seed=9, shape=SMALL, prefix="Phantom")
    a = np.asarray(nib.load(tmp_path / "a/Phantom_000/Phantom_000_seg.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "b/Phantom_000/Phantom_000_seg.nii.gz").dataobj)
    assert np.array_equal(a, b)
