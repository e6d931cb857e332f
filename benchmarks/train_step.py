"""Time Vox2Vox training steps: median seconds per step, peak memory, achieved FLOP rate.

Builds the generator and discriminator (4 channels, 4 classes) at the given patch size and base
width, feeds random data through ``vox2vox.train.training.train_step`` (D half-step then G half-step, as
in training), and prints:

- the median wall time of a whole step (both half-steps) over ``--steps`` steps after warm-up,
  and with ``--split`` also of a generator-only step (``loss.adversarial=false``: G forward,
  backward and Adam) so that the discriminator's share is the difference;
- peak resident memory of the process (``resource.getrusage``; on CUDA also the peak allocated
  GPU memory);
- the floating-point operations of one step counted by ``torch.utils.flop_counter`` and the
  achieved rate, next to a measured float32 matmul rate (``torch.mm`` of 2048 x 2048) as the
  practical peak of this device.

Example: ``python benchmarks/train_step.py --size 64 --base-filters 16 --batch 1 --steps 5``
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from vox2vox.config import Config
from vox2vox.device import resolve_amp, resolve_device
from vox2vox.model.generator import count_parameters
from vox2vox.train.state import build_networks, build_state
from vox2vox.train.training import train_step

IN_CHANNELS = 4
N_CLASSES = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, required=True, help="cubic patch size (multiple of 16)")
    parser.add_argument("--base-filters", type=int, default=64, help="first-layer width of G and D")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    parser.add_argument("--split", action="store_true", help="also time a generator-only step")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one extra step)")
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace, *, adversarial: bool = True) -> Config:
    return Config.from_dict(
        {
            "generator": {"in_channels": IN_CHANNELS, "n_classes": N_CLASSES, "base_filters": args.base_filters},
            "discriminator": {"in_channels": IN_CHANNELS, "n_classes": N_CLASSES, "base_filters": args.base_filters},
            # Uniform weights cost the same as fixed ones and need no label statistics.
            "loss": {"adversarial": adversarial, "dice_weighting": "uniform"},
            "train": {"patch_size": [args.size] * 3, "batch_size": args.batch, "device": args.device,
                      "amp": args.amp, "seed": 0},
        }
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(config: Config, device: torch.device, args: argparse.Namespace) -> tuple[list[float], float | None]:
    """Seconds of each timed step, and the FLOPs of one step (None with --no-flops)."""
    state = build_state(config, device=device)
    g = torch.Generator().manual_seed(1)
    shape = (args.batch, args.size, args.size, args.size)
    image = torch.randn(args.batch, IN_CHANNELS, *shape[1:], generator=g).to(device)
    label = torch.randint(0, N_CLASSES, shape, generator=g).to(device)
    for _ in range(args.warmup):
        train_step(state, image, label, config)
    times = []
    for _ in range(args.steps):
        synchronize(device)
        t0 = time.perf_counter()
        train_step(state, image, label, config)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    flops = None
    if not args.no_flops:
        counter = FlopCounterMode(display=False)
        with counter:
            train_step(state, image, label, config)
        flops = float(counter.get_total_flops())
    return times, flops


def matmul_rate(device: torch.device, n: int = 2048, repeats: int = 5) -> tuple[float, float]:
    """Median and best float32 FLOP/s of an n x n matrix product (2 n^3 operations)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)
    rates = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        rates.append(2 * n**3 / (time.perf_counter() - t0))
    return statistics.median(rates), max(rates)


def peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    config = make_config(args)
    generator, discriminator = build_networks(config)
    n_g, n_d = count_parameters(generator), count_parameters(discriminator)
    del generator, discriminator
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {device} ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads), load average at start {load:.2f}")
    print(f"patch {args.size}^3, batch {args.batch}, base filters {args.base_filters}: "
          f"G {n_g / 1e6:.2f} M parameters, D {n_d / 1e6:.2f} M parameters, amp {resolve_amp(config.train.amp, device)}")

    times, flops = time_steps(config, device, args)
    step = statistics.median(times)
    print(f"train step (G and D): median {step:.3f} s over {len(times)} steps "
          f"(min {min(times):.3f}, max {max(times):.3f}); {args.batch / step:.2f} patches/s")
    if args.split:
        g_times, g_flops = time_steps(make_config(args, adversarial=False), device, args)
        g_step = statistics.median(g_times)
        print(f"generator-only step (no adversarial part): median {g_step:.3f} s; "
              f"discriminator share about {step - g_step:.3f} s (noisy under load)")
        if flops is not None and g_flops is not None:
            print(f"FLOPs: generator-only step {g_flops / 1e9:.1f} GFLOP; the discriminator adds "
                  f"{(flops - g_flops) / 1e9:.1f} GFLOP ({100 * (flops - g_flops) / flops:.0f}% of a full step)")
    print(f"peak RSS {peak_rss_gib():.2f} GiB", end="")
    if device.type == "cuda":
        print(f", peak CUDA allocated {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB", end="")
    print()
    # The median matmul rate is measured under the same load as the steps; the best one is
    # closer to what the device gives when nothing else runs.
    peak, best = matmul_rate(device)
    print(f"float32 matmul (2048^2) rate: median {peak / 1e9:.1f} GFLOP/s, best {best / 1e9:.1f} GFLOP/s")
    if flops is not None:
        achieved = flops / step
        print(f"FLOPs per step {flops / 1e9:.1f} GFLOP; achieved {achieved / 1e9:.1f} GFLOP/s = "
              f"{100 * achieved / peak:.0f}% of the median matmul rate ({100 * achieved / best:.0f}% of the best)")
    print(f"load average at end {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "")


if __name__ == "__main__":
    main()
