"""Read and write volumes as arrays plus geometry.

One internal representation for every format: a 3D array whose axes are the voxel axes (i, j, k)
AFTER reorientation to the closest canonical orientation (RAS+, as ``nibabel.as_closest_canonical``
does), plus a :class:`Geometry` that remembers both the canonical and the on-disk grid. Writing puts
the array back on the on-disk grid, so a prediction lies exactly on its input in any viewer.

NIfTI (``.nii``, ``.nii.gz``) is read with nibabel; DICOM series (a folder), NRRD and MetaImage
(``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) with SimpleITK, whose LPS world frame is converted to
NIfTI's RAS. Output is always NIfTI.
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel import orientations as ornt

from vox2vox.atomic import atomic_path
from vox2vox.data.dicom import read_series, series_files
from vox2vox.data.guards import check_data_file_references, check_declared_size
from vox2vox.data.hdf5 import file_of, is_hdf5_address, read_hdf5
from vox2vox.errors import Vox2VoxError, Vox2VoxWarning

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, *SITK_SUFFIXES)


def strip_volume_suffix(name: str, suffixes: tuple[str, ...] = VOLUME_SUFFIXES) -> str | None:
    """``name`` without its volume suffix (the longest of ``suffixes`` it ends with, any case), or
    None when it has none of them or is a hidden file (``.name``, e.g. macOS ``._x.nii.gz``)."""
    if name.startswith("."):
        return None
    lower = name.lower()
    for suffix in sorted(suffixes, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None
#: NIfTI voxel -> world is RAS+; ITK's is LPS+. Flipping x and y converts one into the other.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

NonFinite = Literal["error", "keep", "zero"]


@dataclass(frozen=True)
class Geometry:
    """Where a volume's voxels lie in the world.

    ``affine`` maps canonical in-memory voxel indices (i, j, k, 1) to RAS+ world millimetres;
    ``source_affine`` and ``source_shape`` describe the grid as stored in the file, so output can be
    written back in the file's own orientation.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    source_affine: np.ndarray
    source_shape: tuple[int, int, int]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the canonical axes (i, j, k)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes of the file's own orientation, e.g. ``"LPS"`` (canonical is always RAS)."""
        return "".join(nib.aff2axcodes(self.source_affine))

    def to_json(self) -> dict:
        """A JSON-serialisable description (lists of floats/ints)."""
        return {
            "affine": np.asarray(self.affine, dtype=float).tolist(),
            "shape": list(self.shape),
            "source_affine": np.asarray(self.source_affine, dtype=float).tolist(),
            "source_shape": list(self.source_shape),
        }

    @classmethod
    def from_json(cls, data: dict) -> Geometry:
        """Inverse of :meth:`to_json`."""
        return cls(
            affine=np.asarray(data["affine"], dtype=float),
            shape=tuple(int(v) for v in data["shape"]),  # type: ignore[arg-type]
            source_affine=np.asarray(data["source_affine"], dtype=float),
            source_shape=tuple(int(v) for v in data["source_shape"]),  # type: ignore[arg-type]
        )

    def same_grid(self, other: Geometry) -> bool:
        """Whether two volumes share one voxel grid: the same shape and :func:`same_affine`.

        The one rule for "same grid": channels and labels of a case (``dataset``, training),
        predictions against truth (``evaluate``) and renderings all use it.
        """
        return self.shape == other.shape and same_affine(self.affine, other.affine)


def same_affine(a: np.ndarray, b: np.ndarray) -> bool:
    """Same grid within 1e-3 of a voxel in direction and 0.01 mm in origin (float headers drift)."""
    return bool(np.allclose(a[:3, :3], b[:3, :3], atol=1e-3) and np.allclose(a[:3, 3], b[:3, 3], atol=1e-2))


def format_of(path: str | Path) -> Literal["nifti", "sitk", "dicom", "hdf5"] | None:
    """The reader a path needs, from its name (a folder is taken to be a DICOM series;
    ``.h5``/``.hdf5``, ``file.h5:dataset`` and the earlier ``.im``/``.seg`` files are HDF5)."""
    if is_hdf5_address(path):
        return "hdf5"
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(SITK_SUFFIXES) or name.endswith(".dcm"):
        return "sitk"
    return None


def is_volume_path(path: str | Path) -> bool:
    """Whether ``path`` is named like a volume file this module reads."""
    return format_of(path) in ("nifti", "sitk", "hdf5") and file_of(path).is_file()


