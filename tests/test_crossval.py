"""Cross-validation: seeded case-level folds, one run per fold, and the folds predicting as an ensemble."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from helpers import tiny_overrides
from vox2vox.cli import main
from vox2vox.data.layouts import discover
from vox2vox.data.loading import load_case
from vox2vox.data.synthetic import write_brats_folder
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.inference import predict_dataset, predict_probabilities, read_model
from vox2vox.infer.options import PredictionOptions
from vox2vox.train.crossval import expand_model_paths, kfold_splits, prepare_folds

TINY = tiny_overrides({"train.patch_size": "[24,24,24]", "train.batch_size": "2", "train.epochs": "1",
                       "train.device": '"cpu"'})


def test_folds_are_seeded_disjoint_and_cover_every_case(tmp_path):
    ids = [f"c{i}" for i in range(10)]
    folds = kfold_splits(ids, 3, seed=7)
    assert folds == kfold_splits(list(reversed(ids)), 3, seed=7)
    vals = [f["val"] for f in folds]
    assert sorted(c for v in vals for c in v) == ids and sorted(len(v) for v in vals) == [3, 3, 4]
    for f in folds:
        assert set(f["train"]) | set(f["val"]) == set(ids) and not set(f["train"]) & set(f["val"])
    assert kfold_splits(ids, 3, seed=8) != folds
    # Saved once; a later call with other settings is refused instead of re-splitting.
    assert prepare_folds(tmp_path, ids, 3, seed=7) == folds
    assert prepare_folds(tmp_path, ids, 3, seed=7) == folds
    with pytest.raises(Vox2VoxError, match="folds.json"):
        prepare_folds(tmp_path, ids, 4, seed=7)
    with pytest.raises(Vox2VoxError, match="at least one per fold"):
        kfold_splits(ids[:2], 3, seed=0)


@pytest.mark.slow
def test_cv_three_folds_make_three_models_and_an_ensemble_prediction(tmp_path):
    data, new = tmp_path / "data", tmp_path / "new"
    write_brats_folder(data, n_cases=6, seed=3, shape=(32, 32, 24))
    write_brats_folder(new, n_cases=1, seed=4, shape=(32, 32, 24), prefix="New")
    out = tmp_path / "cv"

    # One fold alone (as one job of a scheduler array), then the rest in one call.
    assert main(["cv", "--data", str(data), "--folds", "3", "--fold", "1", "--out", str(out), "--config", "paper", *TINY]) == 0
    assert not (out / "fold_0").exists() and (out / "fold_1" / "checkpoints" / "best.safetensors").is_file()
    with pytest.raises(Vox2VoxError, match="fold_0, fold_2"):
        expand_model_paths([out])
    assert main(["cv", "--data", str(data), "--folds", "3", "--fold", "0", "--out", str(out), "--config", "paper", *TINY]) == 0
    assert main(["cv", "--data", str(data), "--folds", "3", "--fold", "2", "--out", str(out), "--config", "paper", *TINY]) == 0

    saved = json.loads((out / "folds.json").read_text())
    for i, fold in enumerate(saved["folds"]):
        split = json.loads((out / f"fold_{i}" / "split.json").read_text())
        assert split == {"train": fold["train"], "val": fold["val"]}  # validates on its held-out cases
        assert "val_dice" in json.loads((out / f"fold_{i}" / "metrics.jsonl").read_text().splitlines()[-1])
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["trained"] == 3
    # Each fold's entry is the best validation Dice in its log; the headline is their mean.
    best = {}
    for i in range(3):
        rows = [json.loads(line) for line in (out / f"fold_{i}" / "metrics.jsonl").read_text().splitlines()]
        best[f"fold_{i}"] = max(r["val_dice"] for r in rows if "val_dice" in r)
    assert summary["folds"] == best
    assert summary["mean_best_val_dice"] == pytest.approx(float(np.mean(list(best.values()))))

    # The cv directory predicts as the 3-model ensemble: softmax averaged over the fold models.
    paths = expand_model_paths([out])
    assert paths == [out / f"fold_{i}" for i in range(3)]
    models = [read_model(p) for p in paths]
    report = predict_dataset(models, new, tmp_path / "pred", PredictionOptions(progress=False))
    assert list(report.written) == ["New_000"] and not report.failed
    written = np.asarray(nib.load(report.written["New_000"]).dataobj)
    assert written.shape == (32, 32, 24) and set(np.unique(written)) <= {0, 1, 2, 4}

    spec = discover(new)
    case = load_case(spec.cases[0], convention=None, prep=models[0].config.preprocess)
    each = [predict_probabilities([m.generator], case.image) for m in models]
    together = predict_probabilities([m.generator for m in models], case.image)
    np.testing.assert_allclose(together, np.mean(each, axis=0), atol=1e-6)


def test_a_planned_fold_is_planned_on_its_own_training_cases(tmp_path, monkeypatch, capsys):
    """`cv` without --config plans each fold as `train` plans a run, from the fold's training cases
    alone, and saves the plan in the fold's folder; --budget is each fold's."""
    from helpers import make_manifest
    from vox2vox.train import planner

    manifest = make_manifest(tmp_path / "data", n_cases=4)
    seen: list[list[str]] = []
    fingerprint = planner.fingerprint_dataset

    def recording(cases, *args, **kwargs):
        seen.append(sorted(c.case_id for c in cases))
        return fingerprint(cases, *args, **kwargs)

    monkeypatch.setattr(planner, "fingerprint_dataset", recording)
    out = tmp_path / "cv"
    assert main(["cv", "--data", str(manifest), "--folds", "2", "--fold", "1", "--out", str(out), "--budget", "8s",
                 "--set", "generator.base_filters=4", "--set", "loss.adversarial=false", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    folds = json.loads((out / "folds.json").read_text())["folds"]
    assert seen == [sorted(folds[1]["train"])]  # the held-out cases took no part in the plan
    plan = (out / "fold_1" / "plan.toml").read_text()
    assert "[generator]" in plan and 'arch = "residual"' in plan and "base_filters = 4" in plan
    assert "adversarial = false" in plan and 'budget = "8s"' in plan
    config = json.loads((out / "fold_1" / "config.json").read_text())
    assert config["train"]["budget"] == "8s" and config["generator"]["arch"] == "residual"
    assert not config["loss"]["adversarial"]
    # The reasons are printed after --set applies: no reason for a critic that is switched off.
    reasons = [line for line in printed.splitlines() if line.startswith("fold 1: plan: ")]
    assert reasons and not any("LSGAN" in line for line in reasons), printed
    assert any("loss.adversarial=false" in line for line in reasons)
    assert not (out / "fold_0").exists()


def test_cv_and_plan_take_the_paper_config(tmp_path, capsys):
    data = tmp_path / "data"
    write_brats_folder(data, n_cases=2, seed=3, shape=(24, 24, 24))
    out = tmp_path / "cv"
    assert main(["cv", "--data", str(data), "--folds", "2", "--fold", "0", "--out", str(out), "--config", "paper",
                 *TINY]) == 0
    config = json.loads((out / "fold_0" / "config.json").read_text())
    assert config["generator"]["arch"] != "residual" and not (out / "fold_0" / "plan.toml").exists()
    capsys.readouterr()
    assert main(["plan", "--config", "paper"]) == 0
    assert "GiB" in capsys.readouterr().out
