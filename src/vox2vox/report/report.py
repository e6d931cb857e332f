"""One self-contained HTML report of a run, a demo or an evaluation: open it anywhere, offline.

Every image is a PNG embedded as a base64 ``data:`` URI and the CSS is inline; the page loads
nothing from the network and runs no script. Sections appear when their inputs exist:

- run configuration (``config.json``), split sizes (``split.json``), training curves
  (``metrics.jsonl`` through :func:`vox2vox.report.plots.save_training_curves`);
- evaluation: summary per region (``<stem>_summary.json``), box plots of Dice and HD95 per
  region, the per-case table (the evaluation CSV);
- the best and worst cases by mean Dice as tri-planar overlays, ground truth and prediction
  (:func:`vox2vox.report.plots.save_overlay`), when both the predictions and the truth are found;
- uncertainty per case (``uncertainty.csv`` of ``predict --save-uncertainty`` in the predictions
  folder), with mean Dice against foreground entropy when the cases were scored;
- software versions (``versions.json``).

Folders understood by :func:`find_inputs`: a demo output (``run/``, ``predictions/``,
``evaluation.csv``, ``data/test``), a run directory (``config.json`` + ``metrics.jsonl``), or a
folder holding an evaluation CSV (and optionally predictions). ``write_report`` also takes the
truth and prediction folders explicitly, as ``vox2vox evaluate`` knows them.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vox2vox.atomic import atomic_write_text
from vox2vox.data.cases import CaseFiles
from vox2vox.data.io import Geometry, read_channels, read_volume
from vox2vox.data.layouts import discover
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.uncertainty import UNCERTAINTY_CSV, read_uncertainty_csv
from vox2vox.report.evaluation import index_predictions
from vox2vox.report.plots import save_overlay, save_training_curves
from vox2vox.rundir import RunDir, read_metrics
from vox2vox.version import __version__

_EVAL_COLUMNS = ("case", "region", "dice", "hd95")
# Shown in the per-case table and summary (volumes stay in the CSV).
_TABLE_METRICS = (("dice", "Dice", 3), ("hd95", "HD95 mm", 2), ("nsd", "NSD", 3), ("sensitivity", "Sens", 3),
                  ("specificity", "Spec", 3), ("lesion_dice", "lesion-wise Dice", 3),
                  ("lesion_hd95", "lesion-wise HD95 mm", 2), ("lesion_tp", "TP lesions", 0),
                  ("lesion_fp", "FP lesions", 0), ("lesion_fn", "missed lesions", 0))

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f6f7f9;color:#1d2228}
header{background:#1f3a5f;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.8;font-size:13px}
main{max-width:1100px;margin:0 auto;padding:8px 32px 40px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:14px 20px;margin:18px 0}
h2{font-size:17px;margin:4px 0 12px;color:#1f3a5f}
h3{font-size:14px;margin:14px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
th,td{border-bottom:1px solid #e6e8eb;padding:3px 10px;text-align:right}
th{background:#f0f2f5}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;display:block;margin:6px 0}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px;font-size:13px}
.grid{display:flex;flex-wrap:wrap;gap:18px}
.grid>div{flex:1 1 300px}
code,pre{font-size:12px}
details summary{cursor:pointer;font-size:13px}
"""


@dataclass(frozen=True)
class ReportInputs:
    """The files one report is drawn from; any of them may be missing (None)."""

    folder: Path
    run_dir: Path | None
    evaluation_csv: Path | None
    summary_json: Path | None
    predictions: Path | None
    truth: Path | None


