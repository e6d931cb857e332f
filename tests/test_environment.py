"""`vox2vox env`: the torch build, devices, CPU features, threads and memory a run meets here."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vox2vox.cli import main
from vox2vox.device import cpu_bf16, detect_device
from vox2vox.environment import VECTOR_FLAGS, read_environment, torch_build


def test_env_reports_what_torch_and_the_planner_see(capsys):
    assert main(["env", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["torch"] == torch.__version__ and env["torch_threads"] == torch.get_num_threads()
    assert env["torch_build"] == ("CPU" if not (torch.version.cuda or torch.version.hip) else env["torch_build"])
    assert len(env["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    device = detect_device("auto")
    assert env["plan_threads"] == device.threads
    assert abs(env["plan_memory_gib"] * 1024**3 - device.memory_bytes) < 1024**2
    assert 0 < env["memory_available_gib"] <= env["memory_total_gib"]
    assert 1 <= env["usable_cpus"] <= env["logical_cpus"]
    cpuinfo = Path("/proc/cpuinfo").read_text()
    flags = set(next(line for line in cpuinfo.splitlines() if line.startswith(("flags", "Features"))).split(":")[1].split())
    assert env["cpu_flags"] == [f for f in VECTOR_FLAGS if f in flags]
    assert env["cpu_bf16"] == cpu_bf16()  # whether a CPU plan also times bf16 autocast

    assert main(["env"]) == 0
    text = capsys.readouterr().out
    assert f"torch {torch.__version__}: {env['torch_build']} build" in text
    assert "CPU vector extensions: " in text and "a plan here targets: " in text
    assert "bf16 on the CPU: " + ("fast in oneDNN" if env["cpu_bf16"] else "no fast oneDNN path") in text


def test_torch_build_names_cuda_and_rocm(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.version, "hip", None)
    assert torch_build() == "CUDA 12.4"
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    assert torch_build() == "ROCm 6.2.41133"


def test_text_says_why_there_is_no_gpu():
    env = read_environment()
    env.gpus, env.torch_build = [], "CPU"
    assert "GPUs: none (this torch build has no GPU support)" in env.format()
    env.torch_build = "CUDA 12.4"
    assert "GPUs: none (none visible to this torch build)" in env.format()
