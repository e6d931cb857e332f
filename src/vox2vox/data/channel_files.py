"""One case given as separate channel files on the command line: ``--input t1=a.nii.gz --input
flair=b.nii.gz``, checked against the channel names a model was trained on.

The case becomes the same :class:`DatasetSpec` a one-row manifest would give, so prediction runs
exactly as it does for a manifest (``tests/test_inference.py`` compares the two voxel for voxel).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from vox2vox.data.cases import CaseFiles, DatasetSpec, check_case_id
from vox2vox.data.io import strip_volume_suffix
from vox2vox.errors import Vox2VoxError

_NAME = re.compile(r"[A-Za-z0-9_.+-]+")
_SEPARATORS = "_-. "


def is_channel_item(item: str) -> bool:
    """Whether a ``--input`` value is ``NAME=FILE`` rather than a path (one may hold '=')."""
    name, sep, _ = item.partition("=")
    return bool(sep) and bool(_NAME.fullmatch(name)) and not Path(item).exists()


def channel_files_spec(items: Sequence[str], channels: Sequence[str] | None, *,
                       case_id: str | None = None) -> DatasetSpec:
    """One case from ``NAME=FILE`` items, its channels in the model's order ``channels``.

    Every model channel must be given once and nothing else: a missing, unknown or repeated name
    is one error naming it. The case id (the output's file name) is ``case_id``, else the longest
    common start of the files' names (``sub01`` for ``sub01_t1.nii.gz`` and ``sub01_flair.nii.gz``),
    else the first file's name.
    """
    given: dict[str, Path] = {}
    for item in items:
        if not is_channel_item(item):
            raise Vox2VoxError(f"--input {item}: give one case as NAME=FILE for every channel "
                               "(e.g. --input t1=a.nii.gz --input flair=b.nii.gz), or one path alone")
        name, _, file = item.partition("=")
        if name in given:
            raise Vox2VoxError(f"--input {item}: channel {name!r} is given twice")
        path = Path(file)
        if not path.exists():
            raise Vox2VoxError(f"{path}: not found (--input {name}=...)")
        given[name] = path
    if channels is not None:
        expected = list(channels)
        unknown = [n for n in given if n not in expected]
        missing = [n for n in expected if n not in given]
        if unknown or missing:
            problem = (f"unknown channel(s) {', '.join(unknown)}" if unknown else "") + \
                      ("; " if unknown and missing else "") + \
                      (f"missing channel(s) {', '.join(missing)}" if missing else "")
            raise Vox2VoxError(f"--input: {problem}; the model takes {', '.join(expected)} "
                               f"(give each as --input NAME=FILE)")
        given = {n: given[n] for n in expected}
    case_id = case_id or _common_id([p.name for p in given.values()])
    first = next(iter(given.values()))
    check_case_id(case_id, where=first)
    return DatasetSpec(root=first.parent, layout="manifest", channel_names=tuple(given),
                       cases=(CaseFiles(case_id, given, None),), convention="auto")


def _common_id(names: Sequence[str]) -> str:
    stems = [strip_volume_suffix(n) or n for n in names]
    common = os.path.commonprefix(stems)
    if any(len(s) > len(common) and s[len(common)] not in _SEPARATORS for s in stems):
        # Cut back to a whole word: "sub01" of sub01_c0 and sub01_c1, not "sub01_c".
        common = common[:max((common.rfind(c) for c in _SEPARATORS), default=-1) + 1]
    common = common.rstrip(_SEPARATORS)
    return common if len(stems) > 1 and common else stems[0]
