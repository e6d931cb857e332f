"""Same seed on CPU -> identical losses and bitwise-identical weights; seed and versions recorded."""

from __future__ import annotations

import json
import platform

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import make_manifest
from vox2vox.cli import main

NETS = [
    "--set", "generator.base_filters=4", "--set", "generator.max_filters=8", "--set", "generator.depth=3",
    "--set", "generator.bottleneck_blocks=1", "--set", "discriminator.base_filters=4",
    "--set", "discriminator.max_filters=8", "--set", "discriminator.n_strided=2",
    "--set", "train.patch_size=[16,16,16]", "--set", "train.batch_size=1", "--set", "data.val_cases=1",
    "--set", "train.epochs=2", "--set", "train.device=\"cpu\"", "--set", "augment.p_untouched=0.0",
]


def train(manifest, run, seed: int) -> None:
    assert main(["train", "--config", "paper", "--data", str(manifest), "--out", str(run), *NETS, "--set", f"train.seed={seed}"]) == 0


def losses(run) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")  # wall-clock time is the one thing allowed to differ
    return rows


def weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    manifest = make_manifest(root / "data", n_cases=3)
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        train(manifest, root / name, seed)
    return root


def test_same_seed_gives_identical_losses_and_weights(runs):
    a, b = runs / "a", runs / "b"
    assert losses(a) == losses(b)
    assert len(losses(a)) == 2 and {"loss_g", "loss_d", "loss_dice", "val_dice"} <= set(losses(a)[0])
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert any(k.startswith("optim.") for k in wa)  # Adam moments are compared too
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert (a / "split.json").read_text() == (b / "split.json").read_text()


def test_another_seed_gives_other_weights(runs):
    # The comparison above can fail: a different seed changes the result.
    wa, wc = weights(runs / "a"), weights(runs / "c")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa if k.startswith("generator."))
    assert losses(runs / "a") != losses(runs / "c")


def test_seed_and_versions_are_recorded_in_the_run(runs):
    run = runs / "a"
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["seed"] == 5
    versions = json.loads((run / "versions.json").read_text())
    assert versions["torch"] == torch.__version__
    assert versions["numpy"] == np.__version__
    assert versions["python"] == platform.python_version()
    assert {"monai", "nibabel", "safetensors"} <= set(versions)
    # The checkpoint carries them too, so a copied checkpoint alone says how it was made.
    from vox2vox.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run / "checkpoints" / "last.safetensors")
    assert ckpt.config["train"]["seed"] == 5 and ckpt.state["versions"]["torch"] == torch.__version__
