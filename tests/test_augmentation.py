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


# Scanner effects: what differs between sources after z-scoring (data/augmentation.scanner_effects).

SCANNER = dict(p_bias=0.3, p_noise=0.15, noise_std=0.3, p_blur=0.2, p_contrast=0.15, p_lowres=0.25)


def _brain(shape=(32, 36, 32)):
    """Two z-scored channels inside a box, 0 outside (as preprocessing leaves a skull-stripped MRI)."""
    rng = np.random.default_rng(1)
    image = np.zeros((2, *shape), dtype=np.float32)
    inside = (slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    block = rng.normal(size=image[inside].shape).astype(np.float32)
    image[inside] = (block - block.mean()) / block.std()
    return image, image[0] != 0


@pytest.mark.parametrize("effect", ["p_bias", "p_noise", "p_blur", "p_contrast", "p_lowres"])
def test_each_scanner_effect_changes_only_the_foreground(effect):
    from vox2vox.data.augmentation import scanner_effects

    image, foreground = _brain()
    out = scanner_effects(image, AugmentConfig(**{effect: 1.0}), np.random.default_rng(0))
    assert out.shape == image.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert not np.allclose(out[:, foreground], image[:, foreground], atol=1e-3)
    assert np.all(out[:, ~foreground] == 0)
    assert np.array_equal(image, _brain()[0])  # the input is not changed in place


def test_bias_keeps_the_foreground_moments_and_contrast_its_range():
    from vox2vox.data.augmentation import scanner_effects

    image, foreground = _brain()
    image[:, 4:16] += 2.0 * foreground[4:16]  # two tissues, so the shading is smaller than their contrast
    biased = scanner_effects(image, AugmentConfig(p_bias=1.0), np.random.default_rng(2))
    for c in range(2):
        assert abs(float(biased[c][foreground].mean()) - float(image[c][foreground].mean())) < 1e-4
        assert abs(float(biased[c][foreground].std()) - float(image[c][foreground].std())) < 1e-3
        # A shading, not a shuffle: the biased channel still follows the original closely.
        assert np.corrcoef(biased[c][foreground], image[c][foreground])[0, 1] > 0.6
    stretched = scanner_effects(image, AugmentConfig(p_contrast=1.0, contrast_range=(1.5, 1.5)),
                                np.random.default_rng(2))
    assert stretched[0][foreground].min() >= image[0][foreground].min() - 1e-6
    assert stretched[0][foreground].max() <= image[0][foreground].max() + 1e-6
    assert stretched[0][foreground].std() > image[0][foreground].std()


def test_blur_and_coarser_acquisition_smooth_the_channel():
    from vox2vox.data.augmentation import scanner_effects

    image, foreground = _brain()
    inner = (slice(8, -8),) * 3

    def roughness(volume):
        return float(np.abs(np.diff(volume[inner], axis=0)).mean())

    for cfg in (AugmentConfig(p_blur=1.0), AugmentConfig(p_lowres=1.0, lowres_range=(0.5, 0.5))):
        out = scanner_effects(image, cfg, np.random.default_rng(0))
        assert roughness(out[0]) < 0.8 * roughness(image[0])


def test_scanner_effects_are_seeded_and_leave_the_geometry_alone():
    image, label = _case()
    image[:, :3] = 0  # some background
    with_effects = Augmenter(AugmentConfig(**SCANNER, p_untouched=0, p_rotate=1, p_elastic=1))
    without = Augmenter(AugmentConfig(p_untouched=0, p_rotate=1, p_elastic=1))
    a = with_effects(image, label, np.random.default_rng(5))
    b = with_effects(image, label, np.random.default_rng(5))
    plain = without(image, label, np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # The effects draw last, from their own stream: the same flips, warp and label as without them.
    assert np.array_equal(a[1], plain[1])
    assert np.array_equal(a[0] == 0, plain[0] == 0)
    # Over many patches the effects happen at about their probabilities (each patch: 2 channels).
    changed = sum(not np.array_equal(with_effects(image, label, np.random.default_rng(s))[0],
                                     without(image, label, np.random.default_rng(s))[0]) for s in range(40))
    expected = 1 - np.prod([(1 - p) ** 2 for k, p in SCANNER.items() if k.startswith("p_")])
    assert abs(changed / 40 - expected) < 0.2


@pytest.mark.parametrize("bad", [dict(p_noise=1.5), dict(p_bias=-0.1), dict(blur_sigma=(1.0, 0.5)),
                                 dict(contrast_range=(0.0, 1.0)), dict(lowres_range=(0.8, 0.6))])
def test_scanner_effect_settings_are_checked(bad):
    with pytest.raises(Vox2VoxError):
        AugmentConfig(**bad)
