"""Quality against time: what more training time buys the README path and a plain U-Net.

For each budget (default 10 minutes, 30 minutes, 2 hours) and seed, the methods run side by side
as separate processes of ``benchmarks/readme_path.py`` (one thread each unless ``--threads``), so
each gets the same share of the machine, and are scored on the same unseen cases (per region:
Dice, HD95 and the lesion-wise scores, on the cases' own grids). Methods:

- ``readme``: exactly the README's path (``vox2vox train --data train.csv --budget B`` as planned,
  then ``vox2vox predict``);
- ``critic`` / ``dice-only``: the same plan with ``loss.adversarial=true`` / ``false`` (the plan
  decides the term by its recorded rule, so one of the two equals ``readme`` at a given budget);
- ``cheap-critic``: the term on with the critic judging the pair pooled by 2
  (``discriminator.input_scale=2``, +13% a CPU step instead of +55%: benchmarks/RESULTS.md);
- ``unet``: the plain MONAI U-Net of ``benchmarks/quality.py`` (default width 16, 80x96x80 patches
  at 2 mm: the peer of the recent rounds in benchmarks/RESULTS.md).

A run whose ``result.json`` exists for the same budget is read, not repeated, so an interrupted
curve resumes. Prints one JSON line per run, then one per (budget, method): means over seeds of
each region's scores, and of the steps. ``--task``, ``--train`` and ``--test`` go to readme_path.py
(the sarcoma CTs, or ``--task brats-regions``).

    python benchmarks/budget_curve.py --out OUT/curve --seeds 0 1 2                   # 10m, 30m, 2h
    python benchmarks/budget_curve.py --out OUT/curve --budgets 30m --methods readme dice-only critic cheap-critic unet
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from vox2vox.config import parse_duration

HERE = Path(__file__).resolve().parent
METHOD_ARGS = {
    "readme": ["--method", "readme"],
    "critic": ["--method", "readme", "--set", "loss.adversarial=true"],
    "dice-only": ["--method", "readme", "--set", "loss.adversarial=false"],
    "cheap-critic": ["--method", "readme", "--set", "loss.adversarial=true", "--set", "discriminator.input_scale=2"],
    "unet": ["--method", "unet"],
}


def run_folder(out: Path, budget: str, method: str, seed: int) -> Path:
    return out / f"{budget}" / f"{method}_s{seed}"


def command(method: str, seed: int, minutes: float, folder: Path, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, str(HERE / "readme_path.py"), *METHOD_ARGS[method], "--minutes", f"{minutes:.6g}",
           "--out", str(folder), "--seed", str(seed), "--task", args.task]
    if method == "unet":  # --seed seeds both methods (readme_path.py passes it on as train.seed)
        cmd += ["--unet-width", str(args.unet_width), "--unet-patch", *map(str, args.unet_patch)]
    for path in args.train or []:
        cmd += ["--train", path]
    for path in args.test or []:
        cmd += ["--test", path]
    return cmd


def finished(folder: Path, minutes: float) -> dict | None:
    result = folder / "result.json"
    if not result.is_file():
        return None
    doc = json.loads(result.read_text())
    return doc if abs(float(doc.get("minutes", -1)) - minutes) < 1e-6 else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", nargs="+", default=["10m", "30m", "2h"])
    p.add_argument("--methods", nargs="+", choices=list(METHOD_ARGS), default=["readme", "unet"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--task", choices=["tumour", "brats-regions"], default="tumour", help="readme_path.py's --task")
    p.add_argument("--train", action="append", default=None, help="training case folders (readme_path.py's)")
    p.add_argument("--test", action="append", default=None, help="unseen test case folders")
    p.add_argument("--unet-width", type=int, default=16)
    p.add_argument("--unet-patch", type=int, nargs=3, default=[80, 96, 80])
    p.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = Path(args.out)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    for budget in sorted(args.budgets, key=parse_duration):
        minutes = parse_duration(budget, key="--budgets") / 60.0
        for seed in args.seeds:
            folders = {m: run_folder(out, budget, m, seed) for m in args.methods}
            todo = {m: f for m, f in folders.items() if finished(f, minutes) is None}
            # Side by side: the methods of one (budget, seed) share the machine equally.
            procs = [subprocess.Popen(command(m, seed, minutes, f, args), env=env) for m, f in todo.items()]
            codes = [proc.wait() for proc in procs]
            if any(codes):
                failed = [m for m, c in zip(todo, codes, strict=True) if c]
                sys.exit(f"budget_curve: {', '.join(failed)} failed at budget {budget}, seed {seed}")
            for method, folder in folders.items():
                doc = finished(folder, minutes)
                assert doc is not None, folder
                hd = [c["hd95"] for c in doc["per_case"].values()]
                row = {"budget": budget, "method": method, "seed": seed, "steps": doc.get("steps"),
                       "wt_dice_mean": round(doc["wt_dice_mean"], 4),
                       "hd95_mean_mm": round(statistics.fmean(hd), 2) if hd else None,
                       "per_case_dice": {k: round(v["dice"], 4) for k, v in doc["per_case"].items()},
                       "regions": {r: {k: round(v, 4) for k, v in m.items()} for r, m in doc["region_means"].items()}}
                rows.append(row)
                print(json.dumps(row), flush=True)
    for budget in sorted(args.budgets, key=parse_duration):
        for method in args.methods:
            mine = [r for r in rows if r["budget"] == budget and r["method"] == method]
            hd = [r["hd95_mean_mm"] for r in mine if r["hd95_mean_mm"] is not None]
            print(json.dumps({"budget": budget, "method": method, "seeds": len(mine),
                              "wt_dice_mean": round(statistics.fmean(r["wt_dice_mean"] for r in mine), 4),
                              "hd95_mean_mm": round(statistics.fmean(hd), 2) if hd else None,
                              "steps_mean": round(statistics.fmean(r["steps"] or 0 for r in mine)),
                              "regions": {region: {k: round(statistics.fmean(r["regions"][region][k] for r in mine), 4)
                                                   for k in scores}
                                          for region, scores in mine[0]["regions"].items()}}), flush=True)


if __name__ == "__main__":
    main()
