"""A missing contrast, end to end: translation at equal wall time, and what the synthesis does to segmentation.

Seeded case-level k-fold cross-validation on ``--data`` (e.g. ``../shared/data/brats2018-deepvoxnet2``:
``T1``, ``FLAIR`` and the whole-tumour label ``GT_W`` per case), repeated for every ``--seeds``. Per fold:

- **vox2vox**: ``task.kind = "translate"``, 100 x L1 + LSGAN with the conditional critic;
- **l1**: the same generator with no critic (``loss.adversarial = false``);
- **linear**: least squares ``target = a . sources + b`` on the training cases' foreground voxels.

The two networks get the SAME WALL TIME (``train.budget = --budget`` each, trained one after the
other with the same threads, which goes first alternating by fold), not the same steps: the critic
costs time per step, so L1 alone takes more steps; the steps each reached are printed. Each held-out synthesis is scored (MAE, PSNR, SSIM,
both volumes z-scored over the region) inside the brain (the real target's foreground, as
``evaluate --task translate``) and inside the tumour (the label's foreground; SSIM needs whole
11^3 windows there, so a small tumour scores no SSIM and is left out of that mean).

Then a segmenter trained with channel dropout (``augment.channel_dropout``) on the sources and the
target gets ``--seg-budget``, and ``vox2vox fill-check`` (:func:`vox2vox.report.fill_check.fill_check`)
measures on the held-out cases the Dice (mean over the label convention's regions; whole tumour on
the shared BraTS 2018 cases) with the real target, with each network's synthesis, and with the
target absent; ``route`` is what ``predict --fill-missing`` would then use (the synthesis where
the record shows a gain of at least ``--min-gain``, else the absent channel). That record is
measured on the very cases it is applied to, so its route never scores below the absent one;
``held_out_route_dice`` decides each case's route from the other held-out cases only, as on new
cases.

Full scale (benchmarks/RESULTS.md: 30 minutes a method and fold, 3 folds, 2 seeds)::

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/missing_contrast.py \\
        --data ../shared/data/brats2018-deepvoxnet2 --source T1 --target FLAIR --folds 3 --seeds 0,1 \\
        --budget 30m --seg-budget 30m --out OUT

``--planned`` trains both networks with the plan ``vox2vox train`` makes for the budget from each
fold's training cases (the finest spacing the budget allows) instead of the fixed 1.5 mm networks.
A run that fails (e.g. diverges) is reported and left out of the table, never scored.
``--summarise OUT [OUT ...]`` prints the table over finished output folders (one process per seed
or fold: ``--only-folds``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from vox2vox.atomic import ensure_folder
from vox2vox.config import Config
from vox2vox.data.cases import CaseFiles, DatasetSpec
from vox2vox.data.io import read_volume, write_volume
from vox2vox.data.layouts import discover
from vox2vox.data.manifest import write_spec_manifest
from vox2vox.data.translation import (
    load_translation_case,
    read_translation_case,
    restore_synthesis,
    synthesis_description,
)
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.inference import InferenceConfig, read_model
from vox2vox.infer.translation import synthesise_case
from vox2vox.report.fill_check import DEFAULT_MIN_GAIN, fill_check
from vox2vox.report.image_metrics import translation_scores
from vox2vox.report.translation import evaluate_translation
from vox2vox.train.crossval import kfold_splits
from vox2vox.train.planned import PlanRequest, plan_run
from vox2vox.train.runs import train_on_dataset

#: Both networks and the segmenter: MONAI's residual U-Net, small enough for a CPU, at 1.5 mm (the
#: 2 mm of benchmarks/translation.py blurred the lesions FLAIR exists to show); ``--set`` overrides.
NETWORK = [
    'generator.arch="residual"', "generator.base_filters=8", "generator.max_filters=64", "generator.depth=3",
    "discriminator.base_filters=8", "discriminator.max_filters=64", "preprocess.target_spacing=[1.5,1.5,1.5]",
    "preprocess.pad_multiple=8", "train.patch_size=[48,48,48]", "train.batch_size=2", "train.patches_per_case=2",
    "train.foreground_prob=0.9", "optim.lr_g=0.001", "optim.lr_d=0.001", 'optim.schedule="poly"',
    'train.device="cpu"', 'train.select="last"', "data.val_cases=0", "train.epochs=1000000",
]
NETWORK_METHODS = ("vox2vox", "l1")
IMAGE_METRICS = ("mae", "psnr", "ssim")


def translation_config(args: argparse.Namespace, seed: int, *, adversarial: bool, planned: Config | None = None) -> Config:
    if planned is not None:  # the plan of the fold's training cases; L1 alone only drops the critic
        return planned.with_overrides([f"loss.adversarial={str(adversarial).lower()}", f"train.seed={seed}"])
    return Config().with_overrides([
        *NETWORK, f'data.path="{args.data}"', 'task.kind="translate"', f"task.source={json.dumps(args.sources)}",
        f'task.target=["{args.target}"]', f"loss.adversarial={str(adversarial).lower()}",
        f'train.budget="{args.budget}"', f"train.seed={seed}", *args.set,
    ])


def segmenter_config(args: argparse.Namespace, seed: int) -> Config:
    convention = [f'data.convention="{args.convention}"'] if args.convention else []
    return Config().with_overrides([
        *NETWORK, f'data.path="{args.data}"', *convention, f"data.channels={json.dumps([*args.sources, args.target])}",
        f"augment.channel_dropout={args.channel_dropout}", 'loss.dice="per_sample"', "loss.lambda_ce=1.0",
        "loss.adversarial=false", f'train.budget="{args.seg_budget}"', f"train.seed={seed}", *args.set,
    ])


def plan_translation(args: argparse.Namespace, seed: int, train_ids: list[str], fold_dir: Path) -> Config:
    """``vox2vox train``'s plan for the translation at ``--budget`` from the fold's training cases
    (spacing, patch and network chosen for this machine and budget), ``plan.toml`` kept beside it."""
    request = Config().with_overrides([
        f'data.path="{args.data}"', "data.val_cases=0", 'task.kind="translate"',
        f"task.source={json.dumps(args.sources)}", f'task.target=["{args.target}"]', 'train.device="cpu"',
        f'train.budget="{args.budget}"', f"train.seed={seed}"])
    planned = plan_run(request, PlanRequest(overrides=("data.val_cases=0", *args.set), budget_given=True),
                       case_ids=train_ids, progress=False)
    (fold_dir / "plan.toml").write_text(planned.toml)
    return planned.config


def write_linear(cases: dict[str, CaseFiles], train_ids: list[str], test_ids: list[str], sources: list[str],
                 target: str, out: Path) -> dict[str, list[float]]:
    """Fit target ~ a . sources + b on the training cases' foreground (z-scored as the networks see
    them), write each test case's synthesis on its own grid."""
    prep = Config().preprocess
    xs, ys = [], []
    for case_id in train_ids:
        loaded = load_translation_case(cases[case_id], sources, [target], prep=prep)
        inside = loaded.label.astype(bool)
        xs.append(loaded.image[: len(sources)][:, inside].T)
        ys.append(loaded.image[len(sources)][inside])
    x, y = np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)
    coefficients, *_ = np.linalg.lstsq(np.column_stack([x, np.ones(len(x))]), y, rcond=None)
    for case_id in test_ids:
        loaded, mask = read_translation_case(cases[case_id], sources, n_source=len(sources), prep=prep)
        fake = (np.tensordot(coefficients[:-1], loaded.image[: len(sources)], axes=1) + coefficients[-1])
        restored, scale = restore_synthesis(fake[None].astype(np.float32), loaded, mask, prep=prep, head="linear")
        write_volume(restored[0], loaded.geometry, out / f"{case_id}.nii.gz", dtype=np.float32,
                     description=synthesis_description(target, scale))
    return {"coefficients": [float(c) for c in coefficients]}


