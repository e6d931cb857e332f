"""What a training step mutates: the two networks, their Adam optimisers, the grad scaler and the
loop's counters (:class:`TrainState`), built from a config and seeded by ``train.seed``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial

import torch
from torch.utils.checkpoint import checkpoint

from vox2vox.config import Config
from vox2vox.device import AmpDtype, make_grad_scaler, resolve_amp, resolve_device
from vox2vox.errors import Vox2VoxError
from vox2vox.model.discriminator import Discriminator
from vox2vox.model.generator import Generator
from vox2vox.model.outputs import OutputHead
from vox2vox.model.residual import build_generator


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
    # What the generator's outputs mean (softmax classes or sigmoid regions): the loss targets.
    head: OutputHead | None = None
    epoch: int = 0  # completed epochs
    step: int = 0  # completed train steps
    best_score: float = -math.inf
    best_epoch: int = -1
    # After a Ctrl-C mid-epoch: batches of epoch ``epoch`` already trained, their summed step
    # metrics, and the torch RNG state to continue from, so a resume skips exactly those batches.
    batches_done: int = 0
    partial_sums: dict[str, float] = dataclasses.field(default_factory=dict)
    rng_state: torch.Tensor | None = None
    # Seconds this run has spent so far, over all its `train` calls (the budget's clock), and the
    # tenth of the budget at which it last validated.
    seconds: float = 0.0
    val_mark: int = 0
    last_score: float | None = None  # the latest validation Dice (the model card's "last")


def build_networks(config: Config) -> tuple[torch.nn.Module, Discriminator]:
    return build_generator(config.generator), Discriminator(config.discriminator)


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
    optim = config.optim
    beta1_d = optim.beta1 if optim.beta1_d is None else optim.beta1_d
    opt_g = torch.optim.Adam(generator.parameters(), lr=optim.lr_g, betas=(optim.beta1, optim.beta2))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=optim.lr_d, betas=(beta1_d, optim.beta2))
    weights = config.loss.class_weights
    class_weights = torch.tensor(weights, dtype=torch.float32, device=device) if weights else None
    return TrainState(generator, discriminator, opt_g, opt_d, make_grad_scaler(device, amp), device, amp, class_weights)


def enable_activation_checkpointing(generator: Generator) -> Generator:
    """Recompute each encoder, bottleneck and decoder block in backward instead of storing its activations.

    Only each block's input stays in memory; the block runs a second time in backward (about a
    third more compute). The state dict is unchanged (the blocks' ``forward`` is wrapped in place),
    and dropout masks are replayed exactly (``torch.utils.checkpoint`` restores the RNG state).
    """
    if not hasattr(generator, "encoder"):
        raise Vox2VoxError("train.activation_checkpointing=true works with generator.arch=paper only")
    for blocks in (generator.encoder, generator.bottleneck, generator.decoder):
        for block in blocks:
            block.forward = partial(checkpoint, block.forward, use_reentrant=False)  # type: ignore[method-assign]
    return generator
