"""Vox2Vox training: ``train_step`` (a D half-step, then a G half-step) and ``fit`` (the loop).

The loop follows the paper (METHOD.md, "Training"): every epoch draws one random, augmented patch
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

import base64
import dataclasses
import json
import math
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vox2vox.atomic import atomic_write_text, ensure_folder
from vox2vox.config import Config
from vox2vox.device import (
    AmpDtype,
    autocast,
    make_grad_scaler,
    resolve_amp,
    resolve_device,
    tune_cpu_allocator,
)
from vox2vox.errors import Vox2VoxError
from vox2vox.model.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    software_versions,
)
from vox2vox.model.discriminator import Discriminator
from vox2vox.model.generator import Generator
from vox2vox.model.losses import (
    cross_entropy_from_probs,
    discriminator_accuracy,
    fixed_class_weights,
    labelled_mask,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    one_hot,
)
from vox2vox.train import distributed
from vox2vox.train.runlock import RunLock, check_run_folder

# A training case as the loop needs it: image (C, D, H, W) float32, label (D, H, W) class indices.
TrainCase = tuple[np.ndarray, np.ndarray]
Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
PatchSampler = Callable[..., tuple[np.ndarray, np.ndarray]]


# ---- the networks and their optimisers ---------------------------------------------------------
@dataclass
class TrainState:
    """Everything a train step mutates, and the counters a checkpoint records."""

    generator: torch.nn.Module
    discriminator: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: AmpDtype
    class_weights: torch.Tensor | None
    epoch: int = 0  # completed epochs
    step: int = 0  # completed train steps
    best_score: float = -math.inf
    best_epoch: int = -1
    # After a Ctrl-C mid-epoch: batches of epoch ``epoch`` already trained, their summed step
    # metrics, and the torch RNG state to continue from, so a resume skips exactly those batches.
    batches_done: int = 0
    partial_sums: dict[str, float] = dataclasses.field(default_factory=dict)
    rng_state: torch.Tensor | None = None


def build_networks(config: Config) -> tuple[Generator, Discriminator]:
    return Generator(config.generator), Discriminator(config.discriminator)


def build_state(config: Config, *, device: torch.device | None = None) -> TrainState:
    """Networks (seeded from ``config.train.seed``), Adam optimisers and the grad scaler."""
    device = device or resolve_device(config.train.device)
    amp = resolve_amp(config.train.amp, device)
    torch.manual_seed(config.train.seed)
    generator, discriminator = build_networks(config)
    if config.train.activation_checkpointing:
        enable_activation_checkpointing(generator)
    generator.to(device)
    discriminator.to(device)
    betas = (config.optim.beta1, config.optim.beta2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.optim.lr_g, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.optim.lr_d, betas=betas)
    weights = config.loss.class_weights
    class_weights = torch.tensor(weights, dtype=torch.float32, device=device) if weights else None
    return TrainState(generator, discriminator, opt_g, opt_d, make_grad_scaler(device, amp), device, amp, class_weights)


def enable_activation_checkpointing(generator: Generator) -> Generator:
    """Recompute each encoder, bottleneck and decoder block in backward instead of storing its activations.

    Only each block's input stays in memory; the block runs a second time in backward (about a
    third more compute). The state dict is unchanged (the blocks' ``forward`` is wrapped in place),
    and dropout masks are replayed exactly (``torch.utils.checkpoint`` restores the RNG state).
    """
    from functools import partial

    from torch.utils.checkpoint import checkpoint

    for blocks in (generator.encoder, generator.bottleneck, generator.decoder):
        for block in blocks:
            block.forward = partial(checkpoint, block.forward, use_reentrant=False)  # type: ignore[method-assign]
    return generator


# ---- one step -----------------------------------------------------------------------------------
def train_step(state: TrainState, image: torch.Tensor, label: torch.Tensor, config: Config) -> dict[str, float]:
    """One Vox2Vox update on a batch; returns the step's losses and D accuracy.

    ``image`` is ``(B, C, D, H, W)`` float, ``label`` ``(B, D, H, W)`` class indices, both on the
    state's device. The fake segmentation is computed once; D learns from the real pair and the
    detached fake pair; then G learns with D frozen (its parameters receive no gradients).
    """
    G, D = state.generator, state.discriminator
    loss_cfg, gate = config.loss, config.train.d_accuracy_gate
    target = one_hot(label, config.generator.n_classes)
    mask = labelled_mask(label)  # None unless the batch holds ignore-label voxels
    G.train()
    D.train()

    # 1. The fake segmentation, once per step.
    with autocast(state.device, state.amp):
        fake = G(image)

    # 2. Discriminator half-step on (image, truth) and (image, detached fake).
    out: dict[str, float] = {}
    if loss_cfg.adversarial:
        # Ignore-label voxels show D the fake's own values, so it cannot learn from them.
        real = target if mask is None else target * mask + fake.detach().float() * (1 - mask)
        with autocast(state.device, state.amp):
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
        out.update(loss_d=loss_d.item(), d_acc=accuracy, d_updated=float(update_d))

    # 3. Generator half-step with D frozen: adversarial term + lambda * generalized Dice.
    # The GDL is a ratio of sums over the whole (global) batch: under DDP its sums span all ranks.
    loss_dice = distributed.batch_dice_loss(
        target, fake, weighting=loss_cfg.dice_weighting, class_weights=state.class_weights, eps=loss_cfg.eps,
        mask=mask,
    )
    loss_g = loss_cfg.lambda_dice * loss_dice
    if loss_cfg.lambda_ce > 0:
        # A per-voxel mean: under DDP, averaging the ranks' gradients gives the global batch's.
        loss_ce = cross_entropy_from_probs(target, fake, mask=mask)
        loss_g = loss_g + loss_cfg.lambda_ce * loss_ce
        out["loss_ce"] = loss_ce.item()
    if loss_cfg.adversarial:
        frozen = _unwrap(D)
        frozen.requires_grad_(False)
        try:
            with autocast(state.device, state.amp):
                loss_adv = lsgan_generator_loss(frozen(image, fake))
        finally:
            frozen.requires_grad_(True)
        loss_g = loss_g + loss_adv
        out["loss_adv"] = loss_adv.item()
    state.opt_g.zero_grad(set_to_none=True)
    state.scaler.scale(loss_g).backward()
    state.scaler.step(state.opt_g)
    state.scaler.update()
    state.step += 1
    out.update(loss_g=loss_g.item(), loss_dice=loss_dice.item())
    # Logged values are means over the global batch (each rank saw an equal share).
    return distributed.mean_over_ranks(out)


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The bare network inside a DistributedDataParallel wrapper (G's half-step needs no D sync)."""
    return module.module if hasattr(module, "module") else module


# ---- the data the loop sees ---------------------------------------------------------------------
def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence mixing; stable across platforms)."""
    hi, lo = (int(v) for v in np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint32))
    return ((hi & 0x7FFFFFFF) << 32) | lo


class PatchDataset(Dataset):
    """Epoch ``epoch`` of training patches: ``patches_per_case`` random patches of every case.

    Item ``i`` is fully determined by ``(seed, epoch, i)``, whatever worker or rank loads it, so
    runs are reproducible with any number of data-loading workers or processes.
    """

    def __init__(
        self,
        cases: Sequence[TrainCase],
        *,
        patch_size: tuple[int, int, int],
        seed: int,
        epoch: int,
        patches_per_case: int,
        sample_patch: PatchSampler,
        augment: Augment | None,
        foreground_prob: float,
    ):
        self.cases = cases
        self.patch_size = patch_size
        self.seed, self.epoch = seed, epoch
        self.sample_patch, self.augment, self.foreground_prob = sample_patch, augment, foreground_prob
        order = np.random.default_rng([seed, epoch, 0xC0FFEE]).permutation(len(cases) * patches_per_case)
        self.order = order % len(cases)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, label = self.cases[self.order[index]]
        image, label = self.sample_patch(image, label, self.patch_size, rng, foreground_prob=self.foreground_prob)
        if self.augment is not None:
            image, label = self.augment(image, label, rng)
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), torch.from_numpy(
            np.ascontiguousarray(label, dtype=np.int64)
        )


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


def fit(
    config: Config,
    train_cases: Sequence[TrainCase],
    run_dir: str | Path,
    *,
    validate: Validator | None = None,
    sample_patch: PatchSampler,
    augment: Augment | None = None,
    extra_state: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = True,
) -> FitResult:
    """Train Vox2Vox on ``train_cases`` and write the run to ``run_dir``.

    ``validate(generator)`` scores the generator on un-augmented validation volumes and returns a
    dict whose ``"val_dice"`` chooses the best checkpoint. ``sample_patch(image, label, size, rng,
    foreground_prob=...)`` and ``augment(image, label, rng)`` make one training sample.
    ``extra_state`` (channel names, label convention, preprocessing) is stored in checkpoints so a
    checkpoint alone can predict. Writes ``config.json``, ``metrics.jsonl`` and
    ``checkpoints/{last,best}.safetensors``; ``resume=True`` continues from ``last``.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    log_path = run_dir / "metrics.jsonl"
    if not train_cases:
        raise Vox2VoxError("no training cases: the dataset needs at least one labelled case")
    # Join the torchrun job if there is one (world size 1 otherwise); rank 0 alone writes.
    ctx = distributed.setup(config.train.device)
    progress = progress and ctx.is_main
    tune_cpu_allocator()  # reuse freed activation memory instead of page-faulting it back each step
    distributed.per_rank_batch(config.train.batch_size, ctx.world_size)

    # Resolve the config (class weights from the training labels) and the starting state; under
    # DDP every rank loads the same checkpoint.
    if resume:
        last = ckpt_dir / "last.safetensors"
        if not last.is_file():
            raise Vox2VoxError(f"{run_dir}: nothing to resume (no checkpoints/last.safetensors)")
        ckpt = load_checkpoint(last)
        saved = Config.from_dict(ckpt.config, source=str(last), ignore_unknown=True)
        if (saved.generator, saved.discriminator) != (config.generator, config.discriminator):
            raise Vox2VoxError(f"{last}: the networks in this config differ from the run's; resume with the run's config")
        # The run's class weights were computed from its training labels: keep them.
        config = config.replace(loss=_replace(config.loss, class_weights=saved.loss.class_weights))
        state = build_state(config, device=ctx.device)
        _load_into(state, ckpt, last)
    else:
        if (ckpt_dir / "last.safetensors").exists():
            raise Vox2VoxError(f"{run_dir}: already holds a run; pass --resume to continue it or choose a new --out")
        if config.loss.adversarial or config.loss.lambda_dice > 0:
            if config.loss.dice_weighting == "fixed" and config.loss.class_weights is None:
                weights = fixed_class_weights([label for _, label in train_cases], config.generator.n_classes)
                config = config.replace(loss=_replace(config.loss, class_weights=weights))
        state = build_state(config, device=ctx.device)
    weights = config.loss.class_weights
    if weights is not None and len(weights) != config.generator.n_classes:
        raise Vox2VoxError(f"loss.class_weights={list(weights)}: give one weight per class "
                           f"({config.generator.n_classes} classes)")
    state.generator = distributed.wrap(state.generator, ctx)
    state.discriminator = distributed.wrap(state.discriminator, ctx)
    history = _read_log(log_path, upto_epoch=state.epoch)
    if ctx.is_main:
        ensure_folder(run_dir)
        atomic_write_text(run_dir / "config.json", config.to_json() + "\n")
        atomic_write_text(run_dir / "versions.json", json.dumps(software_versions(), indent=2) + "\n")
        _write_log(log_path, history)
    distributed.barrier()

    interrupted = _InterruptFlag()
    with interrupted:
        for epoch in range(state.epoch, config.train.epochs):
            # Train: one random augmented patch per case (times patches_per_case), seeded by epoch.
            torch.manual_seed(distributed.rank_seed(derive_seed(config.train.seed, epoch, 1)))
            skip, sums = state.batches_done, dict(state.partial_sums)
            if skip and state.rng_state is not None:  # continue an epoch cut short by Ctrl-C
                torch.set_rng_state(state.rng_state)
            loader = _loader(config, train_cases, epoch, sample_patch, augment, ctx=ctx, skip_batches=skip)
            t0 = time.perf_counter()
            n = skip
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.train.epochs}", leave=False,
                       disable=not progress, file=sys.stderr)
            for image, label in bar:
                non_blocking = state.device.type == "cuda"  # pinned host memory copies asynchronously
                step_out = train_step(state, image.to(state.device, non_blocking=non_blocking),
                                      label.to(state.device, non_blocking=non_blocking), config)
                distributed.write_checksums(state.step, [state.generator, state.discriminator])
                if not state.scaler.is_enabled():  # fp16's scaler skips non-finite steps itself
                    stop_if_not_finite(step_out, state, ckpt_dir, epoch=epoch + 1)
                for k, v in step_out.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
                bar.set_postfix(loss_g=f"{step_out['loss_g']:.3f}")
                if distributed.any_rank(interrupted.flag):
                    interrupted.flag = True
                    break
            if interrupted.flag:
                state.batches_done, state.partial_sums, state.rng_state = n, sums, torch.get_rng_state()
                if ctx.is_main:
                    _save(state, config, ckpt_dir / "last.safetensors", extra_state)
                distributed.barrier()
                raise KeyboardInterrupt
            state.epoch, state.batches_done, state.partial_sums, state.rng_state = epoch + 1, 0, {}, None
            row: dict[str, Any] = {"epoch": state.epoch, "step": state.step, "seconds": time.perf_counter() - t0}
            row.update({k: v / max(n, 1) for k, v in sums.items()})
            # Under fp16 a skipped overflow step may leave an Inf in the mean: the weights decide.
            stop_if_not_finite({} if state.scaler.is_enabled() else row, state, ckpt_dir, epoch=state.epoch,
                               weights=True)

            # Validate on whole, un-augmented cases (rank 0; the others wait) and keep the best by Dice.
            if validate is not None and (state.epoch % config.train.val_every == 0 or state.epoch == config.train.epochs):
                scores = distributed.on_main(lambda: validate(_unwrap(state.generator)))
                row.update(scores)
                if scores.get("val_dice", -math.inf) > state.best_score:
                    state.best_score, state.best_epoch = scores["val_dice"], state.epoch
                    if ctx.is_main:
                        _save(state, config, ckpt_dir / "best.safetensors", extra_state)

            # Log and checkpoint on rank 0 (the last checkpoint is the resume point).
            history.append(row)
            if ctx.is_main:
                _write_log(log_path, history)
                if progress:
                    tqdm.write(_format_row(row, config.train.epochs), file=sys.stderr)
                if state.epoch % config.train.checkpoint_every == 0 or state.epoch == config.train.epochs:
                    _save(state, config, ckpt_dir / "last.safetensors", extra_state)
    if validate is None and ctx.is_main:
        _save(state, config, ckpt_dir / "best.safetensors", extra_state)
    # No rank returns (and perhaps starts reading the run) before rank 0 has written it.
    distributed.barrier()
    return FitResult(run_dir, state.epoch, state.step, state.best_score, state.best_epoch, history)


