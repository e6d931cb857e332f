"""A dataset's fingerprint: what the planner needs to know about the data, read once.

Per case (on the canonical grid, before any preprocessing): voxel spacing, shape, the size of the
foreground box (where the anatomy is, by the background-value rule or the case's mask), each
channel's intensities inside the foreground (percentiles, mean, standard deviation, and whether it
looks like CT in Hounsfield units) and, for labelled cases, the voxel count and connected
components of every class. :func:`summarise` pools the cases into medians and percentiles; the
fingerprint is stored in the plan so that a plan can be recomputed from it without the data.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from vox2vox.data.cases import CaseFiles
from vox2vox.data.labels import LabelConvention, infer_convention
from vox2vox.data.loading import read_case_and_mask
from vox2vox.data.preprocessing import bounding_box, foreground_mask, foreground_stats
from vox2vox.progress import bar_hidden

# Intensities inside the label foreground, pooled over cases, set the CT window (as nnU-Net does);
# a bounded random sample per case keeps the fingerprint small for big volumes.
_SAMPLES_PER_CASE = 20000


@dataclass(frozen=True)
class CaseFingerprint:
    case_id: str
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    foreground_shape: tuple[int, int, int]  # the foreground box, voxels
    channel_stats: tuple[dict[str, float], ...]  # per channel, inside the foreground
    class_voxels: tuple[int, ...] | None  # per class (background first); None without a label
    class_components: tuple[int, ...] | None  # connected components per class (background 0)


@dataclass(frozen=True)
class Fingerprint:
    """Pooled over cases; every field is a plain JSON type."""

    n_cases: int
    n_labelled: int
    channels: tuple[str, ...]
    n_classes: int
    median_spacing: tuple[float, float, float]
    median_foreground_mm: tuple[float, float, float]  # median foreground box in mm
    channel_kind: tuple[str, ...]  # "ct" or "mr" per channel
    channel_percentiles: tuple[tuple[float, float], ...]  # per channel 0.5/99.5 % in the label foreground
    class_fraction: tuple[float, ...]  # share of foreground-box voxels per class, over labelled cases
    median_class_voxels: tuple[float, ...]  # per class, median over the cases that hold it
    median_components: tuple[float, ...]  # per class, median connected-component count

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fingerprint:
        def tup(v: Any) -> Any:
            return tuple(tup(x) for x in v) if isinstance(v, list) else v

        return cls(**{k: tup(v) for k, v in data.items()})


def fingerprint_case(case: CaseFiles, convention: LabelConvention | None, rng: np.random.Generator,
                     ) -> tuple[CaseFingerprint, list[np.ndarray]]:
    """One case's fingerprint, plus per-channel intensity samples inside its label foreground.

    Without a convention, classes are this case's own label values in order (a convention inferred
    from them, bounded like training's): :func:`fingerprint_dataset` maps them onto the dataset's.
    """
    fp, samples, _ = _fingerprint_case(case, convention, rng)
    return fp, samples


def _fingerprint_case(case: CaseFiles, convention: LabelConvention | None, rng: np.random.Generator,
                      ) -> tuple[CaseFingerprint, list[np.ndarray], tuple[int, ...] | None]:
    """:func:`fingerprint_case`, and the label values its classes stand for (None with a convention
    or without a label)."""
    image, label, mask, geometry = read_case_and_mask(case)
    fg = mask if mask is not None else foreground_mask(image)
    box = bounding_box(fg)
    box_shape = tuple(int(hi - lo) for lo, hi in box) if box else tuple(int(n) for n in image.shape[1:])
    stats = foreground_stats(image, fg)
    samples: list[np.ndarray] = []
    voxels = components = label_values = None
    if label is not None:
        if convention is None:
            # Never sized by the largest value: a label map holding 255 or 2**40 is a few classes.
            local, _ = infer_convention(np.unique(label).tolist(), where=case.label)
            label_values = local.source_values
            classes = local.to_classes(label, path=case.label)
        else:
            classes = convention.to_classes(label, path=case.label)
        n = len(label_values) if label_values is not None else convention.n_classes
        counted = classes[classes >= 0]  # the ignore label (class -1) is no class
        voxels = tuple(int(v) for v in np.bincount(counted.ravel(), minlength=n))
        components = (0, *(int(ndimage.label(classes == c)[1]) if voxels[c] else 0 for c in range(1, n)))
        inside = classes > 0
        for channel in image:
            values = channel[inside]
            if values.size > _SAMPLES_PER_CASE:
                values = rng.choice(values, _SAMPLES_PER_CASE, replace=False)
            samples.append(values)
    fp = CaseFingerprint(case.case_id, tuple(float(s) for s in geometry.spacing), tuple(int(s) for s in image.shape[1:]),
                         box_shape, tuple(stats), voxels, components)
    return fp, samples, label_values


def fingerprint_dataset(cases: Sequence[CaseFiles], channels: Sequence[str], convention: LabelConvention | None,
                        *, seed: int = 0, progress: bool = False) -> tuple[Fingerprint, list[CaseFingerprint]]:
    """Read every case once and pool the per-case fingerprints (:func:`summarise`).

    Without a convention, the classes are those training infers from the values present across
    the cases (:func:`vox2vox.data.labels.infer_convention`: at most 64, 0/255 read as binary).
    ``progress`` shows a progress bar on stderr that vanishes when done.
    """
    rng = np.random.default_rng([seed, 0xF1])
    per_case, pooled, case_values = [], [[] for _ in channels], []
    bar = tqdm(cases, desc="plan: reading cases (spacing, shape, intensities, labels)", leave=False,
               disable=bar_hidden(progress), file=sys.stderr)
    for case in bar:
        fp, samples, values = _fingerprint_case(case, convention, rng)
        per_case.append(fp)
        case_values.append(values)
        for i, s in enumerate(samples):
            pooled[i].append(s)
    if convention is None and any(v is not None for v in case_values):
        per_case = _onto_dataset_classes(per_case, case_values, cases)
    return summarise(per_case, channels, pooled), per_case


def _onto_dataset_classes(per_case: list[CaseFingerprint], case_values: list[tuple[int, ...] | None],
                          cases: Sequence[CaseFiles]) -> list[CaseFingerprint]:
    """Per-case classes (each case's own values) renumbered as the dataset's inferred convention's."""
    union = {v for values in case_values if values is not None for v in values}
    where = next((Path(c.label).parent for c in cases if c.label is not None), "label maps")
    dataset, _ = infer_convention(union, where=where)
    mapped = []
    for fp, values in zip(per_case, case_values, strict=True):
        if values is None or fp.class_voxels is None or fp.class_components is None:
            mapped.append(fp)
            continue
        voxels, components = [0] * dataset.n_classes, [0] * dataset.n_classes
        for value, n_vox, n_cc in zip(values, fp.class_voxels, fp.class_components, strict=True):
            c = dataset.class_of(value)
            if c is not None and c >= 0:  # values a case does not hold (count 0) may be unknown
                voxels[c], components[c] = n_vox, n_cc if c else 0
        mapped.append(replace(fp, class_voxels=tuple(voxels), class_components=tuple(components)))
    return mapped


def summarise(per_case: Sequence[CaseFingerprint], channels: Sequence[str],
              label_samples: Sequence[Sequence[np.ndarray]]) -> Fingerprint:
    labelled = [c for c in per_case if c.class_voxels is not None]
    n_classes = max((len(c.class_voxels) for c in labelled), default=1)  # type: ignore[arg-type]
    spacing = np.median([c.spacing for c in per_case], axis=0)
    fg_mm = np.median([np.multiply(c.foreground_shape, c.spacing) for c in per_case], axis=0)
    kinds, percentiles = [], []
    for i in range(len(channels)):
        stats = [c.channel_stats[i] for c in per_case]
        kinds.append("ct" if looks_like_ct(stats) else "mr")
        values = np.concatenate(label_samples[i]) if label_samples and label_samples[i] else np.empty(0)
        if values.size:
            lo, hi = np.percentile(values, [0.5, 99.5])
        else:
            lo, hi = np.median([s["p00_5"] for s in stats]), np.median([s["p99_5"] for s in stats])
        percentiles.append((float(lo), float(hi)))
    voxels = np.zeros(n_classes)
    med_vox, med_cc = [], []
    for k in range(n_classes):
        held = [c for c in labelled if len(c.class_voxels) > k and c.class_voxels[k] > 0]  # type: ignore[arg-type]
        voxels[k] = sum(c.class_voxels[k] for c in held)  # type: ignore[index]
        med_vox.append(float(np.median([c.class_voxels[k] for c in held])) if held else 0.0)  # type: ignore[index]
        med_cc.append(float(np.median([c.class_components[k] for c in held])) if held and k else 0.0)  # type: ignore[index]
    total = voxels.sum()
    fraction = tuple(float(v / total) if total else 0.0 for v in voxels)
    return Fingerprint(
        n_cases=len(per_case), n_labelled=len(labelled), channels=tuple(channels), n_classes=n_classes,
        median_spacing=tuple(float(s) for s in spacing), median_foreground_mm=tuple(float(s) for s in fg_mm),
        channel_kind=tuple(kinds), channel_percentiles=tuple(percentiles), class_fraction=fraction,
        median_class_voxels=tuple(med_vox), median_components=tuple(med_cc),
    )


def looks_like_ct(stats: Sequence[dict[str, float]]) -> bool:
    """Hounsfield units: air near -1000 and bone or contrast above 300, in most cases (MR is >= 0 or z-scored)."""
    votes = [s["min"] <= -500 and s["max"] >= 300 for s in stats]
    return sum(votes) * 2 > len(votes)
