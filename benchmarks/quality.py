"""Real-data quality study: Vox2Vox vs the same generator with Dice only vs a plain MONAI U-Net.

Case-level k-fold cross-validation inside the given cases, each method trained for the same
wall-clock budget, scored on the held-out cases of every fold on their ORIGINAL grid (Dice and
HD95 in mm, BraTS empty-mask rules, ``vox2vox.report.metrics``). Everything but the MONAI U-Net's training
loop is the library: ``datasets.write_manifest``/``discover``/``load_case`` (preprocessing and its
undo), ``augmentation.sample_patch``/``Augmenter``, ``training.fit`` (Vox2Vox and Dice-only),
``inference.predict_probabilities`` and ``metrics``.

Data: one or more ``--data`` folders of case folders as published in ``../shared/data``; the
script recognises the file names of each source and writes a manifest into ``--out``:

- ``brats2018-deepvoxnet2``: ``FLAIR.nii.gz`` + ``GT_W.nii.gz`` (whole tumour 0/1);
- ``brats2015-deepmedic``: ``Flair_subtrMeanDivStd.nii.gz`` + ``OTMultiClass.nii.gz`` (0-4, all
  tumour labels = whole tumour) + ``brainmask.nii.gz``;
- ``ct-sarcoma``: ``CT_image.nii.gz`` (HU) + ``CT_mask.nii.gz`` (tumour 0/1).

All BraTS sources are one study (input FLAIR, target whole tumour; both sources are pooled and
scored per source); the sarcoma CTs are another. The default task is binary (tumour vs rest)
because the 2018 cases carry only whole-tumour masks. ``--task brats-regions`` is the BraTS task
where the labels allow it (``brats2015-deepmedic`` only): FLAIR + T1c in, the four BraTS classes
out (2015 label 3 folded into 1), scored on WT, TC and ET.

Budget: ``--minutes`` is the training wall time of one method over all folds (``minutes / folds``
per fold); loading, prediction and scoring come on top and are recorded. On a shared machine
equal wall time is not equal compute: ``--max-steps N`` also stops every fold after N optimisation
steps (Vox2Vox rounds up to whole epochs), so methods can be compared at equal work. The
fairest equal-time comparison runs the methods side by side with one thread each
(``OMP_NUM_THREADS=1``): then each gets the same share of the same CPU whatever else runs. The Vox2Vox runs stop
at the deadline as on Ctrl-C (``fit`` finishes the current step and saves ``last``); the last
weights are scored (no checkpoint selection on held-out cases, which would leak).

Commands::

    python benchmarks/quality.py --data ../shared/data/brats2018-deepvoxnet2 \\
        --data ../shared/data/brats2015-deepmedic --minutes 8 --folds 2 --method vox2vox --out OUT
    python benchmarks/quality.py --data ../shared/data/brats2015-deepmedic --task brats-regions \\
        --minutes 8 --folds 2 --method vox2vox --out OUT3
    python benchmarks/quality.py --evaluate-only OUT/vox2vox --data OTHER_FOLDER --out OUT2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vox2vox.atomic import atomic_write_text
from vox2vox.config import Config
from vox2vox.data.augmentation import Augmenter, sample_patch
from vox2vox.data.fingerprint import fingerprint_dataset
from vox2vox.data.labels import get_convention
from vox2vox.data.layouts import discover
from vox2vox.data.loading import load_case, read_case
from vox2vox.data.manifest import write_manifest
from vox2vox.data.preprocessing import PreprocessConfig, undo_preprocessing
from vox2vox.device import detect_device
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.inference import InferenceConfig, predict_probabilities, read_model
from vox2vox.infer.postprocessing import PostprocessConfig, postprocess
from vox2vox.model.checkpoint import ModelInfo
from vox2vox.model.generator import count_parameters
from vox2vox.model.losses import generalized_dice_loss, one_hot
from vox2vox.model.outputs import output_head
from vox2vox.report.metrics import dice, hd95
from vox2vox.train.crossval import kfold_splits
from vox2vox.train.patches import PatchDataset
from vox2vox.train.planner import make_plan, plan_from_fingerprint
from vox2vox.train.training import TrainingData, fit

METHODS = ("vox2vox", "dice-only", "monai-unet")
METRICS = ("dice", "hd95", "dice_lcc", "hd95_lcc")


# ---- the sources and the two studies -------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """How one published folder names a case's files."""

    name: str
    study: str  # "brats" or "ct"
    image: str
    label: str
    mask: str | None = None
    t1c: str | None = None  # the contrast-enhanced T1, where the source has it (regions task)
    multiclass: bool = False  # labels carry the BraTS tumour sub-regions, not only the whole tumour


