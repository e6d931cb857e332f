"""Segmentation scores per region, the way the BraTS challenge computes them.

All functions take boolean masks of one shape ``(D, H, W)`` (any array axis order, as long as
``spacing`` lists the voxel size in mm along the same axes). Empty-mask rules follow the BraTS
toolkit, so cases with an empty region are scored instead of dropped (dropping them flatters
results; docs/method.md, "Scoring"):

- truth and prediction both empty: Dice 1, HD95 0 mm;
- exactly one empty: Dice 0, HD95 :data:`HD95_ONE_EMPTY_MM` (373.13 mm, the BraTS image diagonal).

HD95 uses MONAI's ``compute_hausdorff_distance`` (edges by 6-connected erosion, exact Euclidean
distances between edge voxels in mm with per-axis spacing, symmetric, 95th percentile with linear
interpolation, the maximum of the two directions).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np

from vox2vox.errors import Vox2VoxError

#: HD95 (mm) when exactly one of truth and prediction is empty: the diagonal of a
#: 240 x 240 x 155 mm BraTS volume, as the BraTS toolkit scores it.
HD95_ONE_EMPTY_MM = 373.13

#: BraTS 2017-21 evaluation regions in source label values (1 NCR, 2 ED, 4 ET).
BRATS_REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}

#: Per-region score names, in the order the CSV writes them.
METRICS: tuple[str, ...] = (
    "dice",
    "hd95",
    "sensitivity",
    "specificity",
    "vol_true_ml",
    "vol_pred_ml",
)

Regions = Mapping[str, Sequence[int]] | Literal["labels"]


class MetricInputError(Vox2VoxError, ValueError):
    """Masks of different shapes, a bad spacing or region: the project's error (and a ValueError)."""


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Sørensen-Dice overlap 2|P∩T| / (|P| + |T|) in [0, 1]; 1 when both masks are empty."""
    pred, truth = _as_masks(pred, truth)
    n_pred, n_true = int(pred.sum()), int(truth.sum())
    if n_pred + n_true == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & truth)) / (n_pred + n_true)


def hd95(pred: np.ndarray, truth: np.ndarray, *, spacing: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the mask surfaces, in mm.

    Args:
        pred, truth: boolean masks of equal shape ``(D, H, W)``.
        spacing: voxel size in mm along each array axis (anisotropy is handled exactly).

    Returns:
        0 when both are empty, :data:`HD95_ONE_EMPTY_MM` when exactly one is empty.
    """
    # Lazy: torch and MONAI take seconds to import and only HD95 needs them, so Dice-only scoring
    # (and everything importing this module for it) stays light.
    import torch
    from monai.metrics import compute_hausdorff_distance

    pred, truth = _as_masks(pred, truth)
    spacing_t = _check_spacing(spacing, pred.ndim)
    has_pred, has_true = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_true:
        return 0.0
    if has_pred != has_true:
        return HD95_ONE_EMPTY_MM
    # Crop to the union's bounding box (+1 voxel so edges at the box border stay edges): MONAI
    # crops too, but only after converting the whole volume to float tensors.
    box = _bounding_box(pred | truth, margin=1)
    y_pred = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None]
    y_true = torch.from_numpy(np.ascontiguousarray(truth[box]))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns about empty masks; handled above
        value = compute_hausdorff_distance(
            y_pred, y_true, include_background=True, percentile=95, spacing=list(spacing_t)
        )
    return float(value.item())


def sensitivity(pred: np.ndarray, truth: np.ndarray) -> float:
    """True positive rate TP / (TP + FN).

    With an empty truth there is nothing to find: 1 if the prediction is empty too, else 0
    (the same agreement rule as Dice), so the value is always defined.
    """
    pred, truth = _as_masks(pred, truth)
    n_true = int(truth.sum())
    if n_true == 0:
        return 1.0 if not pred.any() else 0.0
    return int(np.count_nonzero(pred & truth)) / n_true


