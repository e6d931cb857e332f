"""Device choice and mixed-precision logic (CUDA branches tested on CPU by patching torch.cuda)."""

from __future__ import annotations

import contextlib

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


@pytest.mark.parametrize("choice", ["auto", "off", "bf16", "fp16"])
def test_no_mixed_precision_on_cpu(choice):
    assert resolve_amp(choice, torch.device("cpu")) == "off"


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
