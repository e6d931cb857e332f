"""The run folder's layout: the one place that names the files a training run writes.

::

    RUN/
      config.json        the resolved configuration (class weights included)
      versions.json      software versions the run was trained with
      split.json         train and validation case ids
      metrics.jsonl      one JSON row per finished epoch (losses, validation Dice, seconds)
      checkpoints/
        last.safetensors the resume point (written every ``checkpoint_every`` epochs)
        best.safetensors the best validation Dice so far (or the last epoch without validation)

Training, cross-validation (one run per ``fold_<i>/``), checkpoint lookup, the demo and the
report all take their paths from :class:`RunDir`, and read the metrics log with
:func:`read_metrics`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vox2vox.atomic import atomic_write_text
from vox2vox.errors import Vox2VoxError


@dataclass(frozen=True)
class RunDir:
    """The paths inside one run folder (nothing is created or read here)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def versions(self) -> Path:
        return self.root / "versions.json"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.safetensors"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.safetensors"

    def is_run(self) -> bool:
        """Whether the folder holds a run's configuration and metrics log."""
        return self.config.is_file() and self.metrics.exists()


def read_metrics(path: str | Path, *, upto_epoch: int | None = None) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (none if the file is missing), optionally up to an epoch.

    Blank lines are skipped; a line that is not JSON is an error naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise Vox2VoxError(f"{path}: line {number} is not JSON ({err})") from err
        if not isinstance(row, dict):
            continue
        if upto_epoch is None or row.get("epoch", 0) <= upto_epoch:
            rows.append(row)
    return rows


def write_metrics(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite the log whole (it is small) and atomically: a kill never leaves a torn line, and a
    resume drops the rows of epochs after the checkpoint it resumes from."""
    atomic_write_text(Path(path), "".join(json.dumps(r) + "\n" for r in rows))
