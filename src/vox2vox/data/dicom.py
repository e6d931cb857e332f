"""DICOM series with their slice geometry checked before the slices are stacked.

ITK stacks a series on a uniform grid whatever its slice positions say (it warns, and the volume
is stretched where a slice is missing). Here every slice's header is read first
(ImagePositionPatient, ImageOrientationPatient, rows, columns, pixel spacing); the slices must
share orientation, size and pixel spacing, lie on one line along the slice normal, and be evenly
spaced. A missing, duplicate or unevenly placed slice is refused, naming the series and the gap,
unless non-uniform series are allowed (``--allow-nonuniform``, :func:`allow_nonuniform`): the
slices are then resampled linearly along the normal onto a uniform grid through the first and
last slice, whose step is the series' most common one. A one-slice series is a 2D image and is
refused like a 2D NIfTI.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vox2vox.data.guards import check_declared_size
from vox2vox.errors import Vox2VoxError

_ALLOW_NONUNIFORM: contextvars.ContextVar[bool] = contextvars.ContextVar("vox2vox_allow_nonuniform", default=False)

#: Slices closer than this along the normal (mm) are duplicates.
DUPLICATE_MM = 1e-3
#: A gap may differ from the series' step by this fraction (float noise in headers) and no more.
STEP_TOLERANCE = 0.01

_POSITION, _ORIENTATION = "0020|0032", "0020|0037"
_ROWS, _COLUMNS, _PIXEL_SPACING = "0028|0010", "0028|0011", "0028|0030"


@contextlib.contextmanager
def allow_nonuniform(enabled: bool = True) -> Iterator[None]:
    """Within this block, non-uniform DICOM series are resampled instead of refused."""
    token = _ALLOW_NONUNIFORM.set(enabled)
    try:
        yield
    finally:
        _ALLOW_NONUNIFORM.reset(token)


def nonuniform_allowed() -> bool:
    return _ALLOW_NONUNIFORM.get()


@dataclass(frozen=True)
class SliceInfo:
    file: str
    position: np.ndarray  # ImagePositionPatient (LPS mm)
    row: np.ndarray  # direction of increasing column index
    col: np.ndarray  # direction of increasing row index
    rows: int
    columns: int
    spacing: tuple[float, float]  # (between rows, between columns) as DICOM writes it


def _floats(reader, key: str, count: int, folder: Path, file: str, what: str) -> np.ndarray:
    if not reader.HasMetaDataKey(key):
        raise Vox2VoxError(
            f"{folder}: slice {Path(file).name} has no {what}; the slices cannot be placed in a volume"
        )
    try:
        values = np.asarray([float(v) for v in reader.GetMetaData(key).strip().split("\\")], dtype=float)
    except ValueError:
        values = np.zeros(0)
    if values.size != count or not np.all(np.isfinite(values)):
        raise Vox2VoxError(f"{folder}: slice {Path(file).name} has a malformed {what} {reader.GetMetaData(key)!r}")
    return values


def read_slice_info(folder: Path, file: str) -> SliceInfo:
    """The geometry tags of one slice, from its header only."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        raise Vox2VoxError(f"{folder}: slice {Path(file).name} is unreadable; the series is damaged") from err
    position = _floats(reader, _POSITION, 3, folder, file, "ImagePositionPatient")
    orientation = _floats(reader, _ORIENTATION, 6, folder, file, "ImageOrientationPatient")
    spacing = _floats(reader, _PIXEL_SPACING, 2, folder, file, "PixelSpacing")
    row, col = orientation[:3], orientation[3:]
    if (abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3
            or min(spacing) <= 0):
        raise Vox2VoxError(f"{folder}: slice {Path(file).name} has an invalid orientation or pixel spacing")
    size = reader.GetSize()
    rows = int(reader.GetMetaData(_ROWS)) if reader.HasMetaDataKey(_ROWS) else int(size[1])
    columns = int(reader.GetMetaData(_COLUMNS)) if reader.HasMetaDataKey(_COLUMNS) else int(size[0])
    return SliceInfo(file, position, row / np.linalg.norm(row), col / np.linalg.norm(col), rows, columns,
                     (float(spacing[0]), float(spacing[1])))


def series_files(folder: str | Path) -> list[str]:
    """The files of the one DICOM series in ``folder`` (GDCM's grouping and order); a folder with
    no series or several is refused. Reading a volume and writing a DICOM SEG both use it, so the
    SEG references exactly the slices the volume was stacked from."""
    import SimpleITK as sitk

    folder = Path(folder)
    reader = sitk.ImageSeriesReader()
    # GDCM prints "No Series were found" on stderr for a folder without DICOM; the error below
    # says it once, in our words.
    shown = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    try:
        series_ids = reader.GetGDCMSeriesIDs(str(folder))
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(shown)
    if not series_ids:
        raise Vox2VoxError(f"{folder}: folder holds no DICOM series; point at a folder of DICOM slices")
    if len(series_ids) > 1:
        raise Vox2VoxError(
            f"{folder}: folder holds {len(series_ids)} DICOM series; put each series in its own folder"
        )
    return list(reader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))


