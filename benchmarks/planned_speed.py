"""Where a planned CPU training step spends its time: the sample (patch + augmentation) against the
network update, for the small residual networks `vox2vox plan` picks on a CPU.

Prints one JSON line per configuration: CPU seconds per batch (``time.process_time``, robust to
other processes sharing the cores, unlike wall time) of

- ``data_s``: drawing ``batch`` patches with foreground oversampling and the planned augmentation
  (flips, intensity, rotation, scaling, elastic deformation) from a BraTS-size volume;
- ``step_seg_s``: a train step before the critic starts (Dice + cross-entropy only);
- ``step_adv_s``: a train step with the critic (D half-step, then G with the LSGAN term);
- ``data_reference_s``: the same sampling with the elastic field computed as before 2026-12-01
  (``scipy.ndimage.zoom`` in 3D to 32^3, then trilinear to the patch), for the before/after record.

Medians over ``--batches`` after two warm-up batches; one thread (``--threads``) so that the
numbers do not depend on how busy the other core is.

    python benchmarks/planned_speed.py --patch 48 64 --batches 12
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from vox2vox.config import Config
from vox2vox.data import augmentation
from vox2vox.data.augmentation import Augmenter, sample_patch
from vox2vox.train.state import build_state
from vox2vox.train.training import train_step


def reference_elastic_field(shape: tuple[int, ...], *, sigma: float, points: int,
                            rng: np.random.Generator) -> np.ndarray:
    """The elastic field as computed before: 3D cubic zoom to at most 32^3, trilinear to full size."""
    coarse = rng.normal(0.0, sigma, size=(3, points, points, points))
    mid = tuple(min(32, n) for n in shape)
    smooth = np.stack([ndimage.zoom(c, [m / points for m in mid], order=3, mode="nearest", grid_mode=False)
                       for c in coarse])
    return F.interpolate(torch.from_numpy(smooth[None].astype(np.float32)), size=tuple(shape), mode="trilinear",
                         align_corners=True)[0].numpy()


def planned_config(patch: int, width: int, batch: int) -> Config:
    """The networks and objective a 30-minute CPU plan picks (train/planner.py)."""
    return Config.from_dict({
        "generator": {"arch": "residual", "in_channels": 1, "n_classes": 2, "base_filters": width,
                      "max_filters": 16 * width, "depth": 3, "dropout": 0.0},
        "discriminator": {"in_channels": 1, "n_classes": 2, "base_filters": 8, "max_filters": 64, "dropout": 0.0},
        "loss": {"dice": "per_sample", "lambda_dice": 1.0, "lambda_ce": 1.0, "dice_weighting": "uniform",
                 "adversarial_start": 0.3, "lambda_adv": 0.1},
        "train": {"patch_size": [patch] * 3, "batch_size": batch, "device": "cpu", "foreground_prob": 0.5},
        "augment": {"p_untouched": 0.25},
    })


def cpu_seconds(fn, batches: int) -> float:
    times = []
    for i in range(batches + 2):
        c0 = time.process_time()
        fn()
        if i >= 2:
            times.append(time.process_time() - c0)
    return statistics.median(times)


def measure(patch: int, width: int, batch: int, batches: int) -> dict[str, float]:
    config = planned_config(patch, width, batch)
    rng = np.random.default_rng(0)
    # A BraTS-size volume at 1 mm with a few per cent foreground.
    image = rng.normal(size=(1, 140, 170, 140)).astype(np.float32)
    label = (rng.random((140, 170, 140)) > 0.97).astype(np.int64)
    augment = Augmenter(config.augment)

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [augment(*sample_patch(image, label, config.train.patch_size, rng, foreground_prob=0.5), rng)
                 for _ in range(batch)]
        return (torch.from_numpy(np.stack([p[0] for p in pairs]).astype(np.float32)),
                torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64)))

    state = build_state(config)
    x, y = draw()
    out = {"patch": patch, "width": width, "batch": batch, "threads": torch.get_num_threads()}
    out["data_s"] = cpu_seconds(draw, batches)
    with mock.patch.object(augmentation, "elastic_field", reference_elastic_field):
        out["data_reference_s"] = cpu_seconds(draw, batches)
    out["step_seg_s"] = cpu_seconds(lambda: train_step(state, x, y, config, progress=0.0), batches)
    out["step_adv_s"] = cpu_seconds(lambda: train_step(state, x, y, config, progress=1.0), batches)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patch", type=int, nargs="+", default=[48, 64])
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for patch in args.patch:
        print(json.dumps(measure(patch, args.width, args.batch, args.batches)), flush=True)


if __name__ == "__main__":
    main()
