"""``vox2vox fill-check``: measure whether a translator's synthesis helps a segmenter, and record it.

Every labelled case of the data that has all the segmenter's channels (and the translator's
sources) is segmented three ways, as ``predict`` would: with the real channel; with the
translator's synthesis in its place (``predict --fill-missing``'s loader); and with the channel
absent, 0 after normalisation (``predict --missing``'s loader), which is the segmenter's own route
when it was trained with channel dropout and is called ``zeroed`` otherwise (a reference: such a
model refuses to predict without the channel). Each route's Dice is the mean over the label
convention's evaluation regions (BraTS: whole tumour, tumour core, enhancing tumour), per case and
over the cases. The record (:class:`vox2vox.infer.fill_record.FillRecord`) is written beside the
translator's file, where ``predict --fill-missing`` looks for it.

The cases should be ones neither model was trained on (a validation or test split): the record
cannot check that, and says which cases it measured.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vox2vox.data.cases import CaseFiles
from vox2vox.data.io import read_channels
from vox2vox.data.labels import LabelConvention, round_label_map
from vox2vox.data.layouts import discover
from vox2vox.data.loading import load_case, load_case_without
from vox2vox.errors import Vox2VoxError
from vox2vox.infer import ensemble
from vox2vox.infer.fill_record import FillRecord, ModelRef, Route, write_record
from vox2vox.infer.inference import InferenceConfig, predict_case
from vox2vox.infer.loaded import LoadedModel
from vox2vox.infer.translation import (
    DEFAULT_INFERENCE,
    check_translation_models,
    filling_loader,
    target_index,
)
from vox2vox.progress import bar_hidden
from vox2vox.report.metrics import dice
from vox2vox.version import __version__

#: The smallest mean Dice gain over the fallback route that counts as helping (``--min-gain``).
DEFAULT_MIN_GAIN = 0.01


def fill_check(segmenters: Sequence[LoadedModel], translator: LoadedModel, data: str | Path, *,
               channel: str | None = None, layout: str = "auto", max_cases: int | None = None,
               min_gain: float = DEFAULT_MIN_GAIN, config: InferenceConfig = DEFAULT_INFERENCE,
               device: torch.device | str = "cpu", progress: bool = True, write: bool = True) -> FillRecord:
    """Measure the three routes on the labelled cases under ``data`` (module docstring) and, with
    ``write``, store the record beside the translator's file. ``channel``: the segmenter's channel
    to fill (default: the translator's one target)."""
    convention, head = ensemble.check_ensemble(segmenters)
    check_translation_models([translator])
    seg = segmenters[0]
    channels = tuple(seg.channels or ())
    targets = tuple(translator.config.task.target or ())
    channel = channel or (targets[0] if len(targets) == 1 else None)
    if channel is None:
        raise Vox2VoxError(f"{translator.path} synthesises {', '.join(targets)}: name the one to check with --channel")
    if channel not in channels:
        raise Vox2VoxError(f"--channel {channel}: the segmenter {seg.path} has no channel {channel!r}; its channels "
                           f"are {', '.join(channels) or 'not recorded'}")
    if target_index(translator, channel) is None:
        raise Vox2VoxError(f"--channel {channel}: {translator.path} synthesises {', '.join(targets)}, not {channel}")
    if not 0.0 <= min_gain < 1.0:
        raise Vox2VoxError(f"--min-gain {min_gain}: a Dice difference in [0, 1)")
    spec = discover(data, layout=layout)
    needed = sorted({*channels, *(translator.config.task.source or ())})
    lacking = [n for n in needed if n not in spec.channel_names]
    if lacking:
        raise Vox2VoxError(f"{data}: has no channel {lacking[0]!r}; a fill-check needs cases with every channel of "
                           f"the segmenter and the translator's sources ({', '.join(needed)})")
    cases = [c for c in spec.cases if c.label is not None and not c.absent][:max_cases]
    if not cases:
        raise Vox2VoxError(f"{data}: no labelled case with every channel; a fill-check scores segmentations "
                           "against labels")
    fallback: Route = "absent" if all(ensemble.tolerates_absent(m) for m in segmenters) else "zeroed"
    prep = dataclasses.replace(seg.config.preprocess, cache_dir=None)
    synthesise = filling_loader(channels, {channel: translator}, (), prep=prep, config=config, device=device)
    per_case: dict[str, dict[str, float]] = {}
    per_region: dict[str, dict[str, list[float]]] = {r: {} for r in ("real", "synthesised", fallback)}
    for case in tqdm(cases, desc="fill-check", unit="case", disable=bar_hidden(progress), file=sys.stderr):
        files = CaseFiles(case.case_id, {n: case.channels[n] for n in channels}, None, case.mask)
        loaders = {"real": lambda f=files: load_case(f, convention=None, prep=prep),
                   "synthesised": lambda c=case: synthesise(c),
                   fallback: lambda f=files: load_case_without(f, channels, (channel,), prep=prep)}
        truth = _truth(case, convention)
        per_case[case.case_id] = {}
        for route, load in loaders.items():
            result = predict_case(segmenters, load(), convention=convention, head=head, config=config,
                                  device=device, where=case.case_id)
            if result.labels.shape != next(iter(truth.values())).shape:
                raise Vox2VoxError(f"{case.label}: label map shape differs from the case's channels")
            scores = {name: dice(mask, truth_mask)
                      for (name, mask), truth_mask in zip(convention.region_masks(result.labels).items(),
                                                          truth.values(), strict=True)}
            for name, value in scores.items():
                per_region[route].setdefault(name, []).append(value)
            per_case[case.case_id][route] = float(np.mean(list(scores.values())))
    record = FillRecord(
        channel=channel, segmenters=tuple(ModelRef.of(m.path) for m in segmenters),
        translator=ModelRef.of(translator.path), data=str(data), case_ids=tuple(per_case),
        dice={r: float(np.mean([v[r] for v in per_case.values()])) for r in per_region},
        regions={r: {n: float(np.mean(v)) for n, v in d.items()} for r, d in per_region.items()},
        per_case=per_case, fallback=fallback, min_gain=min_gain,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        versions={"vox2vox": __version__, "torch": torch.__version__})
    if write:
        write_record(record, translator.path)
    return record


def _truth(case: CaseFiles, convention: LabelConvention) -> dict[str, np.ndarray]:
    """The case's label map as the convention's region masks, on the canonical grid predictions use."""
    assert case.label is not None
    data, _ = read_channels(case.label)
    if data.shape[0] != 1:
        raise Vox2VoxError(f"{case.label}: label map must be 3D, got {data.shape[0]} volumes")
    label = round_label_map(data[0])
    if label is None:
        raise Vox2VoxError(f"{case.label}: label map holds values that are not integers")
    return convention.region_masks(label.astype(np.int64))
