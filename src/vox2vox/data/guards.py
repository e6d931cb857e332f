"""Checks made on a volume file BEFORE its voxels are read (issue 13: never silently wrong).

- :func:`check_declared_size`: the voxel count a header declares, against this machine's memory,
  so a small ``.nii.gz`` declaring a huge volume is refused before it inflates, and zero-size
  dimensions are refused before anything downstream divides by them.
- :func:`check_data_file_references`: MetaImage (``.mhd``/``.mha``) and detached NRRD
  (``.nhdr``/``.nrrd``) headers may name their voxel file(s); only files inside the header's own
  folder are read, never an absolute or escaping path.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

from vox2vox.errors import Vox2VoxError

#: Bytes per voxel a read may need beyond the file's own type: the float32 copy made for images.
_WORKING_COPIES = 2


def memory_limit_bytes() -> int:
    """Physical memory of this machine (``VOX2VOX_MAX_VOLUME_BYTES`` overrides it)."""
    override = os.environ.get("VOX2VOX_MAX_VOLUME_BYTES")
    if override:
        try:
            return int(override)
        except ValueError:
            raise Vox2VoxError(f"VOX2VOX_MAX_VOLUME_BYTES={override!r}: give a number of bytes") from None
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: no limit we can know
        return 2**62


def check_declared_size(path: str | os.PathLike[str], shape: Sequence[int], itemsize: int, *,
                        what: str = "header declares",
                        fix: str = "the header is wrong or the volume must be cropped or downsampled first") -> None:
    """Refuse zero-size dimensions and volumes that cannot fit in memory, from the header alone."""
    shape = tuple(int(s) for s in shape)
    if any(s <= 0 for s in shape):
        raise Vox2VoxError(
            f"{path}: has a zero-size dimension (shape {shape}); the file holds no voxels, re-export it"
        )
    voxels = math.prod(shape)
    needed = voxels * max(int(itemsize), 4) * _WORKING_COPIES
    limit = memory_limit_bytes()
    if needed > limit:
        raise Vox2VoxError(
            f"{path}: {what} {'x'.join(map(str, shape))} voxels ({_gib(voxels * itemsize)} of data), more than "
            f"this machine's memory ({_gib(limit)}) can hold; {fix}"
        )


def _gib(n: int) -> str:
    return f"{n / 1024**3:.3g} GiB"


# ---- files named inside headers -------------------------------------------------------------------
_HEADER_BYTES = 1 << 16
_METAIMAGE = (".mhd", ".mha")
_NRRD = (".nhdr", ".nrrd")


def check_data_file_references(path: str | os.PathLike[str]) -> None:
    """Refuse a MetaImage or NRRD header whose data file lies outside the header's folder."""
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(_METAIMAGE + _NRRD):
        return
    try:
        with path.open("rb") as handle:
            head = handle.read(_HEADER_BYTES)
    except OSError as err:
        raise Vox2VoxError(f"{path}: cannot read ({err.strerror})") from err
    text = head.decode("latin-1")
    names = _metaimage_files(text) if name.endswith(_METAIMAGE) else _nrrd_files(text)
    folder = Path(os.path.realpath(path.parent))
    for ref in names:
        if os.path.isabs(ref) or re.match(r"^[A-Za-z]:[\\/]", ref):
            raise Vox2VoxError(
                f"{path}: header names data file {ref!r} by an absolute path; only files beside the header "
                "are read: copy the data next to it and name it relatively"
            )
        target = Path(os.path.realpath(folder / ref))
        if folder != target and folder not in target.parents:
            raise Vox2VoxError(
                f"{path}: header names data file {ref!r} outside its own folder; only files beside the header "
                "are read: copy the data next to it"
            )


def _metaimage_files(text: str) -> list[str]:
    """Data files of a MetaImage header (``ElementDataFile`` is its last field)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        key, sep, value = line.partition("=")
        if not sep or key.strip().lower() != "elementdatafile":
            continue
        value = value.strip()
        if value.upper() == "LOCAL":
            return []
        if value.upper().startswith("LIST"):
            return [entry.strip() for entry in lines[index + 1:] if entry.strip()]
        if "%" in value:  # a printf pattern: "slice%03d.raw 1 10 1"
            return [value.split()[0]]
        return [value]
    return []


def _nrrd_files(text: str) -> list[str]:
    """Data files of a NRRD header (``data file:``/``datafile:``; the header ends at a blank line)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if not line.strip():
            return []  # end of header: attached data
        key, sep, value = line.partition(":")
        if not sep or key.strip().lower() not in ("data file", "datafile"):
            continue
        value = value.strip()
        if value.upper().startswith("LIST"):
            files = []
            for entry in lines[index + 1:]:
                if not entry.strip():
                    break
                files.append(entry.strip())
            return files
        return [value.split()[0]] if "%" in value else [value]
    return []
