"""Data-parallel training under ``torchrun``: process group, sampling, wrapping and reductions.

The training loop calls the few functions here and otherwise reads the same for one process and
for many. With ``WORLD_SIZE`` unset or 1 every function is a no-op (or the identity), so a
single-process run is unchanged, bit for bit.

What "the same run at any world size" means here: the *global* batch ``train.batch_size`` is split
into equal contiguous shares, one per rank (per-rank batch = global batch / world size). Item ``i``
of an epoch is seeded by ``(seed, epoch, i)`` whoever loads it, so the global batch holds the same
patches at any world size. Gradients are averaged over ranks by DistributedDataParallel, which
equals the full-batch gradient for losses that are means over equal shares (the LSGAN terms). The
generalized Dice loss is a ratio of sums over the *whole* batch (docs/method.md, "Losses"), which a mean
of per-rank ratios is not; :func:`batch_dice_loss` all-reduces the per-class sums first, so every
rank computes the full-batch loss. What still differs from one process:

- dropout masks are drawn per rank (each rank's RNG stream is its own), so with dropout on, runs
  at different world sizes are equal in distribution, not bit for bit;
- floating-point sums are grouped differently (per-rank partial sums, then the all-reduce), which
  moves results by float rounding (about 1e-7 relative per step);
- batch norm (``generator.norm=batch``) normalises each rank's share unless it is synchronised;
  on CUDA it is converted to ``SyncBatchNorm``; on CPU (gloo) it stays per rank, with a warning.
  Instance norm (the default) is per sample and unaffected.
"""

from __future__ import annotations

import atexit
import datetime
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from vox2vox.device import resolve_device
from vox2vox.errors import Vox2VoxError
from vox2vox.model.losses import dice_loss_from_sums, dice_sums

T = TypeVar("T")

# When set to a folder, every rank appends one JSON line per train step with checksums of its
# weights to <folder>/rank<r>.jsonl (tests use it to check that ranks stay identical).
CHECKSUM_ENV = "VOX2VOX_DEBUG_CHECKSUMS"


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a data-parallel job (world size 1 outside ``torchrun``)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files, logs and progress bars."""
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device_choice: str = "auto") -> DistContext:
    """Join the ``torchrun`` job described by the environment, once per process.

    ``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
    (the ``env://`` rendezvous). NCCL is used on CUDA (one GPU per local rank), gloo on CPU.
    Without ``WORLD_SIZE`` > 1 this returns a single-process context on the configured device.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, 0, resolve_device(device_choice))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise Vox2VoxError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Rank 0 validates while the others wait in a collective: allow for a long validation.
        dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(hours=1))
        atexit.register(_shutdown)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device)


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(global_batch: int, world: int) -> int:
    """The share of the global batch each rank trains on; the split must be exact."""
    if global_batch % world:
        raise Vox2VoxError(
            f"train.batch_size={global_batch} is the global batch and must divide evenly over "
            f"{world} processes; choose a multiple of {world}"
        )
    return global_batch // world


class RankBatchSampler(Sampler[list[int]]):
    """Per-rank index lists: rank ``r`` takes the ``r``-th equal share of every global batch.

    With ``world == 1`` this yields ``[0..B-1], [B..2B-1], ...`` including a last partial batch,
    exactly what ``DataLoader(batch_size=B, shuffle=False)`` does. With several ranks a last partial
    global batch is kept when it splits evenly and dropped otherwise (a rank with fewer samples
    would weigh its gradient wrongly in DDP's plain average); choose ``batch_size`` dividing the
    number of patches per epoch to lose nothing.
    """

    def __init__(self, n_items: int, global_batch: int, *, rank: int, world: int):
        self.n_items, self.global_batch, self.rank, self.world = n_items, global_batch, rank, world
        self.share = per_rank_batch(global_batch, world)

    def _batches(self) -> Iterator[range]:
        for start in range(0, self.n_items, self.global_batch):
            yield range(start, min(start + self.global_batch, self.n_items))

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._batches():
            if len(batch) % self.world:
                continue
            share = len(batch) // self.world
            yield list(batch[self.rank * share : (self.rank + 1) * share])

    def __len__(self) -> int:
        return sum(1 for b in self._batches() if len(b) % self.world == 0)


