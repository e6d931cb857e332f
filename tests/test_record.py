"""The typed model record (model/record.py): one schema for a checkpoint's ``state``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vox2vox.config import Config
from vox2vox.data.labels import get_convention
from vox2vox.errors import Vox2VoxError
from vox2vox.model.checkpoint import (
    load_checkpoint,
    read_metadata,
    read_record,
    save_checkpoint,
    training_checkpoint,
)
from vox2vox.model.record import ModelInfo, ModelRecord, PredictionChoice, RunSummary
from vox2vox.train.state import build_state

# The ``state`` of the demo's best and last checkpoints as vox2vox wrote them before the record
# existed (best with the run's summary and prediction options chosen by train.selection).
STATES = json.loads((Path(__file__).parent / "data" / "checkpoint_states_v1.json").read_text())


@pytest.mark.parametrize("name", ["best", "last"])
def test_a_checkpoint_state_written_before_the_record_reads_back_and_rewrites_unchanged(name):
    state = STATES[name]
    record = ModelRecord.from_json(state, f"{name}.safetensors")
    assert json.dumps(record.to_json()) == json.dumps(state)  # the same entries, values and order
    assert record.counters.epoch == state["epoch"] and record.channels == tuple(state["channels"])
    assert record.convention == get_convention(state["convention"])
    assert record.info() is not None and record.info().data is not None


def test_the_recorded_prediction_options_and_run_summary_are_typed():
    record = ModelRecord.from_json(STATES["best"], "best.safetensors")
    predict = STATES["best"]["predict"]
    assert isinstance(record.predict, PredictionChoice) and isinstance(record.run, RunSummary)
    assert record.predict.tta is predict["tta"] and record.predict.largest_component == predict["largest_component"]
    assert [d.step for d in record.predict.decisions] == [d["step"] for d in predict["decisions"]]
    assert record.run.epoch == STATES["best"]["run"]["epoch"]
    assert ModelRecord.from_json(STATES["last"], "last.safetensors").predict is None


def test_a_training_checkpoint_round_trips_through_the_file(tmp_path):
    config = Config().with_overrides(["generator.in_channels=1", "generator.n_classes=2", "generator.base_filters=4",
                                      "generator.max_filters=8", "generator.depth=2", "generator.bottleneck_blocks=1",
                                      "discriminator.in_channels=1", "discriminator.n_classes=2",
                                      "discriminator.base_filters=4", "discriminator.max_filters=8",
                                      "train.device=\"cpu\""])
    state = build_state(config)
    state.epoch, state.step, state.best_score, state.best_epoch, state.seconds = 2, 6, 0.5, 1, 12.5
    state.batches_done, state.partial_sums, state.rng_state = 1, {"loss_g": 1.5}, torch.get_rng_state()
    info = ModelInfo(("t1",), "single", get_convention("binary"))
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, training_checkpoint(state, config.to_dict(), info))
    written = read_metadata(path)["state"]
    record = read_record(path)
    assert {k: v for k, v in record.to_json().items() if k != "versions"} == written  # versions: the file's
    assert record.counters.epoch == 2 and record.counters.rng_state == written["rng_state"]
    assert record.info() == info and record.counters.partial_sums == {"loss_g": 1.5}
    ckpt = load_checkpoint(path)
    ckpt.state = ckpt.record(path).with_predict(PredictionChoice(tta=True, largest_component="off")).to_json()
    save_checkpoint(path, ckpt)
    again = read_metadata(path)["state"]
    assert {k: v for k, v in again.items() if k not in ("predict", "versions")} == written
    assert again["predict"] == {"tta": True, "foreground_threshold": None, "largest_component": "off"}


def test_entries_a_file_does_not_record_read_as_none_not_as_a_guess():
    record = ModelRecord.from_json({"channels": ["t1"]}, "hand.safetensors")
    assert record.counters.epoch is None and record.counters.best_score is None and record.predict is None
    assert record.info() is None  # a segmentation without its convention
    assert record.info(translate=True) == ModelInfo(("t1",), "unknown", None)
    assert record.to_json() == {"channels": ["t1"]}


@pytest.mark.parametrize(("state", "field"), [
    ({"epoch": "3"}, "state.epoch"),
    ({"best_score": True}, "state.best_score"),
    ({"seconds": -1}, "state.seconds"),
    ({"partial_sums": {"loss_g": "x"}}, "state.partial_sums.loss_g"),
    ({"channels": ["t1", 2]}, "state.channels"),
    ({"convention": 7}, "state.convention"),
    ({"run": {"epoch": "x"}}, "state.run"),
    ({"predict": {"tta": "yes"}}, "state.predict.tta"),
    ({"predict": {"largest_component": "biggest"}}, "state.predict.largest_component"),
    ({"predict": {"decisions": [{"step": 1}]}}, "state.predict.decisions"),
    ({"predict": {"foreground_threshold": 2.0}}, "recorded foreground threshold 2.0"),
    ({"versions": {"torch": 2}}, "state.versions"),
])
def test_a_malformed_entry_is_one_line_naming_the_file_and_the_field(state, field):
    with pytest.raises(Vox2VoxError) as err:
        ModelRecord.from_json(state, "bad.safetensors")
    message = str(err.value)
    assert message.startswith("bad.safetensors: ") and field in message and "\n" not in message
