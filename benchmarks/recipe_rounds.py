"""Recipe rounds (2026-12-01): which changes to the training recipe win at equal CPU time.

A small loop, separate from ``fit`` on purpose so each ingredient can be switched alone: MONAI's
UNet (the residual generator's network) trained with Dice+CE on the library's patches and
augmentation (``quality.py``'s study, folds and scoring), with or without a poly learning-rate
decay over the wall-clock budget, an EMA of the weights, channels-last, a patch size, the
batch, a lighter augmentation, and the LSGAN term of a small conditional critic from a fraction
of the budget on. Run the variants of a round side by side with ``OMP_NUM_THREADS=1`` so each
gets the same share of the CPU; the results (RESULTS.md, "recipe rounds") chose the plan's
defaults.

    python benchmarks/recipe_rounds.py --data ../shared/data/brats2018-deepvoxnet2 \
        --data ../shared/data/brats2015-deepmedic --out OUT --name poly --seconds 300 --sched poly --cl
"""
import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss

sys.path.insert(0, str(Path(__file__).parent))
import quality as Q  # noqa: E402  (the study, folds and scoring of the quality benchmark)
from vox2vox.config import Config  # noqa: E402
from vox2vox.data.augmentation import AugmentConfig, Augmenter, sample_patch  # noqa: E402
from vox2vox.data.layouts import discover  # noqa: E402
from vox2vox.data.loading import load_case  # noqa: E402
from vox2vox.device import tune_cpu_allocator  # noqa: E402
from vox2vox.model.discriminator import Discriminator, DiscriminatorConfig  # noqa: E402
from vox2vox.model.losses import lsgan_discriminator_loss, lsgan_generator_loss, one_hot  # noqa: E402
from vox2vox.train.crossval import kfold_splits  # noqa: E402
from vox2vox.train.patches import PatchDataset  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--name", required=True, help="the variant's name in the results")
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=300, help="training wall time per fold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sched", choices=["const", "poly"], default="const")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights scored (0: off)")
    p.add_argument("--adv", type=float, default=0.0, help="weight of the LSGAN term (0: no critic)")
    p.add_argument("--adv-start", type=float, default=0.0, help="fraction of the budget before the critic starts")
    p.add_argument("--d-width", type=int, default=8)
    p.add_argument("--lr-d", type=float, default=2e-4)
    p.add_argument("--cl", action="store_true", help="channels-last weights and inputs")
    p.add_argument("--fg", type=float, default=0.5, help="share of patches centred on the label")
    p.add_argument("--task", default="tumour")
    p.add_argument("--aug", choices=["paper", "light"], default="paper")
    return p.parse_args()


def train(a: argparse.Namespace, train_cases: list, augment: Augmenter, nch: int, ncls: int
          ) -> tuple[torch.nn.Module, int, int]:
    torch.manual_seed(a.seed)
    G = Q.SoftmaxUNet(a.width, in_channels=nch, n_classes=ncls)
    if a.cl:
        G = G.to(memory_format=torch.channels_last_3d)
    ema = copy.deepcopy(G) if a.ema > 0 else None
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(G.parameters(), lr=a.lr)
    if a.adv > 0:
        D = Discriminator(DiscriminatorConfig(in_channels=nch, n_classes=ncls, base_filters=a.d_width,
                                              max_filters=8 * a.d_width))
        opt_d = torch.optim.Adam(D.parameters(), lr=a.lr_d, betas=(0.5, 0.999))
    t0 = time.perf_counter()
    steps = dsteps = epoch = 0
    while True:
        data = PatchDataset(train_cases, patch_size=(a.patch,) * 3, seed=a.seed, epoch=epoch, patches_per_case=1,
                            sample_patch=sample_patch, augment=augment, foreground_prob=a.fg)
        for i in range(0, len(data), a.batch):
            frac = (time.perf_counter() - t0) / a.seconds
            if frac >= 1:
                model = ema if ema is not None else G
                return model.eval(), steps, dsteps
            for g in opt.param_groups:
                g["lr"] = a.lr * ((1 - frac) ** 0.9 if a.sched == "poly" else 1.0)
            items = [data[j] for j in range(i, min(i + a.batch, len(data)))]
            image = torch.stack([x for x, _ in items])
            label = torch.stack([y for _, y in items])
            if a.cl:
                image = image.contiguous(memory_format=torch.channels_last_3d)
            G.train()
            logits = G(image, return_logits=True)
            loss = loss_fn(logits, label[:, None])
            if a.adv > 0 and frac >= a.adv_start:
                fake = torch.softmax(logits, 1)
                ld = lsgan_discriminator_loss(D(image, one_hot(label, ncls)), D(image, fake.detach()))
                opt_d.zero_grad()
                ld.backward()
                opt_d.step()
                dsteps += 1
                D.requires_grad_(False)
                loss = loss + a.adv * lsgan_generator_loss(D(image, fake))
                D.requires_grad_(True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if ema is not None:
                with torch.no_grad():
                    for pe, pg in zip(ema.parameters(), G.parameters(), strict=True):
                        pe.lerp_(pg, 1 - a.ema)
                    for be, bg in zip(ema.buffers(), G.buffers(), strict=True):
                        be.copy_(bg)
        epoch += 1


def main() -> None:
    a = parse_args()
    tune_cpu_allocator()
    out = Path(a.out)
    manifest, study_name, _ = Q.build_manifest(a.data, out, a.task)
    study = Q.make_study(study_name, out / "cache", a.patch, a.task)
    spec = discover(manifest)
    cases = {c.case_id: load_case(c, convention=study.convention, prep=study.preprocess) for c in spec.cases}
    files = {c.case_id: c for c in spec.cases}
    folds = kfold_splits(list(cases), a.folds, seed=0)
    augment = Augmenter(Config().augment if a.aug == "paper" else
                        AugmentConfig(p_untouched=0.25, p_rotate=0.2, p_scale=0.2, p_elastic=0.0))
    res: dict = {"args": vars(a), "folds": [], "per_case": {}}
    for k, fold in enumerate(folds):
        tr = [(cases[c].image, cases[c].label) for c in fold["train"]]
        model, steps, dsteps = train(a, tr, augment, len(study.channels), study.convention.n_classes)
        if a.cl:
            model = model.to(memory_format=torch.contiguous_format)
        sc = {c: Q.score([model], cases[c], files[c], study) for c in fold["val"]}
        res["per_case"].update(sc)
        res["folds"].append({"steps": steps, "dsteps": dsteps, "val": fold["val"]})
        print(a.name, k, steps, {c: round(s[next(iter(s))]["dice"], 3) for c, s in sc.items()}, flush=True)
    summary = {r: {m: float(np.mean([v[r][m] for v in res["per_case"].values()])) for m in ("dice", "dice_lcc", "hd95")}
               for r in study.regions}
    res["summary"] = summary
    (out / f"recipe_{a.name}.json").write_text(json.dumps(res, indent=1))
    print("RESULT", a.name, json.dumps(summary), "steps", [f["steps"] for f in res["folds"]], flush=True)


if __name__ == "__main__":
    main()
