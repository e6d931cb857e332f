"""A model's card (``vox2vox info MODEL``): what a user needs to know before trusting a checkpoint.

Read from the checkpoint's metadata alone (no tensor is loaded): the file's SHA-256, the input
channels and how they are normalised, the spacing the model works at, the label convention, the
training data's profile (:class:`vox2vox.data.profile.DataProfile`: case counts, spacing, shape,
per-channel intensities and modality), validation scores, training time and steps, the source of a
fine-tuned model, and the library versions it was trained with. Whatever a checkpoint does not
record (older checkpoints, hand-made ones) reads as "not recorded", never as a guess.

A translation model's card has the task (source -> target channels), the head and the intensity
scale ``predict`` writes, the objective (LSGAN + L1 (+ SSIM)) and its validation score (MAE or
SSIM, as ``task.select`` chose) where a segmentation's has labels and Dice. An exported file's
card (:func:`card_from_export`) is read from its contract, which keeps the checkpoint's records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vox2vox.config import Config
from vox2vox.data.labels import get_convention
from vox2vox.data.translation import RESTORE_MEANING, head_meaning, intensity_scale
from vox2vox.model.checkpoint import (
    JsonObject,
    file_sha256,
    read_checkpoint_metadata,
    resolve_checkpoint,
)
from vox2vox.model.record import ModelInfo, ModelRecord, PredictionChoice

NOT_RECORDED = "not recorded"


@dataclass(frozen=True)
class TrainingLines:
    """The card's training lines, from a checkpoint's record: the whole run's epochs, steps and
    seconds (recorded in ``best`` when training ends, else the file's own), the epoch this file
    holds, and the validation scores. ``metric`` is ``dice`` for a segmentation, else the
    translation's ``task.select`` (``mae`` or ``ssim``); ``best_score``/``last_score`` are stored
    higher-is-better (-MAE), ``best``/``last`` are in the metric's own sign."""

    select: str
    metric: str = "dice"
    epochs: int | None = None
    steps: int | None = None
    seconds: float | None = None
    file_epoch: int | None = None
    best_epoch: int | None = None
    best_score: float | None = None
    last_score: float | None = None

    @property
    def best(self) -> float | None:
        return self._signed(self.best_score)

    @property
    def last(self) -> float | None:
        return self._signed(self.last_score)

    def _signed(self, score: float | None) -> float | None:
        return None if score is None else (-score if self.metric == "mae" else score)

    def to_json(self) -> JsonObject:
        """The card JSON's ``training`` object (its keys unchanged since cards had JSON)."""
        out: JsonObject = {"epochs": self.epochs, "steps": self.steps, "seconds": self.seconds,
                           "file_epoch": self.file_epoch, "best_epoch": self.best_epoch, "select": self.select}
        if self.metric == "dice":
            return {**out, "best_dice": self.best, "last_dice": self.last}
        return {**out, "metric": self.metric, "best_score": self.best_score, "last_score": self.last_score,
                f"best_{self.metric}": self.best, f"last_{self.metric}": self.last}


@dataclass(frozen=True)
class ModelCard:
    path: Path
    sha256: str
    size_bytes: int
    config: Config
    info: ModelInfo | None
    training: TrainingLines
    predict: PredictionChoice | None = None  # prediction options training chose (train.selection)
    versions: dict[str, str] = field(default_factory=dict)
    exported: JsonObject | None = None  # an export's backend, format and source checkpoint
    # A translator's fill-check records found beside its file (vox2vox.infer.fill_record), as JSON.
    fill_checks: tuple[JsonObject, ...] = ()

    @property
    def translate(self) -> bool:
        return self.config.task.translate

    def to_json(self) -> JsonObject:
        """Every field as plain JSON (None where the checkpoint does not record it)."""
        prep = self.config.preprocess
        info = self.info
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "channels": list(info.channels) if info else None,
            "normalization": {"method": prep.normalize,
                              "ct_window": list(prep.ct_window) if prep.ct_window else None},
            "target_spacing": list(prep.target_spacing) if prep.target_spacing else None,
            "network": {"generator": self.config.to_dict()["generator"], "patch_size": list(self.config.train.patch_size)},
            "task": _task_json(self.config),
            "channel_dropout": self.config.augment.channel_dropout,
            "labels": info.convention.to_json() if info and info.convention else None,
            "layout": info.layout if info else None,
            "training_data": info.data.to_json() if info and info.data else None,
            "training": self.training.to_json(),
            "fine_tuned_from": {"path": info.source.path, "sha256": info.source.sha256,
                                "reinit_output": info.source.reinit_output} if info and info.source else None,
            "prediction_options": None if self.predict is None else self.predict.to_json(),
            "versions": self.versions or None,
            "exported": self.exported,
            "fill_checks": list(self.fill_checks),
        }


