"""A translation run (``task.kind = "translate"``): its cases, networks and validation.

The translate task of :func:`vox2vox.train.runs.train_on_dataset`'s one run pipeline
(:func:`load_translation` gives its :class:`TranslationRun`): labels are not needed, the channels ``task.source`` and
``task.target`` of every case are (:mod:`vox2vox.data.translation`). The generator takes the
source channels and outputs the targets through ``task.head``; the discriminator judges
(source, target) pairs; validation scores the synthesised targets of the validation cases on the
preprocessed grid inside their foreground: MAE, PSNR and, with ``task.select = "ssim"``, SSIM.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vox2vox.config import Config
from vox2vox.data.augmentation import sample_patch
from vox2vox.data.cases import DatasetSpec
from vox2vox.data.layouts import discover
from vox2vox.data.preprocessing import LoadedCase
from vox2vox.data.translation import TranslationAugmenter, load_translation_case, resolve_channels
from vox2vox.infer.inference import InferenceConfig, predict_probabilities
from vox2vox.model.record import ModelInfo, SourceModel
from vox2vox.progress import bar_hidden
from vox2vox.report.image_metrics import translation_scores
from vox2vox.train.finetune import FineTune, check_channels, check_outputs
from vox2vox.train.patches import PatchSampler
from vox2vox.train.training import Validator


def translation_config(config: Config, source: Sequence[str], target: Sequence[str]) -> Config:
    """``config`` with the networks sized and headed for ``source`` -> ``target`` (and the names resolved)."""
    n_s, n_t = len(source), len(target)
    return config.replace(
        generator=dataclasses.replace(config.generator, in_channels=n_s, n_classes=n_t, output=config.task.head),
        discriminator=dataclasses.replace(config.discriminator, in_channels=n_s, n_classes=n_t),
        task=dataclasses.replace(config.task, source=tuple(source), target=tuple(target)),
    )


def load_translation(config: Config, *, finetune: FineTune | None, progress: bool) -> TranslationRun:
    """The translate task's cases: ``task.source`` and ``task.target`` channels of every case (no
    labels needed); data a fine-tuning source does not fit is refused before it is loaded."""
    spec = discover(config.data.path, layout=config.data.layout, label_name=config.data.label_name,
                    channel_names=config.data.channels)
    source, target = resolve_channels(spec, config.task.source, config.task.target or (), where=config.data.path)
    config = translation_config(config, source, target)
    if finetune is not None:  # refuse data the source model does not fit before loading it
        check_channels(finetune, source, config.data.path)
        check_outputs(finetune, target, config.data.path, reinit_output=config.train.reinit_output)
    cases: dict[str, LoadedCase] = {}
    for case in tqdm(spec.cases, desc="loading cases", disable=bar_hidden(progress), leave=False, file=sys.stderr):
        cases[case.case_id] = load_translation_case(case, source, target, prep=config.preprocess,
                                                    head=config.task.head)
    return TranslationRun(config, spec, cases)


@dataclass
class TranslationRun:
    """The translate task of a run (:class:`vox2vox.train.runs.RunTask`): the networks map the
    sources to the targets, validation scores the synthesis, and nothing is chosen afterwards."""

    config: Config
    spec: DatasetSpec
    cases: dict[str, LoadedCase]
    augment: TranslationAugmenter = field(init=False)
    sample_patch: PatchSampler = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.augment = TranslationAugmenter(self.config.augment, len(self.config.task.source or ()))
        self.sample_patch = sample_patch

    def check_config(self, *, resume: bool) -> None:
        """Nothing beyond the task section's own checks (the config validates them)."""

    def model_info(self, train_ids: list[str], val_ids: list[str], source: SourceModel | None) -> ModelInfo:
        return ModelInfo(channels=tuple(self.config.task.source or ()), layout=self.spec.layout, convention=None,
                         source=source)

    def validator(self, val_ids: list[str], example: dict[str, np.ndarray]) -> Validator:
        # No overlay for the tracker: ``example`` (truth and predicted classes) is a segmentation's.
        return make_translation_validator([self.cases[i] for i in val_ids], self.config)

    def after_fit(self, run_dir: Path, val_ids: list[str], *, progress: bool) -> None:
        """No prediction options to choose: a synthesis has no threshold or components."""


def make_translation_validator(val_cases: Sequence[LoadedCase], config: Config) -> Validator:
    """Score the generator's synthesis of whole, un-augmented validation volumes inside their
    foreground, in the normalised space it learns (no re-normalisation): mean MAE and PSNR (and
    SSIM with ``task.select = "ssim"``) over cases; ``val_score`` is -MAE or SSIM (higher is better)."""
    infer = InferenceConfig(mode="auto", window=config.train.patch_size, overlap=0.25)
    n_source = config.generator.in_channels
    with_ssim = config.task.select == "ssim"

    def validate(generator: torch.nn.Module) -> dict[str, float]:
        device = next(generator.parameters()).device
        rows = []
        for case in val_cases:
            fake = predict_probabilities([generator], case.image[:n_source], config=infer, device=device)
            mask = case.label.astype(bool)
            for c in range(fake.shape[0]):
                rows.append(translation_scores(fake[c], case.image[n_source + c], mask, normalise=False,
                                               with_ssim=with_ssim))
        scores = {f"val_{k}": float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "voxels"}
        scores["val_score"] = scores["val_ssim"] if with_ssim else -scores["val_mae"]
        return scores

    return validate
