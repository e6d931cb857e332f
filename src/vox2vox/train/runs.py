"""A training run on a dataset: discover, load and split the cases, then :func:`fit` them.

``train_on_dataset`` is what ``vox2vox train``, cross-validation folds and the demo call: the
networks take the data's channel and class counts, the split is saved as ``split.json``, and
checkpoints record what prediction needs (channel names, layout, label convention).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from vox2vox.atomic import atomic_write_text, ensure_folder
from vox2vox.config import Config
from vox2vox.data.augmentation import Augmenter, sample_patch
from vox2vox.data.cases import CaseFiles, DatasetSpec
from vox2vox.data.checking import degenerate_training_data, disagreeing_labellings
from vox2vox.data.labels import IGNORE_INDEX, LabelConvention, get_convention, infer_convention
from vox2vox.data.layouts import discover
from vox2vox.data.loading import load_case
from vox2vox.data.preprocessing import LoadedCase
from vox2vox.data.profile import profile_from_records
from vox2vox.device import tune_cpu_allocator
from vox2vox.errors import Vox2VoxError, Vox2VoxWarning
from vox2vox.infer.inference import InferenceConfig, predict_probabilities, read_model
from vox2vox.model.checkpoint import load_checkpoint, read_record, save_checkpoint
from vox2vox.model.outputs import OutputHead, output_head
from vox2vox.model.record import ModelInfo, RunSummary, SourceModel
from vox2vox.progress import bar_hidden
from vox2vox.report.metrics import dice
from vox2vox.rundir import RunDir
from vox2vox.train import distributed
from vox2vox.train.finetune import FineTune, check_channels, check_classes, initial_weights
from vox2vox.train.patches import Augment, PatchSampler
from vox2vox.train.runlock import RunLock, check_run_folder
from vox2vox.train.selection import choose_prediction_options, record_prediction_options
from vox2vox.train.splits import run_split
from vox2vox.train.tracking import Tracker, check_tracking, open_tracker
from vox2vox.train.training import FitHooks, FitResult, TrainingData, Validator, fit
from vox2vox.train.translation import load_translation


def find_labelled_cases(config: Config) -> tuple[DatasetSpec, list[CaseFiles], LabelConvention | None]:
    """The dataset ``config.data`` names, its labelled cases, and the declared or layout's label
    convention (None: to be inferred from the values present)."""
    spec = discover(config.data.path, layout=config.data.layout, label_name=config.data.label_name,
                    channel_names=config.data.channels)
    labelled = [c for c in spec.cases if c.label is not None]
    if not labelled:
        raise Vox2VoxError(f"{config.data.path}: no case has a label map; training needs labels")
    convention = get_convention(config.data.convention) if config.data.convention else spec.label_convention()
    return spec, labelled, convention


class RunTask(Protocol):
    """What the one run pipeline (:func:`train_on_dataset`) asks of a task once its cases are
    loaded: :class:`SegmentationRun` here, :class:`vox2vox.train.translation.TranslationRun`.
    Everything else (run folder checks, the lock, the split, tracking, fine-tuning, counters) is
    the pipeline's, so a feature reaches both tasks or is refused by one in one place."""

    config: Config  # the networks sized for the data: its channels in, the task's outputs out
    cases: dict[str, LoadedCase]
    augment: Augment
    sample_patch: PatchSampler  # one training patch of a case (the prior draws a fresh scan instead)

    def check_config(self, *, resume: bool) -> None: ...
    def model_info(self, train_ids: list[str], val_ids: list[str], source: SourceModel | None) -> ModelInfo: ...
    def validator(self, val_ids: list[str], example: dict[str, np.ndarray]) -> Validator: ...
    def after_fit(self, run_dir: Path, val_ids: list[str], *, progress: bool) -> None: ...


