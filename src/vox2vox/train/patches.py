"""The patches the training loop sees: a seeded dataset of augmented patches per epoch, and the
loader that gives each rank its share of every global batch.

Item ``i`` of epoch ``e`` is fully determined by ``(seed, e, i)``, whatever worker or rank loads
it, so runs are reproducible with any number of data-loading workers or processes.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vox2vox.config import Config
from vox2vox.train import distributed

# A training case as the loop needs it: image (C, D, H, W) float32, label (D, H, W) class indices.
TrainCase = tuple[np.ndarray, np.ndarray]
Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
PatchSampler = Callable[..., tuple[np.ndarray, np.ndarray]]


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


def batches_per_epoch(config: Config, n_cases: int, ctx: distributed.DistContext | None = None) -> int:
    """How many batches this rank trains on in one epoch of :func:`patch_loader`."""
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    return len(distributed.RankBatchSampler(n_cases * config.train.patches_per_case, config.train.batch_size,
                                            rank=rank, world=world))


def patch_loader(config: Config, cases: Sequence[TrainCase], epoch: int, sample_patch: PatchSampler,
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
        augment=augment if config.augment.p_untouched < 1.0 or config.augment.channel_dropout > 0 else None,
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


Batch = tuple[torch.Tensor, torch.Tensor]
_EPOCH_END = object()
Overlap = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class SamplingChoice:
    """What the overlap trial measured and chose."""

    overlapped: bool
    overlapped_seconds: float  # median loop period (fetch + step) with the background thread
    serial_seconds: float  # ... with sampling between steps
    steps: int  # periods counted for each mode

    @property
    def reason(self) -> str:
        how = "overlapped with the step" if self.overlapped else "between steps"
        return (f"sampling {how}: {self.overlapped_seconds:.3f} s a step overlapped, {self.serial_seconds:.3f} s "
                f"between steps (medians of {self.steps} steps each)")


class OverlapTrial:
    """Times the training loop with sampling overlapped and between steps, then keeps the faster.

    Overlapping is not always a gain: on a 2-core CPU with AVX2 kernels the background thread's
    augmentation competed with the step's threads and cost about a tenth of the steps, while on
    AVX-512 it was level or 6% faster (benchmarks/RESULTS.md, step_speed.py). Each request for a
    batch closes the previous loop period (fetch + step), which is booked to the mode that fetched
    it. After ``warmup`` periods (allocator, kernels), ``blocks`` blocks of ``block`` periods
    alternate overlapped and serial; a block's first period (the switch) is not counted. The
    medians decide. Periods that span an epoch's end (validation, checkpoints) are never counted.
    """

    def __init__(self, *, warmup: int = 4, block: int = 6, blocks: int = 4):
        if block < 2 or blocks < 2 or blocks % 2 or warmup < 0:
            raise ValueError("OverlapTrial: block >= 2, an even number of blocks >= 2, warmup >= 0")
        self.warmup, self.block, self.blocks = warmup, block, blocks
        self.seconds: dict[bool, list[float]] = {True: [], False: []}
        self.choice: SamplingChoice | None = None
        self._n = 0  # periods closed (counted or not)
        self._last: tuple[float, bool, bool] | None = None  # (start, overlapped, counted)

    def mode(self, now: float) -> bool:
        """Close the running period at ``now``; whether the next batch is fetched overlapped."""
        if self._last is not None:
            start, overlapped, counted = self._last
            if counted:
                self.seconds[overlapped].append(now - start)
            self._n += 1
        if self.choice is None and self._n >= self.warmup + self.block * self.blocks:
            on, off = _median(self.seconds[True]), _median(self.seconds[False])
            self.choice = SamplingChoice(on < off, round(on, 4), round(off, 4), len(self.seconds[False]))
        if self.choice is not None:
            overlapped, counted = self.choice.overlapped, False
        elif self._n < self.warmup:
            overlapped, counted = True, False
        else:
            j = self._n - self.warmup
            overlapped, counted = (j // self.block) % 2 == 0, j % self.block != 0
        self._last = (now, overlapped, counted)
        return overlapped

    def pause(self) -> None:
        """The loop left the stream (epoch end, budget, interrupt): the running period is not a step's."""
        self._last = None


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if values else float("inf")


