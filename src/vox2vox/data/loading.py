"""Load one case: read its channels (checked to share one grid), map labels, preprocess, cache.

The cache stores each preprocessed case as ``<key>.npz`` (arrays) plus ``<key>.json`` (geometry
and preprocessing record); nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vox2vox.atomic import atomic_path, atomic_write_text
from vox2vox.data.augmentation import absent_channels
from vox2vox.data.cases import CaseFiles
from vox2vox.data.hdf5 import file_of
from vox2vox.data.io import Geometry, read_channels, same_affine
from vox2vox.data.labels import LabelConvention, round_label_map
from vox2vox.data.preprocessing import LoadedCase, PreprocessConfig, preprocess
from vox2vox.errors import Vox2VoxError

CACHE_VERSION = 2  # 2: the record holds the input's intensity statistics


def read_case(case: CaseFiles) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """Decode a case: canonical image ``(C, D, H, W)`` float32, raw label ``(D, H, W)`` or None,
    and the first channel's geometry. Every channel and the label must share one grid.
    """
    image, label, _, geometry = _read_case_with_mask(case)
    return image, label, geometry


def _read_case_with_mask(
    case: CaseFiles,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, Geometry]:
    if case.absent:
        raise Vox2VoxError(f"case {case.case_id}: has no file for channel(s) {', '.join(case.absent)} (an empty "
                           "manifest cell); every channel is needed here: only predict takes such a case, with a "
                           "model trained with augment.channel_dropout (docs/bad-inputs.md)")
    volumes: list[np.ndarray] = []
    geometry: Geometry | None = None
    first_path: Path | None = None
    # Several channel names may share one 4D file (MSD); read each file once, in channel order.
    for file, names in case.channel_files().items():
        data, geo = read_channels(file)
        if data.shape[0] != len(names):
            raise Vox2VoxError(
                f"{file}: holds {data.shape[0]} volume(s), the dataset expects {len(names)} "
                f"({', '.join(names)}); check dataset.json 'modality'"
            )
        if geometry is None:
            geometry, first_path = geo, file
        else:
            _require_same_grid(geometry, geo, first_path, file)
        volumes.extend(np.asarray(v, dtype=np.float32) for v in data)
    assert geometry is not None
    label = None
    if case.label is not None:
        data, geo = read_channels(case.label)
        if data.shape[0] != 1:
            raise Vox2VoxError(f"{case.label}: label map must be 3D, got {data.shape[0]} volumes")
        _require_same_grid(geometry, geo, first_path, case.label)
        label = data[0]
    mask = None
    if case.mask is not None:
        data, geo = read_channels(case.mask, nonfinite="zero")
        _require_same_grid(geometry, geo, first_path, case.mask)
        # Masks saved as float read as 0.99999997 inside: threshold, never compare with 1.
        mask = data[0] > 0.5
        if not mask.any():
            raise Vox2VoxError(f"{case.mask}: mask is empty; fix it or drop the mask column")
    return np.stack(volumes), label, mask, geometry


def _require_same_grid(a: Geometry, b: Geometry, path_a: Path | None, path_b: Path) -> None:
    if a.shape != b.shape:
        raise Vox2VoxError(
            f"{path_b}: shape {b.shape} differs from {Path(path_a).name} {a.shape}; "
            "channels and label must share one voxel grid (resample/register first)"
        )
    if not same_affine(a.affine, b.affine):
        raise Vox2VoxError(
            f"{path_b}: voxel-to-world affine differs from {Path(path_a).name}; channels and "
            "label must share one grid (check orientation/origin)"
        )


def load_case(
    case: CaseFiles,
    *,
    convention: LabelConvention | None,
    prep: PreprocessConfig,
) -> LoadedCase:
    """Read and preprocess one case: image ``(C, D, H, W)`` float32, label ``(D, H, W)`` int64.

    ``convention`` maps label values to class indices (None: values are used as class indices).
    When ``prep.cache_dir`` is set, the result is stored there as ``<key>.npz`` (arrays) plus
    ``<key>.json`` (geometry and record); the key hashes each file's path, mtime and size, the
    preprocessing config and the convention, so a changed file or setting misses the cache and a
    second load does not decode NIfTI. Nothing is pickled.
    """
    cache_files = None
    if prep.cache_dir:
        key = _cache_key(case, convention, prep)
        folder = Path(prep.cache_dir)
        cache_files = folder / f"{key}.npz", folder / f"{key}.json"
        cached = _read_cache(*cache_files, case.case_id)
        if cached is not None:
            return cached
    image, raw_label, mask, geometry = _read_case_with_mask(case)
    label = None
    if raw_label is not None:
        if convention is not None:
            label = convention.to_classes(raw_label, path=case.label)
        else:
            label = _as_class_indices(raw_label, case.label)
    image, label, record = preprocess(image, label, spacing=geometry.spacing, config=prep, mask=mask)
    loaded = LoadedCase(case.case_id, image, label, geometry, record)
    if cache_files is not None:
        _write_cache(loaded, *cache_files)
    return loaded


def _as_class_indices(label: np.ndarray, path: Path | None) -> np.ndarray:
    """Labels without a convention: integral, non-negative values used as class indices."""
    if label.dtype.kind == "f":
        rounded = round_label_map(label)
        if rounded is None:
            raise Vox2VoxError(f"{path}: label map has non-integer values; is it an image?")
        if rounded.size and float(np.abs(rounded).max()) > 2.0**53:
            raise Vox2VoxError(f"{path}: label values up to {float(np.abs(rounded).max()):.3g} are beyond "
                               "any label convention; is it an image?")
        label = rounded
    elif label.dtype == np.uint64 and label.size and int(label.max()) > np.iinfo(np.int64).max:
        raise Vox2VoxError(f"{path}: label values beyond 2**63; is it an image?")
    label = label.astype(np.int64)
    if label.size and label.min() < 0:
        raise Vox2VoxError(f"{path}: negative label values; give a label convention")
    return label


def _cache_key(case: CaseFiles, convention: LabelConvention | None, prep: PreprocessConfig) -> str:
    files = []
    for file in [*case.channels.values(), *(f for f in (case.label, case.mask) if f is not None)]:
        stat = file_of(file).stat()
        files.append([str(Path(file).resolve()), stat.st_mtime_ns, stat.st_size])
    payload = {
        "version": CACHE_VERSION,
        "case": case.case_id,
        "channels": list(case.channels),
        "files": files,
        "prep": prep.fingerprint(),
        "convention": None if convention is None else convention.to_json(),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", case.case_id)[:60]
    return f"{safe_id}-{digest}"


def _read_cache(npz: Path, meta: Path, case_id: str) -> LoadedCase | None:
    if not (npz.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        with np.load(npz, allow_pickle=False) as arrays:
            image = arrays["image"]
            label = arrays["label"] if "label" in arrays.files else None
        return LoadedCase(case_id, image, label, Geometry.from_json(info["geometry"]), info["record"])
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None  # a damaged cache entry is rebuilt, never trusted


def _write_cache(case: LoadedCase, npz: Path, meta: Path) -> None:
    arrays = {"image": case.image}
    if case.label is not None:
        arrays["label"] = case.label
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    info = {"case_id": case.case_id, "geometry": case.geometry.to_json(), "record": case.record}
    atomic_write_text(meta, json.dumps(info))


def read_case_and_mask(case: CaseFiles) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, Geometry]:
    """:func:`read_case` plus the case's foreground mask (bool, or None when the case has none)."""
    return _read_case_with_mask(case)