def find_inputs(
    folder: str | os.PathLike[str],
    *,
    truth: str | os.PathLike[str] | None = None,
    predictions: str | os.PathLike[str] | None = None,
) -> ReportInputs:
    """Locate a run, an evaluation CSV, predictions and truth in or under ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise Vox2VoxError(f"{folder}: not a folder; give a run directory, demo output or evaluation folder")
    run_dir = next((d for d in (folder, folder / "run") if _is_run(d)), None)
    csv_path = _find_evaluation_csv(folder)
    summary = None
    if csv_path is not None:
        candidate = csv_path.with_name(f"{csv_path.stem}_summary.json")
        summary = candidate if candidate.is_file() else None
    if predictions is None:
        if (folder / "predictions").is_dir():
            predictions = folder / "predictions"
        elif any(folder.glob("*.nii.gz")):
            predictions = folder
    if truth is None and (folder / "data" / "test").is_dir():
        truth = folder / "data" / "test"  # the demo's held-out cases
    if run_dir is None and csv_path is None:
        raise Vox2VoxError(
            f"{folder}: holds neither a run (config.json, metrics.jsonl) nor an evaluation CSV; "
            "give a run directory, a demo output folder or the folder of vox2vox evaluate --out"
        )
    return ReportInputs(
        folder=folder,
        run_dir=run_dir,
        evaluation_csv=csv_path,
        summary_json=summary,
        predictions=Path(predictions) if predictions is not None else None,
        truth=Path(truth) if truth is not None else None,
    )


def write_report(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    truth: str | os.PathLike[str] | None = None,
    predictions: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the HTML report of ``folder`` to ``out`` (default ``<folder>/report.html``), atomically.

    ``truth`` / ``predictions`` override the folders :func:`find_inputs` would guess (needed for
    the best/worst overlays outside a demo folder). Returns the path written.
    """
    inputs = find_inputs(folder, truth=truth, predictions=predictions)
    out_path = Path(out) if out is not None else inputs.folder / "report.html"
    if out_path.suffix.lower() not in (".html", ".htm"):
        raise Vox2VoxError(f"{out_path}: the report is HTML; name it .html")
    atomic_write_text(out_path, render_html(inputs))
    return out_path


def render_html(inputs: ReportInputs) -> str:
    """The report page as one string (see the module docstring for its sections)."""
    sections: list[str] = []
    title = f"vox2vox report: {inputs.folder.resolve().name}"
    rows: list[dict[str, str]] = _read_csv(inputs.evaluation_csv) if inputs.evaluation_csv else []
    sections.append(_overview(inputs, rows))
    if inputs.run_dir is not None:
        sections.append(_training_section(inputs.run_dir))
    if rows:
        sections.append(_evaluation_section(inputs, rows))
        sections.append(_cases_section(inputs, rows))
    sections.append(_uncertainty_section(inputs, rows))
    sections.append(_versions_section(inputs.run_dir))
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>"
        f"<header><h1>{_e(title)}</h1><p>written {stamp} from {_e(str(inputs.folder))}</p></header>\n"
        "<main>\n" + "\n".join(s for s in sections if s) + "\n</main></body></html>\n"
    )


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


def _overview(inputs: ReportInputs, rows: Sequence[Mapping[str, str]]) -> str:
    items = []
    if inputs.run_dir is not None:
        items.append(("run", str(inputs.run_dir)))
        split = _read_json(RunDir(inputs.run_dir).split)
        if isinstance(split, dict):
            items.append(("split", ", ".join(f"{k}: {len(v)} cases" for k, v in split.items() if isinstance(v, list))))
    if inputs.evaluation_csv is not None:
        items.append(("evaluation", str(inputs.evaluation_csv)))
        items.append(("cases scored", str(len({r["case"] for r in rows}))))
    if inputs.predictions is not None:
        items.append(("predictions", str(inputs.predictions)))
    if inputs.truth is not None:
        items.append(("ground truth", str(inputs.truth)))
    demo = _read_json(inputs.folder / "summary.json")
    if isinstance(demo, dict) and "seconds" in demo:
        items.append(("demo wall time", f"{demo['seconds']} s"))
    body = _kv_table(items)
    return f"<section><h2>Overview</h2>{body}</section>"


