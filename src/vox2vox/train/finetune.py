"""Fine-tuning: ``vox2vox train --init-from MODEL`` starts a new run from a trained model's weights.

Not a resume: the optimisers, the schedule, the counters and the run folder are new; only the
weights carry over (the generator always, the discriminator when its shapes fit, else it starts
fresh and one line says so). The new run keeps the source's network: the generator and
discriminator sections come from the source checkpoint, and a key the user sets explicitly to a
different value is one error naming the checkpoint and the key. Preprocessing comes from the
source too (a model only works on inputs normalised as in its training), except ``cache_dir``,
which belongs to this machine.

Without ``--config`` (a planned run), nothing is planned: the source's whole configuration
(network, preprocessing, patch size, loss, optimiser, schedule and budget or epochs) is the new
run's, with ``--data``, ``--budget``, ``--device`` and ``--set`` on top; planning would time and
choose a network the weights do not fit.

The data must have the source's channels (count and names, in order) and classes (the label
convention's values); with ``train.reinit_output`` (``--reinit-head``) a different label set is
allowed and the generator's output layer starts fresh. Every mismatch is one :class:`Vox2VoxError`
before anything is written. The source's path and SHA-256 go into the new run's checkpoints
(:class:`vox2vox.model.checkpoint.SourceModel`, shown by ``vox2vox info``).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vox2vox.config import Config, read_config_file
from vox2vox.data.labels import LabelConvention, get_convention
from vox2vox.data.randomised import ANY_MRI, RANDOMISED
from vox2vox.errors import Vox2VoxError
from vox2vox.model.checkpoint import (
    Checkpoint,
    file_sha256,
    load_checkpoint,
    load_weights,
    resolve_checkpoint,
)
from vox2vox.model.record import ModelInfo, SourceModel
from vox2vox.model.residual import build_generator
from vox2vox.train.state import TrainState

#: Network keys the data decides (checked against the data, not against the user's settings).
_DATA_KEYS = ("in_channels", "n_classes")
#: Network keys that change no weight's shape: a fine-tuned run may choose its own.
_FREE_KEYS = ("dropout",)
#: Keys that describe this machine or this run, not the model: the new run's own settings are kept
#: (a source that was itself fine-tuned with a fresh head must not pass that choice on).
_RUN_KEYS = (("train", "device"), ("train", "num_workers"), ("train", "overlap_sampling"),
             ("train", "log"), ("train", "reinit_output"),
             ("preprocess", "cache_dir"))


@dataclass(frozen=True)
class FineTune:
    """The source model of a fine-tuned run."""

    path: Path  # the checkpoint file
    checkpoint: Checkpoint
    config: Config
    info: ModelInfo | None
    sha256: str

    @property
    def from_randomised_scans(self) -> bool:
        """A prior (:mod:`vox2vox.train.prior`): trained on synthetic scans, not on a dataset."""
        return self.info is not None and self.info.layout == RANDOMISED

    def source(self, reinit_output: bool) -> SourceModel:
        return SourceModel(str(self.path), self.sha256, reinit_output)


def load_source(path: str | Path) -> FineTune:
    """The checkpoint a run directory or ``.safetensors`` file names (``best``, as ``predict``
    uses); safetensors only, never pickle."""
    file = resolve_checkpoint(path, which="best")
    ckpt = load_checkpoint(file)
    config = Config.from_dict(ckpt.config, source=str(file), ignore_unknown=True)
    return FineTune(file, ckpt, config, ckpt.record(file).info(), file_sha256(file))


def explicit_keys(config_file: str | None, overrides: Sequence[str]) -> set[str]:
    """The ``section.key`` names the user set: in ``config_file`` and as ``--set`` overrides."""
    keys = {item.partition("=")[0].strip() for item in overrides}
    if config_file:
        for section, table in read_config_file(config_file).items():
            if isinstance(table, dict):
                keys.update(f"{section}.{name}" for name in table)
    return keys


def finetune_config(source: FineTune, config: Config, *, explicit: set[str], planned: bool) -> Config:
    """The new run's config: ``config`` (the user's) with the source's network and preprocessing,
    or, when ``planned`` (no ``--config``), the source's whole config with the user's data,
    machine settings and explicit keys on top. An explicit network key that differs from the
    source's is one error naming the checkpoint and the key."""
    src = source.config
    for section in ("generator", "discriminator"):
        mine, theirs = getattr(config, section), getattr(src, section)
        for f in dataclasses.fields(mine):
            key = f"{section}.{f.name}"
            if f.name in _DATA_KEYS or f.name in _FREE_KEYS or key not in explicit:
                continue
            if getattr(mine, f.name) != getattr(theirs, f.name):
                raise Vox2VoxError(
                    f"{source.path}: {key}={_shown(getattr(mine, f.name))} differs from the model's "
                    f"{_shown(getattr(theirs, f.name))}; fine-tuning keeps the source's network (drop that setting)")
    plain, base = config.to_dict(), src.to_dict()
    if planned:
        merged = base
        merged["data"] = plain["data"]
        merged["loss"]["class_weights"] = None  # the source's were counted on its labels: count the new ones
    else:
        merged = plain
        for section in ("generator", "discriminator", "preprocess"):
            merged[section] = dict(base[section])
    for section, name in _RUN_KEYS:
        merged[section][name] = plain[section][name]
    for key in explicit:  # what the user set wins (network keys were checked above)
        section, _, name = key.partition(".")
        if section in plain and name in plain[section]:
            merged[section][name] = plain[section][name]
    return Config.from_dict(merged, source=f"{source.path} with this run's settings")