def load_case_without(case: CaseFiles, channel_names: Sequence[str], absent: Sequence[str], *,
                      prep: PreprocessConfig) -> LoadedCase:
    """Read and preprocess a case to predict without the channels ``absent`` (names among
    ``channel_names``, the model's channels in order): the other channels read and preprocessed as
    usual, each absent one as :func:`preprocess_without` represents it."""
    present = [n for n in channel_names if n not in set(absent)]
    if not present:
        raise Vox2VoxError(f"case {case.case_id}: every channel is absent ({', '.join(channel_names)}); "
                           "nothing to segment")
    files = CaseFiles(case.case_id, {n: case.channels[n] for n in present}, None, case.mask)
    image, _, mask, geometry = _read_case_with_mask(files)
    image, record = preprocess_without(image, channel_names, absent, spacing=geometry.spacing, prep=prep, mask=mask)
    return LoadedCase(case.case_id, image, None, geometry, record)


def preprocess_without(present: np.ndarray, channel_names: Sequence[str], absent: Sequence[str], *,
                       spacing: tuple[float, float, float], prep: PreprocessConfig,
                       mask: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Preprocess the present channels ``(P, D, H, W)`` (``channel_names`` without ``absent``, in
    order) into the model's ``(C, D, H, W)``: each absent channel 0 everywhere, as channel dropout
    represents it in training (:func:`vox2vox.data.augmentation.absent_channels`). The record's
    ``intensity`` entry of an absent channel is None (nothing to compare with the training data)
    and ``absent`` names them."""
    names = list(channel_names)
    gone = [n for n in names if n in set(absent)]
    if present.shape[0] != len(names) - len(gone):
        raise Vox2VoxError(f"{present.shape[0]} channel(s) given for the {len(names) - len(gone)} present of "
                           f"{', '.join(names)} (absent: {', '.join(gone) or 'none'})")
    # An all-zero channel adds no foreground voxel (foreground_mask), so normalisation and cropping
    # follow the present channels; it is set to 0 again after preprocessing all the same.
    full = np.zeros((len(names), *present.shape[1:]), np.float32)
    kept = iter(present)
    for index, name in enumerate(names):
        if name not in gone:
            full[index] = next(kept)
    image, _, record = preprocess(full, None, spacing=spacing, config=prep, mask=mask)
    indices = [names.index(n) for n in gone]
    absent_channels(image, indices)
    record["intensity"] = [None if i in indices else s for i, s in enumerate(record["intensity"])]
    record["absent"] = gone
    return image, record
