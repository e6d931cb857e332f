"""Metrics against hand/brute-force values, anisotropic spacing, and every BraTS empty-mask rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from vox2vox.report.metrics import (
    BRATS_REGIONS,
    HD95_ONE_EMPTY_MM,
    METRICS,
    dice,
    hd95,
    label_regions,
    score_case,
    sensitivity,
    specificity,
    volume_ml,
)


def _box(shape, lo, hi) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


def _brute_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Reference HD95: surface = voxels with a 6-neighbour outside the mask (or the array);
    all pairwise distances in mm; 95th percentile (linear) of each direction; the larger one."""

    def surface(m: np.ndarray) -> np.ndarray:
        return np.argwhere(m & ~ndimage.binary_erosion(m, border_value=0)) * np.asarray(spacing)

    sa, sb = surface(a), surface(b)
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


def test_dice_hand_computed() -> None:
    truth = _box((6, 6, 6), (0, 0, 0), (2, 2, 2))  # 8 voxels
    pred = _box((6, 6, 6), (1, 0, 0), (3, 2, 2))  # 8 voxels, 4 shared
    assert dice(pred, truth) == pytest.approx(2 * 4 / 16)
    assert dice(truth, truth) == 1.0


def test_hd95_shifted_box_anisotropic_by_hand() -> None:
    # A box shifted by 2 voxels along the axis with 3 mm spacing: every surface point of one
    # box has its nearest surface point of the other either on it (shared faces) or 6 mm away.
    spacing = (0.5, 1.0, 3.0)
    truth = _box((12, 12, 12), (3, 3, 2), (9, 9, 6))
    pred = _box((12, 12, 12), (3, 3, 4), (9, 9, 8))
    expected = _brute_hd95(pred, truth, spacing)
    assert hd95(pred, truth, spacing=spacing) == pytest.approx(expected, abs=1e-4)
    # Hand check of the worst case: the box depth is 4 slices, the shift 2 slices = 6 mm;
    # the far caps (>5% of surface points) sit 6 mm from the nearest other surface.
    assert expected == pytest.approx(6.0)
    # The same shift along the 0.5 mm axis is 1 mm: spacing is applied per axis.
    pred_x = _box((12, 12, 12), (5, 3, 2), (11, 9, 6))
    assert hd95(pred_x, truth, spacing=spacing) == pytest.approx(1.0, abs=1e-4)


def test_hd95_irregular_masks_match_brute_force_with_anisotropy() -> None:
    rng = np.random.default_rng(0)
    truth = ndimage.binary_opening(rng.random((14, 12, 10)) > 0.45, iterations=1)
    pred = ndimage.binary_opening(rng.random((14, 12, 10)) > 0.5, iterations=1)
    spacing = (0.8, 1.3, 2.5)
    assert truth.any() and pred.any()
    expected = _brute_hd95(pred, truth, spacing)
    assert hd95(pred, truth, spacing=spacing) == pytest.approx(expected, rel=1e-5)
    # Symmetric.
    assert hd95(truth, pred, spacing=spacing) == pytest.approx(expected, rel=1e-5)


def test_hd95_mask_touching_array_border() -> None:
    truth = _box((8, 8, 8), (0, 0, 0), (3, 8, 8))
    pred = _box((8, 8, 8), (0, 0, 0), (5, 8, 8))
    spacing = (2.0, 1.0, 1.0)
    assert hd95(pred, truth, spacing=spacing) == pytest.approx(_brute_hd95(pred, truth, spacing))


def test_empty_mask_rules() -> None:
    empty = np.zeros((5, 5, 5), dtype=bool)
    some = _box((5, 5, 5), (1, 1, 1), (3, 3, 3))
    spacing = (1.0, 1.0, 2.0)
    # Both empty: perfect.
    assert dice(empty, empty) == 1.0
    assert hd95(empty, empty, spacing=spacing) == 0.0
    assert sensitivity(empty, empty) == 1.0 and specificity(empty, empty) == 1.0
    # Exactly one empty, either way round: Dice 0, HD95 373.13.
    for pred, truth in ((empty, some), (some, empty)):
        assert dice(pred, truth) == 0.0
        assert hd95(pred, truth, spacing=spacing) == HD95_ONE_EMPTY_MM == 373.13
        assert sensitivity(pred, truth) == 0.0
    assert specificity(some, empty) == pytest.approx(1 - 8 / 125)


