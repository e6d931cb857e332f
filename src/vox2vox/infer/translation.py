"""Prediction with translation models: synthesised volumes on disk, and missing channels filled in.

``synthesise_dataset`` writes every case's synthesised target as float32 NIfTI on the input's grid
(preprocessing undone as for label maps, :func:`vox2vox.data.translation.restore_synthesis` for
the intensity scale), named ``<case_id>.nii.gz`` (one target) or ``<case_id>_<target>.nii.gz``.
The header's description says what the values are, e.g. ``vox2vox synthetic flair, z-scored
(target mean/std unknown)``.

``predict_with_filled`` segments cases that lack a channel the segmentation model needs: a
translation model synthesises it from the channels the case has, on the case's own grid, and
the segmentation model's preprocessing then treats it like a real channel; only where a
fill-check record (:mod:`vox2vox.infer.fill_record`) measured that this helps the segmenter.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from vox2vox.data.cases import CaseFiles, DatasetSpec, check_case_id
from vox2vox.data.io import Geometry, write_volume
from vox2vox.data.layouts import discover
from vox2vox.data.loading import preprocess_without, read_case_and_mask
from vox2vox.data.preprocessing import LoadedCase, PreprocessConfig
from vox2vox.data.translation import read_translation_case, restore_synthesis, synthesis_description
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.ensemble import check_absent_allowed, tolerates_absent
from vox2vox.infer.fill_record import decide_fills
from vox2vox.infer.inference import (
    InferenceConfig,
    PredictionReport,
    inference_config,
    predict_dataset,
    predict_probabilities,
)
from vox2vox.infer.loaded import LoadedModel
from vox2vox.infer.options import DEFAULT_OPTIONS, PredictionOptions
from vox2vox.progress import bar_hidden

#: Prediction's default settings (whole volume when it fits, else sliding windows; no flips).
DEFAULT_INFERENCE = InferenceConfig()


def is_translation(model: LoadedModel) -> bool:
    return model.config.task.translate


def check_translation_models(models: Sequence[LoadedModel]) -> None:
    """Every model translates, and an ensemble shares sources, targets, head and preprocessing."""
    if not models:
        raise Vox2VoxError("no model given; pass at least one checkpoint")
    first = models[0]
    for model in models:
        if not is_translation(model):
            raise Vox2VoxError(f"{model.path}: a segmentation model; a translation ensemble takes translation models only")
        task, other = model.config.task, first.config.task
        if (task.source, task.target, task.head) != (other.source, other.target, other.head) or (
                model.config.preprocess != first.config.preprocess):
            raise Vox2VoxError(f"{model.path}: ensemble members must share sources, targets, head and preprocessing "
                               f"with {first.path}")


def synthesise_case(models: Sequence[LoadedModel], case: CaseFiles, *, config: InferenceConfig = DEFAULT_INFERENCE,
                    device: torch.device | str = "cpu") -> tuple[np.ndarray, str, Geometry]:
    """The targets of ``case`` synthesised from its source channels: ``(T, X, Y, Z)`` float32 on the
    case's canonical grid, the intensity scale's name and the grid's geometry."""
    task, prep = models[0].config.task, translation_prep(models[0])
    source = tuple(task.source or ())
    loaded, mask = read_translation_case(case, source, n_source=len(source), prep=prep)
    where = next(iter(case.channels.values()))
    return synthesise_loaded(models, loaded, mask, config=config, device=device, where=where)


def synthesise_loaded(models: Sequence[LoadedModel], loaded: LoadedCase, mask: np.ndarray, *,
                      config: InferenceConfig = DEFAULT_INFERENCE, device: torch.device | str = "cpu",
                      where: object = "input") -> tuple[np.ndarray, str, Geometry]:
    """:func:`synthesise_case` from its preprocessed sources (``data.translation.prepare_translation_case``):
    the network run, the NaN check and the restored intensity scale; the Python API's arrays come here too."""
    out = predict_probabilities([m.generator for m in models], loaded.image, config=config, device=device)
    if not np.all(np.isfinite(out)):
        raise Vox2VoxError(f"{where}: the model's output is NaN/Inf for this case "
                           "(intensities far outside what it was trained on?)")
    restored, scale = restore_synthesis(out, loaded, mask, prep=translation_prep(models[0]),
                                        head=models[0].config.task.head)
    return restored, scale, loaded.geometry


def translation_prep(model: LoadedModel) -> PreprocessConfig:
    """The model's training preprocessing, without the training machine's cache folder."""
    return dataclasses.replace(model.config.preprocess, cache_dir=None)


