"""Deterministic per-case preprocessing, recorded so that predictions can be mapped back.

Steps, in order, on a canonical ``(C, D, H, W)`` image (and its ``(D, H, W)`` label):

1. CT window: clip Hounsfield units to ``ct_window`` (optional).
2. Normalise each channel (docs/method.md, "Training": z-scored over its non-zero (brain) voxels,
   background 0). "Non-zero" means "not background", where the background value of a channel is
   the most common value on the volume's outer faces: 0 for raw BraTS, a negative constant for the
   pre-normalised BraTS 2015 files, -1000 for CT. A brain mask may replace that rule.
3. Crop to the bounding box of foreground voxels (union over channels).
4. Resample to ``target_spacing`` (trilinear for images, nearest-neighbour for labels).
5. Pad every spatial axis up to a multiple of ``pad_multiple`` (the U-Net halves the grid
   ``depth`` times, so 2^depth), centred.

Each step writes what it did into ``record`` (a JSON-serialisable dict);
:func:`undo_preprocessing` reverses steps 5, 4 and 3 for a label map or a probability map.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from vox2vox.data.guards import check_declared_size
from vox2vox.data.io import Geometry
from vox2vox.data.settings import setting
from vox2vox.errors import Vox2VoxError

Normalize = Literal["zscore-nonzero", "zscore", "ct-window", "none"]
RECORD_VERSION = 1


@dataclass(frozen=True)
class PreprocessConfig:
    """What preprocessing does; every field is a JSON-serialisable plain type.

    normalize: ``zscore-nonzero`` (z-score over foreground voxels, background set to 0; the
        paper's choice), ``zscore`` (over all voxels), ``ct-window`` (clip to ``ct_window`` then
        scale linearly to [0, 1]), or ``none``.
    ct_window: ``(low, high)`` in HU to clip to before normalising; required by ``ct-window``.
    crop_foreground: crop to the foreground bounding box (union over channels).
    target_spacing: resample to this voxel size in mm along the canonical axes; None keeps it.
    pad_multiple: spatial dims are padded up to a multiple of this (1 disables padding).
    cache_dir: folder for preprocessed cases (see ``loading.load_case``); None disables the cache.
    """

    normalize: Normalize = setting(
        "zscore-nonzero",
        "zscore-nonzero (foreground z-score, the paper's), zscore, ct-window or none")
    ct_window: tuple[float, float] | None = setting(
        None,
        "[low, high] HU to clip to before scaling to [0, 1]; needed by ct-window")
    crop_foreground: bool = setting(True, "crop each case to its foreground bounding box")
    target_spacing: tuple[float, float, float] | None = setting(
        None,
        "resample to this voxel size in mm [x, y, z] (the image's voxel axes in nibabel's order, "
        "after reorientation to RAS+; docs/axes.md); null keeps the spacing")
    pad_multiple: int = setting(16, "pad each spatial size up to a multiple of this (1: no padding)", at_most=1024)
    cache_dir: str | None = setting(None, "folder for preprocessed cases (npz + JSON); null: no cache")

    def __post_init__(self) -> None:
        if self.normalize not in ("zscore-nonzero", "zscore", "ct-window", "none"):
            raise Vox2VoxError(
                f"preprocess.normalize={self.normalize!r}: use zscore-nonzero, zscore, "
                "ct-window or none"
            )
        if self.ct_window is not None:
            lo, hi = self.ct_window
            if not lo < hi:
                raise Vox2VoxError(f"preprocess.ct_window={self.ct_window}: need low < high")
            object.__setattr__(self, "ct_window", (float(lo), float(hi)))
        if self.normalize == "ct-window" and self.ct_window is None:
            raise Vox2VoxError(
                "preprocess.normalize='ct-window' needs preprocess.ct_window, e.g. "
                "[-1000, 1000] HU"
            )
        if self.target_spacing is not None:
            if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
                raise Vox2VoxError(
                    f"preprocess.target_spacing={self.target_spacing}: give three positive mm"
                )
            object.__setattr__(
                self, "target_spacing", tuple(float(s) for s in self.target_spacing)
            )
        if int(self.pad_multiple) < 1:
            raise Vox2VoxError(f"preprocess.pad_multiple={self.pad_multiple}: must be >= 1")

    def to_json(self) -> dict:
        """Plain dict of the fields (tuples as lists)."""
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    def fingerprint(self) -> str:
        """Hash of the fields that change the output (``cache_dir`` excluded)."""
        data = self.to_json()
        data.pop("cache_dir")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class LoadedCase:
    """One preprocessed case, ready for patch sampling or whole-volume inference.

    image: float32 ``(C, D, H, W)`` on the preprocessed grid.
    label: int64 ``(D, H, W)`` class indices on the same grid, or None.
    geometry: of the ORIGINAL first channel (canonical), for writing predictions.
    record: what preprocessing did (see :func:`undo_preprocessing`).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    geometry: Geometry
    record: dict = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm of the preprocessed grid."""
        return tuple(self.record.get("spacing", self.geometry.spacing))  # type: ignore[return-value]


def background_value(channel: np.ndarray) -> float:
    """The most common value on the volume's six outer faces (the constant outside the body)."""
    faces = np.concatenate(
        [
            np.take(channel, index, axis=axis).ravel()
            for axis in range(channel.ndim)
            for index in (0, -1)
        ]
    )
    values, counts = np.unique(faces, return_counts=True)
    return float(values[np.argmax(counts)])


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Boolean ``(D, H, W)``: voxels where any channel differs from its background value."""
    mask = np.zeros(image.shape[1:], dtype=bool)
    for channel in image:
        mask |= channel != background_value(channel)
    return mask


def preprocess(
    image: np.ndarray,
    label: np.ndarray | None,
    *,
    spacing: tuple[float, float, float],
    config: PreprocessConfig,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Apply the configured steps to a canonical image ``(C, D, H, W)`` and label ``(D, H, W)``.

    ``spacing`` is the input voxel size in mm; ``mask`` (optional, ``(D, H, W)`` bool) replaces the
    background-value rule for normalisation and cropping (e.g. a brain mask).
    Returns float32 image, int64 label (or None) and the record.
    """
    if image.ndim != 4:
        raise Vox2VoxError(f"preprocess expects (C, D, H, W), got shape {image.shape}")
    image = np.asarray(image, dtype=np.float32)
    record: dict = {
        "version": RECORD_VERSION,
        "config": config.to_json(),
        "original_shape": list(image.shape[1:]),
        "original_spacing": [float(s) for s in spacing],
    }
    if label is not None and label.shape != image.shape[1:]:
        raise Vox2VoxError(
            f"label shape {label.shape} differs from image shape {image.shape[1:]}; "
            "they must share one grid"
        )

    # 1-2. intensities (at the original resolution, where the background is still exact)
    raw = image
    if config.ct_window is not None:
        image = np.clip(image, *config.ct_window)
    if mask is None:
        mask = foreground_mask(image)
    # The input's own intensities (before the window): what prediction compares with the training data's.
    record["intensity"] = foreground_stats(raw, mask)
    image, stats = _normalize(image, mask, config)
    record["channel_stats"] = stats

    # 3. crop to the foreground box (the whole volume when there is no foreground)
    box = bounding_box(mask) if config.crop_foreground else None
    if box is None:
        box = [(0, n) for n in image.shape[1:]]
    slices = tuple(slice(lo, hi) for lo, hi in box)
    image = image[(slice(None), *slices)]
    label = None if label is None else label[slices]
    record["crop"] = [list(b) for b in box]

    # 4. resample
    cropped_shape = image.shape[1:]
    out_spacing = tuple(float(s) for s in spacing)
    if config.target_spacing is not None:
        new_shape = tuple(
            max(1, int(round(n * s / t)))
            for n, s, t in zip(cropped_shape, spacing, config.target_spacing, strict=True)
        )
        if new_shape != tuple(cropped_shape):
            # Before allocating: a tiny target spacing must not resample into more than memory holds.
            check_declared_size(f"preprocess.target_spacing={list(config.target_spacing)}",
                                (image.shape[0], *new_shape), 4, what="resampling would make",
                                fix="choose a coarser target spacing")
            image = np.stack([resize(c, new_shape, order=1) for c in image])
            label = None if label is None else resize(label, new_shape, order=0)
        out_spacing = tuple(
            s * n / m for s, n, m in zip(spacing, cropped_shape, new_shape, strict=True)
        )
    record["resampled_shape"] = list(image.shape[1:])
    record["spacing"] = list(out_spacing)

    # 5. pad (centred) with each channel's normalised background value
    pad = [_pad_amounts(n, config.pad_multiple) for n in image.shape[1:]]
    if any(before or after for before, after in pad):
        fill = [s["background"] for s in stats]
        image = np.stack(
            [np.pad(c, pad, mode="constant", constant_values=f) for c, f in zip(image, fill, strict=True)]
        )
        label = None if label is None else np.pad(label, pad, mode="constant")
    record["pad"] = [list(p) for p in pad]
    record["shape"] = list(image.shape[1:])
    out_label = None if label is None else np.ascontiguousarray(label, dtype=np.int64)
    return np.ascontiguousarray(image, dtype=np.float32), out_label, record


