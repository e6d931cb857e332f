"""Time budgets and learning-rate schedules.

A run has either a number of epochs or a time budget (``train.budget``, e.g. ``"30m"``). Training
progress ``p`` in [0, 1] is the completed fraction of whichever applies, and the learning rate of
both networks is ``lr * factor(p)``: ``poly`` (``(1 - p) ** 0.9``, nnU-Net's decay), ``cosine``
or ``constant`` (the paper). A budgeted run stops when ``p`` reaches 1, so the rate has decayed to
its end exactly when the time is up; the seconds already spent are saved in every checkpoint, so a
resumed run continues the same schedule instead of restarting it.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from vox2vox.errors import Vox2VoxError

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


def lr_factor(progress: float, schedule: Schedule) -> float:
    """Multiplier of the base learning rate at training progress ``progress`` in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    if schedule == "poly":
        return (1.0 - p) ** 0.9
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "constant":
        return 1.0
    raise Vox2VoxError(f"optim.schedule={schedule!r}: choose constant, poly or cosine")


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return (f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s") if seconds >= 60 else f"{s}s"
