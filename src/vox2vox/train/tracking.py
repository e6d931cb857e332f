"""Experiment tracking (``train.log``): the run's curves, config and validation overlays, also in
TensorBoard or MLflow.

``metrics.jsonl`` stays the run's record; a tracker mirrors every row of it (each number as a
scalar at the row's optimiser step, under the same name), the resolved config (``config.json``,
once), and at every validation an overlay of one validation slice: the image, the truth and the
prediction side by side. Rank 0 alone tracks under DDP (``fit`` calls its ``on_epoch`` hook there).

- ``tensorboard``: event files in the run folder's ``tensorboard/`` (``tensorboard --logdir RUN``);
  a resumed run drops the events after its resume point, as training itself does.
- ``mlflow``: an MLflow run in the experiment ``vox2vox``, stored in the run folder's ``mlruns/``
  (a local file store) unless ``MLFLOW_TRACKING_URI`` names a server or store; its id is kept in
  ``tracking.json`` so that a resume logs into the same MLflow run.

Both are optional extras (``pip install 'vox2vox[tensorboard]'`` / ``'vox2vox[mlflow]'``), imported
only when used; :func:`check_tracking` says which one to install before anything is trained.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from vox2vox.atomic import atomic_write_text
from vox2vox.config import Config
from vox2vox.errors import Vox2VoxError
from vox2vox.model.checkpoint import read_metadata
from vox2vox.rundir import RunDir

#: The Python module each backend needs, and the extra that installs it.
_MODULES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
#: Class colours of the overlays (RGB, class 1 first): distinct on a grey image.
_PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], np.float32)
_ALPHA = 0.5


class Backend(Protocol):
    def scalars(self, values: dict[str, float], step: int) -> None: ...
    def config(self, config: dict[str, Any]) -> None: ...
    def image(self, name: str, rgb: np.ndarray, step: int) -> None: ...
    def close(self) -> None: ...


def check_tracking(config: Config) -> None:
    """Refuse a ``train.log`` whose library is not installed (one line naming the extra)."""
    backend = config.train.log
    if backend != "none" and importlib.util.find_spec(_MODULES[backend]) is None:
        raise Vox2VoxError(f"train.log={backend}: the {backend} library is not installed; "
                           f"pip install 'vox2vox[{backend}]' (or set train.log=none)")


class Tracker:
    """``fit``'s ``on_epoch`` hook: mirrors each logged row, the config and validation overlays.

    ``example`` is filled by the validator (:func:`vox2vox.train.runs.make_validator`) with one
    validation slice: ``image`` (2D float), ``truth`` and ``prediction`` (2D class indices).
    """

    def __init__(self, backend: Backend, run_dir: Path, example: dict[str, np.ndarray] | None, name: str) -> None:
        self.backend: Backend | None = backend
        self.run = RunDir(run_dir)
        self.example = example
        self.name = name
        self._config_logged = False

    def __call__(self, row: dict[str, Any], generator: torch.nn.Module) -> None:
        if self.backend is None:
            return
        try:
            self._log(self.backend, row)
        except Exception as err:  # noqa: BLE001 - a tracking outage must not end hours of training
            self.backend = None
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(f"warning: train.log={self.name}: logging failed ({first}); training goes on without it, "
                  f"{self.run.metrics} keeps the record", file=sys.stderr)

    def _log(self, backend: Backend, row: dict[str, Any]) -> None:
        step = int(row.get("step", 0))
        if not self._config_logged and self.run.config.is_file():
            # The config as the run wrote it (class weights resolved), once per process.
            backend.config(json.loads(self.run.config.read_text(encoding="utf-8")))
            self._config_logged = True
        numbers = {k: float(v) for k, v in row.items()
                   if k != "step" and isinstance(v, int | float) and not isinstance(v, bool)}
        backend.scalars(numbers, step)
        if "val_dice" in row and self.example:
            backend.image("validation/overlay", overlay(**self.example), step)

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()


def open_tracker(config: Config, run_dir: str | Path, *, resume: bool,
                 example: dict[str, np.ndarray] | None = None) -> Tracker | None:
    """The tracker ``config.train.log`` names for ``run_dir`` (None for ``none``)."""
    check_tracking(config)
    run_dir, name = Path(run_dir), config.train.log
    if name == "none":
        return None
    try:
        backend: Backend = _TensorBoard(run_dir, resume=resume) if name == "tensorboard" else _MLflow(run_dir, resume=resume)
    except Vox2VoxError:
        raise
    except Exception as err:  # noqa: BLE001 - the libraries' own errors (an unreachable server, a bad URI)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = os.environ.get("MLFLOW_TRACKING_URI") if name == "mlflow" else None
        raise Vox2VoxError(f"train.log={name}: cannot start logging{f' to {where}' if where else ''} ({first}); "
                           "fix the tracking store or set train.log=none") from err
    return Tracker(backend, run_dir, example, name)


def overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """One ``(H, 3W, 3)`` uint8 picture: the slice, the truth over it, the prediction over it.

    Slices are in canonical (RAS) voxel order: rotated so that anterior is up, as viewers show an
    axial slice. Intensities are scaled by their 0.5-99.5th percentiles.
    """
    lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    grey = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1) * 255
    base = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    panels = [base]
    for labels in (truth, prediction):
        panel = base.copy()
        for c in np.unique(labels):
            if c > 0:
                colour = _PALETTE[(int(c) - 1) % len(_PALETTE)]
                panel[labels == c] = (1 - _ALPHA) * panel[labels == c] + _ALPHA * colour
        panels.append(panel)
    picture = np.concatenate([np.rot90(p) for p in panels], axis=1)
    return np.ascontiguousarray(picture.clip(0, 255).astype(np.uint8))


class _TensorBoard:
    def __init__(self, run_dir: Path, *, resume: bool) -> None:
        # Lazy: tensorboard is an optional extra (checked by check_tracking).
        from torch.utils.tensorboard import SummaryWriter

        purge = None
        if resume and RunDir(run_dir).last.is_file():
            # Events after the resume point were trained again: drop the first attempt's.
            purge = int(read_metadata(RunDir(run_dir).last).get("state", {}).get("step", 0)) + 1
        self.writer = SummaryWriter(log_dir=str(RunDir(run_dir).tensorboard), purge_step=purge)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=step)
        self.writer.flush()

    def config(self, config: dict[str, Any]) -> None:
        # Markdown code block: TensorBoard's text tab renders it as is.
        text = "    " + json.dumps(config, indent=2).replace("\n", "\n    ")
        self.writer.add_text("config", text, global_step=0)

    def image(self, name: str, rgb: np.ndarray, step: int) -> None:
        self.writer.add_image(name, rgb, global_step=step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, run_dir: Path, *, resume: bool) -> None:
        # Lazy: mlflow is an optional extra (checked by check_tracking) and slow to import.
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # MLflow 3 keeps its file store working only on request; a folder of plain files in the
            # run is what a local user wants (no database to set up, copied along with the run).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = RunDir(run_dir).mlruns.resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        self.ids = RunDir(run_dir).tracking
        known = json.loads(self.ids.read_text(encoding="utf-8")).get("mlflow_run_id") if resume and self.ids.is_file() else None
        self.resumed = known is not None
        if known is None:
            experiment = self.client.get_experiment_by_name("vox2vox")
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("vox2vox")
            known = self.client.create_run(experiment_id, run_name=run_dir.resolve().name).info.run_id
            atomic_write_text(self.ids, json.dumps({"mlflow_run_id": known, "tracking_uri": uri}, indent=2) + "\n")
        self.run_id = known

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric  # lazy: see __init__

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def config(self, config: dict[str, Any]) -> None:
        self.client.log_dict(self.run_id, config, "config.json")
        if not self.resumed:  # MLflow parameters cannot be logged twice
            params = {f"{section}.{key}": json.dumps(value)[:500]
                      for section, table in config.items() if isinstance(table, dict) for key, value in table.items()}
            from mlflow.entities import Param  # lazy: see __init__

            items = [Param(k, v) for k, v in params.items()]
            for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
                self.client.log_batch(self.run_id, params=items[start:start + 100])

    def image(self, name: str, rgb: np.ndarray, step: int) -> None:
        self.client.log_image(self.run_id, rgb, artifact_file=f"{name}_step{step:08d}.png")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
