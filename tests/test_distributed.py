"""Data parallelism: torchrun with 2 CPU processes (gloo) equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vox2vox.cli import main
from vox2vox.data.synthetic import write_brats_folder
from vox2vox.errors import Vox2VoxError
from vox2vox.model.checkpoint import load_checkpoint
from vox2vox.model.discriminator import Discriminator
from vox2vox.model.generator import Generator
from vox2vox.train import distributed

# Tiny networks; dropout off because masks are drawn per rank (see vox2vox.train.distributed); the
# accuracy gate on so that the gated (possibly skipped) D step runs under DDP too.
TINY = [
    "--set", "generator.base_filters=4", "--set", "generator.depth=3", "--set", "generator.bottleneck_blocks=1",
    "--set", "generator.dropout=0.0", "--set", "discriminator.base_filters=4", "--set", "discriminator.dropout=0.0",
    "--set", "train.patch_size=[24,24,24]", "--set", "train.batch_size=2", "--set", "data.val_cases=1",
    "--set", "train.d_accuracy_gate=0.5", "--set", 'train.device="cpu"',
]

# Runs the CLI under torchrun; on ranks other than 0 it records every file the process opens for
# writing, renames or creates under the run directory (Python audit events), to prove rank 0 alone
# writes the run.
LAUNCHER = '''
import json, os, sys
run_dir = os.path.realpath(os.environ["AUDIT_RUN_DIR"])
writes = []

def audit(event, args):
    if event == "open" and args[0] is not None and not isinstance(args[0], int):
        mode, flags = args[1], args[2] or 0
        writing = (mode is not None and any(c in mode for c in "wax+")) or (
            mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        paths = [args[0]] if writing else []
    elif event in ("os.rename", "os.mkdir", "os.remove", "shutil.copyfile"):
        paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
    else:
        return
    for p in paths:
        p = os.fsdecode(p)
        if os.path.realpath(os.path.abspath(p)).startswith(run_dir):
            writes.append([event, p])

rank = int(os.environ["RANK"])
if rank != 0:
    sys.addaudithook(audit)
from vox2vox.cli import main
code = main(sys.argv[1:])
with open(os.path.join(os.environ["AUDIT_OUT"], f"writes{rank}.json"), "w") as f:
    json.dump(writes, f)
sys.exit(code)
'''


def _torchrun(tmp_path: Path, run_dir: Path, checksums: Path, args: list[str]) -> None:
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    env = dict(os.environ, AUDIT_RUN_DIR=str(run_dir), AUDIT_OUT=str(tmp_path),
               OMP_NUM_THREADS="1", **{distributed.CHECKSUM_ENV: str(checksums)})
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(launcher), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert json.loads((tmp_path / "writes1.json").read_text()) == [], "rank 1 wrote into the run directory"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process_with_resume(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_brats_folder(data, n_cases=5, seed=1, shape=(32, 32, 24))  # 4 training cases: 2 steps/epoch

    # One process, global batch 2, two epochs without a break.
    single, single_ck = tmp_path / "single", tmp_path / "ck_single"
    monkeypatch.setenv(distributed.CHECKSUM_ENV, str(single_ck))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["train", "--config", "paper", "--data", str(data), "--out", str(single), "--set", "train.epochs=2", *TINY]) == 0
    monkeypatch.delenv(distributed.CHECKSUM_ENV)

    # Two processes, the same global batch (1 per rank): one epoch, then resume to two.
    ddp, ddp_ck = tmp_path / "ddp", tmp_path / "ck_ddp"
    # Tracked to TensorBoard: rank 0 alone logs (rank 1's writes are audited like every other file).
    base = ["train", "--config", "paper", "--data", str(data), "--out", str(ddp), *TINY, "--set", 'train.log="tensorboard"']
    _torchrun(tmp_path, ddp, ddp_ck, [*base, "--set", "train.epochs=1"])
    _torchrun(tmp_path, ddp, ddp_ck, [*base, "--resume", "--set", "train.epochs=2"])

    # Both ranks hold bit-identical weights after every step.
    rank0, rank1 = _rows(ddp_ck / "rank0.jsonl"), _rows(ddp_ck / "rank1.jsonl")
    assert [r["step"] for r in rank0] == [1, 2, 3, 4]
    assert rank0 == rank1
    # ... and follow the single-process run step by step (sums of all weights; see below).
    ones = _rows(single_ck / "rank0.jsonl")
    assert [r["step"] for r in ones] == [1, 2, 3, 4]
    for a, b in zip(ones, rank0, strict=True):
        assert a["sum0"] == pytest.approx(b["sum0"], abs=5e-3)
        assert a["sum1"] == pytest.approx(b["sum1"], abs=5e-3)

    # Rank 0 wrote the run (rank 1 wrote nothing, checked by the launcher): the usual files, one
    # log row per epoch, and the same logged losses as one process.
    assert sorted(p.name for p in ddp.iterdir()) == ["checkpoints", "config.json", "metrics.jsonl",
                                                    "split.json", "tensorboard", "versions.json"]
    assert len(list((ddp / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per train call
    rows_1, rows_2 = _rows(single / "metrics.jsonl"), _rows(ddp / "metrics.jsonl")
    assert [r["epoch"] for r in rows_2] == [1, 2]
    for a, b in zip(rows_1, rows_2, strict=True):
        for key in ("loss_g", "loss_dice", "loss_adv", "loss_d", "d_acc", "val_dice"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key

    # Final weights equal within float tolerance. Convolution biases right before an instance
    # norm have a true gradient of exactly zero (the norm removes any per-channel constant), so
    # theirs is rounding noise that Adam rescales to +-lr: they differ by up to a few lr and do not
    # change any output. Every other tensor, and the networks' outputs, agree closely.
    a, b = load_checkpoint(single / "checkpoints" / "last.safetensors"), load_checkpoint(ddp / "checkpoints" / "last.safetensors")
    assert a.state["step"] == b.state["step"] == 4
    for net in ("generator", "discriminator"):
        wa, wb = getattr(a, net), getattr(b, net)
        assert wa.keys() == wb.keys()
        for key in wa:
            tol = 1e-6 if key.endswith("weight") else 2e-3
            torch.testing.assert_close(wa[key], wb[key], atol=tol, rtol=0, msg=f"{net}.{key}")
    from vox2vox.config import Config

    config = Config.from_dict(a.config)
    g1, g2 = Generator(config.generator), Generator(config.generator)
    g1.load_state_dict(a.generator)
    g2.load_state_dict(b.generator)
    d1, d2 = Discriminator(config.discriminator), Discriminator(config.discriminator)
    d1.load_state_dict(a.discriminator)
    d2.load_state_dict(b.discriminator)
    x = torch.randn(1, config.generator.in_channels, 24, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y1, y2 = g1.eval()(x), g2.eval()(x)
        torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(d1.eval()(x, y1), d2.eval()(x, y1), atol=1e-5, rtol=1e-4)


def test_rank_batches_split_every_global_batch_evenly():
    # World size 1: exactly DataLoader(batch_size=B) order, with the last partial batch.
    assert list(distributed.RankBatchSampler(7, 3, rank=0, world=1)) == [[0, 1, 2], [3, 4, 5], [6]]
    # Two ranks: contiguous halves of each global batch; an odd last batch is dropped on both.
    r0 = list(distributed.RankBatchSampler(10, 4, rank=0, world=2))
    r1 = list(distributed.RankBatchSampler(10, 4, rank=1, world=2))
    assert r0 == [[0, 1], [4, 5], [8]] and r1 == [[2, 3], [6, 7], [9]]
    assert len(distributed.RankBatchSampler(9, 4, rank=0, world=2)) == 2
    assert sorted(i for b in r0 + r1 for i in b) == list(range(10))


def test_global_batch_must_divide_over_ranks():
    with pytest.raises(Vox2VoxError, match="multiple of 2"):
        distributed.per_rank_batch(3, 2)


def test_single_process_helpers_are_identities(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.enabled) == (0, 1, True, False)
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap(module, ctx) is module
    assert distributed.mean_over_ranks({"a": 1.5}) == {"a": 1.5}
    assert distributed.on_main(lambda: 3) == 3
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.rank_seed(123) == 123
