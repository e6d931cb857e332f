"""The run folder's layout: the one place that names the files a training run writes.

::

    RUN/
      config.json        the resolved configuration (class weights included)
      versions.json      software versions the run was trained with
      split.json         train and validation case ids
      plan.toml          the plan ``vox2vox train`` made from the data (when it planned)
      metrics.jsonl      one JSON row per finished epoch (losses, validation Dice, seconds)
      .vox2vox.lock      while a ``train`` runs: its pid and host (vox2vox.train.runlock)
      tensorboard/       train.log=tensorboard: event files (vox2vox.train.tracking)
      mlruns/            train.log=mlflow without MLFLOW_TRACKING_URI: the local MLflow store
      tracking.json      train.log=mlflow: the MLflow run id and store, so a resume logs into it
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

#: The run lock's file name (one training process per run folder).
LOCK_NAME = ".vox2vox.lock"


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
    def plan(self) -> Path:
        return self.root / "plan.toml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def mlruns(self) -> Path:
        return self.root / "mlruns"

    @property
    def tracking(self) -> Path:
        return self.root / "tracking.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def lock(self) -> Path:
        return self.root / LOCK_NAME

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

    Blank lines are skipped; an unreadable file, or a line that is not a JSON object with an integer
    ``epoch``, is one error naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    try:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as err:
                raise ValueError(f"line {number} is not JSON ({str(err)[:80]})") from err
            epoch = row.get("epoch", 0) if isinstance(row, dict) else None
            if isinstance(epoch, bool) or not isinstance(epoch, int):
                raise ValueError(f"line {number} is not a row of epoch metrics")
            if upto_epoch is None or epoch <= upto_epoch:
                rows.append(row)
    except (OSError, ValueError) as err:  # UnicodeDecodeError is a ValueError
        message = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise Vox2VoxError(f"{path}: cannot read the run's metrics log ({message}); repair or delete it "
                           "(training rewrites it from the checkpoint's epoch on)") from err
    return rows


def write_metrics(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite the log whole (it is small) and atomically: a kill never leaves a torn line, and a
    resume drops the rows of epochs after the checkpoint it resumes from."""
    atomic_write_text(Path(path), "".join(json.dumps(r) + "\n" for r in rows))
