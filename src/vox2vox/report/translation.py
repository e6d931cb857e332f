"""Scoring synthesised volumes against the real ones (``vox2vox evaluate --task translate``).

Predictions are matched to the truth by case id (as for label maps). The truth is a dataset in
any layout (its channel ``target``; a dataset of one channel needs no name) or a flat folder of
``<case_id>.nii.gz`` volumes. The mask is, in order: ``--mask`` (a file for a single case, or a
folder of ``<case_id>.nii.gz``), the case's mask file in the dataset, or the real target's
foreground (voxels that differ from its background value, the most common value on the volume's
faces). Both volumes are z-scored over the mask before MAE, PSNR and SSIM
(:mod:`vox2vox.report.image_metrics`). Writes a per-case CSV, ``<stem>_summary.json`` and an
HTML page with the best and worst cases side by side: source, synthesised, real, difference.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vox2vox.atomic import atomic_path, atomic_write_text
from vox2vox.data.io import Geometry, read_volume
from vox2vox.data.layouts import discover
from vox2vox.data.preprocessing import background_value
from vox2vox.errors import Vox2VoxError
from vox2vox.report.evaluation import index_predictions
from vox2vox.report.image_metrics import (
    hounsfield_scores,
    is_hounsfield,
    normalise_pair,
    translation_scores,
)
from vox2vox.report.report import _CSS, _e, _figure, _fmt, _kv_table, _table, _versions_section

METRICS = (("mae", "MAE", 4), ("psnr", "PSNR dB", 2), ("ssim", "SSIM", 4))
NORMALISATION = "both volumes z-scored over the mask, each by its own mean and standard deviation"
#: Added for a CT target (the real volume in HU): the synthesis challenges' scores on the HU scale.
HU_METRICS = (("mae_hu", "MAE HU", 1), ("psnr_hu", "PSNR(HU) dB", 2), ("ssim_hu", "SSIM(HU)", 4),
              ("ssim_hu_mask", "SSIM(HU) mask", 4))
#: What each column means: the summary JSON carries it, so no number is read under the wrong convention.
CONVENTIONS = {
    "mae": f"mean absolute error inside the mask, {NORMALISATION}",
    "psnr": "PSNR inside the mask on the z-scored volumes, data range = the real volume's max - min in the mask",
    "ssim": "SSIM (11^3 Gaussian window) averaged over the mask on the z-scored volumes, same data range",
    "mae_hu": "CT target: mean absolute error in HU inside the mask, both clipped to [-1024, 3000] HU (SynthRAD)",
    "psnr_hu": "CT target: PSNR inside the mask, both clipped to [-1024, 3000] HU, data range 4024 HU (SynthRAD)",
    "ssim_hu": "CT target: SSIM over the whole volume, clipped to [-1024, 3000] HU, data range 4024 HU",
    "ssim_hu_mask": "CT target: SSIM averaged over the mask, outside the mask set to -1024 HU, data range 4024 HU",
}


@dataclass(frozen=True)
class TruthCase:
    target: Path
    source: Path | None = None
    mask: Path | None = None


@dataclass
class TranslationEvaluation:
    rows: list[dict[str, object]]
    missing: list[str] = field(default_factory=list)
    pred_dir: Path | None = None
    truth: Path | None = None
    truth_cases: dict[str, TruthCase] = field(default_factory=dict)
    predictions: dict[str, Path] = field(default_factory=dict)

    def metrics(self) -> tuple[tuple[str, str, int], ...]:
        """The score columns present: :data:`METRICS`, and :data:`HU_METRICS` when a target is CT."""
        return METRICS + (HU_METRICS if any("mae_hu" in r for r in self.rows) else ())

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for key, _, _ in self.metrics():
            values = np.array([float(r.get(key, np.nan)) for r in self.rows], dtype=np.float64)
            finite = values[np.isfinite(values)]
            if finite.size:
                p25, median, p75 = np.percentile(finite, [25, 50, 75])
                out[key] = {"mean": float(finite.mean()), "std": float(finite.std()), "median": float(median),
                            "p25": float(p25), "p75": float(p75), "n": int(finite.size)}
        return out

    def format_summary(self) -> str:
        lines = [f"{len(self.rows)} case(s) scored inside the mask ({NORMALISATION})"]
        for key, name, digits in self.metrics():
            s = self.summary().get(key)
            if s:
                lines.append(f"  {name:8s} mean {s['mean']:.{digits}f} +- {s['std']:.{digits}f}  median {s['median']:.{digits}f}")
        if self.missing:
            lines.append(f"  no prediction for: {', '.join(self.missing)}")
        return "\n".join(lines)


def evaluate_translation(pred_dir: str | os.PathLike[str], truth: str | os.PathLike[str], *, target: str | None = None,
                         source: str | None = None, mask: str | os.PathLike[str] | None = None,
                         out_csv: str | os.PathLike[str] | None = None) -> TranslationEvaluation:
    """Score every prediction in ``pred_dir`` against its real volume in ``truth`` (module docstring)."""
    pred_dir, truth = Path(pred_dir), Path(truth)
    if not pred_dir.is_dir():
        raise Vox2VoxError(f"{pred_dir}: not a folder of synthesised volumes")
    cases = _truth_cases(truth, target=target, source=source)
    predictions = index_predictions(pred_dir)
    masks = _mask_files(Path(mask), cases) if mask is not None else {}
    paired = sorted(set(cases) & set(predictions))
    if not paired:
        raise Vox2VoxError(f"{pred_dir}: no file matches a case of {truth} by id (e.g. {next(iter(cases))}.nii.gz)")
    rows = []
    for case_id in paired:
        real_path, pred_path = cases[case_id].target, predictions[case_id]
        if real_path.resolve() == pred_path.resolve():
            raise Vox2VoxError(f"{pred_path}: is the real volume itself; give the folder of synthesised volumes as --pred")
        real, geometry = read_volume(real_path)
        pred, pred_geometry = read_volume(pred_path)
        _same_grid(pred_geometry, geometry, pred_path, real_path)
        region, how = _case_mask(case_id, cases[case_id], masks, real, geometry)
        scores = translation_scores(pred.astype(np.float32), real.astype(np.float32), region)
        if is_hounsfield(real):
            scores.update(hounsfield_scores(pred, real, region))
        rows.append({"case": case_id, **{k: scores[k] for k, _, _ in METRICS + HU_METRICS if k in scores},
                     "voxels": int(scores["voxels"]), "mask": how})
    result = TranslationEvaluation(rows, sorted(set(cases) - set(predictions)), pred_dir, truth,
                                   {k: cases[k] for k in paired}, {k: predictions[k] for k in paired})
    if out_csv is not None:
        write_translation_result(result, out_csv, masks=masks)
    return result


def write_translation_result(result: TranslationEvaluation, out_csv: str | os.PathLike[str], *,
                             masks: dict[str, Path] | None = None) -> Path:
    """The per-case CSV, ``<stem>_summary.json`` beside it and ``<stem>_report.html``; returns the page."""
    out_csv = Path(out_csv)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["case", *(k for k, _, _ in result.metrics()), "voxels", "mask"],
                            restval="")
    writer.writeheader()
    writer.writerows(result.rows)
    atomic_write_text(out_csv, buffer.getvalue())
    summary = {"task": "translate", "normalisation": NORMALISATION, "cases": len(result.rows),
               "columns": {k: CONVENTIONS[k] for k, _, _ in result.metrics()},
               "summary": result.summary(), "missing_predictions": result.missing}
    atomic_write_text(out_csv.with_name(f"{out_csv.stem}_summary.json"), json.dumps(summary, indent=2) + "\n")
    page = out_csv.with_name(f"{out_csv.stem}_report.html")
    atomic_write_text(page, render_translation_html(result, masks or {}))
    return page


# ---- truth and masks -----------------------------------------------------------------------------
def _truth_cases(truth: Path, *, target: str | None, source: str | None) -> dict[str, TruthCase]:
    if not truth.exists():
        raise Vox2VoxError(f"{truth}: not found; give the dataset (or folder of volumes) holding the real contrast")
    flat = truth.is_dir() and not any(p.is_dir() for p in truth.iterdir())
    flat_files = index_predictions(truth) if flat else {}
    if flat_files and not (truth / "dataset.json").exists() and not any(truth.glob("*.csv")):
        return {k: TruthCase(v) for k, v in flat_files.items()}
    spec = discover(truth)
    names = spec.channel_names
    if target is None:
        if len(names) != 1:
            raise Vox2VoxError(f"{truth}: has channels {', '.join(names)}; name the real one with --target")
        target = names[0]
    if target not in names:
        raise Vox2VoxError(f"{truth}: has no channel {target!r}; its channels are {', '.join(names)}")
    if source is not None and source not in names:
        raise Vox2VoxError(f"{truth}: has no channel {source!r} (--source); its channels are {', '.join(names)}")
    shown = source or next((n for n in names if n != target), None)
    return {c.case_id: TruthCase(Path(c.channels[target]), None if shown is None else Path(c.channels[shown]), c.mask)
            for c in spec.cases}


def _mask_files(mask: Path, cases: dict[str, TruthCase]) -> dict[str, Path]:
    if mask.is_file():
        if len(cases) != 1:
            raise Vox2VoxError(f"{mask}: one mask file for {len(cases)} cases; give a folder of <case_id>.nii.gz masks")
        return {next(iter(cases)): mask}
    if mask.is_dir():
        found = index_predictions(mask)
        if not found:
            raise Vox2VoxError(f"{mask}: holds no mask volumes (<case_id>.nii.gz)")
        return found
    raise Vox2VoxError(f"{mask}: mask not found; give a mask file or a folder of <case_id>.nii.gz masks")


def _case_mask(case_id: str, case: TruthCase, masks: dict[str, Path], real: np.ndarray,
               geometry: Geometry) -> tuple[np.ndarray, str]:
    """The case's scoring mask and where it came from."""
    path = masks.get(case_id) or case.mask
    if path is None:
        if masks:
            raise Vox2VoxError(f"case {case_id}: no mask in the --mask folder")
        region = real != background_value(real)
        if not region.any():
            raise Vox2VoxError(f"{case.target}: the real volume is constant; no foreground to score in (give --mask)")
        return region, "real foreground"
    data, mask_geometry = read_volume(path, nonfinite="zero")
    _same_grid(mask_geometry, geometry, path, case.target)
    region = data > 0.5  # float masks read as 0.99999997 inside
    if not region.any():
        raise Vox2VoxError(f"{path}: mask is empty")
    return region, "file"