def train_on_dataset(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    split: tuple[Sequence[str], Sequence[str]] | None = None,
    started: float | None = None,
    plan_toml: str | None = None,
    finetune: FineTune | None = None,
) -> FitResult:
    """Discover, check, load and split ``config.data.path``, then :func:`fit` with the task's
    validation (Dice for segmentation; MAE, PSNR, SSIM for translation, :mod:`vox2vox.train.translation`).

    A ``train.budget`` counts from ``started`` (a ``time.perf_counter()`` reading; default: now),
    so loading the cases is part of it. With ``train.tune_prediction``, flip TTA, the foreground
    threshold and largest-component clean-up are then chosen on the validation cases
    (:mod:`vox2vox.train.selection`).

    Channel count and class count come from the data (they override the config's networks), the
    split is saved as ``split.json``, and checkpoints record the channel names, label convention
    and preprocessing so that ``predict`` needs nothing but the checkpoint. ``split`` gives the
    (train ids, validation ids) explicitly (cross-validation folds) instead of the seeded split (:func:`vox2vox.train.splits.run_split`).
    ``plan_toml`` (the plan ``vox2vox train`` made) is written as ``plan.toml`` beside ``split.json``,
    once the run folder is checked and locked. ``finetune`` (``train --init-from``, :mod:`vox2vox.train.finetune`)
    starts the networks from a trained model's weights once its channels and classes are checked
    against the data; ``train.log`` mirrors the log to TensorBoard or MLflow (:mod:`vox2vox.train.tracking`).
    Both tasks run this one pipeline; what differs is their :class:`RunTask`.
    """
    started = time.perf_counter() if started is None else started
    if not config.data.path:
        raise Vox2VoxError("no training data: pass --data PATH (or set data.path in the config)")
    check_run_folder(run_dir, resume=resume)  # before anything is read or written
    check_tracking(config)
    # Under torchrun every rank loads the cases; rank 0 alone writes and shows progress.
    ctx = distributed.setup(config.train.device)
    progress = progress and ctx.is_main
    tune_cpu_allocator()  # reuse freed activation memory instead of page-faulting it back each step
    load = load_translation if config.task.translate else load_segmentation
    task: RunTask = load(config, finetune=finetune, progress=progress)
    if ctx.is_main and not config.task.translate:
        files = {c.case_id: c for c in task.spec.cases}
        problems = degenerate_training_data(task.cases, files, where=config.data.path)
        if isinstance(task, SegmentationRun):
            problems += disagreeing_labellings(task.cases, task.convention.source_values, where=config.data.path)
        for problem in problems:
            warnings.warn(problem, Vox2VoxWarning, stacklevel=2)
    train_ids, val_ids = run_split(list(task.cases), config, split)
    run_dir = Path(run_dir)
    # One training process per run folder (rank 0 holds the lock for the job).
    lock = RunLock(run_dir).acquire() if ctx.is_main else None
    try:
        return run_task(task, train_ids, val_ids, run_dir, ctx=ctx, resume=resume, progress=progress,
                             started=started, plan_toml=plan_toml, finetune=finetune)
    finally:
        if lock is not None:
            lock.release()


def load_segmentation(config: Config, *, finetune: FineTune | None, progress: bool) -> SegmentationRun:
    """The segment task's cases: labelled, preprocessed, labels as classes (a convention inferred
    when none is given); data a fine-tuning source does not fit is refused before it is loaded."""
    spec, labelled, convention = find_labelled_cases(config)
    reinit = config.train.reinit_output
    if finetune is not None:  # refuse data the source model does not fit before loading it
        check_channels(finetune, spec.channel_names, config.data.path)
        if convention is not None:
            check_classes(finetune, convention, config.data.path, reinit_output=reinit)

    # Load every case once (preprocessed, cached on disk if configured), then split by case id.
    cases = {}
    for case in tqdm(labelled, desc="loading cases", disable=bar_hidden(progress), leave=False, file=sys.stderr):
        cases[case.case_id] = load_case(case, convention=convention, prep=config.preprocess)
    if convention is None:
        convention = apply_inferred_convention(cases, where=config.data.path, announce=progress)
        if finetune is not None:
            check_classes(finetune, convention, config.data.path, reinit_output=reinit)
    return SegmentationRun(config, spec, cases, convention)


