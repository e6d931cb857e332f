"""Figures people look at: tri-planar slice overlays and training curves (PNG).

matplotlib is imported lazily and drawn through its object API on an Agg canvas (no pyplot
global state, no display needed), so importing this module is free and it works on servers.

Array convention: volumes are ``(X, Y, Z)`` in the canonical RAS+ orientation that
:func:`vox2vox.data.io.read_volume` returns (any 3D array works; the view names then refer to its
axes 2, 1, 0). Axial = a slice at fixed Z, coronal = fixed Y, sagittal = fixed X. Slices are drawn
with the first remaining axis horizontal and the second vertical (origin at the bottom), with
pixel aspect ratio from ``spacing`` so anisotropic volumes are not squashed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from vox2vox.atomic import atomic_path
from vox2vox.data.colours import colours_for  # one colour table for overlays, renderings and files

_OVERLAY_ALPHA = 0.45
# Views: (name, axis held fixed, (horizontal axis, vertical axis)).
_VIEWS = (("axial", 2, (0, 1)), ("coronal", 1, (0, 2)), ("sagittal", 0, (1, 2)))


def overlay_centre(
    shape: Sequence[int], *, truth: np.ndarray | None = None, pred: np.ndarray | None = None
) -> tuple[int, int, int]:
    """Voxel index the three slices pass through: the centroid of the truth's non-zero voxels,
    else of the prediction's, else the volume centre."""
    for labels in (truth, pred):
        if labels is not None and np.any(labels):
            centroid = np.argwhere(np.asarray(labels) != 0).mean(axis=0)
            return tuple(int(round(c)) for c in centroid)  # type: ignore[return-value]
    return tuple(int(n) // 2 for n in shape)  # type: ignore[return-value]


def save_overlay(
    path: str | os.PathLike[str],
    image: np.ndarray,
    *,
    truth: np.ndarray | None,
    pred: np.ndarray | None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    title: str = "",
    label_names: Mapping[int, str] | None = None,
) -> None:
    """Write a PNG of axial, coronal and sagittal slices through the tumour centre.

    Args:
        path: output PNG (written atomically).
        image: intensity volume ``(X, Y, Z)``, e.g. FLAIR.
        truth, pred: integer label maps of the same shape (None to leave that row out); each
            non-zero label value gets its own colour and a legend entry.
        spacing: voxel size in mm along the three axes (sets each panel's aspect ratio).
        title: figure title.
        label_names: optional legend text per label value (default ``label <value>``).

    One row per given label map (``ground truth``, ``prediction``), or a single image row when
    both are None; columns are the three views, all through :func:`overlay_centre`.
    """
    # Lazy: matplotlib takes about a second to import and only figure writing needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3:
        raise ValueError(f"image must be 3D (X, Y, Z), got shape {image.shape}")
    maps = [(name, np.asarray(lab)) for name, lab in (("ground truth", truth), ("prediction", pred)) if lab is not None]
    for name, lab in maps:
        if lab.shape != image.shape:
            raise ValueError(f"{name} shape {lab.shape} differs from image shape {image.shape}")
    spacing_t = tuple(float(s) for s in spacing)
    if len(spacing_t) != 3 or min(spacing_t) <= 0:
        raise ValueError(f"spacing must be three positive sizes in mm, got {tuple(spacing)}")

    centre = overlay_centre(image.shape, truth=truth, pred=pred)
    values = sorted({int(v) for _, lab in maps for v in np.unique(lab)} - {0})
    colours = colours_for(values)
    lo, hi = _display_window(image)

    rows = maps or [("image", None)]
    fig = Figure(figsize=(3 * 3.2, 3.2 * len(rows) + 0.9), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, (row_name, labels) in enumerate(rows):
        for c, (view, fixed, (h_axis, v_axis)) in enumerate(_VIEWS):
            ax = axes[r][c]
            index = [slice(None)] * 3
            index[fixed] = centre[fixed]
            # Transpose so the horizontal axis runs along columns and the vertical along rows.
            ax.imshow(
                image[tuple(index)].T, cmap="gray", vmin=lo, vmax=hi, origin="lower",
                interpolation="nearest", aspect=spacing_t[v_axis] / spacing_t[h_axis],
            )
            if labels is not None:
                ax.imshow(
                    _rgba(labels[tuple(index)].T, colours), origin="lower",
                    interpolation="nearest", aspect=spacing_t[v_axis] / spacing_t[h_axis],
                )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{view} ({'xyz'[fixed]} = {centre[fixed]})", fontsize=10)
            if c == 0:
                ax.set_ylabel(row_name, fontsize=10)
    if colours:
        names = label_names or {}
        handles = [Patch(color=colours[v], label=names.get(v, f"label {v}")) for v in values]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0.0, 0.08 if colours else 0.0, 1.0, 0.95 if title else 1.0))
    _save_png(fig, path)


