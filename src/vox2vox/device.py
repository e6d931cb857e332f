"""Device choice and mixed precision: CUDA when present (bf16, or fp16 with loss scaling), else CPU."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from vox2vox.errors import Vox2VoxError

AmpDtype = Literal["bf16", "fp16", "off"]


def resolve_device(choice: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without a GPU is an error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise Vox2VoxError(f"--device {choice}: no CUDA GPU is visible; use --device cpu or auto")
    if choice not in ("cpu",) and not choice.startswith("cuda"):
        raise Vox2VoxError(f"--device {choice}: choose auto, cpu or cuda")
    return torch.device(choice)


def resolve_amp(choice: str, device: torch.device) -> AmpDtype:
    """Mixed precision only on CUDA: bf16 where the GPU supports it, fp16 otherwise.

    On CPU autocast brings no speed-up for 3D convolutions here, so ``auto`` means off.
    """
    if choice not in ("auto", "bf16", "fp16", "off"):
        raise Vox2VoxError(f"train.amp={choice!r}: choose auto, bf16, fp16 or off")
    if choice == "off" or device.type != "cuda":
        return "off"
    if choice == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return choice  # type: ignore[return-value]


def autocast(device: torch.device, amp: AmpDtype) -> contextlib.AbstractContextManager:
    """Autocast context for forward passes (a no-op when ``amp`` is off)."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, amp: AmpDtype) -> torch.amp.GradScaler:
    """fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not (scaler disabled)."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))
