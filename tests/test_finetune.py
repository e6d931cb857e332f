"""Fine-tuning (`train --init-from`): the new run starts from the source's weights with a fresh
optimiser, keeps its network, records its source, and refuses data the model does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vox2vox.train.training as training
from helpers import (
    PAPER,
    TINY,
    assert_nothing_written,
    assert_user_error,
    ball,
    cli,
    make_manifest,
    save_nifti,
)
from vox2vox.cli import main
from vox2vox.config import Config
from vox2vox.model.checkpoint import file_sha256, load_checkpoint, read_metadata
from vox2vox.model.generator import Generator
from vox2vox.train.finetune import output_layer


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A tiny binary model trained for one epoch on two one-channel cases (channel 'image')."""
    root = tmp_path_factory.mktemp("source")
    manifest = make_manifest(root / "data", n_cases=2)
    assert main(["train", "--data", str(manifest), "--out", str(root / "run"), *TINY]) == 0
    return root / "run"


@pytest.fixture()
def first_step(monkeypatch) -> dict[str, dict[str, torch.Tensor]]:
    """The networks' weights as the first train step of a run sees them (before its update)."""
    seen: dict[str, dict[str, torch.Tensor]] = {}
    original = training.train_step

    def recording(state, *args, **kwargs):
        if not seen:
            seen["generator"] = {k: v.clone() for k, v in state.generator.state_dict().items()}
            seen["discriminator"] = {k: v.clone() for k, v in state.discriminator.state_dict().items()}
        return original(state, *args, **kwargs)

    monkeypatch.setattr(training, "train_step", recording)
    return seen


def three_class_manifest(root: Path) -> Path:
    """Two cases whose labels hold 0, 1 and 2 (a core inside the ball)."""
    lines = ["id,image,label"]
    for i in range(2):
        image, label = ball(i)
        grid = np.indices(label.shape)
        core = np.sqrt(sum((g - 7.5) ** 2 for g in grid)) < 1.5
        save_nifti(root / f"c{i}_image.nii.gz", image)
        save_nifti(root / f"c{i}_seg.nii.gz", np.where(core, 2, label).astype(np.uint8))
        lines.append(f"c{i},c{i}_image.nii.gz,c{i}_seg.nii.gz")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def test_init_from_starts_from_the_source_weights_with_a_fresh_optimiser(source, tmp_path, capsys, first_step):
    manifest = make_manifest(tmp_path / "data", n_cases=2)
    out = tmp_path / "ft"
    code, stdout, err = cli(capsys, "train", "--data", manifest, "--out", out, "--init-from", source, *TINY)
    assert code == 0, err
    src = load_checkpoint(source / "checkpoints" / "best.safetensors")
    for name, tensor in src.generator.items():
        assert torch.equal(first_step["generator"][name], tensor), name
    for name, tensor in src.discriminator.items():
        assert torch.equal(first_step["discriminator"][name], tensor), name
    new = read_metadata(out / "checkpoints" / "last.safetensors")
    # A new run: its own counters from zero (one epoch of two cases, batch 1), not the source's.
    assert new["state"]["epoch"] == 1 and new["state"]["step"] == 2
    recorded = new["state"]["init_from"]
    assert recorded["sha256"] == file_sha256(source / "checkpoints" / "best.safetensors")
    assert recorded["path"].endswith("best.safetensors") and recorded["reinit_output"] is False
    assert "fine-tuning from" in err


