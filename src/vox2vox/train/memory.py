"""How much memory a config needs per GPU, estimated before anything real is allocated.

``estimate_memory(config)`` adds up, per process (a rank's share of the global batch):

- **model state**: weights, gradients and both Adam moments of G and D, all float32
  (16 bytes per parameter; mixed precision keeps float32 master weights), plus the half-precision
  weight copies autocast caches during a step (2 bytes per parameter);
- **activations**: the tensors autograd saves for backward, counted by running G and D on the
  ``meta`` device (shapes only, no memory) under ``saved_tensors_hooks``. A train step holds G's
  graph through the whole step and, in the D half-step, two D graphs (real and fake pair), so the
  peak holds G's saved tensors plus twice D's. With activation checkpointing G keeps only each
  block's input plus, during backward, one block's recomputed tensors. Under AMP saved float
  tensors are counted at half size (normalisation layers keep float32 statistics, so the true
  figure is a little higher);
- **working memory**: the gradient of the largest activation and the tensor it flows into,
  the batch itself, the one-hot target and the generator's output.

Accuracy: the peak resident memory measured on CPU for two small configs lies within 35 % of this
estimate (tests/test_memory.py; resident size is a noisy measure: allocator reuse, CPU
convolution buffers). On a GPU, kernel
workspace (cuDNN) and the CUDA context (about 0.5-1 GB) come on top: leave headroom. Shapes: batches are ``(B, C, D, H, W)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vox2vox.config import Config
from vox2vox.errors import Vox2VoxError
from vox2vox.model.discriminator import Discriminator
from vox2vox.model.residual import build_generator
from vox2vox.train.distributed import per_rank_batch

_FLOAT32 = 4
_ADAM_STATE_BYTES = 4 * _FLOAT32  # weight, gradient, exp_avg, exp_avg_sq


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per process for one training step at the config's per-rank batch."""

    params_g: int
    params_d: int
    per_rank_batch: int
    patch_size: tuple[int, int, int]
    amp: str
    activation_checkpointing: bool
    state_bytes: int
    activation_g_bytes: int
    activation_d_bytes: int
    working_bytes: int

    @property
    def activation_bytes(self) -> int:
        """G's saved tensors plus two D graphs (the D half-step's real and fake pairs)."""
        return self.activation_g_bytes + 2 * self.activation_d_bytes

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes + self.working_bytes

    def format(self) -> str:
        gib = 1024**3

        def g(n: int) -> str:
            return f"{n / gib:8.2f} GiB"

        lines = [
            f"parameters: generator {self.params_g / 1e6:.1f} M, discriminator {self.params_d / 1e6:.1f} M",
            f"per process: batch {self.per_rank_batch} x patch {'x'.join(map(str, self.patch_size))}, "
            f"amp {self.amp}, activation checkpointing {'on' if self.activation_checkpointing else 'off'}",
            f"  weights + grads + Adam   {g(self.state_bytes)}",
            f"  generator activations    {g(self.activation_g_bytes)}",
            f"  discriminator (x2)       {g(2 * self.activation_d_bytes)}",
            f"  working memory           {g(self.working_bytes)}",
            f"  total per GPU            {g(self.total_bytes)}  (plus CUDA context and kernel workspace, ~1 GiB)",
        ]
        return "\n".join(lines)


