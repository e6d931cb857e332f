"""Crash safety of `vox2vox train`: SIGKILL at random moments never costs a readable checkpoint or more
than one checkpoint interval, `--resume` carries on; Ctrl-C saves a checkpoint and exits with 130."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import make_manifest, tiny_overrides
from vox2vox.model.checkpoint import load_checkpoint, resolve_checkpoint

pytestmark = pytest.mark.slow

NETS = tiny_overrides({
    "generator.max_filters": "8", "discriminator.max_filters": "8", "discriminator.n_strided": "2",
    "train.patch_size": "[16,16,16]", "train.batch_size": "1", "data.val_cases": "0", "train.checkpoint_every": "1",
    "train.device": '"cpu"', "augment.p_untouched": "1.0",
})
NEVER_ENDS = ["--set", "train.epochs=100000"]


def start(manifest: Path, run: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "vox2vox.cli", "train", "--config", "paper", "--data", str(manifest), "--out", str(run), *NETS, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def logged_epochs(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines() if line.strip()]


def wait_for_epoch(proc: subprocess.Popen, run: Path, epoch: int, *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not logged_epochs(run) or logged_epochs(run)[-1] < epoch:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"epoch {epoch} not reached in {timeout} s")
        time.sleep(0.02)


def checkpoint_epochs(run: Path) -> dict[str, int]:
    """Every checkpoint file in the run loads; their epochs by name."""
    folder = run / "checkpoints"
    found = {}
    for path in sorted(folder.glob("*.safetensors")):
        if path.name.startswith("."):
            continue  # a temporary file a kill left mid-write: never a checkpoint (checked below)
        found[path.stem] = int(load_checkpoint(path).state["epoch"])
    return found


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return make_manifest(tmp_path_factory.mktemp("crash") / "data", n_cases=2)


def test_sigkill_at_random_moments_then_resume(tmp_path, manifest):
    rng = random.Random(20240611)
    run = tmp_path / "run"
    for trial in range(5):
        proc = start(manifest, run, *NEVER_ENDS, *(["--resume"] if trial else []))
        done = logged_epochs(run)[-1] if trial else 0
        # Let it train at least one epoch past where it resumed, then kill it at a random moment
        # (mid-step, mid-log-write or mid-checkpoint-write).
        wait_for_epoch(proc, run, done + 1)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()

        epochs = logged_epochs(run)
        assert epochs == list(range(1, len(epochs) + 1)), epochs  # no torn or duplicated rows
        ckpts = checkpoint_epochs(run)
        assert "last" in ckpts
        # The log row of an epoch is written just before its checkpoint: at most that one epoch
        # (one checkpoint interval) is lost.
        assert epochs[-1] - 1 <= ckpts["last"] <= epochs[-1], (ckpts, epochs[-1])
        # Leftover temporaries are hidden names that resolution never picks.
        assert resolve_checkpoint(run, which="last").name == "last.safetensors"
        for leftover in (run / "checkpoints").glob(".*"):
            assert ".tmp" in leftover.name

    # Resume to a finish a few epochs on: it starts from the last checkpoint and completes.
    last = checkpoint_epochs(run)["last"]
    final = last + 2
    proc = start(manifest, run, "--resume", "--set", f"train.epochs={final}")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert logged_epochs(run) == list(range(1, final + 1))
    assert checkpoint_epochs(run)["last"] == final
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2 * e for e in range(1, final + 1)]  # 2 cases, batch 1: no step lost or repeated
    assert f"trained {final} epochs" in out


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, manifest):
    run = tmp_path / "run"
    proc = start(manifest, run, *NEVER_ENDS)
    wait_for_epoch(proc, run, 2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].rsplit("\r", 1)[-1] == "vox2vox train: interrupted"
    logged = logged_epochs(run)[-1]
    saved = load_checkpoint(run / "checkpoints" / "last.safetensors").state["epoch"]
    assert saved == logged  # the checkpoint holds every completed epoch
    proc = start(manifest, run, "--resume", "--set", f"train.epochs={logged + 1}")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert logged_epochs(run) == list(range(1, logged + 2))