def stop_if_not_finite(values: dict[str, Any], state: TrainState, ckpt_dir: Path, *, epoch: int,
                       weights: bool = False) -> None:
    """Stop training (one :class:`Vox2VoxError`) when a logged loss, or with ``weights`` a generator
    weight, is NaN/Inf: nothing of the diverged epoch is saved, so ``last`` stays the last good
    checkpoint and ``best`` is never a non-finite epoch."""
    bad = [f"{k}={v}" for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    if weights and not bad:
        if not all(bool(torch.isfinite(p).all()) for p in _unwrap(state.generator).parameters()):
            bad = ["generator weights"]
    if not bad:
        return
    last = ckpt_dir / "last.safetensors"
    kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written"
    raise Vox2VoxError(
        f"{ckpt_dir.parent}: training stopped in epoch {epoch} (step {state.step}): non-finite "
        f"{', '.join(bad[:3])}; {kept}; lower the learning rates or check the data and loss settings"
    )


def _loader(config: Config, cases: Sequence[TrainCase], epoch: int, sample_patch: PatchSampler,
            augment: Augment | None, *, ctx: distributed.DistContext | None = None,
            skip_batches: int = 0) -> DataLoader:
    """This rank's batches of epoch ``epoch``: its share of every global batch, loaded by workers.

    Worker processes run sampling and augmentation beside the GPU (cases are preprocessed and in
    memory already, see ``preprocess.cache_dir``); pinned memory lets host-to-GPU copies overlap.
    """
    dataset = PatchDataset(
        cases,
        patch_size=config.train.patch_size,
        seed=config.train.seed,
        epoch=epoch,
        patches_per_case=config.train.patches_per_case,
        sample_patch=sample_patch,
        augment=augment if config.augment.p_untouched < 1.0 else None,
        foreground_prob=config.train.foreground_prob,
    )
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    workers = config.train.num_workers
    return DataLoader(
        dataset,
        # The dataset's order is already a seeded permutation; the sampler only splits it by rank.
        # ``skip_batches`` drops batches an interrupted run already trained on.
        batch_sampler=list(distributed.RankBatchSampler(len(dataset), config.train.batch_size, rank=rank,
                                                        world=world))[skip_batches:],
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        # A new loader per epoch (its dataset is seeded by the epoch), so workers cannot persist;
        # fork start-up is cheap next to an epoch, and prefetching keeps batches queued meanwhile.
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
        # Its own generator: the loader draws a worker base seed per iterator, which must not
        # shift the global RNG that dropout uses (a resumed epoch restores that RNG exactly).
        generator=torch.Generator().manual_seed(derive_seed(config.train.seed, epoch, 2)),
    )


def _format_row(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}"]
    for key in ("loss_g", "loss_dice", "loss_adv", "loss_d", "d_acc", "val_dice"):
        if key in row:
            parts.append(f"{key} {row[key]:.4f}")
    parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts)


