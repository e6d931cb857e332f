"""What a dataset is once found: its cases' files, and the rule for a usable case id.

:func:`vox2vox.data.layouts.discover` returns a :class:`DatasetSpec`; loading, checking,
training and prediction all take its :class:`CaseFiles`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vox2vox.data.labels import LabelConvention, get_convention
from vox2vox.errors import Vox2VoxError


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case. ``channels`` is ordered (same order in every case of a dataset).

    Several channel names may point at the same 4D file (MSD): they are its volumes in order.
    Paths are what the layout expects; a missing file is reported by :func:`check_dataset`.
    ``mask`` (optional) is a brain/body mask (> 0.5 inside): z-scoring and cropping use it
    instead of the "differs from the background value" rule.
    ``absent`` names the dataset's channels this case has no file for (an empty manifest cell):
    reading the case refuses it (:func:`vox2vox.data.loading.read_case`); only prediction with a
    model trained with channel dropout takes it (:func:`vox2vox.data.loading.load_case_without`).
    """

    case_id: str
    channels: dict[str, Path]
    label: Path | None
    mask: Path | None = None
    absent: tuple[str, ...] = ()

    def channel_files(self) -> dict[Path, list[str]]:
        """Each distinct image file with the channel names it holds, in channel order: reading
        and checking a case both read each file once (an MSD 4D file holds several channels)."""
        groups: dict[Path, list[str]] = {}
        for name, file in self.channels.items():
            groups.setdefault(Path(file), []).append(name)
        return groups


@dataclass(frozen=True)
class DatasetSpec:
    """What :func:`discover` found: the layout, channel names, cases, and the label convention.

    ``convention`` is a built-in name (``brats``, ``brats2023``, ...), ``"custom"`` when
    ``label_values`` holds a map read from dataset.json, or ``"auto"`` when the layout says
    nothing (manifests, single files): labels are then taken as class indices unchanged.
    """

    root: Path
    layout: str
    channel_names: tuple[str, ...]
    cases: tuple[CaseFiles, ...]
    convention: str
    label_values: dict | None = None

    def label_convention(self) -> LabelConvention | None:
        """The layout's label convention, or None for ``"auto"``."""
        if self.convention == "custom" and self.label_values is not None:
            return get_convention(self.label_values)
        if self.convention == "auto":
            return None
        return get_convention(self.convention)


#: Case ids become output file names (``<id>.nii.gz``): no folder separators, no control
#: characters, no leading dot (``.``/``..`` or hidden and temporary names).
_UNSAFE_ID = re.compile(r"[/\\\x00-\x1f\x7f]|^\.")


def check_case_id(case_id: str, *, where: str | Path) -> str:
    """``case_id`` if it is safe as a file name inside an output folder, else a user error."""
    if not case_id or _UNSAFE_ID.search(case_id):
        raise Vox2VoxError(
            f"{where}: case id {case_id!r} cannot be used as a file name (no '/', '\\', leading '.' "
            "or control characters); rename the case"
        )
    return case_id
