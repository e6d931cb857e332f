"""Cases for a translation task: named source and target channels of the same files, one grid.

Sources and targets are channels of one dataset (manifest, BraTS, folders... layouts), named as
the layout names them (:mod:`vox2vox.data.layouts`). Both are normalised by the same rule over the
same voxels: the case's brain/body mask when it has one, else the foreground of the SOURCE
channels (what prediction, which has no target, also uses). So a z-scored target is z-scored over
the source's foreground, and is 0 outside it, exactly like the channels prediction sees.

What a synthesised volume means on disk (:func:`restore_synthesis`): with ``ct-window``
normalisation the window maps back to HU; with ``none`` the values are the target's own units;
with a z-score the target's per-case mean and standard deviation are unknown at prediction time,
so the volume stays z-scored (the NIfTI header's description says so).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from vox2vox.data.augmentation import AugmentConfig, Augmenter, power_law
from vox2vox.data.cases import CaseFiles, DatasetSpec
from vox2vox.data.io import Geometry
from vox2vox.data.loading import read_case_and_mask
from vox2vox.data.preprocessing import (
    LoadedCase,
    PreprocessConfig,
    foreground_mask,
    preprocess,
    resize,
    undo_preprocessing,
)
from vox2vox.errors import Vox2VoxError


def resolve_channels(spec: DatasetSpec, source: Sequence[str] | None, target: Sequence[str], *,
                     where: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(source, target) channel names checked against the dataset's: one line naming the unknown one."""
    have = tuple(spec.channel_names)
    for key, names in (("task.target", target), ("task.source", source or ())):
        unknown = [n for n in names if n not in have]
        if unknown:
            raise Vox2VoxError(f"{where}: {key} channel {unknown[0]!r} is not in this {spec.layout} dataset; "
                               f"its channels are {', '.join(have)}")
    both = [n for n in target if n in (source or ())]
    if both:
        raise Vox2VoxError(f"{where}: channel {both[0]!r} is both a source and the target; a translation cannot "
                           "see its target")
    sources = tuple(source) if source is not None else tuple(c for c in have if c not in target)
    if not sources:
        raise Vox2VoxError(f"{where}: no source channel left: the dataset has only {', '.join(have)}; a translation "
                           "needs at least one channel besides the target")
    return sources, tuple(target)


def read_translation_case(case: CaseFiles, channels: Sequence[str], *, n_source: int,
                          prep: PreprocessConfig) -> tuple[LoadedCase, np.ndarray]:
    """Read ``channels`` (sources first) of ``case`` and preprocess them over the source foreground.

    Returns the preprocessed case (its ``label`` None) and the foreground mask on the case's
    canonical grid: the case's mask file when it has one, else where any source channel differs
    from its background value (after the CT window, as :func:`preprocess` decides it).
    """
    missing = [c for c in channels if c not in case.channels]
    if missing:
        raise Vox2VoxError(f"case {case.case_id}: has no channel {missing[0]!r} (it has {', '.join(case.channels)})")
    files = CaseFiles(case.case_id, {c: case.channels[c] for c in channels}, None, case.mask)
    image, _, mask, geometry = read_case_and_mask(files)
    return prepare_translation_case(case.case_id, image, geometry, mask, n_source=n_source, prep=prep)


def prepare_translation_case(case_id: str, image: np.ndarray, geometry: Geometry, mask: np.ndarray | None, *,
                             n_source: int, prep: PreprocessConfig) -> tuple[LoadedCase, np.ndarray]:
    """:func:`read_translation_case` for channels already read onto the canonical grid (``image``
    ``(C, X, Y, Z)``, sources first; ``mask`` the case's own, or None for the source foreground)."""
    if mask is None:
        source = image[:n_source]
        if prep.ct_window is not None:
            source = np.clip(source, *prep.ct_window)
        mask = foreground_mask(source)
    image, _, record = preprocess(image, None, spacing=geometry.spacing, config=prep, mask=mask)
    return LoadedCase(case_id, image, None, geometry, record), mask


