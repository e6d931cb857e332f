"""Timing a plan's candidates on this machine: seconds per real training step of each candidate
patch (:func:`measure_throughput`), and whether other processes kept the cores busy meanwhile
(:class:`CpuWatch`, :func:`contention_note`), which makes those seconds slower than the machine
trains when idle. The planner (:mod:`vox2vox.train.planner`) turns the table into a plan.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence

import torch
from tqdm import tqdm

from vox2vox.config import Config
from vox2vox.device import Device
from vox2vox.progress import bar_hidden
from vox2vox.train.state import build_state
from vox2vox.train.training import train_step


def patch_key(patch: Sequence[int]) -> str:
    """A patch's key in the throughput table (``"64x64x64"``)."""
    return "x".join(str(int(p)) for p in patch)


# ---- was the machine busy? ---------------------------------------------------------------------
# Idle cores short of the plan's threads, on average, beyond which the measured step times (and so
# the patch and the step count) no longer describe this machine: half a core slows a 2-thread step
# measurably.
BUSY_CORES = 0.5


class CpuWatch:
    """How many of the cores this process may run on other processes kept busy, on average, while
    the block ran.

    Reads the kernel's per-core CPU counters (``/proc/stat``) for the cores in this process's
    affinity set, less this process's own CPU time; where the counters do not exist (not Linux)
    ``others_cores`` stays None: unknown, not zero.
    """

    def __init__(self) -> None:
        self.others_cores: float | None = None
        self._cores = _usable_cores()
        self.cores = len(self._cores) or (os.cpu_count() or 1)

    def __enter__(self) -> CpuWatch:
        self._start = (_busy_seconds(self._cores), _own_cpu_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        busy0, own0, t0 = self._start
        busy1, wall = _busy_seconds(self._cores), time.perf_counter() - t0
        if busy0 is None or busy1 is None or wall <= 0:
            return
        others = (busy1 - busy0) - (_own_cpu_seconds() - own0)
        self.others_cores = max(others, 0.0) / wall


def contention_note(others_cores: float | None, device: Device, cores: int) -> str | None:
    """A warning for the plan when other processes left fewer idle cores than the plan's threads
    while its steps were timed (None: no warning)."""
    if others_cores is None or device.kind != "cpu":
        return None
    if cores - others_cores >= device.threads - BUSY_CORES:
        return None
    return (f"warning: other processes kept {others_cores:.1f} of the {cores} cores this process may use busy "
            f"while the steps were timed ({device.threads} threads wanted them), so the step times are slower "
            "than this machine trains when idle and the patch above is smaller than an idle machine would "
            "get; plan again when the machine is idle (`vox2vox plan`), or keep this plan if the load will "
            "last through training")


def _usable_cores() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return set()


def _busy_seconds(cores: set[int]) -> float | None:
    """CPU seconds spent on ``cores`` since boot by every process (idle and I/O wait excluded)."""
    if not cores:
        return None
    busy = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *values = line.split()
                if not name.startswith("cpu"):
                    break
                if name == "cpu" or int(name[3:]) not in cores:
                    continue
                fields = [int(v) for v in values[:8]]  # user .. steal (guest time is inside user)
                busy += sum(fields) - fields[3] - fields[4]
    except (OSError, ValueError, IndexError):
        return None
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def measure_throughput(candidates: Sequence[tuple[int, int, int]], make_config: Callable[[tuple[int, int, int]], Config],
                       *, device: Device, steps: int = 3, max_seconds: float = 60.0,
                       progress: bool = False) -> dict[str, float]:
    """Seconds per training step (G and D half-steps, random data) of each candidate patch, smallest
    first; stops early once a step takes more than ``max_seconds / 4`` (larger ones only cost more).
    ``progress`` shows a progress bar on stderr that vanishes when done."""
    table: dict[str, float] = {}
    spent = 0.0
    bar = tqdm(candidates, desc=f"plan: timing training steps of candidate patch sizes on {device.kind}",
               leave=False, disable=bar_hidden(progress), file=sys.stderr)
    for patch in bar:
        config = make_config(patch)
        state = build_state(config, device=torch.device(device.kind))
        g = torch.Generator().manual_seed(0)
        # A translation's batch holds the source channels followed by the targets.
        n_image = config.generator.in_channels + (config.generator.n_classes if config.task.translate else 0)
        shape = (config.train.batch_size, n_image, *patch)
        image = torch.randn(shape, generator=g).to(device.kind)
        label = torch.randint(0, config.generator.n_classes, (shape[0], *patch), generator=g).to(device.kind)
        train_step(state, image, label, config, progress=1.0)  # warm-up: allocator, kernels
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            train_step(state, image, label, config, progress=1.0)
            if device.kind == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        # The median: one step slowed by another process must not shrink the whole plan.
        seconds = float(sorted(times)[len(times) // 2])
        table[patch_key(patch)] = round(seconds, 4)
        spent += seconds * (steps + 1)
        if seconds > max_seconds / 4 or spent > max_seconds:
            break
    return table