def _training_section(run_dir: Path) -> str:
    parts = ["<section><h2>Training</h2>"]
    history = read_metrics(RunDir(run_dir).metrics)
    if history:
        last = history[-1]
        val = [(r.get("val_dice"), r.get("epoch")) for r in history if _num(r.get("val_dice")) is not None]
        facts = [("epochs logged", str(len(history))), ("last epoch", str(last.get("epoch", "?")))]
        if val:
            best, epoch = max(val, key=lambda v: float(v[0]))
            facts.append(("best validation Dice", f"{float(best):.4f} (epoch {epoch})"))
        parts.append(_kv_table(facts))
        parts.append(_figure(lambda p: save_training_curves(p, history),
                             "training curves: G and D losses, D accuracy, validation Dice per region"))
    else:
        parts.append('<p class="note">No metrics.jsonl rows yet: training has not finished an epoch.</p>')
    config = _read_json(RunDir(run_dir).config)
    if isinstance(config, dict):
        # Collapsed: the resolved config is long, and the curves and scores matter first.
        parts.append("<details><summary>Configuration (config.json)</summary><div class=\"grid\">")
        for section, values in config.items():
            if isinstance(values, dict):
                parts.append(f"<div><b>{_e(section)}</b>{_kv_table([(k, _short(v)) for k, v in values.items()])}</div>")
            else:
                parts.append(f"<div>{_kv_table([(section, _short(values))])}</div>")
        parts.append("</div></details>")
    parts.append("</section>")
    return "".join(parts)


def _evaluation_section(inputs: ReportInputs, rows: Sequence[Mapping[str, str]]) -> str:
    regions = list(dict.fromkeys(r["region"] for r in rows))
    parts = ["<section><h2>Evaluation</h2>"]
    summary = _read_json(inputs.summary_json) if inputs.summary_json else None
    stats = summary.get("summary") if isinstance(summary, dict) else None
    # Scores the evaluation computed (lesion-wise ones only with a lesion rule; older CSVs lack NSD).
    shown = [m for m in _TABLE_METRICS if any(_num(r.get(m[0])) is not None for r in rows)]
    if isinstance(summary, dict) and summary.get("regions_why"):
        parts.append(f'<p class="note">Regions {_e(", ".join(summary.get("regions", [])))}: {_e(summary["regions_why"])}. '
                     f'NSD at {_e(str(summary.get("nsd_tolerance_mm", "")))} mm; {_e(str(summary.get("lesion_rule", "")))}.</p>')
    if isinstance(stats, dict):
        header = ["region", *(f"{t} mean &plusmn; std" for _, t, _ in shown), "Dice median [p25, p75]"]
        lines = []
        for region in regions:
            if region not in stats:
                continue
            cells = [_e(region)]
            for key, _, digits in shown:
                s = stats[region].get(key, {})
                cells.append(f"{_fmt(s.get('mean'), digits)} &plusmn; {_fmt(s.get('std'), digits)}")
            d = stats[region].get("dice", {})
            cells.append(f"{_fmt(d.get('median'), 3)} [{_fmt(d.get('p25'), 3)}, {_fmt(d.get('p75'), 3)}]")
            lines.append(cells)
        parts.append(_table(header, lines, escape=False))
        missing = summary.get("missing_predictions") or []
        if missing:
            parts.append(f'<p class="note">Missing predictions, scored as empty: {_e(", ".join(missing))}</p>')
    parts.append(_figure(lambda p: _save_box_plots(p, rows, regions), "per-case Dice and HD95 per region"))
    table_rows = []
    for row in rows:
        table_rows.append([_e(row["case"]), _e(row["region"]), *(_fmt(row.get(k), d) for k, _, d in shown),
                           "yes" if row.get("missing_prediction") in ("1", "True", "true") else ""])
    parts.append("<h3>Per case</h3>")
    parts.append(_table(["case", "region", *(t for _, t, _ in shown), "missing"], table_rows, escape=False))
    parts.append("</section>")
    return "".join(parts)


