"""Training-step speed of the paper-size Vox2Vox on this machine, channels-first vs channels-last.

For one configuration (patch size, width, memory format) this prints one JSON line with:

- ``step_s``: seconds of a whole ``vox2vox.train.training.train_step`` (fake once, D half-step on the
  real and the detached fake pair, G half-step through the frozen D), batch 1, 4 channels,
  4 classes; median of ``--steps`` after a warm-up step;
- ``g_fwd_bwd_s``: seconds of the generator's forward plus backward alone (G(x), generalized Dice
  loss, ``backward``; no optimiser), median of ``--steps``;
- the FLOPs of each, counted by ``torch.utils.flop_counter.FlopCounterMode`` during the warm-up,
  and the achieved fraction of the float32 matmul rate measured in the same process
  (``torch.mm`` 2048 x 2048, best of 5), once by wall time and once by CPU time / threads (the
  latter is the honest one on a shared machine: wall time there includes other processes' turns);
- ``peak_rss_gib``: the process's peak resident memory (``ru_maxrss``), which is why ``--matrix``
  runs every configuration in its own process;
- the 1-minute load average before and after (the CPU may be shared).

``--malloc default`` leaves glibc's allocator as it is; the default, ``tuned``, first calls
``vox2vox.device.tune_cpu_allocator`` as ``fit`` and prediction do (freed activation memory is
reused instead of being unmapped and page-faulted back every step).

``--format channels_last`` converts both networks and the input batch to
``torch.channels_last_3d`` from outside the library (a layout experiment); ``--format default``
uses the library as it is.

Examples::

    python benchmarks/train_speed.py --size 64                       # one configuration
    python benchmarks/train_speed.py --matrix --sizes 64 128 --steps 2   # both formats, both sizes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from vox2vox.config import Config
from vox2vox.device import tune_cpu_allocator
from vox2vox.model.generator import count_parameters
from vox2vox.model.losses import generalized_dice_loss, one_hot
from vox2vox.train.state import build_state
from vox2vox.train.training import train_step

IN_CHANNELS, N_CLASSES = 4, 4


def make_config(size: int, width: int) -> Config:
    nets = {"in_channels": IN_CHANNELS, "n_classes": N_CLASSES, "base_filters": width}
    return Config.from_dict({
        "generator": nets, "discriminator": nets,
        "loss": {"dice_weighting": "uniform"},  # same cost as fixed weights, no label statistics needed
        "train": {"patch_size": [size] * 3, "batch_size": 1, "device": "cpu", "amp": "off", "seed": 0},
    })


def matmul_rate(n: int = 2048, repeats: int = 5) -> tuple[float, float]:
    """Best float32 FLOP/s of an n x n product by wall time, and by CPU time / threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = best_cpu = 0.0
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
        best_cpu = max(best_cpu, 2 * n**3 / ((time.process_time() - c0) / torch.get_num_threads()))
    return best, best_cpu


def timed(fn, steps: int) -> tuple[list[float], list[float], float]:
    """Wall and CPU seconds of each of ``steps`` calls after one warm-up call counted by FlopCounterMode.

    CPU seconds (``time.process_time``, all threads) divided by the thread count estimate what a
    call would take on an unshared machine: on a loaded machine the wall time also holds the time
    other processes ran.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu, float(counter.get_total_flops())


def run_one(args: argparse.Namespace) -> dict:
    # "tuned": what fit() and predict do (vox2vox.device.tune_cpu_allocator); "default": glibc as is.
    allocator_tuned = tune_cpu_allocator() if args.malloc == "tuned" else False
    torch.manual_seed(0)
    config = make_config(args.size, args.width)
    state = build_state(config, device=torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    image = torch.randn(1, IN_CHANNELS, *(args.size,) * 3, generator=g)
    label = torch.randint(0, N_CLASSES, (1, *(args.size,) * 3), generator=g)
    if args.format == "channels_last":
        fmt = torch.channels_last_3d
        state.generator.to(memory_format=fmt)
        state.discriminator.to(memory_format=fmt)
        image = image.contiguous(memory_format=fmt)
    load_before = os.getloadavg()[0]
    result = {"size": args.size, "width": args.width, "format": args.format, "threads": torch.get_num_threads(),
              "malloc": args.malloc, "allocator_tuned": allocator_tuned,
              "params_g_m": count_parameters(state.generator) / 1e6,
              "params_d_m": count_parameters(state.discriminator) / 1e6}

    generator, target = state.generator, one_hot(label, N_CLASSES)

    def g_fwd_bwd() -> None:
        generator.zero_grad(set_to_none=True)
        generalized_dice_loss(target, generator(image), weighting="uniform").backward()

    if not args.skip_generator:
        g_times, g_cpu, g_flops = timed(g_fwd_bwd, args.steps)
        result.update(g_fwd_bwd_s=statistics.median(g_times), g_fwd_bwd_all_s=g_times,
                      g_fwd_bwd_cpu_s=statistics.median(g_cpu), g_flops=g_flops)
    generator.zero_grad(set_to_none=True)
    if not args.skip_step:
        s_times, s_cpu, s_flops = timed(lambda: train_step(state, image, label, config), args.steps)
        result.update(step_s=statistics.median(s_times), step_all_s=s_times,
                      step_cpu_s=statistics.median(s_cpu), step_flops=s_flops)
    rate, rate_cpu = matmul_rate()
    threads = torch.get_num_threads()
    result["matmul_gflops"], result["matmul_gflops_by_cpu_time"] = rate / 1e9, rate_cpu / 1e9
    for key, flops in (("g_fwd_bwd", "g_flops"), ("step", "step_flops")):
        if f"{key}_s" in result:
            result[f"{key}_fraction_of_matmul"] = result[flops] / result[f"{key}_s"] / rate
            result[f"{key}_fraction_by_cpu_time"] = result[flops] / (result[f"{key}_cpu_s"] / threads) / rate_cpu
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--width", type=int, default=64, help="base filters of G and D (paper: 64)")
    p.add_argument("--format", choices=["default", "channels_last"], default="default")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--malloc", choices=["tuned", "default"], default="tuned",
                   help="tuned: keep freed memory in the process as training does; default: glibc as is")
    p.add_argument("--skip-step", action="store_true", help="time only the generator's forward+backward")
    p.add_argument("--skip-generator", action="store_true", help="time only the whole train step")
    p.add_argument("--matrix", action="store_true", help="every --sizes x format, each in its own process")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--formats", nargs="+", default=["default", "channels_last"])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.matrix:
        print(json.dumps(run_one(args)), flush=True)
        return
    for size in args.sizes:
        for fmt in args.formats:
            cmd = [sys.executable, __file__, "--size", str(size), "--width", str(args.width), "--format", fmt,
                   "--steps", str(args.steps), "--malloc", args.malloc]
            cmd += ["--skip-step"] if args.skip_step else []
            cmd += ["--skip-generator"] if args.skip_generator else []
            subprocess.run(cmd, check=False)


if __name__ == "__main__":
    main()
