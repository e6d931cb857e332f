"""The README's path against a plain MONAI U-Net, on held-out cases of another source, same time.

``--method readme`` runs exactly what the README tells a new user (``vox2vox train --data
train.csv --budget 30m``, then ``vox2vox predict``) as subprocesses; ``--method unet`` trains the
quality study's plain MONAI U-Net (``benchmarks/quality.py``: UNet 8-128 with 2 residual units,
Dice+CE, Adam 1e-3, 2 mm, 48^3 patches, the paper's augmentation) on the same cases for the same
wall time. Both are scored the same way on the ``--test`` cases' original grids: per region, Dice
and HD95 (BraTS empty-mask rules), lesion-wise Dice and HD95 with false-positive components (the
BraTS 2023 glioma rule: 3 dilations, lesions under 50 mm^3 not counted) and the predicted volume
against the truth.

Run both at once, one thread each, so that they get the same share of the machine::

    OMP_NUM_THREADS=1 python benchmarks/readme_path.py --method readme --minutes 30 --out OUT/readme &
    OMP_NUM_THREADS=1 python benchmarks/readme_path.py --method unet --minutes 30 --out OUT/unet &

Defaults: train on the 6 ``brats2018-deepvoxnet2`` cases (FLAIR -> whole tumour), test on the
2 ``brats2015-deepmedic`` cases. ``--train``/``--test`` take other case folders of
``benchmarks/quality.py``'s sources (the sarcoma CTs: CT -> tumour); ``--task brats-regions`` trains
FLAIR + T1c -> the BraTS classes (cases whose labels hold the sub-regions) and scores WT, TC and ET.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import quality  # noqa: E402  (the study's sources, U-Net and scoring)
from vox2vox.data.io import read_volume  # noqa: E402
from vox2vox.data.layouts import discover  # noqa: E402
from vox2vox.data.loading import load_case, read_case  # noqa: E402
from vox2vox.report.lesions import LESION_RULES, lesion_wise  # noqa: E402
from vox2vox.report.metrics import dice, hd95  # noqa: E402

LESION_RULE = LESION_RULES["glioma"]  # one rule for every task, so the columns compare

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_manifests(train: list[str], test: list[str], out: Path, task: str) -> tuple[Path, Path, str]:
    """train.csv and test.csv (images + label + brain mask where the source has one), and the study."""
    train_csv, study, _ = quality.build_manifest(train, out / "train", task=task)
    test_csv, test_study, _ = quality.build_manifest(test, out / "test", task=task)
    if test_study != study:
        raise SystemExit(f"readme_path: training cases are {study}, test cases {test_study}")
    return train_csv, test_csv, study


def score_case(pred: np.ndarray, files, convention) -> dict:
    """Per scoring region of ``convention``: Dice, HD95, lesion-wise Dice / HD95 / false-positive
    components, and predicted / true volume, of a label map in source values on the case's grid."""
    _, raw, geometry = read_case(files)
    truth, mine = convention.region_masks(np.asarray(raw)), convention.region_masks(np.asarray(pred))
    scores = {}
    for region, t in truth.items():
        p = mine[region]
        lesions = lesion_wise(p, t, spacing=geometry.spacing, rule=LESION_RULE)
        scores[region] = {"dice": dice(p, t), "hd95": hd95(p, t, spacing=geometry.spacing),
                          "lesion_dice": lesions.dice, "lesion_hd95": lesions.hd95, "fp_lesions": lesions.fp,
                          "volume_ratio": float(p.sum()) / max(float(t.sum()), 1.0)}
    first = next(iter(scores.values()))  # WT / the tumour: the headline region
    return {"dice": first["dice"], "hd95": first["hd95"], "regions": scores}


def run_readme(train_csv: Path, test_csv: Path, out: Path, minutes: float, overrides: list[str],
               convention, init_from: str | None = None) -> dict:
    vox2vox = [sys.executable, "-m", "vox2vox.cli"]
    t0 = time.perf_counter()
    sets = [arg for o in overrides for arg in ("--set", o)] + (["--init-from", init_from] if init_from else [])
    subprocess.run([*vox2vox, "train", "--data", str(train_csv), "--budget", f"{minutes:g}m", "--out",
                    str(out / "run"), *sets], check=True)
    train_s = time.perf_counter() - t0
    return {"train_seconds": train_s, **predict_and_score(test_csv, out, convention)}


def predict_and_score(test_csv: Path, out: Path, convention) -> dict:
    """``vox2vox predict`` with the run's defaults, then WT Dice and HD95 on the test cases' grids."""
    # Predict from the images alone (no label column), as on new scans.
    spec = discover(test_csv)
    subprocess.run([sys.executable, "-m", "vox2vox.cli", "predict", "--model", str(out / "run"), "--input",
                    str(test_csv), "--output", str(out / "pred"), "--no-progress"], check=True)
    scores = {}
    for case in spec.cases:
        pred, _ = read_volume(out / "pred" / f"{case.case_id}.nii.gz")
        scores[case.case_id] = score_case(pred, case, convention)
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines() if line]
    return {"steps": metrics[-1]["step"] if metrics else None, "per_case": scores}


