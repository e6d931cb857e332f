"""Manifest CSVs: ``id,<channel>,...,<channel>[,mask][,label]``, read and written here.

Column names (one vocabulary for reading and writing): the first column names the case
(:data:`ID_COLUMNS`), a ``mask`` column (:data:`MASK_COLUMNS`) names a brain/body mask, a last
``label`` column (:data:`LABEL_COLUMNS`) the label map; every other column is an image channel.
Paths are stored relative to the CSV where possible.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from vox2vox.atomic import atomic_write_text
from vox2vox.data.cases import CaseFiles, DatasetSpec
from vox2vox.errors import Vox2VoxError

#: Accepted (lower-case) spellings of each special column; the first is the one written.
ID_COLUMNS = ("id", "case", "case_id", "subject")
LABEL_COLUMNS = ("label", "seg", "labels")
MASK_COLUMNS = ("mask", "brainmask", "brain_mask")
#: Names a channel cannot have, since the reader would take the column for something else.
RESERVED_COLUMNS = frozenset((*ID_COLUMNS, *LABEL_COLUMNS, *MASK_COLUMNS))


def read_manifest(path: Path) -> DatasetSpec:
    """CSV ``id,<channel>,...,<channel>[,label]``; relative paths are relative to the CSV."""
    if path.is_dir():
        csvs = sorted(path.glob("*.csv"))
        if len(csvs) != 1:
            raise Vox2VoxError(f"{path}: expected exactly one manifest .csv, found {len(csvs)}")
        path = csvs[0]
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            rows = list(reader)
    except (OSError, UnicodeDecodeError) as err:
        raise Vox2VoxError(f"{path}: cannot read manifest ({err})") from err
    except csv.Error as err:  # a field over csv's size limit, a NUL byte, an unclosed quote...
        raise Vox2VoxError(f"{path}: line {reader.line_num}: malformed CSV ({err}); fix the manifest") from err
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise Vox2VoxError(f"{path}: manifest is empty; add a header id,<channel>,...,label")
    header = [h.strip() for h in rows[0]]
    if not header or header[0].lower() not in ID_COLUMNS:
        raise Vox2VoxError(
            f"{path}: first column must be 'id' (header id,<channel>,...,label), got {header[:1]}"
        )
    has_label = header[-1].lower() in LABEL_COLUMNS
    mask_column = next(
        (i for i, h in enumerate(header) if i > 0 and h.lower() in MASK_COLUMNS),
        None,
    )
    channel_names = tuple(
        h for i, h in enumerate(header)
        if 0 < i and i != mask_column and not (has_label and i == len(header) - 1)
    )
    if not channel_names:
        raise Vox2VoxError(f"{path}: manifest names no image channel; add columns after 'id'")
    if len(set(channel_names)) != len(channel_names):
        raise Vox2VoxError(f"{path}: channel names repeat in the header {header}")
    base = path.parent.absolute()
    cases, seen = [], set()
    for line, row in enumerate(rows[1:], start=2):
        cells = [c.strip() for c in row]
        if len(cells) != len(header):
            raise Vox2VoxError(
                f"{path}: line {line} has {len(cells)} columns, the header has {len(header)}"
            )
        if any(_CONTROL.search(c) for c in cells[1:]):
            raise Vox2VoxError(f"{path}: line {line}: a path holds a control character (NUL, tab...); "
                               "malformed CSV, fix the manifest")
        case_id = cells[0]
        if not case_id or case_id in seen:
            raise Vox2VoxError(f"{path}: line {line}: case id {case_id!r} is empty or repeated")
        seen.add(case_id)
        by_name = dict(zip(header, cells, strict=True))
        # An empty cell is a contrast this case lacks: prediction may run without it
        # (CaseFiles.absent); reading the case for anything else refuses it.
        absent = tuple(n for n in channel_names if not by_name[n])
        if len(absent) == len(channel_names):
            raise Vox2VoxError(f"{path}: line {line}: case {case_id} has no channel path at all")
        channels = {n: resolve_cell(base, by_name[n]) for n in channel_names if by_name[n]}
        label = resolve_cell(base, cells[-1]) if has_label and cells[-1] else None
        mask = resolve_cell(base, cells[mask_column]) if mask_column is not None and cells[mask_column] else None
        cases.append(CaseFiles(case_id, channels, label, mask, absent))
    return DatasetSpec(path, "manifest", channel_names, tuple(cases), "auto")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def resolve_cell(base: Path, cell: str) -> Path:
    """``cell`` relative to ``base`` (absolute paths stay), with ``..`` folded textually."""
    return Path(os.path.normpath(base / Path(cell).expanduser()))


def write_manifest(
    path: str | Path,
    cases: list[tuple[str, dict[str, str | Path | None], str | Path | None]],
    *,
    masks: dict[str, str | Path] | None = None,
) -> Path:
    """Write a manifest CSV (paths stored relative to the CSV where possible), atomically.

    ``cases``: ``(case_id, {channel: path}, label_path_or_None)``, channels in the same order for
    every case (a None path: an empty cell, the case lacks that channel); ``masks``: optional
    case id -> brain/body mask file (adds a ``mask`` column).
    """
    path = Path(path)
    if not cases:
        raise Vox2VoxError(f"{path}: no cases to write")
    names = list(cases[0][1])
    with_label = any(label is not None for _, _, label in cases)
    header = [ID_COLUMNS[0], *names, *([MASK_COLUMNS[0]] if masks else []), *([LABEL_COLUMNS[0]] if with_label else [])]
    lines = [",".join(header)]
    for case_id, channels, label in cases:
        if list(channels) != names:
            raise Vox2VoxError(f"{path}: case {case_id} has channels {list(channels)}, not {names}")
        cells = [case_id, *("" if channels[n] is None else _relative(channels[n], path.parent)  # type: ignore[arg-type]
                            for n in names)]
        if masks:
            cells.append(_relative(masks[case_id], path.parent) if case_id in masks else "")
        if with_label:
            cells.append("" if label is None else _relative(label, path.parent))
        lines.append(",".join(cells))
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_spec_manifest(spec: DatasetSpec, path: str | Path) -> Path:
    """Write the cases :func:`discover` found as a manifest CSV that discovers to the same cases.

    A starting point to edit by hand (drop a case, rename a channel, fix a path). 4D files
    holding several channels (MSD) cannot be expressed as one path per channel column.
    """
    path = Path(path)
    if not path.name.lower().endswith(".csv"):
        raise Vox2VoxError(f"{path}: a manifest must be a .csv file")
    files = [p for c in spec.cases for p in c.channels.values()]
    if len(set(files)) < len(files):
        raise Vox2VoxError(
            f"{path}: {spec.root} stores several channels in one 4D file ({spec.layout}); a manifest "
            "needs one file per channel"
        )
    clash = [n for n in spec.channel_names if n.lower() in RESERVED_COLUMNS]
    if clash:
        raise Vox2VoxError(f"{path}: channel name(s) {', '.join(clash)} are manifest column names; pass --channels")
    cases = [(c.case_id, {n: c.channels.get(n) for n in spec.channel_names}, c.label) for c in spec.cases]
    masks = {c.case_id: c.mask for c in spec.cases if c.mask is not None}
    return write_manifest(path, cases, masks=masks or None)


def _relative(target: str | Path, base: Path) -> str:
    try:
        return os.path.relpath(Path(target).resolve(), base.resolve())
    except ValueError:  # another drive on Windows
        return str(Path(target).resolve())
