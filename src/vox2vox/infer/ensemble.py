"""The models of one prediction taken together, before any case: do they fit together (an
ensemble shares preprocessing, label convention, classes and output head), which prediction
options their training chose, and how they meet the input (cases found with the training's
channels, the right number of channels). Shared by ``vox2vox predict`` and :mod:`vox2vox.api`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vox2vox.data.cases import CaseFiles, DatasetSpec
from vox2vox.data.labels import LabelConvention
from vox2vox.data.layouts import discover
from vox2vox.data.profile import distribution_problems
from vox2vox.data.randomised import ANY_MRI, RANDOMISED, unlike_randomised_scans
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.loaded import LoadedModel
from vox2vox.model.outputs import OutputHead, check_threshold, head_for
from vox2vox.model.record import PredictionChoice


def check_ensemble(models: Sequence[LoadedModel]) -> tuple[LabelConvention, OutputHead]:
    """The label convention and output head (classes or regions) the models share; refuses
    members that do not fit together and metadata that contradicts itself."""
    if not models:
        raise Vox2VoxError("no model given; pass at least one checkpoint")
    first = models[0]
    for other in models[1:]:
        if (
            other.config.preprocess != first.config.preprocess
            or other.record.convention != first.record.convention
            or other.config.generator.n_classes != first.config.generator.n_classes
            or other.config.generator.output != first.config.generator.output
        ):
            raise Vox2VoxError(
                f"{other.path}: ensemble members must share preprocessing, classes and label "
                f"convention with {first.path}; ensemble models of one training setup"
            )
    convention = first.record.convention
    if convention is None:
        raise Vox2VoxError(
            f"{first.path}: checkpoint does not record its label convention; save it with "
            "state={'convention': ..., 'channels': [...]} as training does"
        )
    try:
        head = head_for(first.config.generator.n_classes, first.config.generator.output, convention)
    except Vox2VoxError as err:
        raise Vox2VoxError(f"{first.path}: {err}; the checkpoint's metadata is inconsistent") from None
    return convention, head


def prediction_options(models: Sequence[LoadedModel], *, tta: bool | None = None,
                       largest_component: str | None = None,
                       threshold: float | str | None = None) -> tuple[bool, str, float | None]:
    """Flip TTA, largest-component clean-up and the foreground threshold: as given, else what the
    first model's training chose on its validation cases (``state["predict"]``, planned runs), else
    off (and argmax). ``threshold="argmax"`` asks for the plain rule whatever training chose."""
    chosen = (models[0].record.predict or PredictionChoice()) if models else PredictionChoice()
    if threshold == "argmax":
        cut = None
    elif threshold is not None:
        check_threshold(threshold)
        cut = float(threshold)
    else:
        cut = chosen.foreground_threshold  # checked when the record was read
    return (tta if tta is not None else bool(chosen.tta),
            largest_component or (chosen.largest_component or "off"),
            None if cut is None else float(cut))


def discover_like_training(model: LoadedModel, input_path: str | Path, layout: str,
                           missing: Sequence[str] = (), channel: str | None = None) -> Any:
    """Find the cases to predict, choosing channels (and a case-folder label) as in training;
    ``missing`` (``predict --missing``) names training channels the input does not have;
    ``channel`` (``predict --channel``) the one input channel a one-channel model reads."""
    if channel is not None:
        return _one_channel(model, input_path, layout, channel)
    label_name = model.config.data.label_name
    try:
        # A 'folders' dataset may need the label name training used to tell label from channels.
        spec = discover(input_path, layout=layout, label_name=label_name) if label_name else None
    except Vox2VoxError:
        spec = None
    if spec is None:
        spec = discover(input_path, layout=layout)
    trained = tuple(n for n in model.channels or () if n not in set(missing))
    if trained and set(trained) <= set(spec.channel_names) and trained != spec.channel_names:
        # The training channels by name, when the input orders them differently or has extras.
        spec = discover(input_path, layout=layout, channel_names=trained,
                        **({"label_name": label_name} if spec.layout == "folders" and label_name else {}))
    return spec


def _one_channel(model: LoadedModel, input_path: str | Path, layout: str, channel: str) -> Any:
    """The cases with only their channel ``channel``, named as the model's one channel (a prior
    of any contrast reads a FLAIR as well as a T1: the user says which)."""
    trained = tuple(model.channels or ())
    if model.config.generator.in_channels != 1:
        raise Vox2VoxError(f"--channel {channel}: {model.path} reads {model.config.generator.in_channels} channels "
                           f"({', '.join(trained)}); --channel picks the input of a one-channel model")
    spec = discover(input_path, layout=layout, channel_names=(channel,))
    found = spec.channel_names[0]  # the layout's spelling of it (``Flair_subtrMeanDivStd`` for flair)
    if not trained or trained == (found,):
        return spec
    return dataclasses.replace(spec, channel_names=trained, cases=tuple(
        dataclasses.replace(c, channels={trained[0]: c.channels[found]}) for c in spec.cases))


def with_absent_channels(models: Sequence[LoadedModel], spec: DatasetSpec, missing: Sequence[str],
                         where: str | Path) -> DatasetSpec:
    """The cases with the models' channels in training order, each case's absent channels named
    (``missing`` for every case, ``predict --missing``; an empty manifest cell for one): the spec
    :func:`vox2vox.data.loading.load_case_without` reads. Refuses, before any case, a channel the
    models lack, an input without a channel that is not declared missing, and a member trained
    without channel dropout (it has never seen a channel absent: its output would be a guess)."""
    first = models[0]
    trained = tuple(first.channels or ())
    missing = tuple(dict.fromkeys(missing))
    if not missing and not any(c.absent for c in spec.cases):
        return spec
    if not trained:
        raise Vox2VoxError(f"{first.path}: records no channel names, so no channel can be named missing")
    for name in missing:
        if name not in trained:
            raise Vox2VoxError(f"--missing {name}: {first.path} has no channel {name!r}; its channels are "
                               f"{', '.join(trained)}")
    name = missing[0] if missing else next(n for c in spec.cases for n in c.absent)
    for model in models:
        check_absent_allowed(model, name, where)
    present = [n for n in trained if n not in missing]
    if not present:
        raise Vox2VoxError(f"--missing: every channel of {first.path} is named missing; at least one must be given")
    if spec.layout == "single" and len(present) == 1 and spec.channel_names == ("image",):
        spec = dataclasses.replace(spec, channel_names=(present[0],), cases=tuple(
            dataclasses.replace(c, channels={present[0]: c.channels["image"]}) for c in spec.cases))
    lacking = [n for n in present if n not in spec.channel_names]
    if lacking:
        raise Vox2VoxError(f"{where}: has no channel {lacking[0]!r}, which {first.path} needs; its channels are "
                           f"{', '.join(spec.channel_names)} (--missing {lacking[0]} predicts without it)")
    cases = []
    for case in spec.cases:
        absent = tuple(n for n in trained if n in missing or n in case.absent)
        if len(absent) == len(trained):
            raise Vox2VoxError(f"{where}: case {case.case_id} has none of the channels {', '.join(trained)}")
        cases.append(CaseFiles(case.case_id, {n: case.channels[n] for n in trained if n not in absent},
                               case.label, case.mask, absent))
    return dataclasses.replace(spec, channel_names=trained, cases=tuple(cases))


def tolerates_absent(model: LoadedModel) -> bool:
    """Whether the model was trained with channel dropout, so it segments a case without a channel."""
    return not model.config.task.translate and model.config.augment.channel_dropout > 0


def check_absent_allowed(model: LoadedModel, channel: str, where: str | Path) -> None:
    """One line refusing a model trained without channel dropout a case lacking ``channel``."""
    if not tolerates_absent(model):
        raise Vox2VoxError(f"{model.path}: trained without channel dropout (augment.channel_dropout 0), so it cannot "
                           f"segment {where} without channel {channel!r}; give the channel, fill it (--fill-missing "
                           f"{channel}=TRANSLATOR) or use a model trained with augment.channel_dropout > 0")


def check_channels(model: LoadedModel, channel_names: Sequence[str], where: str | Path) -> None:
    """Refuse input with another number of channels than the model was trained on."""
    n_in = model.config.generator.in_channels
    if tuple(model.channels or ()) == (ANY_MRI,) and len(channel_names) != 1:
        raise Vox2VoxError(
            f"{where}: cases have {len(channel_names)} channels ({', '.join(channel_names)}) but {model.path} takes "
            f"one MRI contrast of any kind; name the one to read with --channel (e.g. --channel {channel_names[-1]})")
    if len(channel_names) != n_in:
        raise Vox2VoxError(
            f"{where}: cases have {len(channel_names)} channel(s) ({', '.join(channel_names)}) "
            f"but the model was trained on {n_in} ({', '.join(model.channels or [])}); give cases "
            "with the model's channels"
        )


def training_data_problems(model: LoadedModel, record: Any, channel_names: Sequence[str] | None) -> list[str]:
    """How a preprocessed case (its ``PreprocessRecord``) differs from the model's training data
    (spacing, intensities, channels by name when given); empty when the model records no profile."""
    if model.record.layout == RANDOMISED:  # a prior: no real training data, but a known world
        return unlike_randomised_scans(record)
    data = model.record.data
    if data is None or model.record.info() is None:
        return []
    return distribution_problems(data, record, normalize=model.config.preprocess.normalize,
                                 channel_names=channel_names)
