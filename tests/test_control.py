"""The loop's horizon: epochs or a budget, and what is due after each epoch."""

from __future__ import annotations

import pytest

from vox2vox.train.control import Horizon


def test_an_epoch_horizon_validates_and_saves_on_its_cadence():
    h = Horizon(epochs=6, budget_seconds=None, val_every=2, checkpoint_every=3)
    assert h.label("30m") == "6" and h.row_label(4, 40) == "epoch 4/6"
    assert [h.done(epoch=e, seconds=1e9) for e in (5, 6)] == [False, True]  # seconds do not end it
    assert h.progress(epoch=2, batch=1, batches=4, seconds=0.0) == pytest.approx(2.25 / 6)
    due = {e: h.epoch_end(epoch=e, seconds=0.0, mark=0) for e in range(1, 7)}
    assert [e for e, d in due.items() if d.validate] == [2, 4, 6]
    assert [e for e, d in due.items() if d.save_last] == [3]  # the last epoch's state is saved after the loop
    assert all(d.show_row and d.mark == 0 for d in due.values())


def test_a_budget_horizon_validates_at_every_tenth_and_ends_with_the_budget():
    h = Horizon(epochs=1000, budget_seconds=100.0, val_every=1, checkpoint_every=1)
    assert h.label("100s") == "100s budget" and h.row_label(4, 40) == "epoch 4 (step 40)"
    assert not h.done(epoch=5000, seconds=99.9) and h.done(epoch=1, seconds=100.0)
    assert h.progress(epoch=0, batch=0, batches=3, seconds=25.0) == 0.25
    quiet = h.epoch_end(epoch=3, seconds=9.0, mark=0)  # still inside the first tenth
    assert (quiet.validate, quiet.save_last, quiet.show_row, quiet.mark) == (False, False, False, 0)
    mark = h.epoch_end(epoch=4, seconds=21.0, mark=0)  # past two tenths: one validation, one checkpoint
    assert (mark.validate, mark.save_last, mark.show_row, mark.mark) == (True, True, True, 2)
    assert not h.epoch_end(epoch=5, seconds=29.0, mark=2).validate
    end = h.epoch_end(epoch=50, seconds=100.5, mark=9)  # the budget is spent: validate, fit saves after the loop
    assert (end.validate, end.save_last, end.mark) == (True, False, 10)