def specificity(pred: np.ndarray, truth: np.ndarray) -> float:
    """True negative rate TN / (TN + FP); with no truth negatives, 1 if no voxel is missed."""
    pred, truth = _as_masks(pred, truth)
    negatives = ~truth
    n_neg = int(negatives.sum())
    if n_neg == 0:
        return 1.0 if pred.all() else 0.0
    return int(np.count_nonzero(negatives & ~pred)) / n_neg


def volume_ml(mask: np.ndarray, *, spacing: Sequence[float]) -> float:
    """Volume of a boolean mask in millilitres (1 ml = 1000 mm^3), spacing in mm per axis."""
    mask = np.asarray(mask, dtype=bool)
    spacing_t = _check_spacing(spacing, mask.ndim)
    return int(np.count_nonzero(mask)) * float(np.prod(spacing_t)) / 1000.0


def score_masks(pred: np.ndarray, truth: np.ndarray, *, spacing: Sequence[float]) -> dict[str, float]:
    """All :data:`METRICS` for one pair of boolean masks ``(D, H, W)``; spacing in mm per axis."""
    return {
        "dice": dice(pred, truth),
        "hd95": hd95(pred, truth, spacing=spacing),
        "sensitivity": sensitivity(pred, truth),
        "specificity": specificity(pred, truth),
        "vol_true_ml": volume_ml(truth, spacing=spacing),
        "vol_pred_ml": volume_ml(pred, spacing=spacing),
    }


def label_regions(values: Iterable[int]) -> dict[str, tuple[int, ...]]:
    """One region per non-zero label value, named ``label_<value>``, in increasing order."""
    return {f"label_{v}": (v,) for v in sorted({int(v) for v in values} - {0})}


def score_case(
    pred_labels: np.ndarray,
    true_labels: np.ndarray,
    *,
    spacing: Sequence[float],
    regions: Regions = BRATS_REGIONS,
) -> dict[str, dict[str, float]]:
    """Score one case: for each region, the voxels whose label is in the region's value set.

    Args:
        pred_labels, true_labels: integer label maps of equal shape ``(D, H, W)`` in the source
            convention (e.g. BraTS 0/1/2/4).
        spacing: voxel size in mm along each array axis.
        regions: region name -> label values (default :data:`BRATS_REGIONS`), or ``"labels"``
            for one region per non-zero value present in either map (see :func:`label_regions`).

    Returns:
        ``{region: {metric: value}}`` with the metrics of :data:`METRICS`.
    """
    pred_labels = np.asarray(pred_labels)
    true_labels = np.asarray(true_labels)
    if pred_labels.shape != true_labels.shape:
        raise MetricInputError(
            f"prediction shape {pred_labels.shape} differs from truth shape {true_labels.shape}"
        )
    if isinstance(regions, str):
        if regions != "labels":
            raise MetricInputError(f"regions must be a mapping or 'labels', got {regions!r}")
        regions = label_regions(np.union1d(np.unique(pred_labels), np.unique(true_labels)))
    return {
        name: score_masks(
            np.isin(pred_labels, tuple(values)),
            np.isin(true_labels, tuple(values)),
            spacing=spacing,
        )
        for name, values in regions.items()
    }


def _as_masks(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise MetricInputError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    return pred, truth


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing_t = tuple(float(s) for s in spacing)
    if len(spacing_t) != ndim or any(not 0 < s < math.inf for s in spacing_t):
        raise MetricInputError(f"spacing must be {ndim} positive sizes in mm, got {tuple(spacing)}")
    return spacing_t


def _bounding_box(mask: np.ndarray, *, margin: int) -> tuple[slice, ...]:
    """Slices of the non-empty mask's bounding box grown by ``margin`` voxels (clipped)."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(hits[0]) - margin, 0), int(hits[-1]) + margin + 1))
    return tuple(box)
