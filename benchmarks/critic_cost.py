"""What the critic costs per training step: Dice-only, today's critic, and the cheaper critics.

The step is the one `vox2vox plan` picks for the shared BraTS FLAIR cases on a 2-core CPU with a
30-minute budget (docs/method.md, "Self-configuration"): residual generator 8-128 of depth 4, critic
of width 8, 80x96x80 patches, batch 2, per-sample Dice + cross-entropy, 0.1 x LSGAN; every step
timed here is after the critic has started (the adversarial term's cost, not its delay). Inputs are
random: a step's cost does not depend on the voxel values.

Time is this process's CPU time (``time.process_time``) on one thread: other processes on the
machine slow the wall clock of a step, not the CPU time it needs (shared caches and memory
bandwidth still move it a little, so rounds are interleaved and the median is taken). Each variant
is timed over ``--steps`` consecutive steps (a multiple of every ``update_every``, so the critic's
skipped half-steps are counted in proportion), ``--rounds`` times, variants interleaved.

``--task translate`` times the translation step of ``benchmarks/missing_contrast.py`` instead
(residual generator 8-64 of depth 3, 48^3 patches, batch 2, 100 x L1 + LSGAN from the first step):
L1 alone, the critic, and the critic judging the pair pooled by 2.

Prints one JSON line for the machine, then one per variant: CPU seconds per step (median over
rounds, and each round's) and the cost relative to the first variant (no critic).

    OMP_NUM_THREADS=1 python benchmarks/critic_cost.py                       # the planned step
    OMP_NUM_THREADS=1 python benchmarks/critic_cost.py --task translate      # missing_contrast.py's step
    python benchmarks/critic_cost.py --tiny --steps 4 --rounds 1             # seconds: the suite's check
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from vox2vox.config import Config
from vox2vox.environment import read_environment
from vox2vox.train.state import build_state
from vox2vox.train.training import train_step

PATCH = (80, 96, 80)

#: name -> overrides on the planned config (``loss.adversarial=false``: the Dice-only twin).
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "dice-only": {"loss": {"adversarial": False}},
    "critic (today)": {},
    "input_scale=2": {"discriminator": {"input_scale": 2}},
    "update_every=2": {"discriminator": {"update_every": 2}},
    "update_every=4": {"discriminator": {"update_every": 4}},
    "input_scale=2, update_every=2": {"discriminator": {"input_scale": 2, "update_every": 2}},
    "critic + feature matching": {"loss": {"lambda_fm": 1.0}},
    "input_scale=2 + feature matching": {"discriminator": {"input_scale": 2}, "loss": {"lambda_fm": 1.0}},
}

#: The translation step's variants (the first is the baseline: no critic).
TRANSLATION_VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "l1 alone": {"loss": {"adversarial": False}},
    "critic (today)": {},
    "input_scale=2": {"discriminator": {"input_scale": 2}},
}


def translation_config(overrides: dict[str, dict[str, Any]], *, tiny: bool) -> Config:
    """missing_contrast.py's networks (its NETWORK settings, read from there so the two cannot drift)."""
    from missing_contrast import NETWORK

    settings = [*NETWORK, 'task.kind="translate"', 'task.source=["t1"]', 'task.target=["flair"]',
                'task.head="linear"', 'generator.output="linear"', "generator.in_channels=1", "generator.n_classes=1",
                "discriminator.in_channels=1", "discriminator.n_classes=1", "loss.adversarial=true",
                "loss.lambda_adv=1.0", "loss.adversarial_start=0.0", 'train.amp="off"']
    if tiny:
        settings += ["generator.base_filters=4", "generator.max_filters=32", "discriminator.base_filters=4",
                     "discriminator.max_filters=32", "discriminator.n_strided=2", "train.patch_size=[32,32,32]"]
    settings += [f"{section}.{key}={json.dumps(value)}" for section, values in overrides.items()
                 for key, value in values.items()]
    return Config().with_overrides(settings)


def planned_config(overrides: dict[str, dict[str, Any]], *, tiny: bool) -> Config:
    patch = [32, 32, 32] if tiny else list(PATCH)
    width = 4 if tiny else 8
    data: dict[str, dict[str, Any]] = {
        "generator": {"arch": "residual", "in_channels": 1, "n_classes": 2, "base_filters": width,
                      "max_filters": 16 * width, "depth": 3 if tiny else 4, "dropout": 0.0},
        "discriminator": {"in_channels": 1, "n_classes": 2, "base_filters": width, "max_filters": 8 * width,
                          "dropout": 0.0, "n_strided": 2 if tiny else 3},
        "loss": {"dice": "per_sample", "lambda_dice": 1.0, "lambda_ce": 1.0, "dice_weighting": "uniform",
                 "adversarial_start": 0.3, "lambda_adv": 0.1},
        "train": {"patch_size": patch, "batch_size": 2, "device": "cpu", "amp": "off"},
    }
    for section, values in overrides.items():
        data[section] = {**data[section], **values}
    return Config.from_dict(data, source="critic_cost")


def time_variant(state: Any, config: Config, batch: tuple[torch.Tensor, torch.Tensor], steps: int) -> float:
    t0 = time.process_time()
    for _ in range(steps):
        train_step(state, *batch, config, progress=1.0)
    return (time.process_time() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="steps per timing (a multiple of 4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="32^3 patches, width 4: checks the script runs")
    parser.add_argument("--task", choices=["segment", "translate"], default="segment")
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = read_environment()
    print(json.dumps({"machine": {"cpu": env.cpu_model, "flags": env.cpu_flags, "torch": env.torch,
                                  "threads": torch.get_num_threads(), "clock": "process CPU time"}}), flush=True)
    g = torch.Generator().manual_seed(0)
    if args.task == "translate":
        configs = {name: translation_config(o, tiny=args.tiny) for name, o in TRANSLATION_VARIANTS.items()}
    else:
        configs = {name: planned_config(o, tiny=args.tiny) for name, o in VARIANTS.items()}
    patch = next(iter(configs.values())).train.patch_size
    # A translation's image holds the source then the target channel; its label is unused.
    shape = (2, 2 if args.task == "translate" else 1, *patch)
    batch = (torch.randn(shape, generator=g), torch.randint(0, 2, (shape[0], *shape[2:]), generator=g))
    states = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        states[name] = build_state(config, device=torch.device("cpu"))
        train_step(states[name], *batch, config, progress=1.0)  # warm-up: allocator, kernels
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, config in configs.items():
            seconds[name].append(time_variant(states[name], config, batch, args.steps))
    base = statistics.median(next(iter(seconds.values())))
    today = statistics.median(seconds["critic (today)"])
    for name, values in seconds.items():
        median = statistics.median(values)
        print(json.dumps({"variant": name, "cpu_seconds_per_step": round(median, 4),
                          "rounds": [round(v, 4) for v in values],
                          "vs_no_critic": f"{median / base - 1:+.1%}",
                          "vs_todays_critic": f"{median / today - 1:+.1%}"}), flush=True)


if __name__ == "__main__":
    main()
