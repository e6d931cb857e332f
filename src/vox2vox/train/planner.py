"""Plan a run from the data and the machine: ``vox2vox plan --data PATH --budget 30m``.

:func:`make_plan` is a pure function of a dataset :class:`~vox2vox.data.fingerprint.Fingerprint`,
a throughput table (seconds per training step of candidate patch sizes, measured on this machine
by :func:`measure_throughput`), the time budget and the device (kind and memory). The same inputs
always give the same plan; each choice comes with one line saying why (docs/method.md,
"Self-configuration", gives the rules and the measurements behind them).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import tomli_w

from vox2vox.config import Config
from vox2vox.data.cases import CaseFiles
from vox2vox.data.fingerprint import Fingerprint, fingerprint_dataset
from vox2vox.data.labels import LabelConvention
from vox2vox.data.layouts import discover
from vox2vox.data.translation import resolve_channels
from vox2vox.device import Device, cpu_bf16
from vox2vox.errors import Vox2VoxError
from vox2vox.model.discriminator import DiscriminatorConfig
from vox2vox.model.translation import TaskConfig
from vox2vox.train.adversarial import CRITICS, adversarial_decision, cost_line, translation_decision
from vox2vox.train.memory import estimate_memory
from vox2vox.train.runs import find_labelled_cases
from vox2vox.train.schedule import format_duration
from vox2vox.train.timing import CpuWatch, contention_note, measure_throughput, patch_key

# Voxels of the median (foreground-cropped) case after resampling, by device: on a 2-core CPU a
# 30-minute run learns BraTS well at 2 mm (about 80^3 voxels a brain) and poorly at 1 mm, where a
# whole-volume validation alone takes longer than hundreds of steps. More time or a GPU buys
# resolution; a GPU plans at the data's own spacing up to 256^3-ish volumes.
CPU_VOXELS_PER_HOUR = 1.0e6
CPU_VOXELS_MIN, CPU_VOXELS_MAX = 4.0e5, 4.0e6
GPU_VOXELS_MAX = 1.6e7

# A training run needs enough optimiser steps to converge; below this many the plan prefers a
# smaller patch (measured on BraTS at equal time: 600 steps of 48^3 reached WT Dice 0.71, 250 steps
# of 64^3 0.65; docs/method.md). Patches start at 48^3: smaller ones lose the context a tumour needs.
MIN_STEPS = 1500
PATCH_SIDES = (48, 64, 80, 96, 112, 128, 160, 192, 224, 256)
SIZE_STEP = 16  # patches and padded volumes are multiples of this (generator depth up to 4)

# Share of the budget spent outside optimiser steps (validation, checkpoints, data loading).
OVERHEAD = 0.15


@dataclass
class Plan:
    config: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)

    def why(self, line: str) -> None:
        self.reasons.append(line)


# ---- the rules ---------------------------------------------------------------------------------
def target_spacing(fp: Fingerprint, voxel_budget: float) -> tuple[tuple[float, float, float], str]:
    """The data's median spacing, coarsened (finest axes first) until the median case fits."""
    spacing = list(fp.median_spacing)
    extent = fp.median_foreground_mm

    def voxels(s: Sequence[float]) -> float:
        return math.prod(e / v for e, v in zip(extent, s, strict=True))

    native = voxels(spacing)
    while voxels(spacing) > voxel_budget:
        finest = min(spacing)
        coarsest = max(spacing)
        # Raise the finest axes towards the coarsest first (towards isotropy), then all together.
        for i, s in enumerate(spacing):
            if math.isclose(s, finest) or finest * 1.05 >= coarsest:
                spacing[i] = s * 1.05
    spacing = [round(s, 2) for s in spacing]
    shape = "x".join(str(round(e / s)) for e, s in zip(extent, spacing, strict=True))
    if voxels(spacing) < native * 0.99:
        why = (f"target spacing {_mm(spacing)}: the median spacing {_mm(fp.median_spacing)} would give "
               f"{native / 1e6:.1f} M voxels a case; coarsened to {shape} to fit this budget and device")
    else:
        why = f"target spacing {_mm(spacing)}: the median spacing of the data (median case {shape} voxels)"
    return (spacing[0], spacing[1], spacing[2]), why


