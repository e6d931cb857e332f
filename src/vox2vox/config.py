"""Typed, validated run configuration, saved with every run and inside every checkpoint.

A ``Config`` is plain frozen dataclasses of JSON types. ``Config.from_dict`` rejects unknown keys
and wrong types with one-line messages naming the key, so a typo in a config file never silently
falls back to a default. ``--set section.key=value`` overrides parse their value as JSON (falling
back to a plain string), e.g. ``--set train.patch_size=[64,64,64]``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vox2vox.data.augmentation import AugmentConfig
from vox2vox.data.preprocessing import PreprocessConfig
from vox2vox.data.settings import help_of, setting
from vox2vox.errors import Vox2VoxError
from vox2vox.model.discriminator import DiscriminatorConfig
from vox2vox.model.generator import GeneratorConfig
from vox2vox.model.losses import LossConfig
from vox2vox.model.translation import TaskConfig

DeviceChoice = Literal["auto", "cpu", "cuda"]
AmpChoice = Literal["auto", "bf16", "fp16", "off"]
OverlapChoice = Literal["auto", "on", "off"]
# The learning-rate factor over training progress; train/schedule.py computes it.
Schedule = Literal["constant", "poly", "cosine"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")


def parse_duration(text: str | float | int, *, key: str = "train.budget") -> float:
    """Seconds in ``"30m"``, ``"12h"``, ``"1h30m"``, ``"90s"`` or a plain number of seconds."""
    if isinstance(text, bool):
        raise Vox2VoxError(f"{key}={text!r}: give a duration such as 30m, 12h or 1h30m")
    if isinstance(text, int | float):
        seconds = float(text)
    else:
        s = text.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(\.\d+)?", s):
            seconds = float(s)
        elif s and _DURATION.sub("", s) == "" and _DURATION.search(s):
            seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(s))
        else:
            raise Vox2VoxError(f"{key}={text!r}: give a duration such as 30m, 12h or 1h30m")
    if not math.isfinite(seconds) or seconds <= 0:
        raise Vox2VoxError(f"{key}={text!r}: must be a positive, finite duration")
    return seconds


@dataclass(frozen=True)
class DataConfig:
    """Where the cases are, how their labels read, and how they split into train/validation."""

    path: str | None = setting(None, "dataset folder, manifest .csv, dataset.json or single image (--data)")
    layout: str = setting("auto", "auto (detect) or brats, brats2023, msd, nnunet, folders, manifest, single, hdf5")
    convention: str | None = setting(  # label convention; None = the layout's default
        None,
        "label convention (brats, brats2015, brats2023, msd-brain, binary, a .json); null: the "
        "layout's")
    val_fraction: float = setting(0.2, "fraction of the labelled cases held out for validation (seeded by train.seed)")
    val_cases: int | None = setting(  # overrides val_fraction when set
        None,
        "number of validation cases; overrides val_fraction when set")
    label_name: str | None = setting(  # folders layout: the label file's name in each case folder
        None,
        "folders layout: the label file's name in every case folder")
    channels: tuple[str, ...] | None = setting(  # image channels to use, in order; None = all found
        None,
        "image channels to use, in this order; null: all found")

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise Vox2VoxError(f"data.val_fraction={self.val_fraction}: must be in [0, 1)")
        if self.val_cases is not None and self.val_cases < 0:
            raise Vox2VoxError(f"data.val_cases={self.val_cases}: must be >= 0")


@dataclass(frozen=True)
class OptimConfig:
    """Adam for both networks (paper: lr 2e-4, betas (0.5, 0.999), no schedule).

    ``beta1_d`` is the discriminator's beta1 (None: ``beta1``, as the paper). ``schedule`` decays
    both learning rates over training (epochs or ``train.budget``): ``poly`` ((1 - p)^0.9, as
    nnU-Net), ``cosine``, or ``constant`` (the paper); see :mod:`vox2vox.train.schedule`.
    """

    lr_g: float = setting(2e-4, "Adam learning rate of the generator")
    lr_d: float = setting(2e-4, "Adam learning rate of the discriminator")
    beta1: float = setting(0.5, "Adam beta1 (both networks)")
    beta2: float = setting(0.999, "Adam beta2 (both networks)")
    beta1_d: float | None = setting(None, "Adam beta1 of the discriminator; null: optim.beta1")
    schedule: Schedule = setting(
        "constant",
        "learning-rate decay over training: constant (paper), poly ((1-p)^0.9) or cosine")

    def __post_init__(self) -> None:
        for name in ("lr_g", "lr_d"):
            if not getattr(self, name) > 0:
                raise Vox2VoxError(f"optim.{name}={getattr(self, name)}: learning rate must be positive")
        for name in ("beta1", "beta2", "beta1_d"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise Vox2VoxError(f"optim.{name}={value}: must be in [0, 1)")
        if self.schedule not in ("constant", "poly", "cosine"):
            raise Vox2VoxError(f"optim.schedule={self.schedule!r}: choose constant, poly or cosine")


@dataclass(frozen=True)
class TrainConfig:
    """The loop: one random patch per training case per epoch (paper: batch 4, 200 epochs)."""

    epochs: int = setting(200, "epochs; each draws patches_per_case random patches per training case", at_most=10**7)
    batch_size: int = setting(4, "global batch size (split over the processes under torchrun)", at_most=65536)
    patch_size: tuple[int, int, int] = setting(
        (128, 128, 128),
        "training patch in voxels [x, y, z] (nibabel's axis order after reorientation to RAS+; "
        "docs/axes.md); multiples of 2^generator.depth", at_most=2048)
    patches_per_case: int = setting(1, "patches per training case per epoch", at_most=100000)
    # Probability that a patch is centred on a random foreground (label > 0) voxel.
    foreground_prob: float = setting(0.5, "probability that a patch is centred on a random foreground voxel")
    # Train D only while its patch accuracy is <= this (None: update D every step, as the authors).
    d_accuracy_gate: float | None = setting(None, "update D only while its patch accuracy is <= this; null: every step")
    val_every: int = setting(1, "validate (whole volumes, Dice) every this many epochs, and after the last")
    checkpoint_every: int = setting(1, "write checkpoints/last every this many epochs, and after the last")
    seed: int = setting(0, "seed of weights, split, patches, augmentation and dropout")
    device: DeviceChoice = setting("auto", "auto, cpu or cuda")
    amp: AmpChoice = setting(
        "auto",
        "mixed precision: auto (CUDA: bf16 where supported, else fp16; CPU: off), bf16 (also on a "
        "CPU; a plan picks it where it measured faster), fp16 (CUDA only) or off")
    num_workers: int = setting(0, "data-loading worker processes (0: in the training process)")
    overlap_sampling: OverlapChoice = setting(
        "auto",
        "with num_workers 0: make the next batch in a background thread while the step runs (on), "
        "between steps (off), or time both over the first steps and keep the faster (auto)")
    # Recompute generator blocks in backward instead of storing their activations (less memory,
    # about a third more compute); see vox2vox.train.state.enable_activation_checkpointing.
    activation_checkpointing: bool = setting(
        False,
        "recompute generator blocks in backward (less memory, ~1/3 more compute)")
    # A time budget ("30m", "12h", "1h30m") instead of epochs: training (and the learning-rate
    # schedule) ends when it is spent; every second of every `train` call of the run counts.
    budget: str | None = setting(
        None,
        "train for this long (30m, 12h, 1h30m) instead of epochs; the schedule ends with it")
    # The model `predict` uses: "best" (highest validation Dice, the paper) or "last" (the final
    # weights at the end of the schedule).
    select: Literal["best", "last"] = setting(
        "best",
        "model predict uses: best (validation Dice) or last (final weights)")
    # After training, choose flip TTA and largest-component clean-up on the validation cases and
    # record the choice in the model for `predict` (vox2vox.train.selection).
    tune_prediction: bool = setting(
        False,
        "after training, choose flip TTA, the foreground threshold and largest-component clean-up on "
        "the validation cases")
    # Fine-tuning (`train --init-from`) for a new label set: a fresh output layer instead of the source's.
    reinit_output: bool = setting(False, "with --init-from: a fresh output layer for a new label set (--reinit-head)")
    # Where the curves, the config and validation overlays also go (vox2vox.train.tracking).
    log: Literal["none", "tensorboard", "mlflow"] = setting(
        "none",
        "also log curves, config and validation overlays to: none, tensorboard or mlflow (extras)")

    @property
    def budget_seconds(self) -> float | None:
        return None if self.budget is None else parse_duration(self.budget)

    def __post_init__(self) -> None:
        if self.budget is not None:
            parse_duration(self.budget)
        if self.select not in ("best", "last"):
            raise Vox2VoxError(f"train.select={self.select!r}: choose best or last")
        if self.log not in ("none", "tensorboard", "mlflow"):
            raise Vox2VoxError(f"train.log={self.log!r}: choose none, tensorboard or mlflow")
        for name in ("epochs", "batch_size", "patches_per_case", "val_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise Vox2VoxError(f"train.{name}={getattr(self, name)}: must be >= 1")
        if len(self.patch_size) != 3 or any(s < 1 for s in self.patch_size):
            raise Vox2VoxError(f"train.patch_size={list(self.patch_size)}: give three positive sizes")
        if self.d_accuracy_gate is not None and not 0.0 < self.d_accuracy_gate <= 1.0:
            raise Vox2VoxError(f"train.d_accuracy_gate={self.d_accuracy_gate}: must be in (0, 1] or null")
        if not 0.0 <= self.foreground_prob <= 1.0:
            raise Vox2VoxError(f"train.foreground_prob={self.foreground_prob}: a probability must be in [0, 1]")
        if self.num_workers < 0:
            raise Vox2VoxError(f"train.num_workers={self.num_workers}: must be >= 0")
        if not isinstance(self.activation_checkpointing, bool):
            raise Vox2VoxError(f"train.activation_checkpointing={self.activation_checkpointing!r}: expected true or false")


@dataclass(frozen=True)
class Config:
    """Everything a run needs; ``generator.in_channels``/``n_classes`` are resolved from the data."""

    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    def __post_init__(self) -> None:
        _check_sizes(self)
        if self.task.translate and self.task.head == "tanh" and self.preprocess.normalize != "ct-window":
            raise Vox2VoxError(f"task.head='tanh' needs targets in a fixed range: preprocess.normalize='ct-window' "
                               f"(this is {self.preprocess.normalize!r}); use task.head='linear' for z-scored targets")
        if self.augment.channel_dropout > 0 and self.task.translate:
            raise Vox2VoxError(f"augment.channel_dropout={self.augment.channel_dropout}: a translation's channels are its "
                               "sources and targets, none may be left out; set it to 0")
        if self.augment.channel_dropout > 0 and self.generator.in_channels < 2:
            raise Vox2VoxError(f"augment.channel_dropout={self.augment.channel_dropout}: needs at least 2 input channels "
                               f"(this model has {self.generator.in_channels}); a model cannot lose its only channel")
        if self.task.translate and self.train.tune_prediction:
            raise Vox2VoxError("train.tune_prediction chooses segmentation clean-up (TTA, threshold, largest component); "
                               "a translation has none: set it to false")
        m = self.generator.size_multiple
        problem = self.generator.size_problem(self.train.patch_size)
        if problem == "multiple":
            raise Vox2VoxError(
                f"train.patch_size={list(self.train.patch_size)}: each size must be a multiple of "
                f"2^generator.depth = {m} (e.g. {m}, {2 * m}, {4 * m})"
            )
        if problem == "too small":
            raise Vox2VoxError(
                f"train.patch_size={list(self.train.patch_size)}: too small for generator.depth="
                f"{self.generator.depth}; normalisation needs a deepest feature map of more than one voxel "
                f"(e.g. a patch of {2 * m} per axis)"
            )
        smallest = self.discriminator.min_input_size()
        if self.loss.adversarial and min(self.train.patch_size) < smallest:
            raise Vox2VoxError(
                f"train.patch_size={list(self.train.patch_size)}: the discriminator needs at least "
                f"{smallest} voxels per axis; use larger patches or fewer discriminator.n_strided layers"
            )

    # ---- conversion ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config", ignore_unknown: bool = False) -> Config:
        """Build and validate a config. ``ignore_unknown`` drops keys this version does not know
        (for configs saved inside checkpoints by other versions); user files stay strict."""
        return _build(cls, data, prefix="", source=source, ignore_unknown=ignore_unknown)

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)

    def with_overrides(self, overrides: list[str], *, source: str = "--set") -> Config:
        """Apply ``section.key=value`` strings (value parsed as JSON, else taken as a string)."""
        data = self.to_dict()
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep or "." not in key:
                raise Vox2VoxError(f"{source} {item!r}: write section.key=value, e.g. train.epochs=10")
            section, _, name = key.strip().partition(".")
            if section not in data or not isinstance(data[section], dict):
                raise Vox2VoxError(f"{source} {item!r}: unknown section {section!r}; known: {', '.join(data)}")
            if name not in data[section]:
                raise Vox2VoxError(
                    f"{source} {item!r}: unknown key {key!r}; known in {section}: {', '.join(data[section])}"
                )
            try:
                value = json.loads(raw)
            except ValueError:  # not JSON (or an integer past Python's digit limit): a string
                value = raw
            except RecursionError as err:
                raise Vox2VoxError(f"{source} {key}: value nested too deeply") from err
            data[section][name] = value
        return Config.from_dict(data, source=source)


def _keys() -> dict[str, dataclasses.Field]:
    """Every config key (``section.name``) and its declaration (:func:`vox2vox.data.settings.setting`)."""
    return {f"{section.name}.{item.name}": item for section in dataclasses.fields(Config)
            for item in dataclasses.fields(section.default_factory())}  # type: ignore[misc]


#: Upper bounds for sizes that build networks and batches, as each section declares them (``at_most``).
SIZE_LIMITS: dict[str, int] = {k: f.metadata["at_most"] for k, f in _keys().items() if f.metadata.get("at_most")}
#: Closed ranges for float fields whose absurd values train garbage without an error (``within``;
#: NaN and infinities are refused for every field already).
VALUE_RANGES: dict[str, tuple[float, float]] = {k: f.metadata["within"] for k, f in _keys().items()
                                                if f.metadata.get("within")}


def _check_sizes(config: Config) -> None:
    """Every key's declared limits, checked generically."""
    for key, (low, high) in VALUE_RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        values = value if isinstance(value, tuple) else () if value is None else (value,)
        if any(not low <= v <= high for v in values):
            shown = list(value) if isinstance(value, tuple) else value
            raise Vox2VoxError(f"{key}={shown}: each value must lie in [{low:g}, {high:g}]")
    for key, limit in SIZE_LIMITS.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        values = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, int) and v > limit for v in values):
            shown = list(value) if isinstance(value, tuple) else value
            raise Vox2VoxError(f"{key}={shown}: too large (at most {limit}); check for a typo")


