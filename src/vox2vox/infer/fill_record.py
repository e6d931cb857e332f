"""Whether a translator's synthesis helps a segmenter: the measured record ``predict --fill-missing``
reads before it uses a synthesised channel.

``vox2vox fill-check`` (:mod:`vox2vox.report.fill_check`) segments labelled cases that have every
channel three ways: with the real channel, with the translator's synthesis in its place, and with
the channel absent (a channel-dropout segmenter's own route) or zeroed (the same input to a model
that never saw it absent: a reference only). The record is a small JSON beside the translator's
file, one per (segmenters, translator, channel), both models identified by the SHA-256 of their
files, so a retrained or replaced model has no record until it is measured again.

``fill_decision`` turns a record into what ``predict --fill-missing`` does: the synthesis when it
measured at least ``min_gain`` mean Dice above the fallback route; otherwise the absent-channel
route when every segmenter was trained with channel dropout, else a refusal; no record, or one
for other files: a refusal naming the command that measures it (unless the user overrides it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any, Literal

from vox2vox.atomic import atomic_write_text
from vox2vox.errors import Vox2VoxError
from vox2vox.model.checkpoint import file_sha256

FORMAT = "vox2vox fill-check"
VERSION = 1
#: The routes a case can take for a channel it lacks; "zeroed" is the same input as "absent", named
#: so for a segmenter trained without channel dropout (a measured reference, never a route taken).
Route = Literal["real", "synthesised", "absent", "zeroed"]
ROUTES: tuple[Route, ...] = ("real", "synthesised", "absent", "zeroed")


@dataclass(frozen=True)
class ModelRef:
    """A model file and the SHA-256 of its bytes."""

    path: str
    sha256: str

    @classmethod
    def of(cls, path: str | Path) -> ModelRef:
        return cls(str(path), file_sha256(path))


@dataclass(frozen=True)
class FillRecord:
    """One fill-check: the mean Dice of each route over ``case_ids`` (each case's Dice the mean over
    the label convention's evaluation regions, per region in ``regions``), the fallback route it is
    compared with, and the verdict ``helps``: synthesised >= fallback + ``min_gain``."""

    channel: str
    segmenters: tuple[ModelRef, ...]
    translator: ModelRef
    data: str
    case_ids: tuple[str, ...]
    dice: dict[str, float]  # route -> mean Dice over cases and regions
    regions: dict[str, dict[str, float]]  # route -> region -> mean Dice
    per_case: dict[str, dict[str, float]]  # case id -> route -> Dice
    fallback: Route
    min_gain: float
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def gain(self) -> float:
        """Mean Dice of the synthesis over the fallback route (negative: the synthesis hurts)."""
        return self.dice["synthesised"] - self.dice[self.fallback]

    @property
    def helps(self) -> bool:
        return self.gain >= self.min_gain

    def summary(self) -> str:
        """``Dice 0.712 synthesised vs 0.640 absent (real 0.731), 12 cases``."""
        return (f"Dice {self.dice['synthesised']:.3f} synthesised vs {self.dice[self.fallback]:.3f} "
                f"{self.fallback} (real {self.dice['real']:.3f}), {len(self.case_ids)} case(s)")

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "channel": self.channel,
                "segmenters": [vars(m) for m in self.segmenters], "translator": vars(self.translator),
                "data": self.data, "case_ids": list(self.case_ids), "dice": self.dice, "regions": self.regions,
                "per_case": self.per_case, "fallback": self.fallback, "min_gain": self.min_gain,
                "gain": self.gain, "helps": self.helps, "created": self.created, "versions": self.versions}

    @classmethod
    def from_json(cls, doc: Any, where: str | Path) -> FillRecord:
        bad = f"{where}: not a valid fill-check record"
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise Vox2VoxError(f"{bad} (format/version); run vox2vox fill-check again")
        try:
            record = cls(
                channel=str(doc["channel"]),
                segmenters=tuple(ModelRef(str(m["path"]), str(m["sha256"])) for m in doc["segmenters"]),
                translator=ModelRef(str(doc["translator"]["path"]), str(doc["translator"]["sha256"])),
                data=str(doc["data"]), case_ids=tuple(str(c) for c in doc["case_ids"]),
                dice={str(k): float(v) for k, v in doc["dice"].items()},
                regions={str(r): {str(k): float(v) for k, v in d.items()} for r, d in doc["regions"].items()},
                per_case={str(c): {str(k): float(v) for k, v in d.items()} for c, d in doc["per_case"].items()},
                fallback=doc["fallback"], min_gain=float(doc["min_gain"]), created=str(doc.get("created", "")),
                versions={str(k): str(v) for k, v in (doc.get("versions") or {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise Vox2VoxError(f"{bad} ({type(err).__name__}: {err}); run vox2vox fill-check again") from None
        if record.fallback not in ("absent", "zeroed") or not {"real", "synthesised", record.fallback} <= set(record.dice):
            raise Vox2VoxError(f"{bad} (routes); run vox2vox fill-check again")
        return record


def segmenter_key(shas: Sequence[str]) -> str:
    """The identity of a set of segmenters (an ensemble's members in any order): 16 hex digits."""
    return sha256("\n".join(sorted(shas)).encode()).hexdigest()[:16]


def record_path(translator_file: str | Path, segmenter_shas: Sequence[str], channel: str) -> Path:
    """``<translator>.fill-check-<channel>-<segmenters' key>.json`` beside the translator's file."""
    file = Path(translator_file)
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in channel)
    return file.with_name(f"{file.name}.fill-check-{safe}-{segmenter_key(segmenter_shas)}.json")


def write_record(record: FillRecord, translator_file: str | Path) -> Path:
    path = record_path(translator_file, [m.sha256 for m in record.segmenters], record.channel)
    atomic_write_text(path, json.dumps(record.to_json(), indent=2) + "\n")
    return path


def read_record(translator_file: str | Path, segmenter_files: Sequence[str | Path], channel: str) -> FillRecord | None:
    """The record for these files (None when none was measured). A record whose SHA-256s are not
    the files' (a model retrained in place, a record copied by hand) is refused, never used."""
    translator = ModelRef.of(translator_file)
    shas = [file_sha256(f) for f in segmenter_files]
    path = record_path(translator_file, shas, channel)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise Vox2VoxError(f"{path}: unreadable fill-check record ({err}); run vox2vox fill-check again") from None
    record = FillRecord.from_json(doc, path)
    if record.translator.sha256 != translator.sha256 or sorted(m.sha256 for m in record.segmenters) != sorted(shas):
        raise Vox2VoxError(f"{path}: measured for other model files than {translator_file} and the segmenter(s) "
                           "given (SHA-256 differs); run vox2vox fill-check again")
    return record


def records_beside(translator_file: str | Path) -> list[dict[str, Any]]:
    """Every fill-check record beside a translator's file as JSON (``vox2vox info``), whichever
    segmenters they were measured for; an unreadable one as ``{"file", "error"}``."""
    file = Path(translator_file)
    out: list[dict[str, Any]] = []
    for path in sorted(file.parent.glob(f"{file.name}.fill-check-*.json")):
        try:
            out.append(FillRecord.from_json(json.loads(path.read_text(encoding="utf-8")), path).to_json())
        except (OSError, ValueError, Vox2VoxError) as err:
            out.append({"file": path.name, "error": str(err).replace(str(path) + ": ", "")})
    return out


Decision = Literal["synthesise", "absent", "refuse"]


@dataclass(frozen=True)
class FillDecision:
    """What ``predict --fill-missing CHANNEL=TRANSLATOR`` does for one channel, and the one line why."""

    channel: str
    action: Decision
    reason: str


def fill_decision(channel: str, translator_path: str | Path, segmenter_paths: Sequence[str | Path],
                  record: FillRecord | None, *, tolerates_absent: bool, unchecked: bool = False) -> FillDecision:
    """The decision for one filled channel (module docstring); ``unchecked`` (``--fill-unchecked``)
    uses a synthesis that has no record, and nothing else."""
    segs = ", ".join(str(p) for p in segmenter_paths)
    flag = f"--fill-missing {channel}={translator_path}"
    if record is None:
        if unchecked:
            return FillDecision(channel, "synthesise", f"{flag}: synthesis used UNMEASURED (--fill-unchecked): no "
                                "fill-check record says whether it helps this segmenter")
        return FillDecision(channel, "refuse", (
            f"{flag}: no fill-check record says whether this synthesis helps {segs}; measure it first with "
            f"'vox2vox fill-check --segmenter {segs} --translator {translator_path} --data LABELLED_CASES "
            f"--channel {channel}', or pass --fill-unchecked to use it unmeasured"))
    if record.helps:
        return FillDecision(channel, "synthesise", f"{flag}: synthesis used: fill-check measured {record.summary()}")
    why = (f"fill-check measured {record.summary()}, a gain of {record.gain:+.3f} (needed {record.min_gain:+.3f})")
    if tolerates_absent:
        return FillDecision(channel, "absent", f"{flag}: synthesis NOT used, predicting without {channel} (the "
                                               f"segmenter was trained with channel dropout): {why}")
    return FillDecision(channel, "refuse", (
        f"{flag}: refused: the synthesis does not help {segs}: {why}; a segmenter trained with "
        f"augment.channel_dropout would predict without {channel}"))


def decide_fills(fill_paths: Mapping[str, Path], segmenter_paths: Sequence[Path], *, tolerates_absent: bool,
                 unchecked: bool = False) -> list[FillDecision]:
    """:func:`fill_decision` for every ``channel -> translator file``, records read from beside them."""
    return [fill_decision(ch, path, segmenter_paths, read_record(path, segmenter_paths, ch),
                          tolerates_absent=tolerates_absent, unchecked=unchecked)
            for ch, path in fill_paths.items()]