def load_translation_case(case: CaseFiles, source: Sequence[str], target: Sequence[str], *,
                          prep: PreprocessConfig, head: str = "linear") -> LoadedCase:
    """A training/validation case: ``image`` = source then target channels, ``label`` = the
    foreground mask (0/1, int64) on the preprocessed grid, which patch sampling centres patches in.

    With a ``tanh`` head the targets (``ct-window``: in [0, 1]) are mapped to [-1, 1].
    """
    loaded, mask = read_translation_case(case, [*source, *target], n_source=len(source), prep=prep)
    if head == "tanh":
        loaded.image[len(source):] = 2.0 * loaded.image[len(source):] - 1.0
    # The mask on the preprocessed grid: the same crop, resampling (nearest) and padding as the image.
    record = loaded.record
    crop = tuple(slice(lo, hi) for lo, hi in record["crop"])
    on_grid = resize(mask[crop], tuple(record["resampled_shape"]), order=0)
    on_grid = np.pad(on_grid, [tuple(p) for p in record["pad"]])
    loaded.label = on_grid.astype(np.int64)
    return loaded


def restore_synthesis(output: np.ndarray, loaded: LoadedCase, mask: np.ndarray, *, prep: PreprocessConfig,
                      head: str) -> tuple[np.ndarray, str]:
    """The generator's output ``(T, d, h, w)`` on the preprocessed grid -> ``(T, X, Y, Z)`` float32 on the
    case's canonical grid, in the target's intensity scale where it can be restored, and the name of
    that scale (``z-scored``, ``HU``, ``input units``).

    Voxels outside the source foreground ``mask`` are set to the target's normalised background
    (0 after a foreground z-score, the window's low end for CT): the synthesis is defined inside it.
    """
    out = np.asarray(output, dtype=np.float32)
    if head == "tanh":
        out = (out + 1.0) / 2.0
    channels = [undo_preprocessing(c, loaded.record, order=1).astype(np.float32) for c in out]
    restored = np.stack(channels)
    if prep.normalize == "zscore-nonzero":
        restored[:, ~mask] = 0.0
    elif prep.normalize == "ct-window":
        lo, hi = prep.ct_window  # type: ignore[misc]
        restored = np.where(mask, np.clip(restored, 0.0, 1.0) * (hi - lo) + lo, lo).astype(np.float32)
    return restored, intensity_scale(prep)


#: How :func:`restore_synthesis` turns the generator's output into the written volume, per
#: ``preprocess.normalize`` (model cards and export contracts say it in these words).
RESTORE_MEANING = {
    "zscore-nonzero": "z-scored over the source foreground (the target's own mean and standard deviation are unknown "
                      "at prediction time); 0 outside the foreground",
    "zscore": "z-scored over the whole volume (the target's own mean and standard deviation are unknown at "
              "prediction time)",
    "ct-window": "the window's [0, 1] mapped back to Hounsfield units and clipped to the window; the window's low "
                 "end outside the source foreground",
    "none": "the target's own units, as the training files stored them",
}


def intensity_scale(prep: PreprocessConfig) -> str:
    """The name of the scale a synthesised volume is written in: ``z-scored``, ``HU`` or ``input units``."""
    return {"zscore-nonzero": "z-scored", "zscore": "z-scored", "ct-window": "HU"}.get(prep.normalize, "input units")


def head_meaning(head: str) -> str:
    """What the generator's raw output of ``head`` (``linear`` / ``tanh``) is, before restoring."""
    return ("the normalised target (linear, unbounded)" if head == "linear"
            else "the target's [0, 1] window scaled to [-1, 1] (tanh); restored as (y + 1) / 2 first")


def synthesis_description(target: str, scale: str) -> str:
    """The NIfTI ``descrip`` of a synthesised volume (80 bytes at most)."""
    text = f"vox2vox synthetic {target}, {scale}"
    if scale == "z-scored":
        text += " (target mean/std unknown)"
    return text.encode("ascii", "replace")[:79].decode("ascii")


class TranslationAugmenter:
    """The segmentation augmentation for (source + target) stacks: spatial transforms move every
    channel together (trilinear), the intensity power law changes the sources only (the target
    is what the generator must reproduce, not a contrast to become invariant to)."""

    def __init__(self, config: AugmentConfig, n_source: int) -> None:
        self.spatial = Augmenter(dataclasses.replace(config, p_intensity=0.0))
        self.config, self.n_source = config, n_source

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        do_intensity = rng.random() < cfg.p_intensity * (1.0 - cfg.p_untouched)
        gains = rng.uniform(*cfg.gain_range, size=self.n_source)
        gammas = rng.uniform(*cfg.gamma_range, size=self.n_source)
        image, label = self.spatial(image, label, rng)
        if do_intensity:
            image[: self.n_source] = power_law(image[: self.n_source], gains, gammas)
        return image, label
