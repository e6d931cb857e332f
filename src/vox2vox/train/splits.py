"""The seeded case-level train/validation split every training run uses (segmentation and translation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vox2vox.config import Config
from vox2vox.errors import Vox2VoxError


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


def run_split(case_ids: Sequence[str], config: Config,
              split: tuple[Sequence[str], Sequence[str]] | None) -> tuple[list[str], list[str]]:
    """The run's (train, validation) ids: ``split`` when given (cross-validation folds), checked
    against the cases present, else :func:`split_cases` with the config's fraction and seed."""
    if split is None:
        return split_cases(list(case_ids), val_fraction=config.data.val_fraction,
                           val_cases=config.data.val_cases, seed=config.train.seed)
    train_ids, val_ids = sorted(split[0]), sorted(split[1])
    unknown = sorted(set(train_ids + val_ids) - set(case_ids))
    if unknown:
        raise Vox2VoxError(f"{config.data.path}: the split names cases the data does not hold: {', '.join(unknown[:5])}")
    return train_ids, val_ids
