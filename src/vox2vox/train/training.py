"""Vox2Vox training: ``train_step`` (a D half-step, then a G half-step) and ``fit`` (the loop).

The loop follows the paper (docs/method.md, "Training"): every epoch draws one random, augmented patch
per training case; both networks use Adam; the generator is scored on the whole, un-augmented
validation volumes by Dice, and the best checkpoint is chosen on that score (not on an augmented
validation loss, a defect of the predecessors).

Reproducibility: every random draw of epoch ``e`` comes from seeds derived from ``(seed, e)``
(patch positions and augmentation per sample index, dropout per epoch), so a run resumed from the
checkpoint written after epoch ``e`` continues exactly as the uninterrupted run would have.

Data parallelism: under ``torchrun`` (``WORLD_SIZE`` > 1) the same loop runs on every rank; the
plumbing (process group, per-rank batches, DDP wrapping, rank-0-only writes, global reductions)
lives in :mod:`vox2vox.train.distributed`, whose module docstring says what equals a single-process run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from vox2vox.atomic import atomic_write_text, ensure_folder
from vox2vox.config import Config
from vox2vox.device import AmpDtype, autocast, tune_cpu_allocator, unwrap
from vox2vox.errors import Vox2VoxError
from vox2vox.model.checkpoint import (
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    software_versions,
    training_checkpoint,
)
from vox2vox.model.losses import (
    binary_cross_entropy_from_probs,
    cross_entropy_from_probs,
    discriminator_accuracy,
    feature_matching_loss,
    fixed_class_weights,
    labelled_mask,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    one_hot,
    per_sample_dice_loss,
)
from vox2vox.model.outputs import OutputHead, head_for
from vox2vox.model.record import ModelInfo
from vox2vox.model.translation import selection_key, split_source_target, translation_loss
from vox2vox.progress import bar_hidden
from vox2vox.rundir import RunDir, read_metrics, write_metrics
from vox2vox.train import distributed
from vox2vox.train.control import Horizon, InterruptFlag, RunClock
from vox2vox.train.patches import (
    Augment,
    BatchStream,
    PatchSampler,
    TrainCase,
    batches_per_epoch,
    derive_seed,
    patch_loader,
)
from vox2vox.train.schedule import lr_factor
from vox2vox.train.state import TrainState, build_state


# ---- one step -----------------------------------------------------------------------------------
def train_step(state: TrainState, image: torch.Tensor, label: torch.Tensor, config: Config, *,
               progress: float = 1.0) -> dict[str, float]:
    """One Vox2Vox update on a batch; returns the step's losses and D accuracy. ``progress`` (the
    completed fraction of training) decides whether the adversarial term has started
    (``loss.adversarial_start``); before it, D is not run at all. ``image`` is ``(B, C, D, H, W)`` float
    (a translation's: source then target channels), ``label`` ``(B, D, H, W)`` class indices, both on the
    state's device. The fake is computed once; D learns from the real pair and the detached fake pair
    (:func:`_update_discriminator`); then G learns with D frozen (:func:`_update_generator`)."""
    if config.task.translate:  # the image holds source then target channels (vox2vox.model.translation)
        (image, target), mask = split_source_target(image, config.generator.in_channels), None
    else:
        target = state.head.targets(label) if state.head is not None else one_hot(label, config.generator.n_classes)
        mask = labelled_mask(label)  # None unless the batch holds ignore-label voxels
    state.generator.train()
    state.discriminator.train()
    with autocast(state.device, state.amp):
        fake = state.generator(image)  # the fake segmentation, once per step
    out: dict[str, float] = {}
    adversarial = config.loss.adversarial and progress >= config.loss.adversarial_start
    real_features: list[torch.Tensor] | None = None
    # discriminator.update_every = k: the critic's half-step (its two forwards and its backward) on
    # every k-th step only; the generator's adversarial term runs every step.
    if adversarial and state.step % config.discriminator.update_every == 0:
        d_out, real_features = _update_discriminator(state, image, target, fake, config, mask=mask)
        out.update(d_out)
    out.update(_update_generator(state, image, target, fake, config, adversarial=adversarial, mask=mask,
                                 real_features=real_features))
    # Logged values are means over the global batch (each rank saw an equal share).
    return distributed.mean_over_ranks(out)


def _update_discriminator(
    state: TrainState, image: torch.Tensor, target: torch.Tensor, fake: torch.Tensor, config: Config, *,
    mask: torch.Tensor | None = None,
) -> tuple[dict[str, float], list[torch.Tensor] | None]:
    """D's half-step on (image, truth) and (image, detached fake), unless the accuracy gate holds it.
    Ignore-label voxels (``mask`` 0) show D the fake's own values there, so it cannot learn from them.
    Returns the losses and, when ``loss.lambda_fm`` asks for them, the real pair's hidden
    activations (detached; pix2pixHD reuses the critic's real pass the same way)."""
    D, gate = state.discriminator, config.train.d_accuracy_gate
    real = target if mask is None else target * mask + fake.detach().float() * (1 - mask)
    real_features = None
    with autocast(state.device, _critic_amp(state)):
        if config.loss.lambda_fm > 0:
            real_scores, hidden = D(image, real, features=True)
            real_features = [h.detach() for h in hidden]
        else:
            real_scores = D(image, real)
        fake_scores = D(image, fake.detach())
    loss_d = lsgan_discriminator_loss(real_scores, fake_scores)
    accuracy = distributed.mean_over_ranks(
        {"d_acc": discriminator_accuracy(real_scores.detach(), fake_scores.detach()).item()})["d_acc"]
    # The accuracy gate (a 3D-GAN balancing trick) is decided on the all-reduced accuracy so
    # every rank takes the same branch under DDP.
    update_d = gate is None or accuracy <= gate
    if update_d:
        state.opt_d.zero_grad(set_to_none=True)
        state.scaler.scale(loss_d).backward()
        state.scaler.step(state.opt_d)
    return {"loss_d": loss_d.item(), "d_acc": accuracy, "d_updated": float(update_d)}, real_features


def _update_generator(
    state: TrainState, image: torch.Tensor, target: torch.Tensor, fake: torch.Tensor, config: Config, *,
    adversarial: bool, mask: torch.Tensor | None = None, real_features: list[torch.Tensor] | None = None,
) -> dict[str, float]:
    """G's half-step with D frozen: the task's term (Dice + CE, or L1 + SSIM) + lambda_adv * adversarial
    term (+ lambda_fm * feature matching against ``real_features``, computed here when D's half-step
    did not run this step)."""
    loss_cfg = config.loss
    if config.task.translate:
        loss_g, out = translation_loss(fake, target, config.task)
    else:
        loss_g, out = _segmentation_loss(state, target, fake, config, mask=mask)
        aux = getattr(unwrap(state.generator), "aux_outputs", list)()
        if aux:  # deep supervision: weights 1, 1/2, 1/4 over the scales, normalised (nnU-Net)
            weights = [0.5**k for k in range(len(aux) + 1)]
            loss_g = loss_g * weights[0]
            for w, probs in zip(weights[1:], aux, strict=True):
                size = probs.shape[2:]
                coarse_mask = None if mask is None else F.interpolate(mask, size=size, mode="nearest")
                loss_g = loss_g + w * _segmentation_loss(state, F.interpolate(target, size=size, mode="nearest"),
                                                         probs, config, mask=coarse_mask)[0]
            loss_g = loss_g / sum(weights)
    if adversarial:
        frozen = unwrap(state.discriminator)  # the bare D: G's half-step needs no D gradient sync
        frozen.requires_grad_(False)
        try:
            with autocast(state.device, _critic_amp(state)):
                if loss_cfg.lambda_fm > 0:
                    if real_features is None:
                        with torch.no_grad():
                            real = target if mask is None else target * mask + fake.detach().float() * (1 - mask)
                            real_features = frozen(image, real, features=True)[1]
                    scores, fake_features = frozen(image, fake, features=True)
                    loss_fm = feature_matching_loss(fake_features, real_features)
                    loss_g = loss_g + loss_cfg.lambda_fm * loss_fm
                    out["loss_fm"] = loss_fm.item()
                else:
                    scores = frozen(image, fake)
                loss_adv = lsgan_generator_loss(scores)
        finally:
            frozen.requires_grad_(True)
        loss_g = loss_g + loss_cfg.lambda_adv * loss_adv
        out["loss_adv"] = loss_adv.item()
    state.opt_g.zero_grad(set_to_none=True)
    state.scaler.scale(loss_g).backward()
    state.scaler.step(state.opt_g)
    state.scaler.update()
    state.step += 1
    out["loss_g"] = loss_g.item()
    return out


def _critic_amp(state: TrainState) -> AmpDtype:
    """The critic's precision: the run's, except on a CPU, where it stays float32: under bf16
    autocast oneDNN's weight gradients of the critic's last small convolutions turned non-finite
    within ~100 adversarial steps on phantoms (tests/test_patches.py), while the generator's did not."""
    return "off" if state.device.type == "cpu" else state.amp


def _segmentation_loss(state: TrainState, target: torch.Tensor, fake: torch.Tensor, config: Config, *, mask: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
    """lambda * Dice (+ cross-entropy); ``mask`` (:func:`vox2vox.model.losses.labelled_mask`): ignore-label voxels out."""
    loss_cfg = config.loss
    out: dict[str, float] = {}
    if loss_cfg.dice == "per_sample":
        # A mean of per-sample terms: under DDP, averaging the ranks' gradients gives the global batch's.
        loss_dice = per_sample_dice_loss(target, fake, mask=mask)
    else:
        # The GDL is a ratio of sums over the whole (global) batch: under DDP its sums span all ranks.
        loss_dice = distributed.batch_dice_loss(
            target, fake, weighting=loss_cfg.dice_weighting, class_weights=state.class_weights, eps=loss_cfg.eps,
            mask=mask,
        )
    loss_g = loss_cfg.lambda_dice * loss_dice
    if loss_cfg.lambda_ce > 0:
        # A per-voxel mean: under DDP, averaging the ranks' gradients gives the global batch's.
        if config.generator.output == "regions":
            loss_ce = binary_cross_entropy_from_probs(target, fake, mask=mask)
        else:
            loss_ce = cross_entropy_from_probs(target, fake, mask=mask)
        loss_g = loss_g + loss_cfg.lambda_ce * loss_ce
        out["loss_ce"] = loss_ce.item()
    out["loss_dice"] = loss_dice.item()
    return loss_g, out


# ---- the loop -----------------------------------------------------------------------------------
@dataclass
class FitResult:
    run_dir: Path
    epochs: int
    steps: int
    best_score: float
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)


Validator = Callable[[torch.nn.Module], dict[str, float]]
StepHook = Callable[[TrainState], None]
EpochHook = Callable[[dict[str, Any], torch.nn.Module], None]


@dataclass(frozen=True)
class TrainingData:
    """The training cases and how one training sample is made of a case: ``sample_patch(image,
    label, size, rng, foreground_prob=...)`` and ``augment(image, label, rng)`` (none: as sampled)."""

    cases: Sequence[TrainCase]
    sample_patch: PatchSampler
    augment: Augment | None = None


@dataclass(frozen=True)
class FitHooks:
    """What the loop calls besides training, each optional.

    ``validate(generator)`` scores the generator on un-augmented validation volumes and returns a
    dict whose ``"val_dice"`` (a translation's ``"val_score"``) chooses the best checkpoint;
    ``on_step(state)`` runs after every train step (e.g. :func:`vox2vox.train.distributed.checksum_hook`);
    ``on_epoch(row, generator)`` gets every logged row on rank 0 (experiment tracking); ``init(state)``
    sets a new run's first weights (fine-tuning)."""

    validate: Validator | None = None
    on_step: StepHook | None = None
    on_epoch: EpochHook | None = None
    init: StepHook | None = None


NO_HOOKS = FitHooks()


@dataclass(frozen=True)
class _Epochs:
    """What every epoch of one ``fit`` call shares (the loop's context)."""

    config: Config
    run: RunDir
    ctx: distributed.DistContext
    hooks: FitHooks
    progress: bool
    clock: RunClock
    interrupted: InterruptFlag
    save: Callable[[Path], None]


def fit(
    config: Config,
    data: TrainingData,
    run_dir: str | Path,
    *,
    hooks: FitHooks = NO_HOOKS,
    model_info: ModelInfo | None = None,
    resume: bool = False,
    progress: bool = True,
    started: float | None = None,
) -> FitResult:
    """Train Vox2Vox on ``data`` and write the run to ``run_dir``.

    Training runs for ``train.epochs`` or, with ``train.budget``, until the budget is spent (the
    clock starts at ``started``, a ``time.perf_counter()`` reading, so that loading the data counts
    too; by default when ``fit`` starts). Both learning rates follow ``optim.schedule`` over that
    span (:mod:`vox2vox.train.schedule`). ``hooks``: validation and the rest (:class:`FitHooks`).
    ``model_info`` (channel names, layout, label convention) is stored in checkpoints so a
    checkpoint alone can predict. Writes the run folder (:class:`vox2vox.rundir.RunDir`:
    ``config.json``, ``metrics.jsonl``, ``checkpoints/{last,best}.safetensors``);
    ``resume=True`` continues from ``last``.

    The loop: start or resume (:func:`_start_or_resume`), then per epoch train
    (:func:`_train_epoch`) and validate, log and checkpoint (:func:`_end_epoch`).
    """
    run = RunDir(run_dir)
    if not data.cases:
        raise Vox2VoxError("no training cases: the dataset needs at least one labelled case")
    # Join the torchrun job if there is one (world size 1 otherwise); rank 0 alone writes.
    ctx = distributed.setup(config.train.device)
    tune_cpu_allocator()  # reuse freed activation memory instead of page-faulting it back each step
    distributed.per_rank_batch(config.train.batch_size, ctx.world_size)
    head = head_for(config.generator.n_classes, config.generator.output, model_info.convention if model_info else None)
    config, state, history = _start_or_resume(config, data.cases, run, ctx, resume=resume, head=head, init=hooks.init)
    loop = _Epochs(config, run, ctx, hooks, progress and ctx.is_main, RunClock(state.seconds, started), InterruptFlag(),
                   partial(_save, state, config, model_info=model_info))
    horizon = Horizon.of(config)
    # Worker processes already make batches beside the step; in-process sampling overlaps it only
    # where that measured faster (train.patches.OverlapTrial).
    overlap = config.train.overlap_sampling if config.train.num_workers == 0 else "off"
    stream = BatchStream(partial(_epoch_loader, config, data, ctx), overlap=overlap)
    with loop.interrupted, stream:
        while not horizon.done(epoch=state.epoch, seconds=state.seconds):
            row = _train_epoch(state, loop, stream, len(data.cases), state.epoch)
            state.seconds = loop.clock()
            if row is None:  # Ctrl-C: keep the batches trained so far, then stop
                if ctx.is_main:
                    loop.save(run.last)
                distributed.barrier()
                raise KeyboardInterrupt
            _end_epoch(state, loop, row, history)
            state.seconds = loop.clock()  # validation and checkpoints count too
    if ctx.is_main:
        # The epoch's end work (validation, hooks) can carry the clock past the budget after its
        # checkpoint was written: the resume point must be the final state, or a resume trains on.
        loop.save(run.last)
        if hooks.validate is None or config.train.select == "last":
            loop.save(run.best)
    # No rank returns (and perhaps starts reading the run) before rank 0 has written it.
    distributed.barrier()
    return FitResult(run.root, state.epoch, state.step, state.best_score, state.best_epoch, history)


def _start_or_resume(
    config: Config, train_cases: Sequence[TrainCase], run: RunDir, ctx: distributed.DistContext, *, resume: bool,
    head: OutputHead, init: StepHook | None = None,
) -> tuple[Config, TrainState, list[dict[str, Any]]]:
    """The resolved config, the (DDP-wrapped) training state and the log rows so far.

    A new run computes fixed class weights from the training labels; a resume loads
    ``checkpoints/last`` (every rank the same) and keeps the run's class weights. Rank 0 writes
    ``config.json``, ``versions.json`` and the log (rows after the resume point dropped).
    """
    if resume:
        last = run.last
        if not last.is_file():
            raise Vox2VoxError(f"{run.root}: nothing to resume (no checkpoints/last.safetensors)")
        ckpt = load_checkpoint(last)
        saved = Config.from_dict(ckpt.config, source=str(last), ignore_unknown=True)
        if (saved.generator, saved.discriminator) != (config.generator, config.discriminator):
            raise Vox2VoxError(f"{last}: the networks in this config differ from the run's; resume with the run's config")
        # The run's class weights were computed from its training labels: keep them.
        config = config.replace(loss=_replace(config.loss, class_weights=saved.loss.class_weights))
        state = build_state(config, device=ctx.device)
        restore_training_state(state, ckpt, last)
    else:
        if run.last.exists():
            raise Vox2VoxError(f"{run.root}: already holds a run; pass --resume to continue it or choose a new --out")
        if not config.task.translate and (config.loss.adversarial or config.loss.lambda_dice > 0):
            if (config.loss.dice == "generalized" and config.loss.dice_weighting == "fixed"
                    and config.loss.class_weights is None):
                weights = fixed_class_weights([label for _, label in train_cases], head.n_classes,
                                              membership=head.membership)
                config = config.replace(loss=_replace(config.loss, class_weights=weights))
        state = build_state(config, device=ctx.device)
        if init is not None:
            init(state)
    weights = config.loss.class_weights
    if weights is not None and len(weights) != config.generator.n_classes:
        raise Vox2VoxError(f"loss.class_weights={list(weights)}: give one weight per class "
                           f"({config.generator.n_classes} classes)")
    state.head = head
    state.generator = distributed.wrap(state.generator, ctx)
    state.discriminator = distributed.wrap(state.discriminator, ctx)
    history = read_metrics(run.metrics, upto_epoch=state.epoch)
    if ctx.is_main:
        ensure_folder(run.root)
        atomic_write_text(run.config, config.to_json() + "\n")
        atomic_write_text(run.versions, json.dumps(software_versions(), indent=2) + "\n")
        write_metrics(run.metrics, history)
    distributed.barrier()
    return config, state, history


def _epoch_loader(config: Config, data: TrainingData, ctx: distributed.DistContext, epoch: int,
                  skip: int) -> DataLoader:
    return patch_loader(config, data.cases, epoch, data.sample_patch, data.augment, ctx=ctx, skip_batches=skip)


def _train_epoch(state: TrainState, loop: _Epochs, stream: BatchStream, n_cases: int,
                 epoch: int) -> dict[str, Any] | None:
    """Train one epoch (or the rest of one cut short) and return its log row: mean step metrics.

    Every random draw is seeded by ``(seed, epoch)``: one augmented patch per case (times
    ``patches_per_case``) and the dropout RNG. On Ctrl-C the batches done, their metric sums and
    the RNG state go into ``state`` (for an exact resume) and the return value is None. A
    non-finite loss (or, under fp16, non-finite weights at the epoch's end) stops training
    (:func:`stop_if_not_finite`) before anything of the epoch is saved.
    """
    config, run, ctx, interrupted = loop.config, loop.run, loop.ctx, loop.interrupted
    torch.manual_seed(distributed.rank_seed(derive_seed(config.train.seed, epoch, 1)))
    skip, sums = state.batches_done, dict(state.partial_sums)
    # Steps each metric was logged in: the critic's losses skip steps under discriminator.update_every
    # (a resumed epoch's partial sums are counted over all its steps: the checkpoint keeps no counts).
    counts = dict.fromkeys(sums, skip)
    if skip and state.rng_state is not None:  # continue an epoch cut short by Ctrl-C
        torch.set_rng_state(state.rng_state)
    n_batches = batches_per_epoch(config, n_cases, ctx)
    t0 = time.perf_counter()
    n = skip
    horizon = Horizon.of(config)
    bar = tqdm(stream.epoch(epoch, skip), desc=f"epoch {epoch + 1}/{horizon.label(config.train.budget)}",
               total=n_batches - skip, leave=False, disable=bar_hidden(loop.progress), file=sys.stderr)
    for image, label in bar:
        done = horizon.progress(epoch=epoch, batch=n, batches=n_batches, seconds=loop.clock())
        if horizon.budget_seconds and distributed.any_rank(done >= 1.0):
            break  # the budget is spent: this epoch ends here
        _set_learning_rates(state, config, done)
        non_blocking = state.device.type == "cuda"  # pinned host memory copies asynchronously
        step_out = train_step(state, image.to(state.device, non_blocking=non_blocking),
                              label.to(state.device, non_blocking=non_blocking), config, progress=done)
        if loop.hooks.on_step is not None:
            loop.hooks.on_step(state)
        if not state.scaler.is_enabled():  # fp16's scaler skips non-finite steps itself
            stop_if_not_finite(step_out, state, run, epoch=epoch + 1)
        for k, v in step_out.items():
            sums[k] = sums.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
        n += 1
        bar.set_postfix(loss_g=f"{step_out['loss_g']:.3f}")
        if distributed.any_rank(interrupted.flag):
            interrupted.flag = True
            break
    if interrupted.flag:
        state.batches_done, state.partial_sums, state.rng_state = n, sums, torch.get_rng_state()
        return None
    state.epoch, state.batches_done, state.partial_sums, state.rng_state = epoch + 1, 0, {}, None
    row: dict[str, Any] = {"epoch": state.epoch, "step": state.step, "seconds": time.perf_counter() - t0,
                           "lr_g": state.opt_g.param_groups[0]["lr"]}
    row.update({k: v / max(counts.get(k, n), 1) for k, v in sums.items()})
    chosen = stream.new_choice()
    if chosen is not None:  # the epoch in which the overlap trial decided: its evidence goes in the log
        row.update(sampling_overlapped=float(chosen.overlapped), step_s_overlapped=chosen.overlapped_seconds,
                   step_s_serial=chosen.serial_seconds)
        if loop.progress:
            tqdm.write(chosen.reason, file=sys.stderr)
    # Under fp16 a skipped overflow step may leave an Inf in the mean: the weights decide.
    stop_if_not_finite({} if state.scaler.is_enabled() else row, state, run, epoch=state.epoch, weights=True)
    return row


def stop_if_not_finite(values: dict[str, Any], state: TrainState, run: RunDir, *, epoch: int,
                       weights: bool = False) -> None:
    """Stop training (one :class:`Vox2VoxError`) when a logged loss, or with ``weights`` a generator
    weight, is NaN/Inf: nothing of the diverged epoch is saved, so ``last`` stays the last good
    checkpoint and ``best`` is never a non-finite epoch."""
    bad = [f"{k}={v}" for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    if weights and not bad:
        if not all(bool(torch.isfinite(p).all()) for p in unwrap(state.generator).parameters()):
            bad = ["generator weights"]
    if not bad:
        return
    kept = f"the last good checkpoint is {run.last}" if run.last.is_file() else "no checkpoint was written"
    raise Vox2VoxError(
        f"{run.root}: training stopped in epoch {epoch} (step {state.step}): non-finite "
        f"{', '.join(bad[:3])}; {kept}; lower the learning rates or check the data and loss settings"
    )


def _end_epoch(state: TrainState, loop: _Epochs, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """Validate (when due), keep the best checkpoint by Dice (a translation: ``val_score``), log the
    row and save the last checkpoint. With a budget, epochs are short and many: validation and the
    last checkpoint come at every tenth of the budget instead of every ``val_every``/``checkpoint_every`` epochs.
    """
    config, run, ctx, validate, save = loop.config, loop.run, loop.ctx, loop.hooks.validate, loop.save
    due = Horizon.of(config).epoch_end(epoch=state.epoch, seconds=state.seconds, mark=state.val_mark)
    state.val_mark = due.mark
    # Validate on whole, un-augmented cases (rank 0; the others wait) and keep the best by Dice.
    if validate is not None and due.validate:
        scores = distributed.on_main(lambda: validate(unwrap(state.generator)))
        row.update(scores)
        key = selection_key(config.task)  # val_dice, or a translation's val_score
        state.last_score = scores.get(key)
        if config.train.select == "best" and scores.get(key, -math.inf) > state.best_score:
            state.best_score, state.best_epoch = scores[key], state.epoch
            if ctx.is_main:
                save(run.best)
    # Log and checkpoint on rank 0 (the last checkpoint is the resume point).
    history.append(row)
    if ctx.is_main:
        write_metrics(run.metrics, history)
        if loop.hooks.on_epoch is not None:
            loop.hooks.on_epoch(row, unwrap(state.generator))
        if loop.progress and due.show_row:
            tqdm.write(_format_row(row, config), file=sys.stderr)
        if due.save_last:
            save(run.last)


def _format_row(row: dict[str, Any], config: Config) -> str:
    parts = [Horizon.of(config).row_label(row["epoch"], row["step"])]
    for key in ("loss_g", "loss_dice", "loss_l1", "loss_adv", "loss_d", "d_acc", "val_dice", "val_mae", "val_ssim"):
        if key in row:
            parts.append(f"{key} {row[key]:.4f}")
    parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts)


# ---- checkpoints and logs -----------------------------------------------------------------------
def _save(state: TrainState, config: Config, path: Path, model_info: ModelInfo | None) -> None:
    save_checkpoint(path, training_checkpoint(state, config.to_dict(), model_info))


def _replace(obj: Any, **changes: Any) -> Any:
    return dataclasses.replace(obj, **changes)


def _set_learning_rates(state: TrainState, config: Config, progress: float) -> None:
    factor = lr_factor(progress, config.optim.schedule)
    for opt, base in ((state.opt_g, config.optim.lr_g), (state.opt_d, config.optim.lr_d)):
        for group in opt.param_groups:
            group["lr"] = base * factor
