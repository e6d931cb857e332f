"""Preprocessing: normalisation, crop, resampling, padding, and undoing them."""

from __future__ import annotations

import numpy as np
import pytest

from vox2vox.data.preprocessing import (
    PreprocessConfig,
    background_value,
    preprocess,
    undo_preprocessing,
)
from vox2vox.errors import Vox2VoxError


def _phantom(shape=(20, 24, 18), background=0.0) -> tuple[np.ndarray, np.ndarray]:
    image = np.full((2, *shape), background, dtype=np.float32)
    rng = np.random.default_rng(0)
    image[:, 4:15, 5:20, 3:12] = rng.normal(100, 10, size=(2, 11, 15, 9))
    label = np.zeros(shape, dtype=np.int64)
    label[6:10, 8:12, 5:8] = 1
    label[10:12, 8:12, 5:8] = 2
    return image, label


def test_zscore_nonzero_crop_and_pad():
    image, label = _phantom()
    out, lab, record = preprocess(image, label, spacing=(1, 1, 1), config=PreprocessConfig(pad_multiple=8))
    assert record["crop"] == [[4, 15], [5, 20], [3, 12]]
    assert out.shape == (2, 16, 16, 16) and lab.shape == (16, 16, 16)
    foreground = out[0][out[0] != 0]
    assert abs(foreground.mean()) < 1e-3 and abs(foreground.std() - 1) < 1e-2
    assert lab.sum() == label.sum()  # no label voxel lost by cropping


def test_background_constant_is_not_foreground():
    # BraTS 2015 files: already z-scored, background a negative constant.
    image, label = _phantom(background=-3.5)
    assert background_value(image[0]) == pytest.approx(-3.5)
    _, _, record = preprocess(image, label, spacing=(1, 1, 1), config=PreprocessConfig(pad_multiple=1))
    assert record["crop"] == [[4, 15], [5, 20], [3, 12]]


def test_undo_restores_labels_exactly():
    image, label = _phantom()
    cfg = PreprocessConfig(pad_multiple=16)
    _, lab, record = preprocess(image, label, spacing=(1, 1, 1), config=cfg)
    assert np.array_equal(undo_preprocessing(lab, record), label)
    probs = np.stack([lab == c for c in range(3)]).astype(np.float32)
    back = undo_preprocessing(probs, record, order=1)
    assert back.shape == (3, *label.shape)
    assert np.array_equal(back.argmax(0), label)
    assert np.all(back[0][:4] == 1)  # outside the crop: background


def test_resampling_to_target_spacing_and_back():
    image, label = _phantom(shape=(20, 24, 18))
    cfg = PreprocessConfig(target_spacing=(1.0, 1.0, 1.0), crop_foreground=False, pad_multiple=1)
    out, lab, record = preprocess(image, label, spacing=(1.0, 1.0, 2.0), config=cfg)
    assert out.shape[1:] == (20, 24, 36) and record["spacing"] == [1.0, 1.0, 1.0]
    assert set(np.unique(lab)) == {0, 1, 2}
    assert np.array_equal(undo_preprocessing(lab, record), label)


def test_ct_window():
    image = np.linspace(-2000, 3000, 8 * 8 * 8, dtype=np.float32).reshape(1, 8, 8, 8)
    cfg = PreprocessConfig(normalize="ct-window", ct_window=(-1000, 1000), crop_foreground=False, pad_multiple=1)
    out, _, _ = preprocess(image, None, spacing=(1, 1, 1), config=cfg)
    assert out.min() == 0.0 and out.max() == 1.0


def test_config_validation():
    with pytest.raises(Vox2VoxError, match="ct_window"):
        PreprocessConfig(normalize="ct-window")
    with pytest.raises(Vox2VoxError, match="normalize"):
        PreprocessConfig(normalize="minmax")  # type: ignore[arg-type]
    assert PreprocessConfig().fingerprint() == PreprocessConfig(cache_dir="x").fingerprint()
