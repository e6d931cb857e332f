"""Run a trained generator on whole volumes: one pass or sliding window, flips, ensembles.

The generator is fully convolutional, so the default runs the whole (padded) volume in one pass,
as the authors did on 160x192x128 crops; that computes every voxel once. Sliding-window inference
with Gaussian blending (MONAI's ``sliding_window_inference``) is for volumes too large for memory.

Shapes: an image is ``(C, D, H, W)`` float32 (preprocessed); probabilities are
``(n_classes, D, H, W)`` float32 on the same grid.
"""

from __future__ import annotations

import dataclasses
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


# ---- predicting cases on disk -------------------------------------------------------------------
@dataclass
class PredictionReport:
    """What :func:`predict_dataset` did: files written and cases that failed (id -> reason)."""

    written: dict[str, Path]
    failed: dict[str, str]


def predict_dataset(
    models: Sequence[LoadedModel],
    input_path: str | Path,
    output_dir: str | Path,
    *,
    config: InferenceConfig = InferenceConfig(),
    device: torch.device | str = "cpu",
    layout: str = "auto",
    progress: bool = True,
) -> PredictionReport:
    """Predict every case under ``input_path`` and write ``<output_dir>/<case_id>.nii.gz``.

    Each case is preprocessed as the models were trained, run (ensemble and flips averaged),
    mapped back to the input's grid and orientation and written as integer labels in the
    training data's convention (e.g. BraTS 4 for enhancing tumour). A case that fails is
    reported and the others go on.
    """
    import sys

    from tqdm import tqdm

    from vox2vox.datasets import CaseFiles, discover, load_case
    from vox2vox.io import write_volume
    from vox2vox.labels import get_convention
    from vox2vox.preprocessing import undo_preprocessing

    if not models:
        raise Vox2VoxError("no model given")
    first = models[0]
    for other in models[1:]:
        if other.config.preprocess != first.config.preprocess or other.state.get("convention") != first.state.get("convention"):
            raise Vox2VoxError(f"{other.path}: ensemble members must share preprocessing and label convention with {first.path}")
    convention = get_convention(first.state["convention"])
    spec = discover(input_path, layout=layout)
    n_in = first.config.generator.in_channels
    if len(spec.channel_names) != n_in:
        raise Vox2VoxError(
            f"{input_path}: cases have {len(spec.channel_names)} channel(s) ({', '.join(spec.channel_names)}) "
            f"but the model was trained on {n_in} ({', '.join(first.channels or [])})"
        )
    prep = dataclasses.replace(first.config.preprocess, cache_dir=None)
    output_dir = Path(output_dir)
    nets = [m.generator for m in models]
    report = PredictionReport({}, {})
    for case in tqdm(spec.cases, desc="predicting", disable=not progress, file=sys.stderr):
        try:
            loaded = load_case(CaseFiles(case.case_id, case.channels, None), convention=None, prep=prep)
            probs = predict_probabilities(nets, loaded.image, config=config, device=device)
            # Back to the input grid as probabilities (linear where it was resampled), then argmax.
            classes = undo_preprocessing(probs, loaded.record, order=1).argmax(0)
            target = output_dir / f"{case.case_id}.nii.gz"
            write_volume(convention.to_source(classes), loaded.geometry, target)
            report.written[case.case_id] = target
        except Vox2VoxError as err:
            report.failed[case.case_id] = str(err)
            if progress:
                tqdm.write(f"{case.case_id}: failed: {err}", file=sys.stderr)
    return report
