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
from vox2vox.infer.inference import load_model, predict_dataset, predict_probabilities
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
    assert main(["cv", "--data", str(data), "--folds", "3", "--fold", "1", "--out", str(out), *TINY]) == 0
    assert not (out / "fold_0").exists() and (out / "fold_1" / "checkpoints" / "best.safetensors").is_file()
    with pytest.raises(Vox2VoxError, match="fold_0, fold_2"):
        expand_model_paths([out])
    assert main(["cv", "--data", str(data), "--folds", "3", "--fold", "0", "--out", str(out), *TINY]) == 0
    assert main(["cv", "--data", str(data), "--folds", "3", "--fold", "2", "--out", str(out), *TINY]) == 0

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
    models = [load_model(p) for p in paths]
    report = predict_dataset(models, new, tmp_path / "pred", progress=False)
    assert list(report.written) == ["New_000"] and not report.failed
    written = np.asarray(nib.load(report.written["New_000"]).dataobj)
    assert written.shape == (32, 32, 24) and set(np.unique(written)) <= {0, 1, 2, 4}

    spec = discover(new)
    case = load_case(spec.cases[0], convention=None, prep=models[0].config.preprocess)
    each = [predict_probabilities([m.generator], case.image) for m in models]
    together = predict_probabilities([m.generator for m in models], case.image)
    np.testing.assert_allclose(together, np.mean(each, axis=0), atol=1e-6)