def read_card(path: str | Path) -> ModelCard:
    """The card of a checkpoint file or a run directory's model (``best``, as ``predict`` uses)."""
    file = resolve_checkpoint(path, which="best")
    meta = read_checkpoint_metadata(file)
    config, record = meta.config, meta.record
    return ModelCard(file, file_sha256(file), file.stat().st_size, config, record.info(translate=config.task.translate),
                     _counters(record, config), record.predict, dict(record.versions or {}))


def card_from_export(path: str | Path, doc: JsonObject, config: Config, record: ModelRecord,
                     source_record: ModelRecord) -> ModelCard:
    """The card of a ``vox2vox export`` file from its validated contract (what
    ``infer.contract.parse_contract`` returns: the document, its config, the checkpoint's record and
    the source checkpoint's counters): the checkpoint's records plus the export's own."""
    file = Path(path)
    source = doc.get("source") if isinstance(doc.get("source"), dict) else {}
    exported = {"backend": doc.get("backend"), "format_version": doc.get("format_version"),
                "onnx_opset": doc.get("onnx_opset"), "vox2vox_version": doc.get("vox2vox_version"),
                "output": doc["output"].get("name"),
                "checkpoint": {"file": source.get("file"), "sha256": source.get("sha256")}}
    return ModelCard(file, file_sha256(file), file.stat().st_size, config,
                     record.info(translate=config.task.translate), _counters(source_record, config),
                     record.predict, dict(source_record.versions or {}), exported)


def _counters(record: ModelRecord, config: Config) -> TrainingLines:
    """Epochs, steps, time and validation scores from a checkpoint's record (or an export's
    ``source``): the whole run's counters (recorded in ``best`` when training ends), else the file's own."""
    own, run = record.counters, record.run
    whole = own if run is None else run
    best = own.best_score
    # A translation's score is -MAE (task.select = "mae") or SSIM: higher is better either way.
    return TrainingLines(select=config.train.select, metric=config.task.select if config.task.translate else "dice",
                         epochs=whole.epoch, steps=whole.step, seconds=whole.seconds, file_epoch=own.epoch,
                         best_epoch=own.best_epoch if best is not None else None, best_score=best,
                         last_score=whole.last_score)