def _same_grid(a: Geometry, b: Geometry, path_a: Path, path_b: Path) -> None:
    if not a.same_grid(b):
        raise Vox2VoxError(f"{path_a}: not on the grid of {path_b} (shape {a.shape} vs {b.shape} or a different "
                           "affine); compare volumes on one grid")


# ---- the HTML page -----------------------------------------------------------------------------
def render_translation_html(result: TranslationEvaluation, masks: dict[str, Path]) -> str:
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    title = f"vox2vox translation report: {result.pred_dir.name if result.pred_dir else ''}"
    overview = _kv_table([("synthesised", str(result.pred_dir)), ("real", str(result.truth)),
                          ("cases scored", str(len(result.rows))), ("normalisation", NORMALISATION),
                          ("missing predictions", ", ".join(result.missing) or "none")])
    stats = result.summary()
    summary = _table(["metric", "mean &plusmn; std", "median [p25, p75]"], [
        [name, f"{_fmt(stats.get(k, {}).get('mean'), d)} &plusmn; {_fmt(stats.get(k, {}).get('std'), d)}",
         f"{_fmt(stats.get(k, {}).get('median'), d)} [{_fmt(stats.get(k, {}).get('p25'), d)}, "
         f"{_fmt(stats.get(k, {}).get('p75'), d)}]"] for k, name, d in result.metrics()], escape=False)
    table = _table(["case", *(n for _, n, _ in result.metrics()), "voxels", "mask"],
                   [[_e(str(r["case"])), *(_fmt(r.get(k), d) for k, _, d in result.metrics()), str(r["voxels"]), _e(str(r["mask"]))]
                    for r in result.rows], escape=False)
    ranked = sorted(result.rows, key=lambda r: float(r["ssim"]), reverse=True)
    picks = [("best", ranked[0])] + ([("worst", ranked[-1])] if len(ranked) > 1 else [])
    figures = []
    for kind, row in picks:
        case_id = str(row["case"])
        try:
            figure = _figure(lambda p, c=case_id: save_translation_slices(p, result, c, masks), f"{case_id} slices")
        except Vox2VoxError as err:
            figure = f'<p class="note">{_e(case_id)}: no figure ({_e(str(err))})</p>'
        figures.append(f"<h3>{kind} case by SSIM: {_e(case_id)} (SSIM {_fmt(row['ssim'], 3)})</h3>{figure}")
    sections = [f"<section><h2>Overview</h2>{overview}</section>",
                f"<section><h2>Scores inside the mask</h2>{summary}<h3>Per case</h3>{table}</section>",
                "<section><h2>Best and worst cases</h2><p>Source, synthesised, real and |synthesised - real| "
                "(both z-scored over the mask) through the mask's centre.</p>" + "".join(figures) + "</section>",
                _versions_section(None)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>"
            f"<header><h1>{_e(title)}</h1><p>written {stamp}</p></header>\n<main>\n" + "\n".join(sections)
            + "\n</main></body></html>\n")