def test_sensitivity_specificity_volume() -> None:
    truth = _box((4, 4, 4), (0, 0, 0), (2, 2, 2))  # 8
    pred = _box((4, 4, 4), (0, 0, 0), (2, 2, 1))  # 4 inside truth
    pred[3, 3, 3] = True  # one false positive
    assert sensitivity(pred, truth) == pytest.approx(4 / 8)
    assert specificity(pred, truth) == pytest.approx((56 - 1) / 56)
    assert volume_ml(truth, spacing=(1.0, 2.0, 5.0)) == pytest.approx(8 * 10 / 1000)


def test_score_case_brats_regions() -> None:
    truth = np.zeros((8, 8, 8), dtype=np.uint8)
    truth[2:6, 2:6, 2:6] = 2
    truth[3:5, 3:5, 3:5] = 4
    pred = truth.copy()
    pred[pred == 4] = 1  # enhancing predicted as necrosis: WT, TC perfect, ET missed
    scores = score_case(pred, truth, spacing=(1.0, 1.0, 1.0), regions=BRATS_REGIONS)
    assert list(scores) == ["WT", "TC", "ET"]
    assert set(scores["WT"]) == set(METRICS)
    assert scores["WT"]["dice"] == 1.0 and scores["TC"]["dice"] == 1.0
    assert scores["ET"]["dice"] == 0.0 and scores["ET"]["hd95"] == HD95_ONE_EMPTY_MM
    assert scores["WT"]["vol_true_ml"] == pytest.approx(64 / 1000)


def test_score_case_per_label_regions() -> None:
    truth = np.zeros((6, 6, 6), dtype=np.int16)
    truth[:2] = 1
    truth[4:] = 3
    pred = truth.copy()
    pred[4:] = 2
    scores = score_case(pred, truth, spacing=(1, 1, 1), regions="labels")
    assert list(scores) == ["label_1", "label_2", "label_3", "foreground"]
    assert scores["label_1"]["dice"] == 1.0
    assert scores["label_2"]["dice"] == 0.0 and scores["label_3"]["dice"] == 0.0
    assert scores["foreground"]["dice"] == 1.0  # the union does not see the label swap
    assert label_regions([0, 4, 1, 1]) == {"label_1": (1,), "label_4": (4,), "foreground": (1, 4)}
    assert label_regions([0, 1]) == {"foreground": (1,)}  # a single label is the foreground: no copy


def test_rejects_shape_and_spacing_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.ones((2, 2, 2)), np.ones((2, 2, 2)), spacing=(1.0, 1.0))


def test_nsd_equals_monai_surface_dice_and_scores_empty_masks() -> None:
    import torch
    from monai.metrics import compute_surface_dice
    from scipy import ndimage

    from vox2vox.report.metrics import nsd

    truth = np.zeros((30, 36, 20), bool)
    truth[8:20, 10:26, 4:14] = True
    spacing = (0.8, 1.0, 2.5)
    one_hot = lambda m: torch.from_numpy(np.stack([~m, m]))[None].float()  # noqa: E731
    pairs = [ndimage.binary_dilation(truth, iterations=2), np.roll(truth, 3, axis=2), ndimage.binary_erosion(truth)]
    pairs[0][1:4, 1:4, 16:19] = True  # and a blob away from the tumour
    for pred in pairs:
        for tolerance in (1.0, 2.5):
            expected = float(compute_surface_dice(one_hot(pred), one_hot(truth), class_thresholds=[tolerance],
                                                  spacing=spacing, use_subvoxels=True))
            assert nsd(pred, truth, spacing=spacing, tolerance_mm=tolerance) == pytest.approx(expected, abs=1e-6)
            assert 0.0 < expected < 1.0
    empty = np.zeros_like(truth)
    assert nsd(empty, empty, spacing=spacing) == 1.0
    assert nsd(truth, empty, spacing=spacing) == 0.0 and nsd(empty, truth, spacing=spacing) == 0.0
