"""The embedded demo: phantom data -> train -> predict -> evaluate -> figures, on any laptop.

It uses the same library calls a user's run does (BraTS-layout folders on disk, ``train_on_dataset``,
``predict_dataset``, ``evaluate_folder``), only with phantoms and a reduced network, so a passing
demo exercises the whole pipeline.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vox2vox.atomic import atomic_write_text
from vox2vox.config import Config
from vox2vox.data.io import read_volume
from vox2vox.data.layouts import discover
from vox2vox.data.synthetic import write_brats_folder
from vox2vox.device import resolve_device
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.inference import predict_dataset, read_model
from vox2vox.infer.options import PredictionOptions
from vox2vox.report.evaluation import evaluate_folder
from vox2vox.report.plots import save_overlay, save_training_curves
from vox2vox.report.report import write_report
from vox2vox.rundir import RunDir, read_metrics
from vox2vox.train.runs import train_on_dataset

DemoSize = Literal["small", "tiny"]


@dataclass(frozen=True)
class DemoPlan:
    """Data and training sizes of one demo variant."""

    n_train: int
    n_test: int
    shape: tuple[int, int, int]
    overrides: tuple[str, ...]


PLANS: dict[str, DemoPlan] = {
    # The README's demo: about a minute on an idle 2-core CPU, whole-tumour Dice >= 0.9 on held-out phantoms.
    "small": DemoPlan(
        n_train=12,
        n_test=4,
        shape=(64, 64, 64),
        overrides=(
            "generator.base_filters=12",
            "generator.bottleneck_blocks=2",
            "generator.dropout=0.0",
            "discriminator.base_filters=12",
            "discriminator.dropout=0.0",
            "train.patch_size=[48,48,48]",
            "train.batch_size=2",
            "train.patches_per_case=2",
            "train.epochs=30",
            "train.val_every=5",
            "train.checkpoint_every=5",
            "optim.lr_g=0.001",
            "optim.lr_d=0.0002",
            "augment.p_untouched=0.5",
            "augment.p_elastic=0.0",
            "augment.p_scale=0.0",
            "data.val_cases=2",
        ),
    ),
    # A smoke run for tests: seconds, no quality target.
    "tiny": DemoPlan(
        n_train=3,
        n_test=1,
        shape=(32, 32, 32),
        overrides=(
            "generator.base_filters=4",
            "generator.bottleneck_blocks=1",
            "generator.depth=3",
            "discriminator.base_filters=4",
            "train.patch_size=[24,24,24]",
            "train.batch_size=1",
            "train.epochs=2",
            "data.val_cases=1",
        ),
    ),
}


def run_demo(out: Path, *, size: DemoSize = "small", seed: int = 0, device: str = "auto",
             progress: bool = True) -> dict:
    """Run the demo into ``out`` and return its summary (also written to ``out/summary.json``)."""
    plan = PLANS[size]
    out = Path(out)
    run = RunDir(out / "run")
    if run.checkpoints.exists():
        raise Vox2VoxError(f"{out}: already holds a demo run; choose another --out or delete it")
    t0 = time.perf_counter()
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)

    # 1. Phantom data in the BraTS folder layout: training cases and held-out test cases.
    say(f"[1/5] writing {plan.n_train} training and {plan.n_test} test phantoms to {out / 'data'}")
    write_brats_folder(out / "data" / "train", n_cases=plan.n_train, seed=seed, shape=plan.shape, prefix="Train")
    write_brats_folder(out / "data" / "test", n_cases=plan.n_test, seed=seed + 10_000, shape=plan.shape, prefix="Test")

    # 2. Train a reduced Vox2Vox (validation on two training-folder cases picks the best epoch).
    say("[2/5] training Vox2Vox (G: 3D U-Net, D: conditional PatchGAN, LSGAN + 5 x generalized Dice)")
    config = Config().with_overrides(
        [*plan.overrides, f"train.seed={seed}", f'train.device="{device}"', f'data.path="{out / "data" / "train"}"']
    )
    result = train_on_dataset(config, out / "run", progress=progress)

    # 3. Predict the held-out phantoms with the best checkpoint.
    say("[3/5] predicting the held-out phantoms")
    model = read_model(out / "run", device="cpu" if device == "auto" else device)

    dev = resolve_device(device)
    model.generator.to(dev)
    predict_dataset([model], out / "data" / "test", out / "predictions",
                    PredictionOptions(mode="whole", progress=progress), device=dev)

    # 4. Score them as BraTS does (WT, TC, ET).
    say("[4/5] evaluating (Dice and HD95 per BraTS region)")
    evaluation = evaluate_folder(out / "predictions", out / "data" / "test", regions="brats",
                                 out_csv=out / "evaluation.csv")

    # 5. Figures: training curves and a tri-planar overlay per test case.
    say("[5/5] drawing figures and the HTML report")

    history = read_metrics(run.metrics)
    save_training_curves(out / "figures" / "training_curves.png", history)
    spec = discover(out / "data" / "test")
    names = spec.label_convention().value_names()  # the BraTS layout's convention
    for case in spec.cases:
        flair, geometry = read_volume(case.channels["flair"])
        truth, _ = read_volume(case.label)
        pred, _ = read_volume(out / "predictions" / f"{case.case_id}.nii.gz")
        save_overlay(out / "figures" / f"{case.case_id}.png", flair, truth=truth, pred=pred,
                     spacing=geometry.spacing, title=f"{case.case_id}: FLAIR, truth vs prediction",
                     label_names=names)

    report = write_report(out)
    summary = {
        "seconds": round(time.perf_counter() - t0, 1),
        "epochs": result.epochs,
        "best_val_dice": result.best_score,
        "best_epoch": result.best_epoch,
        "test_dice_mean": {region: evaluation.summary[region]["dice"]["mean"] for region in evaluation.summary},
        "outputs": {
            "run": str(out / "run"),
            "predictions": str(out / "predictions"),
            "evaluation": str(out / "evaluation.csv"),
            "figures": str(out / "figures"),
            "report": str(report),
        },
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if progress:
        print(evaluation.format_summary())
        dice = ", ".join(f"{r} {v:.3f}" for r, v in summary["test_dice_mean"].items())
        print(f"\nvox2vox demo finished in {summary['seconds']:.0f} s. Held-out mean Dice: {dice}")
        print(f"  model:        {run.best}")
        print(f"  predictions:  {out / 'predictions'}")
        print(f"  scores:       {out / 'evaluation.csv'}")
        print(f"  figures:      {out / 'figures'}")
        print(f"  report:       {report}  (open in a browser)")
    return summary
