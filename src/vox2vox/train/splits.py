"""The seeded case-level train/validation split every training run uses (segmentation and translation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