def _cases_section(inputs: ReportInputs, rows: Sequence[Mapping[str, str]]) -> str:
    ranking = _rank_cases(rows)
    parts = ["<section><h2>Best and worst cases</h2>"]
    if inputs.predictions is None or not inputs.predictions.is_dir():
        parts.append('<p class="note">No predictions folder found next to this run, so no overlays: run '
                     "<code>vox2vox predict</code>, then <code>vox2vox evaluate</code> with <code>--out</code> "
                     "in the same folder, or pass the prediction folder to <code>write_report</code>.</p></section>")
        return "".join(parts)
    if inputs.truth is None:
        parts.append('<p class="note">The ground-truth dataset is unknown here, so no overlays: pass '
                     "<code>truth=</code> to <code>write_report</code> (vox2vox evaluate does).</p></section>")
        return "".join(parts)
    picks = [("best", ranking[0])] if len(ranking) == 1 else [("best", ranking[0]), ("worst", ranking[-1])]
    for kind, (case_id, score) in picks:
        label = "only case" if len(ranking) == 1 else f"{kind} case"
        try:
            figure = _case_overlay(inputs, case_id, f"{case_id}: {label}, mean Dice {score:.3f}")
        except Vox2VoxError as err:
            figure = f'<p class="note">{_e(case_id)}: no overlay ({_e(str(err))})</p>'
        parts.append(f"<h3>{_e(label)}: {_e(case_id)} (mean Dice over regions {score:.3f})</h3>{figure}")
    parts.append("</section>")
    return "".join(parts)


def _uncertainty_section(inputs: ReportInputs, rows: Sequence[Mapping[str, str]]) -> str:
    path = inputs.predictions / UNCERTAINTY_CSV if inputs.predictions is not None else None
    if path is None or not path.is_file():
        return ""
    scores = read_uncertainty_csv(path)
    dice = dict(_rank_cases(rows))
    parts = ["<section><h2>Uncertainty</h2>",
             "<p>Per voxel, the entropy of the averaged softmax and, with test-time flips or an ensemble, "
             "the spread (mutual information between members), both divided by log(classes) so they lie in "
             f"[0, 1]; per case their means over the volume and inside the predicted foreground ({_e(str(path))}).</p>"]
    scored = [(s.entropy_mean, s.entropy_foreground, dice[case]) for case, s in scores.items() if case in dice]
    if len(scored) >= 2:
        parts.append(_figure(lambda p: _save_uncertainty_scatter(p, scored),
                             "mean Dice per case against its mean entropy over the volume and in the foreground"))
    table = [[_e(case), str(s.members), str(s.foreground_voxels),
              *(_fmt(v, 4) for v in (s.entropy_mean, s.entropy_foreground, s.spread_mean, s.spread_foreground)),
              _fmt(dice.get(case), 3)]
             for case, s in sorted(scores.items(), key=lambda item: -item[1].entropy_mean)]
    parts.append(_table(["case", "members", "foreground voxels", "entropy (volume)", "entropy (foreground)",
                         "spread (volume)", "spread (foreground)", "mean Dice"], table, escape=False))
    parts.append("</section>")
    return "".join(parts)


def _versions_section(run_dir: Path | None) -> str:
    versions = _read_json(RunDir(run_dir).versions) if run_dir is not None else None
    if not isinstance(versions, dict):
        versions = {"vox2vox": __version__}
        note = "<p>versions.json not found; the version of vox2vox writing this report:</p>"
    else:
        note = "<p>Recorded with the run (versions.json):</p>"
    return f"<section><h2>Software versions</h2>{note}{_kv_table([(k, str(v)) for k, v in versions.items()])}</section>"


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------


def _figure(draw, alt: str) -> str:
    """Run ``draw(path)`` into a temporary PNG and return it as an embedded ``<img>``."""
    with tempfile.TemporaryDirectory(prefix="vox2vox-report-") as tmp:
        path = Path(tmp) / "figure.png"
        draw(path)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _save_box_plots(path: Path, rows: Sequence[Mapping[str, str]], regions: Sequence[str]) -> None:
    # Lazy: matplotlib takes about a second to import and only figure writing needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.6, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    rng = np.random.default_rng(0)  # fixed jitter: the same report twice looks the same
    for ax, (metric, title) in zip(axes, (("dice", "Dice"), ("hd95", "HD95 (mm)")), strict=True):
        data = [[v for r in rows if r["region"] == region and (v := _num(r.get(metric))) is not None]
                for region in regions]
        ax.boxplot(data, tick_labels=list(regions), showmeans=True, widths=0.5)
        for i, values in enumerate(data, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(values)), values, s=12, alpha=0.6, color="#1f77b4", zorder=3)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if metric == "dice":
            ax.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    with open(path, "wb") as handle:
        fig.savefig(handle, format="png")