def default_budget(device: Device) -> float:
    """Seconds a planned run gets when no budget is given: an hour on a CPU, 12 on a GPU."""
    return 3600.0 if device.kind == "cpu" else 12 * 3600.0


def voxel_budget(device: Device, budget_seconds: float | None) -> float:
    if device.kind == "cuda":
        return GPU_VOXELS_MAX
    hours = (budget_seconds or 12 * 3600.0) / 3600.0
    return min(max(CPU_VOXELS_PER_HOUR * hours, CPU_VOXELS_MIN), CPU_VOXELS_MAX)


def patch_candidates(case_shape: Sequence[float]) -> list[tuple[int, int, int]]:
    """Patch sizes from small cubes up to the whole median case, each side a multiple of 16."""
    whole = [max(SIZE_STEP * 2, SIZE_STEP * math.ceil(n / SIZE_STEP)) for n in case_shape]
    out = []
    for side in PATCH_SIDES:
        patch = tuple(min(side, w) for w in whole)
        if patch not in out:
            out.append(patch)
        if all(side >= w for w in whole):
            break
    return out  # type: ignore[return-value]


def depth_for(patch: Sequence[int]) -> int:
    """Deepest U-Net (2..5 levels) whose bottom map keeps at least 3 voxels along the shortest side."""
    depth = 2
    for d in range(2, 6):
        if all(p % 2**d == 0 for p in patch) and min(patch) // 2**d >= 3:
            depth = d
    return depth