def read_volume(
    path: str | Path, *, nonfinite: NonFinite = "error"
) -> tuple[np.ndarray, Geometry]:
    """Read one 3D volume, reoriented to the closest canonical (RAS+) orientation.

    Returns an array of shape ``(X, Y, Z)`` (canonical voxel axes) and its :class:`Geometry`.
    Integer files keep their integer dtype (labels stay exact); floating files come back as
    float32 (exact for label values such as 0.0/1.0/4.0). A 4D file whose last axis has length 1 is read as 3D; other 4D files need
    :func:`read_channels`.

    ``nonfinite``: what to do with NaN/Inf voxels: ``"error"`` (default) raises, ``"keep"`` returns
    them, ``"zero"`` replaces them with 0.
    """
    array, geometry = read_channels(path, nonfinite=nonfinite)
    if array.shape[0] != 1:
        raise Vox2VoxError(
            f"{path}: is 4D with {array.shape[0]} volumes, expected one 3D volume; "
            "give it as a multi-channel image (MSD layout) or split it into 3D files"
        )
    return array[0], geometry


def read_channels(
    path: str | Path, *, nonfinite: NonFinite = "error"
) -> tuple[np.ndarray, Geometry]:
    """Read a 3D or 4D volume as channel-first ``(C, X, Y, Z)`` in canonical orientation.

    A 4D NIfTI (MSD style) puts channels on its 4th axis; a 3D file gives ``C = 1``. HDF5
    volumes are read by :func:`vox2vox.data.hdf5.read_hdf5` (geometry from attributes, else 1 mm).
    """
    path = Path(path)
    if format_of(path) == "hdf5":
        data, affine = read_hdf5(path)
        return _to_canonical(_check_values(data, path, nonfinite), affine)
    if not path.exists():
        raise Vox2VoxError(f"{path}: file not found; check the path or the dataset layout")
    kind = format_of(path)
    if kind is None:
        raise Vox2VoxError(
            f"{path}: not a recognised volume format; use NIfTI (.nii/.nii.gz), a DICOM series "
            "folder, .nrrd, .mha or .mhd"
        )
    if path.is_file() and path.stat().st_size == 0:
        raise Vox2VoxError(f"{path}: file is empty (0 bytes); re-copy or re-export it")
    if kind == "nifti":
        data, affine = _read_nifti(path)
    else:
        data, affine = _read_sitk(path, series=kind == "dicom")
    data = _check_values(data, path, nonfinite)
    return _to_canonical(data, affine)


#: How far (mm) a voxel may land apart under the sform and the qform before the two headers are
#: said to disagree: the qform stores a quaternion in float32, so exact agreement is not expected.
HEADER_TOLERANCE_MM = 0.01


