"""Where a planned CPU training step goes, and how many steps a second the loop makes: the slow
path (fp32, sampling between steps) against the fast one (bf16 autocast where this CPU runs bf16
natively; sampling overlapped with the step by ``train.patches.BatchStream`` where its trial timed
that faster, as training does), side by side.

The network and objective are what `vox2vox plan` picks for the shared BraTS FLAIR cases on a
2-core CPU with a 30-minute budget (docs/method.md, "Self-configuration"): residual generator
8-128 of depth 4, critic of width 8, 80x96x80 patches, batch 2, per-sample Dice + cross-entropy,
0.1 x LSGAN once 30% of the budget is spent. The data are the real cases of
``../shared/data/brats2018-deepvoxnet2`` preprocessed as that plan does (z-score, 1.89 mm).

Prints JSON lines:

- ``machine``: CPU model and flags, torch, threads, the fp32 matmul rate (2048^2 ``torch.mm``), the
  yardstick for "fraction of the machine's matmul rate";
- ``phases`` per precision: median wall seconds of each part of a step, run one after another
  (patch sampling, augmentation, host-to-tensor, G forward, losses, G backward, G's Adam, the
  critic's half-step, the adversarial term's extra forward/backward), and G's forward + backward by
  layer kind (torch profiler, self CPU time);
- ``loop`` per variant: steps per second of the real loop (batches from the stream, ``train_step``)
  before and after the critic starts, and G's forward + backward GFLOP/s and share of the matmul rate;
  besides before and after, the sampling modes fixed (overlapped in fp32, and in bf16 serial and
  overlapped); ``trial`` lines say which mode the "after" stream's trial chose (timed after it).

    python benchmarks/step_speed.py --steps 20            # idle machine; OMP_NUM_THREADS sets threads

The process tunes the host allocator as ``vox2vox train`` does (``device.tune_cpu_allocator``), so
both paths are timed as training runs them. ``--fast-amp off`` times the fast path without bf16,
which is what a CPU without native bf16 gets: with ``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2`` in the environment, PyTorch's and oneDNN's kernels are those an AVX2
machine runs (an emulation of such a CPU, not one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from vox2vox.config import Config
from vox2vox.data.augmentation import Augmenter, sample_patch
from vox2vox.data.layouts import discover
from vox2vox.data.loading import load_case
from vox2vox.device import autocast, cpu_bf16, tune_cpu_allocator
from vox2vox.model.losses import lsgan_generator_loss, one_hot
from vox2vox.train.patches import BatchStream, patch_loader
from vox2vox.train.state import build_state
from vox2vox.train.training import (
    _critic_amp,
    _segmentation_loss,
    _update_discriminator,
    train_step,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brats2018-deepvoxnet2"
PATCH = (80, 96, 80)


def planned_config(amp: str) -> Config:
    return Config.from_dict({
        "data": {"label_name": "GT_W"},
        "preprocess": {"normalize": "zscore-nonzero", "target_spacing": [1.89, 1.89, 1.89], "pad_multiple": 16},
        "generator": {"arch": "residual", "in_channels": 1, "n_classes": 2, "base_filters": 8,
                      "max_filters": 128, "depth": 4, "dropout": 0.0},
        "discriminator": {"in_channels": 1, "n_classes": 2, "base_filters": 8, "max_filters": 64, "dropout": 0.0},
        "loss": {"dice": "per_sample", "lambda_dice": 1.0, "lambda_ce": 1.0, "dice_weighting": "uniform",
                 "adversarial_start": 0.3, "lambda_adv": 0.1},
        "train": {"patch_size": list(PATCH), "batch_size": 2, "device": "cpu", "foreground_prob": 0.5, "amp": amp},
        "augment": {"p_untouched": 0.25},
    })


def machine() -> dict[str, object]:
    flags = set()
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    a = torch.randn(2048, 2048)
    a @ a
    t0 = time.perf_counter()
    for _ in range(5):
        a @ a
    rate = 5 * 2 * 2048**3 / (time.perf_counter() - t0) / 1e9
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")
    return {"cpu": model, "flags": [f for f in wanted if f in flags], "torch": torch.__version__,
            "threads": torch.get_num_threads(), "matmul_fp32_gflops": round(rate, 1), "cpu_bf16": cpu_bf16()}


def load_cases(config: Config) -> list[tuple[np.ndarray, np.ndarray]]:
    spec = discover(str(DATA), label_name="GT_W", channel_names=("FLAIR",))
    return [(c.image, c.label) for c in (load_case(f, convention=None, prep=config.preprocess)
                                         for f in spec.cases[:5])]


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocator, oneDNN primitives
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


KINDS = {"convolution": ("conv",), "normalisation": ("norm",), "activation": ("prelu", "relu", "elu"),
         "layout copies": ("copy_", "clone", "contiguous", "to_copy"), "softmax": ("softmax",)}


def layer_kinds(run: Callable[[], None]) -> dict[str, float]:
    """Self CPU seconds of one G forward + backward by kind of operation."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    out = dict.fromkeys([*KINDS, "other"], 0.0)
    for event in prof.key_averages():
        name = event.key.lower()
        kind = next((k for k, words in KINDS.items() if any(w in name for w in words)), "other")
        out[kind] += event.self_cpu_time_total / 1e6
    return {k: round(v, 4) for k, v in out.items()}