def make_plan(fp: Fingerprint, *, device: Device, budget_seconds: float | None,
              throughput: dict[str, float], epochs: int | None = None,
              convention: LabelConvention | None = None, task: TaskConfig | None = None) -> Plan:
    """The complete config for a run, with a reason per choice (a pure function of its inputs).

    ``convention``: the label convention the run will train on (None: classes inferred from the
    values); its nested regions, if any, decide between class and region outputs. ``task``: a
    translation's task (sources and targets resolved to ``fp.channels``' names, sources first);
    resolution, patch, network sizes and schedule follow the same rules, the objective is pix2pix's
    (:func:`_translation_objective`).
    """
    translate = task is not None and task.translate
    if fp.n_labelled == 0 and not translate:
        raise Vox2VoxError("plan: no case has a label map; training needs labels")
    plan = Plan(config={}, fingerprint=fp.to_json(), throughput=dict(throughput),
                device={"kind": device.kind, "memory_gib": round(device.memory_bytes / 2**30, 1),
                        "name": device.name, "threads": device.threads})
    cfg: dict[str, dict[str, Any]] = {s: {} for s in ("data", "preprocess", "generator", "discriminator", "loss",
                                                        "optim", "train", "augment")}
    # Intensities.
    if all(k == "ct" for k in fp.channel_kind):
        lo = min(p[0] for p in fp.channel_percentiles)
        hi = max(p[1] for p in fp.channel_percentiles)
        lo, hi = math.floor(lo), math.ceil(hi) if hi > lo else math.floor(lo) + 1
        cfg["preprocess"].update(normalize="ct-window", ct_window=[lo, hi])
        plan.why(f"normalisation ct-window [{lo}, {hi}] HU: the channels are CT; the window holds 99% of "
                 f"the {'foreground' if translate else 'labelled'} voxels' intensities (0.5-99.5 percentiles), "
                 "scaled to [0, 1]")
    else:
        cfg["preprocess"].update(normalize="zscore-nonzero")
        plan.why("normalisation zscore-nonzero: MR-like intensities (no Hounsfield scale); each channel "
                 "z-scored over the foreground, background 0")

    # Resolution and patch.
    spacing, why = target_spacing(fp, voxel_budget(device, budget_seconds))
    cfg["preprocess"].update(target_spacing=list(spacing), pad_multiple=SIZE_STEP)
    plan.why(why)
    case_shape = [e / s for e, s in zip(fp.median_foreground_mm, spacing, strict=True)]
    step_seconds, bf16_patches = fastest_precision(throughput)
    patch, steps, why = choose_patch(patch_candidates(case_shape), step_seconds, budget_seconds, device,
                                     fp, case_shape)
    plan.why(why)
    amp, why = precision_for(patch, throughput, bf16_patches, device)
    if why:
        plan.why(why)
    depth = depth_for(patch)
    width = 8 if device.kind == "cpu" and (budget_seconds or math.inf) <= 4 * 3600 else (16 if device.kind == "cpu" else 32)
    # A translation's networks take the sources and put out the targets; a segmentation's every channel and class.
    n_in, n_out = ((len(task.source or ()), len(task.target or ())) if translate and task is not None
                   else (len(fp.channels), fp.n_classes))
    cfg["generator"].update(arch="residual", base_filters=width, max_filters=16 * width, depth=depth, dropout=0.0,
                            in_channels=n_in, n_classes=n_out)
    plan.why(f"generator residual U-Net, width {width}-{min(16 * width, width * 2**depth)}, depth {depth}: "
             f"3^3 residual units learn fastest per second here (docs/method.md); depth keeps a "
             f"{'x'.join(str(p // 2**depth) for p in patch)} bottom map")
    d_width = 8 if device.kind == "cpu" else 32
    cfg["discriminator"].update(base_filters=d_width, max_filters=8 * d_width, dropout=0.0,
                                in_channels=n_in, n_classes=n_out)
    plan.why(f"discriminator width {d_width}: a small critic")
    if translate:
        assert task is not None
        _translation_objective(cfg, plan, task, device=device, budget_seconds=budget_seconds)
    else:
        _segmentation_objective(cfg, plan, fp, convention, device=device, budget_seconds=budget_seconds)
    batch = 2
    cfg["train"].update(patch_size=list(patch), batch_size=batch, foreground_prob=0.9 if translate else 0.5,
                        select="last", tune_prediction=not translate, device=device.kind, val_every=1)
    if amp is not None:
        cfg["train"]["amp"] = amp
    _fit_critic(cfg, plan, patch, "translate" if translate else "segment")
    if budget_seconds is not None:
        cfg["train"]["budget"] = format_duration(budget_seconds)
        plan.why(f"budget {format_duration(budget_seconds)}: about {steps} steps of batch {batch} at "
                 f"{step_seconds.get(patch_key(patch), float('nan')):.2f} s a step; training ends at the budget")
    else:
        cfg["train"]["epochs"] = epochs or 1000
        plan.why(f"epochs {cfg['train']['epochs']}: no budget given")
    if translate:
        plan.why("model: the final weights (select=last), the decayed end of the schedule; patches are "
                 "drawn inside the foreground 90% of the time (the background is a constant to copy)")
    else:
        plan.why("model: the final weights (select=last); with few cases one validation case cannot rank "
                 "checkpoints, and the decayed end of the schedule is the steadiest model; flip TTA, the foreground "
                 "threshold and largest-component clean-up are then chosen on the validation cases for predict")
        n_val, why = validation_cases(fp.n_labelled)
        cfg["data"]["val_cases"] = n_val
        plan.why(why)
    cfg["augment"].update(p_untouched=0.25)
    plan.why("augmentation: the paper's flips, intensity, rotation, scaling and elastic deformation")
    plan.config = cfg
    _check_memory(plan, device)
    return plan