def read_series(folder: str | Path, files: Sequence[str], *, allow: bool | None = None):
    """A 3D ``SimpleITK.Image`` of the series ``files`` (one series, any order), geometry checked.

    ``allow`` (default: :func:`nonuniform_allowed`) resamples a non-uniform series instead of
    refusing it. Raises :class:`Vox2VoxError` naming ``folder`` for every geometry problem.
    """
    folder = Path(folder)
    allow = nonuniform_allowed() if allow is None else allow
    slices = [read_slice_info(folder, f) for f in files]
    if len(slices) == 1:
        raise Vox2VoxError(
            f"{folder}: DICOM series has a single slice (a 2D image), expected a 3D volume; give the full series"
        )
    first = slices[0]
    for other in slices[1:]:
        name = Path(other.file).name
        if not (np.allclose(other.row, first.row, atol=1e-4) and np.allclose(other.col, first.col, atol=1e-4)):
            raise Vox2VoxError(f"{folder}: slice {name} is oriented differently from {Path(first.file).name}; "
                               "the folder mixes series or a tilted acquisition")
        if (other.rows, other.columns) != (first.rows, first.columns):
            raise Vox2VoxError(f"{folder}: slice {name} is {other.rows}x{other.columns} pixels, "
                               f"{Path(first.file).name} {first.rows}x{first.columns}; the folder mixes series")
        if not np.allclose(other.spacing, first.spacing, rtol=1e-4):
            raise Vox2VoxError(f"{folder}: slice {name} has pixel spacing {other.spacing}, "
                               f"{Path(first.file).name} {first.spacing}; the folder mixes series")
    normal = np.cross(first.row, first.col)
    along = np.asarray([s.position @ normal for s in slices])
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    along = along[order]
    # Every slice on one line through the first: no in-plane shift between slices.
    for s, d in zip(slices, along, strict=True):
        offset = (s.position - d * normal) - (slices[0].position - along[0] * normal)
        if np.linalg.norm(offset) > 0.01 * max(min(first.spacing), 1e-3) + 1e-3:
            raise Vox2VoxError(
                f"{folder}: slice {Path(s.file).name} is shifted in-plane by {np.linalg.norm(offset):.3g} mm from "
                "the others (a sheared or mixed series); it cannot be stacked"
            )
    gaps = np.diff(along)
    duplicate = int(np.argmin(gaps))
    if gaps[duplicate] < DUPLICATE_MM:
        raise Vox2VoxError(
            f"{folder}: DICOM slices {Path(slices[duplicate].file).name} and {Path(slices[duplicate + 1].file).name} "
            f"lie at the same position ({along[duplicate]:.3f} mm along the slice normal); remove the duplicate"
        )
    step = float(np.median(gaps))
    off = np.abs(gaps - step) > STEP_TOLERANCE * step
    check_declared_size(folder, (first.columns, first.rows, len(slices)), 4)
    if off.any():
        worst = int(np.argmax(np.abs(gaps - step)))
        gap = float(gaps[worst])
        missing = max(int(round(gap / step)) - 1, 0)
        why = f"about {missing} missing slice(s)" if missing else "uneven slice spacing"
        if not allow:
            raise Vox2VoxError(
                f"{folder}: DICOM series is not evenly spaced: a {gap:.4g} mm gap between slices at "
                f"{along[worst]:.2f} and {along[worst + 1]:.2f} mm along the slice normal, where the series "
                f"steps {step:.4g} mm ({why}; {int(off.sum())} uneven gap(s)){_left_out(folder, files)}; "
                "re-export the full series, or pass --allow-nonuniform to resample it onto a uniform grid"
            )
    image = _read_pixels([s.file for s in slices], folder)
    if off.any():
        image = _resample_along_normal(image, along, step, slices[0], normal)
    else:
        # The series' own spacing (mean over all gaps), not ITK's estimate from the first two slices.
        spacing = list(image.GetSpacing())
        spacing[2] = float((along[-1] - along[0]) / (len(along) - 1))
        image.SetSpacing(spacing)
    return image


def _left_out(folder: Path, files: Sequence[str]) -> str:
    """Files of the folder the series does not include (a damaged slice is left out by GDCM)."""
    try:
        used = {Path(f).name for f in files}
        others = sorted(p.name for p in folder.iterdir()
                        if p.is_file() and not p.name.startswith(".") and p.name not in used)
    except OSError:
        return ""
    if not others:
        return ""
    return f"; {len(others)} file(s) of the folder are not readable slices of this series, e.g. {others[0]}"


def _read_pixels(files: list[str], folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    shown = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)  # our checks said what matters, in one line
    try:
        return reader.Execute()
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
        raise Vox2VoxError(f"{folder}: cannot read the slices ({first}); the series is damaged") from err
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(shown)


def _resample_along_normal(image, along: np.ndarray, step: float, first: SliceInfo, normal: np.ndarray):
    """Linear interpolation of the slices (at ``along`` mm) onto a uniform grid from the first to
    the last slice, its step the nearest to ``step`` that divides that length."""
    import SimpleITK as sitk

    data = sitk.GetArrayFromImage(image)  # (slices, rows, columns[, components])
    n_steps = max(int(round((along[-1] - along[0]) / step)), 1)
    uniform = (along[-1] - along[0]) / n_steps
    targets = along[0] + uniform * np.arange(n_steps + 1)
    upper = np.clip(np.searchsorted(along, targets, side="right"), 1, len(along) - 1)
    lower = upper - 1
    weight = ((targets - along[lower]) / (along[upper] - along[lower])).clip(0.0, 1.0)
    weight = weight.reshape(-1, *([1] * (data.ndim - 1))).astype(np.float32)
    out = data[lower].astype(np.float32) * (1 - weight) + data[upper].astype(np.float32) * weight
    resampled = sitk.GetImageFromArray(out, isVector=data.ndim == 4)
    # ITK: x along the row direction (column spacing), y along the column direction (row spacing).
    resampled.SetSpacing((first.spacing[1], first.spacing[0], float(uniform)))
    origin = first.position + (along[0] - first.position @ normal) * normal
    resampled.SetOrigin(tuple(float(v) for v in origin))
    resampled.SetDirection(tuple(float(v) for v in np.column_stack([first.row, first.col, normal]).ravel()))
    return resampled