def phases(config: Config, cases: list, repeats: int) -> dict[str, object]:
    """Each part of a step on its own (wall seconds, median), in the order a step runs them."""
    rng = np.random.default_rng(0)
    augment = Augmenter(config.augment)
    state = build_state(config)
    image, label = cases[0]
    samples = [sample_patch(image, label, PATCH, rng, foreground_prob=0.5) for _ in range(2)]
    out: dict[str, object] = {"amp": state.amp}
    out["sample_s"] = median_seconds(lambda: [sample_patch(image, label, PATCH, rng, foreground_prob=0.5)
                                              for _ in range(2)], repeats)
    out["augment_s"] = median_seconds(lambda: [augment(i, lab, rng) for i, lab in samples], repeats)
    pairs = [augment(i, lab, rng) for i, lab in samples]
    out["to_tensor_s"] = median_seconds(lambda: (torch.from_numpy(np.stack([p[0] for p in pairs])),
                                                 torch.from_numpy(np.stack([p[1] for p in pairs]))), repeats)
    x = torch.from_numpy(np.stack([p[0] for p in pairs]))
    y = torch.from_numpy(np.stack([p[1] for p in pairs]))
    target = one_hot(y, 2)
    G = state.generator

    def forward() -> torch.Tensor:
        with autocast(state.device, state.amp):
            return G(x)

    out["g_forward_s"] = median_seconds(forward, repeats)
    fake = forward()
    out["losses_s"] = median_seconds(lambda: _segmentation_loss(state, target, fake, config, mask=None), repeats)

    def backward() -> None:
        loss, _ = _segmentation_loss(state, target, forward(), config, mask=None)
        loss.backward()

    out["g_backward_s"] = max(median_seconds(backward, repeats) - out["g_forward_s"] - out["losses_s"], 0.0)
    out["g_adam_s"] = median_seconds(state.opt_g.step, repeats)
    out["critic_half_step_s"] = median_seconds(
        lambda: _update_discriminator(state, x, target, fake.detach(), config), repeats)

    def adversarial_term() -> None:
        D = state.discriminator
        D.requires_grad_(False)
        f = forward()
        with autocast(state.device, _critic_amp(state)):  # as train_step runs the critic
            lsgan_generator_loss(D(x, f)).backward()
        D.requires_grad_(True)

    out["g_adversarial_extra_s"] = max(median_seconds(adversarial_term, repeats) - out["g_forward_s"], 0.0)
    out["g_by_kind_s"] = layer_kinds(lambda: backward())
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def generator_gflop(config: Config) -> float:
    state = build_state(config)
    x = torch.randn(2, 1, *PATCH)
    with FlopCounterMode(display=False) as counter:
        state.generator(x).sum().backward()
    return counter.get_total_flops() / 1e9