def _fit_critic(cfg: dict[str, dict[str, Any]], plan: Plan, patch: Sequence[int], kind: str) -> None:
    """A pooled critic needs its pooling factor times the patch a plain one needs; a smaller patch
    keeps the plain critic rather than failing the run."""
    critic = cfg["discriminator"]
    scale = critic.get("input_scale", 1)
    if scale == 1:
        plan.why(f"critic: judges the pair as given; {cost_line(kind, 'planned')}")
        return
    need = DiscriminatorConfig(**critic).min_input_size()
    if min(patch) < need:
        critic["input_scale"] = 1
        plan.why(f"critic: a {min(patch)}-voxel patch side is too small for the pair pooled by {scale} (it needs "
                 f"{need}), so it judges the pair as given; {cost_line(kind, 'planned')}")
        return
    plan.why(f"critic: judges the pair pooled by {scale}; {cost_line(kind, 'cheap')}")


#: Labelled cases from which the plan holds out 2 (and 3) validation cases, so that no single case
#: decides a prediction option (train/selection.py's rule needs at least 2; 3 gives it a majority).
TWO_VAL_FROM, THREE_VAL_FROM = 4, 9


def validation_cases(n_labelled: int) -> tuple[int, str]:
    """How many labelled cases a segmentation plan holds out for validation, and why: a fifth of
    them (nnU-Net's fold size), at least 2 from :data:`TWO_VAL_FROM` cases and 3 from
    :data:`THREE_VAL_FROM`; none with fewer, since one validation case decides nothing."""
    n_val = round(0.2 * n_labelled)
    if n_labelled >= THREE_VAL_FROM:
        n_val = max(n_val, 3)
    elif n_labelled >= TWO_VAL_FROM:
        n_val = max(n_val, 2)
    else:
        # The model is the last one (select=last) and an option needs 2 validation cases, so a lone
        # validation case would only take a third to a half of the training cases away.
        return 0, (f"validation: none of {n_labelled} labelled cases held out: with fewer than "
                   f"{TWO_VAL_FROM}, one validation case could neither rank checkpoints nor choose a prediction "
                   "option (train/selection.py needs 2), so every case trains and the prediction options keep "
                   "their defaults (argmax, no TTA, no clean-up); --set data.val_cases=1 holds one out to watch")
    why = (f"validation: {n_val} of {n_labelled} labelled cases held out; prediction options are adopted only "
           "when no single validation case decides them (train/selection.py: mean gain with any one case left "
           "out, fewer cases lowered than raised), since a threshold chosen on one case cost 0.015 Dice on "
           "unseen BraTS cases (benchmarks/RESULTS.md); a fifth of the cases, at least 2 from "
           f"{TWO_VAL_FROM} cases and 3 from {THREE_VAL_FROM}")
    return n_val, why


def _segmentation_objective(cfg: dict[str, dict[str, Any]], plan: Plan, fp: Fingerprint,
                            convention: LabelConvention | None, *, device: Device,
                            budget_seconds: float | None) -> None:
    """Outputs, loss and optimiser of a segmentation run; the adversarial term by
    :func:`vox2vox.train.adversarial.adversarial_decision`'s rule and evidence."""
    regions = _nested_regions(convention)
    if len(regions) >= 2:
        # Measured, not assumed: at CPU budgets region outputs scored below class outputs on the
        # BraTS regions task (benchmarks/RESULTS.md, 2026-12-01), so they stay an option.
        plan.why(f"outputs: one softmax per class; the nested regions {'/'.join(regions)} can be trained "
                 "directly (--set generator.output=regions), which did not score higher in the CPU-budget "
                 "rounds of benchmarks/RESULTS.md")
    decision = adversarial_decision(device.kind, budget_seconds)
    # lambda_adv and adversarial_start are planned either way: --set loss.adversarial=true alone
    # then gives the method's light, late term.
    cfg["loss"].update(adversarial=decision.use, dice="per_sample", lambda_dice=1.0, lambda_ce=1.0, lambda_adv=0.1,
                       adversarial_start=0.3, dice_weighting="uniform")
    cfg["discriminator"].update(CRITICS[decision.critic])
    small = [i for i, f in enumerate(fp.class_fraction) if 0 < f < 0.01 and i > 0]
    plan.why(decision.reason + (f"; classes {small} hold < 1% of voxels, which per-sample Dice weights as much "
                                "as the rest" if small else ""))
    cfg["optim"].update(lr_g=1e-3, lr_d=2e-4, beta1=0.9, beta1_d=0.5, schedule="poly")
    plan.why("optimiser Adam, generator lr 1e-3 (beta1 0.9), critic 2e-4 (beta1 0.5), poly decay to 0 "
             "at the end of the budget")