def discover_sources(model: LoadedModel, input_path: str | Path, *, layout: str = "auto") -> DatasetSpec:
    """The cases under ``input_path`` with the model's source channels, checked before any case runs.

    A single image file (or DICOM series) is the source of a one-source model: its channel,
    which discovery calls ``image``, takes the source's name.
    """
    sources = tuple(model.config.task.source or ())
    spec = discover(input_path, layout=layout)
    if spec.layout == "single" and len(sources) == 1 and sources[0] not in spec.channel_names:
        cases = tuple(dataclasses.replace(c, channels={sources[0]: c.channels["image"]}) for c in spec.cases)
        spec = dataclasses.replace(spec, channel_names=sources, cases=cases)
    _require_channels(spec, sources, input_path, model.path)
    return spec


def synthesise_dataset(models: Sequence[LoadedModel], input_path: str | Path, output_dir: str | Path, *,
                       config: InferenceConfig = DEFAULT_INFERENCE, device: torch.device | str = "cpu",
                       layout: str = "auto", progress: bool = True) -> PredictionReport:
    """Synthesise the targets of every case under ``input_path`` into ``output_dir`` (module docstring)."""
    check_translation_models(models)
    spec = discover_sources(models[0], input_path, layout=layout)
    targets = tuple(models[0].config.task.target or ())
    output_dir = Path(output_dir)
    report = PredictionReport({}, {})
    for case in tqdm(spec.cases, desc="synthesising", unit="case", disable=bar_hidden(progress), file=sys.stderr):
        try:
            volumes, scale, geometry = synthesise_case(models, case, config=config, device=device)
            check_case_id(case.case_id, where=output_dir)
            for name, volume in zip(targets, volumes, strict=True):
                path = output_dir / (f"{case.case_id}.nii.gz" if len(targets) == 1 else f"{case.case_id}_{name}.nii.gz")
                write_volume(volume, geometry, path, dtype=np.float32, description=synthesis_description(name, scale))
                report.written.setdefault(case.case_id, path)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # one bad case must not stop the others
            reason = str(err) if isinstance(err, Vox2VoxError) else f"{type(err).__name__}: {err}"
            report.failed[case.case_id] = " | ".join(p.strip() for p in reason.splitlines() if p.strip())
            if progress:
                tqdm.write(f"{case.case_id}: failed: {report.failed[case.case_id]}", file=sys.stderr)
    return report


def parse_fill(items: Sequence[str]) -> dict[str, str]:
    """``CHANNEL=MODEL`` strings (``--fill-missing``) -> {channel: model path}; one line per mistake."""
    fill: dict[str, str] = {}
    for item in items:
        channel, sep, model = item.partition("=")
        if not sep or not channel.strip() or not model.strip():
            raise Vox2VoxError(f"--fill-missing {item!r}: write CHANNEL=MODEL, e.g. flair=runs/t1-to-flair")
        if channel.strip() in fill:
            raise Vox2VoxError(f"--fill-missing: channel {channel.strip()!r} is given twice")
        fill[channel.strip()] = model.strip()
    return fill


