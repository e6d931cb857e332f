"""What a model knows beside its weights: one typed record of a checkpoint's JSON ``state``.

A checkpoint (and an export's contract, which keeps the checkpoint's records) stores one JSON
object beside the tensors. :class:`ModelRecord` is that object typed, in parts:

- :class:`LoopCounters`: the loop's counters (epoch, step, best and last score, a Ctrl-C'd
  epoch's progress and RNG state, the budget's clock), what a resume restores;
- :class:`ModelInfo`: what prediction and the model card need (channels, layout, label
  convention, the training data's profile, a fine-tuned model's source);
- :class:`PredictionChoice`: the prediction options training chose on its validation cases and
  the evidence (``state["predict"]``, written by ``train.selection``);
- :class:`RunSummary`: the whole run's counters, recorded in ``best`` when training ends.

Each part is frozen, has one validating ``from_json`` (a malformed entry is one
:class:`Vox2VoxError` naming the file and the field) and a ``to_json`` that writes the format
training writes, so a checkpoint written by training reads back and re-saves unchanged. Entries a
file does not record (older or hand-made checkpoints) read as None, never as a guess.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vox2vox.data.labels import LabelConvention, get_convention
from vox2vox.data.profile import DataProfile
from vox2vox.errors import Vox2VoxError
from vox2vox.model.outputs import check_threshold

#: A JSON value as :mod:`json` reads it (the record's inputs before validation).
Json = Any


class MetadataReader:
    """The one message format of a malformed entry: the file, the field, what was expected."""

    def __init__(self, path: str | Path):
        self.path = path

    def bad(self, name: str, value: Json, expected: str) -> Vox2VoxError:
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        return Vox2VoxError(f"{self.path}: malformed checkpoint metadata: {name}={shown} ({expected}); "
                            "re-save the checkpoint or use another")

    def object(self, name: str, value: Json) -> Mapping[str, Json]:
        if not isinstance(value, dict):
            raise self.bad(name, value, "expected a JSON object")
        return value

    def integer(self, name: str, value: Json) -> int | None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise self.bad(name, value, "expected an integer")
        return value

    def number(self, name: str, value: Json) -> float | None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise self.bad(name, value, "expected a number or null")
        return value

    def string(self, name: str, value: Json) -> str | None:
        if value is not None and not isinstance(value, str):
            raise self.bad(name, value, "expected a string")
        return value

    def numbers(self, name: str, value: Json) -> dict[str, float] | None:
        """An object of numbers (per-metric sums, per-candidate means)."""
        if value is None:
            return None
        for key, number in self.object(name, value).items():
            if isinstance(number, bool) or not isinstance(number, int | float):
                raise self.bad(f"{name}.{key}", number, "expected a number")
        return dict(value)


# ---- the loop's counters --------------------------------------------------------------------------
_LOOP_ENTRIES = ("epoch", "step", "best_score", "best_epoch", "scaler", "batches_done", "partial_sums", "seconds",
                 "val_mark", "last_score", "rng_state")


@dataclass(frozen=True)
class LoopCounters:
    """The loop's counters a resumable checkpoint records (``train.state.TrainState``'s).

    ``recorded`` names the entries the file holds (training writes every one, null included;
    hand-made files some): None reads the same either way, and a re-saved file keeps exactly its
    entries. Numbers keep the JSON type they were read with, so a re-saved file is byte-identical."""

    epoch: int | None = None  # completed epochs
    step: int | None = None  # completed train steps
    best_score: float | None = None  # None: no validation yet (or none recorded)
    best_epoch: int | None = None
    scaler: dict[str, float] | None = None  # the fp16 grad scaler's state (None when off)
    batches_done: int | None = None  # batches of epoch ``epoch`` trained before a Ctrl-C
    partial_sums: dict[str, float] | None = None  # their summed step metrics
    seconds: float | None = None  # the run's time so far (the budget's clock)
    val_mark: int | None = None  # the tenth of the budget at which it last validated
    last_score: float | None = None
    rng_state: str | None = None  # base64 of the torch RNG state after a Ctrl-C
    recorded: frozenset[str] = field(default=frozenset(_LOOP_ENTRIES), repr=False)

    @classmethod
    def from_json(cls, state: Mapping[str, Json], read: MetadataReader) -> LoopCounters:
        for key in ("epoch", "step", "best_epoch", "batches_done", "val_mark"):
            read.integer(f"state.{key}", state.get(key))
        for key in ("best_score", "last_score"):
            read.number(f"state.{key}", state.get(key))
        seconds = state.get("seconds", 0.0)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
            raise read.bad("state.seconds", seconds, "expected a finite number of seconds >= 0")
        read.string("state.rng_state", state.get("rng_state"))
        if state.get("scaler") is not None:
            read.object("state.scaler", state["scaler"])
        sums = read.numbers("state.partial_sums", state.get("partial_sums"))
        return cls(**{key: state.get(key) for key in _LOOP_ENTRIES if key != "partial_sums"}, partial_sums=sums,
                   recorded=frozenset(key for key in _LOOP_ENTRIES if key in state))

    def to_json(self) -> dict[str, Json]:
        return {key: getattr(self, key) for key in _LOOP_ENTRIES if key in self.recorded}


# ---- what prediction and the card need ------------------------------------------------------------
@dataclass(frozen=True)
class SourceModel:
    """The checkpoint a fine-tuned run started from (``vox2vox train --init-from``)."""

    path: str  # as resolved when training started
    sha256: str  # of that file, so the source can be identified even after it moved
    reinit_output: bool = False  # the output layer was re-initialised (a new label set)

    @classmethod
    def from_json(cls, value: Json, path: str | Path) -> SourceModel:
        if (not isinstance(value, dict) or not isinstance(value.get("path"), str)
                or not isinstance(value.get("sha256"), str) or not isinstance(value.get("reinit_output", False), bool)):
            raise Vox2VoxError(f"{path}: malformed checkpoint metadata: state.init_from (expected path, sha256 "
                               "and reinit_output); re-save the checkpoint or use another")
        return cls(value["path"], value["sha256"], value.get("reinit_output", False))

    def to_json(self) -> dict[str, Json]:
        return {"path": self.path, "sha256": self.sha256, "reinit_output": self.reinit_output}


@dataclass(frozen=True)
class ModelInfo:
    """What a model needs at prediction time beyond its weights and config, stored in every
    checkpoint training writes: the input channel names in order, the dataset layout it was
    trained from, and the label convention; and for its card (``vox2vox info``) the training
    data's profile and, for a fine-tuned model, its source.

    Checkpoints from before the profile or the source was recorded load with them None."""

    channels: tuple[str, ...]
    layout: str
    convention: LabelConvention | None  # None: a translation model, which has no labels
    data: DataProfile | None = None
    source: SourceModel | None = None

    def __post_init__(self) -> None:
        if self.convention is not None:  # a name or a convention's JSON, as get_convention reads them
            object.__setattr__(self, "convention", get_convention(self.convention))


# ---- the prediction options training chose --------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """One step of the option rule: the candidate tried, whether it was adopted and why."""

    step: str
    candidate: bool | float | str | None
    adopted: bool
    evidence: str

    def to_json(self) -> dict[str, Json]:
        return {"step": self.step, "candidate": self.candidate, "adopted": self.adopted, "evidence": self.evidence}


@dataclass(frozen=True)
class PredictionChoice:
    """The prediction options training chose on its validation cases (``state["predict"]``) and
    the evidence: mean and per-case Dice of every candidate, and each step's decision."""

    tta: bool | None = None  # None: not recorded (off)
    foreground_threshold: float | None = None  # None: argmax
    largest_component: str | None = None  # None: not recorded (off)
    rule: str | None = None
    validation_case_ids: tuple[str, ...] | None = None
    validation_cases: int | None = None
    validation_dice: dict[str, float] | None = None
    per_case_dice: dict[str, tuple[float, ...]] | None = None
    decisions: tuple[Decision, ...] | None = None
    seconds_per_case: dict[str, float] | None = None

    @classmethod
    def from_json(cls, value: Json, path: str | Path) -> PredictionChoice:
        read = MetadataReader(path)
        choice = read.object("state.predict", value)
        if choice.get("tta") is not None and not isinstance(choice["tta"], bool):
            raise read.bad("state.predict.tta", choice["tta"], "expected true or false")
        threshold = choice.get("foreground_threshold")
        try:
            check_threshold(threshold)
        except Vox2VoxError as err:
            raise Vox2VoxError(f"{path}: the recorded {err}; the checkpoint's metadata is damaged") from None
        if choice.get("largest_component") not in (None, "off", "class", "region"):
            raise read.bad("state.predict.largest_component", choice["largest_component"],
                           "expected off, class or region")
        read.string("state.predict.rule", choice.get("rule"))
        read.integer("state.predict.validation_cases", choice.get("validation_cases"))
        ids = choice.get("validation_case_ids")
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
            raise read.bad("state.predict.validation_case_ids", ids, "expected a list of case ids")
        per_case = choice.get("per_case_dice")
        if per_case is not None:
            for key, scores in read.object("state.predict.per_case_dice", per_case).items():
                if not isinstance(scores, list) or not all(
                        isinstance(s, int | float) and not isinstance(s, bool) for s in scores):
                    raise read.bad(f"state.predict.per_case_dice.{key}", scores, "expected a list of numbers")
        decisions = choice.get("decisions")
        if decisions is not None and (not isinstance(decisions, list) or not all(
                isinstance(d, dict) and isinstance(d.get("step"), str) and isinstance(d.get("adopted"), bool)
                and isinstance(d.get("evidence"), str) for d in decisions)):
            raise read.bad("state.predict.decisions", decisions, "expected a list of steps with their evidence")
        return cls(
            tta=choice.get("tta"), foreground_threshold=threshold, largest_component=choice.get("largest_component"),
            rule=choice.get("rule"), validation_case_ids=None if ids is None else tuple(ids),
            validation_cases=choice.get("validation_cases"),
            validation_dice=read.numbers("state.predict.validation_dice", choice.get("validation_dice")),
            per_case_dice=None if per_case is None else {k: tuple(v) for k, v in per_case.items()},
            decisions=None if decisions is None else tuple(
                Decision(d["step"], d.get("candidate"), d["adopted"], d["evidence"]) for d in decisions),
            seconds_per_case=read.numbers("state.predict.seconds_per_case", choice.get("seconds_per_case")),
        )

    def to_json(self) -> dict[str, Json]:
        """The recorded entries (``foreground_threshold`` always: null is the argmax rule)."""
        out: dict[str, Json] = {}
        if self.tta is not None:
            out["tta"] = self.tta
        out["foreground_threshold"] = self.foreground_threshold
        for key in ("largest_component", "rule"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.validation_case_ids is not None:
            out["validation_case_ids"] = list(self.validation_case_ids)
        if self.validation_cases is not None:
            out["validation_cases"] = self.validation_cases
        if self.validation_dice is not None:
            out["validation_dice"] = dict(self.validation_dice)
        if self.per_case_dice is not None:
            out["per_case_dice"] = {k: list(v) for k, v in self.per_case_dice.items()}
        if self.decisions is not None:
            out["decisions"] = [d.to_json() for d in self.decisions]
        if self.seconds_per_case is not None:
            out["seconds_per_case"] = dict(self.seconds_per_case)
        return out


# ---- the whole run --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSummary:
    """The whole run's counters, recorded in ``best`` (whose own counters are its epoch's)."""

    epoch: int | None = None
    step: int | None = None
    seconds: float | None = None
    last_score: float | None = None

    @classmethod
    def from_json(cls, value: Json, read: MetadataReader) -> RunSummary:
        run = value if isinstance(value, dict) else None
        if run is None or set(run) - {f.name for f in fields(cls)} or any(
                v is not None and (isinstance(v, bool) or not isinstance(v, int | float)) for v in run.values()):
            raise read.bad("state.run", value, "expected the run's counters (numbers or null)")
        return cls(**run)

    def to_json(self) -> dict[str, Json]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ---- the record -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRecord:
    """A checkpoint's ``state``, typed (module docstring). ``convention`` None: none recorded."""

    counters: LoopCounters = field(default_factory=lambda: LoopCounters(recorded=frozenset()))
    channels: tuple[str, ...] | None = None
    layout: str | None = None
    convention: LabelConvention | None = None
    data: DataProfile | None = None
    source: SourceModel | None = None
    predict: PredictionChoice | None = None
    run: RunSummary | None = None
    versions: dict[str, str] | None = None  # the libraries of the run (kept on a re-saved file)

    @classmethod
    def from_json(cls, value: Json, path: str | Path) -> ModelRecord:
        """The record of a checkpoint's (or an export's) ``state``; every problem is one
        :class:`Vox2VoxError` naming ``path`` and the field."""
        read = MetadataReader(path)
        state = read.object("state", value)
        channels = state.get("channels")
        if channels is not None and (not isinstance(channels, list) or not all(isinstance(c, str) for c in channels)):
            raise read.bad("state.channels", channels, "expected a list of channel names")
        read.string("state.layout", state.get("layout"))
        convention = None
        if "convention" in state:
            if not isinstance(state["convention"], dict | str):
                raise read.bad("state.convention", state["convention"], "expected a label convention")
            try:
                convention = get_convention(state["convention"])
            except Vox2VoxError as err:
                raise Vox2VoxError(f"{path}: malformed checkpoint metadata: state.convention: {err}") from err
        data, source, versions = state.get("data_profile"), state.get("init_from"), state.get("versions")
        if versions is not None and not all(isinstance(v, str) for v in read.object("state.versions", versions).values()):
            raise read.bad("state.versions", versions, "expected library names and version strings")
        return cls(
            counters=LoopCounters.from_json(state, read),
            channels=None if channels is None else tuple(channels),
            layout=state.get("layout"),
            convention=convention,
            data=None if data is None else DataProfile.from_json(
                data, f"{path}: malformed checkpoint metadata: state.data_profile"),
            source=None if source is None else SourceModel.from_json(source, path),
            predict=None if state.get("predict") is None else PredictionChoice.from_json(state["predict"], path),
            run=None if state.get("run") is None else RunSummary.from_json(state["run"], read),
            versions=None if versions is None else dict(versions),
        )

    @classmethod
    def of(cls, counters: LoopCounters, info: ModelInfo | None) -> ModelRecord:
        """A training checkpoint's record: the loop's counters and what the model knows."""
        if info is None:
            return cls(counters)
        return cls(counters, info.channels, info.layout, info.convention, info.data, info.source)

    def to_json(self) -> dict[str, Json]:
        """The ``state`` object as training writes it."""
        out = self.counters.to_json()
        if self.channels is not None:
            out["channels"] = list(self.channels)
        if self.layout is not None:
            out["layout"] = self.layout
        if self.convention is not None:
            out["convention"] = self.convention.to_json()
        if self.data is not None:
            out["data_profile"] = self.data.to_json()
        if self.source is not None:
            out["init_from"] = self.source.to_json()
        # In the order training adds them: a re-save keeps the versions, then the run's summary,
        # then the chosen options (train.runs, train.selection).
        if self.versions is not None:
            out["versions"] = dict(self.versions)
        if self.run is not None:
            out["run"] = self.run.to_json()
        if self.predict is not None:
            out["predict"] = self.predict.to_json()
        return out

    def info(self, *, translate: bool = False) -> ModelInfo | None:
        """What prediction and the card need (None when the record has no channels or, for a
        segmentation (``translate`` False), no convention, as hand-made checkpoints)."""
        if self.channels is None or (self.convention is None and not translate):
            return None
        return ModelInfo(self.channels, self.layout or "unknown", self.convention, self.data, self.source)

    def with_predict(self, choice: PredictionChoice) -> ModelRecord:
        return dataclasses.replace(self, predict=choice)

    def with_run(self, run: RunSummary) -> ModelRecord:
        return dataclasses.replace(self, run=run)
