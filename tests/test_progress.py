"""Progress bars only where someone watches: a terminal, without --no-progress."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np

from helpers import make_model, save_nifti
from vox2vox.progress import bar_hidden, progress_bars


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_show_on_a_terminal_only(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert not bar_hidden(True)
    assert bar_hidden(False)  # the caller wants none
    with progress_bars(False):  # --no-progress
        assert bar_hidden(True)
    assert not bar_hidden(True)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a file, a pipe, a batch job's log
    assert bar_hidden(True)


def test_predict_draws_no_bar_when_stderr_is_not_a_terminal(tmp_path):
    model = make_model(tmp_path / "model.safetensors")
    image = save_nifti(tmp_path / "case.nii.gz", np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "vox2vox.cli", "predict", "--model", str(model), "--input", str(image),
                           "--output", str(tmp_path / "preds"), "--device", "cpu"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "preds" / "case.nii.gz").is_file()
    # tqdm redraws with carriage returns and reports a rate ("case/s" or "s/case").
    assert "\r" not in proc.stderr and "case/s" not in proc.stderr and "s/case" not in proc.stderr, proc.stderr