def test_a_resumed_fine_tuned_run_keeps_its_source(source, tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data", n_cases=2)
    out = tmp_path / "ft"
    assert cli(capsys, "train", "--data", manifest, "--out", out, "--init-from", source, *TINY)[0] == 0
    recorded = read_metadata(out / "checkpoints" / "last.safetensors")["state"]["init_from"]
    code, _, err = cli(capsys, "train", "--data", manifest, "--out", out, "--resume", "--set", "train.epochs=2")
    assert code == 0, err
    resumed = read_metadata(out / "checkpoints" / "last.safetensors")["state"]
    assert resumed["epoch"] == 2 and resumed["init_from"] == recorded


def test_planned_init_from_adopts_the_source_settings_instead_of_planning(source, tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data", n_cases=2)
    out = tmp_path / "ft"
    code, stdout, err = cli(capsys, "train", "--data", manifest, "--out", out, "--init-from", source,
                            "--set", "train.epochs=1", "--device", "cpu")
    assert code == 0, err
    assert "plan:" not in stdout and not (out / "plan.toml").exists()
    mine = json.loads((out / "config.json").read_text())
    theirs = json.loads((source / "config.json").read_text())
    for section in ("generator", "discriminator", "preprocess"):
        assert mine[section] == theirs[section], section
    assert mine["train"]["patch_size"] == theirs["train"]["patch_size"]
    assert mine["train"]["epochs"] == 1 and mine["train"]["budget"] is None


def test_reinit_head_trains_a_new_output_layer_for_more_classes(source, tmp_path, capsys, first_step):
    manifest = three_class_manifest(tmp_path / "data")
    out = tmp_path / "ft"
    code, _, err = cli(capsys, "train", "--data", manifest, "--out", out, "--init-from", source, "--reinit-head", *TINY)
    assert code == 0, err
    src = load_checkpoint(source / "checkpoints" / "best.safetensors")
    new = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert new.config["generator"]["n_classes"] == 3
    head = set(output_layer(Generator(Config.from_dict({"generator": new.config["generator"]}).generator)))
    assert head and len(head) < len(src.generator)
    for name, tensor in src.generator.items():
        if name in head:
            assert first_step["generator"][name].shape != tensor.shape, name
        else:
            assert torch.equal(first_step["generator"][name], tensor), name
    # The discriminator sees image + 3 class channels now: it cannot take the source's weights.
    assert "discriminator starts fresh" in err
    assert new.state["init_from"]["reinit_output"] is True


@pytest.mark.parametrize("channels", [("image", "second"), ("t1",)])
def test_init_from_refuses_other_channels(source, tmp_path, capsys, channels):
    manifest = make_manifest(tmp_path / "data", n_cases=2, channels=channels)
    out = tmp_path / "ft"
    line = assert_user_error(cli(capsys, "train", "--data", manifest, "--out", out, "--init-from", source, *TINY),
                             "best.safetensors", "channels (image)")
    assert ", ".join(channels) in line
    assert_nothing_written(out)


def test_init_from_refuses_other_classes_without_reinit_head(source, tmp_path, capsys):
    manifest = three_class_manifest(tmp_path / "data")
    out = tmp_path / "ft"
    line = assert_user_error(cli(capsys, "train", "--data", manifest, "--out", out, "--init-from", source, *TINY),
                             "best.safetensors", "2 classes", "--reinit-head")
    assert "0, 1, 2" in line
    assert_nothing_written(out)


def test_init_from_refuses_a_different_network(source, tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data", n_cases=2)
    out = tmp_path / "ft"
    assert_user_error(cli(capsys, "train", "--data", manifest, "--out", out, "--init-from", source, *TINY,
                          "--set", "generator.base_filters=8"), "best.safetensors", "generator.base_filters=8", "4")
    assert_nothing_written(out)


def test_init_from_refusals(source, tmp_path, capsys):
    manifest = make_manifest(tmp_path / "data", n_cases=2)
    out = tmp_path / "ft"
    assert_user_error(cli(capsys, "train", "--data", manifest, "--out", out, "--init-from", source, "--resume", *PAPER),
                      "--init-from", "--resume")
    assert_user_error(cli(capsys, "train", "--data", manifest, "--out", out, "--reinit-head", *TINY), "--init-from")
    pickled = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, pickled)
    assert_user_error(cli(capsys, "train", "--data", manifest, "--out", out, "--init-from", pickled, *TINY), "pickle")
    assert_nothing_written(out)