SOURCES = (
    Source("brats2018-deepvoxnet2", "brats", "FLAIR.nii.gz", "GT_W.nii.gz"),
    Source("brats2015-deepmedic", "brats", "Flair_subtrMeanDivStd.nii.gz", "OTMultiClass.nii.gz",
           "brainmask.nii.gz", t1c="T1c_subtrMeanDivStd.nii.gz", multiclass=True),
    Source("ct-sarcoma", "ct", "CT_image.nii.gz", "CT_mask.nii.gz"),
)


@dataclass(frozen=True)
class Study:
    """Per-study choices (recorded in the results): channel, labels, preprocessing, patch."""

    name: str
    channels: tuple[str, ...]
    convention: Any  # vox2vox.data.labels.LabelConvention; its regions are what is scored
    preprocess: PreprocessConfig
    patch: tuple[int, int, int]

    @property
    def regions(self) -> dict[str, tuple[int, ...]]:
        return dict(self.convention.regions)


def make_study(name: str, cache_dir: Path, patch: int = 48, task: str = "tumour") -> Study:
    # Both studies resample to 2 mm isotropic: BraTS brains (about 140x170x140 mm after the
    # foreground crop) become about 70x85x70 voxels, so one 48^3 patch (the default) sees about a third of a hemisphere
    # and a whole volume is one cheap forward pass. The sarcoma CTs (0.98 x 0.98 x 3.27 mm) become
    # about 75x80x85 voxels: in-plane downsampled, slices interpolated so 3D kernels are isotropic.
    spacing = (2.0, 2.0, 2.0)
    if name == "brats":
        prep = PreprocessConfig(normalize="zscore-nonzero", target_spacing=spacing, cache_dir=str(cache_dir))
        if task == "brats-regions":
            # Enhancing tumour is defined on the contrast-enhanced T1: it needs that channel.
            return Study("brats", ("flair", "t1c"), get_convention("brats2015"), prep, (patch,) * 3)
        return Study("brats", ("flair",), tumour_convention("WT"), prep, (patch,) * 3)
    # Soft-tissue window [-200, 300] HU: sarcomas (about 20-60 HU, enhancing parts higher) sit
    # between fat (-100) and bone; a [-1000, 1000] window would spend most of the [0, 1] range on
    # air and bone, which carry no tumour contrast. Scaled linearly to [0, 1].
    prep = PreprocessConfig(normalize="ct-window", ct_window=(-200.0, 300.0), target_spacing=spacing,
                            cache_dir=str(cache_dir))
    return Study("ct", ("ct",), tumour_convention("tumour"), prep, (patch,) * 3)


def tumour_convention(region: str) -> Any:
    """Binary tumour-vs-rest: 0 background, every other value (BraTS 1/2/3/4, CT 1) tumour."""
    return get_convention({"name": f"{region}-vs-rest", "values": {"0": "background", "1": region},
                           "extra_map": {"2": 1, "3": 1, "4": 1}, "regions": {region: [1]}})


