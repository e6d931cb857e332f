"""The prior: a whole-tumour model trained on domain-randomised scans alone (docs/prior.md).

Training runs the one run pipeline (:func:`vox2vox.train.runs.run_task`) with a task whose
training "cases" are slots: every patch the loop asks for is a fresh scan drawn by
:func:`vox2vox.data.randomised.randomised_scan` from the patch's own seed (run seed, epoch,
index), so nothing is stored and a resumed run sees the same scans. Validation scores a fixed set
of randomised scans; no real case takes part in training or in any choice.

The recipe is a step count, not a wall-clock budget, so ``make prior`` builds the same model on
any machine of the same torch build.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vox2vox.atomic import atomic_write_text, ensure_folder
from vox2vox.config import Config
from vox2vox.data.augmentation import Augmenter
from vox2vox.data.labels import get_convention
from vox2vox.data.randomised import ANY_MRI, RANDOMISED, PriorRanges, randomised_scan
from vox2vox.environment import cpu_model
from vox2vox.errors import Vox2VoxError
from vox2vox.model.checkpoint import (
    Checkpoint,
    ModelInfo,
    SourceModel,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
    software_versions,
)
from vox2vox.model.outputs import output_head
from vox2vox.rundir import RunDir, read_metrics
from vox2vox.train import distributed
from vox2vox.train.runlock import RunLock, check_run_folder
from vox2vox.train.runs import make_validator, run_task
from vox2vox.train.training import FitResult, Validator

#: The label set the prior predicts (whole tumour against the rest).
PRIOR_CONVENTION = {"name": "whole-tumour", "values": {"0": "background", "1": "whole tumour"}}

#: Optimiser steps of the shipped prior (about 70 minutes on a 2-core AVX-512 CPU in bf16).
PRIOR_STEPS = 6000

# Training slots an epoch iterates over (each a fresh scan per patch) and randomised validation scans.
_SLOTS = 50
_VAL_SCANS = 4

#: The recipe's settings beyond the plan's defaults for a CPU: the plan's residual generator at
#: 2 mm with whole-brain patches, per-sample Dice + CE, poly decay, the final weights. The critic
#: stays off: on CPU budgets it bought no measured segmentation quality (benchmarks/RESULTS.md).
RECIPE: tuple[str, ...] = (
    "generator.arch=residual", "generator.base_filters=8", "generator.max_filters=128", "generator.depth=4",
    "generator.dropout=0.0", "generator.in_channels=1", "generator.n_classes=2",
    "discriminator.base_filters=8", "discriminator.max_filters=64", "discriminator.dropout=0.0",
    "discriminator.in_channels=1", "discriminator.n_classes=2",
    "loss.adversarial=false", 'loss.dice="per_sample"', "loss.lambda_dice=1.0", "loss.lambda_ce=1.0",
    "optim.lr_g=0.001", "optim.beta1=0.9", 'optim.schedule="poly"',
    'preprocess.normalize="zscore-nonzero"', "preprocess.target_spacing=[2.0,2.0,2.0]", "preprocess.pad_multiple=16",
    "train.patch_size=[80,96,80]", "train.batch_size=2", "train.patches_per_case=1", 'train.select="last"',
    "train.tune_prediction=false", "train.foreground_prob=0.0",
    "augment.p_untouched=0.5", "augment.p_elastic=0.0", "augment.p_scale=0.0",
)


def prior_config(*, steps: int, seed: int = 0, device: str = "auto", amp: str = "auto") -> Config:
    """The prior's config for ``steps`` optimiser steps (whole epochs of :data:`_SLOTS` scans)."""
    if steps < 1:
        raise Vox2VoxError(f"--steps {steps}: the prior needs at least one step")
    config = Config().with_overrides([*RECIPE, f"train.seed={seed}", f'train.device="{device}"', f'train.amp="{amp}"'])
    epochs = max(1, round(steps / (slots_for(steps, config) // config.train.batch_size)))
    return config.with_overrides([f"train.epochs={epochs}", f"train.val_every={max(1, epochs // 10)}",
                                  f"train.checkpoint_every={max(1, epochs // 10)}"])


def slots_for(steps: int, config: Config) -> int:
    """Training slots an epoch iterates over: :data:`_SLOTS`, fewer for a run shorter than an epoch."""
    return min(_SLOTS, steps * config.train.batch_size)


@dataclass
class ScanCase:
    """A randomised scan held as a case: what the validator and the class weights read."""

    image: np.ndarray
    label: np.ndarray


@dataclass
class PriorRun:
    """The prior's task for the run pipeline (:class:`vox2vox.train.runs.RunTask`)."""

    config: Config
    slots: int = _SLOTS
    ranges: PriorRanges = PriorRanges()
    cases: dict[str, ScanCase] = field(init=False)
    augment: Augmenter = field(init=False)

    def __post_init__(self) -> None:
        if tuple(self.config.train.patch_size) != self.ranges.shape:
            raise Vox2VoxError(f"train.patch_size={list(self.config.train.patch_size)}: the prior's scans are "
                               f"{list(self.ranges.shape)}; keep the recipe's patch")
        seeds = np.random.SeedSequence([self.config.train.seed, 0x5CA7]).spawn(self.slots + _VAL_SCANS)
        # The slots' scans only seed the class weights and count the epoch; patches are drawn afresh.
        self.cases = {f"scan_{i:03d}": ScanCase(*randomised_scan(np.random.default_rng(s), self.ranges))
                      for i, s in enumerate(seeds[:self.slots])}
        self.cases.update({f"val_{i}": ScanCase(*randomised_scan(np.random.default_rng(s), self.ranges))
                           for i, s in enumerate(seeds[self.slots:])})
        self.augment = Augmenter(self.config.augment)

    def sample_patch(self, image: np.ndarray, label: np.ndarray, size: tuple[int, int, int],
                     rng: np.random.Generator, **_: object) -> tuple[np.ndarray, np.ndarray]:
        """A fresh scan from this patch's generator (the slot's own scan is not used)."""
        return randomised_scan(rng, self.ranges)

    def check_config(self, *, resume: bool) -> None:
        pass

    def model_info(self, train_ids: list[str], val_ids: list[str], source: SourceModel | None) -> ModelInfo:
        # No data profile: the scans' contrast and resolution are random, so a real scan's
        # intensities or spacing say nothing about whether the prior fits it.
        return ModelInfo(channels=(ANY_MRI,), layout=RANDOMISED, convention=get_convention(PRIOR_CONVENTION),
                         source=source)

    def validator(self, val_ids: list[str], example: dict[str, np.ndarray]) -> Validator:
        convention = get_convention(PRIOR_CONVENTION)
        return make_validator([self.cases[i] for i in val_ids], convention, self.config,
                              output_head(convention), example=example)

    def after_fit(self, run_dir: Path, val_ids: list[str], *, progress: bool) -> None:
        pass


def train_prior(run_dir: str | Path, *, steps: int, seed: int = 0, device: str = "auto", amp: str = "auto",
                progress: bool = True, resume: bool = False) -> FitResult:
    """Train the prior into ``run_dir`` (a run folder like any other: config, log, checkpoints)."""
    started = time.perf_counter()
    config = prior_config(steps=steps, seed=seed, device=device, amp=amp)
    check_run_folder(run_dir, resume=resume)
    ctx = distributed.setup(config.train.device)
    task = PriorRun(config, slots=slots_for(steps, config))
    train_ids = [i for i in task.cases if i.startswith("scan_")]
    val_ids = [i for i in task.cases if i.startswith("val_")]
    run_dir = Path(run_dir)
    lock = RunLock(run_dir).acquire() if ctx.is_main else None
    try:
        return run_task(task, train_ids, val_ids, run_dir, ctx=ctx, resume=resume, progress=progress,
                        started=started, plan_toml=None, finetune=None)
    finally:
        if lock is not None:
            lock.release()



#: The shipped prior's name (``builtin:brain-tumour``).
PRIOR_NAME = "brain-tumour"

_LIMITS = (
    "skull-stripped brain MRI only (as BraTS distributes it): the training scans have no skull, scalp or neck",
    "whole tumour only: tumour core and enhancing tumour are not predicted",
    "trained on synthetic scans alone; the zero-shot scores below are the only evidence of how it "
    "does on real ones: check its output, or fine-tune it on a few labelled cases (train --init-from)",
    "trained with the Dice + cross-entropy loss alone: the adversarial term bought no measured "
    "segmentation quality at CPU budgets (benchmarks/RESULTS.md)",
)


def ship_prior(run_dir: str | Path, out: str | Path, *, command: str) -> Path:
    """Write the prior of ``run_dir`` as a shippable pair: ``<out>/brain-tumour.safetensors``
    (generator weights in float16, which halves the file with no measurable change in the
    masks, and the checkpoint's metadata) and ``brain-tumour.json``, its card with the sha256.
    Zero-shot scores are added to the card by ``benchmarks/prior_zero_shot.py --card``."""
    run = RunDir(run_dir)
    ckpt = load_checkpoint(run.best)
    if ckpt.state.get("channels") != [ANY_MRI]:
        raise Vox2VoxError(f"{run.best}: not a prior run (its channels are {ckpt.state.get('channels')})")
    weights = {name: t.to(torch.float16) for name, t in ckpt.generator.items()}
    state = {k: v for k, v in ckpt.state.items() if k != "versions"}
    out = ensure_folder(out)
    target = Path(out) / f"{PRIOR_NAME}.safetensors"
    save_checkpoint(target, Checkpoint(config=ckpt.config, generator=weights, state=state))
    config = Config.from_dict(ckpt.config, source=str(run.best), ignore_unknown=True)
    summary = read_metrics(run.metrics)
    card = {
        "summary": "Whole tumour (oedema, enhancing and necrotic parts together) in one skull-stripped brain MRI "
                   "of any contrast, trained only on domain-randomised synthetic scans (no real scan, no labels "
                   "from people)",
        "sha256": file_sha256(target),
        "input": {"channels": 1, "contrast": "any single MRI contrast (FLAIR, T2, T1, T1ce, ...)",
                  "spacing_mm": list(config.preprocess.target_spacing or ()),
                  "normalize": config.preprocess.normalize},
        "output": PRIOR_CONVENTION["values"],
        "made_by": {"command": command, "steps": ckpt.state.get("step"), "epochs": ckpt.state.get("epoch"),
                    "seed": config.train.seed, "amp": config.train.amp,
                    "train_seconds": round(sum(float(r.get("seconds", 0.0)) for r in summary), 1),
                    "versions": software_versions(), "cpu": cpu_model(),
                    "date": time.strftime("%Y-%m-%d")},
        "network": {"arch": config.generator.arch, "widths": [config.generator.base_filters,
                                                               config.generator.max_filters],
                    "depth": config.generator.depth,
                    "parameters": int(sum(t.numel() for t in weights.values())), "weights": "float16"},
        "generator": PriorRanges().to_json(),
        "validation_on_randomised_scans": {k: v for k, v in (summary[-1] if summary else {}).items()
                                           if k.startswith("val_dice")},
        "zero_shot": {},
        "limits": list(_LIMITS),
    }
    atomic_write_text(Path(out) / f"{PRIOR_NAME}.json", json.dumps(card, indent=2) + "\n")
    return target
