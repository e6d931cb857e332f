"""A planned run: the plan for a dataset (or for a fold's training cases), the user's settings on
top of it, and the plan's reasons as they hold once those settings apply.

``vox2vox train`` and ``vox2vox cv`` without ``--config``, and ``vox2vox plan --data``, all go
through :func:`plan_run`, so a fold is planned exactly as a single run is, only on its own
training cases. A reason whose choice the user's ``--set`` replaced is not printed as if it still
held: it becomes a line naming the user's value (the memory estimate is recomputed instead).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from vox2vox.config import Config
from vox2vox.device import detect_device
from vox2vox.train.memory import estimate_memory
from vox2vox.train.planner import Plan, default_budget, plan_dataset, plan_to_toml

#: Which config keys each of the plan's reasons explains, by the words it begins with
#: (:func:`vox2vox.train.planner.make_plan`). A key ending in "." stands for its whole section.
REASON_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("normalisation", ("preprocess.normalize", "preprocess.ct_window")),
    ("target spacing", ("preprocess.target_spacing",)),
    ("patch", ("train.patch_size",)),
    ("generator", ("generator.arch", "generator.base_filters", "generator.max_filters", "generator.depth",
                   "generator.dropout", "generator.bottleneck_blocks", "generator.kernel_size", "generator.norm")),
    ("discriminator", ("discriminator.",)),
    ("outputs", ("generator.output",)),
    ("task", ("task.", "generator.output")),
    ("loss", ("loss.", "task.lambda_l1", "task.lambda_ssim")),
    ("optimiser", ("optim.",)),
    ("budget", ("train.budget", "train.epochs", "train.batch_size")),
    ("epochs", ("train.budget", "train.epochs")),
    ("model:", ("train.select", "train.tune_prediction", "train.foreground_prob")),
    ("augmentation", ("augment.",)),
    ("validation", ("data.val_cases", "data.val_fraction")),
    ("memory", ("generator.", "discriminator.", "train.patch_size", "train.batch_size", "train.amp",
                "train.activation_checkpointing")),
)


@dataclass(frozen=True)
class PlanRequest:
    """Plan each run from its own training cases: the user's ``--set`` values (applied on top of
    the plan) and whether a budget was given (without one, ``train.epochs`` counts epochs)."""

    overrides: tuple[str, ...] = ()
    budget_given: bool = False


@dataclass
class PlannedRun:
    config: Config  # the plan with the user's data options and --set values on top
    reasons: list[str]  # the plan's reasons as they hold for ``config``
    toml: str  # ``plan.toml``: ``config``'s planned sections, with ``reasons`` as comments


def plan_run(config: Config, request: PlanRequest, *, case_ids: Collection[str] | None = None,
             progress: bool = True) -> PlannedRun:
    """Plan ``config.data`` (only the cases ``case_ids`` when given) for ``config.train.device`` and
    budget (else the device's default), then apply ``request.overrides``."""
    device = detect_device(config.train.device)
    budget = config.train.budget_seconds or default_budget(device)
    plan = plan_dataset(config, budget_seconds=budget, device=device, case_ids=case_ids, progress=progress)
    overrides = list(request.overrides)
    data = config.data
    planned_val = plan.config.get("data", {}).get("val_cases")
    user_val = data.val_cases is not None or any(o.split("=", 1)[0].strip().startswith("data.val_") for o in overrides)
    if planned_val is not None and not user_val:  # the plan's hold-out, unless the user chose one
        data = dataclasses.replace(data, val_cases=planned_val)
    planned = Config.from_dict(plan.config, source="plan").replace(data=data)
    if not request.budget_given and any(o.split("=", 1)[0].strip() == "train.epochs" for o in overrides):
        overrides.append("train.budget=null")  # epochs asked for and no budget: count epochs
    final = planned.with_overrides(overrides)
    changed = changed_keys(planned, final)
    reasons = reasons_after(plan.reasons, changed, final)
    toml = plan_to_toml(dataclasses.replace(plan, reasons=reasons, config=_with_changes(plan, changed)))
    return PlannedRun(final, reasons, toml)


def changed_keys(planned: Config, final: Config) -> dict[str, Any]:
    """``section.key -> value`` for every planned key (``data``'s validation hold-out, every key
    outside ``data``) where ``final`` differs from ``planned``."""
    before, after = _flat(planned.to_dict()), _flat(final.to_dict())
    # The data's place and reading are the user's; of data.*, only the validation hold-out is planned.
    changed = {k: v for k, v in after.items()
               if (not k.startswith("data.") or k.startswith("data.val_")) and before.get(k) != v}
    if planned.train.budget_seconds == final.train.budget_seconds:  # "30m" is the plan's "30m00s"
        changed.pop("train.budget", None)
    return changed


def reasons_after(reasons: Sequence[str], changed: dict[str, Any], final: Config) -> list[str]:
    """The plan's ``reasons`` once the ``changed`` keys apply: a reason about a changed key names
    the user's value instead; keys no reason explains are listed at the end."""
    out: list[str] = []
    explained: set[str] = set()
    for reason in reasons:
        topic, keys = next(((t, k) for t, k in REASON_KEYS if reason.startswith(t)), ("", ()))
        hit = [k for k in changed if any(k == p or (p.endswith(".") and k.startswith(p)) for p in keys)]
        explained.update(hit)
        if not hit:
            out.append(reason)
        elif topic == "memory":
            need = estimate_memory(final, amp="off" if final.train.device == "cpu" else "bf16").total_bytes
            out.append(f"memory: about {need / 2**30:.2f} GiB a step (estimated with your settings)")
        else:
            out.append(f"{topic.rstrip(':')}: {_settings(changed, hit)} (your setting; the plan's choice and "
                       "its reason no longer apply)")
    rest = [k for k in changed if k not in explained]
    if rest:
        out.append(f"also set by you: {_settings(changed, rest)}")
    return out


def _settings(changed: dict[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={json.dumps(changed[k])}" for k in keys)


def _flat(sections: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, values in sections.items() if isinstance(values, dict) for k, v in values.items()}


def _with_changes(plan: Plan, changed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The plan's sections with the user's changes, for ``plan.toml`` (TOML has no null: a key
    set to null is left out, which reads back as its default, null)."""
    sections = {s: dict(v) for s, v in plan.config.items()}
    defaults = _flat(Config().to_dict())
    for key, value in changed.items():
        section, name = key.split(".", 1)
        if value is None and defaults.get(key) is None:
            sections.get(section, {}).pop(name, None)
        elif value is not None:
            sections.setdefault(section, {})[name] = value
    return sections
