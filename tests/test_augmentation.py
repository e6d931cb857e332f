"""Augmentation: reproducible from the rng, shapes kept, labels stay labels, centre rotation."""

from __future__ import annotations

import numpy as np
import pytest

from vox2vox.data.augmentation import AugmentConfig, Augmenter, sample_patch
from vox2vox.errors import Vox2VoxError

ALL_ON = AugmentConfig(p_untouched=0, p_flip=1, p_intensity=1, p_rotate=1, p_scale=1, p_elastic=1)


def _case(shape=(24, 24, 24)):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, *shape)).astype(np.float32)
    label = np.zeros(shape, dtype=np.int64)
    label[8:16, 8:16, 8:16] = 1
    label[10:14, 10:14, 10:14] = 3
    return image, label


def test_same_seed_same_patch_and_shapes_kept():
    image, label = _case()
    aug = Augmenter(ALL_ON)
    a = aug(image, label, np.random.default_rng(7))
    b = aug(image, label, np.random.default_rng(7))
    c = aug(image, label, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == image.shape and a[0].dtype == np.float32
    assert a[1].shape == label.shape and a[1].dtype == np.int64
    assert set(np.unique(a[1])) <= {0, 1, 3}  # nearest-neighbour: no invented classes


def test_untouched_and_off():
    image, label = _case()
    out, lab = Augmenter(AugmentConfig.off())(image, label, np.random.default_rng(0))
    assert np.array_equal(out, image) and np.array_equal(lab, label)


def test_rotation_is_about_the_centre():
    # A centred cube rotated about the centre stays centred (the predecessors rotated about a corner).
    image, label = _case()
    cfg = AugmentConfig(p_untouched=0, p_flip=0, p_intensity=0, p_rotate=1, p_scale=0, p_elastic=0)
    for seed in range(3):
        _, lab = Augmenter(cfg)(image, label, np.random.default_rng(seed))
        centre = np.argwhere(lab > 0).mean(axis=0)
        assert np.allclose(centre, 11.5, atol=0.6)
        assert abs(int((lab > 0).sum()) - int((label > 0).sum())) < 0.15 * (label > 0).sum()


def test_flip_moves_image_and_label_together():
    image = np.zeros((1, 8, 8, 8), np.float32)
    image[0, 0, 0, 0] = 5
    label = (image[0] > 0).astype(np.int64)
    cfg = AugmentConfig(p_untouched=0, p_flip=1, p_intensity=0, p_rotate=0, p_scale=0, p_elastic=0)
    for seed in range(5):
        out, lab = Augmenter(cfg)(image, label, np.random.default_rng(seed))
        assert np.array_equal(out[0] > 0, lab > 0)


def test_intensity_keeps_background_zero():
    image, label = _case()
    image[:, :4] = 0
    cfg = AugmentConfig(p_untouched=0, p_flip=0, p_intensity=1, p_rotate=0, p_scale=0, p_elastic=0)
    out, _ = Augmenter(cfg)(image, label, np.random.default_rng(0))
    assert np.all(out[:, :4] == 0) and not np.array_equal(out, image)


def test_config_checks():
    with pytest.raises(Vox2VoxError, match="p_flip"):
        AugmentConfig(p_flip=2)


def test_sample_patch_pads_and_crops():
    image, label = _case(shape=(10, 30, 30))
    patch, lab = sample_patch(image, label, (16, 16, 16), np.random.default_rng(0))
    assert patch.shape == (2, 16, 16, 16) and lab.shape == (16, 16, 16)


def test_sample_patch_foreground_oversampling():
    image = np.zeros((1, 64, 64, 64), np.float32)
    label = np.zeros((64, 64, 64), np.int64)
    label[60:62, 2:4, 30:32] = 1
    rng = np.random.default_rng(0)
    hits = sum(sample_patch(image, label, (16, 16, 16), rng, foreground_prob=1.0)[1].any() for _ in range(20))
    assert hits == 20
    a = sample_patch(image, label, (16, 16, 16), np.random.default_rng(3), foreground_prob=0.5)
    b = sample_patch(image, label, (16, 16, 16), np.random.default_rng(3), foreground_prob=0.5)
    assert np.array_equal(a[1], b[1])


def test_elastic_field_is_the_cubic_spline_zoom_of_its_control_grid():
    """The separable matrices give what a 3D cubic-spline zoom of the control displacements gives."""
    from scipy import ndimage

    from vox2vox.data.augmentation import elastic_field

    shape, points = (12, 10, 9), 4
    field = elastic_field(shape, sigma=3.0, points=points, rng=np.random.default_rng(5))
    coarse = np.random.default_rng(5).normal(0.0, 3.0, size=(3, points, points, points))
    expected = np.stack([ndimage.zoom(c, [n / points for n in shape], order=3, mode="nearest", grid_mode=False)
                         for c in coarse])
    assert field.shape == (3, *shape) and field.dtype == np.float32
    np.testing.assert_allclose(field, expected, atol=1e-5)
    assert field.std() > 1.0  # displacements of the order of sigma, not a constant