def _translation_objective(cfg: dict[str, dict[str, Any]], plan: Plan, task: TaskConfig, *, device: Device,
                           budget_seconds: float | None) -> None:
    """Outputs, loss and optimiser of a translation run (3D pix2pix); the critic by
    :func:`vox2vox.train.adversarial.translation_decision`'s rule and evidence."""
    assert task.source is not None and task.target is not None
    head = "tanh" if cfg["preprocess"]["normalize"] == "ct-window" else "linear"
    cfg["generator"]["output"] = head
    cfg["task"] = {"kind": "translate", "source": list(task.source), "target": list(task.target), "head": head,
                   "lambda_l1": task.lambda_l1, "lambda_ssim": task.lambda_ssim, "select": task.select}
    plan.why(f"task: synthesise {', '.join(task.target)} from {', '.join(task.source)}; {head} output head ("
             + ("CT window scaled to [-1, 1], written back in HU" if head == "tanh"
                else "z-scored intensities, unbounded") + ")")
    decision = translation_decision(device.kind, budget_seconds)
    # lambda_adv and adversarial_start are planned either way, so --set loss.adversarial=true alone
    # gives pix2pix's term.
    cfg["loss"].update(adversarial=decision.use, lambda_adv=1.0, adversarial_start=0.0)
    cfg["discriminator"].update(CRITICS[decision.critic])
    plan.why(f"loss {task.lambda_l1:g} x L1" + (f" + {task.lambda_ssim:g} x (1 - SSIM)" if task.lambda_ssim else "")
             + " " + decision.reason)
    cfg["optim"].update(lr_g=1e-3, lr_d=1e-3, schedule="poly")
    plan.why("optimiser Adam, lr 1e-3 for both networks, poly decay to 0 at the end of the budget")


def _nested_regions(convention: LabelConvention | None) -> tuple[str, ...]:
    """The names of the convention's nested region chain; () when it has none."""
    if convention is None or not convention.regions:
        return ()
    try:
        return tuple(name for name, _ in convention.nested_regions())
    except Vox2VoxError:
        return ()


#: bf16 autocast is adopted on a CPU only when its measured step is at least this much faster: a
#: smaller gain is within the timing's noise and not worth bf16's rounding.
BF16_MIN_SPEEDUP = 1.1
BF16_SUFFIX = "@bf16"


def fastest_precision(throughput: dict[str, float]) -> tuple[dict[str, float], set[str]]:
    """Seconds per step of each timed patch at its faster precision, and the patches where that
    is bf16 (timed as ``<patch>@bf16``, at least :data:`BF16_MIN_SPEEDUP` times faster than fp32)."""
    table = {k: v for k, v in throughput.items() if not k.endswith(BF16_SUFFIX)}
    faster = set()
    for key, seconds in list(table.items()):
        bf16 = throughput.get(key + BF16_SUFFIX)
        if bf16 is not None and bf16 * BF16_MIN_SPEEDUP <= seconds:
            table[key], faster = bf16, faster | {key}
    return table, faster


