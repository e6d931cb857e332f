"""Progress bars only where someone watches them.

A bar redraws itself with carriage returns: on a terminal that is one changing line, in a log file,
a pipe or a scheduler's output (Slurm) it is thousands. Bars therefore show only when stderr is a
terminal and ``--no-progress`` was not given; the one-line notes, warnings and per-epoch rows that
the library writes beside them are not bars and stay.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator

_BARS: contextvars.ContextVar[bool] = contextvars.ContextVar("vox2vox_progress_bars", default=True)


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Within this block, progress bars are allowed (``True``, the default) or never drawn."""
    token = _BARS.set(enabled)
    try:
        yield
    finally:
        _BARS.reset(token)


def bar_hidden(progress: bool = True) -> bool:
    """tqdm's ``disable`` for a bar on stderr: hidden when the caller wants no progress, when bars
    are switched off (:func:`progress_bars`), or when stderr is not a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return not (progress and _BARS.get() and isatty is not None and isatty())
