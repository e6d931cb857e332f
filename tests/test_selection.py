"""Prediction options chosen on several validation cases by a rule one case cannot swing (train/selection.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import cli, make_model
from vox2vox.data.labels import get_convention
from vox2vox.model.checkpoint import load_checkpoint
from vox2vox.train.selection import (
    RULE,
    adopt,
    choose_prediction_options,
    no_case_lowered,
    record_prediction_options,
)

BINARY = get_convention("binary")
WINDOW = (32, 32, 32)


class Shy(torch.nn.Module):
    """P(foreground) is the image's intensity: a rim at 0.35 is found only below argmax."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, return_logits=False):
        fg = x[:, :1].clamp(0.01, 0.99)
        return torch.cat([1 - fg, fg], 1)


class Blobs(Shy):
    """Foreground wherever the image is bright: the true ball and any stray blob."""

    def forward(self, x, return_logits=False):
        return super().forward((x[:, :1] > 0.5).float())


def case(kind: str):
    image = np.zeros((1, 32, 32, 32), np.float32)
    label = np.zeros((32, 32, 32), np.int64)
    if kind == "rim":  # the truth's rim is dim: a lower threshold finds it (argmax Dice < 0.5)
        label[4:16, 4:16, 4:16] = 1
        image[0, 4:16, 4:16, 4:16] = 0.35
        image[0, 6:14, 6:14, 6:14] = 0.9
    elif kind == "slab":  # argmax is exact; a lower threshold adds a dim slab that is not tumour
        label[6:14, 6:14, 6:14] = 1
        image[0, 6:14, 6:14, 6:14] = 0.9
        image[0, 14, 6:14, 6:14] = 0.35
    elif kind == "stray":  # a true ball and a far stray blob
        label[4:12, 4:12, 4:12] = 1
        image[0, 4:12, 4:12, 4:12] = 1
        image[0, 24:28, 24:28, 24:28] = 1
    return type("Case", (), {"image": image, "label": label})()


def test_a_threshold_every_case_asks_for_is_adopted_deterministically_with_its_evidence():
    cases, ids = [case("rim"), case("rim"), case("rim")], ["a", "b", "c"]
    first = choose_prediction_options(Shy(), cases, BINARY, WINDOW, case_ids=ids).to_json()
    again = choose_prediction_options(Shy(), cases, BINARY, WINDOW, case_ids=ids).to_json()
    assert first["foreground_threshold"] in (0.3, 0.2)
    drop = ("seconds_per_case",)  # wall time is the one thing that may differ
    assert {k: v for k, v in first.items() if k not in drop} == {k: v for k, v in again.items() if k not in drop}
    assert first["rule"] == RULE and first["validation_case_ids"] == ids and first["validation_cases"] == 3
    per_case = first["per_case_dice"]["tta=False,threshold=0.3,largest_component=off"]
    assert per_case == pytest.approx([1.0, 1.0, 1.0])
    assert all(d < 0.5 for d in first["per_case_dice"]["tta=False,threshold=argmax,largest_component=off"])
    adopted = [d for d in first["decisions"] if d["step"] == "foreground_threshold" and d["adopted"]]
    assert len(adopted) == 1 and "raised 3 / lowered 0 of 3" in adopted[0]["evidence"]
    json.dumps(first)  # goes into the checkpoint's JSON metadata as it is


def test_one_case_cannot_swing_a_choice_that_the_others_pay_for():
    """The rim case gains ~0.8 Dice from 0.3, the two slab cases lose ~0.06 each: the mean rises
    (the old rule adopted it), but without the rim case it falls, so argmax stays."""
    cases = [case("rim"), case("slab"), case("slab")]
    choice = choose_prediction_options(Shy(), cases, BINARY, WINDOW).to_json()
    argmax = np.mean(choice["per_case_dice"]["tta=False,threshold=argmax,largest_component=off"])
    lowered = np.mean(choice["per_case_dice"]["tta=False,threshold=0.3,largest_component=off"])
    assert lowered > argmax + 0.1  # the mean alone would have taken the threshold
    assert choice["foreground_threshold"] is None
    assert not any(d["adopted"] for d in choice["decisions"] if d["step"] == "foreground_threshold")


def test_a_single_validation_case_keeps_the_defaults():
    choice = choose_prediction_options(Shy(), [case("rim")], BINARY, WINDOW).to_json()
    assert (choice["tta"], choice["foreground_threshold"], choice["largest_component"]) == (False, None, "off")
    assert all(not d["adopted"] and "fewer than 2" in d["evidence"] for d in choice["decisions"])


def test_largest_component_on_several_cases():
    choice = choose_prediction_options(Blobs(), [case("stray"), case("stray")], BINARY, WINDOW).to_json()
    assert choice["largest_component"] in ("class", "region") and choice["tta"] is True
    assert choice["validation_dice"]["tta=True,threshold=argmax,largest_component=class"] == pytest.approx(1.0)


@pytest.mark.parametrize(("candidate", "current", "adopted"), [
    ([0.9, 0.9, 0.9], [0.8, 0.8, 0.8], True),
    ([0.99, 0.79, 0.79], [0.5, 0.8, 0.8], False),  # one case carries the mean
    ([0.85, 0.85, 0.79], [0.8, 0.8, 0.8], True),  # a slight loss on a minority, gain without any one case
    ([0.802, 0.802, 0.802], [0.8, 0.8, 0.8], False),  # below the margin
    ([0.9], [0.5], False),  # one case
])
def test_the_rule(candidate, current, adopted):
    assert adopt(candidate, current)[0] is adopted


@pytest.mark.parametrize(("candidate", "current", "adopted"), [
    ([0.8007, 0.812], [0.8, 0.8], True),  # a small gain on one case, no loss: clean-up kept
    ([0.95, 0.79], [0.8, 0.8], False),  # erased a real lesion in one case
    ([0.8, 0.8], [0.8, 0.8], False),  # changes nothing
    ([0.9], [0.5], False),  # one case
])
def test_the_clean_up_rule(candidate, current, adopted):
    assert no_case_lowered(candidate, current)[0] is adopted


def test_info_shows_the_rule_and_the_evidence(tmp_path, capsys):
    model = make_model(tmp_path / "m.safetensors")
    record_prediction_options(model, choose_prediction_options(Shy(), [case("rim")] * 2, BINARY, WINDOW,
                                                               case_ids=["p1", "p2"]))
    assert load_checkpoint(model).state["predict"]["validation_case_ids"] == ["p1", "p2"]
    code, out, _ = cli(capsys, "info", model)
    assert code == 0
    assert "chosen on 2 validation case(s) (p1, p2)" in out and "rule" in out and "raised 2 / lowered 0 of 2" in out
