"""Score a folder of predicted label maps against the ground truth, as BraTS does.

``evaluate_folder`` pairs predictions with truth cases BY CASE ID (never by list position),
scores every case and region with :mod:`vox2vox.report.metrics` and, for lesion-wise scores,
:mod:`vox2vox.report.lesions` (missing predictions count as empty predictions, so they score Dice 0 /
HD95 373.13 where the truth has tumour), and writes a per-case CSV, a per-lesion CSV and a JSON summary
(mean, std, median, quartiles per region and metric; the label convention, regions and lesion rule).

Regions come from the label set (:func:`vox2vox.data.labels.scoring_regions_for`): the convention given,
else the dataset layout's, else the one recorded by the model that wrote the predictions, else the one
read from the label values themselves (BraTS 0/1/2/4 -> WT/TC/ET; anything else: one region per label
and their union).

Predictions for case ``<id>`` are looked up in ``pred_dir`` as ``<id>.nii.gz``, ``<id>.nii``,
``<id>_seg.nii.gz``, ``<id>-seg.nii.gz`` or ``<id>/<id>_seg.nii.gz`` (first match wins). The truth is
any dataset :func:`vox2vox.data.layouts.discover` reads whose cases have labels, or a plain folder of
label files ``<id>.nii.gz`` / ``<id>_seg.nii.gz``.
"""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from vox2vox.atomic import atomic_write_text
from vox2vox.data.hdf5 import file_of
from vox2vox.data.io import NIFTI_SUFFIXES, Geometry, read_volume, strip_volume_suffix
from vox2vox.data.labels import (
    BRATS_REGIONS,
    LabelConvention,
    get_convention,
    infer_convention,
    read_prediction_record,
    round_label_map,
    scoring_regions_for,
)
from vox2vox.data.layouts import discover
from vox2vox.errors import Vox2VoxError
from vox2vox.report.lesions import LesionRule, get_lesion_rule, lesion_wise
from vox2vox.report.metrics import METRICS, NSD_TOLERANCE_MM, label_regions, score_masks

#: Lesion-wise scores per case and region (NaN when lesion-wise scoring is off).
LESION_METRICS: tuple[str, ...] = ("lesion_dice", "lesion_hd95", "lesion_tp", "lesion_fp", "lesion_fn")

#: CSV columns, in order: one row per case and region.
CSV_COLUMNS: tuple[str, ...] = ("case", "region", *METRICS, *LESION_METRICS, "missing_prediction")

#: Per-lesion CSV columns: one row per truth lesion or false-positive component.
LESION_COLUMNS: tuple[str, ...] = ("case", "region", "kind", "lesion", "volume_ml", "counted", "n_components",
                                   "dice", "hd95")

#: Summary statistics over cases, per region and metric.
STATISTICS: tuple[str, ...] = ("mean", "std", "median", "p25", "p75", "n")

# Label-file name endings that are not part of the case id (BraTS 2018-21 and 2023 seg files).
_LABEL_TAILS = ("_seg", "-seg")
# Metrics shown in the printed table (volumes stay in the CSV and JSON).
_TABLE_METRICS = (("dice", "Dice"), ("hd95", "HD95 mm"), ("nsd", "NSD"), ("sensitivity", "Sens"), ("specificity", "Spec"),
                  ("lesion_dice", "LW Dice"), ("lesion_hd95", "LW HD95"))


