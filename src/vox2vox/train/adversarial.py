"""Whether a plan trains with the adversarial term, and which critic: a recorded rule over recorded evidence.

The evidence is the equal-time comparisons of benchmarks/RESULTS.md between a Vox2Vox with the
adversarial term (0.1 x LSGAN from 30% of the budget) and its Dice-only twin (the same plan with
``loss.adversarial=false``), one :class:`Comparison` per task, protocol and critic (:data:`CRITICS`:
the planned critic, or the cheap one that judges the pair pooled by 2). The rule
(:func:`adversarial_decision`): a critic *helped* on a task when, over seeds and test cases, it
raised whole-volume or lesion-wise Dice by more than :data:`NOISE` or cut HD95 by more than
:data:`HD95_SHARE`, without lowering Dice by more than :data:`NOISE`. Where comparisons exist on
this device within a factor of :data:`BUDGET_FACTOR` of the budget, a critic is planned only when
it helped on at least :data:`TASKS_NEEDED` tasks (the cheaper one first); otherwise the term is
planned off and the reason cites the evidence. Where nothing was measured (a GPU, longer CPU
budgets), the method's term stays with the cheap critic, and the reason says that it is unmeasured
there: where both were measured the plain critic never helped and cost four times as much a step.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The critics a comparison can be about, and the discriminator settings each one is planned with.
CRITICS: dict[str, dict[str, int]] = {
    "planned": {"input_scale": 1},
    "cheap": {"input_scale": 2},  # the pair judged pooled by 2
}

#: What each critic adds to a CPU step once it runs, by task (benchmarks/critic_cost.py, RESULTS.md:
#: "What the critic costs per step" and "What the translation critic costs a step").
STEP_COST: dict[str, dict[str, float]] = {
    "segment": {"planned": 0.55, "cheap": 0.13},
    "translate": {"planned": 0.61, "cheap": 0.22},
}


def cost_line(kind: str, critic: str) -> str:
    """The plan's words for a critic's cost a CPU step, beside the other critic's."""
    other = next(c for c in CRITICS if c != critic)
    switch = f"--set discriminator.input_scale={CRITICS[other]['input_scale']}"
    return (f"once it runs it adds about {STEP_COST[kind][critic]:.0%} to a CPU step, {STEP_COST[kind][other]:.0%} "
            f"with {switch} (benchmarks/RESULTS.md, critic_cost.py)")


@dataclass(frozen=True)
class Comparison:
    """One equal-time comparison of a critic against Dice-only (means over seeds and test cases).

    ``hd95`` and ``lesion_dice`` are (with the critic, Dice-only) where the round recorded them."""

    task: str
    device: str  # "cpu" or "cuda"
    budget_seconds: float  # per run (or per fold)
    seeds: int
    with_critic: float  # whole-volume Dice with the adversarial term
    dice_only: float
    step_share: float  # fraction of Dice-only's steps the critic's runs lost in the same time
    where: str  # the benchmarks/RESULTS.md section
    critic: str = "planned"  # a key of CRITICS
    hd95: tuple[float, float] | None = None  # mm
    lesion_dice: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.critic not in CRITICS:
            raise ValueError(f"critic {self.critic!r} is not one of {', '.join(CRITICS)}")

    @property
    def gain(self) -> float:
        return self.with_critic - self.dice_only

    @property
    def helped(self) -> bool:
        """The rule's one test of a comparison (see the module's docstring)."""
        if self.gain < -NOISE:
            return False
        lesion = self.lesion_dice is not None and self.lesion_dice[0] - self.lesion_dice[1] > NOISE
        closer = self.hd95 is not None and self.hd95[0] < (1.0 - HD95_SHARE) * self.hd95[1]
        return self.gain > NOISE or lesion or closer

    def describe(self) -> str:
        parts = [f"Dice {self.with_critic:.3f} with the critic vs {self.dice_only:.3f} Dice-only"]
        if self.lesion_dice is not None:
            parts.append(f"lesion-wise {self.lesion_dice[0]:.3f} vs {self.lesion_dice[1]:.3f}")
        if self.hd95 is not None:
            parts.append(f"HD95 {self.hd95[0]:.1f} vs {self.hd95[1]:.1f} mm")
        name = "" if self.critic == "planned" else f", {self.critic} critic"
        return f"{self.task}{name}: {', '.join(parts)} ({self.seeds} seed{'s' if self.seeds > 1 else ''})"