# ---- checkpoints and logs -----------------------------------------------------------------------
def _save(state: TrainState, config: Config, path: Path, extra_state: dict[str, Any] | None) -> None:
    ckpt = Checkpoint(
        config=config.to_dict(),
        generator=_unwrap(state.generator).state_dict(),
        discriminator=_unwrap(state.discriminator).state_dict(),
        optimizers={"generator": state.opt_g.state_dict(), "discriminator": state.opt_d.state_dict()},
        state={
            "epoch": state.epoch,
            "step": state.step,
            "best_score": state.best_score if math.isfinite(state.best_score) else None,
            "best_epoch": state.best_epoch,
            "scaler": state.scaler.state_dict() if state.scaler.is_enabled() else None,
            "batches_done": state.batches_done,
            "partial_sums": state.partial_sums,
            "rng_state": base64.b64encode(state.rng_state.numpy().tobytes()).decode() if state.rng_state is not None else None,
            **(extra_state or {}),
        },
    )
    save_checkpoint(path, ckpt)


def _load_into(state: TrainState, ckpt: Checkpoint, path: Path) -> None:
    load_weights(_unwrap(state.generator), ckpt.generator, path, what="generator")
    load_weights(_unwrap(state.discriminator), ckpt.discriminator, path, what="discriminator")
    try:
        state.opt_g.load_state_dict(_to_device(ckpt.optimizers["generator"], state.device))
        state.opt_d.load_state_dict(_to_device(ckpt.optimizers["discriminator"], state.device))
        if ckpt.state.get("scaler") and state.scaler.is_enabled():
            state.scaler.load_state_dict(ckpt.state["scaler"])
        state.epoch = int(ckpt.state["epoch"])
        state.step = int(ckpt.state["step"])
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise Vox2VoxError(f"{path}: optimiser state or counters do not fit this run ({first}); "
                           "resume with the run's own checkpoint") from err
    best = ckpt.state.get("best_score")
    state.best_score = -math.inf if best is None else float(best)
    state.best_epoch = int(ckpt.state.get("best_epoch", -1))
    state.batches_done = int(ckpt.state.get("batches_done", 0))
    state.partial_sums = dict(ckpt.state.get("partial_sums") or {})
    rng = ckpt.state.get("rng_state")
    state.rng_state = torch.frombuffer(bytearray(base64.b64decode(rng)), dtype=torch.uint8) if rng else None


