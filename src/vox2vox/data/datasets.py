"""Find the cases in a dataset folder or manifest, check them, and load them preprocessed.

Layouts (``discover(path, layout="auto")`` detects them; files are always paired by CASE ID,
never by sorted position, so one oddly named file cannot shift every pair):

- ``brats``: BraTS 2018-21, ``<root>/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz``.
- ``brats2023``: BraTS 2023+, ``<root>/<id>/<id>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (ET = 3).
- ``msd``: Medical Segmentation Decathlon, ``dataset.json`` + 4D ``imagesTr/<id>.nii.gz``
  (channels on the 4th axis) + ``labelsTr/<id>.nii.gz``.
- ``nnunet``: nnU-Net raw, ``imagesTr/<id>_0000.nii.gz`` (one file per channel) + ``labelsTr``
  + ``dataset.json``.
- ``manifest``: a CSV with header ``id,<channel>,...,<channel>[,mask][,label]``; paths relative to
  the CSV; an optional ``mask`` (or ``brainmask``) column names a brain/body mask per case.
- ``folders``: one subfolder per case whose volume files share names across cases
  (``<root>/<id>/{FLAIR,T1,GT_W}.nii.gz``): channels are the shared names that are not
  label-like, the label is the one label-like name (``seg``, ``label``, ``mask``, ``GT``, ``OT``...),
  a brain/body mask (``brainmask``...) becomes the case's ``mask``; ``label_name`` and
  ``channel_names`` settle ambiguous folders. A folder holding one such case is a dataset of one.
- ``single``: one image file (or DICOM series folder): one case, channel ``image``, no label.
- ``hdf5``: the earlier PyTorch Vox2Vox's folder of HDF5 pairs ``<id>.im`` / ``<id>.seg`` (also
  with an ``.h5``/``.hdf5`` suffix), array in dataset ``data``; channel ``image``, labels used as
  class indices. Manifest cells may name a dataset of any HDF5 file as ``file.h5:dataset``
  (geometry rules: :mod:`vox2vox.data.hdf5`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vox2vox.atomic import atomic_path, atomic_write_text
from vox2vox.data.hdf5 import LEGACY_IMAGE_SUFFIX, LEGACY_LABEL_SUFFIX, file_of, legacy_stem
from vox2vox.data.io import NIFTI_SUFFIXES, SITK_SUFFIXES, Geometry, format_of, read_channels
from vox2vox.data.labels import LabelConvention, get_convention
from vox2vox.data.preprocessing import LoadedCase, PreprocessConfig, preprocess
from vox2vox.errors import Vox2VoxError

LAYOUTS = ("brats", "brats2023", "msd", "nnunet", "folders", "manifest", "single", "hdf5")
CACHE_VERSION = 1

#: channel suffix -> channel name, in the order channels are stacked (METHOD.md: T1, T1ce, T2, FLAIR).
_BRATS_CHANNELS = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
_BRATS2023_CHANNELS = {"t1n": "t1n", "t1c": "t1c", "t2w": "t2w", "t2f": "t2f"}


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case. ``channels`` is ordered (same order in every case of a dataset).

    Several channel names may point at the same 4D file (MSD): they are its volumes in order.
    Paths are what the layout expects; a missing file is reported by :func:`check_dataset`.
    ``mask`` (optional) is a brain/body mask (> 0.5 inside): z-scoring and cropping use it
    instead of the "differs from the background value" rule.
    """

    case_id: str
    channels: dict[str, Path]
    label: Path | None
    mask: Path | None = None


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


# --------------------------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------------------------