def wrap(module: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` (unchanged in a single process).

    DDP broadcasts rank 0's weights at construction, so every rank starts identical even if
    their initialisation differed, and averages gradients over ranks in backward.
    """
    if not ctx.enabled:
        return module
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    if has_bn:
        if ctx.device.type == "cuda":
            # Batch statistics over the global batch, as one process would compute them.
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        elif ctx.is_main:
            warnings.warn("batch norm under CPU data parallelism normalises each rank's share of the "
                          "batch (SyncBatchNorm needs CUDA); use instance norm for exact equivalence",
                          stacklevel=2)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def rank_seed(seed: int) -> int:
    """Rank 0 keeps ``seed`` (so one process is unchanged); other ranks get their own stream."""
    r = rank()
    return seed if r == 0 else (seed * 1_000_003 + r) % (1 << 63)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its (picklable) result to every rank.

    The other ranks wait in the broadcast, so afterwards all ranks agree on e.g. validation scores.
    """
    if not is_distributed():
        return fn()
    box: list[Any] = [fn() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any (an interrupt must stop all ranks at one step)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average step scalars over ranks in one collective (equal shares: the full-batch mean)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist(), strict=True))


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo moves CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks in forward; in backward each rank's derivative times the world size.

    Every rank computes the same loss from the summed value, so the incoming gradient is the same
    on every rank and ``all_reduce(grad)`` would equal ``world * grad``: computed here without a
    collective. The factor cancels DDP's division by the world size, leaving the gradient of the
    one global loss.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.detach().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * dist.get_world_size()


def batch_dice_loss(
    target: torch.Tensor,
    probs: torch.Tensor,
    *,
    weighting: str,
    class_weights: torch.Tensor | None,
    eps: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The generalized Dice loss over the *global* batch, identical on every rank.

    ``target`` (one-hot) and ``probs`` (softmax) are this rank's ``(b, C, D, H, W)`` share. In a
    single process this is :func:`vox2vox.model.losses.generalized_dice_loss` itself. Under DDP the
    per-class sums (intersection, denominator, and the class counts Sudre weighting needs) are
    all-reduced first, so the loss and its gradient are those of the full batch.
    """
    sums = dice_sums(target, probs, mask=mask)
    if is_distributed():
        sums = _AllReduceSum.apply(sums)
    return dice_loss_from_sums(sums, weighting=weighting, class_weights=class_weights, eps=eps)  # type: ignore[arg-type]


def checksum_hook() -> Callable[[Any], None] | None:
    """A ``fit(on_step=...)`` hook that writes weight checksums after every step when
    ``$VOX2VOX_DEBUG_CHECKSUMS`` is set (the tests compare ranks with it); None otherwise."""
    if not os.environ.get(CHECKSUM_ENV):
        return None
    return lambda state: write_checksums(state.step, [state.generator, state.discriminator])


def write_checksums(step: int, modules: Sequence[torch.nn.Module]) -> None:
    """Debug hook: append this rank's weight checksums after ``step`` when ``$VOX2VOX_DEBUG_CHECKSUMS`` is set.

    Each line holds a SHA-1 of the exact bytes of every parameter (ranks must agree bit for bit)
    and a float64 sum per module (to compare with a single-process run within tolerance).
    """
    folder = os.environ.get(CHECKSUM_ENV)
    if not folder:
        return
    row: dict[str, Any] = {"step": step}
    for i, module in enumerate(modules):
        digest = hashlib.sha1()
        total = 0.0
        for p in module.parameters():
            data = p.detach().float().cpu().contiguous()
            digest.update(data.numpy().tobytes())
            total += float(data.double().sum())
        row[f"sha{i}"] = digest.hexdigest()
        row[f"sum{i}"] = total
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    with (path / f"rank{rank()}.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")