def precision_for(patch: Sequence[int], throughput: dict[str, float], bf16_patches: set[str],
                  device: Device) -> tuple[str | None, str | None]:
    """``train.amp`` for a CPU plan (None on a GPU: ``auto`` already picks bf16 or fp16 there) and its reason."""
    if device.kind != "cpu":
        return None, None
    key = patch_key(patch)
    fp32, bf16 = throughput.get(key), throughput.get(key + BF16_SUFFIX)
    if bf16 is None or fp32 is None:
        return "off", "precision fp32: bf16 autocast was not timed (this CPU has no fast bf16 path in oneDNN)"
    if key in bf16_patches:
        return "bf16", (f"precision bf16 autocast: {bf16:.2f} s a step against {fp32:.2f} s in fp32 on this CPU "
                        f"(at least {BF16_MIN_SPEEDUP}x faster; weights, optimiser and losses stay fp32; "
                        "docs/method.md, \"Self-configuration\")")
    return "off", (f"precision fp32: bf16 autocast timed {bf16:.2f} s a step against {fp32:.2f} s, less than "
                   f"{BF16_MIN_SPEEDUP}x faster")


def choose_patch(candidates: list[tuple[int, int, int]], throughput: dict[str, float], budget_seconds: float | None,
                 device: Device, fp: Fingerprint, case_shape: Sequence[float]) -> tuple[tuple[int, int, int], int, str]:
    """The largest measured patch that still gives ``MIN_STEPS`` steps in the budget."""
    timed = [p for p in candidates if patch_key(p) in throughput]
    if not timed:
        raise Vox2VoxError("plan: no throughput measured for any candidate patch")
    if budget_seconds is None:
        patch = timed[-1]
        return patch, 0, f"patch {_fmt(patch)}: the largest candidate (no budget to fit)"
    usable = budget_seconds * (1 - OVERHEAD)
    fits = [p for p in timed if usable / throughput[patch_key(p)] >= MIN_STEPS]
    patch = fits[-1] if fits else timed[0]
    steps = int(usable / throughput[patch_key(patch)])
    whole = "x".join(str(round(n)) for n in case_shape)
    if fits:
        why = (f"patch {_fmt(patch)}: the largest that gives >= {MIN_STEPS} steps in the budget "
               f"(median case {whole} voxels)")
    else:
        why = (f"patch {_fmt(patch)}: the smallest candidate; even it gives only {steps} steps in the budget "
               f"(fewer than {MIN_STEPS}: expect an undertrained model, give more time)")
    return patch, steps, why


def _check_memory(plan: Plan, device: Device) -> None:
    config = Config.from_dict(plan.config, source="plan")
    need = estimate_memory(config, amp="off" if device.kind == "cpu" else "bf16").total_bytes
    limit = 0.8 * device.memory_bytes
    if need > limit:
        raise Vox2VoxError(f"plan: {need / 2**30:.1f} GiB needed per step, more than 80% of the device's "
                           f"{device.memory_bytes / 2**30:.1f} GiB; give a smaller budget or more memory")
    plan.why(f"memory: about {need / 2**30:.2f} GiB a step (estimated), within the device's "
             f"{device.memory_bytes / 2**30:.1f} GiB")