def check_channels(source: FineTune, channels: Sequence[str], where: Any) -> None:
    """The data's channels must be the source model's (count and names, in order; one channel of
    any name for a model of any single MRI contrast, :data:`vox2vox.data.randomised.ANY_MRI`)."""
    trained = list(source.info.channels) if source.info else None
    if trained == [ANY_MRI] and len(channels) == 1:  # the prior takes one contrast, whichever it is
        return
    if trained is None:  # an old or hand-made checkpoint: only the count is known
        if len(channels) == source.config.generator.in_channels:
            return
        trained_text = f"{source.config.generator.in_channels} channel(s)"
    elif list(channels) == trained:
        return
    else:
        trained_text = f"channels ({', '.join(trained)})"
    raise Vox2VoxError(
        f"{source.path}: the model was trained on {trained_text} but {where} has ({', '.join(channels)}); "
        "fine-tune on cases with the model's channels in its order (--set data.channels=[...] picks and orders them)")


def check_classes(source: FineTune, convention: LabelConvention, where: Any, *, reinit_output: bool) -> None:
    """The data's label set must be the source model's, unless the output layer starts fresh."""
    if reinit_output:
        return
    if source.info is not None:
        trained = get_convention(source.info.convention)
        if trained.source_values == convention.source_values:
            return
        said = f"{trained.n_classes} classes (label values {', '.join(map(str, trained.source_values))})"
    elif source.config.generator.n_classes == convention.n_classes:
        return
    else:
        said = f"{source.config.generator.n_classes} classes"
    raise Vox2VoxError(
        f"{source.path}: the model predicts {said} but {where} has {convention.n_classes} "
        f"(label values {', '.join(map(str, convention.source_values))}); pass --reinit-head to train a new "
        "output layer for this label set")


def check_outputs(source: FineTune, targets: Sequence[str], where: Any, *, reinit_output: bool) -> None:
    """A translation's targets must be as many as the source model's outputs, unless the output
    layer starts fresh (a segmentation model's classes are outputs too: its encoder can start a
    translation with ``--reinit-head``)."""
    if reinit_output or source.config.generator.n_classes == len(targets):
        return
    raise Vox2VoxError(
        f"{source.path}: the model has {source.config.generator.n_classes} output channel(s) but {where} is to "
        f"synthesise {len(targets)} ({', '.join(targets)}); pass --reinit-head to train a new output layer for them")


def initial_weights(source: FineTune, *, reinit_output: bool, announce: bool) -> Callable[[TrainState], None]:
    """The ``fit(init=...)`` hook: copy the source's weights into a freshly built training state.

    The generator takes every source weight except, with ``reinit_output``, its output layer (the
    tensors whose shape depends on the class count), which keeps its fresh, seeded initialisation.
    The discriminator takes the source's weights when they all fit, else stays fresh (one line).
    """

    def init(state: TrainState) -> None:
        generator = state.generator
        weights = dict(source.checkpoint.generator)
        if reinit_output:
            fresh = generator.state_dict()
            for name in output_layer(state.generator):
                weights[name] = fresh[name]
        load_weights(generator, weights, source.path, what="generator")
        reason = _discriminator_misfit(state.discriminator, source.checkpoint.discriminator)
        if reason is None:
            load_weights(state.discriminator, source.checkpoint.discriminator, source.path, what="discriminator")
        elif announce:
            print(f"note: {source.path}: the discriminator starts fresh ({reason})", file=sys.stderr)

    return init


def output_layer(generator: torch.nn.Module) -> list[str]:
    """Names of the generator's tensors that depend on its class count: its output layer.

    Found by building the same network for one class more on the meta device (no memory) and
    comparing shapes, so it holds for every architecture ``generator.arch`` names.
    """
    config = generator.config  # type: ignore[attr-defined]
    with torch.device("meta"):
        wider = build_generator(dataclasses.replace(config, n_classes=config.n_classes + 1)).state_dict()
    return [name for name, t in generator.state_dict().items() if tuple(wider[name].shape) != tuple(t.shape)]


def _discriminator_misfit(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> str | None:
    if not weights:
        return "the checkpoint holds no discriminator weights"
    expected = module.state_dict()
    if set(weights) != set(expected):
        return "its layers differ from the checkpoint's"
    for name, tensor in expected.items():
        if tuple(weights[name].shape) != tuple(tensor.shape):
            return f"{name} is {tuple(weights[name].shape)} in the checkpoint, {tuple(tensor.shape)} here"
    return None


def _shown(value: Any) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)
