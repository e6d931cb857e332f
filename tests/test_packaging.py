"""The package as a user installs it: the wheel and sdist build, the wheel installs into a fresh
virtual environment outside the source tree, and the installed command trains, predicts and
evaluates a real case there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from vox2vox import __version__

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _clean_env() -> dict[str, str]:
    """The caller's environment without what would import vox2vox from the source tree."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_source_tree(tmp_path, shared_data):
    env = _clean_env()
    dist = tmp_path / "dist"
    # The sdist first, then the wheel built from the unpacked sdist (python -m build's default):
    # a file the sdist forgets breaks the wheel here. No isolation: the build backend installed
    # here (the test extra) is used instead of downloading one.
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(REPO)], cwd=tmp_path, env=env)
    wheel = next(dist.glob(f"vox2vox-{__version__}-py3-none-any.whl"))
    sdist = next(dist.glob(f"vox2vox-{__version__}.tar.gz"))
    assert sdist.stat().st_size > 0
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    assert "vox2vox/cli.py" in names and any(n.endswith("licenses/LICENSE") for n in names)

    # A fresh environment that sees this one's packages (torch included) only through a path
    # file, appended after its own site-packages, so the wheel's vox2vox is the one imported.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp_path, env=env).stdout.strip())
    (site / "outer-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --no-index: every declared requirement (with the dicom extra) must already be satisfied.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-index",
          f"{wheel}[dicom]"], cwd=tmp_path, env=env, timeout=180)

    work = tmp_path / "work"
    work.mkdir()
    where = _run([str(python), "-c", "import vox2vox; print(vox2vox.__file__)"], cwd=work, env=env).stdout
    assert Path(where.strip()).is_relative_to(venv), where
    vox2vox = str(venv / "bin" / "vox2vox")
    assert _run([vox2vox, "--version"], cwd=work, env=env).stdout.strip() == f"vox2vox {__version__}"
    assert "train.patch_size" in _run([vox2vox, "config"], cwd=work, env=env).stdout

    # A tiny train -> predict -> evaluate on the real spinal-cord case.
    cord = shared_data / "mri-spinalcord" / "t1"
    (work / "cord.csv").write_text(f"id,t1,label\ncord,{cord / 't1w.nii.gz'},{cord / 't1w_seg-manual.nii.gz'}\n")
    tiny = ["--set", "generator.base_filters=4", "--set", "generator.depth=3", "--set", "generator.bottleneck_blocks=1",
            "--set", "discriminator.base_filters=4", "--set", "train.patch_size=[24,24,24]",
            "--set", "train.batch_size=1", "--set", "data.val_cases=0", "--set", "train.epochs=1",
            "--set", "train.device=\"cpu\""]
    _run([vox2vox, "train", "--config", "paper", "--data", "cord.csv", "--out", "run", "--no-progress", *tiny],
         cwd=work, env=env)
    _run([vox2vox, "predict", "--model", "run", "--input", "cord.csv", "--output", "preds", "--device", "cpu",
          "--no-progress"], cwd=work, env=env)
    assert (work / "preds" / "cord.nii.gz").is_file()
    scores = _run([vox2vox, "evaluate", "--pred", "preds", "--truth", "cord.csv", "--regions", "labels",
                   "--out", "scores.csv"], cwd=work, env=env)
    assert "cord" in (work / "scores.csv").read_text() and scores.stdout


def test_every_imported_library_is_declared():
    """Each third-party module the package imports is a runtime dependency or in an extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {_requirement_name(r) for r in extra}
    # Import names that differ from their distribution's name.
    distribution = {"SimpleITK": "simpleitk", "torch": "torch", "onnxruntime": "onnxruntime",
                    "mlflow": "mlflow-skinny", "yaml": "pyyaml"}
    # torch.utils.tensorboard needs the tensorboard distribution (the tensorboard extra).
    imported = _imported_top_level(REPO / "src" / "vox2vox") | {"tensorboard"}
    stdlib = set(sys.stdlib_module_names) | {"vox2vox"}
    missing = sorted(m for m in imported - stdlib if _normalised(distribution.get(m, m)) not in declared)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def _requirement_name(requirement: str) -> str:
    for stop in "<>=!~[; ":
        requirement = requirement.split(stop, 1)[0]
    return _normalised(requirement.strip())


def _normalised(name: str) -> str:
    """A distribution name as the package index compares them (PEP 503: runs of -, _ and . alike)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level(package: Path) -> set[str]:
    import ast

    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_citation_cites_the_tool_and_the_paper():
    import yaml  # mkdocs (the test extra) brings PyYAML

    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["version"] == __version__
    paper = citation["preferred-citation"]
    assert [a["family-names"] for a in paper["authors"]] == ["Cirillo", "Abramian", "Eklund"]
    assert "BrainLes 2020" in paper["collection-title"]
    assert "Apache License" in (REPO / "LICENSE").read_text()