# ---- from a dataset folder ---------------------------------------------------------------------
def plan_dataset(config: Config, *, budget_seconds: float | None, device: Device,
                 progress: bool = True, case_ids: Collection[str] | None = None) -> Plan:
    """Fingerprint ``config.data.path`` (only the cases ``case_ids`` when given: a fold's training
    cases), time the candidate patches on ``device``, and plan.

    ``config`` supplies where the data is and how to read it (``data.*``) and, for a translation,
    ``task.source``/``task.target``; the plan replaces the rest. Timing runs real training steps on
    random data, smallest patch first.
    """
    if config.task.translate:
        spec = discover(config.data.path, layout=config.data.layout, label_name=config.data.label_name,
                        channel_names=config.data.channels)
        source, target = resolve_channels(spec, config.task.source, config.task.target or (), where=config.data.path)
        channels = (*source, *target)
        # Intensities and extents of the source and target channels; labels play no part.
        cases = [CaseFiles(c.case_id, {n: c.channels[n] for n in channels}, None, c.mask) for c in spec.cases
                 if case_ids is None or c.case_id in case_ids]
        fp, _ = fingerprint_dataset(cases, channels, None, seed=config.train.seed, progress=progress)
        task = dataclasses.replace(config.task, source=source, target=target)
        return plan_from_fingerprint(fp, device=device, budget_seconds=budget_seconds, progress=progress, task=task)
    spec, labelled, convention = find_labelled_cases(config)
    labelled = [c for c in labelled if case_ids is None or c.case_id in case_ids]
    fp, _ = fingerprint_dataset(labelled, spec.channel_names, convention, seed=config.train.seed, progress=progress)
    return plan_from_fingerprint(fp, device=device, budget_seconds=budget_seconds, progress=progress,
                                 convention=convention)


def plan_from_fingerprint(fp: Fingerprint, *, device: Device, budget_seconds: float | None,
                          progress: bool = True, convention: LabelConvention | None = None,
                          task: TaskConfig | None = None) -> Plan:
    """Time the candidate patches for ``fp`` on ``device`` and plan (:func:`make_plan`)."""

    def config_for(patch: tuple[int, int, int]) -> Config:
        trial = make_plan(fp, device=device, budget_seconds=budget_seconds, throughput={patch_key(patch): 1.0},
                          convention=convention, task=task)
        return Config.from_dict(trial.config, source="plan")

    spacing, _ = target_spacing(fp, voxel_budget(device, budget_seconds))
    candidates = patch_candidates([e / s for e, s in zip(fp.median_foreground_mm, spacing, strict=True)])
    with CpuWatch() as watch:
        table = measure_throughput(candidates, config_for, device=device, progress=progress)
        if device.kind == "cpu" and cpu_bf16():
            # The same candidates under bf16 autocast; the plan adopts it only where it is faster.
            timed = [c for c in candidates if patch_key(c) in table]
            bf16 = measure_throughput(timed, partial(_with_amp, config_for, "bf16"), device=device, progress=progress)
            table |= {k + BF16_SUFFIX: v for k, v in bf16.items()}
    plan = make_plan(fp, device=device, budget_seconds=budget_seconds, throughput=table, convention=convention,
                     task=task)
    if watch.others_cores is not None:
        plan.device["busy_cores_while_timing"] = round(watch.others_cores, 2)
    note = contention_note(watch.others_cores, device, watch.cores)
    if note:
        plan.why(note)
    return plan


def _with_amp(config_for: Callable[[tuple[int, int, int]], Config], amp: str, patch: tuple[int, int, int]) -> Config:
    config = config_for(patch)
    return config.replace(train=dataclasses.replace(config.train, amp=amp))


def plan_to_toml(plan: Plan) -> str:
    """The plan as a config file `--config` reads: the reasons as comments, then the sections."""
    lines = ["# vox2vox plan: a complete training config; edit and pass it with --config.", "#"]
    lines += [f"# {r}" for r in plan.reasons]
    lines += ["", f"# device: {json.dumps(plan.device)}",
              f"# seconds per step by patch: {json.dumps(plan.throughput)}", ""]
    sections = {section: values for section, values in plan.config.items() if values}
    try:
        return "\n".join(lines) + "\n" + tomli_w.dumps(sections)
    except TypeError as err:  # a value TOML cannot hold (None): a planner bug, not the user's
        raise Vox2VoxError(f"plan: cannot write the config as TOML ({err})") from err


def _fmt(patch: Sequence[int]) -> str:
    return "x".join(str(p) for p in patch)


def _mm(spacing: Sequence[float]) -> str:
    return "x".join(f"{s:g}" for s in spacing) + " mm"