def format_card(card: ModelCard) -> str:
    """The card as aligned ``key  value`` lines for a terminal."""
    config, info, c = card.config, card.info, card.training
    prep, gen = config.preprocess, config.generator
    lines = [("model", str(card.path)), ("sha256", card.sha256), ("size", f"{card.size_bytes / 1e6:.1f} MB")]
    lines.append(("network", f"{gen.arch} generator, depth {gen.depth}, {gen.base_filters}-{gen.max_filters} filters, "
                             f"{gen.in_channels} channel(s) in, {gen.n_classes} {gen.output} out; trained on "
                             f"{'x'.join(map(str, config.train.patch_size))} patches"))
    if card.exported:
        ex = card.exported
        opset = f", opset {ex['onnx_opset']}" if ex.get("onnx_opset") else ""
        lines.append(("exported", f"{ex['backend']}{opset} (export format v{ex['format_version']}, vox2vox "
                                  f"{ex['vox2vox_version']}, output '{ex['output']}') from {ex['checkpoint']['file']} "
                                  f"(sha256 {str(ex['checkpoint']['sha256'])[:16]}...)"))
    task = config.task
    if task.translate:
        lines.append(("task", f"translate {', '.join(task.source or ())} -> {', '.join(task.target or ())} "
                              "(synthesised volumes)"))
    lines.append(("channels", ", ".join(info.channels) if info else NOT_RECORDED))
    lines.append(("normalization", _normalization(config)))
    lines.append(("spacing", "resampled to " + " x ".join(f"{s:g}" for s in prep.target_spacing) + " mm"
                  if prep.target_spacing else "as given (no resampling)"))
    if task.translate:
        lines.append(("output", f"{', '.join(task.target or ())}: {task.head} head, {head_meaning(task.head)}"))
        lines.append(("intensity", f"written {intensity_scale(prep)}: {RESTORE_MEANING[prep.normalize]}"))
        lines.append(("objective", _objective(config)))
    else:
        lines.append(("labels", _labels(info)))
        lines.append(("missing input", _missing_channels(config)))
    lines += _data_lines(info)
    if c.epochs is None:
        lines.append(("training", NOT_RECORDED))
    else:
        time = f", {_duration(c.seconds)}" if c.seconds else ", time not recorded"
        this = f" (this file: epoch {c.file_epoch})" if c.file_epoch != c.epochs else ""
        lines.append(("training", f"{c.epochs} epochs, {c.steps} steps{time}{this}"))
    lines.append(("validation", _validation(config, c)))
    if info and info.source:
        reinit = ", output layer re-initialised" if info.source.reinit_output else ""
        lines.append(("fine-tuned from", f"{info.source.path} (sha256 {info.source.sha256[:16]}...{reinit})"))
    if card.predict:
        lines += _prediction_lines(card.predict)
    for check in card.fill_checks:
        lines.append(("fill-check", _fill_check_line(check)))
    lines.append(("versions", ", ".join(f"{k} {v}" for k, v in card.versions.items()) or NOT_RECORDED))
    width = max(len(key) for key, _ in lines)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in lines)


def _prediction_lines(predict: PredictionChoice) -> list[tuple[str, str]]:
    """The options training chose, the rule and each step's evidence (every per-case score: --json)."""
    shown = [("tta", predict.tta),
             ("foreground_threshold", "argmax" if predict.foreground_threshold is None else predict.foreground_threshold),
             ("largest_component", predict.largest_component)]
    chosen = ", ".join(f"{k} {v}" for k, v in shown if v is not None)
    ids, n = predict.validation_case_ids, predict.validation_cases
    on = (f"chosen on {n} validation case(s)" + (f" ({', '.join(ids)})" if ids is not None else "")
          if n is not None else "validation cases not recorded")
    lines = [("prediction", f"{chosen}; {on}")]
    if predict.rule is not None:
        lines.append(("  rule", predict.rule))
    for d in predict.decisions or ():
        verdict = "adopted" if d.adopted else "not adopted"
        lines.append((f"  {d.step}", f"{d.candidate} {verdict}: {d.evidence}"))
    return lines


def card_json_text(card: ModelCard) -> str:
    return json.dumps(card.to_json(), indent=2)


def _normalization(config: Config) -> str:
    prep = config.preprocess
    text = {
        "zscore-nonzero": "z-score per case over the foreground (background 0)",
        "zscore": "z-score per case over the whole volume",
        "ct-window": "clipped to the CT window and scaled to [0, 1]",
        "none": "none (intensities as given)",
    }[prep.normalize]
    if prep.ct_window is not None:
        text += f"; CT window {prep.ct_window[0]:g} to {prep.ct_window[1]:g} HU"
    return f"{text} [{prep.normalize}]"


def _validation(config: Config, c: TrainingLines) -> str:
    if config.task.translate:
        name = "MAE" if c.metric == "mae" else "SSIM"
        how = (f"{name} of the synthesised {', '.join(config.task.target or ())} inside the foreground of the "
               "validation cases, on the normalised scale; " + ("lower" if c.metric == "mae" else "higher") + " is better")
    else:
        name, how = "Dice", ""
    best, last = c.best, c.last
    best_text = f"best {name} {best:.4f} (epoch {c.best_epoch})" if best is not None else f"best {name} {NOT_RECORDED}"
    last_text = f"last {last:.4f}" if last is not None else f"last {NOT_RECORDED}"
    return f"{best_text}, {last_text}; " + (f"{how}; " if how else "") + f"this file is the {c.select} model"


