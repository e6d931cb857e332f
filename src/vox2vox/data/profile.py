"""What a model's training data looked like, and how far a new case lies from it.

:class:`DataProfile` is the training data's fingerprint in a model's card: the case counts, each
axis's voxel spacing and shape, and per channel its modality and the spread of its foreground
intensities over the cases (the 0.5th, 50th and 99.5th percentiles inside the foreground, from
the preprocessing record, :func:`vox2vox.data.preprocessing.foreground_stats`). It is built from
the preprocessing records training already has, so no case is read twice.

:func:`distribution_problems` compares one case's preprocessing record with a profile at
prediction time and names what is far from the training data (``predict`` warns; the case is
still segmented). What "far" means, and why, is in docs/bad-inputs.md ("Inputs unlike the
training data"):

- spacing: an axis more than :data:`SPACING_FACTOR` times finer or coarser than any training case;
- intensities, when the model sees them as they are (``ct-window``, ``none``): the 0.5th or
  99.5th foreground percentile more than :data:`INTENSITY_MARGIN` of the training cases' typical
  foreground range outside the training cases' range of that percentile (the tails show a unit or
  offset error, e.g. CT stored without its rescale intercept; the median is left out, as a CT's
  foreground median moves with how much air or lung the volume holds);
- intensities, when the model z-scores every case (scale and offset do not matter to it): a
  foreground range more than :data:`SCALE_FACTOR` times wider or narrower than any training
  case's, which points at wrong units or a wrongly rescaled file (already z-scored inputs, about
  50 times narrower than raw MR, are normalised the same and stay silent);
- modality: a channel that looks like CT (Hounsfield units) where training saw MR, or the reverse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vox2vox.data.fingerprint import looks_like_ct
from vox2vox.errors import Vox2VoxError

SPACING_FACTOR = 2.0
INTENSITY_MARGIN = 0.25
SCALE_FACTOR = 100.0
#: Percentiles of the foreground intensities a profile records per channel.
PERCENTILES = ("p00_5", "median", "p99_5")
_SAID = {"p00_5": "0.5th percentile", "p99_5": "99.5th percentile"}


@dataclass(frozen=True)
class Spread:
    """The smallest, median and largest value of one quantity over the training cases."""

    low: float
    median: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(float(np.min(values)), float(np.median(values)), float(np.max(values)))

    def to_json(self) -> list[float]:
        return [self.low, self.median, self.high]

    @classmethod
    def from_json(cls, value: Any, where: str) -> Spread:
        if (not isinstance(value, list) or len(value) != 3
                or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
            raise Vox2VoxError(f"{where}: expected [low, median, high] (three finite numbers)")
        return cls(float(value[0]), float(value[1]), float(value[2]))

    def format(self, unit: str = "") -> str:
        if self.low == self.high:
            return f"{self.low:.4g}{unit}"
        return f"{self.low:.4g}-{self.high:.4g}{unit} (median {self.median:.4g})"


@dataclass(frozen=True)
class ChannelProfile:
    """One input channel over the training cases: modality and foreground intensity percentiles."""

    name: str
    kind: str  # "ct" (Hounsfield units) or "mr"
    p00_5: Spread
    median: Spread
    p99_5: Spread
    width: Spread  # p99_5 - p00_5: the foreground's intensity range, per case

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind,
                **{key: getattr(self, key).to_json() for key in (*PERCENTILES, "width")}}

    @classmethod
    def from_json(cls, value: Any, where: str) -> ChannelProfile:
        if not isinstance(value, dict) or not isinstance(value.get("name"), str) or value.get("kind") not in ("ct", "mr"):
            raise Vox2VoxError(f"{where}: expected a channel with a name and kind ct or mr")
        spreads = {key: Spread.from_json(value.get(key), f"{where}.{key}") for key in (*PERCENTILES, "width")}
        return cls(value["name"], value["kind"], **spreads)


@dataclass(frozen=True)
class DataProfile:
    """The training data of a model, as its card records it (every field a plain JSON type when saved)."""

    n_train: int
    n_val: int
    spacing: tuple[Spread, Spread, Spread]  # mm per canonical axis, on the input grid
    shape: tuple[Spread, Spread, Spread]  # voxels per canonical axis, on the input grid
    channels: tuple[ChannelProfile, ...]

    def to_json(self) -> dict[str, Any]:
        return {"n_train": self.n_train, "n_val": self.n_val,
                "spacing": [s.to_json() for s in self.spacing], "shape": [s.to_json() for s in self.shape],
                "channels": [c.to_json() for c in self.channels]}

    @classmethod
    def from_json(cls, value: Any, where: str) -> DataProfile:
        """Parse a saved profile; anything malformed is one :class:`Vox2VoxError` naming ``where``."""
        if not isinstance(value, dict):
            raise Vox2VoxError(f"{where}: expected a JSON object")
        for key in ("n_train", "n_val"):
            if isinstance(value.get(key), bool) or not isinstance(value.get(key), int) or value[key] < 0:
                raise Vox2VoxError(f"{where}.{key}: expected a count")
        axes = {}
        for key in ("spacing", "shape"):
            items = value.get(key)
            if not isinstance(items, list) or len(items) != 3:
                raise Vox2VoxError(f"{where}.{key}: expected one entry per axis")
            axes[key] = tuple(Spread.from_json(v, f"{where}.{key}") for v in items)
        channels = value.get("channels")
        if not isinstance(channels, list) or not channels:
            raise Vox2VoxError(f"{where}.channels: expected a list of channels")
        return cls(value["n_train"], value["n_val"], axes["spacing"], axes["shape"],
                   tuple(ChannelProfile.from_json(c, f"{where}.channels") for c in channels))


def profile_from_records(records: Sequence[dict[str, Any]], channels: Sequence[str], *, n_train: int,
                         n_val: int) -> DataProfile | None:
    """The profile of the cases whose preprocessing records are ``records`` (None when a record
    predates the intensity statistics, e.g. from an old cache)."""
    if not records or any("intensity" not in r or "original_spacing" not in r for r in records):
        return None
    per_channel = []
    for i, name in enumerate(channels):
        stats = [r["intensity"][i] for r in records]
        spreads = {key: Spread.of([s[key] for s in stats]) for key in PERCENTILES}
        per_channel.append(ChannelProfile(name, "ct" if looks_like_ct(stats) else "mr", **spreads,
                                          width=Spread.of([s["p99_5"] - s["p00_5"] for s in stats])))
    spacing = tuple(Spread.of([r["original_spacing"][a] for r in records]) for a in range(3))
    shape = tuple(Spread.of([r["original_shape"][a] for r in records]) for a in range(3))
    return DataProfile(n_train, n_val, spacing, shape, tuple(per_channel))  # type: ignore[arg-type]


def distribution_problems(profile: DataProfile, record: dict[str, Any], *, normalize: str,
                          channel_names: Sequence[str] | None = None) -> list[str]:
    """What in one case (its preprocessing ``record``) is far from the training data, one short
    phrase each (empty when nothing is). ``normalize`` is the model's ``preprocess.normalize``;
    ``channel_names`` the input's channel names (compared by name when given)."""
    problems = []
    trained = [c.name for c in profile.channels]
    if channel_names is not None and list(channel_names) != trained:
        problems.append(f"channels {', '.join(channel_names)} given for the model's {', '.join(trained)}")
    for axis, (value, spread) in enumerate(zip(record.get("original_spacing", ()), profile.spacing, strict=False)):
        if value > spread.high * SPACING_FACTOR or value < spread.low / SPACING_FACTOR:
            problems.append(f"spacing {value:.3g} mm on axis {axis} (training {spread.format(' mm')})")
    for stats, channel in zip(record.get("intensity", ()), profile.channels, strict=False):
        if stats is None:  # an absent channel (predict --missing): nothing was read
            continue
        kind = "ct" if looks_like_ct([stats]) else "mr"
        if kind != channel.kind:
            problems.append(f"channel {channel.name} looks like {kind.upper()}, training was {channel.kind.upper()}")
        if normalize in ("zscore", "zscore-nonzero"):
            width = stats["p99_5"] - stats["p00_5"]
            if width > channel.width.high * SCALE_FACTOR or width < channel.width.low / SCALE_FACTOR:
                problems.append(f"channel {channel.name} foreground intensities span {width:.3g} "
                                f"(training {channel.width.format()}): wrong units or scaling?")
            continue
        margin = INTENSITY_MARGIN * max(channel.width.median, 1e-6)
        for key in ("p00_5", "p99_5"):
            spread: Spread = getattr(channel, key)
            if not spread.low - margin <= stats[key] <= spread.high + margin:
                problems.append(f"channel {channel.name} foreground {_SAID[key]} {stats[key]:.4g} "
                                f"(training {spread.format()})")
                break
    return problems