def discover(
    path: str | Path,
    *,
    layout: str = "auto",
    label_name: str | None = None,
    channel_names: tuple[str, ...] | list[str] | None = None,
) -> DatasetSpec:
    """Find the cases under ``path`` (a folder in a known layout, a manifest CSV, a dataset.json,
    or a single image file / DICOM folder). ``layout`` names one of :data:`LAYOUTS` or ``auto``.

    ``label_name`` (folders layout only) names the label file of every case folder (file name,
    with or without extension, case-insensitive) when several look like labels.
    ``channel_names`` picks image channels in this order: file names in the folders layout,
    channel names (a subset, reordered) in any other layout except MSD's 4D files.
    """
    path = Path(path)
    if not path.exists():
        raise Vox2VoxError(f"{path}: not found; give a dataset folder, a manifest .csv or an image")
    if layout not in ("auto", *LAYOUTS):
        raise Vox2VoxError(f"layout {layout!r} is unknown; use auto or one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = _detect_layout(path)
    if path.is_file() and path.name == "dataset.json" and layout in ("msd", "nnunet"):
        path = path.parent
    if label_name is not None and layout != "folders":
        raise Vox2VoxError(
            f"{path}: --label-name applies to the folders layout only (this is {layout}); "
            "edit the manifest's label column instead"
        )
    if layout == "folders":
        spec = _discover_folders(path, label_name=label_name, channel_names=channel_names)
        if not spec.cases:
            raise Vox2VoxError(f"{path}: no case folders with volume files found; check the folder")
        return _check_case_ids(spec)
    finders = {
        "brats": lambda p: _discover_brats(p, _BRATS_CHANNELS, sep="_", layout="brats"),
        "brats2023": lambda p: _discover_brats(p, _BRATS2023_CHANNELS, sep="-", layout="brats2023"),
        "msd": _discover_msd,
        "nnunet": _discover_nnunet,
        "manifest": _discover_manifest,
        "single": _discover_single,
        "hdf5": _discover_hdf5_pairs,
    }
    spec = finders[layout](path)
    if not spec.cases:
        raise Vox2VoxError(f"{path}: no cases found in {layout} layout; check the folder")
    if channel_names:
        spec = _select_channels(spec, tuple(channel_names))
    return _check_case_ids(spec)


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


def _check_case_ids(spec: DatasetSpec) -> DatasetSpec:
    for case in spec.cases:
        check_case_id(case.case_id, where=spec.root)
    return spec


def _select_channels(spec: DatasetSpec, names: tuple[str, ...]) -> DatasetSpec:
    """Keep only the channels ``names`` (in that order) of every case."""
    unknown = [n for n in names if n not in spec.channel_names]
    if unknown:
        raise Vox2VoxError(
            f"{spec.root}: channel(s) {', '.join(unknown)} not in this {spec.layout} dataset; "
            f"it has {', '.join(spec.channel_names)}"
        )
    if len(set(names)) != len(names):
        raise Vox2VoxError(f"{spec.root}: channels {', '.join(names)} repeat a name")
    files = [p for c in spec.cases for p in c.channels.values()]
    if len(set(files)) < len(files) and names != spec.channel_names:
        # A 4D file is read whole, in its own volume order: a subset or new order would mislabel.
        raise Vox2VoxError(
            f"{spec.root}: channels share 4D files in the {spec.layout} layout; they cannot be "
            "chosen or reordered"
        )
    cases = tuple(
        dataclasses.replace(c, channels={n: c.channels[n] for n in names}) for c in spec.cases
    )
    return dataclasses.replace(spec, channel_names=names, cases=cases)


def _detect_layout(path: Path) -> str:
    """Guess the layout from names alone (no image is decoded)."""
    if path.is_file():
        name = path.name.lower()
        if name.endswith(".csv"):
            return "manifest"
        if name == "dataset.json":
            return _json_layout(path.parent)
        if format_of(path) in ("nifti", "sitk", "hdf5"):
            return "single"
        raise Vox2VoxError(
            f"{path}: not a dataset; give a folder, a manifest .csv, a dataset.json or an image"
        )
    if (path / "dataset.json").is_file():
        return _json_layout(path)
    csvs = sorted(path.glob("*.csv"))
    if len(csvs) == 1 and not any(p.is_dir() for p in path.iterdir()):
        return "manifest"
    for child in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        names = [f.name.lower() for f in child.iterdir()]
        if any(n.endswith(("_flair.nii.gz", "_flair.nii")) for n in names):
            return "brats"
        if any(n.endswith(("-t2f.nii.gz", "-t2f.nii")) for n in names):
            return "brats2023"
    if any(legacy_stem(f.name, LEGACY_IMAGE_SUFFIX) for f in path.iterdir() if f.is_file()):
        return "hdf5"
    if _case_folders(path) or _is_one_case_folder(path):
        return "folders"
    # Only a folder that really holds DICOM files is a series: asking GDCM about any other
    # folder prints "No Series were found" warnings and yields an empty case.
    if _holds_dicom(path) and not any(f.name.lower().endswith(NIFTI_SUFFIXES) for f in path.iterdir()):
        return "single"
    raise Vox2VoxError(
        f"{path}: cannot tell the dataset layout; write a manifest CSV "
        "(id,<channel>,...,label with paths relative to it) or pass --layout"
    )


def _json_layout(folder: Path) -> str:
    """nnU-Net raw names channel files ``_0000``; MSD stores channels in one 4D file."""
    images = folder / "imagesTr"
    if images.is_dir() and any(re.search(r"_\d{4}\.", f.name) for f in images.iterdir()):
        return "nnunet"
    return "msd"


def _discover_brats(root: Path, channels: dict[str, str], *, sep: str, layout: str) -> DatasetSpec:
    """BraTS-style: one folder per case, files ``<id><sep><suffix>.nii[.gz]``."""
    if not root.is_dir():
        raise Vox2VoxError(f"{root}: the {layout} layout needs a folder of case folders")
    anchors = ("seg", *channels)
    cases = []
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if _has_brats_files(root, channels, sep):
        folders = [root]  # the path is one case folder, not a folder of cases
    for folder in folders:
        files = {f.name: f for f in folder.iterdir() if f.name.lower().endswith(NIFTI_SUFFIXES)}
        ids: Counter[str] = Counter()
        for name in files:
            stem = _strip_nifti(name)
            for suffix in anchors:
                if stem.lower().endswith(f"{sep}{suffix}"):
                    ids[stem[: -len(suffix) - 1]] += 1
        if not ids:
            continue
        # The id is the prefix most files share (normally the folder name).
        case_id = folder.name if folder.name in ids else ids.most_common(1)[0][0]
        ext = ".nii.gz" if any(n.endswith(".nii.gz") for n in files) else ".nii"
        paths = {
            name: _find_case_file(folder, files, f"{case_id}{sep}{suffix}", ext)
            for suffix, name in channels.items()
        }
        label = _find_case_file(folder, files, f"{case_id}{sep}seg", ext)
        cases.append(CaseFiles(case_id, paths, label if label.exists() else None))
    return DatasetSpec(
        root=root,
        layout=layout,
        channel_names=tuple(channels.values()),
        cases=tuple(cases),
        convention="brats2023" if layout == "brats2023" else "brats",
    )


def _has_brats_files(folder: Path, channels: dict[str, str], sep: str) -> bool:
    """Whether ``folder`` itself holds BraTS channel files (``*<sep>flair.nii.gz`` or similar)."""
    suffixes = tuple(f"{sep}{c}{ext}" for c in channels for ext in NIFTI_SUFFIXES)
    return any(f.name.lower().endswith(suffixes) for f in folder.iterdir() if f.is_file())


def _find_case_file(folder: Path, files: dict[str, Path], stem: str, ext: str) -> Path:
    """The file named ``stem`` with either NIfTI suffix (case-insensitive), else the expected path."""
    for name, path in files.items():
        if _strip_nifti(name).lower() == stem.lower():
            return path
    return folder / f"{stem}{ext}"


def _strip_nifti(name: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise Vox2VoxError(f"{path}: not found; MSD/nnU-Net folders need a dataset.json") from err
    except (ValueError, UnicodeDecodeError) as err:
        raise Vox2VoxError(f"{path}: not valid JSON ({err}); fix the file") from err
    except RecursionError as err:
        raise Vox2VoxError(f"{path}: JSON nested too deeply; fix the file") from err
    except OSError as err:
        raise Vox2VoxError(f"{path}: cannot read ({err.strerror})") from err
    if not isinstance(data, dict):
        raise Vox2VoxError(f"{path}: expected a JSON object")
    return data


def _channel_names(meta: dict, path: Path) -> tuple[str, ...]:
    """Channel names from ``modality`` (MSD, nnU-Net v1) or ``channel_names`` (nnU-Net v2)."""
    names = meta.get("channel_names", meta.get("modality"))
    if not isinstance(names, dict) or not names:
        raise Vox2VoxError(f"{path}: no 'modality' or 'channel_names' entry; add one")
    return tuple(str(names[k]) for k in sorted(names, key=lambda k: int(k)))


def _convention_from_json(meta: dict) -> tuple[str, dict | None]:
    labels = meta.get("labels")
    if not isinstance(labels, dict):
        return "auto", None
    return "custom", {"name": str(meta.get("name", "dataset.json")), "labels": labels}


def _discover_msd(root: Path) -> DatasetSpec:
    """MSD: dataset.json lists ``training`` pairs; each image is 4D with channels last."""
    meta_path = root / "dataset.json"
    meta = _read_json(meta_path)
    channel_names = _channel_names(meta, meta_path)
    entries = meta.get("training")
    if not isinstance(entries, list):
        raise Vox2VoxError(f"{meta_path}: no 'training' list; is this an MSD dataset.json?")
    cases = []
    for entry in entries:
        if not isinstance(entry, dict) or "image" not in entry:
            raise Vox2VoxError(f"{meta_path}: each 'training' entry needs an 'image' path")
        image = _under(root, str(entry["image"]))
        label = _under(root, str(entry["label"])) if entry.get("label") else None
        case_id = _strip_nifti(image.name)
        cases.append(CaseFiles(case_id, {name: image for name in channel_names}, label))
    convention, values = _convention_from_json(meta)
    if len(channel_names) == 4 and "brain" in str(meta.get("name", "")).lower():
        convention, values = "msd-brain", None
    return DatasetSpec(root, "msd", channel_names, tuple(cases), convention, values)


def _discover_nnunet(root: Path) -> DatasetSpec:
    """nnU-Net raw: ``imagesTr/<id>_<4-digit channel>.<ext>``, ``labelsTr/<id>.<ext>``."""
    meta_path = root / "dataset.json"
    meta = _read_json(meta_path)
    channel_names = _channel_names(meta, meta_path)
    ending = str(meta.get("file_ending", ".nii.gz"))
    images, labels = root / "imagesTr", root / "labelsTr"
    if not images.is_dir():
        raise Vox2VoxError(f"{images}: missing; nnU-Net raw datasets keep images in imagesTr/")
    ids = sorted(
        {m.group(1) for f in images.iterdir() if (m := re.fullmatch(r"(.+)_\d{4}" + re.escape(ending), f.name))}
    )
    cases = []
    for case_id in ids:
        paths = {
            name: images / f"{case_id}_{index:04d}{ending}"
            for index, name in enumerate(channel_names)
        }
        label = labels / f"{case_id}{ending}"
        cases.append(CaseFiles(case_id, paths, label if label.exists() else None))
    convention, values = _convention_from_json(meta)
    return DatasetSpec(root, "nnunet", channel_names, tuple(cases), convention, values)


def _discover_manifest(path: Path) -> DatasetSpec:
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
    if not header or header[0].lower() not in ("id", "case", "case_id", "subject"):
        raise Vox2VoxError(
            f"{path}: first column must be 'id' (header id,<channel>,...,label), got {header[:1]}"
        )
    has_label = header[-1].lower() in ("label", "seg", "labels")
    mask_column = next(
        (i for i, h in enumerate(header) if i > 0 and h.lower() in ("mask", "brainmask", "brain_mask")),
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
        if any(not by_name[n] for n in channel_names):
            raise Vox2VoxError(f"{path}: line {line}: case {case_id} has an empty channel path")
        channels = {n: _under(base, by_name[n]) for n in channel_names}
        label = _under(base, cells[-1]) if has_label and cells[-1] else None
        mask = _under(base, cells[mask_column]) if mask_column is not None and cells[mask_column] else None
        cases.append(CaseFiles(case_id, channels, label, mask))
    return DatasetSpec(path, "manifest", channel_names, tuple(cases), "auto")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _under(base: Path, cell: str) -> Path:
    """``cell`` relative to ``base`` (absolute paths stay), with ``..`` folded textually."""
    return Path(os.path.normpath(base / Path(cell).expanduser()))


def _discover_hdf5_pairs(root: Path) -> DatasetSpec:
    """The earlier implementation's folder: ``<id>.im`` images paired with ``<id>.seg`` labels by id."""
    if not root.is_dir():
        raise Vox2VoxError(f"{root}: the hdf5 layout needs a folder of <id>.im / <id>.seg files")
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for file in sorted(p for p in root.iterdir() if p.is_file()):
        if (stem := legacy_stem(file.name, LEGACY_IMAGE_SUFFIX)) is not None:
            images.setdefault(stem, file)
        elif (stem := legacy_stem(file.name, LEGACY_LABEL_SUFFIX)) is not None:
            labels.setdefault(stem, file)
    cases = tuple(CaseFiles(case_id, {"image": path}, labels.get(case_id)) for case_id, path in images.items())
    return DatasetSpec(root, "hdf5", ("image",), cases, "auto")


def _discover_single(path: Path) -> DatasetSpec:
    case_id = _strip_nifti(path.name).split(".")[0] if path.is_file() else path.name
    return DatasetSpec(path, "single", ("image",), (CaseFiles(case_id, {"image": path}, None),), "auto")


# ---- the folders layout: one subfolder per case, the same file names in each ------------------

#: Whole words (after splitting on separators and camelCase) that mark a label file.
_LABEL_WORDS = frozenset(
    {"seg", "segmentation", "label", "labels", "labelmap", "mask", "gt", "truth", "groundtruth", "ot",
     "annotation", "annotations"}
)
#: Separator-free spellings of a brain/body mask (``brainmask``, ``T1_brain_mask``, ``mask_brain``).
_BODY_MASK_WORDS = ("brainmask", "maskbrain", "bodymask", "maskbody", "headmask", "maskhead")
_VOLUME_SUFFIXES = (*NIFTI_SUFFIXES, *SITK_SUFFIXES)


def _volume_stem(name: str) -> str | None:
    """The name without its volume suffix, or None when ``name`` is not a volume file."""
    lower = name.lower()
    if name.startswith("."):
        return None
    for suffix in sorted(_VOLUME_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _volume_files(folder: Path) -> dict[str, Path]:
    """Volume files directly in ``folder``: lower-case stem -> path (text, licences... ignored)."""
    found: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        stem = _volume_stem(file.name)
        if stem is None or not file.is_file():
            continue
        if stem.lower() in found:
            raise Vox2VoxError(
                f"{file}: {found[stem.lower()].name} has the same name; keep one of the two"
            )
        found[stem.lower()] = file
    return found


def _case_folders(root: Path) -> list[Path]:
    """Subfolders of ``root`` that hold at least one volume file (the candidate cases)."""
    return [
        p for p in sorted(root.iterdir())
        if p.is_dir() and not p.name.startswith(".") and any(_volume_stem(f.name) for f in p.iterdir())
    ]


def _is_one_case_folder(folder: Path) -> bool:
    """Whether ``folder`` itself looks like one case: image files plus exactly one label file."""
    stems = [_volume_stem(f.name) for f in folder.iterdir() if f.is_file()]
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
    """The key of ``names`` (lower stem -> display name) that ``wanted`` means, with or without suffix."""
    key = (_volume_stem(wanted) or wanted).lower()
    return key if key in names else None


def _discover_folders(
    root: Path, *, label_name: str | None, channel_names: tuple[str, ...] | list[str] | None
) -> DatasetSpec:
    """One subfolder per case (id = folder name), volume files named alike in every case.

    Names present in more than half of the case folders make up the dataset (one case missing
    a file is then reported by :func:`check_dataset`, instead of dropping a channel for all).
    """
    if not root.is_dir():
        raise Vox2VoxError(f"{root}: the folders layout needs a folder of case folders")
    folders = _case_folders(root)
    if not folders and any(_volume_stem(f.name) for f in root.iterdir() if f.is_file()):
        folders = [root]  # the path is one case folder, not a folder of cases
    if not folders:
        raise Vox2VoxError(f"{root}: no subfolder holds volume files (.nii.gz, .nrrd, .mha...)")
    files = {folder: _volume_files(folder) for folder in folders}
    counts = Counter(key for found in files.values() for key in found)
    # Display names keep the files' own spelling (``FLAIR``, ``OTMultiClass``).
    example = {key: path for found in reversed(list(files.values())) for key, path in found.items()}
    names = {
        key: _volume_stem(example[key].name) or key
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


def _holds_dicom(folder: Path, *, limit: int = 20) -> bool:
    """Whether ``folder`` holds DICOM files: a ``.dcm`` name or ``DICM`` at byte 128 (checks a few files)."""
    checked = 0
    for file in sorted(folder.iterdir()):
        if not file.is_file():
            continue
        if file.name.lower().endswith(".dcm"):
            return True
        try:
            with file.open("rb") as handle:
                handle.seek(128)
                if handle.read(4) == b"DICM":
                    return True
        except OSError:
            pass
        checked += 1
        if checked >= limit:
            break
    return False


def write_manifest(
    path: str | Path,
    cases: list[tuple[str, dict[str, str | Path], str | Path | None]],
    *,
    masks: dict[str, str | Path] | None = None,
) -> Path:
    """Write a manifest CSV (paths stored relative to the CSV where possible), atomically.

    ``cases``: ``(case_id, {channel: path}, label_path_or_None)``, channels in the same order for
    every case; ``masks``: optional case id -> brain/body mask file (adds a ``mask`` column).
    """
    path = Path(path)
    if not cases:
        raise Vox2VoxError(f"{path}: no cases to write")
    names = list(cases[0][1])
    with_label = any(label is not None for _, _, label in cases)
    lines = [",".join(["id", *names, *(["mask"] if masks else []), *(["label"] if with_label else [])])]
    for case_id, channels, label in cases:
        if list(channels) != names:
            raise Vox2VoxError(f"{path}: case {case_id} has channels {list(channels)}, not {names}")
        cells = [case_id, *(_relative(channels[n], path.parent) for n in names)]
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
    reserved = {"id", "case", "case_id", "subject", "label", "seg", "labels", "mask", "brainmask", "brain_mask"}
    clash = [n for n in spec.channel_names if n.lower() in reserved]
    if clash:
        raise Vox2VoxError(f"{path}: channel name(s) {', '.join(clash)} are manifest column names; pass --channels")
    cases = [(c.case_id, dict(c.channels), c.label) for c in spec.cases]
    masks = {c.case_id: c.mask for c in spec.cases if c.mask is not None}
    return write_manifest(path, cases, masks=masks or None)


def _relative(target: str | Path, base: Path) -> str:
    try:
        return os.path.relpath(Path(target).resolve(), base.resolve())
    except ValueError:  # another drive on Windows
        return str(Path(target).resolve())


# --------------------------------------------------------------------------------------------
# loading (with an on-disk cache of preprocessed cases)
# --------------------------------------------------------------------------------------------


def read_case(case: CaseFiles) -> tuple[np.ndarray, np.ndarray | None, Geometry]:
    """Decode a case: canonical image ``(C, D, H, W)`` float32, raw label ``(D, H, W)`` or None,
    and the first channel's geometry. Every channel and the label must share one grid.
    """
    image, label, _, geometry = _read_case_with_mask(case)
    return image, label, geometry


def _read_case_with_mask(
    case: CaseFiles,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, Geometry]:
    volumes: list[np.ndarray] = []
    geometry: Geometry | None = None
    first_path: Path | None = None
    # Several channel names may share one 4D file (MSD); read each file once, in channel order.
    groups: dict[Path, list[str]] = {}
    for name, file in case.channels.items():
        groups.setdefault(Path(file), []).append(name)
    for file, names in groups.items():
        data, geo = read_channels(file)
        if data.shape[0] != len(names):
            raise Vox2VoxError(
                f"{file}: holds {data.shape[0]} volume(s), the dataset expects {len(names)} "
                f"({', '.join(names)}); check dataset.json 'modality'"
            )
        if geometry is None:
            geometry, first_path = geo, file
        else:
            _require_same_grid(geometry, geo, first_path, file)
        volumes.extend(np.asarray(v, dtype=np.float32) for v in data)
    assert geometry is not None
    label = None
    if case.label is not None:
        data, geo = read_channels(case.label)
        if data.shape[0] != 1:
            raise Vox2VoxError(f"{case.label}: label map must be 3D, got {data.shape[0]} volumes")
        _require_same_grid(geometry, geo, first_path, case.label)
        label = data[0]
    mask = None
    if case.mask is not None:
        data, geo = read_channels(case.mask, nonfinite="zero")
        _require_same_grid(geometry, geo, first_path, case.mask)
        # Masks saved as float read as 0.99999997 inside: threshold, never compare with 1.
        mask = data[0] > 0.5
        if not mask.any():
            raise Vox2VoxError(f"{case.mask}: mask is empty; fix it or drop the mask column")
    return np.stack(volumes), label, mask, geometry


def _require_same_grid(a: Geometry, b: Geometry, path_a: Path | None, path_b: Path) -> None:
    if a.shape != b.shape:
        raise Vox2VoxError(
            f"{path_b}: shape {b.shape} differs from {Path(path_a).name} {a.shape}; "
            "channels and label must share one voxel grid (resample/register first)"
        )
    if not _same_affine(a.affine, b.affine):
        raise Vox2VoxError(
            f"{path_b}: voxel-to-world affine differs from {Path(path_a).name}; channels and "
            "label must share one grid (check orientation/origin)"
        )


def _same_affine(a: np.ndarray, b: np.ndarray) -> bool:
    """Same grid within 1e-3 of a voxel in direction and 0.01 mm in origin (float headers drift)."""
    return bool(np.allclose(a[:3, :3], b[:3, :3], atol=1e-3) and np.allclose(a[:3, 3], b[:3, 3], atol=1e-2))


def load_case(
    case: CaseFiles,
    *,
    convention: LabelConvention | None,
    prep: PreprocessConfig,
) -> LoadedCase:
    """Read and preprocess one case: image ``(C, D, H, W)`` float32, label ``(D, H, W)`` int64.

    ``convention`` maps label values to class indices (None: values are used as class indices).
    When ``prep.cache_dir`` is set, the result is stored there as ``<key>.npz`` (arrays) plus
    ``<key>.json`` (geometry and record); the key hashes each file's path, mtime and size, the
    preprocessing config and the convention, so a changed file or setting misses the cache and a
    second load does not decode NIfTI. Nothing is pickled.
    """
    cache_files = None
    if prep.cache_dir:
        key = _cache_key(case, convention, prep)
        folder = Path(prep.cache_dir)
        cache_files = folder / f"{key}.npz", folder / f"{key}.json"
        cached = _read_cache(*cache_files, case.case_id)
        if cached is not None:
            return cached
    image, raw_label, mask, geometry = _read_case_with_mask(case)
    label = None
    if raw_label is not None:
        if convention is not None:
            label = convention.to_classes(raw_label, path=case.label)
        else:
            label = _as_class_indices(raw_label, case.label)
    image, label, record = preprocess(image, label, spacing=geometry.spacing, config=prep, mask=mask)
    loaded = LoadedCase(case.case_id, image, label, geometry, record)
    if cache_files is not None:
        _write_cache(loaded, *cache_files)
    return loaded


def _as_class_indices(label: np.ndarray, path: Path | None) -> np.ndarray:
    """Labels without a convention: integral, non-negative values used as class indices."""
    if label.dtype.kind == "f":
        rounded = np.rint(label)
        if not np.allclose(label, rounded, atol=1e-4):
            raise Vox2VoxError(f"{path}: label map has non-integer values; is it an image?")
        if rounded.size and float(np.abs(rounded).max()) > 2.0**53:
            raise Vox2VoxError(f"{path}: label values up to {float(np.abs(rounded).max()):.3g} are beyond "
                               "any label convention; is it an image?")
        label = rounded
    elif label.dtype == np.uint64 and label.size and int(label.max()) > np.iinfo(np.int64).max:
        raise Vox2VoxError(f"{path}: label values beyond 2**63; is it an image?")
    label = label.astype(np.int64)
    if label.size and label.min() < 0:
        raise Vox2VoxError(f"{path}: negative label values; give a label convention")
    return label


def _cache_key(case: CaseFiles, convention: LabelConvention | None, prep: PreprocessConfig) -> str:
    files = []
    for file in [*case.channels.values(), *(f for f in (case.label, case.mask) if f is not None)]:
        stat = file_of(file).stat()
        files.append([str(Path(file).resolve()), stat.st_mtime_ns, stat.st_size])
    payload = {
        "version": CACHE_VERSION,
        "case": case.case_id,
        "channels": list(case.channels),
        "files": files,
        "prep": prep.fingerprint(),
        "convention": None if convention is None else convention.to_json(),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]
    safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", case.case_id)[:60]
    return f"{safe_id}-{digest}"


def _read_cache(npz: Path, meta: Path, case_id: str) -> LoadedCase | None:
    if not (npz.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        with np.load(npz, allow_pickle=False) as arrays:
            image = arrays["image"]
            label = arrays["label"] if "label" in arrays.files else None
        return LoadedCase(case_id, image, label, Geometry.from_json(info["geometry"]), info["record"])
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None  # a damaged cache entry is rebuilt, never trusted


def _write_cache(case: LoadedCase, npz: Path, meta: Path) -> None:
    arrays = {"image": case.image}
    if case.label is not None:
        arrays["label"] = case.label
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    info = {"case_id": case.case_id, "geometry": case.geometry.to_json(), "record": case.record}
    atomic_write_text(meta, json.dumps(info))


# --------------------------------------------------------------------------------------------
# checking
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One finding. ``severity`` "error" breaks training; "warning" deserves a look."""

    severity: str
    case_id: str
    file: str
    message: str

    def format(self) -> str:
        return f"{self.severity.upper():7s} {self.case_id}: {self.file}: {self.message}"


@dataclass
class CaseFacts:
    """What was read for one case (for the table)."""

    case_id: str
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    orientation: str | None = None
    channels: int = 0
    label_counts: dict[int, int] | None = None


@dataclass
class DatasetReport:
    """Per-case facts and every problem; :meth:`format` renders both as text."""

    spec: DatasetSpec
    cases: list[CaseFacts] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    convention: str = "auto"

    @property
    def ok(self) -> bool:
        """True when no problem would break training (warnings allowed)."""
        return not any(p.severity == "error" for p in self.problems)

    def format(self) -> str:
        spec = self.spec
        lines = [
            f"dataset: {spec.root}",
            f"layout: {spec.layout}   channels: {', '.join(spec.channel_names)}   "
            f"labels: {self.convention}   cases: {len(spec.cases)}"
            + (f"   masks: {n_masks}" if (n_masks := sum(c.mask is not None for c in spec.cases)) else ""),
            "",
        ]
        rows = [("case", "ch", "shape", "spacing (mm)", "orient", "label values: voxels")]
        for facts in self.cases:
            rows.append(
                (
                    facts.case_id,
                    str(facts.channels),
                    "x".join(map(str, facts.shape)) if facts.shape else "-",
                    "x".join(f"{s:.3g}" for s in facts.spacing) if facts.spacing else "-",
                    facts.orientation or "-",
                    _format_counts(facts.label_counts),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for index, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
            if index == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("")
        errors = sum(p.severity == "error" for p in self.problems)
        warnings = len(self.problems) - errors
        if self.problems:
            lines.append(f"problems: {errors} error(s), {warnings} warning(s)")
            lines.extend(p.format() for p in self.problems)
        else:
            lines.append("problems: none")
        return "\n".join(lines)


def _format_counts(counts: dict[int, int] | None, *, limit: int = 8) -> str:
    """``value:voxels`` pairs; long lists (TotalSegmentator has 100+) are cut with a total."""
    if counts is None:
        return "-"
    items = [f"{v}:{n}" for v, n in counts.items()]
    if len(items) > limit:
        return " ".join(items[:limit]) + f" ... ({len(items)} values)"
    return " ".join(items)


def check_dataset(
    spec: DatasetSpec, *, convention: str | dict | LabelConvention | None = None
) -> DatasetReport:
    """Read every case fully and report facts and problems.

    Problems: missing files, unreadable files, channel/label shape or affine mismatch, label values
    outside the convention (``convention`` overrides the layout's), NaN/Inf voxels, empty
    (constant) image channels (errors); empty label maps, cases without a label while others have
    one, differing spacings across cases (warnings).
    """
    conv = get_convention(convention) if convention is not None else spec.label_convention()
    report = DatasetReport(spec, convention=conv.name if conv is not None else "auto")
    for case in spec.cases:
        report.cases.append(_check_case(case, conv, report.problems))
    if conv is None:
        _inferred_convention_problems(spec, report)
    labelled = sum(c.label is not None for c in spec.cases)
    if 0 < labelled < len(spec.cases):
        for case in spec.cases:
            if case.label is None:
                report.problems.append(
                    Problem("warning", case.case_id, "-", "no label file while other cases have one")
                )
    spacings = {tuple(round(s, 3) for s in f.spacing) for f in report.cases if f.spacing}
    if len(spacings) > 1:
        report.problems.append(
            Problem(
                "warning", "*", str(spec.root),
                f"{len(spacings)} different voxel spacings; consider preprocessing.target_spacing",
            )
        )
    return report


def _inferred_convention_problems(spec: DatasetSpec, report: DatasetReport) -> None:
    """Without a convention, training infers one from the values present: say what it will be."""
    from vox2vox.data.labels import infer_convention

    values = {v for f in report.cases if f.label_counts for v in f.label_counts}
    if not values:
        return
    try:
        inferred, note = infer_convention(values, where=spec.root)
    except Vox2VoxError as err:
        report.problems.append(Problem("error", "*", str(spec.root), _strip_path(str(err), spec.root)))
        return
    report.convention = f"auto ({inferred.n_classes} classes: {', '.join(map(str, inferred.source_values[:8]))}" + (
        ", ...)" if inferred.n_classes > 8 else ")")
    if note:
        report.problems.append(Problem("warning", "*", str(spec.root), _strip_path(note, spec.root)))


def _check_case(case: CaseFiles, conv: LabelConvention | None, problems: list[Problem]) -> CaseFacts:
    facts = CaseFacts(case.case_id)

    def add(severity: str, file: Path | str, message: str) -> None:
        problems.append(Problem(severity, case.case_id, Path(file).name, message))

    reference: tuple[Geometry, Path] | None = None
    groups: dict[Path, list[str]] = {}
    for name, file in case.channels.items():
        groups.setdefault(Path(file), []).append(name)
    for file, names in groups.items():
        if not file_of(file).exists():
            add("error", file, f"missing channel '{', '.join(names)}'; add the file or fix the layout/manifest")
            continue
        try:
            data, geo = read_channels(file, nonfinite="keep")
        except Vox2VoxError as err:
            add("error", file, _strip_path(str(err), file))
            continue
        if data.shape[0] != len(names):
            add(
                "error", file,
                f"holds {data.shape[0]} volume(s) but the dataset expects {len(names)} "
                f"({', '.join(names)})",
            )
        facts.channels += data.shape[0]
        if reference is None:
            reference = (geo, file)
            facts.shape, facts.spacing, facts.orientation = geo.shape, geo.spacing, geo.orientation
        else:
            _grid_problems(reference, geo, file, add)
        _value_problems(data, file, add)
    if case.label is not None:
        label_file = Path(case.label)
        if not file_of(label_file).exists():
            add("error", label_file, "label file missing; add it or drop the label entry")
        else:
            try:
                data, geo = read_channels(label_file, nonfinite="keep")
            except Vox2VoxError as err:
                add("error", label_file, _strip_path(str(err), label_file))
            else:
                if data.shape[0] != 1:
                    add("error", label_file, f"label map has {data.shape[0]} volumes; expected 3D")
                else:
                    if reference is not None:
                        _grid_problems(reference, geo, label_file, add)
                    _label_problems(data[0], label_file, conv, facts, add)
    if case.mask is not None:
        mask_file = Path(case.mask)
        try:
            data, geo = read_channels(mask_file, nonfinite="zero")
        except Vox2VoxError as err:
            add("error", mask_file, _strip_path(str(err), mask_file))
        else:
            if reference is not None:
                _grid_problems(reference, geo, mask_file, add)
            if not (data > 0.5).any():
                add("error", mask_file, "mask is empty (no voxel > 0.5)")
    return facts


def _strip_path(message: str, file: Path) -> str:
    prefix = f"{file}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _grid_problems(reference: tuple[Geometry, Path], geo: Geometry, file: Path, add) -> None:
    ref, ref_file = reference
    if ref.shape != geo.shape:
        add("error", file, f"shape {geo.shape} differs from {ref_file.name} {ref.shape}")
    elif not _same_affine(ref.affine, geo.affine):
        add(
            "error", file,
            f"voxel-to-world affine differs from {ref_file.name} (spacing {geo.spacing} vs "
            f"{ref.spacing}); register or resample to one grid",
        )


def _value_problems(data: np.ndarray, file: Path, add) -> None:
    if data.dtype.kind == "f":
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        if n_bad:
            add("error", file, f"{n_bad} NaN/Inf voxels; fix the file (or zero them)")
    for index, volume in enumerate(data):
        finite = volume[np.isfinite(volume)] if volume.dtype.kind == "f" else volume
        if finite.size == 0 or finite.min() == finite.max():
            where = f" (volume {index})" if data.shape[0] > 1 else ""
            add("error", file, f"empty image{where}: every voxel is the same value")


def _label_problems(label: np.ndarray, file: Path, conv: LabelConvention | None, facts: CaseFacts, add) -> None:
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)):
            add("error", file, "label map has NaN/Inf voxels")
            return
        rounded = np.rint(label)
        if not np.allclose(label, rounded, atol=1e-4):
            add("error", file, "label map has non-integer values; is it an image?")
            return
        label = rounded.astype(np.int64)
    values, counts = np.unique(label, return_counts=True)
    facts.label_counts = {int(v): int(n) for v, n in zip(values, counts, strict=True)}
    if conv is not None:
        unknown = sorted(set(facts.label_counts) - set(conv.accepted_values))
        if unknown:
            add(
                "error", file,
                f"label values {unknown} not in convention {conv.name!r} "
                f"(accepts {list(conv.accepted_values)}); choose another label convention",
            )
    if len(values) == 1:
        add("warning", file, f"label map is empty (only value {int(values[0])})")