def build_manifest(data: list[str], out: Path, task: str = "tumour") -> tuple[Path, str, dict[str, str]]:
    """Write ``out/manifest.csv`` for the case folders under each ``data`` path.

    ``task="brats-regions"`` takes FLAIR and T1c from sources whose labels hold the sub-regions
    and refuses any other source.

    Returns the manifest, the study name, and case id -> source name. Case ids are
    ``<source>__<folder>`` so that cases of different sources never collide.
    """
    rows: list[tuple[str, dict[str, str | Path], str | Path | None]] = []
    masks: dict[str, str | Path] = {}
    source_of: dict[str, str] = {}
    studies = set()
    for root in map(Path, data):
        folders = [root] if _match(root) else sorted(p for p in root.iterdir() if p.is_dir())
        for folder in folders:
            source = _match(folder)
            if source is None:
                continue
            studies.add(source.study)
            case_id = f"{source.name}__{folder.name}"
            if task == "brats-regions":
                if not (source.multiclass and source.t1c):
                    raise Vox2VoxError(f"{folder}: {source.name} labels carry only the whole tumour; "
                                       "--task brats-regions needs sub-region labels and a T1c image")
                channels = {"flair": folder / source.image, "t1c": folder / source.t1c}
            else:
                channels = {"flair" if source.study == "brats" else "ct": folder / source.image}
            rows.append((case_id, channels, folder / source.label))
            if source.mask:
                masks[case_id] = folder / source.mask
            source_of[case_id] = source.name
    if not rows:
        raise Vox2VoxError(f"{', '.join(data)}: no case folder with known file names "
                           f"({', '.join(s.image for s in SOURCES)})")
    if len(studies) != 1:
        raise Vox2VoxError(f"{', '.join(data)}: mixes MRI and CT cases; run one study at a time")
    out.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(out / "manifest.csv", rows, masks=masks or None)
    return manifest, studies.pop(), source_of


def _match(folder: Path) -> Source | None:
    for source in SOURCES:
        if (folder / source.image).is_file() and (folder / source.label).is_file():
            return source
    return None


# ---- one method's model, trained for a deadline ----------------------------------------------------
@dataclass(frozen=True)
class Settings:
    width: int
    batch: int
    lr_unet: float
    seed: int
    max_steps: int | None = None  # per fold; None: the deadline alone stops training
    unet_loss: str = "dicece"  # the U-Net's loss: MONAI DiceCE, or the generator's uniform GDL (a diagnostic)
    overrides: tuple[str, ...] = ()  # --set section.key=value for the Vox2Vox / Dice-only config


