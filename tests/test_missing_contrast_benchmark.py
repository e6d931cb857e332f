"""benchmarks/missing_contrast.py runs end to end at a tiny budget (its full scale is in benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from vox2vox.data.synthetic import write_brats_folder

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "generator.base_filters=4", "--set", "discriminator.base_filters=4",
        "--set", "train.patch_size=[32,32,32]", "--set", "preprocess.target_spacing=null"]


def test_the_benchmark_compares_methods_at_equal_time_and_records_the_fill_route(tmp_path):
    data = tmp_path / "data"
    write_brats_folder(data, n_cases=3, seed=3, shape=(32, 32, 32))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, str(ROOT / "benchmarks" / "missing_contrast.py"), "--data", str(data), "--source", "t1,t2",
            "--target", "flair", "--folds", "3", "--seeds", "0", "--only-folds", "0", "--budget", "1s",
            "--seg-budget", "1s", *TINY, "--out", str(out)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "SSIM tumour" in done.stdout and "fill-missing takes" in done.stdout
    row = json.loads((out / "results.json").read_text())["folds"][0]
    assert set(row["methods"]) == {"vox2vox", "l1", "linear"}
    for method in ("vox2vox", "l1"):
        # Each network had the whole budget (a second here: a step or none on a busy machine).
        assert isinstance(row["methods"][method]["steps"], int) and row["methods"][method]["train_seconds"] >= 1.0
        seg = row["segmentation"][method]
        assert set(seg["dice"]) == {"real", "synthesised", "absent"}
        # The route is the synthesis only where it measured a gain, else the absent channel.
        assert seg["route"] == ("synthesised" if seg["gain"] >= 0.01 else "absent")
        # One held-out case per fold: no other case to decide from, so the absent channel.
        assert seg["held_out_routes"] == dict.fromkeys(row["test"], "absent")
    for method in row["methods"].values():
        for scores in method["cases"].values():
            assert math.isfinite(scores["ssim"]) and math.isfinite(scores["psnr"]) and "tumour_psnr" in scores
    again = subprocess.run([*argv[:2], "--summarise", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "vox2vox" in again.stdout and "Dice (l1 translator)" in again.stdout
