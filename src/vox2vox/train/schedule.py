"""Learning-rate schedules over training progress (epochs or a time budget).

A run has either a number of epochs or a time budget (``train.budget``, e.g. ``"30m"``). Training
progress ``p`` in [0, 1] is the completed fraction of whichever applies, and the learning rate of
both networks is ``lr * factor(p)``: ``poly`` (``(1 - p) ** 0.9``, nnU-Net's decay), ``cosine``
or ``constant`` (the paper). A budgeted run stops when ``p`` reaches 1, so the rate has decayed to
its end exactly when the time is up; the seconds already spent are saved in every checkpoint, so a
resumed run continues the same schedule instead of restarting it.
"""

from __future__ import annotations

import math

from vox2vox.config import Schedule
from vox2vox.errors import Vox2VoxError


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