def estimate_memory(config: Config, *, world_size: int = 1, amp: str | None = None,
                    activation_checkpointing: bool | None = None) -> MemoryEstimate:
    """Estimate the peak memory of one train step per process (nothing is allocated).

    ``amp`` is ``bf16``/``fp16``/``off`` (default: ``train.amp``, with ``auto`` planned as a GPU
    would run it, i.e. half precision); ``activation_checkpointing`` defaults to the config's.
    """
    if world_size < 1:
        raise Vox2VoxError(f"--world-size {world_size}: must be >= 1")
    batch = per_rank_batch(config.train.batch_size, world_size)
    amp = amp or ("bf16" if config.train.amp == "auto" else config.train.amp)
    ckpt = config.train.activation_checkpointing if activation_checkpointing is None else activation_checkpointing
    half = amp in ("bf16", "fp16")
    try:
        with torch.device("meta"):
            generator = build_generator(config.generator)
            discriminator = Discriminator(config.discriminator)
            image = torch.empty(batch, config.generator.in_channels, *config.train.patch_size)
        n_g = sum(p.numel() for p in generator.parameters())
        n_d = sum(p.numel() for p in discriminator.parameters())

        # Activations: what autograd keeps for backward, from shape-only forwards.
        g_stats = _saved_tensors(generator, lambda: generator(image), per_block=ckpt)
        probs = torch.empty(batch, config.generator.n_classes, *config.train.patch_size, device="meta",
                            requires_grad=True)
        d_stats = _saved_tensors(discriminator, lambda: discriminator(image, probs), per_block=False)
    except (RuntimeError, OverflowError, MemoryError) as err:  # sizes past what torch can index
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise Vox2VoxError(
            f"config: batch {batch} x patch {list(config.train.patch_size)} with these networks cannot be "
            f"planned ({first[:120]}); use smaller sizes"
        ) from err
    act_g = g_stats.checkpointed_bytes if ckpt else g_stats.total_bytes
    act_d = d_stats.total_bytes
    if half:
        act_g, act_d = act_g // 2, act_d // 2

    # Working memory: backward's largest gradient pair; the batch (image, int64 label), the one-hot
    # target, G's output and its gradient.
    largest = max(g_stats.largest_bytes, d_stats.largest_bytes) // (2 if half else 1)
    voxels = batch * config.train.patch_size[0] * config.train.patch_size[1] * config.train.patch_size[2]
    io = voxels * _FLOAT32 * (config.generator.in_channels + 3 * config.generator.n_classes) + voxels * 8
    state = (n_g + n_d) * (_ADAM_STATE_BYTES + (2 if half else 0))
    return MemoryEstimate(
        params_g=n_g, params_d=n_d, per_rank_batch=batch, patch_size=tuple(config.train.patch_size), amp=amp,
        activation_checkpointing=ckpt, state_bytes=state, activation_g_bytes=act_g, activation_d_bytes=act_d,
        working_bytes=2 * largest + io,
    )


@dataclass(frozen=True)
class _SavedStats:
    total_bytes: int  # every non-parameter tensor saved for backward
    largest_bytes: int  # the largest such tensor
    checkpointed_bytes: int  # what remains with G's blocks checkpointed (inputs + one block's peak)


def _saved_tensors(module: torch.nn.Module, forward: Callable[[], torch.Tensor], *, per_block: bool) -> _SavedStats:
    """Bytes autograd saves during ``forward`` on the meta device (parameters excluded: counted as state)."""
    params = {id(p) for p in module.parameters()}
    blocks = [b for name in ("encoder", "bottleneck", "decoder") for b in getattr(module, name, [])]
    current: list[int] = []  # index of the block running now (innermost last)
    per_block_saved = [0] * len(blocks)
    block_inputs: dict[int, int] = {}  # id(tensor) -> bytes, inputs the checkpointed blocks keep
    keep_alive: list[torch.Tensor] = []  # so ids of inputs stay unique during the forward
    total = largest = outside = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total, largest, outside
        if id(t) in params:
            return t
        n = t.numel() * t.element_size()
        total += n
        largest = max(largest, n)
        if current and id(t) in block_inputs:
            pass  # a block's input: kept anyway under checkpointing, counted once in block_inputs
        elif current:
            per_block_saved[current[-1]] += n
        else:
            outside += n
        return t

    handles = []
    if per_block:
        for i, block in enumerate(blocks):
            def pre(mod: torch.nn.Module, args: tuple, i: int = i) -> None:
                current.append(i)
                for a in args:
                    if isinstance(a, torch.Tensor):
                        keep_alive.append(a)
                        block_inputs[id(a)] = a.numel() * a.element_size()

            def post(mod: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
                current.pop()

            handles += [block.register_forward_pre_hook(pre), block.register_forward_hook(post)]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            forward()
    finally:
        for h in handles:
            h.remove()
    checkpointed = outside + sum(block_inputs.values()) + (max(per_block_saved) if per_block_saved else 0)
    return _SavedStats(total, largest, checkpointed if per_block else total)
