"""Synthetic head phantoms with a BraTS-like tumour: the embedded demo data and test fixtures.

A phantom is an ellipsoidal "head" whose outside is exactly 0 (as in skull-stripped BraTS), with a
cerebrospinal-fluid rim, grey matter cortex, white matter and two ventricles, and (usually) one
tumour of irregular shape: a necrotic core (label 1) inside an enhancing rim (label 4) inside an
oedema shell (label 2). The four channels mimic the MRI contrasts a radiologist reads BraTS with:

=========  ========  ========  ========  ========  ========  =========
channel    WM        GM        CSF       oedema    enhanc.   necrosis
=========  ========  ========  ========  ========  ========  =========
T1         bright    mid       dark      mid-dark  mid       dark
T1ce       bright    mid       dark      mid-dark  VERY      dark
T2         dark      mid       VERY      bright    mid       bright
FLAIR      dark      mid       dark      VERY      bright    mid
=========  ========  ========  ========  ========  ========  =========

Then a slight partial-volume blur, a smooth multiplicative bias field per channel, Rician noise
and a per-channel scanner gain. All randomness comes from the caller's ``numpy.random.Generator``,
so a phantom is a pure function of its generator state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from vox2vox.atomic import atomic_path
from vox2vox.errors import Vox2VoxError

#: Channel order of :func:`make_phantom` images and the BraTS 2018-21 file suffixes.
CHANNELS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

# Mean intensity per tissue and channel (columns follow CHANNELS). Arbitrary units before the
# per-channel gain; chosen so each tumour compartment differs from its neighbours by >= 5 noise
# sigmas in at least one channel (the phantoms must be learnable in a few CPU minutes).
_TISSUE_INTENSITY: dict[str, tuple[float, float, float, float]] = {
    "wm": (0.85, 0.85, 0.45, 0.50),
    "gm": (0.62, 0.62, 0.62, 0.62),
    "csf": (0.22, 0.22, 1.30, 0.18),
    "oedema": (0.50, 0.52, 1.10, 1.30),
    "enhancing": (0.60, 1.50, 0.82, 1.00),
    "necrosis": (0.28, 0.30, 1.22, 0.78),
}

_NOISE_SIGMA = 0.04
_BIAS_STRENGTH = 0.15


def make_phantom(
    *,
    shape: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    rng: np.random.Generator,
    p_empty: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Make one phantom.

    Args:
        shape: array shape ``(D, H, W)`` in voxels; each side at least 16.
        spacing: voxel size in mm along the same three axes. Anatomy is laid out in mm, so an
            anisotropic spacing gives the same head sampled more coarsely along that axis.
        rng: the only source of randomness.
        p_empty: probability of a tumour-free phantom (label all 0), to exercise empty-mask rules.

    Returns:
        ``(image, label)``: image float32 ``(4, D, H, W)`` with channels ``CHANNELS`` =
        (t1, t1ce, t2, flair), exactly 0 outside the head and positive inside; label uint8
        ``(D, H, W)`` with BraTS values 0 background, 1 necrotic core, 2 oedema, 4 enhancing.
    """
    shape_t = tuple(int(s) for s in shape)
    spacing_a = np.asarray(spacing, dtype=np.float64)
    if len(shape_t) != 3 or min(shape_t) < 16:
        raise ValueError(f"shape must be three sizes >= 16, got {tuple(shape)}")
    if spacing_a.shape != (3,) or np.any(spacing_a <= 0):
        raise ValueError(f"spacing must be three positive sizes in mm, got {tuple(spacing)}")
    if not 0.0 <= p_empty <= 1.0:
        raise ValueError(f"p_empty must be a probability in [0, 1], got {p_empty}")

    # Physical coordinates (mm) centred on the volume, one open grid per axis (cheap broadcasting).
    half_extent = 0.5 * np.asarray(shape_t) * spacing_a
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape_t, spacing_a, strict=True)]
    grid = np.meshgrid(*axes, indexing="ij", sparse=True)

    # Head: an ellipsoid filling ~85% of the field of view, its surface wobbled by smooth noise.
    head_axes = half_extent * rng.uniform(0.80, 0.90, size=3)
    head_r = _ellipsoid_radius(grid, centre=np.zeros(3), semi_axes=head_axes)
    head_r = head_r + 0.03 * _smooth_noise(shape_t, rng=rng)
    head = head_r < 1.0
    brain = head_r < 0.92
    cortex_depth = rng.uniform(0.74, 0.80)
    wm = head_r + 0.05 * _smooth_noise(shape_t, rng=rng) < cortex_depth

    # Two ventricles either side of the midline (first axis = left-right in BraTS arrays).
    csf = head & ~brain
    for side in (-1.0, 1.0):
        v_centre = np.array([side * 0.12, -0.05, 0.05]) * head_axes
        v_axes = head_axes * np.array([0.08, 0.25, 0.12]) * rng.uniform(0.85, 1.15, size=3)
        csf |= _ellipsoid_radius(grid, centre=v_centre, semi_axes=v_axes) < 1.0

    tissue: dict[str, np.ndarray] = {
        "csf": csf,
        "wm": wm & ~csf,
        "gm": brain & ~wm & ~csf,
    }
    label = np.zeros(shape_t, dtype=np.uint8)
    if rng.uniform() >= p_empty:
        label = _tumour_labels(grid, shape_t, half_extent=half_extent, head_axes=head_axes, rng=rng)
        label[~brain] = 0
        tumour = label > 0
        for name in ("csf", "wm", "gm"):
            tissue[name] = tissue[name] & ~tumour
        tissue["oedema"] = label == 2
        tissue["enhancing"] = label == 4
        tissue["necrosis"] = label == 1

    image = np.empty((len(CHANNELS), *shape_t), dtype=np.float32)
    for c in range(len(CHANNELS)):
        clean = np.zeros(shape_t, dtype=np.float32)
        for name, mask in tissue.items():
            clean[mask] = _TISSUE_INTENSITY[name][c]
        # Partial-volume blur (in voxels: about 0.7 mm), then bias, noise, gain.
        clean = ndimage.gaussian_filter(clean, sigma=0.7 / spacing_a, mode="constant")
        bias = np.exp(_BIAS_STRENGTH * _smooth_noise(shape_t, rng=rng, coarse=4))
        signal = clean * bias
        # Rician magnitude noise: |signal + complex Gaussian|, as in magnitude MR images.
        n_re = rng.normal(0.0, _NOISE_SIGMA, size=shape_t)
        n_im = rng.normal(0.0, _NOISE_SIGMA, size=shape_t)
        magnitude = np.sqrt((signal + n_re) ** 2 + n_im**2)
        gain = rng.uniform(400.0, 1200.0)
        image[c] = np.where(head, magnitude * gain, 0.0)
    return image, label