def save_training_curves(path: str | os.PathLike[str], metrics_log: Sequence[Mapping[str, object]]) -> None:
    """Write a PNG of training curves from the run's metrics log (``metrics.jsonl`` rows).

    Rows are dicts such as ``{"epoch": 3, "step": 30, "loss_g": .., "loss_d": .., "loss_adv": ..,
    "loss_dice": .., "d_acc": .., "val_dice": .., "val_dice_WT": ..}``; any key may be missing
    from any row (validation runs only some epochs) and non-numeric values are skipped. Panels:
    losses (G, D, adversarial, Dice), discriminator accuracy, validation Dice (mean and per
    region); panels without data are left out. The x axis is the epoch when each row has its
    own epoch, else the step, else the row number.
    """
    # Lazy: matplotlib takes about a second to import and only figure writing needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(metrics_log)
    x_key = _x_key(rows)
    val_keys = sorted({k for row in rows for k in row if k.startswith("val_dice_")})
    panels = [
        ("losses", [("loss_g", "G total"), ("loss_d", "D"), ("loss_adv", "G adversarial"),
                    ("loss_dice", "G Dice loss")]),
        ("discriminator accuracy", [("d_acc", "D patch accuracy")]),
        ("validation Dice", [("val_dice", "mean"), *[(k, k.removeprefix("val_dice_")) for k in val_keys]]),
    ]
    series: list[tuple[str, list[tuple[str, list[float], list[float]]]]] = []
    for title, keys in panels:
        lines = []
        for key, label in keys:
            xs, ys = _series(rows, x_key, key)
            if xs:
                lines.append((label, xs, ys))
        if lines:
            series.append((title, lines))

    fig = Figure(figsize=(4.2 * max(len(series), 1), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    if not series:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no metrics logged yet", ha="center", va="center")
        ax.set_axis_off()
    else:
        axes = fig.subplots(1, len(series), squeeze=False)[0]
        for ax, (title, lines) in zip(axes, series, strict=True):
            for label, xs, ys in lines:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(x_key or "row")
            if title != "losses":
                ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    _save_png(fig, path)


def _rgba(labels: np.ndarray, colours: Mapping[int, tuple[float, float, float]]) -> np.ndarray:
    """RGBA overlay of a 2D label slice: transparent background, coloured labels."""
    out = np.zeros((*labels.shape, 4), dtype=np.float32)
    for value, rgb in colours.items():
        mask = labels == value
        out[mask, :3] = rgb
        out[mask, 3] = _OVERLAY_ALPHA
    return out


def _display_window(image: np.ndarray) -> tuple[float, float]:
    """Grey-level window from the 1st-99th percentile of the non-zero (head) voxels."""
    inside = image[np.isfinite(image) & (image != 0)]
    if inside.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(inside, [1.0, 99.0]))
    if float(image.min()) >= 0:
        lo = 0.0  # non-negative images (raw MRI): keep the background black
    return lo, hi if hi > lo else lo + 1.0


def _x_key(rows: Sequence[Mapping[str, object]]) -> str | None:
    for key in ("epoch", "step"):
        values = [row[key] for row in rows if key in row]
        if values and len(values) == len(rows) and len(set(map(str, values))) == len(values):
            return key
    return None


def _series(rows: Sequence[Mapping[str, object]], x_key: str | None, key: str) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for i, row in enumerate(rows):
        y = _number(row.get(key))
        x = _number(row.get(x_key)) if x_key is not None else float(i)
        if y is not None and x is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _save_png(fig: object, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")  # type: ignore[attr-defined]
