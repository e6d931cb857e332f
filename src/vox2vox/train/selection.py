"""Prediction choices made from validation, not by hand (recorded in the model, used by ``predict``).

After training, the chosen model predicts the validation cases with and without flip
test-time augmentation; each prediction is turned into labels at several foreground thresholds
(:data:`THRESHOLDS`, argmax first) and scored as it is and after keeping the largest connected
component per class or per region. A threshold or post-processing step is kept only when it
raises the mean validation Dice; flip TTA is kept when it does not lower it and a case predicts
within :data:`TTA_SECONDS_PER_CASE`. The choice and its scores go into the checkpoint's metadata
(``state["predict"]``) so that the checkpoint alone carries them.
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
from vox2vox.report.metrics import dice

TTA_SECONDS_PER_CASE = 120.0
# Foreground thresholds tried (None: argmax). Models trained briefly on few cases tend to draw the
# tumour boundary inside the truth; a lower threshold moves it out (benchmarks/RESULTS.md).
THRESHOLDS: tuple[float | None, ...] = (None, 0.4, 0.3, 0.2)
# A step must raise the mean validation Dice by more than this to be kept (ties keep it simple).
MIN_GAIN = 1e-3


def region_dice(pred_source: np.ndarray, true_source: np.ndarray, convention: LabelConvention,
                scored: np.ndarray | None = None) -> dict[str, float]:
    """Dice per evaluation region (BraTS empty-mask rule) of two label maps in source values;
    ``scored`` (boolean) leaves out the voxels it is False at (the ignore label) on both sides."""
    pred, true = convention.region_masks(pred_source), convention.region_masks(true_source)
    if scored is None:
        return {name: dice(pred[name], true[name]) for name in true}
    return {name: dice(pred[name] & scored, true[name] & scored) for name in true}


def choose_prediction_options(generator: torch.nn.Module, val_cases: Sequence[Any], convention: LabelConvention,
                              window: tuple[int, int, int], *, head: OutputHead | None = None) -> dict[str, Any]:
    """Score TTA, foreground thresholds and post-processing on the validation cases; return the
    choice and the scores (keys ``tta=...,threshold=...,largest_component=...``)."""
    head = head or output_head(convention)
    device = next(generator.parameters()).device
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
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    n = max(len(val_cases), 1)
    # One choice at a time, each kept only when it pays: TTA, then the threshold, then the clean-up.
    tta_affordable = seconds[True] / n <= TTA_SECONDS_PER_CASE
    tta = tta_affordable and mean[_key(True, None, "off")] >= mean[_key(False, None, "off")] - MIN_GAIN
    base = mean[_key(tta, None, "off")]
    cut = max(THRESHOLDS, key=lambda t: (mean[_key(tta, t, "off")], t is None))
    threshold = cut if mean[_key(tta, cut, "off")] > base + MIN_GAIN else None
    base = mean[_key(tta, threshold, "off")]
    best = max(options, key=lambda o: (mean[_key(tta, threshold, o)], o == "off"))
    largest = best if mean[_key(tta, threshold, best)] > base + MIN_GAIN else "off"
    return {"tta": tta, "foreground_threshold": threshold, "largest_component": largest, "validation_dice": mean,
            "seconds_per_case": {"plain": seconds[False] / n, "tta": seconds[True] / n},
            "validation_cases": len(val_cases)}


def _key(tta: bool, threshold: float | None, largest_component: str) -> str:
    return f"tta={tta},threshold={'argmax' if threshold is None else threshold},largest_component={largest_component}"


def record_prediction_options(path: str | Path, choice: dict[str, Any]) -> None:
    """Store ``choice`` in the checkpoint's metadata (``state["predict"]``), atomically."""
    ckpt = load_checkpoint(path)
    ckpt.state["predict"] = choice
    save_checkpoint(path, ckpt)
