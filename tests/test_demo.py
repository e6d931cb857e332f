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
    assert all(0.0 <= v <= 1.0 for v in summary["test_dice_mean"].values())
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
    assert (out / "figures" / f"{case_id}.png").is_file()

    # A second demo into the same folder refuses instead of mixing runs.
    with pytest.raises(Vox2VoxError, match="already holds"):
        run_demo(out, size="tiny", seed=3, device="cpu", progress=False)