def loop_rate(config: Config, cases: list, *, overlap: str, steps: int, progress: float,
              producer_threads: int | None = None) -> tuple[float, bool | None]:
    """Steps per second of the training loop (batches from the stream, ``train_step`` on each),
    and with ``overlap="auto"`` whether the stream's trial chose the overlap (timed after it)."""
    state = build_state(config)
    augment = Augmenter(config.augment)

    def loader_for(epoch: int, skip: int):
        if producer_threads is not None and threading.current_thread() is not threading.main_thread():
            torch.set_num_threads(producer_threads)  # OpenMP's thread count is per calling thread
        return patch_loader(config, cases, epoch, sample_patch, augment, skip_batches=skip)

    stream = BatchStream(loader_for, overlap=overlap)

    def batches() -> Iterator:
        epoch = 0
        while True:
            yield from stream.epoch(epoch)
            epoch += 1

    with stream:
        it = batches()
        warm = 0
        while warm < 3 or (stream.trial is not None and stream.trial.choice is None):  # warm-up, the trial
            train_step(state, *next(it), config, progress=progress)
            warm += 1
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(state, *next(it), config, progress=progress)
        rate = steps / (time.perf_counter() - t0)
        return rate, (stream.trial.choice.overlapped if stream.trial is not None else None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed loop steps per variant and phase")
    p.add_argument("--repeats", type=int, default=5, help="repeats of each phase (median)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of the side-by-side loop timing")
    p.add_argument("--fast-amp", choices=("auto", "off"), default="auto",
                   help="the fast path's precision: bf16 where this CPU runs it natively (auto), or fp32")
    p.add_argument("--loop-only", action="store_true", help="skip the per-phase timings and profile")
    args = p.parse_args()
    allocator = tune_cpu_allocator()  # as fit does: freed activations stay in the heap
    info = {**machine(), "allocator_tuned": allocator, "isa_env": {k: os.environ[k] for k in (
        "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ}}
    print(json.dumps({"machine": info}), flush=True)
    fast_amp = "bf16" if info["cpu_bf16"] and args.fast_amp == "auto" else "off"
    cases = load_cases(planned_config("off"))
    gflop = generator_gflop(planned_config("off"))
    for amp in dict.fromkeys(["off", fast_amp]) if not args.loop_only else ():
        print(json.dumps({"phases": phases(planned_config(amp), cases, args.repeats)}), flush=True)
    # "after" is what training does: the plan's precision, and sampling overlapped only where the
    # stream's trial timed it faster (train.overlap_sampling = "auto"); the fixed modes beside it.
    variants = {"before: fp32, serial sampling": ("off", "off"), f"after: {fast_amp}, sampling by trial": (fast_amp, "auto"),
                "fp32, overlapped sampling": ("off", "on"), "fp32, overlapped sampling, 1-thread producer": ("off", "on1")}
    if fast_amp != "off":  # each change alone
        variants.update({f"{fast_amp}, serial sampling": (fast_amp, "off"), f"{fast_amp}, overlapped sampling": (fast_amp, "on")})
    rates: dict[str, dict[str, list[float]]] = {name: {"seg": [], "adv": []} for name in variants}
    for _ in range(args.rounds):  # alternate, so drifting machine load hits both alike
        for name, (amp, overlap) in variants.items():
            for phase, progress in (("seg", 0.0), ("adv", 1.0)):
                rate, chose = loop_rate(planned_config(amp), cases, overlap=overlap.rstrip("1"), steps=args.steps,
                                        progress=progress, producer_threads=1 if overlap.endswith("1") else None)
                rates[name][phase].append(rate)
                if chose is not None:
                    print(json.dumps({"trial": name, "phase": phase, "overlapped": chose}), flush=True)
    for name, (amp, _) in variants.items():
        config = planned_config(amp)
        state = build_state(config)
        x = torch.randn(2, 1, *PATCH)

        def g_step(state=state, x=x, config=config) -> None:
            with autocast(state.device, state.amp):
                out = state.generator(x)
            out.float().sum().backward()

        g_seconds = median_seconds(g_step, args.repeats)
        seg, adv = (statistics.median(rates[name][k]) for k in ("seg", "adv"))
        print(json.dumps({"loop": name, "steps_per_s_before_critic": round(seg, 3),
                          "steps_per_s_with_critic": round(adv, 3), "g_fwd_bwd_s": round(g_seconds, 4),
                          "g_gflops": round(gflop / g_seconds, 1),
                          "g_share_of_matmul": round(gflop / g_seconds / info["matmul_fp32_gflops"], 3),
                          "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}), flush=True)


if __name__ == "__main__":
    main()