def write_network(run: Path, cases: dict[str, CaseFiles], test_ids: list[str], target: str, out: Path) -> None:
    model = read_model(run)
    for case_id in test_ids:
        volumes, scale, geometry = synthesise_case([model], cases[case_id], config=InferenceConfig())
        write_volume(volumes[0], geometry, out / f"{case_id}.nii.gz", dtype=np.float32,
                     description=synthesis_description(target, scale))


def score_translation(out: Path, test_manifest: Path, cases: dict[str, CaseFiles], args: argparse.Namespace,
                      csv: Path) -> dict[str, dict[str, float]]:
    """Per case: the brain's scores (``evaluate --task translate``'s rule) and the tumour's (``tumour_*``)."""
    scored = evaluate_translation(out, test_manifest, target=args.target, source=args.sources[0], out_csv=csv)
    per_case = {str(r["case"]): {k: float(r[k]) for k in IMAGE_METRICS} for r in scored.rows}
    for case_id, row in per_case.items():
        real, _ = read_volume(cases[case_id].channels[args.target])
        fake, _ = read_volume(out / f"{case_id}.nii.gz")
        label, _ = read_volume(cases[case_id].label)  # type: ignore[arg-type]
        tumour = label > 0.5
        if not tumour.any():
            continue
        scores = translation_scores(fake.astype(np.float32), real.astype(np.float32), tumour, with_ssim=False)
        row.update(tumour_mae=scores["mae"], tumour_psnr=scores["psnr"])
        try:
            row["tumour_ssim"] = translation_scores(fake.astype(np.float32), real.astype(np.float32), tumour)["ssim"]
        except Vox2VoxError:  # no voxel of the tumour has a whole SSIM window inside it
            row["tumour_ssim"] = math.nan
    return per_case


