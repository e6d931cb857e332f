"""How sure a prediction is: per-voxel maps and one score per case (``predict --save-uncertainty``).

Both maps are normalised so they lie in [0, 1] whatever the number of outputs:

- **entropy** of the averaged softmax ``p`` (the mean over ensemble members and test-time flips,
  the probabilities the label map is the argmax of): ``H(p) = -sum_c p_c log p_c / log K`` for
  K classes; 0 where one class has all the probability, 1 where all K are equally likely. The
  total (predictive) uncertainty. A region-based model (``generator.output = "regions"``: one
  sigmoid per nested region, not a softmax) gets the mean over its regions of each region's
  binary entropy ``-(q log q + (1-q) log(1-q)) / log 2``, the same 0-to-1 scale.
- **spread**: the mutual information between the prediction and the member (BALD):
  ``H(p) - mean_m H(p_m)``, the part of the entropy that comes from members disagreeing; 0 when
  every member predicts the same distribution, at most ``H(p)``. Only with several members
  (``--tta`` flips, several ``--model``, a cross-validation folder). Chosen over the standard
  deviation of member probabilities because it is in the entropy's units (the two maps compare
  directly) and needs one running sum over members, a volume, not every member's probabilities.

Maps are computed on the grid the network saw and mapped back to the input grid as the
probabilities are (linear where resampled, 0 outside the crop, where the prediction is certain
background); they are written as ``<case>_entropy.nii.gz`` / ``<case>_spread.nii.gz``.
Per case, :class:`UncertaintyScores` holds their means over the volume and inside the predicted
foreground, written to ``uncertainty.csv`` beside the predictions.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import special

from vox2vox.atomic import atomic_write_text
from vox2vox.errors import Vox2VoxError

#: ``vox2vox.model.outputs.OutputKind``, spelled out: importing it would load torch into the report.
OutputKind = Literal["classes", "regions"]

#: The per-case table predict writes beside the label maps.
UNCERTAINTY_CSV = "uncertainty.csv"


def entropy_scale(n_outputs: int, kind: OutputKind = "classes") -> float:
    """What the summed entropy is divided by to lie in [0, 1]: ``log K`` for K softmax classes,
    ``R log 2`` for R sigmoid regions (their mean binary entropy)."""
    return math.log(n_outputs) if kind == "classes" else n_outputs * math.log(2.0)


def normalised_entropy(probs: np.ndarray, *, axis: int = 0, kind: OutputKind = "classes") -> np.ndarray:
    """The normalised entropy of ``probs`` over ``axis``, float32 in [0, 1], ``0 log 0 = 0``:
    categorical over softmax classes, or the mean binary entropy of sigmoid regions.

    (Ensembled prediction sums its members' entropies on the device with torch, the same formula:
    :func:`vox2vox.infer.inference.predict_averaged`.)
    """
    probs = np.asarray(probs, dtype=np.float32)
    # xlogy gives 0 at p = 0 (no NaN); the clip keeps float rounding of sum(p) != 1 inside [0, 1].
    h = special.xlogy(probs, probs)
    if kind == "regions":
        h += special.xlogy(1.0 - probs, 1.0 - probs)
    total = -h.sum(axis=axis, dtype=np.float32)
    return np.clip(total / np.float32(entropy_scale(probs.shape[axis], kind)), 0.0, 1.0).astype(np.float32, copy=False)


def uncertainty_maps(
    mean_probs: np.ndarray, expected_entropy: np.ndarray | None, *, kind: OutputKind = "classes"
) -> tuple[np.ndarray, np.ndarray | None]:
    """(entropy, spread) maps ``(D, H, W)`` float32 on the probabilities' grid.

    ``mean_probs``: the averaged softmax (or region sigmoids) ``(K, D, H, W)``;
    ``expected_entropy``: the mean over members of each member's :func:`normalised_entropy`
    (None with a single member: no spread).
    """
    entropy_map = normalised_entropy(mean_probs, axis=0, kind=kind)
    if expected_entropy is None:
        return entropy_map, None
    # Jensen: H(mean) >= mean H, so the difference is >= 0 up to float rounding.
    spread = np.clip(entropy_map - np.asarray(expected_entropy, dtype=np.float32), 0.0, 1.0)
    return entropy_map, spread.astype(np.float32, copy=False)


@dataclass(frozen=True)
class UncertaintyScores:
    """One case's uncertainty: map means over the whole volume and inside the predicted foreground
    (NaN when nothing is predicted; spread NaN with one member). ``members``: softmax outputs
    averaged (models x flips)."""

    members: int
    foreground_voxels: int
    entropy_mean: float
    entropy_foreground: float
    spread_mean: float
    spread_foreground: float


def score_case(
    entropy: np.ndarray, spread: np.ndarray | None, foreground: np.ndarray, *, members: int
) -> UncertaintyScores:
    """Scores of one case from its maps and predicted-foreground mask (all on one grid)."""
    if entropy.shape != foreground.shape or (spread is not None and spread.shape != entropy.shape):
        raise Vox2VoxError(
            f"uncertainty maps {entropy.shape} and foreground {foreground.shape} lie on different grids"
        )
    n = int(np.count_nonzero(foreground))

    def means(volume: np.ndarray | None) -> tuple[float, float]:
        if volume is None:
            return math.nan, math.nan
        inside = float(volume[foreground].mean(dtype=np.float64)) if n else math.nan
        return float(volume.mean(dtype=np.float64)), inside

    entropy_mean, entropy_fg = means(entropy)
    spread_mean, spread_fg = means(spread)
    return UncertaintyScores(members, n, entropy_mean, entropy_fg, spread_mean, spread_fg)


COLUMNS = ("case", *(f.name for f in fields(UncertaintyScores)))


def write_uncertainty_csv(path: str | Path, scores: Mapping[str, UncertaintyScores]) -> Path:
    """``case,members,foreground_voxels,entropy_mean,...`` one row per case, atomically; a NaN
    (nothing predicted, or no spread with one member) is an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for case_id, row in scores.items():
        values = asdict(row)
        writer.writerow([case_id, *("" if isinstance(v, float) and math.isnan(v) else
                                    f"{v:.6f}" if isinstance(v, float) else v for v in values.values())])
    path = Path(path)
    atomic_write_text(path, buffer.getvalue())
    return path


def read_uncertainty_csv(path: str | Path) -> dict[str, UncertaintyScores]:
    """Inverse of :func:`write_uncertainty_csv` (the HTML report reads it)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise Vox2VoxError(f"{path}: cannot read the uncertainty table ({err})") from err
    out: dict[str, UncertaintyScores] = {}
    for line, row in enumerate(rows, start=2):
        try:
            out[row["case"]] = UncertaintyScores(
                members=int(row["members"]),
                foreground_voxels=int(row["foreground_voxels"]),
                **{name: float(row[name]) if row[name] not in ("", None) else math.nan
                   for name in COLUMNS[3:]},
            )
        except (KeyError, TypeError, ValueError) as err:
            raise Vox2VoxError(f"{path}: line {line}: malformed uncertainty row ({err}); delete the file") from err
    return out