def retune(train_csv: Path, test_csv: Path, out: Path, convention) -> dict:
    """Choose a finished README-path run's prediction options again with this code (on the same
    validation cases, as training does at its end), record them in its model, predict and score.
    Training is not repeated: this measures a change to the choice, not to training."""
    from vox2vox.data.labels import get_convention
    from vox2vox.infer.inference import read_model
    from vox2vox.model.outputs import output_head
    from vox2vox.rundir import RunDir
    from vox2vox.train.selection import choose_prediction_options, record_prediction_options

    best = RunDir(out / "run").best
    model = read_model(best)
    convention = get_convention(model.state["convention"])
    val = set(json.loads((out / "run" / "split.json").read_text())["val"])
    chosen_cases = [c for c in discover(train_csv).cases if c.case_id in val]
    cases = [load_case(c, convention=convention, prep=model.config.preprocess) for c in chosen_cases]
    choice = choose_prediction_options(model.generator, cases, convention, model.config.train.patch_size,
                                       head=output_head(convention, model.config.generator.output),
                                       case_ids=[c.case_id for c in chosen_cases])
    record_prediction_options(best, choice)
    chosen = {k: choice[k] for k in ("tta", "foreground_threshold", "largest_component")}
    return {"chosen": chosen, **predict_and_score(test_csv, out, convention)}


def run_unet(train_csv: Path, test_csv: Path, out: Path, minutes: float, seed: int, width: int,
             patch: list[int], study: quality.Study) -> dict:
    study = dataclasses.replace(study, patch=tuple(patch))
    settings = quality.Settings(width=width, batch=2, lr_unet=1e-3, seed=seed)
    train = [load_case(c, convention=study.convention, prep=study.preprocess) for c in discover(train_csv).cases]
    trained = quality.train_unet(study, settings, train, out / "unet", 60.0 * minutes)
    scores = {}
    for case in discover(test_csv).cases:
        loaded = load_case(case, convention=study.convention, prep=study.preprocess)
        pred = quality.predict_source([trained["model"].eval()], loaded, study)
        scores[case.case_id] = score_case(pred, case, study.convention)
    return {"train_seconds": trained["train_seconds"], "steps": trained["steps"], "per_case": scores}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=["readme", "unet", "retune"], required=True,
                   help="retune: choose the prediction options of the --method readme run in --out again")
    p.add_argument("--task", choices=["tumour", "brats-regions"], default="tumour",
                   help="tumour: FLAIR or CT -> tumour; brats-regions: FLAIR + T1c -> BraTS classes, scored on WT/TC/ET")
    p.add_argument("--train", action="append", default=None)
    p.add_argument("--test", action="append", default=None)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=None,
                   help="the run's seed (default 0); for --method readme it is `--set train.seed=SEED`")
    p.add_argument("--out", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="--method readme: a config override passed to `vox2vox train` (a variant of the plan)")
    p.add_argument("--init-from", default=None, metavar="MODEL",
                   help="--method readme: fine-tune this model (e.g. builtin:brain-tumour) instead of training from scratch")
    p.add_argument("--unet-width", type=int, default=8, help="--method unet: the U-Net's first width")
    p.add_argument("--unet-patch", type=int, nargs=3, default=[48, 48, 48],
                   help="--method unet: its training patch (multiples of 16), at 2 mm")
    args = p.parse_args()
    if args.seed is not None and any(o.replace(" ", "").startswith("train.seed=") for o in args.overrides):
        p.error("give the seed once: --seed or --set train.seed=...")
    if args.method == "readme" and args.seed is not None:  # else --seed would silently not reach `vox2vox train`
        args.overrides = [f"train.seed={args.seed}", *args.overrides]
    args.seed = 0 if args.seed is None else args.seed
    out = Path(args.out)
    train_csv, test_csv, study_name = write_manifests(args.train or [str(SHARED / "brats2018-deepvoxnet2")],
                                                      args.test or [str(SHARED / "brats2015-deepmedic")], out, args.task)
    study = quality.make_study(study_name, out / "cache", task=args.task)
    if args.task == "brats-regions":  # the label values say nothing of BraTS 2015's meaning by themselves
        args.overrides = [f'data.convention="{study.convention.name}"', *args.overrides]
    load = os.getloadavg()[0]
    if args.method == "retune":
        previous = json.loads((out / "result.json").read_text())
        result = {**previous, **retune(train_csv, test_csv, out, study.convention), "retuned_from": previous["per_case"]}
        args.method, args.overrides = "readme", previous.get("overrides", [])
    elif args.method == "readme":
        result = run_readme(train_csv, test_csv, out, args.minutes, args.overrides, study.convention, args.init_from)
    else:
        result = run_unet(train_csv, test_csv, out, args.minutes, args.seed, args.unet_width, args.unet_patch, study)
    dices = [s["dice"] for s in result["per_case"].values()]
    regions = next(iter(result["per_case"].values()))["regions"]
    means = {r: {k: float(np.mean([c["regions"][r][k] for c in result["per_case"].values()]))
                 for k in regions[r]} for r in regions}
    result.update(method=args.method, task=args.task, region_means=means, overrides=args.overrides, init_from=args.init_from, unet_width=args.unet_width,
                  unet_patch=args.unet_patch, minutes=args.minutes, machine=quality.machine(),
                  load_before=load, load_after=os.getloadavg()[0], wt_dice_mean=float(np.mean(dices)))
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("method", "task", "steps", "train_seconds", "wt_dice_mean", "region_means")}))


if __name__ == "__main__":
    main()