def predict_with_filled(models: Sequence[LoadedModel], fill: Mapping[str, LoadedModel], input_path: str | Path,
                        output_dir: str | Path, options: PredictionOptions = DEFAULT_OPTIONS, *,
                        device: torch.device | str = "cpu", unchecked: bool = False) -> PredictionReport:
    """Segment the cases under ``input_path`` with ``models``, each channel named in ``fill``
    synthesised by its translation model from the channels the case has (module docstring) when
    its fill-check record says the synthesis helps these segmenters
    (:func:`vox2vox.infer.fill_record.fill_decision`): otherwise the channel is left absent (a
    channel-dropout segmenter) or the whole call is refused, before any case, in one line. The
    decisions' lines are the report's ``notes``. ``options.missing``: other channels no case has, left
    absent as ``predict --missing`` does; the rest of ``options`` as :func:`vox2vox.infer.inference.predict_dataset`
    takes them (the synthesis runs as the segmentation does: :func:`inference_config`)."""
    seg, missing = models[0], options.missing
    channels = tuple(seg.channels or ())
    for name in missing:
        if name not in channels or name in fill:
            raise Vox2VoxError(f"--missing {name}: not another channel of {seg.path} ({', '.join(channels)}) "
                               "than the --fill-missing ones")
        for model in models:
            check_absent_allowed(model, name, input_path)
    for name, model in fill.items():
        if name not in channels:
            raise Vox2VoxError(f"--fill-missing {name}: the segmentation model {seg.path} has no channel {name!r}; "
                               f"its channels are {', '.join(channels) or 'not recorded'}")
        check_translation_models([model])
        if target_index(model, name) is None:
            targets = tuple(model.config.task.target or ())
            raise Vox2VoxError(f"--fill-missing {name}: {model.path} synthesises {', '.join(targets)}, not {name}")
    decisions = decide_fills({c: m.path for c, m in fill.items()}, [m.path for m in models],
                             tolerates_absent=all(tolerates_absent(m) for m in models), unchecked=unchecked)
    refused = next((d for d in decisions if d.action == "refuse"), None)
    if refused is not None:
        raise Vox2VoxError(refused.reason)
    absent = (*dict.fromkeys(missing), *(d.channel for d in decisions if d.action == "absent"))
    fill = {c: m for c, m in fill.items() if c not in absent}
    spec = discover(input_path, layout=options.layout)
    # An empty manifest cell of a filled (or left out) channel is what this call supplies; of
    # any other channel it is a hole nothing fills.
    for case in spec.cases:
        hole = next((n for n in case.absent if n not in fill and n not in absent), None)
        if hole is not None:
            raise Vox2VoxError(f"{input_path}: case {case.case_id} has no {hole} file (an empty manifest cell), and "
                               f"nothing fills it: add it to --fill-missing or --missing")
    spec = dataclasses.replace(spec, cases=tuple(dataclasses.replace(c, absent=()) for c in spec.cases))
    needed = {c for c in channels if c not in fill and c not in absent}
    for model in fill.values():
        needed.update(model.config.task.source or ())
    _require_channels(spec, sorted(needed), input_path, seg.path)
    prep = dataclasses.replace(seg.config.preprocess, cache_dir=None)
    loader = filling_loader(channels, fill, absent, prep=prep, config=inference_config(models, options, device),
                            device=device)
    spec = dataclasses.replace(spec, channel_names=channels)
    report = predict_dataset(models, input_path, output_dir, dataclasses.replace(options, missing=()), device=device,
                             spec=spec, load_input=loader)
    report.notes.extend(d.reason for d in decisions)
    return report


def filling_loader(channels: Sequence[str], fill: Mapping[str, LoadedModel], absent: Sequence[str], *, prep: Any,
                    config: InferenceConfig, device: torch.device | str) -> Callable[[CaseFiles], LoadedCase]:
    """A case's preprocessed image in the segmentation model's channel order, filled channels
    synthesised, ``absent`` ones left out (0, as channel dropout trained the model)."""

    def load(case: CaseFiles) -> LoadedCase:
        real = [c for c in channels if c not in fill and c not in absent]
        volumes: dict[str, np.ndarray] = {}
        mask, geometry = None, None
        if real:
            image, _, mask, geometry = read_case_and_mask(CaseFiles(case.case_id, {c: case.channels[c] for c in real},
                                                                    None, case.mask))
            volumes.update(zip(real, image, strict=True))
        for name, model in fill.items():
            synthetic, _, geo = synthesise_case([model], case, config=config, device=device)
            volumes[name] = synthetic[target_index(model, name)]
            if geometry is not None and not geometry.same_grid(geo):
                raise Vox2VoxError(f"case {case.case_id}: the synthesised {name} is not on the grid of the case's "
                                   "other channels; their files must share one grid")
            geometry = geometry or geo
        assert geometry is not None
        present = np.stack([volumes[c] for c in channels if c not in absent]).astype(np.float32)
        image, record = preprocess_without(present, channels, absent, spacing=geometry.spacing, prep=prep, mask=mask)
        return LoadedCase(case.case_id, image, None, geometry, record)

    return load


def target_index(model: LoadedModel, name: str) -> int | None:
    """Which of the model's targets is channel ``name`` (names compared without case: ``FLAIR`` of a
    folders layout is ``flair`` of BraTS); None when it synthesises no such channel."""
    targets = [t.lower() for t in model.config.task.target or ()]
    return targets.index(name.lower()) if name.lower() in targets else None


def _require_channels(spec: DatasetSpec, names: Sequence[str], input_path: object, model_path: object) -> None:
    missing = [n for n in names if n not in spec.channel_names]
    if missing:
        raise Vox2VoxError(f"{input_path}: has no channel {missing[0]!r}, which {model_path} needs; its channels are "
                           f"{', '.join(spec.channel_names)}")
