"""Device choice and mixed-precision logic (CUDA branches tested on CPU by patching torch.cuda)."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys

import pytest
import torch

from vox2vox.device import autocast, make_grad_scaler, resolve_amp, resolve_device
from vox2vox.errors import Vox2VoxError

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")


@needs_no_gpu
def test_auto_is_cpu_without_a_gpu():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@needs_no_gpu
@pytest.mark.parametrize("choice", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_a_user_error(choice):
    with pytest.raises(Vox2VoxError, match="no CUDA GPU"):
        resolve_device(choice)


def test_auto_picks_cuda_when_a_gpu_is_visible(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")


@pytest.mark.parametrize("choice", ["tpu", "mps", "gpu", ""])
def test_unknown_devices_are_rejected(choice):
    with pytest.raises(Vox2VoxError, match="choose auto, cpu or cuda"):
        resolve_device(choice)


@pytest.mark.parametrize("choice", ["auto", "off", "fp16"])
def test_no_mixed_precision_on_cpu_unless_bf16_is_asked_for(choice):
    assert resolve_amp(choice, torch.device("cpu")) == "off"


def test_explicit_bf16_holds_on_cpu():
    # A plan writes bf16 only where its timing showed the gain; an explicit choice is honoured.
    assert resolve_amp("bf16", torch.device("cpu")) == "bf16"


@pytest.mark.parametrize(("bf16_supported", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_amp_on_cuda_prefers_bf16(monkeypatch, bf16_supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    cuda = torch.device("cuda")
    assert resolve_amp("auto", cuda) == expected
    assert resolve_amp("off", cuda) == "off"
    assert resolve_amp("fp16", cuda) == "fp16"
    assert resolve_amp("bf16", cuda) == "bf16"


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_unknown_amp_choice_is_rejected_on_every_device(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    with pytest.raises(Vox2VoxError, match="train.amp"):
        resolve_amp("fp8", torch.device(device))


def test_autocast_is_a_no_op_when_off():
    ctx = autocast(torch.device("cpu"), "off")
    assert isinstance(ctx, contextlib.nullcontext)
    layer = torch.nn.Linear(4, 4)
    with ctx:
        assert not torch.is_autocast_enabled("cpu")
        assert layer(torch.randn(2, 4)).dtype == torch.float32


def test_autocast_bf16_on_cpu_lowers_matmul_precision():
    layer = torch.nn.Linear(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    assert layer(torch.randn(2, 4)).dtype == torch.float32


def test_grad_scaler_only_for_fp16():
    assert not make_grad_scaler(torch.device("cpu"), "off").is_enabled()
    assert not make_grad_scaler(torch.device("cpu"), "bf16").is_enabled()


def _allocator_probe(env_value: str | None) -> list[str]:
    """In a fresh process: whether tuning applied (twice), and the page faults of re-allocating
    and filling 256 MB just freed (a reused block faults nothing; a fresh mapping faults it all)."""
    env = {k: v for k, v in os.environ.items() if k != "VOX2VOX_MALLOC"}
    if env_value is not None:
        env["VOX2VOX_MALLOC"] = env_value
    code = (
        "import resource, torch\n"
        "from vox2vox.device import tune_cpu_allocator as t\n"
        "a = t()\n"
        "x = torch.ones(64, 2**20); del x\n"
        "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "y = torch.zeros(60, 2**20)  # a little smaller: fits the freed block whatever its alignment\n"
        "faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0\n"
        "print(a, t(), float(y.sum()), faults)\n"
    )
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.split()


pages_256mb = 256 * 2**20 // 4096


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tuned_allocator_reuses_freed_memory_instead_of_faulting_it_back():
    applied, again, total, faults = _allocator_probe(None)
    assert applied == again == "True"
    assert total == "0.0"  # a reused block is not kernel-zeroed: torch.zeros must still zero it
    assert int(faults) < pages_256mb // 10


def test_allocator_tuning_can_be_switched_off():
    applied, again, total, faults = _allocator_probe("default")
    assert applied == again == "False" and total == "0.0"
    if platform.libc_ver()[0] == "glibc":
        assert int(faults) > pages_256mb // 2  # glibc unmapped the block; the new one faults in
