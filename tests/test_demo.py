"""The demo end to end at a tiny size: every stage runs and leaves its outputs."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from vox2vox.demo import run_demo
from vox2vox.errors import Vox2VoxError


@pytest.mark.slow
def test_tiny_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo"
    summary = run_demo(out, size="tiny", seed=3, device="cpu", progress=False)

    assert summary["epochs"] == 2
    assert set(summary["test_dice_mean"]) == {"WT", "TC", "ET"}
    assert json.loads((out / "summary.json").read_text()) == summary
    for name in ("best.safetensors", "last.safetensors"):
        assert (out / "run" / "checkpoints" / name).is_file()
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (out / "evaluation.csv").is_file()
    assert (out / "figures" / "training_curves.png").stat().st_size > 1000

    # Each prediction lies on its input: same shape and affine, BraTS label values only.
    preds = sorted((out / "predictions").glob("*.nii.gz"))
    assert len(preds) == 1
    case_id = preds[0].name.removesuffix(".nii.gz")
    flair = nib.load(out / "data" / "test" / case_id / f"{case_id}_flair.nii.gz")
    pred = nib.load(preds[0])
    assert pred.shape == flair.shape
    np.testing.assert_allclose(pred.affine, flair.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 4}
    # The reported test Dice is the Dice of the written prediction against the truth file.
    truth = np.asarray(nib.load(out / "data" / "test" / case_id / f"{case_id}_seg.nii.gz").dataobj)
    labels = np.asarray(pred.dataobj)
    for region, values in {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}.items():
        p, t = np.isin(labels, values), np.isin(truth, values)
        expected = 1.0 if not (p.any() or t.any()) else 2 * np.sum(p & t) / (p.sum() + t.sum())
        assert summary["test_dice_mean"][region] == pytest.approx(expected, abs=1e-6), region
    assert (out / "figures" / f"{case_id}.png").is_file()

    # A second demo into the same folder refuses instead of mixing runs.
    with pytest.raises(Vox2VoxError, match="already holds"):
        run_demo(out, size="tiny", seed=3, device="cpu", progress=False)