def _to_device(osd: dict[str, Any], device: torch.device) -> dict[str, Any]:
    state = {k: {n: (v.to(device) if torch.is_tensor(v) and n != "step" else v) for n, v in s.items()}
             for k, s in osd["state"].items()}
    return {"state": state, "param_groups": osd["param_groups"]}


def _read_log(path: Path, *, upto_epoch: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    try:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict) or isinstance(row.get("epoch", 0), bool) \
                        or not isinstance(row.get("epoch", 0), int):
                    raise ValueError(f"line {number} is not a row of epoch metrics")
                if row.get("epoch", 0) <= upto_epoch:
                    rows.append(row)
    except (OSError, ValueError, RecursionError) as err:
        message = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise Vox2VoxError(f"{path}: cannot read the run's metrics log ({message}); repair or delete it "
                           "(it is rewritten from the checkpoint's epoch on)") from err
    return rows


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    # Rewritten whole (small) and atomically, so a kill never leaves a torn line and a resume
    # drops rows of epochs after the checkpoint it resumes from.
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _replace(obj: Any, **changes: Any) -> Any:
    return dataclasses.replace(obj, **changes)


class _InterruptFlag:
    """Turns the first Ctrl-C into a flag the loop checks after the current step (then saves)."""

    def __init__(self) -> None:
        self.flag = False
        self._previous: Any = None

    def __enter__(self) -> _InterruptFlag:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# ---- a run on a dataset folder ------------------------------------------------------------------
