"""A translation run (``task.kind = "translate"``): discover, load and split the cases, then :func:`fit`.

The counterpart of :func:`vox2vox.train.runs.train_on_dataset` (which hands translate configs to
:func:`train_translation`): labels are not needed, the channels ``task.source`` and
``task.target`` of every case are (:mod:`vox2vox.data.translation`). The generator takes the
source channels and outputs the targets through ``task.head``; the discriminator judges
(source, target) pairs; validation scores the synthesised targets of the validation cases on the
preprocessed grid inside their foreground: MAE, PSNR and, with ``task.select = "ssim"``, SSIM.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vox2vox.atomic import atomic_write_text, ensure_folder
from vox2vox.config import Config
from vox2vox.data.augmentation import sample_patch
from vox2vox.data.layouts import discover
from vox2vox.data.preprocessing import LoadedCase
from vox2vox.data.translation import TranslationAugmenter, load_translation_case, resolve_channels
from vox2vox.device import tune_cpu_allocator
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.inference import InferenceConfig, predict_probabilities
from vox2vox.model.checkpoint import ModelInfo
from vox2vox.progress import bar_hidden
from vox2vox.report.image_metrics import translation_scores
from vox2vox.rundir import RunDir
from vox2vox.train import distributed
from vox2vox.train.runlock import RunLock, check_run_folder
from vox2vox.train.splits import run_split
from vox2vox.train.training import FitResult, Validator, fit


def translation_config(config: Config, source: Sequence[str], target: Sequence[str]) -> Config:
    """``config`` with the networks sized and headed for ``source`` -> ``target`` (and the names resolved)."""
    n_s, n_t = len(source), len(target)
    return config.replace(
        generator=dataclasses.replace(config.generator, in_channels=n_s, n_classes=n_t, output=config.task.head),
        discriminator=dataclasses.replace(config.discriminator, in_channels=n_s, n_classes=n_t),
        task=dataclasses.replace(config.task, source=tuple(source), target=tuple(target)),
    )


def train_translation(config: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                      split: tuple[Sequence[str], Sequence[str]] | None = None,
                      started: float | None = None, plan_toml: str | None = None) -> FitResult:
    """Train a translation model on ``config.data.path`` into ``run_dir`` (arguments as ``train_on_dataset``)."""
    started = time.perf_counter() if started is None else started
    if not config.data.path:
        raise Vox2VoxError("no training data: pass --data PATH (or set data.path in the config)")
    check_run_folder(run_dir, resume=resume)
    ctx = distributed.setup(config.train.device)
    progress = progress and ctx.is_main
    tune_cpu_allocator()
    spec = discover(config.data.path, layout=config.data.layout, label_name=config.data.label_name,
                    channel_names=config.data.channels)
    source, target = resolve_channels(spec, config.task.source, config.task.target or (), where=config.data.path)
    config = translation_config(config, source, target)
    cases: dict[str, LoadedCase] = {}
    for case in tqdm(spec.cases, desc="loading cases", disable=bar_hidden(progress), leave=False, file=sys.stderr):
        cases[case.case_id] = load_translation_case(case, source, target, prep=config.preprocess,
                                                    head=config.task.head)
    train_ids, val_ids = run_split(list(cases), config, split)
    run_dir = Path(run_dir)
    lock = RunLock(run_dir).acquire() if ctx.is_main else None
    try:
        check_run_folder(run_dir, resume=resume)  # again, now that no other process can change it
        if ctx.is_main:
            ensure_folder(run_dir)
            atomic_write_text(RunDir(run_dir).split, json.dumps({"train": train_ids, "val": val_ids}, indent=2) + "\n")
            if plan_toml is not None:
                atomic_write_text(RunDir(run_dir).plan, plan_toml)
        info = ModelInfo(channels=tuple(source), layout=spec.layout, convention=None)
        validate = make_translation_validator([cases[i] for i in val_ids], config) if val_ids else None
        return fit(config, [(cases[i].image, cases[i].label) for i in train_ids], run_dir, validate=validate,
                   sample_patch=sample_patch, augment=TranslationAugmenter(config.augment, len(source)),
                   model_info=info, resume=resume, progress=progress, on_step=distributed.checksum_hook(),
                   started=started)
    finally:
        if lock is not None:
            lock.release()


def make_translation_validator(val_cases: Sequence[LoadedCase], config: Config) -> Validator:
    """Score the generator's synthesis of whole, un-augmented validation volumes inside their
    foreground, in the normalised space it learns (no re-normalisation): mean MAE and PSNR (and
    SSIM with ``task.select = "ssim"``) over cases; ``val_score`` is -MAE or SSIM (higher is better)."""
    infer = InferenceConfig(mode="auto", window=config.train.patch_size, overlap=0.25)
    n_source = config.generator.in_channels
    with_ssim = config.task.select == "ssim"

    def validate(generator: torch.nn.Module) -> dict[str, float]:
        device = next(generator.parameters()).device
        rows = []
        for case in val_cases:
            fake = predict_probabilities([generator], case.image[:n_source], config=infer, device=device)
            mask = case.label.astype(bool)
            for c in range(fake.shape[0]):
                rows.append(translation_scores(fake[c], case.image[n_source + c], mask, normalise=False,
                                               with_ssim=with_ssim))
        scores = {f"val_{k}": float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "voxels"}
        scores["val_score"] = scores["val_ssim"] if with_ssim else -scores["val_mae"]
        return scores

    return validate
