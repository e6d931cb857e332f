"""The models of one prediction taken together, before any case: do they fit together (an
ensemble shares preprocessing, label convention, classes and output head), which prediction
options their training chose, and how they meet the input (cases found with the training's
channels, the right number of channels). Shared by ``vox2vox predict`` and :mod:`vox2vox.api`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vox2vox.data.labels import LabelConvention, get_convention
from vox2vox.data.layouts import discover
from vox2vox.data.profile import distribution_problems
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.loaded import LoadedModel
from vox2vox.model.checkpoint import ModelInfo
from vox2vox.model.outputs import OutputHead, check_threshold, head_for


def check_ensemble(models: Sequence[LoadedModel]) -> tuple[LabelConvention, OutputHead]:
    """The label convention and output head (classes or regions) the models share; refuses
    members that do not fit together and metadata that contradicts itself."""
    if not models:
        raise Vox2VoxError("no model given; pass at least one checkpoint")
    first = models[0]
    for other in models[1:]:
        if (
            other.config.preprocess != first.config.preprocess
            or other.state.get("convention") != first.state.get("convention")
            or other.config.generator.n_classes != first.config.generator.n_classes
            or other.config.generator.output != first.config.generator.output
        ):
            raise Vox2VoxError(
                f"{other.path}: ensemble members must share preprocessing, classes and label "
                f"convention with {first.path}; ensemble models of one training setup"
            )
    if "convention" not in first.state:
        raise Vox2VoxError(
            f"{first.path}: checkpoint does not record its label convention; save it with "
            "state={'convention': ..., 'channels': [...]} as training does"
        )
    convention = get_convention(first.state["convention"])
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
    chosen = (models[0].state.get("predict") or {}) if models else {}
    if threshold == "argmax":
        cut = None
    elif threshold is not None:
        check_threshold(threshold)
        cut = float(threshold)
    else:
        cut = chosen.get("foreground_threshold")
        try:
            check_threshold(cut)
        except Vox2VoxError as err:
            raise Vox2VoxError(f"{models[0].path}: the recorded {err}; the checkpoint's metadata is damaged") from None
    return (tta if tta is not None else bool(chosen.get("tta", False)),
            largest_component or str(chosen.get("largest_component", "off")),
            None if cut is None else float(cut))


def discover_like_training(model: LoadedModel, input_path: str | Path, layout: str) -> Any:
    """Find the cases to predict, choosing channels (and a case-folder label) as in training."""
    label_name = model.config.data.label_name
    try:
        # A 'folders' dataset may need the label name training used to tell label from channels.
        spec = discover(input_path, layout=layout, label_name=label_name) if label_name else None
    except Vox2VoxError:
        spec = None
    if spec is None:
        spec = discover(input_path, layout=layout)
    trained = tuple(model.channels or ())
    if trained and set(trained) <= set(spec.channel_names) and trained != spec.channel_names:
        # The training channels by name, when the input orders them differently or has extras.
        spec = discover(input_path, layout=layout, channel_names=trained,
                        **({"label_name": label_name} if spec.layout == "folders" and label_name else {}))
    return spec


def check_channels(model: LoadedModel, channel_names: Sequence[str], where: str | Path) -> None:
    """Refuse input with another number of channels than the model was trained on."""
    n_in = model.config.generator.in_channels
    if len(channel_names) != n_in:
        raise Vox2VoxError(
            f"{where}: cases have {len(channel_names)} channel(s) ({', '.join(channel_names)}) "
            f"but the model was trained on {n_in} ({', '.join(model.channels or [])}); give cases "
            "with the model's channels"
        )


def training_data_problems(model: LoadedModel, record: Any, channel_names: Sequence[str] | None) -> list[str]:
    """How a preprocessed case (its ``PreprocessRecord``) differs from the model's training data
    (spacing, intensities, channels by name when given); empty when the model records no profile."""
    info = ModelInfo.from_state(model.state, model.path)
    if info is None or info.data is None:
        return []
    return distribution_problems(info.data, record, normalize=model.config.preprocess.normalize,
                                 channel_names=channel_names)