def _check_orientation_headers(img: nib.spatialimages.SpatialImage, path: Path) -> None:
    """Warn when a NIfTI file's sform and qform are both set and place the volume differently.

    nibabel (and so vox2vox) reads the sform; ITK-based tools (SimpleITK, 3D Slicer, ANTs) read
    the qform when it is set: the same file then lands in different places in different tools.
    """
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        return
    sform, scode = img.get_sform(coded=True)
    qform, qcode = img.get_qform(coded=True)
    if not scode or not qcode:
        return
    corners = np.array([[i, j, k, 1.0] for i in (0, img.shape[0] - 1) for j in (0, img.shape[1] - 1)
                        for k in (0, img.shape[2] - 1)]).T
    apart = float(np.abs((sform - qform) @ corners)[:3].max())
    if apart > HEADER_TOLERANCE_MM:
        warnings.warn(f"{path}: its sform and qform disagree (voxels up to {apart:.3g} mm apart); read with the "
                      "sform, as nibabel does; ITK-based tools (SimpleITK, 3D Slicer, ANTs) may use the qform, so the "
                      "volume can land elsewhere there; make the two agree (set one from the other)",
                      Vox2VoxWarning, stacklevel=2)


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode a NIfTI file into a ``(X, Y, Z, C)`` array and its on-disk affine."""
    try:
        img = nib.load(str(path))
    except nib.filebasedimages.ImageFileError as err:
        raise Vox2VoxError(
            f"{path}: not a NIfTI image ({err}); check the file type or re-export it"
        ) from err
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as err:
        raise Vox2VoxError(f"{path}: cannot read header ({err}); the file is damaged") from err
    _check_orientation_headers(img, path)
    shape = img.shape
    if len(shape) == 5 and shape[3] == 1:
        # Some tools write vector data as 5D with an empty time axis.
        shape = shape[:3] + shape[4:]
    if len(shape) < 3 or len(shape) > 4:
        raise Vox2VoxError(
            f"{path}: has {len(img.shape)} dimensions {tuple(img.shape)}, expected a 3D volume "
            "(or 4D with channels last); convert it to 3D"
        )
    on_disk = img.get_data_dtype()
    if on_disk.names is not None or on_disk.kind == "V":
        raise Vox2VoxError(
            f"{path}: holds {'RGB' if on_disk.names and len(on_disk.names) >= 3 else 'structured'} voxels "
            f"({on_disk}), not scalar intensities; convert it to grayscale (or split the colour channels)"
        )
    # From the header alone: before a small .nii.gz inflates to more than memory holds.
    check_declared_size(path, shape, on_disk.itemsize)
    try:
        # Scaling (scl_slope) may overflow float32: counted and refused in _check_values, not warned.
        with np.errstate(over="ignore", invalid="ignore"):
            data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, ValueError) as err:
        raise Vox2VoxError(
            f"{path}: voxel data truncated or corrupt ({type(err).__name__}: {err}); "
            "re-download or re-export the file"
        ) from err
    data = data.reshape(shape)
    if data.ndim == 3:
        data = data[..., None]
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise Vox2VoxError(f"{path}: voxel-to-world affine is missing or singular; fix the header")
    return data, np.asarray(affine, dtype=float)


def _read_sitk(path: Path, *, series: bool) -> tuple[np.ndarray, np.ndarray]:
    """Decode a file (or DICOM series folder) with SimpleITK into ``(X, Y, Z, C)`` + RAS affine."""
    try:
        if series:
            image = read_series(path, series_files(path))
        else:
            check_data_file_references(path)
            info = sitk.ImageFileReader()
            info.SetFileName(str(path))
            info.ReadImageInformation()
            pixel = sitk.GetPixelIDValueAsString(info.GetPixelID())
            itemsize = 8 if "64" in pixel or "double" in pixel else 4
            check_declared_size(path, tuple(info.GetSize()) + (info.GetNumberOfComponents(),), itemsize)
            image = info.Execute()
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
        raise Vox2VoxError(f"{path}: cannot read image ({first}); the file is damaged or unsupported") from err
    if image.GetDimension() != 3:
        raise Vox2VoxError(
            f"{path}: has {image.GetDimension()} dimensions, expected a 3D volume; convert it to 3D"
        )
    # GetArrayFromImage orders axes (z, y, x[, component]); NIfTI order is (x, y, z, component).
    data = sitk.GetArrayFromImage(image)
    data = data[..., None] if image.GetNumberOfComponentsPerPixel() == 1 else data
    data = np.transpose(data, (2, 1, 0, 3))
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=float)[None, :]
    lps[:3, 3] = image.GetOrigin()
    if not np.all(np.isfinite(lps)) or abs(np.linalg.det(lps[:3, :3])) < 1e-12:
        raise Vox2VoxError(f"{path}: voxel spacing, direction or origin is missing, zero or not finite; fix the header")
    return data, _LPS_TO_RAS @ lps


def _check_values(data: np.ndarray, path: Path, nonfinite: NonFinite) -> np.ndarray:
    """Keep integer dtypes exact; floats become float32; handle NaN/Inf as asked."""
    if data.dtype.kind in "iub":
        return data if data.dtype != np.bool_ else data.astype(np.uint8)
    if data.dtype.kind == "c":
        raise Vox2VoxError(f"{path}: complex-valued voxels; convert to magnitude first")
    if data.dtype.names is not None or data.dtype.kind not in "f":
        raise Vox2VoxError(f"{path}: voxels of type {data.dtype} are not scalar numbers; convert the file")
    overflow = 0
    if data.dtype.itemsize > 4:
        with np.errstate(invalid="ignore"):
            overflow = int(np.count_nonzero(np.isfinite(data) & (np.abs(data) > np.finfo(np.float32).max)))
    with np.errstate(over="ignore", invalid="ignore"):
        data = np.asarray(data, dtype=np.float32)
    if nonfinite != "keep":
        bad = ~np.isfinite(data)
        n_bad = int(bad.sum())
        if n_bad:
            if nonfinite == "error":
                beyond = f" ({overflow} beyond the float32 range)" if overflow else ""
                raise Vox2VoxError(
                    f"{path}: {n_bad} NaN/Inf voxels{beyond}; fix the file or read with nonfinite='zero'"
                )
            data = np.where(bad, np.float32(0), data)
    return data


def canonical_from_array(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, Geometry]:
    """An in-memory channel-first ``(C, X, Y, Z)`` volume on the grid ``affine`` (voxel -> RAS+ mm)
    describes, as :func:`read_channels` would give it from a file: canonical array and geometry."""
    return _to_canonical(np.moveaxis(np.asarray(array), 0, -1), np.asarray(affine, dtype=float))


def _to_canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, Geometry]:
    """Reorder/flip ``(X, Y, Z, C)`` data to closest RAS+; return ``(C, X, Y, Z)`` + geometry."""
    source_shape = tuple(int(v) for v in data.shape[:3])
    transform = _canonical_transform(affine)
    canonical = ornt.apply_orientation(data, transform)
    canonical_affine = affine @ ornt.inv_ornt_aff(transform, source_shape)
    geometry = Geometry(
        affine=canonical_affine,
        shape=tuple(int(v) for v in canonical.shape[:3]),  # type: ignore[arg-type]
        source_affine=affine,
        source_shape=source_shape,  # type: ignore[arg-type]
    )
    return np.ascontiguousarray(np.moveaxis(canonical, -1, 0)), geometry


def _canonical_transform(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform from the file's axes to closest RAS+."""
    return ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt("RAS"))


