"""The patches the training loop sees: a seeded dataset of augmented patches per epoch, and the
loader that gives each rank its share of every global batch.

Item ``i`` of epoch ``e`` is fully determined by ``(seed, e, i)``, whatever worker or rank loads
it, so runs are reproducible with any number of data-loading workers or processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