_FINAL = "Final rounds: the planned Vox2Vox, its Dice-only ablation and the MONAI U-Net"
_EQUAL_TIME = "The README path, its cheap-critic twin and the U-Net at equal time (issue 27)"
_THREE_TASKS = "The README path, its cheap-critic twin and the U-Net on three tasks (issue 27)"

#: benchmarks/RESULTS.md's equal-time comparisons (the critic's runs against their Dice-only twins).
EVIDENCE: tuple[Comparison, ...] = (
    Comparison("BraTS FLAIR -> WT, 4-fold cv", "cpu", 32 * 60, 2, 0.690, 0.692, 0.2, _FINAL),
    Comparison("sarcoma CT, leave-one-out", "cpu", 30 * 60, 2, 0.255, 0.288, 0.2, _FINAL),
    Comparison("README path, BraTS FLAIR -> WT, 3 unseen cases", "cpu", 30 * 60, 1, 0.842, 0.840, 0.26,
               "The README's path on an idle machine"),
    Comparison("README path, BraTS 2018 FLAIR -> 2 BraTS 2013 cases", "cpu", 30 * 60, 4, 0.806, 0.803, 0.2,
               _EQUAL_TIME, critic="cheap", hd95=(6.4, 9.3)),
    # The plan that trains on every case (one held out: 0.350 vs 0.386, the same section).
    Comparison("README path, sarcoma CT, 3 cases -> 2 unseen", "cpu", 30 * 60, 3, 0.385, 0.405, 0.12,
               _THREE_TASKS, critic="cheap", hd95=(40.1, 37.1), lesion_dice=(0.305, 0.317)),
    Comparison("README path, BraTS WT/TC/ET (their mean), 2 folds of 1 -> 1 case", "cpu", 15 * 60, 3,
               0.476, 0.484, 0.14, _THREE_TASKS, critic="cheap", hd95=(49.3, 48.4), lesion_dice=(0.021, 0.015)),
    Comparison("README path, BraTS 2018 FLAIR -> 2 BraTS 2013 cases, 2 h", "cpu", 2 * 3600, 3, 0.793, 0.801, 0.06,
               "The critic at 2 hours: the cheap critic against Dice-only", critic="cheap", hd95=(9.5, 8.5),
               lesion_dice=(0.793, 0.801)),
)

#: Dice differences below this are within the seed spread of the rounds above (0.01-0.03).
NOISE = 0.01
#: An HD95 shorter by less than this share of Dice-only's is not counted as a gain.
HD95_SHARE = 0.10
#: A critic must help on this many tasks (issue 27's bar: two tasks at equal time).
TASKS_NEEDED = 2
#: A comparison speaks for budgets within this factor of its own.
BUDGET_FACTOR = 2.0


def _comparable(evidence: tuple, device: str, budget_seconds: float | None) -> tuple:
    """The comparisons that speak for this device and a budget within :data:`BUDGET_FACTOR` of theirs."""
    budget = budget_seconds or 0.0
    return tuple(c for c in evidence if c.device == device and budget > 0
                 and c.budget_seconds / BUDGET_FACTOR <= budget <= c.budget_seconds * BUDGET_FACTOR)


@dataclass(frozen=True)
class AdversarialDecision:
    use: bool
    reason: str
    evidence: tuple[Comparison, ...]
    critic: str = "planned"  # the CRITICS key planned (and the one ``--set loss.adversarial=true`` gets when off)


