"""Lesion-wise Dice/HD95 by the BraTS 2023+ rules (report/lesions.py); agreement with the official
evaluator on real cases is measured by benchmarks/lesionwise_vs_official.py."""

from __future__ import annotations

import numpy as np
import pytest

from vox2vox.errors import Vox2VoxError
from vox2vox.report.lesions import LESION_MISS_HD95_MM, LESION_RULES, get_lesion_rule, lesion_wise

GLIOMA, METS = LESION_RULES["glioma"], LESION_RULES["metastases"]
ONE_MM = (1.0, 1.0, 1.0)


def _box(mask: np.ndarray, lo: tuple[int, int, int], size: int) -> None:
    mask[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = True


def test_perfect_prediction_and_empty_cases():
    truth = np.zeros((40, 40, 40), bool)
    _box(truth, (5, 5, 5), 5)
    found = lesion_wise(truth, truth, spacing=ONE_MM, rule=GLIOMA)
    assert (found.dice, found.hd95, found.tp, found.fp, found.fn) == (1.0, 0.0, 1, 0, 0)
    empty = np.zeros_like(truth)
    nothing = lesion_wise(empty, empty, spacing=ONE_MM, rule=GLIOMA)
    assert (nothing.dice, nothing.hd95, nothing.tp, nothing.fp, nothing.fn) == (1.0, 0.0, 0, 0, 0)
    missed = lesion_wise(empty, truth, spacing=ONE_MM, rule=GLIOMA)
    assert (missed.dice, missed.hd95, missed.fn) == (0.0, LESION_MISS_HD95_MM, 1)
    invented = lesion_wise(truth, empty, spacing=ONE_MM, rule=GLIOMA)
    assert (invented.dice, invented.hd95, invented.fp) == (0.0, LESION_MISS_HD95_MM, 1)


def test_dropped_lesion_and_false_positive_count_with_dice_0_and_374():
    truth = np.zeros((60, 60, 60), bool)
    _box(truth, (5, 5, 5), 6)     # 216 mm^3
    _box(truth, (40, 40, 40), 6)  # 216 mm^3, dropped by the prediction
    pred = np.zeros_like(truth)
    _box(pred, (5, 5, 5), 6)
    _box(pred, (5, 45, 5), 4)     # a false positive far from both lesions
    found = lesion_wise(pred, truth, spacing=ONE_MM, rule=GLIOMA)
    assert (found.tp, found.fp, found.fn) == (1, 1, 1)
    assert found.dice == pytest.approx(1.0 / 3)  # (1 + 0) / (2 lesions + 1 false positive)
    assert found.hd95 == pytest.approx((0.0 + 374.0 + 374.0) / 3)
    kinds = sorted((les.kind, les.n_components) for les in found.lesions)
    assert kinds == [("fp", 1), ("truth", 0), ("truth", 1)]


def test_small_lesions_are_ignored_by_glioma_but_scored_for_metastases():
    truth = np.zeros((40, 40, 40), bool)
    _box(truth, (5, 5, 5), 6)     # 216 mm^3
    _box(truth, (30, 30, 30), 3)  # 27 mm^3: <= 50 (glioma) but > 2 (metastases)
    pred = np.zeros_like(truth)
    _box(pred, (5, 5, 5), 6)
    glioma = lesion_wise(pred, truth, spacing=ONE_MM, rule=GLIOMA)
    assert (glioma.dice, glioma.tp, glioma.fn) == (1.0, 1, 0)
    mets = lesion_wise(pred, truth, spacing=ONE_MM, rule=METS)
    assert (mets.dice, mets.tp, mets.fn) == (0.5, 1, 1)
    # Volume is in mm^3: the same voxels at 2 mm spacing hold 8x the volume.
    big = lesion_wise(pred, truth, spacing=(2.0, 2.0, 2.0), rule=GLIOMA)
    assert big.fn == 1


def test_lesions_close_within_the_dilation_are_one_lesion_and_a_bridging_component_matches():
    truth = np.zeros((40, 40, 40), bool)
    _box(truth, (5, 5, 5), 5)
    _box(truth, (5, 5, 14), 5)  # 4 voxels apart: joined by glioma's 3 dilations, separate for metastases'1
    assert len([x for x in lesion_wise(truth, truth, spacing=ONE_MM, rule=GLIOMA).lesions if x.kind == "truth"]) == 1
    assert len([x for x in lesion_wise(truth, truth, spacing=ONE_MM, rule=METS).lesions if x.kind == "truth"]) == 2
    # A predicted component beside (not on) the lesion, within the dilation, is matched, not a false positive.
    near = np.zeros_like(truth)
    _box(near, (5, 5, 20), 3)
    found = lesion_wise(near, truth, spacing=ONE_MM, rule=GLIOMA)
    assert found.fp == 0 and found.tp == 1 and found.dice == 0.0


def test_rule_names():
    assert get_lesion_rule("off") is None
    assert get_lesion_rule("Metastases").dilation == 1
    with pytest.raises(Vox2VoxError, match="lesion-wise rule 'gbm' is unknown"):
        get_lesion_rule("gbm")