def run_fold(args: argparse.Namespace, spec: DatasetSpec, seed: int, fold: int, train_ids: list[str],
             test_ids: list[str]) -> dict:
    cases = {c.case_id: c for c in spec.cases}
    fold_dir = ensure_folder(args.out / f"seed_{seed}" / f"fold_{fold}")
    test_manifest = write_spec_manifest(dataclasses.replace(spec, cases=tuple(cases[i] for i in test_ids)),
                                        fold_dir / "test_cases.csv")
    row: dict = {"seed": seed, "fold": fold, "train": train_ids, "test": test_ids, "methods": {}}
    # The networks train one after the other in one process: alternate which goes first, so one-time
    # warm-ups (allocator, kernels) do not always fall in the same method's budget.
    networks = [m for m in args.methods if m in NETWORK_METHODS]
    order = (networks if (seed + fold) % 2 == 0 else networks[::-1]) + [m for m in args.methods if m == "linear"]
    planned = plan_translation(args, seed, train_ids, fold_dir) if args.planned and networks else None
    for method in order:
        out = ensure_folder(fold_dir / method / "pred")
        t0 = time.perf_counter()
        info: dict = {}
        if method == "linear":
            info = write_linear(cases, train_ids, test_ids, args.sources, args.target, out)
        else:
            run, failed = fold_dir / method / "run", fold_dir / method / "failed.txt"
            if not failed.exists() and not (run / "checkpoints" / "last.safetensors").exists():
                config = translation_config(args, seed, adversarial=method == "vox2vox", planned=planned)
                try:
                    result = train_on_dataset(config, run, split=(train_ids, []), progress=False)
                    info = {"steps": result.steps, "epochs": result.epochs}
                except Vox2VoxError as err:  # e.g. a diverged run: reported, never scored as if it had trained
                    failed.write_text(str(err) + "\n")
            if failed.exists():
                row["methods"][method] = {"failed": failed.read_text().strip()}
                print(f"seed {seed} fold {fold} {method}: FAILED: {row['methods'][method]['failed']}", flush=True)
                continue
            info["train_seconds"] = round(time.perf_counter() - t0, 1)
            write_network(run, cases, test_ids, args.target, out)
        info["cases"] = score_translation(out, test_manifest, cases, args, fold_dir / method / "scores.csv")
        row["methods"][method] = info
        print(f"seed {seed} fold {fold} {method}: {_means(info['cases'])}"
              + (f" ({info.get('steps', '?')} steps in {info['train_seconds']} s)" if "train_seconds" in info else ""),
              flush=True)
    if args.seg_budget:
        seg_run = fold_dir / "segmenter"
        if not (seg_run / "checkpoints" / "last.safetensors").exists():
            train_on_dataset(segmenter_config(args, seed), seg_run, split=(train_ids, []), progress=False)
        segmenter = read_model(seg_run)
        row["segmentation"] = {}
        for method in (m for m in args.methods if m in NETWORK_METHODS and "failed" not in row["methods"][m]):
            record = fill_check([segmenter], read_model(fold_dir / method / "run"), test_manifest,
                                channel=args.target, min_gain=args.min_gain, progress=False)
            route = "synthesised" if record.helps else record.fallback
            held_out = cross_fitted_routes(record.per_case, record.fallback, args.min_gain)
            held_out_dice = float(np.mean([record.per_case[c][r] for c, r in held_out.items()]))
            row["segmentation"][method] = {"dice": record.dice, "regions": record.regions,
                                           "per_case": record.per_case, "route": route, "gain": record.gain,
                                           "held_out_routes": held_out, "held_out_route_dice": held_out_dice}
            print(f"seed {seed} fold {fold} Dice with {args.target} real {record.dice['real']:.3f}, synthesised by "
                  f"{method} {record.dice['synthesised']:.3f}, absent {record.dice[record.fallback]:.3f}: "
                  f"fill-missing takes {route}; decided on the other cases {held_out_dice:.3f}", flush=True)
    return row


