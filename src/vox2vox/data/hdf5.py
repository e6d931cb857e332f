"""HDF5 volumes: the earlier PyTorch Vox2Vox's files, and any HDF5 file with a named dataset.

Addresses this module reads (``io.read_channels`` dispatches here by name):

- ``scan.h5`` / ``scan.hdf5``: the dataset ``data`` (the earlier implementation's name), else
  the file's only array dataset.
- ``scan.h5:group/name`` (also in a manifest cell): that dataset.
- ``<name>.im`` / ``<name>.seg``: the earlier implementation's image and label files. They are
  HDF5 files WITHOUT an ``.h5`` suffix, array in dataset ``data``; ``<name>.im.h5`` and
  ``<name>.seg.hdf5`` (with a suffix) are read the same way.

Axis order and geometry. HDF5 has no standard voxel-to-world convention, so the array is taken
as stored: axes 0, 1, 2 are the volume's (X, Y, Z), already in the canonical RAS+ orientation.
The voxel-to-world affine comes from attributes of the dataset, else of the file's root:

1. ``affine``: a 4x4 voxel-to-world matrix in mm (RAS+);
2. ``spacing`` (or ``voxel_size``, ``pixdim``): three voxel sizes in mm, origin 0;
3. neither: identity, i.e. 1 mm isotropic voxels with origin 0.

A 4D dataset holds channels on axis 0 (PyTorch's ``(C, D, H, W)``) unless the attribute
``channel_axis`` is ``3``/``-1``. Predictions of such a case are written as NIfTI with the
affine above, so they overlay the HDF5 input voxel for voxel.

h5py is an optional extra (``pip install 'vox2vox[hdf5]'``); it is imported only when an HDF5
file is actually read or written.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vox2vox.atomic import atomic_path
from vox2vox.data.guards import check_declared_size
from vox2vox.errors import Vox2VoxError

#: File-name endings of plain HDF5 files.
HDF5_SUFFIXES: tuple[str, ...] = (".h5", ".hdf5")
#: The earlier implementation's image / label endings (HDF5 without an HDF5 suffix).
LEGACY_IMAGE_SUFFIX = ".im"
LEGACY_LABEL_SUFFIX = ".seg"
#: The dataset the earlier implementation stored every volume in.
DEFAULT_DATASET = "data"

_LEGACY_ENDINGS = tuple(
    f"{kind}{suffix}" for kind in (LEGACY_IMAGE_SUFFIX, LEGACY_LABEL_SUFFIX) for suffix in ("", *HDF5_SUFFIXES)
)
_SPACING_ATTRS = ("spacing", "voxel_size", "pixdim")
_INSTALL_HINT = "pip install 'vox2vox[hdf5]'"


def split_address(path: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """Split ``file.h5:dataset`` into the file and the dataset name (None when not given).

    Only a colon after an HDF5 or legacy ending counts, so ordinary paths pass through whole.
    """
    text = os.fspath(path)
    head, sep, tail = text.rpartition(":")
    if sep and tail and head.lower().endswith(_LEGACY_ENDINGS + HDF5_SUFFIXES):
        return Path(head), tail
    return Path(text), None


def file_of(path: str | os.PathLike[str]) -> Path:
    """The file on disk behind an address (``scan.h5:image`` -> ``scan.h5``; others unchanged)."""
    return split_address(path)[0]


def is_hdf5_address(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names an HDF5 volume (by its name; nothing is opened)."""
    file, dataset = split_address(path)
    return dataset is not None or file.name.lower().endswith(HDF5_SUFFIXES + _LEGACY_ENDINGS)


def legacy_stem(name: str, suffix: str) -> str | None:
    """``<name>`` of a legacy file name ending in ``suffix`` (``.im``/``.seg``, optionally + ``.h5``/``.hdf5``)."""
    lower = name.lower()
    for ending in (suffix, *(suffix + s for s in HDF5_SUFFIXES)):
        if lower.endswith(ending) and len(name) > len(ending):
            return name[: -len(ending)]
    return None