def foreground_stats(image: np.ndarray, mask: np.ndarray) -> list[dict[str, float]]:
    """Per channel of ``image`` ``(C, D, H, W)``: percentiles (0.5, 50, 99.5), mean and standard
    deviation inside ``mask`` (the whole volume when it is empty), and the volume's min and max."""
    stats = []
    for channel in image:
        values = channel[mask] if mask.any() else channel.ravel()
        p = np.percentile(values, [0.5, 50.0, 99.5])
        mean, std = _mean_std(values)
        stats.append({"p00_5": float(p[0]), "median": float(p[1]), "p99_5": float(p[2]), "mean": mean,
                      "std": std, "min": float(channel.min()), "max": float(channel.max())})
    return stats


def _normalize(
    image: np.ndarray, mask: np.ndarray, config: PreprocessConfig
) -> tuple[np.ndarray, list[dict]]:
    """Per-channel intensity normalisation; returns the image and per-channel statistics."""
    out = np.empty_like(image)
    stats = []
    for index, channel in enumerate(image):
        entry: dict = {}
        if config.normalize == "zscore-nonzero":
            values = channel[mask]
            mean, std = _mean_std(values) if values.size else (0.0, 1.0)
            std = std if std > 1e-8 else 1.0
            out[index] = np.where(mask, _scaled(channel, mean, std), 0.0)
            entry.update(mean=mean, std=std, background=0.0)
        elif config.normalize == "zscore":
            mean, std = _mean_std(channel)
            std = std if std > 1e-8 else 1.0
            out[index] = _scaled(channel, mean, std)
            entry.update(mean=mean, std=std, background=(background_value(channel) - mean) / std)
        elif config.normalize == "ct-window":
            lo, hi = config.ct_window  # type: ignore[misc]
            out[index] = (np.clip(channel, lo, hi) - lo) / (hi - lo)
            entry.update(low=lo, high=hi, background=0.0)
        else:
            out[index] = channel
            entry.update(background=background_value(channel))
        stats.append(entry)
    return out, stats


