"""The ``folders`` layout: one subfolder per case, volume files named alike in every case.

Channels are the shared names that are not label-like, the label is the one label-like name
(``seg``, ``label``, ``mask``, ``GT``, ``OT``...), and a brain/body mask (``brainmask``...)
becomes the case's ``mask``; ``label_name`` and ``channel_names`` settle ambiguous folders.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from vox2vox.data.cases import CaseFiles, DatasetSpec
from vox2vox.data.io import strip_volume_suffix
from vox2vox.errors import Vox2VoxError

#: Whole words (after splitting on separators and camelCase) that mark a label file.
_LABEL_WORDS = frozenset(
    {"seg", "segmentation", "label", "labels", "labelmap", "mask", "gt", "truth", "groundtruth", "ot",
     "annotation", "annotations"}
)


#: Separator-free spellings of a brain/body mask (``brainmask``, ``T1_brain_mask``, ``mask_brain``).
_BODY_MASK_WORDS = ("brainmask", "maskbrain", "bodymask", "maskbody", "headmask", "maskhead")


def _volume_files(folder: Path) -> dict[str, Path]:
    """Volume files directly in ``folder``: lower-case stem -> path (text, licences... ignored)."""
    found: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        stem = strip_volume_suffix(file.name)
        if stem is None or not file.is_file():
            continue
        if stem.lower() in found:
            raise Vox2VoxError(
                f"{file}: {found[stem.lower()].name} has the same name; keep one of the two"
            )
        found[stem.lower()] = file
    return found


def case_folders(root: Path) -> list[Path]:
    """Subfolders of ``root`` that hold at least one volume file (the candidate cases)."""
    return [
        p for p in sorted(root.iterdir())
        if p.is_dir() and not p.name.startswith(".") and any(strip_volume_suffix(f.name) for f in p.iterdir())
    ]


def is_one_case_folder(folder: Path) -> bool:
    """Whether ``folder`` itself looks like one case: image files plus exactly one label file."""
    stems = [strip_volume_suffix(f.name) for f in folder.iterdir() if f.is_file()]
    stems = [s for s in stems if s is not None]
    labels = [s for s in stems if _is_label_like(s) and not _is_body_mask(s)]
    return len(labels) == 1 and any(not _is_label_like(s) for s in stems)


def _words(stem: str) -> tuple[list[str], list[str]]:
    """(separator-delimited parts, camelCase words), lower-cased: ``OTMultiClass`` -> ot, multi, class."""
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", stem) if p]
    words = [w for p in parts for w in re.findall(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+", p)]
    return [p.lower() for p in parts], [w.lower() for w in words]


def _is_label_like(stem: str) -> bool:
    """Whether a file stem names a label map or mask (``GT_W``, ``OTMultiClass``, ``CT_mask``, ``x_seg``)."""
    parts, words = _words(stem)
    return any(w in _LABEL_WORDS for w in (*parts, *words)) or any(p.endswith(("mask", "seg")) for p in parts)


def _is_body_mask(stem: str) -> bool:
    """Whether a label-like stem is a brain/body mask (used for normalisation, not as the target)."""
    joined = re.sub(r"[^a-z]", "", stem.lower())
    return any(m in joined for m in _BODY_MASK_WORDS)


def _match_name(wanted: str, names: dict[str, str]) -> str | None:
    """The key of ``names`` (lower stem -> display name) that ``wanted`` means, with or without
    suffix, case-insensitively; else the one name whose first ``_``/``-`` token it is (``flair``
    for ``Flair_subtrMeanDivStd``), never a guess between several."""
    key = (strip_volume_suffix(wanted) or wanted).lower()
    if key in names:
        return key
    by_token = [k for k in names if re.split(r"[_\-.]", k, maxsplit=1)[0] == key]
    return by_token[0] if len(by_token) == 1 else None


def discover_folders(
    root: Path, *, label_name: str | None, channel_names: tuple[str, ...] | list[str] | None
) -> DatasetSpec:
    """One subfolder per case (id = folder name), volume files named alike in every case.

    Names present in more than half of the case folders make up the dataset (one case missing
    a file is then reported by :func:`check_dataset`, instead of dropping a channel for all).
    """
    if not root.is_dir():
        raise Vox2VoxError(f"{root}: the folders layout needs a folder of case folders")
    folders = case_folders(root)
    if not folders and any(strip_volume_suffix(f.name) for f in root.iterdir() if f.is_file()):
        folders = [root]  # the path is one case folder, not a folder of cases
    if not folders:
        raise Vox2VoxError(f"{root}: no subfolder holds volume files (.nii.gz, .nrrd, .mha...)")
    files = {folder: _volume_files(folder) for folder in folders}
    counts = Counter(key for found in files.values() for key in found)
    # Display names keep the files' own spelling (``FLAIR``, ``OTMultiClass``).
    example = {key: path for found in reversed(list(files.values())) for key, path in found.items()}
    names = {
        key: strip_volume_suffix(example[key].name) or key
        for key in sorted(counts, key=str.lower) if counts[key] * 2 > len(folders)
    }
    if not names:
        listing = "; ".join(
            f"{f.name}/: {', '.join(p.name for p in list(files[f].values())[:4])}" for f in folders[:3]
        )
        raise Vox2VoxError(
            f"{root}: {len(folders)} subfolders hold volumes but share no file name ({listing}); "
            "this is not one-folder-per-case data: write a manifest CSV (id,<channel>,...,label)"
        )
    label_key, mask_key = _folder_label_and_mask(root, names, label_name)
    channel_keys = _folder_channels(root, names, channel_names, exclude={label_key, mask_key})
    cases = []
    for folder in folders:
        found = files[folder]
        channels = {names[k]: found.get(k, folder / example[k].name) for k in channel_keys}
        label = found.get(label_key) if label_key else None
        mask = found.get(mask_key) if mask_key else None
        cases.append(CaseFiles(folder.name, channels, label, mask))
    return DatasetSpec(root, "folders", tuple(names[k] for k in channel_keys), tuple(cases), "auto")


def _folder_label_and_mask(
    root: Path, names: dict[str, str], label_name: str | None
) -> tuple[str | None, str | None]:
    """Keys of the label file and the brain/body mask among the shared ``names`` (either may be None)."""
    if label_name is not None:
        label_key = _match_name(label_name, names)
        if label_key is None:
            raise Vox2VoxError(
                f"{root}: --label-name {label_name!r} matches no file shared by the case folders "
                f"({', '.join(names.values())})"
            )
    else:
        candidates = [k for k in names if _is_label_like(names[k]) and not _is_body_mask(names[k])]
        if len(candidates) > 1:
            raise Vox2VoxError(
                f"{root}: several files look like the label ({', '.join(names[k] for k in candidates)}); "
                "pass --label-name NAME, or write a manifest (--write-manifest FILE.csv) and edit it"
            )
        label_key = candidates[0] if candidates else None
    # A brain mask beside a tumour label is for normalisation (DeepMedic's brainmask); with two
    # masks neither is chosen rather than guessing.
    masks = [k for k in names if k != label_key and _is_label_like(names[k]) and _is_body_mask(names[k])]
    return label_key, masks[0] if len(masks) == 1 else None


def _folder_channels(
    root: Path, names: dict[str, str], channel_names: tuple[str, ...] | list[str] | None, *, exclude: set
) -> list[str]:
    """Keys of the image channels: the ones asked for, in order, else every non-label name."""
    if not channel_names:
        keys = [k for k in names if not _is_label_like(names[k]) and k not in exclude]
        if not keys:
            raise Vox2VoxError(
                f"{root}: the case folders share only label-like files ({', '.join(names.values())}); "
                "pass --channels NAME,... or write a manifest"
            )
        return keys
    keys = []
    for wanted in channel_names:
        key = _match_name(wanted, names)
        if key is None or key in exclude:
            why = "is the label or mask" if key in exclude and key is not None else "matches no shared file"
            raise Vox2VoxError(
                f"{root}: channel {wanted!r} {why}; the case folders share {', '.join(names.values())}"
            )
        if key in keys:
            raise Vox2VoxError(f"{root}: channel {wanted!r} is named twice in --channels")
        keys.append(key)
    return keys
