"""Cross-validated MR contrast synthesis: Vox2Vox vs an L1-only generator vs voxel-wise linear regression.

Case-level k-fold cross-validation on the cases of ``--data`` (a dataset any layout reader finds,
e.g. ``../shared/data/brats2018-deepvoxnet2``: ``T1`` and ``FLAIR`` per case). Per fold:

- **vox2vox**: ``task.kind = "translate"``, L1 (lambda 100) + LSGAN (lambda_adv 1), the conditional
  discriminator on (source, synthesised) pairs (``--lambda-ssim``: plus that weight of 1 - SSIM);
- **l1**: the same generator and the same steps with no discriminator (``loss.adversarial =
  false``: the generator objective is lambda * L1 alone, i.e. lambda_adv = 0, and no compute is
  spent on a critic it would ignore);
- **linear**: least squares ``target = a . source + b`` over the foreground voxels of the training
  cases, both z-scored as the networks see them (no training steps at all).

Equal compute for the two networks means the same network and the same number of optimisation
steps (``--steps``), trained one after the other with one thread each (``OMP_NUM_THREADS=1``).
The final weights are scored (no checkpoint is chosen on held-out cases). Every method's
synthesis of a held-out case is written on the case's own grid through the library
(:func:`vox2vox.data.translation.restore_synthesis`) and scored by
:func:`vox2vox.report.translation.evaluate_translation`: MAE, PSNR, SSIM inside the real target's
foreground (the skull-stripped brain), both volumes z-scored over it.

With ``--segmentation`` each fold also trains a small whole-tumour segmenter on all channels and
scores it on the held-out cases with the real target channel, the channel synthesised by the
fold's Vox2Vox model (``predict --fill-missing``'s path) and the channel set to zero.

Command (benchmarks/RESULTS.md)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/translation.py \\
        --data ../shared/data/brats2018-deepvoxnet2 --source T1 --target FLAIR --folds 3 --steps 300 \\
        --out OUT [--segmentation --seg-steps 300]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vox2vox.atomic import ensure_folder
from vox2vox.config import Config
from vox2vox.data.cases import CaseFiles
from vox2vox.data.io import read_volume, write_volume
from vox2vox.data.layouts import discover
from vox2vox.data.loading import read_case_and_mask
from vox2vox.data.preprocessing import LoadedCase, preprocess
from vox2vox.data.translation import (
    load_translation_case,
    read_translation_case,
    restore_synthesis,
    synthesis_description,
)
from vox2vox.infer.inference import InferenceConfig, predict_dataset, read_model
from vox2vox.infer.options import PredictionOptions
from vox2vox.infer.translation import predict_with_filled, synthesise_case
from vox2vox.report.metrics import dice
from vox2vox.report.translation import evaluate_translation
from vox2vox.train.crossval import kfold_splits
from vox2vox.train.runs import train_on_dataset

#: The networks: MONAI's residual U-Net (the generator the quality study found fastest to learn on
#: a CPU), small enough for minutes per fold on one core, trained at 2 mm (48^3 patches see 96 mm)
#: and mapped back to the 1 mm input grid for scoring. A first round at 1 mm with 64^3 patches and
#: lr 5e-4 gave a nearly flat synthesis after 600 steps (benchmarks/RESULTS.md).
NETWORK = [
    'generator.arch="residual"', "generator.base_filters=8", "generator.max_filters=64", "generator.depth=3",
    "discriminator.base_filters=8", "discriminator.max_filters=64", "preprocess.target_spacing=[2.0,2.0,2.0]",
    "preprocess.pad_multiple=8", "train.patch_size=[48,48,48]", "train.batch_size=2", "train.patches_per_case=2",
    "train.foreground_prob=0.9", "optim.lr_g=0.001", "optim.lr_d=0.001", 'optim.schedule="poly"',
    'train.device="cpu"', 'train.select="last"', "data.val_cases=0", "train.checkpoint_every=1000000",
]


def method_config(data: Path, source: str, target: str, *, adversarial: bool, steps: int, n_train: int,
                  lambda_ssim: float = 0.0) -> Config:
    steps_per_epoch = max(1, (2 * n_train) // 2)  # patches_per_case 2, batch 2
    epochs = max(1, round(steps / steps_per_epoch))
    return Config().with_overrides([
        *NETWORK, f'data.path="{data}"', 'task.kind="translate"', f'task.source=["{source}"]',
        f'task.target=["{target}"]', f"loss.adversarial={str(adversarial).lower()}", f"train.epochs={epochs}",
        f"task.lambda_ssim={lambda_ssim}",
    ])


def write_linear(spec_cases: dict[str, CaseFiles], train_ids: list[str], test_ids: list[str], source: str,
                 target: str, prep, out: Path) -> dict[str, float]:
    """Fit target ~ a * source + b on the training cases' foreground (z-scored), write the test syntheses."""
    xs, ys = [], []
    for case_id in train_ids:
        loaded = load_translation_case(spec_cases[case_id], [source], [target], prep=prep)
        inside = loaded.label.astype(bool)
        xs.append(loaded.image[0][inside])
        ys.append(loaded.image[1][inside])
    x, y = np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.float64)
    design = np.stack([x, np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    for case_id in test_ids:
        loaded, mask = read_translation_case(spec_cases[case_id], [source], n_source=1, prep=prep)
        fake = (a * loaded.image[0] + b)[None].astype(np.float32)
        restored, scale = restore_synthesis(fake, loaded, mask, prep=prep, head="linear")
        write_volume(restored[0], loaded.geometry, out / f"{case_id}.nii.gz", dtype=np.float32,
                     description=synthesis_description(target, scale))
    return {"a": float(a), "b": float(b)}


def write_network(run: Path, spec_cases: dict[str, CaseFiles], test_ids: list[str], target: str, out: Path) -> None:
    model = read_model(run)
    for case_id in test_ids:
        volumes, scale, geometry = synthesise_case([model], spec_cases[case_id], config=InferenceConfig())
        write_volume(volumes[0], geometry, out / f"{case_id}.nii.gz", dtype=np.float32,
                     description=synthesis_description(target, scale))


def segmentation_fold(args: argparse.Namespace, fold_dir: Path, train_ids: list[str], test_ids: list[str],
                      spec) -> dict[str, dict[str, float]]:
    """WT Dice of a small segmenter on the held-out cases with the real, synthesised and zeroed target channel."""
    run = fold_dir / "segmenter"
    n_train = len(train_ids)
    epochs = max(1, round(args.seg_steps / max(1, n_train)))
    config = Config().with_overrides([
        *NETWORK, f'data.path="{args.data}"', 'data.convention="binary"', f"train.epochs={epochs}",
        'loss.dice="per_sample"', "loss.lambda_ce=1.0", "loss.adversarial=false",
    ])
    if not (run / "checkpoints" / "last.safetensors").exists():
        train_on_dataset(config, run, split=(train_ids, []), progress=False)
    seg = read_model(run)
    # A folder holding the held-out cases only (links), so every prediction path sees just them.
    test_dir = ensure_folder(fold_dir / "test_cases")
    for case_id in test_ids:
        link = test_dir / case_id
        if not link.exists():
            link.symlink_to(Path(spec.root).resolve() / case_id, target_is_directory=True)
    channels = tuple(seg.channels or ())
    test_spec = discover(test_dir)
    results: dict[str, dict[str, float]] = {}
    outputs = {"real": fold_dir / "seg_real", "synthesised": fold_dir / "seg_synth", "zeroed": fold_dir / "seg_zero"}
    predict_dataset([seg], test_dir, outputs["real"], PredictionOptions(progress=False))
    translator = read_model(fold_dir / "vox2vox" / "run")
    predict_with_filled([seg], {args.target: translator}, test_dir, outputs["synthesised"], PredictionOptions(progress=False))

    def zeroed(case: CaseFiles) -> LoadedCase:
        real = [c for c in channels if c != args.target]
        image, _, mask, geometry = read_case_and_mask(CaseFiles(case.case_id, {c: case.channels[c] for c in real}, None,
                                                                case.mask))
        volumes = dict(zip(real, image, strict=True))
        volumes[args.target] = np.zeros_like(image[0])
        stacked = np.stack([volumes[c] for c in channels])
        pre, _, record = preprocess(stacked, None, spacing=geometry.spacing, config=seg.config.preprocess, mask=mask)
        return LoadedCase(case.case_id, pre, None, geometry, record)

    predict_dataset([seg], test_dir, outputs["zeroed"], PredictionOptions(progress=False), spec=test_spec, load_input=zeroed)
    for kind, folder in outputs.items():
        for case in test_spec.cases:
            pred, _ = read_volume(folder / f"{case.case_id}.nii.gz")
            truth, _ = read_volume(case.label)
            results.setdefault(kind, {})[case.case_id] = float(dice(pred > 0, truth > 0.5))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--source", default="T1")
    parser.add_argument("--target", default="FLAIR")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps of each network per fold")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lambda-ssim", type=float, default=0.0,
                        help="vox2vox only: weight of (1 - SSIM) beside 100 x L1 and the LSGAN term")
    parser.add_argument("--segmentation", action="store_true")
    parser.add_argument("--seg-steps", type=int, default=300)
    parser.add_argument("--methods", default="vox2vox,l1,linear", help="comma-separated subset of vox2vox,l1,linear")
    parser.add_argument("--only-folds", default=None, metavar="I,J",
                        help="run only these folds (of the same seeded split), e.g. one process per fold")
    parser.add_argument("--summarise", type=Path, nargs="+", default=None, metavar="OUT",
                        help="print the table over the results.json of these output folders and stop")
    parser.add_argument("--out", type=Path, required=False)
    args = parser.parse_args()
    if args.summarise:
        by_fold: dict[int, dict] = {}  # one process per fold and method: merge their rows by fold
        for folder in args.summarise:
            for row in json.loads((folder / "results.json").read_text())["folds"]:
                into = by_fold.setdefault(row["fold"], {**row, "methods": {}})
                into["methods"].update(row["methods"])
                if "segmentation" in row:
                    into["segmentation"] = row["segmentation"]
        summarise({"folds": [by_fold[i] for i in sorted(by_fold)]})
        return
    if args.data is None or args.out is None:
        parser.error("--data and --out are needed (unless --summarise)")
    torch.set_num_threads(1)
    spec = discover(args.data)
    cases = {c.case_id: c for c in spec.cases}
    folds = kfold_splits(sorted(cases), args.folds, seed=args.seed)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "folds": []}
    ensure_folder(args.out)
    only = None if args.only_folds is None else {int(v) for v in args.only_folds.split(",")}
    for i, fold in enumerate(folds):
        if only is not None and i not in only:
            continue
        train_ids, test_ids = sorted(fold["train"]), sorted(fold["val"])
        fold_dir = ensure_folder(args.out / f"fold_{i}")
        row: dict = {"fold": i, "train": train_ids, "test": test_ids, "methods": {}}
        for method in args.methods.split(","):
            out = ensure_folder(fold_dir / method / "pred")
            t0 = time.perf_counter()
            info: dict = {}
            if method == "linear":
                prep = Config().preprocess
                info = write_linear(cases, train_ids, test_ids, args.source, args.target, prep, out)
            else:
                config = method_config(args.data, args.source, args.target, adversarial=method == "vox2vox",
                                       steps=args.steps, n_train=len(train_ids),
                                       lambda_ssim=args.lambda_ssim if method == "vox2vox" else 0.0)
                run = fold_dir / method / "run"
                if not (run / "checkpoints" / "last.safetensors").exists():
                    result = train_on_dataset(config, run, split=(train_ids, []), progress=False)
                    info = {"steps": result.steps, "epochs": result.epochs}
                trained = time.perf_counter()
                info["train_seconds"] = round(trained - t0, 1)
                write_network(run, cases, test_ids, args.target, out)
            info["seconds"] = round(time.perf_counter() - t0, 1)
            scored = evaluate_translation(out, args.data, target=args.target, source=args.source,
                                          out_csv=fold_dir / method / "scores.csv")
            info["cases"] = {str(r["case"]): {k: float(r[k]) for k in ("mae", "psnr", "ssim")} for r in scored.rows}
            row["methods"][method] = info
            print(f"fold {i} {method}: " + ", ".join(
                f"{k} {np.mean([c[k] for c in info['cases'].values()]):.4f}" for k in ("mae", "psnr", "ssim"))
                + f" ({info['seconds']} s)", flush=True)
        if args.segmentation:
            row["segmentation"] = segmentation_fold(args, fold_dir, train_ids, test_ids, spec)
            print(f"fold {i} WT Dice: " + ", ".join(
                f"{k} {np.mean(list(v.values())):.3f}" for k, v in row["segmentation"].items()), flush=True)
        results["folds"].append(row)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    summarise(results)


