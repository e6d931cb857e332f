"""Lesion-wise Dice and HD95 by the BraTS 2023+ rules (docs/metrics.md, "Lesion-wise scores").

For one region of one case:

1. Truth lesions are the 26-connected components of the truth mask, where components that come
   within ``2 * dilation`` voxels of each other are joined (they share a component of the truth
   dilated ``dilation`` times with the 18-connected cross).
2. Each truth lesion, dilated the same way, claims every 26-connected predicted component it
   touches; the lesion's Dice and HD95 compare it with the union of those components (no
   component: Dice 0, HD95 :data:`LESION_MISS_HD95_MM`).
3. A predicted component claimed by no lesion is a false positive.
4. Lesions of volume at most ``min_volume_mm3`` are left out of the scores and counts (they still
   claim components, so those are no false positives).
5. Lesion-wise Dice = sum of the counted lesions' Dice / (counted lesions + false positives);
   HD95 likewise with :data:`LESION_MISS_HD95_MM` per false positive. Nothing to count (no counted
   lesion, no false positive): Dice 1, HD95 0.

The rules and numbers follow the BraTS 2023 organisers' evaluator (``BraTS-2023-Metrics``), with
which benchmarks/lesionwise_vs_official.py checks agreement. Written with scipy.ndimage because
panoptica (the 2025 evaluator's engine) pins numpy below the version this project uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from vox2vox.errors import Vox2VoxError
from vox2vox.report.metrics import dice, robust_hausdorff, surface_distances

#: HD95 (mm) of a missed lesion or a false-positive component, as the BraTS 2023+ evaluator scores it.
LESION_MISS_HD95_MM = 374.0


@dataclass(frozen=True)
class LesionRule:
    """One challenge's lesion-wise settings: dilation iterations (18-connected cross) used to join
    and match lesions, and the volume (mm^3) at or below which a truth lesion is not scored."""

    name: str
    challenge: str
    dilation: int
    min_volume_mm3: float

    def describe(self) -> str:
        return (f"lesion-wise {self.name} ({self.challenge}: 26-connected lesions, matched after {self.dilation} "
                f"dilation(s), lesions <= {self.min_volume_mm3:g} mm^3 ignored, false positives Dice 0 / HD95 "
                f"{LESION_MISS_HD95_MM:g} mm)")


#: The BraTS 2023-24 tasks' rules, by the names ``--lesion-wise`` takes.
LESION_RULES: dict[str, LesionRule] = {
    rule.name: rule
    for rule in (
        LesionRule("glioma", "BraTS-GLI adult glioma", dilation=3, min_volume_mm3=50.0),
        LesionRule("africa", "BraTS-SSA sub-Saharan Africa glioma", dilation=3, min_volume_mm3=50.0),
        LesionRule("pediatric", "BraTS-PED paediatric tumours", dilation=3, min_volume_mm3=50.0),
        LesionRule("meningioma", "BraTS-MEN meningioma", dilation=1, min_volume_mm3=50.0),
        LesionRule("metastases", "BraTS-MET brain metastases", dilation=1, min_volume_mm3=2.0),
    )
}

_CROSS = ndimage.generate_binary_structure(3, 2)  # 18-connected: the dilation step
_CUBE = np.ones((3, 3, 3), dtype=bool)  # 26-connected: lesions and components


def get_lesion_rule(name: str) -> LesionRule | None:
    """The rule named ``name`` (``off``: None); an unknown name is a one-line error."""
    key = name.strip().lower()
    if key == "off":
        return None
    if key not in LESION_RULES:
        raise Vox2VoxError(f"lesion-wise rule {name!r} is unknown; use one of {', '.join(LESION_RULES)} or off")
    return LESION_RULES[key]


@dataclass(frozen=True)
class Lesion:
    """One truth lesion (``kind`` ``"truth"``) or false-positive component (``kind`` ``"fp"``)."""

    kind: str
    index: int
    volume_ml: float
    counted: bool
    n_components: int
    dice: float
    hd95: float


@dataclass(frozen=True)
class LesionScores:
    """Lesion-wise scores of one region of one case (see the module's rules)."""

    dice: float
    hd95: float
    tp: int
    fp: int
    fn: int
    lesions: tuple[Lesion, ...]


def lesion_wise(pred: np.ndarray, truth: np.ndarray, *, spacing: Sequence[float], rule: LesionRule) -> LesionScores:
    """Lesion-wise Dice, HD95 and lesion counts of two boolean masks ``(D, H, W)`` (spacing in mm)."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise Vox2VoxError(f"lesion-wise scores need two 3D masks of one shape, got {pred.shape} and {truth.shape}")
    voxel_mm3 = float(np.prod([float(s) for s in spacing]))
    components, n_components = ndimage.label(pred, structure=_CUBE)
    joined, n_lesions = ndimage.label(_dilate(truth, rule.dilation), structure=_CUBE)
    lesion_of = np.where(truth, joined, 0)
    claimed: set[int] = set()
    lesions: list[Lesion] = []
    boxes = ndimage.find_objects(lesion_of)
    for index, box in enumerate(boxes, start=1):
        if box is None:  # a dilated component holds at least one truth voxel, but be safe
            continue
        window = _grow(box, rule.dilation + 1, truth.shape)
        lesion = lesion_of[window] == index
        reach = _dilate(lesion, rule.dilation)
        ids = np.unique(components[window][reach])
        ids = ids[ids != 0]
        claimed.update(int(i) for i in ids)
        volume = float(lesion.sum()) * voxel_mm3
        if ids.size:
            matched = np.isin(components, ids)
            # Score inside the box of lesion and matched components; distances do not depend on the crop.
            both = _bounding(np.isin(lesion_of, [index]) | matched)
            score_dice = dice(matched[both], lesion_of[both] == index)
            hd = robust_hausdorff(surface_distances(matched[both], lesion_of[both] == index, spacing=spacing))
        else:
            score_dice, hd = 0.0, math.inf
        lesions.append(Lesion("truth", index, volume / 1000.0, volume > rule.min_volume_mm3, int(ids.size),
                              score_dice, LESION_MISS_HD95_MM if math.isinf(hd) else hd))
    fp_ids = [i for i in range(1, n_components + 1) if i not in claimed]
    if fp_ids:
        sizes = ndimage.sum_labels(np.ones(pred.shape, dtype=np.float64), components, fp_ids)
        lesions += [Lesion("fp", i, float(n) * voxel_mm3 / 1000.0, True, 1, 0.0, LESION_MISS_HD95_MM)
                    for i, n in zip(fp_ids, sizes, strict=True)]
    counted = [les for les in lesions if les.kind == "truth" and les.counted]
    n_fp = len(fp_ids)
    denominator = len(counted) + n_fp
    if denominator == 0:
        score, distance = 1.0, 0.0
    else:
        score = sum(les.dice for les in counted) / denominator
        distance = (sum(les.hd95 for les in counted) + n_fp * LESION_MISS_HD95_MM) / denominator
    tp = sum(1 for les in counted if les.n_components > 0)
    return LesionScores(score, distance, tp, n_fp, len(counted) - tp, tuple(lesions))


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    if iterations <= 0:
        return mask.copy()
    return ndimage.binary_dilation(mask, structure=_CROSS, iterations=iterations)


def _grow(box: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape, strict=True))


def _bounding(mask: np.ndarray) -> tuple[slice, ...]:
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    return _grow(box, 1, mask.shape)
