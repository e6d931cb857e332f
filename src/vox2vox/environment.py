"""``vox2vox env``: the machine as vox2vox sees it: the torch build, its devices, the CPU, memory.

A plan (``vox2vox plan``, planned ``train``) is timed on and sized for this machine, and a wrong
torch build (the CPU wheel on a GPU node, a CUDA build without a visible GPU) is the most common
reason a run is slower than expected; this module says which build, devices and CPU features a
run will meet, in text for people and JSON for scripts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vox2vox.device import cpu_bf16, detect_device
from vox2vox.train.planner import default_budget
from vox2vox.train.schedule import format_duration
from vox2vox.version import __version__

#: CPU flags (as Linux names them in /proc/cpuinfo) that decide how fast 3D convolutions run on a
#: CPU: oneDNN picks its kernels by them, and bf16 prediction (``--amp bf16``) needs the last ones.
VECTOR_FLAGS = ("sse4_2", "fma", "avx", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                "amx_tile", "amx_bf16", "amx_int8")

GIB = 1024**3


@dataclass
class GpuInfo:
    index: int
    name: str
    memory_gib: float
    capability: str  # CUDA compute capability, or the ROCm architecture name
    bf16: bool


@dataclass
class Environment:
    vox2vox: str
    python: str
    platform: str
    torch: str
    torch_build: str  # "CPU", "CUDA 12.4", "ROCm 6.2"
    cudnn: str | None
    cpu_model: str
    cpu_flags: list[str]  # the VECTOR_FLAGS this CPU has
    torch_cpu_capability: str  # the widest vector kernels torch dispatches to here (DEFAULT, AVX2, AVX512)
    cpu_bf16: bool  # oneDNN runs bf16 fast here, so a CPU plan also times bf16 autocast
    logical_cpus: int
    usable_cpus: int  # in this process's CPU affinity mask (what a batch job's allocation allows)
    torch_threads: int
    memory_total_gib: float
    memory_available_gib: float | None
    memory_limit_gib: float | None  # a cgroup (container, batch job) limit below the machine's memory
    gpus: list[GpuInfo] = field(default_factory=list)
    mps: bool = False
    plan_device: str = ""  # what a plan targets with --device auto
    plan_memory_gib: float = 0.0
    plan_threads: int = 0
    plan_default_budget: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def format(self) -> str:
        def gib(value: float | None) -> str:
            return "unknown" if value is None else f"{value:.1f} GiB"

        lines = [
            f"vox2vox {self.vox2vox}, Python {self.python}, {self.platform}",
            f"torch {self.torch}: {self.torch_build} build" + (f", cuDNN {self.cudnn}" if self.cudnn else ""),
            f"CPU: {self.cpu_model}; {self.usable_cpus} of {self.logical_cpus} logical CPUs usable; "
            f"torch uses {self.torch_threads} threads",
            f"CPU vector extensions: {', '.join(self.cpu_flags) or 'none found'} "
            f"(torch's kernels here: {self.torch_cpu_capability}); bf16 on the CPU: "
            + ("fast in oneDNN, so a plan times it and trains in it where it measured faster" if self.cpu_bf16
               else "no fast oneDNN path, so plans train in fp32"),
            f"memory: {gib(self.memory_total_gib)} total, {gib(self.memory_available_gib)} available"
            + (f", limited to {gib(self.memory_limit_gib)} for this process's group" if self.memory_limit_gib else ""),
        ]
        if self.gpus:
            for gpu in self.gpus:
                lines.append(f"GPU {gpu.index}: {gpu.name}, {gpu.memory_gib:.1f} GiB, {gpu.capability}, "
                             f"bf16 {'yes' if gpu.bf16 else 'no'}")
        else:
            why = ("this torch build has no GPU support" if self.torch_build == "CPU"
                   else "none visible to this torch build")
            lines.append(f"GPUs: none ({why})")
        if self.mps:
            lines.append("Apple GPU (MPS): available to torch, not used by vox2vox (CPU instead)")
        lines.append(f"a plan here targets: {self.plan_device} with {self.plan_memory_gib:.1f} GiB and "
                     f"{self.plan_threads} threads; budget without --budget: {self.plan_default_budget}")
        return "\n".join(lines) + "\n"


def torch_build() -> str:
    if torch.version.hip:
        return f"ROCm {torch.version.hip}"
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda}"
    return "CPU"


def read_environment() -> Environment:
    device = detect_device("auto")
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    total, available = _memory()
    return Environment(
        vox2vox=__version__,
        python=platform.python_version(),
        platform=f"{platform.system()} {platform.machine()}",
        torch=torch.__version__,
        torch_build=torch_build(),
        cudnn=str(cudnn) if cudnn else None,
        cpu_model=cpu_model(),
        cpu_flags=[f for f in VECTOR_FLAGS if f in _cpu_flags()],
        torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
        cpu_bf16=cpu_bf16(),
        logical_cpus=os.cpu_count() or 1,
        usable_cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
        torch_threads=torch.get_num_threads(),
        memory_total_gib=total / GIB,
        memory_available_gib=None if available is None else available / GIB,
        memory_limit_gib=_cgroup_limit(total),
        gpus=_gpus(),
        mps=bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        plan_device=device.kind if device.kind == "cpu" else f"{device.kind} ({device.name})",
        plan_memory_gib=device.memory_bytes / GIB,
        plan_threads=device.threads,
        plan_default_budget=format_duration(default_budget(device)),
    )


def _gpus() -> list[GpuInfo]:
    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        arch = getattr(props, "gcnArchName", "") if torch.version.hip else ""
        gpus.append(GpuInfo(i, props.name, props.total_memory / GIB,
                            arch or f"compute capability {props.major}.{props.minor}",
                            _bf16(i)))
    return gpus


def _bf16(index: int) -> bool:
    with torch.cuda.device(index):
        return bool(torch.cuda.is_bf16_supported())


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux
        return ""


def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith(("model name", "Hardware", "Model")) and ":" in line:
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _cpu_flags() -> set[str]:
    for line in _cpuinfo().splitlines():
        if line.startswith(("flags", "Features")) and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def _memory() -> tuple[int, int | None]:
    """Total and available bytes: the kernel's MemAvailable (what can be allocated without
    swapping), else total pages only."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return total, int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return total, None


def _cgroup_limit(total: int) -> float | None:
    """A cgroup v2 (or v1) memory limit below the machine's memory, in GiB; None when unlimited."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < total:
            return int(text) / GIB
    return None