def adversarial_decision(device: str, budget_seconds: float | None,
                         evidence: tuple[Comparison, ...] = EVIDENCE) -> AdversarialDecision:
    """Plan the adversarial term or not, and which critic, by the module's rule, with the plan's reason line."""
    relevant = _comparable(evidence, device, budget_seconds)
    if not relevant:
        return AdversarialDecision(True, (
            "loss Dice (per sample and class) + cross-entropy + 0.1 x LSGAN from 30% of training (the method), "
            "the critic judging the pair pooled by 2: no equal-time comparison with Dice-only exists for a "
            f"{device} budget like this one, and where both critics were compared the plain one never helped and "
            f"cost +{STEP_COST['segment']['planned']:.0%} a CPU step against +{STEP_COST['segment']['cheap']:.0%} "
            "(benchmarks/RESULTS.md); compare with --set loss.adversarial=false "
            "(--set discriminator.input_scale=1 for the plain critic)"), relevant, "cheap")
    facts = "; ".join(c.describe() for c in relevant)
    rule = (f"train/adversarial.py's rule: Dice or lesion-wise Dice up by more than {NOISE}, or HD95 down by "
            f"more than {HD95_SHARE:.0%}, on {TASKS_NEEDED} tasks")
    for critic in sorted(CRITICS, key=lambda k: -CRITICS[k]["input_scale"]):  # the cheaper critic first
        helped = [c for c in relevant if c.critic == critic and c.helped]
        if len({c.task for c in helped}) >= TASKS_NEEDED:
            how = "" if critic == "planned" else ", the critic judging the pair pooled by 2"
            return AdversarialDecision(True, (
                f"loss Dice (per sample and class) + cross-entropy + 0.1 x LSGAN from 30% of training{how}: at "
                f"equal time on a {device} with a budget like this one the {critic} critic helped on "
                f"{len(helped)} tasks ({facts}; benchmarks/RESULTS.md; {rule}); turn it off with "
                "--set loss.adversarial=false"), relevant, critic)
    share = max(c.step_share for c in relevant)
    return AdversarialDecision(False, (
        "loss Dice (per sample and class) + cross-entropy, no adversarial term: at equal time on a "
        f"{device} with a budget like this one no critic helped on {TASKS_NEEDED} tasks ({facts}) and the "
        f"critic cost up to {share:.0%} of the steps (benchmarks/RESULTS.md; {rule}); turn it on with "
        "--set loss.adversarial=true (0.1 x LSGAN from 30% of training, the critic judging the pair pooled "
        "by 2, as planned below)"), relevant, "cheap")


# --- Translation: the pix2pix objective (L1 + LSGAN) against L1 alone --------------------------

#: SSIM (in the brain) differences below this are within the fold-and-seed spread of translation rounds.
SSIM_NOISE = 0.005
#: PSNR (in the brain) differences below this many dB likewise.
PSNR_NOISE = 0.2


@dataclass(frozen=True)
class TranslationComparison:
    """One equal-time comparison of the critic's translation (L1 + LSGAN) against L1 alone, means
    over folds, seeds and held-out cases; each pair is (with the critic, L1 alone), scored in the brain."""

    task: str
    device: str
    budget_seconds: float  # per network and fold
    seeds: int
    ssim: tuple[float, float]
    psnr: tuple[float, float]  # dB
    step_share: float  # fraction of L1 alone's steps the critic's runs lost in the same time
    where: str  # the benchmarks/RESULTS.md section
    critic: str = "planned"  # a key of CRITICS

    def __post_init__(self) -> None:
        if self.critic not in CRITICS:
            raise ValueError(f"critic {self.critic!r} is not one of {', '.join(CRITICS)}")

    @property
    def helped(self) -> bool:
        """SSIM or PSNR up beyond its noise with neither down beyond its noise: a synthesis that looks
        sharper but drifts in intensity (or the reverse) is not a gain."""
        d_ssim, d_psnr = self.ssim[0] - self.ssim[1], self.psnr[0] - self.psnr[1]
        if d_ssim < -SSIM_NOISE or d_psnr < -PSNR_NOISE:
            return False
        return d_ssim > SSIM_NOISE or d_psnr > PSNR_NOISE

    def describe(self) -> str:
        name = "" if self.critic == "planned" else f", {self.critic} critic"
        return (f"{self.task}{name}: SSIM {self.ssim[0]:.3f} with the critic vs {self.ssim[1]:.3f} L1 alone, PSNR "
                f"{self.psnr[0]:.2f} vs {self.psnr[1]:.2f} dB ({self.seeds} seed{'s' if self.seeds > 1 else ''}, "
                f"{self.step_share:.0%} fewer steps)")


