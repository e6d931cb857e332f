"""The plan's adversarial decision follows the recorded rule over the recorded evidence (train/adversarial.py)."""

from __future__ import annotations

import dataclasses

import pytest

from test_planner import BRATS_LIKE, CPU, TABLE
from vox2vox.config import Config
from vox2vox.train.adversarial import EVIDENCE, NOISE, Comparison, adversarial_decision
from vox2vox.train.planner import Device, make_plan


def test_a_cpu_plan_at_the_measured_budgets_leaves_the_term_off_and_says_why_and_how_to_turn_it_on():
    for minutes in (15, 30, 60):
        plan = make_plan(BRATS_LIKE, device=CPU, budget_seconds=minutes * 60, throughput=TABLE)
        loss = Config.from_dict(plan.config).loss
        assert not loss.adversarial and loss.lambda_adv == 0.1 and loss.adversarial_start == 0.3
        reason = next(r for r in plan.reasons if r.startswith("loss"))
        assert "no adversarial term" in reason and "--set loss.adversarial=true" in reason
        cited = adversarial_decision("cpu", minutes * 60).evidence
        assert cited and set(cited) <= set(EVIDENCE)
        assert all(f"{c.with_critic:.3f} with the critic vs {c.dice_only:.3f} Dice-only" in reason for c in cited)


@pytest.mark.parametrize(("device", "hours"), [("cuda", 12), ("cpu", 8)])
def test_where_nothing_was_measured_the_method_keeps_its_term_and_says_it_is_unmeasured(device, hours):
    dev = Device(device, 80 * 2**30, device, 8) if device == "cuda" else CPU
    plan = make_plan(BRATS_LIKE, device=dev, budget_seconds=hours * 3600, throughput=TABLE)
    assert Config.from_dict(plan.config).loss.adversarial
    assert any("no equal-time comparison" in r for r in plan.reasons)


def test_the_rule_adopts_the_term_only_when_it_beats_dice_only_on_two_tasks():
    base = Comparison("a", "cpu", 1800, 3, 0.80, 0.80, 0.25, "x")
    win = dataclasses.replace(base, with_critic=0.80 + 2 * NOISE)
    assert adversarial_decision("cpu", 1800, (win, dataclasses.replace(win, task="b"))).use
    assert not adversarial_decision("cpu", 1800, (win, base)).use  # one task is not enough
    slight = dataclasses.replace(base, with_critic=0.80 + NOISE / 2)
    assert not adversarial_decision("cpu", 1800, (slight, dataclasses.replace(slight, task="b"))).use
    # A comparison speaks only for its device and budgets within a factor of two of its own.
    assert adversarial_decision("cpu", 4 * 3600, (base,)).use
    assert adversarial_decision("cuda", 1800, (base,)).use
    assert adversarial_decision("cpu", None, (base,)).use