class BatchStream:
    """This rank's batches, epoch after epoch, made one batch ahead by a background thread or
    between steps, whichever trains faster here.

    With ``train.num_workers = 0`` sampling and augmentation run in the training process. A
    background thread can make the next batch while the step runs (and runs on into the next
    epoch's first batch); whether that is faster depends on the CPU (:class:`OverlapTrial`), so
    ``overlap="auto"`` times both in the first steps and keeps the faster, ``"on"``/``"off"`` fix it.
    Every batch is a pure function of ``(seed, epoch, index)`` (:class:`PatchDataset`), so every
    mode, and any switch between them, yields exactly the batches of :func:`patch_loader` in the
    same order, and a resumed run sees the same data. The thread draws nothing from the global
    torch RNG (dropout's).

    ``loader_for(epoch, skip)`` makes the epoch's loader without its first ``skip`` batches.
    With worker processes (``num_workers > 0``) the loader already overlaps: pass ``"off"``.
    """

    def __init__(self, loader_for: Callable[[int, int], Iterable[Batch]], *, overlap: Overlap = "on",
                 trial: OverlapTrial | None = None, clock: Callable[[], float] = time.perf_counter):
        if overlap not in ("auto", "on", "off"):
            raise ValueError(f"overlap={overlap!r}: auto, on or off")
        self.loader_for, self.clock = loader_for, clock
        self.trial = (trial or OverlapTrial()) if overlap == "auto" else None
        self._fixed = overlap == "on"
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._at: tuple[int, int] | None = None  # (epoch, batches into it) the thread produces next
        self._serial: Iterator[Batch] | None = None
        self._serial_at: tuple[int, int] | None = None  # where ``_serial`` stands
        self._told = False

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` after its first ``skip``."""
        index = skip
        try:
            while True:
                overlapped = self.trial.mode(self.clock()) if self.trial is not None else self._fixed
                item = self._from_thread(epoch, index) if overlapped else self._from_loop(epoch, index)
                if item is _EPOCH_END:
                    return
                yield item
                index += 1
        finally:
            if self.trial is not None:
                self.trial.pause()

    def new_choice(self) -> SamplingChoice | None:
        """The overlap trial's choice the first time it is asked after the trial ended; None otherwise."""
        if self.trial is None or self.trial.choice is None or self._told:
            return None
        self._told = True
        return self.trial.choice

    def close(self) -> None:
        """Stop the thread (idempotent); what it made ahead is dropped."""
        self._serial, self._serial_at = None, None
        if self._thread is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a producer waiting on a full queue
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread, self._at = None, None

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _from_loop(self, epoch: int, index: int) -> object:
        if self._thread is not None:  # switched from the thread: it must not compete any longer
            self.close()
        if self._serial_at != (epoch, index):
            self._serial = iter(self.loader_for(epoch, index))
        item = next(self._serial, _EPOCH_END)
        self._serial_at = (epoch, index + 1)
        return item

    def _from_thread(self, epoch: int, index: int) -> object:
        self._serial, self._serial_at = None, None
        if self._at != (epoch, index):
            self._restart(epoch, index)
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        self._at = (epoch + 1, 0) if item is _EPOCH_END else (epoch, index + 1)
        return item

    def _restart(self, epoch: int, skip: int) -> None:
        self.close()
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=1)
        self._at = (epoch, skip)
        self._thread = threading.Thread(target=self._produce, args=(epoch, skip, self._stop, self._queue),
                                        name="vox2vox-batches", daemon=True)
        self._thread.start()

    def _produce(self, epoch: int, skip: int, stop: threading.Event, out: queue.Queue) -> None:
        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            while not stop.is_set():
                for batch in self.loader_for(epoch, skip):
                    if not put(batch):
                        return
                if not put(_EPOCH_END):
                    return
                epoch, skip = epoch + 1, 0
        except BaseException as error:  # handed to the consumer, which raises it
            put(error)