def _mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation; in float64 when float32 overflows (intensities near 3e38)."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = float(values.mean()), float(values.std())
    if not (np.isfinite(mean) and np.isfinite(std)):
        wide = values.astype(np.float64)
        mean, std = float(wide.mean()), float(wide.std())
    return mean, std


def _scaled(channel: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``(channel - mean) / std``, computed in float64 where float32 would overflow."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = (channel - mean) / std
    if not np.all(np.isfinite(out)):
        out = ((channel.astype(np.float64) - mean) / std).astype(np.float32)
    return out


def bounding_box(mask: np.ndarray) -> list[tuple[int, int]] | None:
    """Half-open ``[(lo, hi)] * 3`` of the True voxels, or None when there are none."""
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return None
    return [(int(s.start), int(s.stop)) for s in found[0]]


def _pad_amounts(size: int, multiple: int) -> tuple[int, int]:
    """(before, after) padding that brings ``size`` up to a multiple of ``multiple``, centred."""
    total = (-size) % max(1, int(multiple))
    return total // 2, total - total // 2


def resize(array: np.ndarray, shape: tuple[int, ...], *, order: int) -> np.ndarray:
    """Resample a 3D array onto ``shape`` voxels covering the same physical extent.

    ``grid_mode=True`` aligns voxel EDGES (not centres), which is what changing the voxel size of
    a fixed field of view means. ``order=0`` is nearest-neighbour (labels), 1 trilinear.
    """
    if tuple(array.shape) == tuple(shape):
        return array
    zoom = [n / m for n, m in zip(shape, array.shape, strict=True)]
    if order == 0:
        # Nearest-neighbour by index arithmetic is exact and keeps integer dtypes.
        index = [
            np.minimum(((np.arange(n) + 0.5) * m / n).astype(np.int64), m - 1)
            for n, m in zip(shape, array.shape, strict=True)
        ]
        return array[np.ix_(*index)]
    out = ndimage.zoom(
        array.astype(np.float32, copy=False), zoom, order=order, mode="nearest", grid_mode=True
    )
    if out.shape != tuple(shape):  # guards against rounding in scipy's output-shape formula
        out = out[tuple(slice(0, n) for n in shape)]
        out = np.pad(out, [(0, n - m) for n, m in zip(shape, out.shape, strict=True)], mode="edge")
    return out


def undo_preprocessing(
    classes_or_probs: np.ndarray, record: dict, *, order: int = 0, background_channel: bool = True
) -> np.ndarray:
    """Map a prediction on the preprocessed grid back to the canonical original grid.

    Input: ``(D, H, W)`` class indices, or ``(C, D, H, W)`` per-class probabilities, on the grid
    ``record["shape"]``. Output: the same kind of array on ``record["original_shape"]``: padding
    removed, resampling undone (``order`` 0 nearest for labels; use 1 for probabilities), and voxels
    outside the crop set to background (class 0, or probability 1 for class 0; with
    ``background_channel=False``, for independent region probabilities, probability 0 everywhere).
    """
    array = np.asarray(classes_or_probs)
    probs = array.ndim == 4
    spatial = array.shape[-3:]
    if list(spatial) != list(record["shape"]):
        raise Vox2VoxError(
            f"prediction grid {tuple(spatial)} does not match the preprocessed grid "
            f"{tuple(record['shape'])}; pass the whole-volume prediction"
        )
    unpad = tuple(slice(b, n - a) for (b, a), n in zip(record["pad"], spatial, strict=True))
    array = array[(..., *unpad)]
    crop = [tuple(b) for b in record["crop"]]
    cropped_shape = tuple(hi - lo for lo, hi in crop)
    if tuple(array.shape[-3:]) != cropped_shape:
        if probs:
            array = np.stack([resize(c, cropped_shape, order=order) for c in array])
        else:
            array = resize(array, cropped_shape, order=order)
    original = tuple(record["original_shape"])
    if probs:
        out = np.zeros((array.shape[0], *original), dtype=array.dtype)
        if background_channel:
            out[0] = 1
    else:
        out = np.zeros(original, dtype=array.dtype)
    out[(..., *(slice(lo, hi) for lo, hi in crop))] = array
    return out