def _save_uncertainty_scatter(path: Path, scored: Sequence[tuple[float, float, float]]) -> None:
    """Mean Dice per case against (volume entropy, foreground entropy, Dice) triples."""
    # Lazy: matplotlib takes about a second to import and only figure writing needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.6, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    for ax, column, label in zip(fig.subplots(1, 2), (0, 1), ("over the volume", "inside the predicted foreground"),
                                 strict=True):
        points = [(row[column], row[2]) for row in scored if math.isfinite(row[column])]
        ax.scatter([x for x, _ in points], [y for _, y in points], s=16, alpha=0.7, color="#1f77b4")
        ax.set_xlabel(f"mean entropy {label}")
        ax.set_ylabel("mean Dice over regions")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with open(path, "wb") as handle:
        fig.savefig(handle, format="png")


def _case_overlay(inputs: ReportInputs, case_id: str, title: str) -> str:
    assert inputs.truth is not None and inputs.predictions is not None
    spec = discover(inputs.truth)
    case = next((c for c in spec.cases if c.case_id == case_id), None)
    if case is None or case.label is None:
        raise Vox2VoxError(f"case not found with a label in {inputs.truth}")
    pred_path = index_predictions(inputs.predictions).get(case_id)
    if pred_path is None:
        raise Vox2VoxError(f"no prediction file in {inputs.predictions}")
    channel = next((n for n in ("flair", "t2f") if n in case.channels), next(iter(case.channels)))
    image, geometry = _channel_volume(case, channel)
    truth, _ = read_volume(case.label)
    pred, _ = read_volume(pred_path)
    convention = spec.label_convention()
    names = convention.value_names() if convention is not None else None
    return _figure(
        lambda p: save_overlay(p, image, truth=truth, pred=pred, spacing=geometry.spacing,
                               title=f"{title} ({channel})", label_names=names),
        f"{case_id}: ground truth and prediction",
    )


def _channel_volume(case: CaseFiles, channel: str) -> tuple[np.ndarray, Geometry]:
    """One channel of a case as ``(X, Y, Z)``, also when several channels share a 4D file (MSD)."""
    data, geometry = read_channels(case.channels[channel], nonfinite="zero")
    index = [n for n, p in case.channels.items() if p == case.channels[channel]].index(channel)
    return data[index], geometry


def _rank_cases(rows: Sequence[Mapping[str, str]]) -> list[tuple[str, float]]:
    """Cases by mean Dice over regions, best first (ties keep CSV order)."""
    scores: dict[str, list[float]] = {}
    for row in rows:
        value = _num(row.get("dice"))
        if value is not None:
            scores.setdefault(row["case"], []).append(value)
    ranked = [(case, float(np.mean(v))) for case, v in scores.items()]
    return sorted(ranked, key=lambda item: -item[1])


# --------------------------------------------------------------------------------------------
# reading and formatting
# --------------------------------------------------------------------------------------------


def _is_run(folder: Path) -> bool:
    return RunDir(folder).is_run()


def _find_evaluation_csv(folder: Path) -> Path | None:
    """``evaluation.csv`` or the one CSV in ``folder`` whose header is vox2vox evaluate's."""
    candidates = [folder / "evaluation.csv", *sorted(folder.glob("*.csv"))]
    for path in candidates:
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as handle:
                header = next(csv.reader(handle), [])
            if all(column in header for column in _EVAL_COLUMNS):
                return path
    return None


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise Vox2VoxError(f"{path}: cannot read the evaluation CSV ({err})") from err


def _read_json(path: Path | None) -> object:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise Vox2VoxError(f"{path}: not valid JSON ({err}); fix or delete it") from err




def _num(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fmt(value: object, digits: int) -> str:
    number = _num(value)
    return "&ndash;" if number is None else f"{number:.{digits}f}"


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _kv_table(items: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in items)
    return f"<table>{body}</table>"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, escape: bool = True) -> str:
    """A table; cells are escaped unless ``escape`` is False (pre-formatted entities)."""
    def cell(text: str) -> str:
        return _e(text) if escape else text

    head = "".join(f"<th>{h if not escape else _e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
