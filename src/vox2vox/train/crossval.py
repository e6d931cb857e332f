"""K-fold cross-validation: seeded case-level folds, one run per fold, and the folds as an ensemble.

The paper's final results average the softmax outputs of the 10 models of a 10-fold
cross-validation (docs/method.md, "Training"). A cross-validation directory holds::

    DIR/folds.json        {"k", "seed", "cases", "folds": [{"train": [...], "val": [...]}, ...]}
    DIR/fold_<i>/         an ordinary run directory (config.json, split.json, checkpoints/, ...)
    DIR/cv_summary.json   best validation Dice per trained fold and their mean

Folds are made once and saved: later calls (another fold, ``--resume``, a job of a scheduler array)
read them back, so every fold sees the same split. Each fold validates, and picks its best
checkpoint, on its own held-out cases. ``expand_model_paths`` turns a cross-validation directory into
its fold run directories so that ``predict --model DIR`` predicts with the whole ensemble.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vox2vox.atomic import atomic_write_text, ensure_folder
from vox2vox.config import Config, load_config
from vox2vox.data.layouts import discover
from vox2vox.errors import Vox2VoxError
from vox2vox.rundir import RunDir, read_metrics
from vox2vox.train import distributed
from vox2vox.train.planned import PlanRequest, plan_run
from vox2vox.train.runlock import check_run_folder
from vox2vox.train.runs import train_on_dataset
from vox2vox.train.training import FitResult

FOLDS_FILE = "folds.json"


def fold_dir(cv_dir: str | Path, fold: int) -> Path:
    return Path(cv_dir) / f"fold_{fold}"


def kfold_splits(case_ids: Sequence[str], k: int, *, seed: int) -> list[dict[str, list[str]]]:
    """``k`` folds of a seeded permutation of the (sorted) case ids: each case is validated once.

    Fold sizes differ by at most one. Returns ``[{"train": ids, "val": ids}, ...]`` (sorted ids).
    """
    ids = sorted(set(case_ids))
    if k < 2:
        raise Vox2VoxError(f"--folds {k}: cross-validation needs at least 2 folds")
    if len(ids) < k:
        raise Vox2VoxError(f"--folds {k}: only {len(ids)} labelled case(s); need at least one per fold")
    order = np.random.default_rng([seed, 0xF01D]).permutation(len(ids))
    chunks = np.array_split(order, k)
    folds = []
    for chunk in chunks:
        val = sorted(ids[i] for i in chunk)
        held = set(val)
        folds.append({"train": [c for c in ids if c not in held], "val": val})
    return folds


def read_folds_file(path: Path) -> dict:
    """A saved ``folds.json``, checked: one line naming it when unreadable or of the wrong shape."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        message = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise Vox2VoxError(f"{path}: cannot read the saved folds ({message}); repair or delete it") from err
    folds = saved.get("folds") if isinstance(saved, dict) else None
    k = saved.get("k") if isinstance(saved, dict) else None
    if (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000 or not isinstance(folds, list)
            or not all(isinstance(f, dict) for f in folds)):
        raise Vox2VoxError(f"{path}: malformed saved folds (expected k and a list of folds); repair or delete it")
    return saved


def prepare_folds(cv_dir: str | Path, case_ids: Sequence[str], k: int, *, seed: int) -> list[dict[str, list[str]]]:
    """Make and save the folds, or read back the saved ones (they must describe the same job)."""
    path = Path(cv_dir) / FOLDS_FILE
    ids = sorted(set(case_ids))
    if path.is_file():
        saved = read_folds_file(path)
        if saved.get("k") != k or saved.get("seed") != seed or saved.get("cases") != ids:
            raise Vox2VoxError(
                f"{path}: holds {saved.get('k')} folds (seed {saved.get('seed')}) over "
                f"{len(saved.get('cases', []))} cases, not {k} folds (seed {seed}) over {len(ids)}; "
                "use another --out or the same data, --folds and train.seed"
            )
        return list(saved["folds"])
    folds = kfold_splits(ids, k, seed=seed)
    if distributed.is_main():
        atomic_write_text(path, json.dumps({"k": k, "seed": seed, "cases": ids, "folds": folds}, indent=2) + "\n")
    distributed.barrier()
    return folds