def read_hdf5(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read an HDF5 volume as ``(X, Y, Z, C)`` plus its 4x4 voxel-to-world affine (mm, RAS+).

    ``path`` is an address as described in the module docstring. The layout matches what the
    NIfTI reader returns, so :mod:`vox2vox.data.io` reorients and checks values the same way.

    Raises:
        Vox2VoxError: h5py missing, file missing or not HDF5, dataset missing, not 3D/4D, or
            an unusable geometry attribute (the message names the file).
    """
    file, name = split_address(path)
    h5py = _require_h5py(file)
    if not file.is_file():
        raise Vox2VoxError(f"{file}: file not found; check the path or the dataset layout")
    try:
        handle = h5py.File(file, "r")
    except OSError as err:
        raise Vox2VoxError(f"{file}: not a readable HDF5 file ({err}); check the file type") from err
    with handle:
        dataset = _pick_dataset(handle, name, file, h5py)
        if getattr(dataset, "shape", None) is not None and len(dataset.shape) >= 3:
            check_declared_size(file, dataset.shape, dataset.dtype.itemsize)
        try:
            data = np.asarray(dataset[()])
        except (OSError, ValueError, TypeError) as err:
            raise Vox2VoxError(f"{file}: cannot read dataset {dataset.name} ({err}); the file is damaged") from err
        affine = _affine_from_attrs([dataset.attrs, handle.attrs], file)
        channel_axis = _attr(dataset.attrs, "channel_axis", _attr(handle.attrs, "channel_axis", 0))
    if data.dtype.kind not in "biuf":
        raise Vox2VoxError(f"{file}: dataset {dataset.name} holds {data.dtype} values, expected numbers")
    if data.ndim == 3:
        return data[..., None], affine
    if data.ndim == 4:
        axis = int(np.asarray(channel_axis).item())
        if axis not in (0, 3, -1):
            raise Vox2VoxError(f"{file}: attribute channel_axis={axis}; use 0 (channels first) or 3 (last)")
        return (np.moveaxis(data, 0, -1) if axis == 0 else data), affine
    raise Vox2VoxError(
        f"{file}: dataset {dataset.name} has shape {data.shape}, expected a 3D volume (or 4D with channels)"
    )


def write_hdf5(
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    dataset: str = DEFAULT_DATASET,
    spacing: Sequence[float] | None = None,
) -> Path:
    """Write ``array`` to ``path`` (atomically) in dataset ``dataset``, the earlier layout by default.

    ``spacing`` (mm) is stored as the dataset's ``spacing`` attribute when given. Returns the path.
    """
    path = Path(path)
    h5py = _require_h5py(path)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            written = handle.create_dataset(dataset, data=np.asarray(array), compression="gzip")
            if spacing is not None:
                written.attrs["spacing"] = np.asarray(spacing, dtype=np.float64)
    return path


def _require_h5py(path: Path) -> Any:
    try:
        import h5py  # lazy: the optional [hdf5] extra
    except ImportError as err:
        raise Vox2VoxError(f"{path}: reading HDF5 needs h5py; {_INSTALL_HINT}") from err
    return h5py


def _pick_dataset(handle: Any, name: str | None, file: Path, h5py: Any) -> Any:
    """The named dataset, else ``data``, else the file's only dataset."""
    if name is not None:
        found = handle.get(name)
        if not isinstance(found, h5py.Dataset):
            raise Vox2VoxError(f"{file}: no dataset {name!r}; it holds {_dataset_names(handle, h5py)}")
        return found
    found = handle.get(DEFAULT_DATASET)
    if isinstance(found, h5py.Dataset):
        return found
    names = _dataset_names(handle, h5py)
    if len(names) == 1:
        return handle[names[0]]
    raise Vox2VoxError(
        f"{file}: no dataset 'data' and {len(names)} others {names}; name one as {file.name}:<dataset>"
    )


def _dataset_names(handle: Any, h5py: Any) -> list[str]:
    names: list[str] = []
    handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def _attr(attrs: Any, key: str, default: Any) -> Any:
    return attrs[key] if key in attrs else default


def _affine_from_attrs(attr_sets: Sequence[Any], file: Path) -> np.ndarray:
    """``affine`` attribute, else a diagonal from ``spacing``, else identity (see module docstring)."""
    for attrs in attr_sets:
        if "affine" in attrs:
            affine = np.asarray(attrs["affine"], dtype=np.float64)
            if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
                raise Vox2VoxError(f"{file}: attribute 'affine' must be an invertible 4x4 matrix, got {affine.tolist()}")
            return affine
        for key in _SPACING_ATTRS:
            if key in attrs:
                spacing = np.asarray(attrs[key], dtype=np.float64).ravel()
                if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
                    raise Vox2VoxError(f"{file}: attribute {key!r} must be three positive sizes in mm, got {spacing.tolist()}")
                return np.diag([*spacing, 1.0])
    return np.eye(4)
