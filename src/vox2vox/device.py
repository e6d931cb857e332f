"""Device choice, mixed precision (CUDA: bf16, or fp16 with loss scaling; else CPU) and the host allocator."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from dataclasses import dataclass
from typing import Literal

import torch

from vox2vox.errors import Vox2VoxError

AmpDtype = Literal["bf16", "fp16", "off"]


@dataclass(frozen=True)
class Device:
    """The machine a plan targets: its kind, memory and name, and the threads PyTorch uses."""

    kind: str  # "cpu" or "cuda"
    memory_bytes: int
    name: str = ""
    threads: int = 1


def resolve_device(choice: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without a GPU is an error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise Vox2VoxError(f"--device {choice}: no CUDA GPU is visible; use --device cpu or auto")
    if choice not in ("cpu",) and not choice.startswith("cuda"):
        raise Vox2VoxError(f"--device {choice}: choose auto, cpu or cuda")
    return torch.device(choice)


def detect_device(choice: str = "auto") -> Device:
    """The device ``choice`` resolves to (:func:`resolve_device`), described for a plan."""
    device = resolve_device(choice)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return Device("cuda", int(props.total_memory), props.name, torch.get_num_threads())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Device("cpu", int(memory), "cpu", torch.get_num_threads())


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The bare network inside a DistributedDataParallel wrapper (itself when not wrapped)."""
    return module.module if hasattr(module, "module") else module


def resolve_amp(choice: str, device: torch.device) -> AmpDtype:
    """Mixed precision for training.

    CUDA: ``auto`` is bf16 where the GPU supports it, fp16 otherwise. CPU: ``auto`` is off (a plan
    writes ``bf16`` explicitly when its step timing on this CPU shows the gain, see
    :func:`cpu_bf16`); an explicit ``bf16`` holds (oneDNN runs bf16 convolutions natively with
    AVX512-BF16 or AMX, and emulates them, slowly, elsewhere); ``fp16`` is off on a CPU.
    """
    if choice not in ("auto", "bf16", "fp16", "off"):
        raise Vox2VoxError(f"train.amp={choice!r}: choose auto, bf16, fp16 or off")
    if device.type == "cpu" and choice == "bf16":
        return "bf16"
    if choice == "off" or device.type != "cuda":
        return "off"
    if choice == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return choice  # type: ignore[return-value]


def cpu_bf16() -> bool:
    """Whether oneDNN runs bf16 on this CPU without falling back to slow reference kernels
    (AVX-512 cores and newer); whether it is also *faster* than fp32 is for a timing to say."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def resolve_prediction_amp(choice: str, device: torch.device) -> AmpDtype:
    """Precision for prediction: as :func:`resolve_amp` (an explicit ``bf16`` holds on a CPU too:
    oneDNN runs the forward pass ~1.5-2x faster with avx512_bf16/AMX; probabilities within ~1e-2)."""
    return resolve_amp(choice, device)


def autocast(device: torch.device, amp: AmpDtype) -> contextlib.AbstractContextManager:
    """Autocast context for forward passes (a no-op when ``amp`` is off)."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, amp: AmpDtype) -> torch.amp.GradScaler:
    """fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not (scaler disabled)."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_allocator_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Keep freed host memory in the process instead of handing it back to the OS (glibc only).

    glibc serves every large request (the activations and weight gradients of a 3D network are
    tens to hundreds of MB) with a fresh ``mmap`` and gives it back with ``munmap`` on free, so each
    training step page-faults and zero-fills the same gigabytes again: on the paper-size generator
    at 64^3 that kernel time was a third of the step (benchmarks/RESULTS.md, "the host
    allocator"). With ``mmap`` off and trimming off, freed blocks are reused; the cost is that the
    process keeps its peak heap (peak RSS +0.6-0.8 GiB for the paper-size model). Called by
    ``fit``, ``train_on_dataset`` and ``predict_probabilities``; idempotent; a no-op off glibc or
    when ``VOX2VOX_MALLOC=default``. Returns whether it applied.
    """
    global _allocator_tuned
    if _allocator_tuned is not None:
        return _allocator_tuned
    _allocator_tuned = False
    if os.environ.get("VOX2VOX_MALLOC", "").lower() == "default" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the trim threshold is an int, so "never" is INT_MAX bytes.
    _allocator_tuned = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _allocator_tuned