def run_cross_validation(
    config: Config,
    cv_dir: str | Path,
    *,
    folds: int,
    fold: int | None = None,
    resume: bool = False,
    progress: bool = True,
    plan: PlanRequest | None = None,
    say: Callable[[str], None] = print,
) -> dict[int, FitResult]:
    """Train fold ``fold`` (or every fold, one after another) of a ``folds``-fold cross-validation.

    ``config.data.path`` names the data; cases are split at case level with ``config.train.seed``.
    Each fold is an ordinary run in ``cv_dir/fold_<i>`` that validates on its held-out cases.
    With ``plan``, each fold is planned as ``vox2vox train`` plans a run, on the fold's training
    cases alone (its held-out cases must not choose its settings): the plan's reasons go to ``say``,
    ``plan.toml`` into the fold's folder, and a ``train.budget`` is each fold's (planning included).
    A resumed fold keeps its own saved config. Returns the fit result per trained fold and rewrites
    ``cv_summary.json``.
    """
    if not config.data.path:
        raise Vox2VoxError("no training data: pass --data PATH (or set data.path in the config)")
    if fold is not None and not 0 <= fold < folds:
        raise Vox2VoxError(f"--fold {fold}: choose a fold from 0 to {folds - 1}")
    spec = discover(config.data.path, layout=config.data.layout)
    labelled = [c.case_id for c in spec.cases if c.label is not None or config.task.translate]  # translations need none
    if not labelled:
        raise Vox2VoxError(f"{config.data.path}: no case has a label map; training needs labels")
    cv_dir = Path(cv_dir)
    for i in range(folds) if fold is None else [fold]:  # before anything is written
        check_run_folder(fold_dir(cv_dir, i), resume=resume)
    if distributed.is_main():
        ensure_folder(cv_dir)
    splits = prepare_folds(cv_dir, labelled, folds, seed=config.train.seed)

    results: dict[int, FitResult] = {}
    for i in range(folds) if fold is None else [fold]:
        split = (splits[i]["train"], splits[i]["val"])
        started = time.perf_counter()  # a fold's budget counts its planning too
        run_config, plan_toml = config, None
        saved = RunDir(fold_dir(cv_dir, i)).config
        if plan is not None and resume and saved.is_file():
            run_config = load_config(saved).with_overrides(list(plan.overrides)).replace(data=config.data)
        elif plan is not None:
            planned = plan_run(config, plan, case_ids=split[0], progress=progress)
            if distributed.is_main():
                for line in planned.reasons:
                    say(f"fold {i}: plan: {line}")
            run_config, plan_toml = planned.config, planned.toml
        results[i] = train_on_dataset(run_config, fold_dir(cv_dir, i), resume=resume, progress=progress, split=split,
                                      started=started, plan_toml=plan_toml)
    if distributed.is_main():
        write_summary(cv_dir, folds)
    return results


def write_summary(cv_dir: str | Path, k: int) -> dict[str, Any]:
    """``cv_summary.json``: the best validation Dice of every trained fold (from its log) and the mean."""
    cv_dir = Path(cv_dir)
    per_fold: dict[str, float | None] = {}
    for i in range(k):
        scores = [row.get("val_dice") for row in read_metrics(RunDir(fold_dir(cv_dir, i)).metrics)]
        scores = [s for s in scores if s is not None]
        per_fold[f"fold_{i}"] = max(scores) if scores else None
    done = [v for v in per_fold.values() if v is not None]
    summary = {"folds": per_fold, "mean_best_val_dice": float(np.mean(done)) if done else None,
               "trained": len(done), "k": k}
    atomic_write_text(cv_dir / "cv_summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def is_cv_dir(path: str | Path) -> bool:
    return (Path(path) / FOLDS_FILE).is_file()


def cv_model_paths(cv_dir: str | Path) -> list[Path]:
    """The fold run directories of a cross-validation directory, every fold required."""
    cv_dir = Path(cv_dir)
    saved = read_folds_file(cv_dir / FOLDS_FILE)
    k = saved["k"]
    paths = [fold_dir(cv_dir, i) for i in range(k)]
    missing = [p.name for p in paths if not RunDir(p).best.is_file() and not RunDir(p).last.is_file()]
    if missing:
        raise Vox2VoxError(
            f"{cv_dir}: {len(missing)} of {k} folds have no checkpoint yet ({', '.join(missing)}); train them "
            "(vox2vox cv --fold i) or pass the fold directories you want as --model"
        )
    return paths


def expand_model_paths(paths: Sequence[str | Path]) -> list[Path]:
    """``--model`` arguments -> checkpoint or run paths: a cross-validation directory becomes its folds.

    Anything else (a run directory or a ``.safetensors`` file) is passed through unchanged, so
    ``inference.read_model`` on each result gives the ensemble to average.
    """
    out: list[Path] = []
    for p in paths:
        out.extend(cv_model_paths(p) if is_cv_dir(p) else [Path(p)])
    return out
