"""Experiment tracking (`train.log`): TensorBoard event files and an MLflow store in the run folder
hold every number of metrics.jsonl, the config and validation overlays; a missing extra is one line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import vox2vox.train.tracking as tracking
from helpers import TINY, assert_nothing_written, assert_user_error, cli, make_manifest
from vox2vox.train.tracking import overlay


def train(tmp_path: Path, capsys, backend: str) -> Path:
    manifest = make_manifest(tmp_path / "data", n_cases=3)
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", manifest, "--out", out, *TINY, "--set", "data.val_cases=1",
                       "--set", "train.epochs=2", "--set", f'train.log="{backend}"')
    assert code == 0, err
    return out


def numbers(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if k != "step" and isinstance(v, int | float)}


def test_tensorboard_event_files_hold_the_logged_scalars_config_and_overlays(tmp_path, capsys):
    run = train(tmp_path, capsys, "tensorboard")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    for row in rows:
        for key, value in numbers(row).items():
            logged = {e.step: e.value for e in events.Scalars(key)}
            assert logged[row["step"]] == pytest.approx(value, rel=1e-6), key
    assert {"loss_g", "val_dice", "lr_g", "epoch"} <= set(tags["scalars"])
    images = events.Images("validation/overlay")
    assert [i.step for i in images] == [r["step"] for r in rows]  # every epoch validates here
    assert images[0].width == 3 * images[0].height  # image | truth | prediction
    assert any(t.startswith("config") for t in tags["tensors"])


def test_mlflow_store_in_the_run_folder_holds_the_curves_config_and_overlays(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # set by the tracker; restored afterwards
    run = train(tmp_path, capsys, "mlflow")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ids = json.loads((run / "tracking.json").read_text())
    assert ids["tracking_uri"] == (run / "mlruns").resolve().as_uri()
    client = MlflowClient(tracking_uri=ids["tracking_uri"])
    for key in ("loss_g", "val_dice", "epoch"):
        history = {m.step: m.value for m in client.get_metric_history(ids["mlflow_run_id"], key)}
        assert history == pytest.approx({r["step"]: r[key] for r in rows}), key
    mlflow_run = client.get_run(ids["mlflow_run_id"])
    assert mlflow_run.data.params["train.log"] == '"mlflow"'
    artifacts = run / "mlruns"
    assert list(artifacts.rglob("config.json")) and len(list(artifacts.rglob("validation/overlay_step*.png"))) == 2


def test_a_missing_extra_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    manifest = make_manifest(tmp_path / "data", n_cases=2)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    out = tmp_path / "run"
    assert_user_error(cli(capsys, "train", "--data", manifest, "--out", out, *TINY, "--set", 'train.log="tensorboard"'),
                      "train.log=tensorboard", "pip install 'vox2vox[tensorboard]'")
    assert_nothing_written(out)
    assert_user_error(cli(capsys, "train", "--data", manifest, "--out", out, *TINY, "--set", 'train.log="wandb"'),
                      "train.log", "wandb")


def test_overlay_puts_image_truth_and_prediction_side_by_side():
    image = np.linspace(0, 1, 8 * 6, dtype=np.float32).reshape(8, 6)
    truth = np.zeros((8, 6), np.int64)
    truth[2:4, 2:4] = 1
    prediction = np.zeros_like(truth)
    picture = overlay(image, truth, prediction)
    assert picture.shape == (6, 24, 3) and picture.dtype == np.uint8
    left, middle, right = picture[:, :8], picture[:, 8:16], picture[:, 16:]
    assert np.array_equal(left, right)  # nothing predicted: the plain slice
    assert not np.array_equal(left, middle)  # the truth is drawn in colour
    assert (middle[..., 0] != middle[..., 2]).any() and (left[..., 0] == left[..., 2]).all()


def test_a_resumed_run_goes_on_logging_into_the_same_places(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    manifest = make_manifest(tmp_path / "data", n_cases=3)
    out = tmp_path / "run"
    settings = [*TINY, "--set", "data.val_cases=1", "--set", 'train.log="tensorboard"']
    assert cli(capsys, "train", "--data", manifest, "--out", out, *settings)[0] == 0
    after_one = (out / "checkpoints" / "last.safetensors").read_bytes()
    assert cli(capsys, "train", "--data", manifest, "--out", out, "--resume", "--set", "train.epochs=2")[0] == 0
    # As if epoch 2 had been logged but its checkpoint lost: the resume trains epoch 2 again.
    (out / "checkpoints" / "last.safetensors").write_bytes(after_one)
    code, _, err = cli(capsys, "train", "--data", manifest, "--out", out, "--resume", "--set", "train.epochs=2")
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("epoch")] == [r["step"] for r in rows]  # each epoch once
    assert [e.value for e in events.Scalars("epoch")] == [1.0, 2.0]


def test_a_tracking_store_that_cannot_start_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    manifest = make_manifest(tmp_path / "data", n_cases=2)
    out = tmp_path / "run"
    assert_user_error(cli(capsys, "train", "--data", manifest, "--out", out, *TINY, "--set", 'train.log="mlflow"'),
                      "train.log=mlflow: cannot start logging to nosuchscheme://nowhere", "train.log=none")
    assert_nothing_written(out)


def test_logging_that_fails_mid_run_warns_once_and_training_goes_on(tmp_path, capsys, monkeypatch):
    def broken(self, values, step):
        raise OSError("disk quota exceeded")

    monkeypatch.setattr(tracking._TensorBoard, "scalars", broken)
    manifest = make_manifest(tmp_path / "data", n_cases=2)
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data", manifest, "--out", out, *TINY, "--set", "train.epochs=2",
                       "--set", 'train.log="tensorboard"')
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "logging failed (disk quota exceeded)" in warnings[0], err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