@dataclass(frozen=True)
class EvaluationResult:
    """Scores of one evaluation.

    ``rows``: one dict per (case, region) with the keys of :data:`CSV_COLUMNS`, cases in truth
    order. ``summary[region][metric][stat]`` with stats :data:`STATISTICS` over cases (std is
    the sample standard deviation, 0 for a single case). ``missing``: truth cases without a
    prediction (scored as empty). ``unmatched``: names of prediction files that match no truth
    case (ignored).
    """

    regions: tuple[str, ...]
    case_ids: tuple[str, ...]
    rows: tuple[dict[str, object], ...]
    summary: dict[str, dict[str, dict[str, float]]]
    missing: tuple[str, ...] = ()
    unmatched: tuple[str, ...] = ()
    csv_path: Path | None = None
    json_path: Path | None = None
    #: Why these regions: the label convention used and where it came from.
    regions_why: str = ""
    convention: str = ""
    #: The lesion-wise rule's description, or "off".
    lesion_rule: str = "off"
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM
    #: One dict per truth lesion / false-positive component, keys :data:`LESION_COLUMNS`.
    lesions: tuple[dict[str, object], ...] = ()
    lesions_path: Path | None = None

    def mean(self, region: str, metric: str = "dice") -> float:
        """Mean of ``metric`` over cases for ``region`` (e.g. ``result.mean("WT")``)."""
        return self.summary[region][metric]["mean"]

    def format_summary(self) -> str:
        """A printable table: one line per region and metric with mean, std, median, quartiles."""
        lines = [
            f"Scoring regions {', '.join(self.regions)}: {self.regions_why}",
            f"Evaluated {len(self.case_ids)} case(s); NSD at {self.nsd_tolerance_mm:g} mm; {self.lesion_rule}",
        ]
        if self.missing:
            lines.append(
                f"Missing predictions, scored as empty ({len(self.missing)}): "
                + ", ".join(self.missing)
            )
        if self.unmatched:
            lines.append(
                f"Predictions with no truth case, ignored ({len(self.unmatched)}): "
                + ", ".join(self.unmatched)
            )
        header = f"{'region':<10} {'metric':<9} {'mean':>9} {'std':>9} {'median':>9} {'25%':>9} {'75%':>9}"
        lines += [header, "-" * len(header)]
        for region in self.regions:
            for key, title in _TABLE_METRICS:
                stats = self.summary[region].get(key)
                if stats is None:
                    continue
                values = " ".join(
                    f"{stats[s]:>9.4f}" if "hd95" not in key else f"{stats[s]:>9.2f}"
                    for s in ("mean", "std", "median", "p25", "p75")
                )
                lines.append(f"{region:<10} {title:<9} {values}")
        if self.csv_path is not None:
            lines.append(f"Per-case scores: {self.csv_path}")
        if self.lesions_path is not None:
            lines.append(f"Per-lesion scores: {self.lesions_path}")
        if self.json_path is not None:
            lines.append(f"Summary: {self.json_path}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """JSON-serialisable summary (what is saved next to the CSV)."""
        return {
            "n_cases": len(self.case_ids),
            "convention": self.convention,
            "regions": list(self.regions),
            "regions_why": self.regions_why,
            "lesion_rule": self.lesion_rule,
            "nsd_tolerance_mm": self.nsd_tolerance_mm,
            "cases": list(self.case_ids),
            "missing_predictions": list(self.missing),
            "unmatched_predictions": list(self.unmatched),
            "summary": self.summary,
        }


def evaluate_folder(
    pred_dir: str | os.PathLike[str],
    truth: str | os.PathLike[str],
    *,
    regions: Literal["auto", "brats", "labels"] | Mapping[str, Sequence[int]] = "auto",
    convention: str | Mapping | LabelConvention | None = None,
    out_csv: str | os.PathLike[str] | None = None,
    lesion_rule: str = "auto",
    nsd_tolerance_mm: float = NSD_TOLERANCE_MM,
) -> EvaluationResult:
    """Score every truth case against its prediction in ``pred_dir``.

    Args:
        pred_dir: folder of predicted label maps (source label values, e.g. BraTS 0/1/2/4), on
            the same grid (shape and affine) as the truth.
        truth: a dataset folder or manifest with labels (see :func:`vox2vox.data.layouts.discover`),
            or a folder of label files named by case id.
        regions: ``"auto"``: the regions of the label convention (``convention``, else the dataset
            layout's, else the predicting model's, else read from the values: see
            :func:`vox2vox.data.labels.scoring_regions_for`); ``"brats"``: the same, refused unless
            they are BraTS's WT/TC/ET; ``"labels"``: one region per non-zero label value found in any
            truth or prediction, plus their union; or an explicit mapping ``{name: label values}``.
        convention: a label convention name (``"brats2023"``), custom dict or
            ``vox2vox.data.labels.LabelConvention`` of the truth.
        out_csv: where to write the per-case CSV; the summary goes beside it as
            ``<stem>_summary.json``, the per-lesion scores as ``<stem>_lesions.csv``. Nothing is
            written when None.
        lesion_rule: a rule of :data:`vox2vox.report.lesions.LESION_RULES` (``glioma``,
            ``metastases``, ...), ``off``, or ``auto``: ``glioma`` for BraTS regions, off otherwise.
        nsd_tolerance_mm: surface tolerance of the normalised surface Dice, in mm.

    Raises:
        Vox2VoxError: unreadable folders, no labelled truth cases, or a prediction whose shape
            or affine differs from its truth (the message names the file).
    """
    pred_dir = Path(pred_dir)
    truth = Path(truth)
    if not pred_dir.is_dir():
        raise Vox2VoxError(f"{pred_dir}: prediction folder not found; give the folder predict wrote")
    truth_files, dataset_convention = _truth_cases(truth)
    predictions = index_predictions(pred_dir)
    check_pairing(pred_dir, truth, truth_files, predictions)

    # Read everything once: per-label regions need every label value before scoring.
    pairs: list[tuple[str, np.ndarray, np.ndarray | None, tuple[float, ...]]] = []
    for case_id, truth_path in truth_files.items():
        true_labels, true_geometry = read_label_map(truth_path)
        pred_labels: np.ndarray | None = None
        pred_path = predictions.get(case_id)
        if pred_path is not None:
            pred_labels, pred_geometry = read_label_map(pred_path)
            if not true_geometry.same_grid(pred_geometry):
                raise Vox2VoxError(
                    f"{pred_path}: grid differs from the truth {truth_path} (shape "
                    f"{pred_geometry.shape} vs {true_geometry.shape}, or affine); predictions must "
                    "be written on the input image's grid, as vox2vox predict does"
                )
        pairs.append((case_id, true_labels, pred_labels, true_geometry.spacing))

    ignore = _ignore_label(convention, dataset_convention)
    region_map, conv_name, why = choose_regions(regions, convention, dataset_convention,
                                                read_prediction_record(pred_dir), pairs, truth=truth)
    if ignore is not None:
        region_map = {k: tuple(v for v in vals if v != ignore) for k, vals in region_map.items()}
        region_map = {k: vals for k, vals in region_map.items() if vals}
    rule = _lesion_rule(lesion_rule, region_map)
    rows: list[dict[str, object]] = []
    lesion_rows: list[dict[str, object]] = []
    for case_id, true_labels, pred_labels, spacing in pairs:
        missing = pred_labels is None
        pred = np.zeros_like(true_labels) if pred_labels is None else pred_labels
        # Voxels whose truth is the ignore label count for neither side (nnU-Net's rule).
        scored = None if ignore is None else true_labels != ignore
        for name, values in region_map.items():
            pred_mask, true_mask = np.isin(pred, values), np.isin(true_labels, values)
            if scored is not None:
                pred_mask, true_mask = pred_mask & scored, true_mask & scored
            scores = score_masks(pred_mask, true_mask, spacing=spacing, nsd_tolerance_mm=nsd_tolerance_mm)
            lesion_scores: dict[str, object] = dict.fromkeys(LESION_METRICS, math.nan)
            if rule is not None:
                found = lesion_wise(pred_mask, true_mask, spacing=spacing, rule=rule)
                lesion_scores = {"lesion_dice": found.dice, "lesion_hd95": found.hd95, "lesion_tp": found.tp,
                                 "lesion_fp": found.fp, "lesion_fn": found.fn}
                lesion_rows += [{"case": case_id, "region": name, "kind": les.kind, "lesion": les.index,
                                 "volume_ml": les.volume_ml, "counted": les.counted, "n_components": les.n_components,
                                 "dice": les.dice, "hd95": les.hd95} for les in found.lesions]
            rows.append({"case": case_id, "region": name, **scores, **lesion_scores, "missing_prediction": missing})

    missing_ids = tuple(c for c, _, p, _ in pairs if p is None)
    used = {predictions[c] for c in truth_files if c in predictions}
    # What predict writes beside a scored case's label map (probabilities, uncertainty) is no
    # stray prediction: leave it out of the "ignored" list.
    beside = {f"{c}{tail}" for c in truth_files if c in predictions for tail in _SIDE_FILES}
    unmatched = tuple(sorted({p.name for p in predictions.values() if p not in used and p.name not in beside}))
    result = EvaluationResult(
        regions=tuple(region_map),
        case_ids=tuple(truth_files),
        rows=tuple(rows),
        summary=summarize(rows, regions=tuple(region_map)),
        missing=missing_ids,
        unmatched=unmatched,
        regions_why=why,
        convention=conv_name,
        lesion_rule="lesion-wise off" if rule is None else rule.describe(),
        nsd_tolerance_mm=float(nsd_tolerance_mm),
        lesions=tuple(lesion_rows),
    )
    if out_csv is not None:
        result = write_result(result, out_csv)
    return result


def check_pairing(pred_dir: Path, truth: Path, truth_files: Mapping[str, Path], predictions: Mapping[str, Path]) -> None:
    """Refuse an evaluation that cannot mean anything: no prediction matches any truth case, or
    the predictions are the truth files themselves (Dice 1 without a word)."""
    matched = [c for c in truth_files if c in predictions]
    if not matched:
        shown_truth = ", ".join(list(truth_files)[:3]) + (", ..." if len(truth_files) > 3 else "")
        shown_pred = ", ".join(sorted(p.name for p in predictions.values())[:3]) or "no NIfTI files"
        raise Vox2VoxError(
            f"{pred_dir}: no prediction matches a truth case (truth cases: {shown_truth}; predictions: "
            f"{shown_pred}); name predictions <case id>.nii.gz as vox2vox predict does"
        )
    same = [c for c in matched if _same_file(predictions[c], truth_files[c])]
    if same:
        raise Vox2VoxError(
            f"{pred_dir}: the predictions are the truth files themselves ({len(same)} of {len(matched)}, e.g. "
            f"{predictions[same[0]].name}); give the folder predict wrote as --pred"
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _ignore_label(convention: object, dataset_convention: LabelConvention | None) -> int | None:
    """The ignore label of the convention in use (given, else the dataset's), or None."""
    if convention is not None:
        return get_convention(convention).ignore  # type: ignore[arg-type]
    return dataset_convention.ignore if dataset_convention is not None else None


def summarize(
    rows: Sequence[Mapping[str, object]], *, regions: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """``{region: {metric: {stat: value}}}`` over the rows of each region (see :data:`STATISTICS`)."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for region in regions:
        region_rows = [r for r in rows if r["region"] == region]
        summary[region] = {}
        for metric in (*METRICS, *LESION_METRICS):
            values = np.array([float(r.get(metric, math.nan)) for r in region_rows], dtype=np.float64)  # type: ignore[arg-type]
            if values.size and np.isnan(values).all():
                continue  # a score not computed (lesion-wise off)
            if values.size == 0:
                summary[region][metric] = {s: math.nan for s in STATISTICS[:-1]} | {"n": 0}
                continue
            summary[region][metric] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                "median": float(np.median(values)),
                "p25": float(np.percentile(values, 25)),
                "p75": float(np.percentile(values, 75)),
                "n": int(values.size),
            }
    return summary


def write_result(result: EvaluationResult, out_csv: str | os.PathLike[str]) -> EvaluationResult:
    """Write the per-case CSV, ``<stem>_summary.json`` and (with lesion-wise scores)
    ``<stem>_lesions.csv`` beside it, atomically.

    Returns a copy of ``result`` that knows the paths.
    """
    out_csv = Path(out_csv)
    json_path = out_csv.with_name(f"{out_csv.stem}_summary.json")
    lesions_path = out_csv.with_name(f"{out_csv.stem}_lesions.csv") if result.lesion_rule != "lesion-wise off" else None
    tables = [(out_csv, CSV_COLUMNS, result.rows)]
    if lesions_path is not None:
        tables.append((lesions_path, LESION_COLUMNS, result.lesions))
    for path, columns, rows in tables:
        buffer = _io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_cell(row[c]) for c in columns])
        atomic_write_text(path, buffer.getvalue())
    atomic_write_text(json_path, json.dumps(result.to_json(), indent=2) + "\n")
    return replace(result, csv_path=out_csv, json_path=json_path, lesions_path=lesions_path)


# --------------------------------------------------------------------------------------------
# finding and reading files
# --------------------------------------------------------------------------------------------


def _truth_cases(truth: Path) -> tuple[dict[str, Path], LabelConvention | None]:
    """Case id -> label file, and the dataset's label convention when the layout names one."""
    if not truth.exists():
        raise Vox2VoxError(f"{truth}: ground truth not found; give a dataset folder, manifest or label folder")
    label_folder = _label_folder(truth) if truth.is_dir() else {}
    try:
        spec = discover(truth)
    except Vox2VoxError:
        if label_folder:
            return label_folder, None
        raise
    cases = {c.case_id: c.label for c in spec.cases if c.label is not None}
    if not cases:
        if label_folder:
            return label_folder, None
        raise Vox2VoxError(
            f"{truth}: no case has a label file; give the ground-truth dataset or a folder of labels"
        )

    for case_id, path in cases.items():
        if not file_of(path).exists():  # ``labels.h5:seg`` lives in ``labels.h5``
            raise Vox2VoxError(f"{path}: label file of case {case_id} not found; check the dataset")
    try:
        convention = spec.label_convention()
    except Vox2VoxError:
        convention = None
    return cases, convention


def _label_folder(folder: Path) -> dict[str, Path]:
    """A flat folder of label files: ``<id>.nii.gz`` or ``<id>_seg.nii.gz`` -> id."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        case_id = _case_id_of(path.name)
        if path.is_file() and case_id is not None:
            found.setdefault(case_id, path)
    return found


#: Files ``predict`` writes beside ``<case>.nii.gz``: probabilities and uncertainty maps.
_SIDE_FILES = ("_probs.nii.gz", "_entropy.nii.gz", "_spread.nii.gz")
#: 3D Slicer's segmentation file (a labelmap NRRD), one of predict's label-map formats.
_SEG_NRRD = ".seg.nrrd"


def index_predictions(pred_dir: Path) -> dict[str, Path]:
    """Case id -> prediction file.

    A top-level file ``<name>.nii[.gz]`` offers id ``<name>`` and, when ``<name>`` ends in
    ``_seg``/``-seg``, also the id without that tail; ``<name>.seg.nrrd`` (``predict
    --output-format seg-nrrd``) offers ``<name>``; a subfolder ``<id>/`` offers ``<id>`` through
    ``<id>/<id>_seg.nii.gz`` (or ``-seg``, or ``<id>.nii.gz``). An exact NIfTI name wins over a
    ``_seg`` one or a ``.seg.nrrd``, which win over a subfolder.
    """
    ranked: dict[str, tuple[int, Path]] = {}

    def offer(case_id: str, rank: int, path: Path) -> None:
        if case_id not in ranked or rank < ranked[case_id][0]:
            ranked[case_id] = (rank, path)

    for path in sorted(pred_dir.iterdir()):
        if path.is_file():
            bare = strip_volume_suffix(path.name, NIFTI_SUFFIXES)
            if bare is None:
                seg_nrrd = strip_volume_suffix(path.name, (_SEG_NRRD,))
                if seg_nrrd:
                    offer(seg_nrrd, 1, path)
                continue
            offer(bare, 0, path)
            case_id = _case_id_of(path.name)
            if case_id is not None and case_id != bare:
                offer(case_id, 1, path)
        elif path.is_dir():
            for tail in (*_LABEL_TAILS, ""):
                for suffix in (".nii.gz", ".nii"):
                    candidate = path / f"{path.name}{tail}{suffix}"
                    if candidate.is_file():
                        offer(path.name, 2, candidate)
    return {case_id: path for case_id, (_, path) in ranked.items()}


def _case_id_of(name: str) -> str | None:
    """Case id of a label file name (``<id>.nii.gz`` or ``<id>_seg.nii.gz``), None if not a volume."""
    bare = strip_volume_suffix(name, NIFTI_SUFFIXES)
    if bare is None:
        return None
    for tail in _LABEL_TAILS:
        if bare.lower().endswith(tail) and len(bare) > len(tail):
            return bare[: -len(tail)]
    return bare


def read_label_map(path: Path) -> tuple[np.ndarray, Geometry]:
    """Read a label map in canonical orientation as int64; non-integer values are an error."""
    data, geometry = read_volume(path)
    # int64, never int32: a label 2**40 must not wrap onto another label's value.
    if np.issubdtype(data.dtype, np.integer):
        if data.dtype == np.uint64 and data.size and int(data.max()) > np.iinfo(np.int64).max:
            raise Vox2VoxError(f"{path}: label values beyond 2**63; expected a label map")
        return data.astype(np.int64, copy=False), geometry
    rounded = round_label_map(data)
    if rounded is None:
        raise Vox2VoxError(
            f"{path}: holds non-integer values; expected a label map (write argmax labels, "
            "not probabilities)"
        )
    if data.size and float(np.abs(rounded).max()) > 2.0**53:
        raise Vox2VoxError(f"{path}: label values up to {float(np.abs(rounded).max()):.3g}; expected a label map")
    return rounded.astype(np.int64), geometry


def choose_regions(
    regions: Literal["auto", "brats", "labels"] | Mapping[str, Sequence[int]],
    convention: str | Mapping | LabelConvention | None,
    dataset_convention: LabelConvention | None,
    model_convention: LabelConvention | None,
    pairs: Sequence[tuple[str, np.ndarray, np.ndarray | None, tuple[float, ...]]],
    *,
    truth: Path,
) -> tuple[dict[str, tuple[int, ...]], str, str]:
    """The regions to score, the label convention's name, and a line saying why."""
    values: set[int] = set()
    for _, true_labels, pred_labels, _ in pairs:
        values.update(np.unique(true_labels).tolist())
        if pred_labels is not None:
            values.update(np.unique(pred_labels).tolist())
    shown = "/".join(str(v) for v in sorted(values | {0})[:12]) + ("/..." if len(values) > 12 else "")
    if isinstance(regions, Mapping):
        return {str(k): tuple(int(v) for v in vals) for k, vals in regions.items()}, "explicit", "regions given explicitly"
    if regions == "labels":
        found = label_regions(values) or {"foreground": tuple(range(1, 256))}  # all background: one empty region
        return found, "labels", f"one region per label value found ({shown}), as asked (--regions labels)"
    if regions not in ("auto", "brats"):
        raise Vox2VoxError(f"regions {regions!r} is unknown; use auto, brats or labels")
    if convention is not None:
        chosen, source = get_convention(convention), "given (--convention)"
    elif dataset_convention is not None:
        chosen, source = dataset_convention, "the dataset layout's"
    elif model_convention is not None:
        chosen, source = model_convention, "recorded by the model that wrote the predictions"
    else:
        chosen, _ = infer_convention(values, where=truth)
        source = "read from the label values"
    region_map = scoring_regions_for(chosen)
    brats = set(region_map) == set(BRATS_REGIONS)
    if regions == "brats" and not brats:
        raise Vox2VoxError(
            f"{truth}: --regions brats needs BraTS labels, but the labels are {shown} (convention {chosen.name}, "
            f"{source}); leave --regions out to score {', '.join(region_map)}, or give --convention"
        )
    name = chosen.name if chosen.name != "classes" or not brats else "brats (values 0/1/2/4)"
    kind = "BraTS regions" if brats else ("the declared regions" if chosen.regions else "one region per label"
                                          + (" and their union" if len(region_map) > 1 else ""))
    return region_map, name, f"{kind} of label convention {name}, {source}; label values {shown}"


def _lesion_rule(name: str, region_map: Mapping[str, Sequence[int]]) -> LesionRule | None:
    """``auto``: the BraTS glioma rule for BraTS regions, off for other label sets."""
    if name.strip().lower() == "auto":
        return get_lesion_rule("glioma") if set(region_map) == set(BRATS_REGIONS) else None
    return get_lesion_rule(name)


def _csv_cell(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)