def _fill_check_line(check: dict[str, Any]) -> str:
    """One fill-check record (``FillRecord.to_json``, or ``{"file", "error"}`` for an unreadable one)."""
    if "error" in check:
        return f"{check['file']}: {check['error']}"
    segs = ", ".join(f"{m['path']} (sha256 {m['sha256'][:16]}...)" for m in check["segmenters"])
    dice, fallback = check["dice"], check["fallback"]
    verdict = "helps: --fill-missing uses it" if check["helps"] else "does not help: --fill-missing will not use it"
    return (f"{check['channel']} for {segs}: Dice {dice['synthesised']:.3f} synthesised vs {dice[fallback]:.3f} "
            f"{fallback} (real {dice['real']:.3f}), {len(check['case_ids'])} case(s); {verdict}")


def _missing_channels(config: Config) -> str:
    """Whether ``predict --missing`` runs this model (augment.channel_dropout, docs/method.md)."""
    p = config.augment.channel_dropout
    if p <= 0:
        return "refused: trained without channel dropout (augment.channel_dropout 0), every channel is needed"
    return (f"tolerated: trained with channel dropout (augment.channel_dropout {p:g}); a case may lack any "
            "channels but one (predict --missing)")


def _objective(config: Config) -> str:
    """The generator's objective of a translation run (model/translation.py, train/training.py)."""
    task, loss = config.task, config.loss
    terms = f"{task.lambda_l1:g} x L1" + (f" + {task.lambda_ssim:g} x (1 - SSIM)" if task.lambda_ssim > 0 else "")
    if not (loss.adversarial and loss.lambda_adv > 0):
        return f"{terms} (no adversarial term)"
    start = f", from {loss.adversarial_start:.0%} of training" if loss.adversarial_start > 0 else ""
    return f"{loss.lambda_adv:g} x LSGAN adversarial{start} + {terms}"


def _task_json(config: Config) -> dict[str, Any]:
    task, prep, loss = config.task, config.preprocess, config.loss
    if not task.translate:
        return {"kind": "segment"}
    return {"kind": "translate", "source": list(task.source or ()), "target": list(task.target or ()),
            "head": task.head, "intensity": {"scale": intensity_scale(prep), "restore": RESTORE_MEANING[prep.normalize]},
            "objective": {"adversarial": bool(loss.adversarial and loss.lambda_adv > 0), "lambda_adv": loss.lambda_adv,
                          "adversarial_start": loss.adversarial_start, "lambda_l1": task.lambda_l1,
                          "lambda_ssim": task.lambda_ssim},
            "select": task.select}


def _labels(info: ModelInfo | None) -> str:
    if info is None:
        return NOT_RECORDED
    convention = get_convention(info.convention)
    values = ", ".join(f"{v} {n}" for v, n in zip(convention.source_values, convention.class_names, strict=True))
    return f"{convention.name}: {values}"


def _data_lines(info: ModelInfo | None) -> list[tuple[str, str]]:
    if info is None or info.data is None:
        return [("training data", NOT_RECORDED)]
    data = info.data
    lines = [("training data", f"{data.n_train + data.n_val} cases ({data.n_train} train, {data.n_val} validation), "
                               f"{info.layout} layout")]
    lines.append(("  spacing", " x ".join(s.format() for s in data.spacing) + " mm"))
    lines.append(("  shape", " x ".join(s.format() for s in data.shape) + " voxels"))
    for ch in data.channels:
        lines.append((f"  {ch.name}", f"{ch.kind.upper()}; foreground 0.5/50/99.5th percentiles {ch.p00_5.format()} / "
                                     f"{ch.median.format()} / {ch.p99_5.format()}"))
    return lines


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