def load_config(path: str | Path) -> Config:
    """Read a ``.json`` or ``.toml`` config file (missing sections and keys take defaults)."""
    return Config.from_dict(read_config_file(path), source=str(path))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file's tables as written, before defaults and checks (:func:`load_config`)."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as err:
        raise Vox2VoxError(f"{path}: cannot read config ({err.strerror})") from err
    try:
        if path.suffix.lower() == ".toml":
            data = tomllib.loads(text.decode("utf-8"))
        else:
            data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise Vox2VoxError(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'} ({err})") from err
    except RecursionError as err:
        raise Vox2VoxError(f"{path}: nested too deeply to be a config; a config is a table of sections") from err
    if not isinstance(data, dict):
        raise Vox2VoxError(f"{path}: the top level must be a table of sections")
    return data


# ---- typed construction --------------------------------------------------------------------
#: Largest integer any config field accepts: sizes, counts and seeds beyond it are typos (and
#: would overflow the tensors and arrays they size).
MAX_INT = 2**63 - 1


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a huge value still gives one short line."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"<{value.bit_length()}-bit integer>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    return value


def _build(cls: type, data: Any, *, prefix: str, source: str, ignore_unknown: bool = False) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(data, dict):
        raise Vox2VoxError(f"{source}: {where} must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown and ignore_unknown:
        data = {k: v for k, v in data.items() if k in fields}
    elif unknown:
        raise Vox2VoxError(
            f"{source}: unknown key {(prefix + unknown[0])!r}; known keys{' in ' + where if prefix else ''}: "
            f"{', '.join(fields)}"
        )
    kwargs = {name: _coerce(hints[name], value, key=f"{prefix}{name}", source=source, ignore_unknown=ignore_unknown)
              for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise Vox2VoxError(f"{source}: {where}: {err}") from err


def _coerce(hint: Any, value: Any, *, key: str, source: str, ignore_unknown: bool = False) -> Any:
    """Check ``value`` against a type hint, converting lists to tuples and ints to floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{key}.", source=source, ignore_unknown=ignore_unknown)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key=key, source=source)
            except Vox2VoxError as err:
                errors.append(str(err))
        raise Vox2VoxError(errors[0] if len(errors) == 1 else f"{source}: {key}={value!r} has the wrong type ({hint})")
    if origin is Literal:
        if value not in args:
            raise Vox2VoxError(f"{source}: {key}={value!r}: choose one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise Vox2VoxError(f"{source}: {key}={value!r}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key=key, source=source) for v in value)
        if len(value) != len(args):
            raise Vox2VoxError(f"{source}: {key}={list(value)!r}: expected {len(args)} values")
        return tuple(_coerce(a, v, key=key, source=source) for a, v in zip(args, value, strict=True))
    if hint is bool:
        if not isinstance(value, bool):
            raise Vox2VoxError(f"{source}: {key}={value!r}: expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Vox2VoxError(f"{source}: {key}={_short(value)}: expected an integer")
        if abs(value) > MAX_INT:
            raise Vox2VoxError(f"{source}: {key}={_short(value)}: out of range (at most {MAX_INT})")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Vox2VoxError(f"{source}: {key}={_short(value)}: expected a number")
        # NaN and infinities pass every ``<``/``>`` check and poison training (a NaN loss weight
        # trains NaN losses): one check here covers every float field of every section.
        if isinstance(value, int) and abs(value) > MAX_INT:
            raise Vox2VoxError(f"{source}: {key}={_short(value)}: out of range")
        if not math.isfinite(value):
            raise Vox2VoxError(f"{source}: {key}={value}: must be a finite number (not NaN or infinity)")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise Vox2VoxError(f"{source}: {key}={value!r}: expected a string")
        return value
    return value


# ---- what every key means (`vox2vox config --defaults`) -----------------------------------------
#: One line per config key, as each section declares it; tests/test_config.py checks that every key has one.
DESCRIPTIONS: dict[str, str] = {key: help_of(f) for key, f in _keys().items()}


def describe_defaults() -> str:
    """Every config key with its default value and meaning, one per line, by section."""
    config = Config()
    lines = []
    for section in dataclasses.fields(config):
        lines.append(f"[{section.name}]")
        values = getattr(config, section.name)
        for item in dataclasses.fields(values):
            key = f"{section.name}.{item.name}"
            default = json.dumps(_to_plain(getattr(values, item.name)))
            lines.append(f"  {key} = {default}\n      {DESCRIPTIONS.get(key, '')}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
