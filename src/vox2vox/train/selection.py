"""Prediction choices made from validation, not by hand (recorded in the model, used by ``predict``).

After training, the chosen model predicts each validation case with and without flip test-time
augmentation; each prediction is turned into labels at several foreground thresholds
(:data:`THRESHOLDS`, argmax first) and scored as it is and after keeping the largest connected
component per class or per region. Every candidate's Dice is kept per case.

The decision rule (:data:`RULE`) is one that a single case cannot swing: a threshold
(:func:`adopt`) is adopted only when the mean validation Dice rises by at least :data:`MIN_GAIN`
with *any one case left out*, and it lowers the Dice of fewer cases than it raises; the
largest-component clean-up (:func:`no_case_lowered`) when it lowers no validation case and raises
at least one. With fewer than :data:`MIN_CASES` validation cases
the defaults stay (no TTA, argmax, no clean-up): a choice made on one case cost 0.015 Dice on
unseen BraTS cases (benchmarks/RESULTS.md). Flip TTA, which only averages the model's own
predictions, is kept when it lowers neither the leave-one-out means nor a majority of cases and a
case predicts within :data:`TTA_SECONDS_PER_CASE`.

The choice, the rule, the case ids, every candidate's per-case Dice and each step's decision go
into the checkpoint's metadata (``state["predict"]``, a :class:`PredictionChoice`): ``vox2vox info`` shows them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vox2vox.data.labels import IGNORE_INDEX, LabelConvention
from vox2vox.infer.inference import InferenceConfig, predict_probabilities
from vox2vox.infer.postprocessing import PostprocessConfig, postprocess
from vox2vox.model.checkpoint import load_checkpoint, save_checkpoint
from vox2vox.model.outputs import OutputHead, output_head
from vox2vox.model.record import Decision, PredictionChoice
from vox2vox.report.metrics import dice

TTA_SECONDS_PER_CASE = 120.0
# Foreground thresholds tried (None: argmax). Models trained briefly on few cases tend to draw the
# tumour boundary inside the truth; a lower threshold moves it out (benchmarks/RESULTS.md).
THRESHOLDS: tuple[float | None, ...] = (None, 0.4, 0.3, 0.2)
# The least rise of the mean validation Dice, with any one case left out, that adopts a step: half
# a Dice point, below the seed spread of the README path but above rounding.
MIN_GAIN = 5e-3
# A case counts as raised or lowered by a step only beyond this (ties are neither).
CASE_TOLERANCE = 1e-3
# Fewer validation cases than this keep the defaults: with one, one case would decide.
MIN_CASES = 2
RULE = (f"a threshold is adopted only when the mean validation Dice rises by >= {MIN_GAIN:g} with any one case "
        f"left out and it lowers fewer cases than it raises (by > {CASE_TOLERANCE:g}); TTA is kept when it lowers "
        "neither a leave-one-out mean nor a majority of cases; largest-component clean-up when it lowers no case "
        f"and raises at least one; with fewer than {MIN_CASES} validation cases the defaults stay")


def region_dice(pred_source: np.ndarray, true_source: np.ndarray, convention: LabelConvention,
                scored: np.ndarray | None = None) -> dict[str, float]:
    """Dice per evaluation region (BraTS empty-mask rule) of two label maps in source values;
    ``scored`` (boolean) leaves out the voxels it is False at (the ignore label) on both sides."""
    pred, true = convention.region_masks(pred_source), convention.region_masks(true_source)
    if scored is None:
        return {name: dice(pred[name], true[name]) for name in true}
    return {name: dice(pred[name] & scored, true[name] & scored) for name in true}


def adopt(candidate: Sequence[float], current: Sequence[float]) -> tuple[bool, str]:
    """Whether per-case Dice ``candidate`` beats ``current`` (same cases, same order) by the rule
    no single case can swing, and a one-line account of the evidence."""
    n, loo, raised, lowered, why = _compare(candidate, current)
    if n < MIN_CASES:
        return False, why
    return loo >= MIN_GAIN and lowered < raised, why


def harmless(candidate: Sequence[float], current: Sequence[float]) -> tuple[bool, str]:
    """Whether ``candidate`` lowers neither any leave-one-out mean nor a majority of the cases
    (flip TTA's test: it costs time, not a change of decision rule)."""
    n, loo, _, lowered, why = _compare(candidate, current)
    if n < MIN_CASES:
        return False, why
    return loo >= -CASE_TOLERANCE and 2 * lowered <= n, why


def no_case_lowered(candidate: Sequence[float], current: Sequence[float]) -> tuple[bool, str]:
    """Whether ``candidate`` raises at least one case and lowers none: the clean-up's test. It only
    removes disconnected components, so its Dice gain on validation is small even where it cuts
    HD95 on unseen cases (benchmarks/RESULTS.md, 2026-12-07: 24-34 mm -> 10-22 mm on BraTS 2013
    cases after a Dice-margin rule had refused it); where it erases real lesions (several lesions
    per case), validation cases fall and it is refused."""
    n, _, raised, lowered, why = _compare(candidate, current)
    if n < MIN_CASES:
        return False, why
    return lowered == 0 and raised >= 1, why


def _compare(candidate: Sequence[float], current: Sequence[float]) -> tuple[int, float, int, int, str]:
    diff = np.asarray(candidate, float) - np.asarray(current, float)
    n = len(diff)
    if n < MIN_CASES:
        return n, 0.0, 0, 0, f"{n} validation case(s), fewer than {MIN_CASES}: the default stays"
    raised, lowered = int((diff > CASE_TOLERANCE).sum()), int((diff < -CASE_TOLERANCE).sum())
    # The smallest mean gain over the subsets with one case left out: the gain no one case made.
    loo = min(float(np.delete(diff, i).mean()) for i in range(n))
    return n, loo, raised, lowered, (f"mean {diff.mean():+.4f}, smallest with one case left out {loo:+.4f}, "
                                     f"raised {raised} / lowered {lowered} of {n} cases")


def choose_prediction_options(generator: torch.nn.Module, val_cases: Sequence[Any], convention: LabelConvention,
                              window: tuple[int, int, int], *, head: OutputHead | None = None,
                              case_ids: Sequence[str] | None = None) -> PredictionChoice:
    """Score TTA, foreground thresholds and post-processing on each validation case and choose by
    :data:`RULE`; return the choice with its evidence (``validation_dice``: mean per candidate,
    ``per_case_dice``: per candidate the Dice of each case in ``case_ids`` order, ``decisions``)."""
    head = head or output_head(convention)
    device = next(generator.parameters()).device
    ids = list(case_ids) if case_ids is not None else [str(getattr(c, "case_id", i)) for i, c in enumerate(val_cases)]
    options = ["off", "class"] + (["region"] if convention.regions else [])
    scores: dict[str, list[float]] = {}
    seconds = {False: 0.0, True: 0.0}
    for case in val_cases:
        truth = convention.to_source(case.label)
        scored = case.label != IGNORE_INDEX  # the ignore label counts for neither side
        for tta in (False, True):
            t0 = time.perf_counter()
            infer = InferenceConfig(mode="auto", window=window, overlap=0.25, tta_flips=tta)
            probs = predict_probabilities([generator], case.image, config=infer, device=device)
            seconds[tta] += time.perf_counter() - t0
            for threshold in THRESHOLDS:
                labels = convention.to_source(head.to_classes(probs, threshold))
                for option in options:
                    pred = labels if option == "off" else postprocess(
                        labels, config=PostprocessConfig(largest_component=option), convention=convention)
                    per_region = region_dice(pred, truth, convention, scored)
                    scores.setdefault(_key(tta, threshold, option), []).append(float(np.mean(list(per_region.values()))))
    n = max(len(val_cases), 1)
    decisions: list[Decision] = []

    # TTA averages the model's own flipped predictions: kept unless it measurably hurts.
    affordable = seconds[True] / n <= TTA_SECONDS_PER_CASE
    ok, why = harmless(scores[_key(True, None, "off")], scores[_key(False, None, "off")])
    tta = affordable and ok
    decisions.append(Decision("tta", True, tta, why + ("" if affordable else f"; {seconds[True] / n:.0f} s a case, "
                                                                          f"over {TTA_SECONDS_PER_CASE:.0f} s")))

    # One threshold (the best mean among those the rule adopts), then the clean-up on top of it.
    threshold: float | None = None
    for cut in sorted((t for t in THRESHOLDS if t is not None),
                      key=lambda t: -float(np.mean(scores[_key(tta, t, "off")]))):
        ok, why = adopt(scores[_key(tta, cut, "off")], scores[_key(tta, None, "off")])
        decisions.append(Decision("foreground_threshold", cut, ok, why))
        if ok:
            threshold = cut
            break
    largest = "off"
    for option in sorted(options[1:], key=lambda o: -float(np.mean(scores[_key(tta, threshold, o)]))):
        ok, why = no_case_lowered(scores[_key(tta, threshold, option)], scores[_key(tta, threshold, "off")])
        decisions.append(Decision("largest_component", option, ok, why))
        if ok:
            largest = option
            break
    return PredictionChoice(
        tta=tta, foreground_threshold=threshold, largest_component=largest, rule=RULE,
        validation_case_ids=tuple(ids), validation_cases=len(val_cases),
        validation_dice={k: float(np.mean(v)) for k, v in scores.items()},
        per_case_dice={k: tuple(round(x, 5) for x in v) for k, v in scores.items()},
        decisions=tuple(decisions),
        seconds_per_case={"plain": seconds[False] / n, "tta": seconds[True] / n})


def _key(tta: bool, threshold: float | None, largest_component: str) -> str:
    return f"tta={tta},threshold={'argmax' if threshold is None else threshold},largest_component={largest_component}"


def record_prediction_options(path: str | Path, choice: PredictionChoice) -> None:
    """Store ``choice`` in the checkpoint's metadata (``state["predict"]``), atomically."""
    ckpt = load_checkpoint(path)
    ckpt.state = ckpt.record(path).with_predict(choice).to_json()
    save_checkpoint(path, ckpt)
