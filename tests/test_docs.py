"""The reference manual builds in strict mode (a broken link or a warning fails), its generated
pages hold every command and every config key, and the README's quick commands run as written."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from helpers import make_model
from vox2vox.cli import build_parser
from vox2vox.config import Config

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def test_the_manual_builds_strictly_with_every_command_and_key(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    cli = (site / "cli" / "index.html").read_text()
    commands = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices)
    for name, sub in commands.choices.items():
        assert f"vox2vox {name}" in cli, name
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in cli, (name, flag)
    config_page = (site / "configuration" / "index.html").read_text()
    config = Config()
    for section in dataclasses.fields(config):
        for item in dataclasses.fields(getattr(config, section.name)):
            assert f"{section.name}.{item.name}" in config_page, item.name


def test_the_readme_quick_commands_run_as_written(tmp_path):
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- quick-commands.*?-->\n```bash\n(.*?)```", readme, re.S)
    assert block, "README: the quick-commands block is gone"
    commands = [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.strip()]
    assert {c[1] for c in commands} >= {"--help", "config", "env", "info"}
    run = tmp_path / "runs" / "mine"  # what the quickstart's train writes, for `info`
    make_model(run / "checkpoints" / "best.safetensors")
    for argv in commands:
        assert argv[0] == "vox2vox"
        proc = subprocess.run([sys.executable, "-m", "vox2vox.cli", *argv[1:]], cwd=tmp_path, env=_env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stdout.strip(), (argv, proc.stderr)