def write_brats_folder(
    root: str | Path,
    *,
    n_cases: int,
    seed: int,
    shape: Sequence[int] = (64, 64, 64),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    prefix: str = "Phantom",
    p_empty: float = 0.0,
) -> list[str]:
    """Write ``n_cases`` phantoms under ``root`` in the BraTS 2018-21 folder layout.

    Each case ``<id>`` becomes ``root/<id>/<id>_{t1,t1ce,t2,flair}.nii.gz`` (float32) and
    ``root/<id>/<id>_seg.nii.gz`` (uint8, labels 0/1/2/4). The affine is LPS-like, as in BraTS
    files: ``diag(-sx, -sy, sz)`` with the world origin at the volume centre. Case ``i`` depends
    only on ``(seed, i)``, so asking for more cases leaves the first ones unchanged.

    Returns:
        the case ids in order, ``<prefix>_000``, ``<prefix>_001``, ...
    """
    if n_cases < 0:
        raise ValueError(f"n_cases must be >= 0, got {n_cases}")
    root = Path(root)
    spacing_a = np.asarray(spacing, dtype=np.float64)
    affine = np.diag([-spacing_a[0], -spacing_a[1], spacing_a[2], 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape, dtype=np.float64) - 1.0) / 2.0)

    case_ids: list[str] = []
    children = np.random.SeedSequence(seed).spawn(n_cases)
    for i, child in enumerate(children):
        case_id = f"{prefix}_{i:03d}"
        image, label = make_phantom(
            shape=shape, spacing=spacing, rng=np.random.default_rng(child), p_empty=p_empty
        )
        case_dir = root / case_id
        volumes = [(name, image[c]) for c, name in enumerate(CHANNELS)] + [("seg", label)]
        for name, data in volumes:
            img = nib.Nifti1Image(data, affine)
            img.header.set_xyzt_units(xyz="mm")
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
            target = case_dir / f"{case_id}_{name}.nii.gz"
            try:
                with atomic_path(target) as tmp:
                    nib.save(img, tmp)
            except OSError as err:
                raise Vox2VoxError(f"{target}: cannot write phantom ({err}); check the folder") from err
        case_ids.append(case_id)
    return case_ids