@dataclass
class SegmentationRun:
    """The segment task of a run: the networks take the data's channels and one output per class
    (or nested region), validation scores Dice, and prediction options are chosen afterwards."""

    user_config: Config
    spec: DatasetSpec
    cases: dict[str, LoadedCase]
    convention: LabelConvention
    config: Config = field(init=False)
    head: OutputHead = field(init=False)
    augment: Augment = field(init=False)
    sample_patch: PatchSampler = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.head = output_head(self.convention, self.user_config.generator.output)
        self.sample_patch = sample_patch
        n_channels, n_classes = len(self.spec.channel_names), self.head.n_outputs
        self.config = self.user_config.replace(
            generator=dataclasses.replace(self.user_config.generator, in_channels=n_channels, n_classes=n_classes),
            discriminator=dataclasses.replace(self.user_config.discriminator, in_channels=n_channels,
                                              n_classes=n_classes),
        )
        self.augment = Augmenter(self.config.augment)

    def check_config(self, *, resume: bool) -> None:
        weights = self.config.loss.class_weights
        n_outputs = self.head.n_outputs
        if weights is not None and not resume and len(weights) != n_outputs:
            what = "class" if self.config.generator.output == "classes" else "region (generator.output=regions)"
            raise Vox2VoxError(f"loss.class_weights={list(weights)}: give one weight per {what}: {n_outputs} "
                               f"({', '.join(self.head.names)})")

    def model_info(self, train_ids: list[str], val_ids: list[str], source: SourceModel | None) -> ModelInfo:
        profile = profile_from_records([self.cases[i].record for i in train_ids + val_ids], self.spec.channel_names,
                                       n_train=len(train_ids), n_val=len(val_ids))
        return ModelInfo(channels=tuple(self.spec.channel_names), layout=self.spec.layout,
                         convention=self.convention, data=profile, source=source)

    def validator(self, val_ids: list[str], example: dict[str, np.ndarray]) -> Validator:
        return make_validator([self.cases[i] for i in val_ids], self.convention, self.config, self.head,
                              example=example)

    def after_fit(self, run_dir: Path, val_ids: list[str], *, progress: bool) -> None:
        if not (self.config.train.tune_prediction and val_ids):
            return
        best = RunDir(run_dir).best
        choice = choose_prediction_options(read_model(best).generator, [self.cases[i] for i in val_ids],
                                           self.convention, self.config.train.patch_size, head=self.head,
                                           case_ids=val_ids)
        record_prediction_options(best, choice)
        if progress:
            cut = choice.foreground_threshold
            print(f"prediction options from validation: tta {choice.tta}, foreground threshold "
                  f"{'argmax' if cut is None else cut}, largest component {choice.largest_component} "
                  f"(on {len(val_ids)} validation case(s); the rule and evidence: vox2vox info)", file=sys.stderr)


def run_task(task: RunTask, train_ids: list[str], val_ids: list[str], run_dir: Path, *,
                  ctx: distributed.DistContext, resume: bool, progress: bool, started: float,
                  plan_toml: str | None, finetune: FineTune | None) -> FitResult:
    """The part of :func:`train_on_dataset` that writes into ``run_dir`` (under its lock)."""
    check_run_folder(run_dir, resume=resume)  # again, now that no other process can change it
    task.check_config(resume=resume)
    # A tracker that cannot start (unreachable MLflow server) is one error before the run writes a file.
    example: dict[str, np.ndarray] = {}  # one validation slice for the tracker's overlays
    tracker = open_tracker(task.config, run_dir, resume=resume, example=example) if ctx.is_main else None
    try:
        return _train_tracked(task, train_ids, val_ids, run_dir, ctx=ctx, resume=resume, progress=progress,
                              started=started, plan_toml=plan_toml, finetune=finetune, tracker=tracker,
                              example=example)
    finally:
        if tracker is not None:
            tracker.close()


def _train_tracked(task: RunTask, train_ids: list[str], val_ids: list[str], run_dir: Path, *,
                   ctx: distributed.DistContext, resume: bool, progress: bool, started: float,
                   plan_toml: str | None, finetune: FineTune | None, tracker: Tracker | None,
                   example: dict[str, np.ndarray]) -> FitResult:
    """Write the run's files and train (the tracker, when there is one, is open)."""
    if ctx.is_main:
        ensure_folder(run_dir)
        atomic_write_text(RunDir(run_dir).split, json.dumps({"train": train_ids, "val": val_ids}, indent=2) + "\n")
        if plan_toml is not None:
            atomic_write_text(RunDir(run_dir).plan, plan_toml)

    config = task.config
    source = finetune.source(config.train.reinit_output) if finetune is not None else None
    if resume and source is None:  # a fine-tuned run's source, kept across resumes
        source = _recorded_source(RunDir(run_dir).last, translate=config.task.translate)
    model_info = task.model_info(train_ids, val_ids, source)
    validate = task.validator(val_ids, example) if val_ids else None
    init = None
    if finetune is not None:
        if progress:
            print(f"fine-tuning from {finetune.path} (sha256 {finetune.sha256[:16]}...)", file=sys.stderr)
        init = initial_weights(finetune, reinit_output=config.train.reinit_output, announce=progress)
    data = TrainingData([(task.cases[i].image, task.cases[i].label) for i in train_ids], task.sample_patch,
                        task.augment)
    hooks = FitHooks(validate=validate, on_step=distributed.checksum_hook(), on_epoch=tracker, init=init)
    result = fit(config, data, run_dir, hooks=hooks, model_info=model_info, resume=resume, progress=progress,
                 started=started)
    if ctx.is_main:
        record_run_summary(RunDir(run_dir))
        task.after_fit(run_dir, val_ids, progress=progress)
    distributed.barrier()
    return result


