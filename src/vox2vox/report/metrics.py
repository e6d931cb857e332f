"""Segmentation scores per region, the way the BraTS challenge computes them.

All functions take boolean masks of one shape ``(D, H, W)`` (any array axis order, as long as
``spacing`` lists the voxel size in mm along the same axes). Empty-mask rules follow the BraTS
toolkit, so cases with an empty region are scored instead of dropped (dropping them flatters
results; docs/method.md, "Scoring"):

- truth and prediction both empty: Dice 1, HD95 0 mm, NSD 1;
- exactly one empty: Dice 0, HD95 :data:`HD95_ONE_EMPTY_MM` (373.13 mm, the BraTS image diagonal), NSD 0.

HD95 uses MONAI's ``compute_hausdorff_distance`` (edges by 6-connected erosion, exact Euclidean
distances between edge voxels in mm with per-axis spacing, symmetric, 95th percentile with linear
interpolation, the maximum of the two directions).

NSD and the lesion-wise HD95 (:mod:`vox2vox.report.lesions`) use surface elements with their areas
(DeepMind's surface-distance convention, which the MSD NSD and the BraTS 2023+ evaluator use), from
MONAI's ``get_edge_surface_distance(use_subvoxels=True)``: :func:`surface_distances`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vox2vox.data.labels import BRATS_REGIONS, per_label_regions
from vox2vox.errors import Vox2VoxError

__all__ = ["BRATS_REGIONS", "HD95_ONE_EMPTY_MM", "METRICS", "NSD_TOLERANCE_MM", "SurfaceDistances"]

#: HD95 (mm) when exactly one of truth and prediction is empty: the diagonal of a
#: 240 x 240 x 155 mm BraTS volume, as the BraTS toolkit scores it.
HD95_ONE_EMPTY_MM = 373.13

#: Surface tolerance (mm) of the normalised surface Dice unless told otherwise: 1 mm, one voxel of
#: the 1 mm BraTS grid, as the BraTS 2025 evaluator's NSD and most MSD/nnU-Net papers report it.
NSD_TOLERANCE_MM = 1.0

#: Per-region score names, in the order the CSV writes them.
METRICS: tuple[str, ...] = (
    "dice",
    "hd95",
    "nsd",
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


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances (mm) from each surface element of one mask to the other mask's surface, and the
    element areas (mm^2), each direction sorted by distance. An empty mask has no elements."""

    pred_to_truth: np.ndarray
    truth_to_pred: np.ndarray
    pred_areas: np.ndarray
    truth_areas: np.ndarray


def surface_distances(pred: np.ndarray, truth: np.ndarray, *, spacing: Sequence[float]) -> SurfaceDistances:
    """Surface elements of both non-empty-or-empty masks and their distances to the other surface.

    Elements are the 2x2x2 voxel neighbourhoods that are neither all inside nor all outside, weighted
    by the area of the surface crossing them (MONAI's table, adapted from DeepMind surface-distance).
    """
    import torch
    from monai.metrics.utils import get_edge_surface_distance

    pred, truth = _as_masks(pred, truth)
    spacing_t = _check_spacing(spacing, pred.ndim)
    if not pred.any() and not truth.any():
        empty = np.zeros(0)
        return SurfaceDistances(empty, empty, empty, empty)
    # The union's bounding box plus 2 voxels: every element touching either mask stays inside it.
    box = _bounding_box(pred | truth, margin=2)
    p = torch.from_numpy(np.ascontiguousarray(pred[box]))
    t = torch.from_numpy(np.ascontiguousarray(truth[box]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty sides are handled below (inf distances)
        (edges_p, edges_t), (d_pt, d_tp), (areas_p, areas_t) = get_edge_surface_distance(
            p, t, spacing=list(spacing_t), use_subvoxels=True, symmetric=True
        )
    d_pt, d_tp = np.asarray(d_pt, dtype=np.float64), np.asarray(d_tp, dtype=np.float64)
    a_p = np.asarray(areas_p[edges_p], dtype=np.float64)
    a_t = np.asarray(areas_t[edges_t], dtype=np.float64)
    # An empty side has no elements, and the other side's distances to it are infinite.
    if not truth.any():
        d_pt, d_tp = np.full(a_p.shape, np.inf), np.zeros(0)
    if not pred.any():
        d_tp, d_pt = np.full(a_t.shape, np.inf), np.zeros(0)
    order_p, order_t = np.argsort(d_pt, kind="stable"), np.argsort(d_tp, kind="stable")
    return SurfaceDistances(d_pt[order_p], d_tp[order_t], a_p[order_p], a_t[order_t])


def robust_hausdorff(distances: SurfaceDistances, percent: float = 95.0) -> float:
    """The larger of the two directions' area-weighted ``percent``-th percentile distances (mm):
    the first distance at which the cumulated element area reaches ``percent`` % (DeepMind's rule,
    the BraTS 2023+ evaluator's HD95). ``inf`` when one surface is missing."""
    worst = 0.0
    for dist, area in ((distances.truth_to_pred, distances.truth_areas), (distances.pred_to_truth, distances.pred_areas)):
        if dist.size == 0:
            return math.inf
        cumulative = np.cumsum(area) / np.sum(area)
        index = min(int(np.searchsorted(cumulative, percent / 100.0)), dist.size - 1)
        worst = max(worst, float(dist[index]))
    return worst


def nsd(pred: np.ndarray, truth: np.ndarray, *, spacing: Sequence[float], tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Normalised surface Dice: the share of both surfaces' area lying within ``tolerance_mm`` of the
    other surface (Nikolov et al. 2021; MSD). Both empty: 1; exactly one empty: 0."""
    if not (tolerance_mm >= 0 and math.isfinite(tolerance_mm)):
        raise MetricInputError(f"NSD tolerance must be a finite distance >= 0 mm, got {tolerance_mm}")
    d = surface_distances(pred, truth, spacing=spacing)
    total = float(d.pred_areas.sum() + d.truth_areas.sum())
    if total == 0.0:
        return 1.0
    if d.pred_areas.size == 0 or d.truth_areas.size == 0:
        return 0.0
    within = float(d.pred_areas[d.pred_to_truth <= tolerance_mm].sum() + d.truth_areas[d.truth_to_pred <= tolerance_mm].sum())
    return within / total


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


def score_masks(pred: np.ndarray, truth: np.ndarray, *, spacing: Sequence[float],
                nsd_tolerance_mm: float = NSD_TOLERANCE_MM) -> dict[str, float]:
    """All :data:`METRICS` for one pair of boolean masks ``(D, H, W)``; spacing in mm per axis."""
    return {
        "dice": dice(pred, truth),
        "hd95": hd95(pred, truth, spacing=spacing),
        "nsd": nsd(pred, truth, spacing=spacing, tolerance_mm=nsd_tolerance_mm),
        "sensitivity": sensitivity(pred, truth),
        "specificity": specificity(pred, truth),
        "vol_true_ml": volume_ml(truth, spacing=spacing),
        "vol_pred_ml": volume_ml(pred, spacing=spacing),
    }


def label_regions(values: Iterable[int]) -> dict[str, tuple[int, ...]]:
    """One region per non-zero label value, named ``label_<value>``, in increasing order, plus their
    union "foreground" when there are two or more (:func:`vox2vox.data.labels.per_label_regions`)."""
    return per_label_regions(values)


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
