"""benchmarks/critic_cost.py times every critic variant (at a tiny size here) and reports it against Dice-only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("task", ["segment", "translate"])
def test_critic_cost_reports_every_variant(task):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from critic_cost import TRANSLATION_VARIANTS, VARIANTS
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    variants = TRANSLATION_VARIANTS if task == "translate" else VARIANTS
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "critic_cost.py"), "--tiny", "--steps", "4",
                           "--rounds", "1", "--task", task], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["machine"]["threads"] == 1
    rows = {r["variant"]: r for r in lines[1:]}
    assert list(rows) == list(variants)
    base = next(iter(variants))
    assert rows[base]["vs_no_critic"] == "+0.0%" and rows["critic (today)"]["vs_todays_critic"] == "+0.0%"
    # The critic's three passes cost CPU time (about +50% a step: far outside the timing's noise).
    assert rows["critic (today)"]["cpu_seconds_per_step"] > 1.2 * rows[base]["cpu_seconds_per_step"]