def record_run_summary(run: RunDir) -> None:
    """Store the whole run's counters (epochs, steps, seconds, last validation Dice) in ``best``,
    whose own counters are those of its epoch: the model card shows both."""
    if not (run.best.is_file() and run.last.is_file()):
        return
    final = read_record(run.last).counters
    ckpt = load_checkpoint(run.best)
    summary = RunSummary(final.epoch, final.step, final.seconds, final.last_score)
    ckpt.state = ckpt.record(run.best).with_run(summary).to_json()
    save_checkpoint(run.best, ckpt)


def _recorded_source(checkpoint: Path, *, translate: bool) -> SourceModel | None:
    """The fine-tuning source a run's checkpoint records (None when it has none)."""
    if not checkpoint.is_file():
        return None
    info = read_record(checkpoint).info(translate=translate)
    return info.source if info is not None else None


def apply_inferred_convention(cases: dict[str, Any], *, where: Any, announce: bool) -> LabelConvention:
    """No convention given: infer one from the label values present in ``cases`` (loaded with raw
    values), map every label to its classes in place, and return the convention.

    Bounded by :data:`vox2vox.data.labels.MAX_INFERRED_CLASSES`; nothing is sized by the largest value.
    """
    values: set[int] = set()
    for case in cases.values():
        values.update(int(v) for v in np.unique(case.label))
    convention, note = infer_convention(values, where=where)
    for case in cases.values():
        case.label = convention.to_classes(case.label)
    if note and announce:
        tqdm.write(f"note: {note}", file=sys.stderr)
    return convention


def make_validator(val_cases: Sequence[Any], convention: Any, config: Config,
                   head: OutputHead | None = None, *, example: dict[str, np.ndarray] | None = None) -> Validator:
    """Score the generator on whole, un-augmented validation volumes: mean Dice over regions.

    Regions are the label set's scoring regions (:func:`vox2vox.data.labels.scoring_regions_for`, as
    evaluate scores them: BraTS WT/TC/ET, else each label and their union); the score per
    case follows the BraTS rule for empty masks (both empty: Dice 1). ``example``, when given, is
    filled at every validation with the first case's axial slice holding the most foreground:
    ``image`` (first channel), ``truth`` and ``prediction`` (class indices), for the tracker.
    """
    infer = InferenceConfig(mode="auto", window=config.train.patch_size, overlap=0.25)
    head = head or output_head(convention)

    def validate(generator: torch.nn.Module) -> dict[str, float]:
        device = next(generator.parameters()).device
        per_region: dict[str, list[float]] = {}
        for index, case in enumerate(val_cases):
            probs = predict_probabilities([generator], case.image, config=infer, device=device)
            classes = head.to_classes(probs)
            if index == 0 and example is not None:
                k = int(np.argmax((case.label > 0).sum(axis=(0, 1))))  # axial slice with most foreground
                example.update(image=case.image[0, :, :, k], truth=case.label[:, :, k], prediction=classes[:, :, k])
            pred = convention.region_masks(convention.to_source(classes))
            true = convention.region_masks(convention.to_source(case.label))
            scored = case.label != IGNORE_INDEX  # the ignore label counts for neither side
            for name in true:
                per_region.setdefault(name, []).append(dice(pred[name] & scored, true[name] & scored))
        scores = {f"val_dice_{name}": float(np.mean(v)) for name, v in per_region.items()}
        scores["val_dice"] = float(np.mean(list(scores.values()))) if scores else 0.0
        return scores

    return validate