def save_translation_slices(path: str | os.PathLike[str], result: TranslationEvaluation, case_id: str,
                            masks: dict[str, Path]) -> None:
    """A PNG: rows axial, coronal, sagittal; columns source, synthesised, real, |difference|."""
    # Lazy: matplotlib takes a second to import and only figures need it.
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    case = result.truth_cases[case_id]
    real, geometry = read_volume(case.target)
    pred, _ = read_volume(result.predictions[case_id])
    region, _ = _case_mask(case_id, case, masks, real, geometry)
    pred_n, real_n = normalise_pair(pred, real, region)
    panels = [("synthesised", pred_n), ("real", real_n), ("|difference|", np.abs(pred_n - real_n))]
    if case.source is not None:
        source, source_geometry = read_volume(case.source)
        if source_geometry.same_grid(geometry):
            panels.insert(0, ("source", np.where(region, source, 0.0)))
    centre = [int(round(c)) for c in np.argwhere(region).mean(axis=0)]
    lo, hi = np.percentile(real_n[region], [1, 99])
    spacing = geometry.spacing
    views = (("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2)))
    fig = Figure(figsize=(3 * len(panels), 9), dpi=80)
    for row, (view, axis, (h, v)) in enumerate(views):
        for col, (name, volume) in enumerate(panels):
            ax = fig.add_subplot(3, len(panels), row * len(panels) + col + 1)
            # Outside the mask (not scored) drawn black.
            plane = np.where(np.take(region, centre[axis], axis=axis), np.take(volume, centre[axis], axis=axis), np.nan).T
            if name == "source":
                inside = volume[region]
                vmin, vmax = np.percentile(inside, [1, 99]) if inside.size else (0, 1)
            elif name == "|difference|":
                vmin, vmax = 0.0, max(float(hi - lo) / 2, 1e-6)
            else:
                vmin, vmax = lo, hi
            cmap = colormaps["magma" if name == "|difference|" else "gray"].with_extremes(bad="black")
            ax.imshow(plane, cmap=cmap, origin="lower", vmin=vmin, vmax=vmax,
                      aspect=spacing[v] / spacing[h], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=11)
            if col == 0:
                ax.set_ylabel(view, fontsize=11)
    fig.suptitle(case_id, fontsize=12)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