def split_cases(case_ids: Sequence[str], *, val_fraction: float, val_cases: int | None, seed: int) -> tuple[list[str], list[str]]:
    """Seeded case-level split into (train ids, validation ids); validation never takes the last case."""
    ids = sorted(case_ids)
    n_val = val_cases if val_cases is not None else int(round(val_fraction * len(ids)))
    if val_fraction > 0 and val_cases is None and len(ids) >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, len(ids) - 1)
    order = np.random.default_rng([seed, 0x5B1]).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return train, val


def train_on_dataset(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    split: tuple[Sequence[str], Sequence[str]] | None = None,
) -> FitResult:
    """Discover, check, load and split ``config.data.path``, then :func:`fit` with validation by Dice.

    Channel count and class count come from the data (they override the config's networks), the
    split is saved as ``split.json``, and checkpoints record the channel names, label convention
    and preprocessing so that ``predict`` needs nothing but the checkpoint. ``split`` gives the
    (train ids, validation ids) explicitly (cross-validation folds) instead of :func:`split_cases`.
    """
    from vox2vox.data.datasets import discover, load_case
    from vox2vox.data.labels import get_convention

    if not config.data.path:
        raise Vox2VoxError("no training data: pass --data PATH (or set data.path in the config)")
    check_run_folder(run_dir, resume=resume)  # before anything is read or written
    # Under torchrun every rank loads the cases; rank 0 alone writes and shows progress.
    ctx = distributed.setup(config.train.device)
    progress = progress and ctx.is_main
    tune_cpu_allocator()  # reuse freed activation memory instead of page-faulting it back each step
    spec = discover(config.data.path, layout=config.data.layout, label_name=config.data.label_name,
                    channel_names=config.data.channels)
    labelled = [c for c in spec.cases if c.label is not None]
    if not labelled:
        raise Vox2VoxError(f"{config.data.path}: no case has a label map; training needs labels")
    convention = get_convention(config.data.convention) if config.data.convention else spec.label_convention()

    # Load every case once (preprocessed, cached on disk if configured), then split by case id.
    cases = {}
    for case in tqdm(labelled, desc="loading cases", disable=not progress, leave=False, file=sys.stderr):
        cases[case.case_id] = load_case(case, convention=convention, prep=config.preprocess)
    if convention is None:
        convention = apply_inferred_convention(cases, where=config.data.path, announce=progress)
    if split is None:
        train_ids, val_ids = split_cases(list(cases), val_fraction=config.data.val_fraction,
                                         val_cases=config.data.val_cases, seed=config.train.seed)
    else:
        train_ids, val_ids = sorted(split[0]), sorted(split[1])
        unknown = sorted(set(train_ids + val_ids) - set(cases))
        if unknown:
            raise Vox2VoxError(f"{config.data.path}: the split names cases the data does not hold: {', '.join(unknown[:5])}")
    run_dir = Path(run_dir)
    # One training process per run folder (rank 0 holds the lock for the job).
    lock = RunLock(run_dir).acquire() if ctx.is_main else None
    try:
        return _train_locked(config, spec, cases, convention, train_ids, val_ids, run_dir, ctx=ctx,
                             resume=resume, progress=progress)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(config: Config, spec: Any, cases: dict[str, Any], convention: Any, train_ids: list[str],
                  val_ids: list[str], run_dir: Path, *, ctx: distributed.DistContext, resume: bool,
                  progress: bool) -> FitResult:
    """The part of :func:`train_on_dataset` that writes into ``run_dir`` (under its lock)."""
    from vox2vox.data.augmentation import Augmenter, sample_patch

    check_run_folder(run_dir, resume=resume)  # again, now that no other process can change it
    weights = config.loss.class_weights
    if weights is not None and not resume and len(weights) != convention.n_classes:
        raise Vox2VoxError(f"loss.class_weights={list(weights)}: give one weight per class "
                           f"({convention.n_classes} classes: {', '.join(map(str, convention.source_values))})")
    if ctx.is_main:
        ensure_folder(run_dir)
        atomic_write_text(run_dir / "split.json", json.dumps({"train": train_ids, "val": val_ids}, indent=2) + "\n")

    # The networks take the data's channel and class counts.
    n_channels, n_classes = len(spec.channel_names), convention.n_classes
    config = config.replace(
        generator=_replace(config.generator, in_channels=n_channels, n_classes=n_classes),
        discriminator=_replace(config.discriminator, in_channels=n_channels, n_classes=n_classes),
    )
    extra_state = {
        "channels": list(spec.channel_names),
        "layout": spec.layout,
        "convention": convention.to_json(),
    }
    validate = make_validator([cases[i] for i in val_ids], convention, config) if val_ids else None
    return fit(
        config,
        [(cases[i].image, cases[i].label) for i in train_ids],
        run_dir,
        validate=validate,
        sample_patch=sample_patch,
        augment=Augmenter(config.augment),
        extra_state=extra_state,
        resume=resume,
        progress=progress,
    )