def vox2vox_config(study: Study, settings: Settings, *, adversarial: bool, n_train: int = 1) -> Config:
    w = settings.width
    epochs = 100000
    if settings.max_steps is not None:  # fit runs whole epochs of ceil(n_train / batch) steps
        epochs = max(1, -(-settings.max_steps // -(-n_train // settings.batch)))
    nets = {"in_channels": len(study.channels), "n_classes": study.convention.n_classes, "base_filters": w,
            "max_filters": 8 * w}
    return Config.from_dict({
        "preprocess": study.preprocess.to_json(),
        "generator": nets,
        "discriminator": nets,
        "loss": {"adversarial": adversarial},
        # Epochs are effectively unbounded unless --max-steps: the deadline stops the run.
        "train": {"epochs": epochs, "batch_size": settings.batch, "patch_size": list(study.patch),
                  "checkpoint_every": 100000, "seed": settings.seed, "device": "cpu", "amp": "off"},
    }).with_overrides(list(settings.overrides))


class Deadline:
    """Sends this process SIGINT after ``seconds``: ``fit`` then stops after the current step."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
        self.start = 0.0

    def __enter__(self) -> Deadline:
        self.start = time.perf_counter()
        self.timer.start()
        return self

    def passed(self) -> bool:
        return time.perf_counter() - self.start >= self.seconds

    def __exit__(self, *exc: object) -> None:
        self.timer.cancel()


def train_vox2vox(study: Study, settings: Settings, cases: list[Any], run_dir: Path, seconds: float,
                  *, adversarial: bool, planned: Config | None = None) -> dict[str, Any]:
    """Train through ``fit``: the planned config (which ends itself at its budget, learning rate
    decayed) or the manual one (stopped by the deadline)."""
    config = planned or vox2vox_config(study, settings, adversarial=adversarial, n_train=len(cases))
    if planned is not None:
        seconds *= 1.2  # the plan's own budget ends the run; the deadline only guards against a hang
    info = ModelInfo(channels=tuple(study.channels), layout="manifest", convention=study.convention.to_json())
    t0 = time.perf_counter()
    try:
        with Deadline(seconds):
            fit(config, TrainingData([(c.image, c.label) for c in cases], sample_patch, Augmenter(config.augment)),
                run_dir, model_info=info, progress=False)
    except KeyboardInterrupt:
        pass  # the deadline: fit saved checkpoints/last.safetensors after the current step
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    ckpt = run_dir / "checkpoints" / "last.safetensors"
    model = read_model(ckpt).generator
    return {"model": model, "checkpoint": str(ckpt), "train_seconds": time.perf_counter() - t0,
            "epochs_logged": len(rows), "last_row": rows[-1] if rows else None,
            "parameters_g": count_parameters(model)}


class SoftmaxUNet(torch.nn.Module):
    """A MONAI U-Net whose forward returns probabilities, as ``predict_probabilities`` expects."""

    def __init__(self, width: int, *, in_channels: int = 1, n_classes: int = 2, size_multiple: int = 16) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.net = UNet(spatial_dims=3, in_channels=in_channels, out_channels=n_classes,
                        channels=tuple(width * 2**i for i in range(5)), strides=(2, 2, 2, 2),
                        num_res_units=2, norm="instance")
        self.config = argparse.Namespace(size_multiple=size_multiple)

    def forward(self, x: torch.Tensor, *, return_logits: bool = False) -> torch.Tensor:
        logits = self.net(x)
        return logits if return_logits else torch.softmax(logits, dim=1)


def train_unet(study: Study, settings: Settings, cases: list[Any], run_dir: Path, seconds: float) -> dict[str, Any]:
    """The peer a user would pick: MONAI UNet, Dice+CE, Adam; same patches, augmentation and time."""
    from monai.losses import DiceCELoss

    torch.manual_seed(settings.seed)
    n_classes = study.convention.n_classes
    model = SoftmaxUNet(settings.width, in_channels=len(study.channels), n_classes=n_classes)
    if settings.unet_loss == "gdl":
        # The Vox2Vox generator's Dice term (uniform weights) on the U-Net: separates the loss's
        # effect from the architecture's.
        def loss_fn(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            return generalized_dice_loss(one_hot(label[:, 0], n_classes), torch.softmax(logits, 1),
                                         weighting="uniform")
    else:
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr_unet)
    augment = Augmenter(Config().augment)
    train = [(c.image, c.label) for c in cases]
    deadline = Deadline(seconds)
    deadline.start = time.perf_counter()
    steps = epoch = 0
    losses: list[float] = []
    limit = settings.max_steps if settings.max_steps is not None else float("inf")
    while not deadline.passed() and steps < limit:
        data = PatchDataset(train, patch_size=study.patch, seed=settings.seed, epoch=epoch, patches_per_case=1,
                            sample_patch=sample_patch, augment=augment, foreground_prob=0.5)
        order = list(range(len(data)))
        for i in range(0, len(order), settings.batch):
            if deadline.passed() or steps >= limit:
                break
            items = [data[j] for j in order[i:i + settings.batch]]
            image = torch.stack([x for x, _ in items])
            label = torch.stack([y for _, y in items])[:, None]
            model.train()
            loss = loss_fn(model(image, return_logits=True), label)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            steps += 1
        epoch += 1
    from safetensors.torch import save_file

    run_dir.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(run_dir / "unet.safetensors"))
    atomic_write_text(run_dir / "unet.json", json.dumps({
        "width": settings.width, "in_channels": len(study.channels), "n_classes": study.convention.n_classes,
        "steps": steps}) + "\n")
    return {"model": model, "checkpoint": str(run_dir / "unet.safetensors"),
            "train_seconds": time.perf_counter() - deadline.start, "steps": steps, "epochs": epoch,
            "final_loss_mean_last10": float(np.mean(losses[-10:])) if losses else None,
            "parameters_g": count_parameters(model)}


def load_trained(method: str, fold_dir: Path) -> torch.nn.Module:
    if method == "monai-unet":
        from safetensors.torch import load_file

        meta = json.loads((fold_dir / "unet.json").read_text())
        model = SoftmaxUNet(int(meta["width"]), in_channels=int(meta.get("in_channels", 1)),
                            n_classes=int(meta.get("n_classes", 2)))
        model.load_state_dict(load_file(str(fold_dir / "unet.safetensors")))
        return model.eval()
    return read_model(fold_dir / "checkpoints" / "last.safetensors").generator


# ---- scoring ---------------------------------------------------------------------------------------
def predict_source(models: list[torch.nn.Module], case: Any, study: Study) -> np.ndarray:
    """The (ensemble) prediction of a loaded case as label values on the case's original grid."""
    probs = predict_probabilities(models, case.image, config=InferenceConfig(mode="whole"))
    # Softmax classes (the U-Net, Vox2Vox by default) or sigmoid regions (generator.output=regions).
    head = output_head(study.convention, getattr(getattr(models[0], "config", None), "output", "classes"))
    return study.convention.to_source(undo_preprocessing(head.to_classes(probs), case.record, order=0))


def score(models: list[torch.nn.Module], case: Any, files: Any, study: Study) -> dict[str, dict[str, float]]:
    """Per region: Dice and HD95 (mm) of the (ensemble) prediction on the case's original grid.

    ``*_lcc`` keys score the same prediction after keeping the largest connected component of each
    region (``vox2vox predict --largest-component region``), the usual clean-up for one tumour per
    case: it shows how much of the HD95 comes from stray blobs far from the tumour.
    """
    pred = predict_source(models, case, study)
    pred_lcc = postprocess(pred, config=PostprocessConfig(largest_component="region"), convention=study.convention)
    _, raw_label, geometry = read_case(files)
    truth = study.convention.to_source(study.convention.to_classes(raw_label))
    out = {}
    for region, values in study.regions.items():
        p, t, q = np.isin(pred, values), np.isin(truth, values), np.isin(pred_lcc, values)
        out[region] = {"dice": dice(p, t), "hd95": hd95(p, t, spacing=geometry.spacing),
                       "dice_lcc": dice(q, t), "hd95_lcc": hd95(q, t, spacing=geometry.spacing),
                       "vol_true_voxels": int(t.sum()), "vol_pred_voxels": int(p.sum())}
    return out


def summarise(per_case: dict[str, dict[str, dict[str, float]]], source_of: dict[str, str]) -> dict[str, Any]:
    """``{group: {region: {metric: {mean, std, median, n}}}}``; groups: all cases, then each source."""
    out: dict[str, Any] = {}
    groups = {"all": list(per_case)}
    for cid in per_case:
        groups.setdefault(source_of.get(cid, "?"), []).append(cid)
    for name, ids in groups.items():
        out[name] = {}
        for region in per_case[ids[0]]:
            out[name][region] = {}
            for metric in METRICS:
                values = [per_case[c][region][metric] for c in ids]
                out[name][region][metric] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                                             "median": float(np.median(values)), "n": len(values)}
    return out


def fold_means(fold_scores: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    regions = next(iter(fold_scores.values()))
    return {r: {m: float(np.mean([s[r][m] for s in fold_scores.values()])) for m in METRICS}
            for r in regions}


def load_average() -> float:
    return os.getloadavg()[0]


def machine() -> dict[str, Any]:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        rev = ""
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "git": rev, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


# ---- the two commands --------------------------------------------------------------------------------
def planned_config(spec: Any, study: Study, seconds: float, args: argparse.Namespace,
                   train_ids: list[str] | None = None, throughput: dict[str, float] | None = None,
                   ) -> tuple[Config, Any]:
    """What ``vox2vox train --budget`` would run: the plan for the training cases (their
    fingerprint, and step times measured here, now, unless ``throughput`` is given) with a budget
    of one fold's seconds; Dice-only turns the critic off. Held-out cases never enter the plan."""
    cases = [c for c in spec.cases if train_ids is None or c.case_id in train_ids]
    fp, _ = fingerprint_dataset(cases, study.channels, study.convention, seed=0)
    device = detect_device("cpu")
    if throughput is None:
        plan = plan_from_fingerprint(fp, device=device, budget_seconds=seconds, progress=False,
                                     convention=study.convention)
    else:
        plan = make_plan(fp, device=device, budget_seconds=seconds, throughput=throughput, convention=study.convention)
    overrides = [f"train.seed={args.seed}", f"preprocess.cache_dir={json.dumps(str(Path(args.out) / 'cache'))}",
                 *args.overrides]
    if args.method == "dice-only":
        overrides.append("loss.adversarial=false")
    return Config.from_dict(plan.config, source="plan").with_overrides(overrides), plan


def run_study(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    manifest, study_name, source_of = build_manifest(args.data, out, args.task)
    study = make_study(study_name, out / "cache", args.patch, args.task)
    spec = discover(manifest)
    settings = Settings(width=args.width, batch=args.batch, lr_unet=args.lr_unet, seed=args.seed,
                        max_steps=args.max_steps, overrides=tuple(args.overrides), unet_loss=args.unet_loss)
    seconds = 60.0 * args.minutes / args.folds
    planned, plan = None, None
    prep = study.preprocess
    if args.method != "monai-unet" and args.recipe == "planned":
        planned, plan = planned_config(spec, study, seconds, args)
        prep = planned.preprocess
        print(f"[{args.method}] plan: " + " | ".join(plan.reasons), flush=True)

    t0 = time.perf_counter()
    cases = {c.case_id: load_case(c, convention=study.convention, prep=prep) for c in spec.cases}
    files = {c.case_id: c for c in spec.cases}
    load_seconds = time.perf_counter() - t0
    folds = kfold_splits(list(cases), args.folds, seed=args.seed)
    method_dir = out / args.method

    results: dict[str, Any] = {
        "study": study_name, "method": args.method, "machine": machine(), "command": sys.argv,
        "settings": {"width": settings.width, "batch": settings.batch, "patch": list(study.patch),
                     "preprocess": study.preprocess.to_json(), "task": args.task,
                     "channels": list(study.channels), "convention": study.convention.to_json(),
                     "lr_unet": settings.lr_unet, "unet_loss": settings.unet_loss, "seed": settings.seed, "max_steps": settings.max_steps,
                     "overrides": list(settings.overrides),
                     "minutes_total": args.minutes, "seconds_per_fold": seconds, "folds": args.folds,
                     "recipe": args.recipe if args.method != "monai-unet" else "unet",
                     "plan": None if plan is None else {"config": plan.config, "reasons": plan.reasons,
                                                        "throughput": plan.throughput}},
        "shapes_preprocessed": {cid: list(c.image.shape[1:]) for cid, c in cases.items()},
        "load_seconds": load_seconds, "folds": [], "per_case": {},
    }
    per_case: dict[str, dict[str, float]] = {}
    for i, fold in enumerate(folds):
        fold_dir = method_dir / f"fold_{i}"
        fold_plan = None
        if planned is not None:  # plan on this fold's training cases (step times measured once)
            planned, fold_plan = planned_config(spec, study, seconds, args, fold["train"], plan.throughput)
            for c in spec.cases:
                if c.case_id in fold["train"] or c.case_id in fold["val"]:
                    cases[c.case_id] = load_case(c, convention=study.convention, prep=planned.preprocess)
            print(f"[{args.method}] fold {i} plan: " + " | ".join(fold_plan.reasons[:3]), flush=True)
        train = [cases[c] for c in fold["train"]]
        load_before = load_average()
        if args.method == "monai-unet":
            info = train_unet(study, settings, train, fold_dir, seconds)
        else:
            info = train_vox2vox(study, settings, train, fold_dir, seconds,
                                 adversarial=args.method == "vox2vox", planned=planned)
        model = info.pop("model")
        t1 = time.perf_counter()
        fold_scores = {c: score([model], cases[c], files[c], study) for c in fold["val"]}
        per_case.update(fold_scores)
        row = {"fold": i, "train": fold["train"], "val": fold["val"], **info,
               "score_seconds": time.perf_counter() - t1, "load_avg_before": load_before,
               "load_avg_after": load_average(), "per_case": fold_scores, "means": fold_means(fold_scores),
               "plan": None if fold_plan is None else {"config": fold_plan.config, "reasons": fold_plan.reasons}}
        results["folds"].append(row)
        scores = ", ".join(f"{r} dice {m['dice']:.3f} hd95 {m['hd95']:.1f} mm" for r, m in row["means"].items())
        print(f"[{args.method}] fold {i}: {scores} ({info['train_seconds']:.0f} s training, "
              f"load {load_before:.1f}->{row['load_avg_after']:.1f})", flush=True)
    results["per_case"] = per_case
    results["summary_over_cases"] = summarise(per_case, source_of)
    results["summary_over_folds"] = {}
    for region in study.regions:
        results["summary_over_folds"][region] = {}
        for metric in METRICS:
            values = [f["means"][region][metric] for f in results["folds"]]
            results["summary_over_folds"][region][f"{metric}_mean"] = float(np.mean(values))
            results["summary_over_folds"][region][f"{metric}_std"] = float(np.std(values))
    atomic_write_text(method_dir / "study.json", json.dumps(
        {"study": study_name, "task": args.task, "method": args.method, "folds": args.folds}, indent=2) + "\n")
    atomic_write_text(out / f"results_{args.method}.json", json.dumps(results, indent=2) + "\n")
    return results


def evaluate_only(args: argparse.Namespace) -> dict[str, Any]:
    """Score the saved fold models of MODEL_DIR, as an ensemble, on every case of ``--data``."""
    model_dir = Path(args.evaluate_only)
    meta = json.loads((model_dir / "study.json").read_text())
    out = Path(args.out)
    task = meta.get("task", "tumour")
    manifest, study_name, source_of = build_manifest(args.data, out, task)
    if study_name != meta["study"]:
        raise Vox2VoxError(f"{model_dir}: trained for the {meta['study']} study, the data is {study_name}")
    study = make_study(study_name, out / "cache", task=task)
    models = [load_trained(meta["method"], model_dir / f"fold_{i}") for i in range(meta["folds"])]
    per_case = {}
    for c in discover(manifest).cases:
        case = load_case(c, convention=study.convention, prep=study.preprocess)
        per_case[c.case_id] = score(models, case, c, study)
        print(f"{c.case_id}: " + ", ".join(f"{r} dice {m['dice']:.3f} hd95 {m['hd95']:.1f}"
                                           for r, m in per_case[c.case_id].items()), flush=True)
    results = {"model_dir": str(model_dir), "method": meta["method"], "ensemble_of": len(models),
               "machine": machine(), "command": sys.argv, "per_case": per_case,
               "summary_over_cases": summarise(per_case, source_of)}
    atomic_write_text(out / f"evaluation_{meta['method']}.json", json.dumps(results, indent=2) + "\n")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", required=True, help="folder of case folders (repeatable)")
    p.add_argument("--out", required=True, help="output folder (manifest, cache, models, results JSON)")
    p.add_argument("--method", choices=METHODS, default="vox2vox")
    p.add_argument("--task", choices=["tumour", "brats-regions"], default="tumour",
                   help="tumour: whole tumour / CT tumour vs rest; brats-regions: FLAIR+T1c -> BraTS classes, "
                        "scored on WT/TC/ET (sources with sub-region labels only)")
    p.add_argument("--minutes", type=float, default=8.0, help="training wall time of the method, all folds")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--width", type=int, default=8, help="first-layer filters (G, D and the U-Net)")
    p.add_argument("--patch", type=int, default=48, help="cubic training patch (multiple of 16)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr-unet", type=float, default=1e-3, help="Adam learning rate of the MONAI U-Net")
    p.add_argument("--unet-loss", choices=["dicece", "gdl"], default="dicece",
                   help="the MONAI U-Net's loss: Dice+CE (the peer as users train it) or the generator's "
                        "uniform generalised Dice loss (to separate loss from architecture)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", choices=["planned", "manual"], default="planned",
                   help="vox2vox/dice-only: the plan `vox2vox train --budget` makes for these cases and one "
                        "fold's time (default), or the manual settings of the 2026-11 rounds (--width etc.)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the Vox2Vox/Dice-only config, e.g. --set optim.lr_g=0.001")
    p.add_argument("--max-steps", type=int, default=None,
                   help="also stop each fold after this many optimisation steps (equal work per method "
                        "on a shared machine, where equal wall time is not equal compute)")
    p.add_argument("--evaluate-only", metavar="MODEL_DIR", help="score saved models (OUT/<method>) on --data")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        result = evaluate_only(args) if args.evaluate_only else run_study(args)
    except Vox2VoxError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    summary = result["summary_over_cases"]["all"]
    print(json.dumps({"over_cases": summary,
                      **({"over_folds": result["summary_over_folds"]} if "summary_over_folds" in result else {})}))


if __name__ == "__main__":
    main()