def _ellipsoid_radius(
    grid: Sequence[np.ndarray], *, centre: np.ndarray, semi_axes: np.ndarray
) -> np.ndarray:
    """Normalised ellipsoidal radius (1 on the surface) at each point of an open mm grid."""
    r2 = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, semi_axes, strict=True))
    return np.sqrt(r2)


def _smooth_noise(
    shape: tuple[int, ...], *, rng: np.random.Generator, coarse: int = 6
) -> np.ndarray:
    """Smooth random field of unit standard deviation, shape ``shape``.

    White noise on a ``coarse``^3 lattice, spread over the full grid by separable Gaussian bumps
    (one small matrix product per axis): much cheaper than blurring full-resolution noise or
    spline-zooming, and just as smooth for our purposes. Correlation length ~ size / coarse.
    """
    field = rng.normal(size=(coarse,) * len(shape))
    for axis, n in enumerate(shape):
        positions = (np.arange(n) + 0.5) / n * coarse - 0.5
        basis = np.exp(-0.5 * (positions[:, None] - np.arange(coarse)[None, :]) ** 2)
        # Contract this axis of the coarse field with the (n, coarse) basis, keeping axis order.
        field = np.moveaxis(np.tensordot(basis, field, axes=([1], [axis])), 0, axis)
    std = float(field.std())
    return ((field - field.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def _tumour_labels(
    grid: Sequence[np.ndarray],
    shape: tuple[int, ...],
    *,
    half_extent: np.ndarray,
    head_axes: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """BraTS label map (0/1/2/4) of one irregular tumour placed inside the brain.

    Whole-tumour radius is 25-50% of the smallest half field of view (8-16 voxels at 64^3); the
    enhancing rim occupies the inner ~60% of that radius and the necrotic core the inner ~34%,
    each boundary wobbled by its own smooth noise field so the shells are not concentric spheres.
    """
    radius = float(np.min(half_extent)) * rng.uniform(0.25, 0.50)
    semi_axes = radius * rng.uniform(0.8, 1.2, size=3)
    # Keep the centre where the tumour mostly lies within the brain (normalised radius < 0.92).
    room = np.maximum(0.92 * head_axes - 0.8 * semi_axes, 0.0)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction) + 1e-12
    centre = direction * room * rng.uniform(0.0, 1.0) ** (1.0 / 3.0)

    r = _ellipsoid_radius(grid, centre=centre, semi_axes=semi_axes)
    outer = r + 0.12 * _smooth_noise(shape, rng=rng) < 1.0
    rim = r + 0.08 * _smooth_noise(shape, rng=rng) < rng.uniform(0.55, 0.65)
    core = r + 0.05 * _smooth_noise(shape, rng=rng) < rng.uniform(0.30, 0.38)

    label = np.zeros(shape, dtype=np.uint8)
    label[outer] = 2
    label[rim & outer] = 4
    label[core & rim & outer] = 1
    return label