def summarise(results: dict) -> None:
    print(f"\n{len(results['folds'])} fold(s): {', '.join(str(f['fold']) for f in results['folds'])}")
    print("method   | MAE (mean over cases) | PSNR dB | SSIM   | steps per fold")
    for method in ("vox2vox", "l1", "linear"):
        if not all(method in f["methods"] for f in results["folds"]):
            continue
        per_case = [c for f in results["folds"] for c in f["methods"][method]["cases"].values()]
        steps = [str(f["methods"][method].get("steps", "-")) for f in results["folds"]]
        print(f"{method:8s} | {np.mean([c['mae'] for c in per_case]):.4f} +- {np.std([c['mae'] for c in per_case]):.4f}"
              f" | {np.mean([c['psnr'] for c in per_case]):.2f} +- {np.std([c['psnr'] for c in per_case]):.2f}"
              f" | {np.mean([c['ssim'] for c in per_case]):.4f} +- {np.std([c['ssim'] for c in per_case]):.4f}"
              f" | {', '.join(steps)}")
    if all("segmentation" in f for f in results["folds"]):
        for kind in ("real", "synthesised", "zeroed"):
            values = [v for f in results["folds"] for v in f["segmentation"][kind].values()]
            print(f"WT Dice with {kind} channel: {np.mean(values):.3f} +- {np.std(values):.3f}")


if __name__ == "__main__":
    main()
