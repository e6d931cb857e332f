"""Volume-to-volume translation (3D pix2pix): the task's settings and the generator's objective.

With ``task.kind = "translate"`` the generator synthesises continuous target channels (e.g. FLAIR)
from source channels (e.g. T1) of the same cases instead of a class distribution. The networks,
the discriminator's LSGAN half-step and the training loop are the segmentation ones; what changes:

- the generator's head (``generator.output``): ``linear`` for z-scored targets (their range is
  unbounded), ``tanh`` for targets scaled to [-1, 1] (``preprocess.normalize = "ct-window"``,
  whose [0, 1] window the data step maps to [-1, 1]);
- the generator's supervised term: ``lambda_l1 * L1(fake, real)`` (pix2pix: 100), plus
  optionally ``lambda_ssim * (1 - SSIM)`` (MONAI's ``SSIMLoss``), in place of Dice;
- the conditional discriminator judges (source, synthesised) against (source, real) pairs.

Training batches carry the source channels followed by the target channels in one image tensor
(so that spatial augmentation moves them together); :func:`split_source_target` separates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from vox2vox.data.settings import setting
from vox2vox.errors import Vox2VoxError

TaskKind = Literal["segment", "translate"]
Head = Literal["linear", "tanh"]


@dataclass(frozen=True)
class TaskConfig:
    """What the generator learns: a segmentation (the default) or a translation between channels.

    ``source``/``target`` are channel names of the dataset (BraTS layout: ``t1``, ``t1ce``,
    ``t2``, ``flair``; folders layout: the file names, e.g. ``T1``, ``FLAIR``); ``source`` None
    means every channel that is not a target. ``select`` picks the best checkpoint by the lowest
    validation MAE (cheap) or the highest SSIM (MONAI's, seconds per case).
    """

    kind: TaskKind = setting(
        "segment",
        "segment (label maps) or translate (synthesise task.target channels from task.source)")
    source: tuple[str, ...] | None = setting(
        None,
        "translate: input channels, by name (e.g. [\"t1\"]); null: every channel but the targets")
    target: tuple[str, ...] | None = setting(None, "translate: channel(s) to synthesise, by name (e.g. [\"flair\"])")
    head: Head = setting(
        "linear",
        "translate: linear (z-scored targets) or tanh (ct-window targets, scaled to [-1, 1])")
    lambda_l1: float = setting(100.0, "translate: weight of the L1 term in the generator objective (pix2pix: 100)")
    lambda_ssim: float = setting(0.0, "translate: weight of (1 - SSIM) in the generator objective (0: off)")
    select: Literal["mae", "ssim"] = setting(
        "mae",
        "translate: best checkpoint by lowest validation mae or highest ssim")

    def __post_init__(self) -> None:
        if self.kind not in ("segment", "translate"):
            raise Vox2VoxError(f"task.kind={self.kind!r}: choose segment or translate")
        if self.head not in ("linear", "tanh"):
            raise Vox2VoxError(f"task.head={self.head!r}: choose linear or tanh")
        if self.select not in ("mae", "ssim"):
            raise Vox2VoxError(f"task.select={self.select!r}: choose mae or ssim")
        for name in ("lambda_l1", "lambda_ssim"):
            if getattr(self, name) < 0:
                raise Vox2VoxError(f"task.{name}={getattr(self, name)}: must be >= 0")
        if self.kind != "translate":
            return
        if not self.target:
            raise Vox2VoxError("task.kind='translate' needs task.target, the channel(s) to synthesise, e.g. [\"flair\"]")
        for key, names in (("target", self.target), ("source", self.source or ())):
            if len(set(names)) != len(names):
                raise Vox2VoxError(f"task.{key}={list(names)}: a channel is named twice")
        both = [n for n in self.target if n in (self.source or ())]
        if both:
            raise Vox2VoxError(f"task.target channel {both[0]!r} is also a source; a translation cannot see its target")
        if self.source is not None and not self.source:
            raise Vox2VoxError("task.source=[]: give at least one source channel (or null: all but the target)")
        if self.lambda_l1 == 0 and self.lambda_ssim == 0:
            raise Vox2VoxError("task.lambda_l1 and task.lambda_ssim are both 0: the generator would learn no target")

    @property
    def translate(self) -> bool:
        return self.kind == "translate"

    def sources_of(self, channels: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        """The source channels among a dataset's ``channels``: as given, or all but the targets."""
        return tuple(self.source) if self.source is not None else tuple(c for c in channels if c not in (self.target or ()))


def split_source_target(image: torch.Tensor, n_source: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch ``(B, S + T, D, H, W)`` -> source ``(B, S, ...)`` and target ``(B, T, ...)``."""
    return image[:, :n_source], image[:, n_source:]


def translation_loss(fake: torch.Tensor, real: torch.Tensor, task: TaskConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """The generator's supervised term: ``lambda_l1 * mean |fake - real|`` (+ ``lambda_ssim * (1 - SSIM)``).

    L1 runs over every voxel of the patch (background included: there the target is the
    normalised background, which the generator must reproduce too). The SSIM's data range is the
    real patch's (max - min), as z-scored intensities have no fixed range.
    """
    fake, real = fake.float(), real.float()
    l1 = (fake - real).abs().mean()
    loss = task.lambda_l1 * l1
    out = {"loss_l1": l1.item()}
    if task.lambda_ssim > 0:
        ssim_loss = _ssim_loss(fake, real)
        loss = loss + task.lambda_ssim * ssim_loss
        out["loss_ssim"] = ssim_loss.item()
    return loss, out


def _ssim_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    # Lazy: MONAI takes seconds to import and only the optional SSIM term needs it here.
    from monai.losses import SSIMLoss

    data_range = float((real.max() - real.min()).clamp_min(1e-6))
    window = min(11, *(s - (1 - s % 2) for s in real.shape[2:]))  # odd and no larger than the patch
    return SSIMLoss(spatial_dims=3, data_range=data_range, win_size=max(window, 3))(fake, real)


def selection_key(task: TaskConfig) -> str:
    """The validation score whose highest value marks the best checkpoint."""
    return "val_score" if task.translate else "val_dice"
