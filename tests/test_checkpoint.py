"""Checkpoints: identical outputs after a round trip, rebuild from the file alone, no pickle, atomic."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

import vox2vox.atomic
from vox2vox.config import Config
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.inference import read_model
from vox2vox.model.checkpoint import (
    Checkpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from vox2vox.model.discriminator import Discriminator
from vox2vox.model.generator import Generator


def tiny_config() -> Config:
    return Config.from_dict(
        {
            "generator": {"in_channels": 2, "n_classes": 3, "base_filters": 4, "max_filters": 16, "depth": 3},
            "discriminator": {"in_channels": 2, "n_classes": 3, "base_filters": 4, "max_filters": 16, "n_strided": 2},
            "train": {"patch_size": [16, 16, 16]},
        }
    )


def make_checkpoint(config: Config, seed: int = 0) -> tuple[Checkpoint, Generator]:
    torch.manual_seed(seed)
    generator, discriminator = Generator(config.generator), Discriminator(config.discriminator)
    opt = torch.optim.Adam(generator.parameters(), lr=1e-3, betas=(0.5, 0.999))
    generator(torch.randn(1, 2, 16, 16, 16), return_logits=True).mean().backward()
    opt.step()  # gives the optimizer tensor state (exp_avg, exp_avg_sq, step)
    ckpt = Checkpoint(
        config=config.to_dict(),
        generator=generator.state_dict(),
        discriminator=discriminator.state_dict(),
        optimizers={"generator": opt.state_dict()},
        state={"epoch": 3, "step": 12, "best_score": 0.5, "channels": ["t1", "flair"]},
    )
    return ckpt, generator


def test_save_load_gives_identical_generator_outputs(tmp_path):
    config = tiny_config()
    ckpt, generator = make_checkpoint(config)
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, ckpt)
    loaded = load_checkpoint(path)
    rebuilt = Generator(Config.from_dict(loaded.config).generator)
    rebuilt.load_state_dict(loaded.generator)
    x = torch.randn(2, 2, 16, 16, 24)
    generator.eval()
    rebuilt.eval()
    with torch.inference_mode():
        assert torch.equal(generator(x), rebuilt(x))
    assert loaded.state["epoch"] == 3 and loaded.state["channels"] == ["t1", "flair"]
    assert "torch" in loaded.state["versions"]
    for key, value in ckpt.discriminator.items():
        assert torch.equal(loaded.discriminator[key], value)
    # Optimizer state comes back complete and loads into a fresh Adam.
    opt_state = loaded.optimizers["generator"]
    original = ckpt.optimizers["generator"]
    assert set(opt_state["state"]) == set(original["state"])
    for idx, entry in original["state"].items():
        for key, value in entry.items():
            assert torch.equal(opt_state["state"][idx][key], value)
    fresh = torch.optim.Adam(rebuilt.parameters(), lr=1.0)
    fresh.load_state_dict(opt_state)
    assert fresh.param_groups[0]["lr"] == 1e-3


def test_a_checkpoint_alone_rebuilds_the_model(tmp_path):
    config = tiny_config()
    ckpt, generator = make_checkpoint(config, seed=3)
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "best.safetensors", ckpt)
    x = torch.randn(1, 2, 16, 16, 16)
    generator.eval()
    with torch.inference_mode():
        expected = generator(x)
    for where in (run, run / "checkpoints" / "best.safetensors"):
        model = read_model(where)
        assert model.config.generator == config.generator
        assert not model.generator.training
        assert model.channels == ["t1", "flair"]
        with torch.inference_mode():
            assert torch.equal(model.generator(x), expected)


def test_resolve_checkpoint_prefers_best_and_falls_back_to_last(tmp_path):
    ckpt, _ = make_checkpoint(tiny_config())
    folder = tmp_path / "run" / "checkpoints"
    save_checkpoint(folder / "last.safetensors", ckpt)
    assert resolve_checkpoint(tmp_path / "run").name == "last.safetensors"
    save_checkpoint(folder / "best.safetensors", ckpt)
    assert resolve_checkpoint(tmp_path / "run").name == "best.safetensors"
    with pytest.raises(Vox2VoxError, match="no checkpoint found"):
        resolve_checkpoint(tmp_path / "empty")


def test_valid_checkpoints_are_never_mistaken_for_pickles(tmp_path):
    # The safetensors header length is little-endian; a length of 128 + 256 k starts with 0x80,
    # the pickle protocol marker. Headers are padded to 8 bytes, so 32 metadata lengths 8 apart
    # cover every possible first byte, 0x80 included.
    path = tmp_path / "c.safetensors"
    first_bytes = set()
    for n in range(32):
        save_checkpoint(path, Checkpoint(config={"pad": "x" * (8 * n)}, generator={"w": torch.arange(3.0)}))
        first_bytes.add(path.read_bytes()[0])
        assert torch.equal(load_checkpoint(path).generator["w"], torch.arange(3.0))
    assert 0x80 in first_bytes


class _Planted:
    """Unpickling this object would create a file (a stand-in for arbitrary code execution)."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("name", ["model.pt", "model.safetensors", "model.bin", "model"])
def test_pickle_files_are_refused_without_unpickling(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    torch.save({"generator": {"w": torch.zeros(2)}, "payload": _Planted(str(marker))}, path)
    with pytest.raises(Vox2VoxError, match="pickle"):
        load_checkpoint(path)
    with pytest.raises(Vox2VoxError, match="pickle"):
        read_model(path)
    assert not marker.exists()


def test_raw_pickle_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps(_Planted(str(marker))))
    with pytest.raises(Vox2VoxError, match="pickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_other_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(Vox2VoxError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello, world, not a checkpoint")
    with pytest.raises(Vox2VoxError, match="safetensors"):
        load_checkpoint(junk)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(Vox2VoxError, match="not a vox2vox checkpoint"):
        load_checkpoint(foreign)


def test_writes_are_atomic(tmp_path, monkeypatch):
    config = tiny_config()
    old, _ = make_checkpoint(config, seed=0)
    new, _ = make_checkpoint(config, seed=1)
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, old)
    before = path.read_bytes()

    def failing_write(tmp, data, target):
        tmp.write_bytes(data[: len(data) // 2])  # half the file is on disk when the failure hits
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vox2vox.atomic, "_write", failing_write)
    with pytest.raises(Vox2VoxError, match="No space left on device"):
        save_checkpoint(path, new)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.safetensors"]
    loaded = load_checkpoint(path)
    assert all(torch.equal(loaded.generator[k], v) for k, v in old.generator.items())


def test_a_failed_rename_leaves_no_temporary_file(tmp_path, monkeypatch):
    ckpt, _ = make_checkpoint(tiny_config())
    path = tmp_path / "best.safetensors"

    def failing_replace(src, dst):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(vox2vox.atomic.os, "replace", failing_replace)
    with pytest.raises(Vox2VoxError, match="I/O error"):
        save_checkpoint(path, ckpt)
    assert os.listdir(tmp_path) == []
