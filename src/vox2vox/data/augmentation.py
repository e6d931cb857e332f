"""Random training-time transforms; every random number comes from the generator passed in.

The paper's scheme (docs/method.md, "Training"): 25% of patches untouched; otherwise flip, brightness
(power law, gain and gamma in [0.8, 1.2]), rotation, scaling and elastic deformation, each with
p = 0.5. The predecessors rotated 0-90 degrees about the array corner; here rotation is up to 30
degrees about the volume centre. Optional scanner effects (bias field, noise, blur, contrast, a
coarser acquisition; :func:`scanner_effects`) imitate what differs between sources.

Rotation, scaling and the elastic field are composed into ONE sampling grid and applied with a
single ``torch.nn.functional.grid_sample`` call (trilinear for images, nearest for labels): one
interpolation blurs less than three, and grid_sample is multi-threaded. The elastic field follows
the ``elasticdeform`` package the authors used: random displacements with standard deviation
``elastic_sigma`` voxels on a coarse ``elastic_points``^3 control grid, smoothly upsampled.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from vox2vox.data.randomised import smooth_noise
from vox2vox.data.settings import setting
from vox2vox.errors import Vox2VoxError

# The effects that make one scanner's images look like another's (docs/method.md, "Training").
SCANNER_EFFECTS = ("p_bias", "p_noise", "p_blur", "p_contrast", "p_lowres")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation probabilities and ranges (paper defaults).

    p_untouched: probability that a patch passes through unchanged.
    p_flip: probability of flipping; then each axis in ``flip_axes`` flips with probability 0.5.
    p_intensity: per-channel power law ``gain * x**gamma`` on the [0, 1]-rescaled foreground.
    p_rotate: rotation about the volume centre, each axis in ``rotate_axes`` by an angle uniform in
        ``[-max_rotation_deg, max_rotation_deg]``.
    p_scale: isotropic zoom by a factor uniform in ``scale_range``.
    p_elastic: elastic deformation, ``elastic_sigma`` voxels on an ``elastic_points``^3 grid.
    """

    p_untouched: float = setting(0.25, "probability that a patch is not augmented at all")
    p_flip: float = setting(0.5, "probability of flipping (each axis of flip_axes then with probability 0.5)")
    flip_axes: tuple[int, ...] = setting(
        (0, 1, 2),
        "axes that may flip (0, 1, 2 = x, y, z after reorientation to RAS+)")
    p_intensity: float = setting(0.5, "probability of a per-channel gain * x^gamma on the foreground")
    gain_range: tuple[float, float] = setting((0.8, 1.2), "range of the intensity gain", within=(0.001, 1000.0))
    gamma_range: tuple[float, float] = setting((0.8, 1.2), "range of the intensity gamma", within=(0.001, 1000.0))
    p_rotate: float = setting(0.5, "probability of a rotation about the volume centre")
    max_rotation_deg: float = setting(30.0, "largest rotation angle per axis, degrees")
    rotate_axes: tuple[int, ...] = setting(
        (0, 1, 2),
        "axes rotated about (0, 1, 2 = x, y, z after reorientation to RAS+)")
    p_scale: float = setting(0.5, "probability of an isotropic zoom")
    scale_range: tuple[float, float] = setting((0.9, 1.1), "range of the zoom factor", within=(0.01, 100.0))
    p_elastic: float = setting(0.5, "probability of an elastic deformation")
    elastic_sigma: float = setting(2.0, "elastic displacement, voxels", within=(0.0, 1000.0))
    elastic_points: int = setting(3, "control points per axis of the elastic grid", at_most=64)
    p_bias: float = setting(
        0.0,
        "probability of a smooth multiplicative bias field on each channel (a scanner's shading; the "
        "foreground keeps its mean and spread, as a re-normalised scan would)")
    bias_strength: float = setting(0.2, "bias field's log-gain standard deviation", within=(0.0, 3.0))
    p_noise: float = setting(0.0, "probability of Gaussian noise on the foreground")
    noise_std: float = setting(
        0.1, "largest noise standard deviation in normalised units (drawn uniform up to it)", within=(0.0, 10.0))
    p_blur: float = setting(0.0, "probability of a Gaussian blur of each channel")
    blur_sigma: tuple[float, float] = setting((0.5, 1.0), "range of the blur's sigma, voxels", within=(0.001, 10.0))
    p_contrast: float = setting(
        0.0, "probability of scaling each channel's foreground about its mean, clipped to its range")
    contrast_range: tuple[float, float] = setting(
        (0.75, 1.25), "range of the contrast factor", within=(0.001, 1000.0))
    p_lowres: float = setting(
        0.0, "probability of simulating a coarser acquisition: down- then up-sampling each channel")
    lowres_range: tuple[float, float] = setting(
        (0.5, 1.0), "range of the down-sampling factor (1 = unchanged)", within=(0.05, 1.0))
    channel_dropout: float = setting(
        0.0,
        "probability that a training patch loses 1 to C-1 of its channels (set to 0, never all); > 0 "
        "trains a model that predicts cases without a channel (predict --missing); 0: off")

    def __post_init__(self) -> None:
        for name in ("p_untouched", "p_flip", "p_intensity", "p_rotate", "p_scale", "p_elastic", "channel_dropout",
                     *SCANNER_EFFECTS):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise Vox2VoxError(f"augment.{name}={value}: must be in [0, 1]")
        for name in ("gain_range", "gamma_range", "scale_range", "blur_sigma", "contrast_range", "lowres_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise Vox2VoxError(f"augment.{name}={(lo, hi)}: need 0 < low <= high")
        if any(a not in (0, 1, 2) for a in (*self.flip_axes, *self.rotate_axes)):
            raise Vox2VoxError("augmentation flip_axes/rotate_axes must be among 0, 1, 2")
        if self.elastic_points < 2 or self.elastic_sigma < 0:
            raise Vox2VoxError("augmentation: elastic_points >= 2 and elastic_sigma >= 0 needed")

    @property
    def scanner_effects(self) -> bool:
        """Whether any of the scanner-like intensity effects (bias, noise, blur, contrast, low
        resolution) can happen."""
        return any(getattr(self, name) > 0 for name in SCANNER_EFFECTS)

    @classmethod
    def off(cls) -> AugmentConfig:
        """A config that never changes a patch (validation, tests)."""
        return cls(p_untouched=1.0)


class Augmenter:
    """Applies :class:`AugmentConfig` to one ``(C, D, H, W)`` image and its ``(D, H, W)`` label."""

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return augmented copies (float32 image, int64 label), shapes unchanged.

        Every decision is drawn from ``rng`` in a fixed order, so the same seed gives the same patch.
        """
        cfg = self.config
        image = np.asarray(image, dtype=np.float32)
        label = np.asarray(label)
        if image.ndim != 4 or label.shape != image.shape[1:]:
            raise Vox2VoxError(
                f"augment expects image (C, D, H, W) and label (D, H, W); got {image.shape}, "
                f"{label.shape}"
            )
        # Draw every parameter up front (always the same number of draws per call).
        untouched = rng.random() < cfg.p_untouched
        do_flip = rng.random() < cfg.p_flip
        flips = rng.random(3) < 0.5
        do_intensity = rng.random() < cfg.p_intensity
        gains = rng.uniform(*cfg.gain_range, size=image.shape[0])
        gammas = rng.uniform(*cfg.gamma_range, size=image.shape[0])
        do_rotate = rng.random() < cfg.p_rotate
        angles = np.deg2rad(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg, size=3))
        do_scale = rng.random() < cfg.p_scale
        zoom = rng.uniform(*cfg.scale_range)
        do_elastic = rng.random() < cfg.p_elastic
        elastic_seed = int(rng.integers(2**31 - 1))
        dropped = drop_channels(image.shape[0], cfg.channel_dropout, rng) if cfg.channel_dropout > 0 else ()
        # One more draw only when scanner effects are on, so runs without them keep their streams.
        scanner_seed = int(rng.integers(2**31 - 1)) if cfg.scanner_effects else None
        if untouched:
            return absent_channels(image.copy(), dropped), label.astype(np.int64)

        if do_flip:
            axes = [a for a in cfg.flip_axes if flips[a]]
            if axes:
                image = np.flip(image, axis=[a + 1 for a in axes])
                label = np.flip(label, axis=axes)
        if do_intensity:
            image = power_law(image, gains, gammas)

        matrix = np.eye(3)
        if do_rotate:
            for axis in cfg.rotate_axes:
                matrix = matrix @ _rotation(axis, angles[axis])
        if do_scale:
            matrix = matrix / zoom  # sampling coordinates shrink -> content grows (zoom in)
        displacement = None
        if do_elastic and cfg.elastic_sigma > 0:
            displacement = elastic_field(
                image.shape[1:], sigma=cfg.elastic_sigma, points=cfg.elastic_points,
                rng=np.random.default_rng(elastic_seed),
            )
        if do_rotate or do_scale or displacement is not None:
            image, label = warp(image, label, matrix=matrix, displacement=displacement)
        if scanner_seed is not None:
            image = scanner_effects(np.asarray(image, dtype=np.float32), cfg, np.random.default_rng(scanner_seed))
        image = absent_channels(np.array(image, dtype=np.float32), dropped)
        return image, np.ascontiguousarray(label, dtype=np.int64)


def drop_channels(n_channels: int, p: float, rng: np.random.Generator) -> tuple[int, ...]:
    """The channels one patch loses under ``channel_dropout = p``: none with probability 1 - p,
    else k of them (k uniform in 1..C-1, the subset uniform), never every one. Always three draws,
    so the draws after it do not depend on the outcome."""
    lose = rng.random() < p
    k = 1 + int(rng.integers(max(n_channels - 1, 1)))
    order = rng.permutation(n_channels)
    if not lose or n_channels < 2:
        return ()
    return tuple(sorted(int(c) for c in order[:k]))


def absent_channels(image: np.ndarray, absent: Sequence[int]) -> np.ndarray:
    """``image`` ``(C, D, H, W)`` with the channels ``absent`` set to 0: how a missing contrast is
    represented, in training (:func:`drop_channels`) and at prediction alike (0 is a normalised
    channel's background and its foreground mean). Changes ``image`` in place and returns it."""
    for c in absent:
        image[c] = 0.0
    return image


def power_law(image: np.ndarray, gains: np.ndarray, gammas: np.ndarray) -> np.ndarray:
    """Per-channel ``gain * x**gamma`` on the foreground rescaled to [0, 1], then scaled back.

    Background (voxels that are 0 in every channel, i.e. outside the brain after z-scoring)
    stays 0, so the augmentation does not invent signal outside the body.
    """
    out = image.copy()
    foreground = np.any(image != 0, axis=0)
    if not foreground.any():
        return out
    for c in range(image.shape[0]):
        values = image[c][foreground]
        lo, hi = float(values.min()), float(values.max())
        if hi - lo < 1e-8:
            continue
        scaled = (values - lo) / (hi - lo)
        out[c][foreground] = (gains[c] * scaled ** gammas[c]) * (hi - lo) + lo
    return out


def scanner_effects(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """``image`` ``(C, D, H, W)`` as another scanner might have shown it: per channel, with the
    probabilities of ``cfg``, a smooth bias field, a coarser acquisition, a blur, a contrast change
    and noise, on the foreground only (voxels non-zero in some channel; the background stays 0).

    The bias field restores the foreground's mean and standard deviation after shading it, since
    the model only ever sees scans that preprocessing z-scored: what differs between scanners after
    that is the shape of the intensity distribution and its spatial shading, not its first moments.
    The contrast change keeps the mean and the channel's range and changes the spread on purpose.
    Every parameter is drawn up front from ``rng`` (always the same draws), then applied. Written
    here rather than taken from MONAI's random intensity transforms because those draw from their
    own ``RandomState`` and act on the whole patch: here every draw comes from the patch's seeded
    generator (resume stays exact) and the background stays 0.
    """
    n_channels, shape = image.shape[0], image.shape[1:]
    draws = [dict(bias=rng.random() < cfg.p_bias, bias_seed=int(rng.integers(2**31 - 1)),
                  lowres=rng.random() < cfg.p_lowres, zoom=rng.uniform(*cfg.lowres_range),
                  blur=rng.random() < cfg.p_blur, sigma=rng.uniform(*cfg.blur_sigma),
                  contrast=rng.random() < cfg.p_contrast, factor=rng.uniform(*cfg.contrast_range),
                  noise=rng.random() < cfg.p_noise, noise_std=rng.uniform(0.0, cfg.noise_std),
                  noise_seed=int(rng.integers(2**31 - 1)))
             for _ in range(n_channels)]
    foreground = np.any(image != 0, axis=0)
    if not foreground.any():
        return image
    out = np.array(image, dtype=np.float32)
    for c, d in enumerate(draws):
        channel = out[c]
        values = channel[foreground]
        mean, std = float(values.mean()), float(values.std())
        if d["bias"] and cfg.bias_strength > 0:
            # Multiplicative on the intensities above the foreground minimum (z-scores can be < 0).
            lo = float(values.min())
            field = np.exp(cfg.bias_strength * smooth_noise(shape, rng=np.random.default_rng(d["bias_seed"]), coarse=3))
            channel[foreground] = _restandardised((values - lo) * field[foreground], mean, std)
        if d["lowres"] and d["zoom"] < 1.0:
            channel[...] = _coarser(channel, d["zoom"])
        if d["blur"]:
            channel[...] = ndimage.gaussian_filter(channel, sigma=d["sigma"], mode="nearest")
        if d["contrast"]:
            values = channel[foreground]
            centre = float(values.mean())
            channel[foreground] = np.clip((values - centre) * d["factor"] + centre, values.min(), values.max())
        if d["noise"] and d["noise_std"] > 0:
            noise = np.random.default_rng(d["noise_seed"]).standard_normal(int(foreground.sum()), dtype=np.float32)
            channel[foreground] += np.float32(d["noise_std"]) * noise
        channel[~foreground] = 0.0
    return out


def _restandardised(values: np.ndarray, mean: float, std: float) -> np.ndarray:
    """``values`` shifted and scaled to the given mean and standard deviation."""
    spread = float(values.std())
    return ((values - values.mean()) / (spread if spread > 1e-8 else 1.0) * std + mean).astype(np.float32)


def _coarser(channel: np.ndarray, zoom: float) -> np.ndarray:
    """``channel`` sampled on a grid ``zoom`` times as fine (nearest), then back (trilinear): the
    partial-volume look of a thicker-slice acquisition, shape unchanged."""
    small = [max(2, int(round(n * zoom))) for n in channel.shape]
    t = torch.from_numpy(np.ascontiguousarray(channel))[None, None]
    down = F.interpolate(t, size=small, mode="nearest")
    return F.interpolate(down, size=channel.shape, mode="trilinear", align_corners=False)[0, 0].numpy()


def _rotation(axis: int, angle: float) -> np.ndarray:
    """3x3 rotation by ``angle`` radians about array axis ``axis``."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


@functools.lru_cache(maxsize=64)
def _spline_zoom_matrix(points: int, size: int) -> np.ndarray:
    """``(size, points)``: column i is the 1D cubic-spline zoom of the i-th unit vector."""
    eye = np.eye(points)
    return np.stack([ndimage.zoom(e, size / points, order=3, mode="nearest", grid_mode=False) for e in eye], axis=1)


def elastic_field(
    shape: tuple[int, ...], *, sigma: float, points: int, rng: np.random.Generator
) -> np.ndarray:
    """Smooth random displacement ``(3, D, H, W)`` in voxels, float32.

    Displacements ~ N(0, sigma^2) on a ``points``^3 control grid (zero at nothing: like
    elasticdeform, the border moves too), cubic-spline upsampled to full size. The spline zoom is
    linear and a product of one 1D zoom per axis, so it is three small matrices applied to the
    control grid (``ndimage.zoom(order=3)`` in 3D gives the same field to ~1e-15, hundreds of times
    slower: it was most of a training sample's augmentation time).
    """
    coarse = rng.normal(0.0, sigma, size=(3, points, points, points))
    d, h, w = (_spline_zoom_matrix(points, n) for n in shape)
    return np.einsum("ia,jb,kc,nabc->nijk", d, h, w, coarse, optimize=True).astype(np.float32)


def warp(
    image: np.ndarray,
    label: np.ndarray,
    *,
    matrix: np.ndarray,
    displacement: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample image (trilinear) and label (nearest) at ``centre + matrix @ (x - centre) + u(x)``.

    ``matrix`` acts on voxel coordinates about the volume centre; ``displacement`` is
    ``(3, D, H, W)`` in voxels. Outside the volume: 0 (image and background label).
    """
    shape = image.shape[1:]
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    coords = np.stack(grids).reshape(3, -1) - centre[:, None].astype(np.float32)
    coords = (matrix.astype(np.float32) @ coords) + centre[:, None].astype(np.float32)
    coords = coords.reshape(3, *shape)
    if displacement is not None:
        coords = coords + displacement
    # grid_sample wants (x, y, z) = (W, H, D) order, normalised to [-1, 1] (align_corners=True).
    norm = np.stack(
        [2 * coords[a] / max(shape[a] - 1, 1) - 1 for a in (2, 1, 0)], axis=-1
    ).astype(np.float32)
    grid = torch.from_numpy(norm)[None]
    img = F.grid_sample(
        torch.from_numpy(np.ascontiguousarray(image))[None], grid, mode="bilinear",
        padding_mode="zeros", align_corners=True,
    )[0].numpy()
    lab = F.grid_sample(
        torch.from_numpy(np.ascontiguousarray(label, dtype=np.float32))[None, None], grid,
        mode="nearest", padding_mode="zeros", align_corners=True,
    )[0, 0].numpy()
    return img, np.rint(lab).astype(np.int64)


def sample_patch(
    image: np.ndarray,
    label: np.ndarray | None,
    patch_size: tuple[int, int, int],
    rng: np.random.Generator,
    *,
    foreground_prob: float = 0.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A random ``patch_size`` crop of image ``(C, D, H, W)`` and label ``(D, H, W)``.

    Volumes smaller than the patch are zero-padded (centred) first. With probability
    ``foreground_prob`` the patch is centred (as far as the borders allow) on a random voxel with
    label > 0, which oversamples small structures such as tumours.
    """
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or min(patch) < 1:
        raise Vox2VoxError(f"patch_size {patch_size}: give three positive sizes")
    shape = image.shape[1:]
    pad = [((max(p - n, 0)) // 2, max(p - n, 0) - (max(p - n, 0)) // 2) for p, n in zip(patch, shape, strict=True)]
    if any(b or a for b, a in pad):
        image = np.pad(image, [(0, 0), *pad])
        label = None if label is None else np.pad(label, pad)
        shape = image.shape[1:]
    use_foreground = rng.random() < foreground_prob
    starts = [int(rng.integers(0, n - p + 1)) for n, p in zip(shape, patch, strict=True)]
    if use_foreground and label is not None:
        voxels = np.flatnonzero(label > 0)
        if voxels.size:
            centre = np.unravel_index(voxels[int(rng.integers(voxels.size))], shape)
            starts = [
                int(np.clip(c - p // 2, 0, n - p)) for c, p, n in zip(centre, patch, shape, strict=True)
            ]
    box = tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))
    out_label = None if label is None else np.ascontiguousarray(label[box])
    return np.ascontiguousarray(image[(slice(None), *box)]), out_label
