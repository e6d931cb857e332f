"""Timing a plan's candidates: whether other processes kept the cores busy while steps were timed."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

from vox2vox.device import Device
from vox2vox.train.timing import CpuWatch, contention_note

CPU = Device("cpu", 24 * 2**30, "cpu", 2)


def test_the_plan_notices_other_processes_using_the_cpu_while_it_times_steps():
    """Step times measured on a busy machine shrink the patch; the plan must say so, and its
    measure must count other processes' CPU time, not its own."""
    spin = "import time\nt = time.perf_counter()\nwhile time.perf_counter() - t < 1.5: pass"
    with CpuWatch() as busy:
        subprocess.run([sys.executable, "-c", spin], check=True)  # another process keeps a core busy
    with CpuWatch() as own:
        t = time.perf_counter()
        while time.perf_counter() - t < 1.0:  # this process keeps a core busy: not "others"
            pass
    assert busy.others_cores is not None and own.others_cores is not None  # Linux: /proc/stat
    assert busy.others_cores > 0.6 and own.others_cores < busy.others_cores - 0.4
    # Two threads on two cores: half a core taken by others is contention; on sixteen cores it is not.
    note = contention_note(0.8, CPU, cores=2)
    assert note and note.startswith("warning:") and "idle" in note
    assert contention_note(0.3, CPU, cores=2) is None and contention_note(None, CPU, cores=2) is None
    assert contention_note(8.0, CPU, cores=16) is None and contention_note(15.0, CPU, cores=16)
    assert contention_note(2.0, dataclasses.replace(CPU, kind="cuda"), cores=2) is None  # a GPU step is not CPU-bound