def apply_inferred_convention(cases: dict[str, Any], *, where: Any, announce: bool) -> Any:
    """No convention given: infer one from the label values present in ``cases`` (loaded with raw
    values), map every label to its classes in place, and return the convention.

    Bounded by :data:`vox2vox.labels.MAX_INFERRED_CLASSES`; nothing is sized by the largest value.
    """
    from vox2vox.data.labels import infer_convention

    values: set[int] = set()
    for case in cases.values():
        values.update(int(v) for v in np.unique(case.label))
    convention, note = infer_convention(values, where=where)
    for case in cases.values():
        case.label = convention.to_classes(case.label)
    if note and announce:
        tqdm.write(f"note: {note}", file=sys.stderr)
    return convention


def make_validator(val_cases: Sequence[Any], convention: Any, config: Config) -> Validator:
    """Score the generator on whole, un-augmented validation volumes: mean Dice over regions.

    Regions are the convention's (BraTS: WT, TC, ET) or one per foreground class; the score per
    case follows the BraTS rule for empty masks (both empty: Dice 1).
    """
    from vox2vox.data.labels import IGNORE_INDEX
    from vox2vox.infer.inference import InferenceConfig, predict_probabilities
    from vox2vox.report.metrics import dice

    infer = InferenceConfig(mode="auto", window=config.train.patch_size, overlap=0.25)

    def validate(generator: torch.nn.Module) -> dict[str, float]:
        device = next(generator.parameters()).device
        per_region: dict[str, list[float]] = {}
        for case in val_cases:
            probs = predict_probabilities([generator], case.image, config=infer, device=device)
            pred = convention.region_masks(convention.to_source(probs.argmax(0)))
            true = convention.region_masks(convention.to_source(case.label))
            scored = case.label != IGNORE_INDEX  # the ignore label counts for neither side
            for name in true:
                per_region.setdefault(name, []).append(dice(pred[name] & scored, true[name] & scored))
        scores = {f"val_dice_{name}": float(np.mean(v)) for name, v in per_region.items()}
        scores["val_dice"] = float(np.mean(list(scores.values()))) if scores else 0.0
        return scores

    return validate
