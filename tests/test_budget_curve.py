"""benchmarks/budget_curve.py runs end to end at a tiny budget on real cases, and resumes without rerunning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_budget_curve_at_a_tiny_budget(shared_data: Path, tmp_path: Path):
    argv = [sys.executable, str(ROOT / "benchmarks" / "budget_curve.py"), "--budgets", "3s",
            "--train", str(shared_data / "brats2015-deepmedic"),
            "--test", str(shared_data / "brats2018-deepvoxnet2" / "case_0"),
            "--unet-width", "4", "--unet-patch", "48", "48", "48", "--out", str(tmp_path / "curve")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    rows = [json.loads(line) for line in first.stdout.splitlines() if line.startswith('{"budget"')]
    runs, summary = [r for r in rows if "seed" in r], [r for r in rows if "seeds" in r]
    assert {r["method"] for r in runs} == {"readme", "unet"} == {r["method"] for r in summary}
    assert all(0.0 <= r["wt_dice_mean"] <= 1.0 and r["per_case_dice"] for r in runs)
    # Every arm, the U-Net's too, is scored whole-volume and lesion-wise on the same region.
    for r in runs:
        wt = r["regions"]["WT"]
        assert wt["dice"] == r["wt_dice_mean"] and 0.0 <= wt["lesion_dice"] <= 1.0
        assert wt["lesion_hd95"] >= 0.0 and wt["fp_lesions"] >= 0 and wt["volume_ratio"] >= 0.0
    # A finished run is read back, not trained again.
    t0 = time.perf_counter()
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and time.perf_counter() - t0 < 60
    assert [json.loads(line) for line in again.stdout.splitlines() if line.startswith('{"budget"')] == rows