#: benchmarks/RESULTS.md's equal-time translation comparisons (benchmarks/missing_contrast.py).
TRANSLATION_EVIDENCE: tuple[TranslationComparison, ...] = (
    # 6 fold runs side by side on 2 cores; most of the SSIM lead is one run's (the section says so).
    TranslationComparison("BraTS 2018 T1 -> FLAIR, 3 folds", "cpu", 30 * 60, 2, (0.156, 0.132), (20.36, 20.55),
                          0.34, "missing_contrast.py: translation at equal wall time"),
    # The same protocol rerun with the critic judging the pair pooled by 2 (its L1 arm scored higher
    # than the round above's, with 19% more steps than that round's L1 had).
    TranslationComparison("BraTS 2018 T1 -> FLAIR, 3 folds", "cpu", 30 * 60, 2, (0.159, 0.169), (20.76, 21.03),
                          0.19, "The translation critic pooled by 2 against L1 alone", critic="cheap"),
)

#: The critic a translation plan carries where no comparison speaks for its device and budget, and
#: the one ``--set loss.adversarial=true`` gets where the term is planned off: pix2pix's own, since
#: pooling cut the critic's cost without a measured gain in translation.
TRANSLATION_DEFAULT_CRITIC = "planned"


def translation_decision(device: str, budget_seconds: float | None,
                         evidence: tuple[TranslationComparison, ...] = TRANSLATION_EVIDENCE) -> AdversarialDecision:
    """Plan a translation with the critic (pix2pix's L1 + LSGAN) or with L1 alone, and which critic:
    a critic stays where it helped in most of its equal-time comparisons for this device and a budget
    like this one (the cheaper critic first), or where none exists; the reason cites the comparisons."""
    relevant = _comparable(evidence, device, budget_seconds)
    rule = (f"train/adversarial.py's rule: SSIM up by more than {SSIM_NOISE} or PSNR by more than {PSNR_NOISE} dB "
            "in the brain, neither down by more, in most comparisons of that critic")
    if not relevant:
        return AdversarialDecision(True, (
            "+ LSGAN from the first step (pix2pix): no equal-time comparison with L1 alone exists for a "
            f"{device} budget like this one; at equal steps the critic raised PSNR by 0.8 dB over L1 alone on "
            "BraTS T1 -> FLAIR (benchmarks/RESULTS.md); compare with --set loss.adversarial=false"), (),
            TRANSLATION_DEFAULT_CRITIC)
    facts = "; ".join(c.describe() for c in relevant)
    for critic in sorted(CRITICS, key=lambda k: -CRITICS[k]["input_scale"]):  # the cheaper critic first
        compared = [c for c in relevant if c.critic == critic]
        if compared and 2 * sum(c.helped for c in compared) > len(compared):
            how = "as given" if critic == "planned" else "pooled by 2"
            return AdversarialDecision(True, (
                f"+ LSGAN from the first step (pix2pix), the critic judging the pair {how}: at equal time on a "
                f"{device} with a budget like this one that critic helped ({facts}; benchmarks/RESULTS.md; {rule}); "
                "turn it off with --set loss.adversarial=false"), relevant, critic)
    return AdversarialDecision(False, (
        f"alone, no adversarial term: at equal time on a {device} with a budget like this one no critic helped "
        f"({facts}; benchmarks/RESULTS.md; {rule}); turn it on with --set loss.adversarial=true "
        "(LSGAN from the first step, pix2pix)"), relevant, TRANSLATION_DEFAULT_CRITIC)
