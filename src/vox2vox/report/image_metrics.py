"""Intensity agreement of a synthesised volume with the real one, inside a brain/body mask.

MAE, PSNR and SSIM are MONAI's (``MAEMetric``, ``PSNRMetric``, ``compute_ssim_and_cs`` with the
standard 11^3 Gaussian window, sigma 1.5, k1 0.01, k2 0.03), restricted to the mask:

- MAE and PSNR over the voxels inside the mask only;
- SSIM: the SSIM map (each window's local statistics) averaged over the mask voxels whose whole
  window lies inside the volume; outside the mask both volumes are 0 (after normalisation), so
  windows at the brain's edge see the same background on both sides.

The data range of PSNR and SSIM is the real volume's (max - min) inside the mask.

Normalisation (:func:`normalise_pair`): both volumes are z-scored over the mask, each with its
own mean and standard deviation. A synthesised MR contrast is z-scored (its intensity scale cannot
be known), the real one is in scanner units: z-scoring both puts them on one scale without
favouring either, and makes the scores independent of a global gain or offset.
"""

from __future__ import annotations

import numpy as np
import torch

from vox2vox.errors import Vox2VoxError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def zscore_in_mask(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(volume - mean) / std`` over the mask's voxels (float64 statistics), 0 outside the mask."""
    values = volume[mask].astype(np.float64)
    if values.size == 0:
        raise Vox2VoxError("the mask is empty: nothing to score")
    std = float(values.std())
    out = (volume.astype(np.float64) - float(values.mean())) / (std if std > 1e-12 else 1.0)
    return np.where(mask, out, 0.0).astype(np.float32)


def normalise_pair(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both volumes z-scored over ``mask``, each by its own statistics (the module docstring says why)."""
    return zscore_in_mask(pred, mask), zscore_in_mask(truth, mask)


def data_range(truth: np.ndarray, mask: np.ndarray) -> float:
    """The real volume's (max - min) inside the mask (1 for a constant one)."""
    values = truth[mask]
    span = float(values.max() - values.min()) if values.size else 0.0
    return span if span > 0 else 1.0


def mae(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute error over the mask's voxels (MONAI's ``MAEMetric``)."""
    # Lazy: MONAI takes seconds to import and only scoring a translation needs it.
    from monai.metrics import MAEMetric

    p, t = _masked(pred, truth, mask)
    return float(MAEMetric(reduction="mean")(p, t).item())


def psnr(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, *, value_range: float) -> float:
    """PSNR in dB over the mask's voxels, ``10 log10(range^2 / MSE)`` (MONAI's ``PSNRMetric``); inf when equal."""
    from monai.metrics import PSNRMetric  # lazy: see mae

    p, t = _masked(pred, truth, mask)
    if float(((p - t) ** 2).sum()) == 0.0:
        return float("inf")
    return float(PSNRMetric(max_val=value_range, reduction="mean")(p, t).item())


def ssim(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, *, value_range: float,
         window: int = SSIM_WINDOW) -> float:
    """Mean SSIM over the mask (module docstring): MONAI's SSIM map on the mask's bounding box
    (plus half a window, so boundary voxels keep their full windows where the volume allows)."""
    from monai.metrics.regression import compute_ssim_and_cs  # lazy: see mae

    if pred.shape != truth.shape or mask.shape != truth.shape:
        raise Vox2VoxError(f"SSIM needs volumes of one shape; got {pred.shape}, {truth.shape}, mask {mask.shape}")
    window = min(window, *(s - (1 - s % 2) for s in truth.shape))
    if window < 3:
        raise Vox2VoxError(f"volume of shape {truth.shape} is too small for an SSIM window (at least 3 voxels per axis)")
    half = window // 2
    where = np.argwhere(mask)
    if where.size == 0:
        raise Vox2VoxError("the mask is empty: nothing to score")
    lo = np.maximum(where.min(0) - half, 0)
    hi = np.minimum(where.max(0) + 1 + half, truth.shape)
    # At least one full window along every axis.
    for axis, n in enumerate(truth.shape):
        if hi[axis] - lo[axis] < window:
            lo[axis] = max(0, min(lo[axis], n - window))
            hi[axis] = lo[axis] + window
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    p = torch.from_numpy(np.ascontiguousarray(pred[box], dtype=np.float32))[None, None]
    t = torch.from_numpy(np.ascontiguousarray(truth[box], dtype=np.float32))[None, None]
    with torch.inference_mode():
        ssim_map, _ = compute_ssim_and_cs(p, t, spatial_dims=3, kernel_size=[window] * 3,
                                          kernel_sigma=[SSIM_SIGMA] * 3, data_range=value_range)
    # The map's voxel i is the window centred at i + half of the box ('valid' convolution).
    centres = mask[box][half: half + ssim_map.shape[2], half: half + ssim_map.shape[3], half: half + ssim_map.shape[4]]
    values = ssim_map[0, 0].numpy()[centres]
    if values.size == 0:
        raise Vox2VoxError("no mask voxel has a full SSIM window inside the volume")
    return float(values.mean())


def translation_scores(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, *, normalise: bool = True,
                       with_ssim: bool = True) -> dict[str, float]:
    """MAE, PSNR and (with ``with_ssim``) SSIM of ``pred`` against ``truth`` inside ``mask``,
    after :func:`normalise_pair` unless ``normalise`` is False (volumes already on one scale)."""
    mask = np.asarray(mask, dtype=bool)
    if normalise:
        pred, truth = normalise_pair(pred, truth, mask)
    span = data_range(truth, mask)
    scores = {"mae": mae(pred, truth, mask), "psnr": psnr(pred, truth, mask, value_range=span)}
    if with_ssim:
        scores["ssim"] = ssim(pred, truth, mask, value_range=span)
    scores["voxels"] = float(mask.sum())
    return scores


def _masked(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != truth.shape or mask.shape != truth.shape:
        raise Vox2VoxError(f"volumes differ in shape: {pred.shape}, {truth.shape}, mask {mask.shape}")
    if not mask.any():
        raise Vox2VoxError("the mask is empty: nothing to score")
    p = torch.from_numpy(np.ascontiguousarray(pred[mask], dtype=np.float32))[None, None]
    t = torch.from_numpy(np.ascontiguousarray(truth[mask], dtype=np.float32))[None, None]
    return p, t


#: The HU window of the synthesis challenges (SynthRAD 2023): both CTs are clipped to it, and its
#: width (4024 HU) is the data range of PSNR and SSIM.
HU_WINDOW = (-1024.0, 3000.0)

#: A real target whose minimum lies at or below this is read as CT in HU (air is -1000 HU; MR
#: intensities, raw or normalised, do not go this low).
HU_FLOOR = -500.0


def is_hounsfield(truth: np.ndarray) -> bool:
    """Whether a real target volume is CT in Hounsfield units (see :data:`HU_FLOOR`)."""
    return bool(truth.size) and float(np.min(truth)) <= HU_FLOOR


def hounsfield_scores(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """A synthetic CT scored on the original HU scale, by the SynthRAD conventions: both clipped to
    :data:`HU_WINDOW`; MAE (HU) and PSNR (dB, data range 4024 HU) over the mask; SSIM (data range
    4024 HU) over the whole volume, and over the mask with everything outside it set to -1024 HU."""
    mask = np.asarray(mask, dtype=bool)
    low, high = HU_WINDOW
    p = np.clip(np.asarray(pred, dtype=np.float32), low, high)
    t = np.clip(np.asarray(truth, dtype=np.float32), low, high)
    span = high - low
    everywhere = np.ones(t.shape, dtype=bool)
    return {
        "mae_hu": mae(p, t, mask),
        "psnr_hu": psnr(p, t, mask, value_range=span),
        "ssim_hu": ssim(p, t, everywhere, value_range=span),
        "ssim_hu_mask": ssim(np.where(mask, p, low), np.where(mask, t, low), mask, value_range=span),
    }