def to_source_orientation(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Undo the canonical reorientation of a ``(X, Y, Z[, ...])`` array (trailing axes kept)."""
    if tuple(array.shape[:3]) != geometry.shape:
        raise Vox2VoxError(
            f"array shape {tuple(array.shape[:3])} does not match the volume's grid "
            f"{geometry.shape}; undo preprocessing before writing"
        )
    back = ornt.ornt_transform(ornt.axcodes2ornt("RAS"), ornt.io_orientation(geometry.source_affine))
    return np.ascontiguousarray(ornt.apply_orientation(array, back))


def write_volume(
    array: np.ndarray,
    geometry: Geometry,
    path: str | Path,
    *,
    dtype: np.dtype | type | str | None = None,
    description: str | None = None,
) -> None:
    """Write a canonical ``(X, Y, Z)`` array as NIfTI on the file's original grid, atomically.

    A 4D ``(X, Y, Z, C)`` array (e.g. per-class probabilities) is written as a 4D NIfTI with
    the ``C`` volumes on the 4th axis.

    ``array`` must have ``geometry.shape``; it is reoriented back to the source orientation and
    stored with ``geometry.source_affine`` (as both qform and sform), so it overlays its input
    exactly. ``dtype`` sets the on-disk type (default: the array's own; int64 labels are stored as
    the smallest integer type that holds them since many viewers reject int64). ``description``
    goes into the header's ``descrip`` field (ASCII, at most 79 characters kept).
    """
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise Vox2VoxError(f"{path}: output must be NIfTI; name it .nii or .nii.gz")
    array = np.asarray(array)
    if array.ndim not in (3, 4):
        raise Vox2VoxError(f"{path}: can only write 3D volumes or 4D (X, Y, Z, C), got shape {array.shape}")
    out = to_source_orientation(array, geometry)
    if dtype is not None:
        out = out.astype(dtype)
    elif out.dtype == np.int64 or out.dtype == np.bool_:
        out = out.astype(_smallest_int_dtype(out))
    elif out.dtype == np.float64:
        out = out.astype(np.float32)
    img = nib.Nifti1Image(out, geometry.source_affine)
    img.set_qform(geometry.source_affine, code=1)
    img.set_sform(geometry.source_affine, code=1)
    img.header.set_xyzt_units("mm")
    if description:
        img.header["descrip"] = description.encode("ascii", "replace")[:79]
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def write_probabilities_npz(
    probabilities: np.ndarray, geometry: Geometry, path: str | Path, *, label_values: Sequence[int],
    channel_names: Sequence[str] | None = None,
) -> None:
    """Write canonical ``(X, Y, Z, C)`` class probabilities as a compressed ``.npz``, atomically.

    Arrays: ``probabilities`` float32 ``(C, Z, Y, X)`` in the source file's voxel order (C-order
    readers index it as ``[c, k, j, i]``), ``affine`` the source voxel-to-world matrix,
    ``labels`` the on-disk label value of each class, and ``channels`` each channel's name (for a
    region-based model: the region; its ``labels`` entry is the value of the class it adds).
    """
    source = to_source_orientation(probabilities, geometry)
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(
            handle,
            probabilities=np.ascontiguousarray(source.transpose(3, 2, 1, 0)),
            affine=np.asarray(geometry.source_affine, dtype=np.float64),
            labels=np.asarray(label_values, dtype=np.int64),
            # A unicode array (not object): readable with np.load(allow_pickle=False).
            channels=np.asarray(list(channel_names) if channel_names is not None else
                                [str(v) for v in label_values], dtype=str),
        )


def _smallest_int_dtype(array: np.ndarray) -> np.dtype:
    """The smallest integer dtype holding every value of ``array`` (uint8 for typical labels)."""
    if array.size == 0:
        return np.dtype(np.uint8)
    lo, hi = int(array.min()), int(array.max())
    for candidate in (np.uint8, np.int16, np.int32, np.int64):
        info = np.iinfo(candidate)
        if info.min <= lo and hi <= info.max:
            return np.dtype(candidate)
    return np.dtype(np.int64)
