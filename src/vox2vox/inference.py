"""Run a trained generator on whole volumes: one pass or sliding window, flips, ensembles.

The generator is fully convolutional, so the default runs the whole (padded) volume in one pass,
as the authors did on 160x192x128 crops; that computes every voxel once. Sliding-window inference
with Gaussian blending (MONAI's ``sliding_window_inference``) is for volumes too large for memory.

Shapes: an image is ``(C, D, H, W)`` float32 (preprocessed); probabilities are
``(n_classes, D, H, W)`` float32 on the same grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from vox2vox.checkpoint import load_checkpoint, resolve_checkpoint
from vox2vox.config import Config
from vox2vox.device import AmpDtype, autocast
from vox2vox.errors import Vox2VoxError
from vox2vox.networks.generator import Generator

Mode = Literal["auto", "whole", "sliding"]


@dataclass(frozen=True)
class InferenceConfig:
    """How to run the network over a volume."""

    mode: Mode = "auto"
    window: tuple[int, int, int] = (128, 128, 128)
    overlap: float = 0.5
    # 'auto' runs the whole volume when it has at most this many voxels, else sliding windows.
    max_whole_voxels: int = 256 * 256 * 192
    tta_flips: bool = False
    amp: AmpDtype = "off"

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise Vox2VoxError(f"overlap={self.overlap}: must be in [0, 1)")
        if self.mode not in ("auto", "whole", "sliding"):
            raise Vox2VoxError(f"mode={self.mode!r}: choose auto, whole or sliding")


@dataclass
class LoadedModel:
    """A generator rebuilt from a checkpoint alone, with what prediction needs to know."""

    generator: Generator
    config: Config
    state: dict[str, Any]
    path: Path

    @property
    def channels(self) -> list[str] | None:
        return self.state.get("channels")


def load_model(path: str | Path, *, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the generator from a run directory or a ``.safetensors`` checkpoint."""
    ckpt_path = resolve_checkpoint(path, which="best")
    ckpt = load_checkpoint(ckpt_path)
    config = Config.from_dict(ckpt.config, source=str(ckpt_path))
    generator = Generator(config.generator)
    try:
        generator.load_state_dict(ckpt.generator)
    except RuntimeError as err:
        raise Vox2VoxError(f"{ckpt_path}: weights do not fit the generator its config describes ({err})") from err
    generator.to(device).eval()
    return LoadedModel(generator, config, ckpt.state, ckpt_path)


@torch.inference_mode()
def predict_probabilities(
    models: Sequence[torch.nn.Module],
    image: np.ndarray | torch.Tensor,
    *,
    config: InferenceConfig = InferenceConfig(),
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Softmax probabilities ``(n_classes, D, H, W)`` for one image ``(C, D, H, W)``.

    With several models (an ensemble) and/or flips, the softmax outputs are averaged.
    """
    if not models:
        raise Vox2VoxError("no model to predict with")
    device = torch.device(device)
    x = torch.as_tensor(image, dtype=torch.float32)
    if x.ndim != 4:
        raise Vox2VoxError(f"image must be (C, D, H, W); got shape {tuple(x.shape)}")
    x = x.unsqueeze(0).to(device)
    flips: list[tuple[int, ...]] = [()]
    if config.tta_flips:
        # All 7 non-trivial combinations of flips along the three spatial axes (as in nnU-Net).
        flips += [(2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    total: torch.Tensor | None = None
    for model in models:
        model.eval()
        for axes in flips:
            xi = torch.flip(x, axes) if axes else x
            probs = _run(model, xi, config, device)
            probs = torch.flip(probs, axes) if axes else probs
            total = probs if total is None else total.add_(probs)
    assert total is not None
    total /= len(models) * len(flips)
    return total[0].float().cpu().numpy()


def _run(model: torch.nn.Module, x: torch.Tensor, config: InferenceConfig, device: torch.device) -> torch.Tensor:
    mode = config.mode
    if mode == "auto":
        mode = "whole" if x[0, 0].numel() <= config.max_whole_voxels else "sliding"
    with autocast(device, config.amp):
        if mode == "whole":
            return _whole(model, x)
        return _sliding(model, x, config)


def _size_multiple(model: torch.nn.Module) -> int:
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "size_multiple", 16))


def _whole(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pad each axis up to the network's size multiple, run once, crop back."""
    m = _size_multiple(model)
    spatial = x.shape[2:]
    pads = [(-s) % m for s in spatial]
    # F.pad takes (W_lo, W_hi, H_lo, H_hi, D_lo, D_hi); pad after the data with background (0).
    xp = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0])) if any(pads) else x
    out = model(xp).float()
    return out[:, :, : spatial[0], : spatial[1], : spatial[2]]


def _sliding(model: torch.nn.Module, x: torch.Tensor, config: InferenceConfig) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    m = _size_multiple(model)
    window = tuple(max(m, (min(w, s + (-s) % m) // m) * m) for w, s in zip(config.window, x.shape[2:], strict=True))
    return sliding_window_inference(
        x,
        roi_size=window,
        sw_batch_size=1,
        predictor=lambda t: model(t).float(),
        overlap=config.overlap,
        mode="gaussian",
        padding_mode="constant",
        cval=0.0,
    )
