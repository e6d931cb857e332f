"""The package layout is the data flow: which subpackage may import which (checked on the source)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vox2vox"
SUBPACKAGES = ("data", "model", "train", "infer", "report")

# What each subpackage must not import (data flows data -> model -> train/infer -> report).
FORBIDDEN = {
    "data": ("vox2vox.model", "vox2vox.train", "vox2vox.infer", "vox2vox.report"),
    "model": ("vox2vox.train", "vox2vox.infer", "vox2vox.report"),
    "infer": ("vox2vox.train", "vox2vox.report"),
}
# Top-level modules under the same rule: the config is made of data/ and model/ sections and is
# read by every stage, so it may import neither the stages that read it nor the faces above them.
TOP_FORBIDDEN = {
    "config.py": ("vox2vox.train", "vox2vox.infer", "vox2vox.report", "vox2vox.api", "vox2vox.demo"),
    "version.py": ("vox2vox",),
}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, whether the import sits inside a function) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, in_function))
                # `from vox2vox import cli` / `from vox2vox.train import distributed`
                found.extend((f"{child.module}.{alias.name}", in_function) for alias in child.names)
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(tree, False)
    return found


def _subpackage(path: Path) -> str | None:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else None


def _is_within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_layout_has_the_subpackages_and_no_flat_leftovers():
    for sub in SUBPACKAGES:
        assert (PACKAGE / sub / "__init__.py").is_file(), sub
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {"__init__", "api", "atomic", "cli", "config", "demo", "device", "environment", "errors", "progress",
                   "rundir", "version"}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_data_flow(path):
    sub = _subpackage(path)
    for name, _ in _imports(path):
        for banned in FORBIDDEN.get(sub or "", ()):
            assert not _is_within(name, banned), f"{path.name} ({sub}/) imports {name}"
        for banned in TOP_FORBIDDEN.get(path.name, ()) if sub is None else ():
            assert not _is_within(name, banned), f"{path.name} imports {name}"
        if path.name != "cli.py" or sub is not None:
            assert not _is_within(name, "vox2vox.cli"), f"{path.relative_to(PACKAGE)} imports the CLI"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nothing_imports_the_package_root(path):
    # The root is the face that lazily loads the Python API; the version lives in vox2vox.version.
    # The command line, the other face, may use the root.
    if path.relative_to(PACKAGE) in (Path("__init__.py"), Path("cli.py")):
        return
    root = [name for name, _ in _imports(path) if name == "vox2vox"]
    assert not root, f"{path.relative_to(PACKAGE)} imports the package root"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_imports_sit_at_module_top(path):
    # The CLI alone imports each command's library on use (keeps `vox2vox --help` fast).
    if path.relative_to(PACKAGE) == Path("cli.py"):
        return
    if path.relative_to(PACKAGE) == Path("__init__.py"):
        # The package's own __getattr__ imports the Python API on first use (importing vox2vox,
        # as `vox2vox --help` does, must not load torch); nothing else may be lazy there.
        hidden = [name for name, inside in _imports(path) if inside and _is_within(name, "vox2vox")]
        assert set(hidden) <= {"vox2vox", "vox2vox.api"}, hidden
        return
    hidden = [name for name, in_function in _imports(path) if in_function and _is_within(name, "vox2vox")]
    assert not hidden, f"{path.relative_to(PACKAGE)} imports {hidden} inside a function"
