"""3D renderings of label maps: each class a coloured surface inside a translucent anatomy outline.

Off-screen with pyvista/VTK (the optional ``render`` extra), so it works on servers without a
display: VTK picks an off-screen OpenGL context (EGL or OSMesa) when no X display is set.
Prediction and ground truth are drawn side by side from one shared camera, so differences in
shape are differences in the segmentations, not in the view.

Array convention as in :mod:`vox2vox.report.plots`: volumes ``(X, Y, Z)`` in canonical RAS+ order with
``spacing`` in mm along those axes; surfaces are placed in mm, so anisotropic volumes keep their
proportions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vox2vox.atomic import atomic_path
from vox2vox.data.colours import colours_for  # one colour table: overlays, surfaces, files
from vox2vox.data.io import read_channels
from vox2vox.data.layouts import discover
from vox2vox.errors import Vox2VoxError
from vox2vox.report.evaluation import read_label_map

_INSTALL_HINT = "pip install 'vox2vox[render]'"
_OUTLINE_OPACITY = 0.12
_SHELL_OPACITY = 0.35
_OUTLINE_COLOUR = (0.75, 0.75, 0.78)
_BACKGROUND = "white"
# An oblique view (from front-left-above in RAS) shows all three axes' extents at once.
_VIEW_DIRECTION = (-1.0, -1.6, 0.9)


def require_pyvista() -> Any:
    """Import pyvista for off-screen use, or say how to install it."""
    try:
        import pyvista  # lazy: the optional [render] extra (VTK), and slow to import
    except ImportError as err:
        raise Vox2VoxError(f"3D rendering needs pyvista (VTK); {_INSTALL_HINT}") from err
    if not os.environ.get("DISPLAY") and not os.environ.get("VTK_DEFAULT_OPENGL_WINDOW"):
        # Without a display VTK first tries X and prints a warning before falling back; go straight
        # to EGL (VTK falls back to OSMesa itself where EGL is missing).
        os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkEGLRenderWindow"
    pyvista.OFF_SCREEN = True
    return pyvista


def render_labels(
    out: str | os.PathLike[str],
    pred: np.ndarray | None,
    *,
    truth: np.ndarray | None = None,
    image: np.ndarray | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    label_names: Mapping[int, str] | None = None,
    titles: tuple[str, str] = ("prediction", "ground truth"),
    panel_size: tuple[int, int] = (600, 600),
) -> Path:
    """Write a PNG of ``pred`` (and ``truth`` beside it) as coloured class surfaces.

    Args:
        out: PNG path (written atomically).
        pred, truth: integer label maps ``(X, Y, Z)`` of one shape; at least one must be given.
            Each non-zero value becomes one surface (marching cubes at the class boundary), in
            the colours of :mod:`vox2vox.report.plots` overlays.
        image: intensity volume of the same shape: its thresholded foreground (Otsu) is drawn as
            a translucent outline of the anatomy. Without it the outline is the box around all
            labelled voxels, padded by 10 %.
        spacing: voxel size in mm along the three axes.
        label_names: legend text per label value (default ``label <value>``).
        titles: panel titles for prediction and ground truth.
        panel_size: pixels (width, height) of each panel.

    Returns the PNG path. Raises Vox2VoxError for missing pyvista or mismatched shapes.
    """
    pv = require_pyvista()

    panels = [(name, np.asarray(lab)) for name, lab in zip(titles, (pred, truth), strict=True) if lab is not None]
    if not panels:
        raise ValueError("render_labels needs a prediction or a ground truth")
    shape = panels[0][1].shape
    if len(shape) != 3:
        raise Vox2VoxError(f"{out}: label maps must be 3D (X, Y, Z), got shape {shape}")
    for name, labels in panels:
        if labels.shape != shape:
            raise Vox2VoxError(f"{out}: {name} shape {labels.shape} differs from {shape}")
    if image is not None and np.shape(image) != shape:
        raise Vox2VoxError(f"{out}: image shape {np.shape(image)} differs from the labels {shape}")
    spacing_t = tuple(float(s) for s in spacing)
    values = sorted({int(v) for _, lab in panels for v in np.unique(lab)} - {0})
    colours = colours_for(values)
    names = dict(label_names or {})
    # Tumour classes nest (oedema around core around necrosis): the most voluminous class is drawn
    # translucent so the classes inside it stay visible.
    volumes = {v: sum(int(np.count_nonzero(lab == v)) for _, lab in panels) for v in values}
    shell = max(volumes, key=volumes.__getitem__) if len(values) > 1 else None
    outline = _anatomy_outline(pv, image, [lab for _, lab in panels], spacing_t)

    plotter = pv.Plotter(
        off_screen=True, shape=(1, len(panels)), border=False,
        window_size=(panel_size[0] * len(panels), panel_size[1]),
    )
    try:
        for column, (title, labels) in enumerate(panels):
            plotter.subplot(0, column)
            plotter.set_background(_BACKGROUND)
            plotter.add_mesh(outline, color=_OUTLINE_COLOUR, opacity=_OUTLINE_OPACITY, smooth_shading=True)
            for value in values:
                surface = _surface(pv, labels == value, spacing_t)
                if surface is not None:
                    plotter.add_mesh(surface, color=colours[value], smooth_shading=True, specular=0.3,
                                     opacity=_SHELL_OPACITY if value == shell else 1.0)
            plotter.add_text(title, position="upper_edge", font_size=12, color="black")
            if values:
                plotter.add_legend(
                    [[names.get(v, f"label {v}"), colours[v]] for v in values],
                    bcolor=None, border=False, size=(0.32, 0.05 * len(values) + 0.02), loc="lower left",
                    face="rectangle",
                )
        # One camera for every panel, fitted to the anatomy of the first.
        plotter.subplot(0, 0)
        plotter.view_vector(_VIEW_DIRECTION, viewup=(0.0, 0.0, 1.0))
        plotter.reset_camera()
        plotter.camera.zoom(1.25)
        plotter.link_views()
        with atomic_path(out) as tmp:
            plotter.screenshot(str(tmp))
    except Vox2VoxError:
        raise
    except RuntimeError as err:
        raise Vox2VoxError(
            f"{out}: VTK cannot render off-screen here ({err}); install an OpenGL library "
            "(Debian: libegl1 or libosmesa6)"
        ) from err
    finally:
        plotter.close()
    return Path(out)


def _grid(pv: Any, values: np.ndarray, spacing: tuple[float, ...]) -> Any:
    """A VTK image grid with one point per voxel centre, padded by one voxel so surfaces close."""
    padded = np.pad(values.astype(np.float32), 1)
    grid = pv.ImageData(dimensions=padded.shape, spacing=spacing, origin=tuple(-s for s in spacing))
    # VTK's point order is x fastest: Fortran order of the (X, Y, Z) array.
    grid.point_data["values"] = padded.ravel(order="F")
    return grid


def _surface(pv: Any, mask: np.ndarray, spacing: tuple[float, ...]) -> Any | None:
    """Marching-cubes surface of a binary mask (VTK's contour filter at 0.5), lightly smoothed."""
    if not mask.any():
        return None
    surface = _grid(pv, mask, spacing).contour([0.5], scalars="values")
    if surface.n_points == 0:
        return None
    # Windowed-sinc smoothing removes the voxel staircase without shrinking small classes.
    return surface.smooth_taubin(n_iter=20, pass_band=0.1)


def _anatomy_outline(
    pv: Any, image: np.ndarray | None, label_maps: Sequence[np.ndarray], spacing: tuple[float, ...]
) -> Any:
    """The anatomy's surface (Otsu foreground of ``image``), else a padded box around the labels."""
    if image is not None:
        volume = np.asarray(image, dtype=np.float32)
        finite = volume[np.isfinite(volume)]
        if finite.size and finite.min() < finite.max():
            foreground = np.nan_to_num(volume, nan=float(finite.min())) > _otsu_threshold(finite)
            surface = _grid(pv, foreground, spacing).contour([0.5], scalars="values")
            if surface.n_points:
                return surface.smooth_taubin(n_iter=20, pass_band=0.1)
    labelled = np.argwhere(np.any(np.stack(label_maps) != 0, axis=0))
    shape = np.asarray(label_maps[0].shape)
    if labelled.size:
        lo, hi = labelled.min(axis=0), labelled.max(axis=0)
    else:
        lo, hi = np.zeros(3, dtype=int), shape - 1
    pad = 0.1 * (hi - lo + 1)
    s = np.asarray(spacing)
    lo_mm, hi_mm = (lo - pad) * s, (hi + pad) * s
    return pv.Box(bounds=(lo_mm[0], hi_mm[0], lo_mm[1], hi_mm[1], lo_mm[2], hi_mm[2]))


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the grey level that maximises the between-class variance."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_lo = np.cumsum(counts)
    weight_hi = weight_lo[-1] - weight_lo
    sum_lo = np.cumsum(counts * centres)
    mean_lo = sum_lo / np.maximum(weight_lo, 1)
    mean_hi = (sum_lo[-1] - sum_lo) / np.maximum(weight_hi, 1)
    between = weight_lo * weight_hi * (mean_lo - mean_hi) ** 2
    return float(centres[int(np.argmax(between))])


def render_files(
    out: str | os.PathLike[str],
    labels: str | os.PathLike[str],
    *,
    image: str | os.PathLike[str] | None = None,
    truth: str | os.PathLike[str] | None = None,
) -> Path:
    """``vox2vox render``: read the files and call :func:`render_labels`.

    ``labels`` is a label file (drawn as the prediction; ``truth`` adds the ground truth beside
    it) or one case (a case folder or single-case dataset that :func:`vox2vox.data.layouts.discover`
    reads): its label map is drawn as the ground truth, and its FLAIR (else first) channel gives
    the anatomy unless ``image`` is given. Every file must lie on one grid.
    """
    labels = Path(labels)
    pred_path: Path | None = labels
    truth_path = Path(truth) if truth is not None else None
    image_path = Path(image) if image is not None else None
    if labels.is_dir() or labels.name.lower().endswith(".csv"):
        spec = discover(labels)
        if len(spec.cases) != 1:
            raise Vox2VoxError(f"{labels}: holds {len(spec.cases)} cases; give one case folder or a label file")
        case = spec.cases[0]
        if case.label is None and truth_path is None:
            raise Vox2VoxError(f"{labels}: case {case.case_id} has no label map to render")
        pred_path, truth_path = None, truth_path or case.label
        if image_path is None:
            channel = next((n for n in ("flair", "t2f") if n in case.channels), next(iter(case.channels)))
            image_path = case.channels[channel]

    maps: dict[str, np.ndarray] = {}
    reference = None
    for name, path in (("pred", pred_path), ("truth", truth_path)):
        if path is None:
            continue
        data, geometry = read_label_map(path)
        if reference is not None and not reference[0].same_grid(geometry):
            raise Vox2VoxError(f"{path}: grid differs from {reference[1]}; render label maps of one case")
        reference = reference or (geometry, path)
        maps[name] = data
    assert reference is not None
    volume = None
    if image_path is not None:
        data, geometry = read_channels(image_path, nonfinite="zero")
        if not reference[0].same_grid(geometry):
            raise Vox2VoxError(f"{image_path}: grid differs from {reference[1]}; give the case's own image")
        volume = data[-1] if data.shape[0] > 1 else data[0]
    return render_labels(
        out, maps.get("pred"), truth=maps.get("truth"), image=volume, spacing=reference[0].spacing,
        titles=("prediction" if truth_path is not None else labels.name, "ground truth"),
    )
