"""Whether a plan trains with the adversarial term: a recorded rule over recorded evidence.

The evidence is the equal-time comparisons of benchmarks/RESULTS.md between the planned Vox2Vox
(Dice + CE + 0.1 x LSGAN from 30% of the budget) and its Dice-only twin (the same plan with
``loss.adversarial=false``), one :class:`Comparison` per task and protocol. The rule
(:func:`adversarial_decision`): where comparisons exist on this device within a factor of
:data:`BUDGET_FACTOR` of the budget, the term is planned only when it beat Dice-only by more than
:data:`NOISE` (the seed spread of these rounds) on at least :data:`TASKS_NEEDED` of them; otherwise
it is planned off and the reason cites the evidence. Where nothing was measured (a GPU, longer CPU
budgets), the method's term stays, and the reason says that it is unmeasured there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Comparison:
    """One equal-time comparison of the planned term against Dice-only (means over seeds)."""

    task: str
    device: str  # "cpu" or "cuda"
    budget_seconds: float  # per run (or per fold)
    seeds: int
    with_critic: float  # Dice with the adversarial term
    dice_only: float
    step_share: float  # fraction of Dice-only's steps the critic's runs lost in the same time
    where: str  # the benchmarks/RESULTS.md section

    @property
    def gain(self) -> float:
        return self.with_critic - self.dice_only


#: benchmarks/RESULTS.md's equal-time comparisons (the critic's runs against their Dice-only twins).
EVIDENCE: tuple[Comparison, ...] = (
    Comparison("BraTS FLAIR -> WT, 4-fold cv", "cpu", 32 * 60, 2, 0.690, 0.692, 0.2,
               "Final rounds: the planned Vox2Vox, its Dice-only ablation and the MONAI U-Net"),
    Comparison("sarcoma CT, leave-one-out", "cpu", 30 * 60, 2, 0.255, 0.288, 0.2,
               "Final rounds: the planned Vox2Vox, its Dice-only ablation and the MONAI U-Net"),
    Comparison("README path, BraTS FLAIR -> WT, 3 unseen cases", "cpu", 30 * 60, 1, 0.842, 0.840, 0.26,
               "The README's path on an idle machine"),
)

#: Dice differences below this are within the seed spread of the rounds above (0.01-0.03).
NOISE = 0.01
#: The term must beat Dice-only on this many tasks (issue 27's bar: two tasks at equal time).
TASKS_NEEDED = 2
#: A comparison speaks for budgets within this factor of its own.
BUDGET_FACTOR = 2.0


@dataclass(frozen=True)
class AdversarialDecision:
    use: bool
    reason: str
    evidence: tuple[Comparison, ...]


def adversarial_decision(device: str, budget_seconds: float | None,
                         evidence: tuple[Comparison, ...] = EVIDENCE) -> AdversarialDecision:
    """Plan the adversarial term or not, by the module's rule, with the reason line for the plan."""
    budget = budget_seconds or 0.0
    relevant = tuple(c for c in evidence if c.device == device and budget > 0
                     and c.budget_seconds / BUDGET_FACTOR <= budget <= c.budget_seconds * BUDGET_FACTOR)
    if not relevant:
        return AdversarialDecision(True, (
            "loss Dice (per sample and class) + cross-entropy + 0.1 x LSGAN from 30% of training (the method): "
            f"no equal-time comparison with Dice-only exists for a {device} budget like this one "
            "(benchmarks/RESULTS.md); compare with --set loss.adversarial=false"), relevant)
    helped = [c for c in relevant if c.gain > NOISE]
    facts = "; ".join(f"{c.task}: {c.with_critic:.3f} with the critic vs {c.dice_only:.3f} Dice-only "
                      f"({c.seeds} seed{'s' if c.seeds > 1 else ''})" for c in relevant)
    share = max(c.step_share for c in relevant)
    if len(helped) >= TASKS_NEEDED:
        return AdversarialDecision(True, (
            "loss Dice (per sample and class) + cross-entropy + 0.1 x LSGAN from 30% of training: at equal time "
            f"the critic beat Dice-only by more than {NOISE} on {len(helped)} tasks ({facts}; "
            "benchmarks/RESULTS.md)"), relevant)
    return AdversarialDecision(False, (
        "loss Dice (per sample and class) + cross-entropy, no adversarial term: at equal time on a "
        f"{device} with a budget like this one the critic was within {NOISE} of Dice-only or below it on "
        f"{len(relevant) - len(helped)} of {len(relevant)} comparisons ({facts}) and cost up to "
        f"{share:.0%} of the steps (benchmarks/RESULTS.md; train/adversarial.py's rule wants a gain above "
        f"{NOISE} on {TASKS_NEEDED} tasks); turn it on with --set loss.adversarial=true (0.1 x LSGAN from "
        "30% of training, as planned below)"), relevant)
