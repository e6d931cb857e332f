"""Domain-randomised brain scans with tumours: the training data of the shipped prior model.

Each scan is drawn fresh from a seeded generator and never stored. The anatomy varies (head size
and shape, cortex thickness and sulci, ventricles from slit-like to enlarged, deep grey nuclei) and
so do the tumours: one to three lesions from a few millimetres to most of a hemisphere, each an
oedema shell that spreads along white matter around an optional enhancing rim and necrotic core,
pushing the anatomy aside (mass effect), anywhere in the brain, touching ventricles or surface.

No MRI contrast is assumed (docs/prior.md): every tissue gets its own random mean intensity per
scan, half the time around a T1-, T1ce-, T2- or FLAIR-like ordering and half the time fully at
random, with the one constraint that the whole tumour differs from the white matter around it
(brighter or darker) so a label is visible in the image. Then random texture, partial-volume blur
with a random (often anisotropic: thick slices) resolution, a smooth multiplicative bias field,
gamma, Rician noise, and the brain-foreground z-score that ``preprocess.normalize =
zscore-nonzero`` applies to real scans. The label is the whole tumour, 0/1.

Everything comes from the caller's ``numpy.random.Generator``, so a scan is a pure function of
its seed (the training loop seeds each sample by run seed, epoch and index).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

#: The channel name of a model that takes any single MRI contrast (the prior): a case with one
#: channel of any name feeds it.
ANY_MRI = "any-mri"
#: The ``layout`` a model trained on these scans records (no dataset layout: nothing was read).
RANDOMISED = "randomised"

#: Tissue classes in the order of the intensity table; the last three are the tumour.
TISSUES: tuple[str, ...] = ("csf", "gm", "wm", "deep_gm", "oedema", "enhancing", "necrosis")

# Realistic orderings (relative means per tissue, same order as TISSUES) for the half of the scans
# that follow a known contrast; jittered per scan. From the MR appearance of glioma: oedema bright
# on T2/FLAIR, dark on T1; the rim enhances on T1ce.
_TEMPLATES: dict[str, tuple[float, ...]] = {
    "t1": (0.20, 0.58, 0.82, 0.66, 0.45, 0.55, 0.25),
    "t1ce": (0.20, 0.58, 0.80, 0.66, 0.45, 1.00, 0.25),
    "t2": (1.00, 0.62, 0.42, 0.55, 0.85, 0.70, 0.95),
    "flair": (0.15, 0.58, 0.45, 0.52, 1.00, 0.80, 0.60),
}


@dataclass(frozen=True)
class PriorRanges:
    """The ranges every scan's parameters are drawn from (recorded in the prior's model card)."""

    shape: tuple[int, int, int] = (80, 96, 80)  # voxels, (x, y, z) in RAS order
    spacing_mm: float = 2.0
    brain_semi_axes_mm: tuple[tuple[float, float], ...] = ((58.0, 76.0), (70.0, 96.0), (52.0, 72.0))
    p_no_tumour: float = 0.08
    lesions: tuple[int, int] = (1, 3)
    lesion_radius_mm: tuple[float, float] = (4.0, 45.0)  # outer reach, log-uniform; the first >= 12 mm
    mass_effect: tuple[float, float] = (0.0, 0.45)  # displacement, as a fraction of the radius
    p_template_contrast: float = 0.5
    min_tumour_contrast: float = 0.12  # |oedema - white matter|, intensities in [0, 1]
    texture_std: tuple[float, float] = (0.0, 0.06)
    resolution_mm: tuple[float, float] = (1.0, 6.0)  # effective voxel size per axis (blur)
    bias_strength: tuple[float, float] = (0.0, 0.35)
    gamma: tuple[float, float] = (0.7, 1.5)
    noise_std: tuple[float, float] = (0.005, 0.06)

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def randomised_scan(rng: np.random.Generator, ranges: PriorRanges = PriorRanges()) -> tuple[np.ndarray, np.ndarray]:
    """One scan: image float32 ``(1, X, Y, Z)``, z-scored inside the brain and 0 outside, and the
    whole-tumour label uint8 ``(X, Y, Z)`` (0/1), on the grid ``ranges.shape`` at ``ranges.spacing_mm``."""
    shape = ranges.shape
    step = ranges.spacing_mm
    axes = [((np.arange(n) - (n - 1) / 2.0) * step).astype(np.float32) for n in shape]
    semi = np.array([rng.uniform(*r) for r in ranges.brain_semi_axes_mm], dtype=np.float32)
    centre_shift = rng.normal(0.0, 3.0, size=3).astype(np.float32)
    coords = np.stack(np.meshgrid(*(a - s for a, s in zip(axes, centre_shift, strict=True)), indexing="ij"))

    lesions = _draw_lesions(rng, semi, ranges)
    # Mass effect: anatomy is looked up closer to each lesion's centre, so it appears pushed away.
    anatomy_at = coords.copy()
    for centre, radii, push in lesions:
        offset = coords - centre[:, None, None, None]
        length = np.sqrt(np.sum(offset**2, axis=0)) + 1e-3
        falloff = np.exp(-0.5 * (length / (1.5 * radii.mean())) ** 2) * push * radii.mean()
        # Never past the centre: the shift is at most the distance to it.
        anatomy_at -= offset * (np.minimum(falloff, 0.9 * length) / length)

    tissue = _anatomy(anatomy_at, semi, shape, rng)
    brain = tissue >= 0
    label = np.zeros(shape, dtype=np.uint8)
    for centre, radii, _ in lesions:
        part = _tumour(coords, centre, radii, tissue, shape, rng)
        take = (part >= 0) & brain & (label == 0)
        tissue[take] = part[take]
        label[take] = 1

    image = _render(tissue, brain, shape, rng, ranges)
    return image[None], label


def smooth_noise(shape: tuple[int, ...], *, rng: np.random.Generator, coarse: int = 6) -> np.ndarray:
    """Smooth random field, unit standard deviation, correlation length about ``size / coarse``:
    white noise on a ``coarse``^3 lattice spread by separable Gaussian bumps, in float32 with one
    matrix product per axis (the demo phantoms' float64 version costs 5x more at this size)."""
    field = rng.normal(size=(coarse,) * 3).astype(np.float32)
    bases = []
    for n in shape:
        positions = (np.arange(n, dtype=np.float32) + 0.5) / n * coarse - 0.5
        bases.append(np.exp(-0.5 * (positions[:, None] - np.arange(coarse, dtype=np.float32)[None, :]) ** 2))
    field = np.einsum("ia,abc->ibc", bases[0], field, optimize=True)
    field = np.einsum("jb,ibc->ijc", bases[1], field, optimize=True)
    field = (field.reshape(-1, coarse) @ bases[2].T).reshape(shape)
    field -= field.mean()
    std = float(field.std())
    return field / (std if std > 0 else 1.0)


def _draw_lesions(rng: np.random.Generator, semi: np.ndarray,
                  ranges: PriorRanges) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(centre mm, semi-axes mm, mass effect) of each lesion; none with ``p_no_tumour``."""
    if rng.uniform() < ranges.p_no_tumour:
        return []
    lo, hi = ranges.lesions
    count = int(rng.integers(lo, hi + 1))
    out = []
    for index in range(count):
        low = max(ranges.lesion_radius_mm[0], 12.0) if index == 0 else ranges.lesion_radius_mm[0]
        radius = float(np.exp(rng.uniform(np.log(low), np.log(ranges.lesion_radius_mm[1]))))
        radii = (radius * rng.uniform(0.7, 1.3, size=3)).astype(np.float32)
        # Anywhere in the brain, the centre inside it: lesions may reach the surface or ventricles.
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction) + 1e-12
        depth = rng.uniform(0.0, 0.85) ** 0.5
        centre = (direction * depth * semi).astype(np.float32)
        push = float(rng.uniform(*ranges.mass_effect)) * min(1.0, radius / 20.0)
        out.append((centre, radii, push))
    return out


def _radius(coords: np.ndarray, centre: np.ndarray, semi: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(((coords - centre[:, None, None, None]) / semi[:, None, None, None]) ** 2, axis=0))


def _anatomy(at: np.ndarray, semi: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Tissue index per voxel (index into TISSUES; -1 outside the brain) at warped coordinates."""
    r = _radius(at, np.zeros(3, np.float32), semi) + 0.04 * smooth_noise(shape, rng=rng)
    brain = r < 1.0
    tissue = np.full(shape, -1, dtype=np.int8)
    cortex = rng.uniform(0.72, 0.86)
    wm = r + 0.06 * smooth_noise(shape, rng=rng) < cortex
    tissue[brain] = TISSUES.index("gm")
    tissue[brain & wm] = TISSUES.index("wm")
    # Sulci: CSF where fine noise peaks in the cortex band, more of it in atrophic brains.
    sulci = smooth_noise(shape, rng=rng, coarse=18) > rng.uniform(0.6, 1.6)
    tissue[brain & ~wm & sulci] = TISSUES.index("csf")
    # A thin CSF rim at the brain's surface (left by skull stripping).
    tissue[brain & (r > rng.uniform(0.95, 0.99))] = TISSUES.index("csf")
    # Deep grey nuclei and ventricles either side of the midline (x = left-right).
    for side in (-1.0, 1.0):
        nucleus = np.array([side * 0.22, rng.uniform(-0.05, 0.1), rng.uniform(-0.05, 0.1)], np.float32) * semi
        n_axes = semi * np.array([0.10, 0.16, 0.12], np.float32) * rng.uniform(0.8, 1.2, size=3).astype(np.float32)
        tissue[brain & (_radius(at, nucleus, n_axes) < 1.0)] = TISSUES.index("deep_gm")
    enlarge = rng.uniform(0.6, 1.9)
    for side in (-1.0, 1.0):
        v_centre = np.array([side * 0.10, rng.uniform(-0.1, 0.05), rng.uniform(0.0, 0.15)], np.float32) * semi
        v_axes = semi * np.array([0.07, 0.30, 0.12], np.float32) * enlarge
        v_axes *= rng.uniform(0.85, 1.15, size=3).astype(np.float32)
        tissue[brain & (_radius(at, v_centre, v_axes) < 1.0)] = TISSUES.index("csf")
    return tissue


def _tumour(coords: np.ndarray, centre: np.ndarray, radii: np.ndarray, tissue: np.ndarray,
            shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Tumour tissue index per voxel (-1 outside this lesion): oedema around an optional rim
    and core; the oedema's outer reach is larger in white matter, as vasogenic oedema spreads."""
    r = _radius(coords, centre, radii)
    rough = rng.uniform(0.05, 0.3)
    core_r = r + rough * smooth_noise(shape, rng=rng, coarse=8)
    reach = rng.uniform(1.0, 2.2)  # the oedema's reach in white matter, in solid-tumour radii
    in_wm = tissue == TISSUES.index("wm")
    oedema = core_r < np.where(in_wm, 1.0, (1.0 + 0.3 * (reach - 1.0)) / reach)
    part = np.full(shape, -1, dtype=np.int8)
    part[oedema] = TISSUES.index("oedema")
    solid = core_r < 1.0 / reach
    if rng.uniform() < 0.7:  # enhancing rim and (usually) a necrotic core
        part[solid] = TISSUES.index("enhancing")
        if rng.uniform() < 0.75:
            part[core_r < rng.uniform(0.35, 0.75) / reach] = TISSUES.index("necrosis")
    elif rng.uniform() < 0.5:  # a non-enhancing solid part, darker or brighter than the oedema
        part[solid] = TISSUES.index("necrosis")
    return part


def _intensities(rng: np.random.Generator, ranges: PriorRanges) -> np.ndarray:
    """Mean intensity per tissue in [0, 1]: a jittered contrast template or fully random, always
    with the oedema ``min_tumour_contrast`` away from the white matter."""
    wm, oedema = TISSUES.index("wm"), TISSUES.index("oedema")
    while True:
        if rng.uniform() < ranges.p_template_contrast:
            template = np.array(list(_TEMPLATES.values())[int(rng.integers(len(_TEMPLATES)))])
            means = np.clip(template + rng.normal(0.0, 0.07, size=len(TISSUES)), 0.02, 1.0)
        else:
            means = rng.uniform(0.02, 1.0, size=len(TISSUES))
        if abs(means[oedema] - means[wm]) >= ranges.min_tumour_contrast:
            return means.astype(np.float32)


def _render(tissue: np.ndarray, brain: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator,
            ranges: PriorRanges) -> np.ndarray:
    """Intensities from tissue indices, then texture, blur, bias, gamma, noise and the z-score."""
    means = _intensities(rng, ranges)
    image = means[np.clip(tissue, 0, None)].astype(np.float32)
    texture = smooth_noise(shape, rng=rng, coarse=20)
    image += rng.uniform(*ranges.texture_std) * texture
    image[~brain] = 0.0
    # Resolution: blur per axis as a scan of that voxel size resampled to this grid would be.
    resolution = rng.uniform(*ranges.resolution_mm, size=3)
    if rng.uniform() < 0.6:  # most scans are sharp in-plane: one thick axis at most
        thick = int(rng.integers(3))
        resolution = np.where(np.arange(3) == thick, resolution, rng.uniform(ranges.resolution_mm[0], 2.0, size=3))
    sigma = np.sqrt(np.maximum(resolution**2 - ranges.spacing_mm**2, 0.0)) / (2.355 * ranges.spacing_mm)
    if np.any(sigma > 0.05):
        image = ndimage.gaussian_filter(image, sigma=np.maximum(sigma, 0.0), mode="constant")
    image *= np.exp(rng.uniform(*ranges.bias_strength) * smooth_noise(shape, rng=rng, coarse=4))
    image = np.clip(image, 0.0, None) ** rng.uniform(*ranges.gamma)
    noise = rng.uniform(*ranges.noise_std)
    real = image + rng.normal(0.0, noise, size=shape).astype(np.float32)
    imag = rng.normal(0.0, noise, size=shape).astype(np.float32)
    image = np.sqrt(real * real + imag * imag)
    values = image[brain]
    mean, std = float(values.mean()), float(values.std())
    return np.where(brain, (image - mean) / (std if std > 1e-6 else 1.0), 0.0).astype(np.float32)


def unlike_randomised_scans(record: dict, ranges: PriorRanges = PriorRanges()) -> list[str]:
    """How a case (its preprocessing ``record``) is unlike the scans a prior trained on, one phrase
    each: the prior knows skull-stripped whole brains, so a foreground wider than any of its brains
    (a head with skull, a background that is not zero) or far thinner (a slab) is out of its world.
    Compared as sorted extents, so the orientation does not matter."""
    crop, spacing = record.get("crop"), record.get("original_spacing")
    if not crop or not spacing:
        return []
    extents = sorted((hi - lo) * float(s) for (lo, hi), s in zip(crop, spacing, strict=False))
    smallest = min(2.0 * lo for lo, _ in ranges.brain_semi_axes_mm)
    largest = max(2.0 * hi for _, hi in ranges.brain_semi_axes_mm)
    problems = []
    if extents[-1] > 1.15 * largest:
        problems.append(f"foreground {extents[-1]:.0f} mm across, wider than any skull-stripped brain the prior "
                        f"saw (up to {largest:.0f} mm): skull, neck or a non-zero background?")
    if extents[0] < 0.6 * smallest:
        problems.append(f"foreground only {extents[0]:.0f} mm thick where the prior's brains are at least "
                        f"{smallest:.0f} mm: a slab, not the whole brain?")
    return problems