def cross_fitted_routes(per_case: dict[str, dict[str, float]], fallback: str, min_gain: float) -> dict[str, str]:
    """Each case's route decided, as ``predict --fill-missing`` decides, from a record of the OTHER
    cases only: the fold's record is measured on the cases it is then applied to, so its own route
    can never score below the fallback; this one can, as on new cases (no other case: the fallback)."""
    routes = {}
    for case_id in per_case:
        others = [v for c, v in per_case.items() if c != case_id]
        gain = np.mean([v["synthesised"] - v[fallback] for v in others]) if others else -math.inf
        routes[case_id] = "synthesised" if gain >= min_gain else fallback
    return routes


def _means(per_case: dict[str, dict[str, float]]) -> str:
    keys = [k for k in (*IMAGE_METRICS, *(f"tumour_{m}" for m in IMAGE_METRICS)) if any(k in c for c in per_case.values())]
    return ", ".join(f"{k} {np.nanmean([c.get(k, math.nan) for c in per_case.values()]):.4f}" for k in keys)


def summarise(results: dict) -> None:
    rows = results["folds"]
    runs = ", ".join(f"({r['seed']}, {r['fold']})" for r in rows)
    print(f"\n{len(rows)} fold run(s) (seed, fold): {runs}")
    print("method   | SSIM brain      | PSNR brain dB  | SSIM tumour     | PSNR tumour dB | steps (mean)")
    for method in ("vox2vox", "l1", "linear"):
        if not all(method in r["methods"] for r in rows):
            continue
        failed = [r for r in rows if "failed" in r["methods"][method]]
        if failed:
            print(f"{method:8s} | FAILED in {len(failed)} fold run(s), left out of its row: "
                  f"{failed[0]['methods'][method]['failed']}")
        cases = [c for r in rows if "failed" not in r["methods"][method] for c in r["methods"][method]["cases"].values()]
        if not cases:
            continue

        def stat(key: str, digits: int, cases: list = cases) -> str:
            values = np.array([c.get(key, math.nan) for c in cases], dtype=float)
            return f"{np.nanmean(values):.{digits}f} +- {np.nanstd(values):.{digits}f}"

        steps = [r["methods"][method].get("steps") for r in rows if "failed" not in r["methods"][method]]
        mean_steps = "-" if None in steps else f"{np.mean(steps):.0f}"
        print(f"{method:8s} | {stat('ssim', 4)} | {stat('psnr', 2)} | {stat('tumour_ssim', 4)} | "
              f"{stat('tumour_psnr', 2)} | {mean_steps}")
    segmented = [r for r in rows if "segmentation" in r]
    for method in NETWORK_METHODS:
        if not segmented or not all(method in r["segmentation"] for r in segmented):
            continue
        runs = [r["segmentation"][method] for r in segmented]
        dice = {k: [s["dice"][k] for s in runs if k in s["dice"]] for k in ("real", "synthesised", "absent", "zeroed")}
        route = [s["dice"][s["route"]] for s in runs]
        held_out = [s["held_out_route_dice"] for s in runs]
        print(f"Dice ({method} translator): " + ", ".join(f"{k} {np.mean(v):.3f} +- {np.std(v):.3f}"
                                                          for k, v in dice.items() if v)
              + f"; route fill-missing takes {np.mean(route):.3f} ({', '.join(s['route'] for s in runs)}), "
                f"decided on the other cases {np.mean(held_out):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--source", default="T1", help="source channel(s), comma-separated (e.g. T1 or t1,t1ce,t2)")
    parser.add_argument("--target", default="FLAIR")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--seeds", default="0,1", help="comma-separated; each seed its own fold split and weights")
    parser.add_argument("--budget", default="30m", help="wall time of each network per fold (train.budget)")
    parser.add_argument("--seg-budget", default="30m", help="the segmenter's train.budget per fold; 0: no segmentation")
    parser.add_argument("--channel-dropout", type=float, default=0.5, help="the segmenter's augment.channel_dropout")
    parser.add_argument("--convention", default=None, help="the segmenter's label convention (default: the layout's)")
    parser.add_argument("--min-gain", type=float, default=DEFAULT_MIN_GAIN)
    parser.add_argument("--methods", default="vox2vox,l1,linear", help="comma-separated subset of vox2vox,l1,linear")
    parser.add_argument("--only-folds", default=None, metavar="I,J", help="run only these folds of each seed's split")
    parser.add_argument("--planned", action="store_true",
                        help="train both networks with the plan `vox2vox train` makes for the budget from each fold's "
                             "training cases (spacing, patch, widths), instead of the fixed networks above")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every network (after the defaults above), e.g. train.patch_size=[32,32,32]")
    parser.add_argument("--summarise", type=Path, nargs="+", default=None, metavar="OUT",
                        help="print the table over the results.json of these output folders and stop")
    parser.add_argument("--out", type=Path, required=False)
    args = parser.parse_args()
    if args.summarise:
        summarise({"folds": [r for folder in args.summarise
                             for r in json.loads((folder / "results.json").read_text())["folds"]]})
        return
    if args.data is None or args.out is None:
        parser.error("--data and --out are needed (unless --summarise)")
    args.sources = [s for s in args.source.split(",") if s]
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = set(args.methods) - {"vox2vox", "l1", "linear"}
    if unknown:
        parser.error(f"--methods: unknown {', '.join(sorted(unknown))}")
    args.seg_budget = None if args.seg_budget in ("0", "") else args.seg_budget
    spec = discover(args.data)
    ensure_folder(args.out)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "folds": []}
    only = None if args.only_folds is None else {int(v) for v in args.only_folds.split(",")}
    for seed in (int(s) for s in args.seeds.split(",")):
        torch.manual_seed(seed)
        for i, fold in enumerate(kfold_splits(sorted(c.case_id for c in spec.cases), args.folds, seed=seed)):
            if only is not None and i not in only:
                continue
            results["folds"].append(run_fold(args, spec, seed, i, sorted(fold["train"]), sorted(fold["val"])))
            (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    summarise(results)


if __name__ == "__main__":
    main()
