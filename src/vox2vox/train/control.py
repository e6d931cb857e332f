"""What the training loop asks about time: how far along the run is, whether validation or a
checkpoint is due, whether it is done (:class:`Horizon`: a number of epochs or a ``train.budget``),
the run's clock (a budget counts every second of every ``train`` call of a run) and the Ctrl-C flag
(the first Ctrl-C finishes the current step, saves and stops; a second stops at once).
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from typing import Any

from vox2vox.config import Config

#: With a budget, validation and the last checkpoint come at every tenth of it (epochs are short
#: and many, so ``val_every``/``checkpoint_every`` in epochs would mean nothing).
BUDGET_MARKS = 10


@dataclass(frozen=True)
class EpochEnd:
    """What is due after an epoch: validate, save the last checkpoint (the loop's resume point; the
    final state is saved after the loop instead), print the row; and the validation mark reached."""

    validate: bool
    save_last: bool
    show_row: bool
    mark: int


@dataclass(frozen=True)
class Horizon:
    """How long a run trains, ``epochs`` or ``budget_seconds`` (the budget wins when both are set,
    as the config's validation says), and the loop's questions about it, answered in one place."""

    epochs: int
    budget_seconds: float | None
    val_every: int
    checkpoint_every: int

    @classmethod
    def of(cls, config: Config) -> Horizon:
        train = config.train
        return cls(train.epochs, train.budget_seconds, train.val_every, train.checkpoint_every)

    def label(self, budget: str | None) -> str:
        """The progress bar's total: ``30m budget`` or the epoch count."""
        return f"{budget} budget" if self.budget_seconds else str(self.epochs)

    def done(self, *, epoch: int, seconds: float) -> bool:
        """Whether the run is over after ``epoch`` completed epochs and ``seconds`` spent."""
        return seconds >= self.budget_seconds if self.budget_seconds else epoch >= self.epochs

    def progress(self, *, epoch: int, batch: int, batches: int, seconds: float) -> float:
        """The completed fraction of training at ``batch`` of ``batches`` in epoch ``epoch``: the
        budget's spent share, or the epochs' (by batch); it drives the learning-rate schedule and
        when the adversarial term starts."""
        if self.budget_seconds:
            return seconds / self.budget_seconds
        return (epoch + batch / max(batches, 1)) / self.epochs

    def epoch_end(self, *, epoch: int, seconds: float, mark: int) -> EpochEnd:
        """What is due after ``epoch`` completed epochs and ``seconds`` spent, given the budget mark
        (tenths of it) reached at the last validation."""
        if self.budget_seconds:
            last = self.done(epoch=epoch, seconds=seconds)
            reached = min(int(BUDGET_MARKS * seconds / self.budget_seconds), BUDGET_MARKS)
            new_mark = reached > mark
            return EpochEnd(validate=last or new_mark, save_last=new_mark and not last, show_row=last or new_mark,
                            mark=max(reached, mark))
        last = epoch == self.epochs
        return EpochEnd(validate=epoch % self.val_every == 0 or last,
                        save_last=epoch % self.checkpoint_every == 0 and not last, show_row=True, mark=mark)

    def row_label(self, epoch: int, step: int) -> str:
        """How a log line names the epoch: ``epoch 12 (step 36)`` with a budget, else ``epoch 12/30``."""
        return f"epoch {epoch}" + (f" (step {step})" if self.budget_seconds else f"/{self.epochs}")


class RunClock:
    """Seconds the run has spent: what earlier calls spent plus the time since ``started``."""

    def __init__(self, before: float, started: float | None) -> None:
        self.before = before
        self.started = time.perf_counter() if started is None else started

    def __call__(self) -> float:
        return self.before + time.perf_counter() - self.started


class InterruptFlag:
    """Turns the first Ctrl-C into a flag the loop checks after the current step (then saves)."""

    def __init__(self) -> None:
        self.flag = False
        self._previous: Any = None

    def __enter__(self) -> InterruptFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
