"""Find the cases of a dataset: folder layouts, manifests, single images; :func:`discover` picks one.

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

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

from vox2vox.data.cases import CaseFiles, DatasetSpec, check_case_id
from vox2vox.data.folders import case_folders, discover_folders, is_one_case_folder
from vox2vox.data.hdf5 import LEGACY_IMAGE_SUFFIX, LEGACY_LABEL_SUFFIX, legacy_stem
from vox2vox.data.io import NIFTI_SUFFIXES, format_of, strip_volume_suffix
from vox2vox.data.manifest import read_manifest, resolve_cell
from vox2vox.errors import Vox2VoxError

LAYOUTS = ("brats", "brats2023", "msd", "nnunet", "folders", "manifest", "single", "hdf5")

#: channel suffix -> channel name, in the order channels are stacked (docs/method.md, "Task and labels").
_BRATS_CHANNELS = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
_BRATS2023_CHANNELS = {"t1n": "t1n", "t1c": "t1c", "t2w": "t2w", "t2f": "t2f"}


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
        spec = discover_folders(path, label_name=label_name, channel_names=channel_names)
        if not spec.cases:
            raise Vox2VoxError(f"{path}: no case folders with volume files found; check the folder")
        return _check_case_ids(spec)
    finders = {
        "brats": lambda p: _discover_brats(p, _BRATS_CHANNELS, sep="_", layout="brats"),
        "brats2023": lambda p: _discover_brats(p, _BRATS2023_CHANNELS, sep="-", layout="brats2023"),
        "msd": _discover_msd,
        "nnunet": _discover_nnunet,
        "manifest": read_manifest,
        "single": _discover_single,
        "hdf5": _discover_hdf5_pairs,
    }
    spec = finders[layout](path)
    if not spec.cases:
        raise Vox2VoxError(f"{path}: no cases found in {layout} layout; check the folder")
    if channel_names:
        spec = _select_channels(spec, tuple(channel_names))
    return _check_case_ids(spec)


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
    if case_folders(path) or is_one_case_folder(path):
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
        # A folder of cases holds one case, whose id is the prefix most files share (normally the
        # folder name); the files of several cases side by side in one folder are one case each.
        flat = folder == root and len(ids) > 1
        case_ids = sorted(ids) if flat else [folder.name if folder.name in ids else ids.most_common(1)[0][0]]
        ext = ".nii.gz" if any(n.endswith(".nii.gz") for n in files) else ".nii"
        for case_id in case_ids:
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
    return strip_volume_suffix(name, NIFTI_SUFFIXES) or name


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
        image = resolve_cell(root, str(entry["image"]))
        label = resolve_cell(root, str(entry["label"])) if entry.get("label") else None
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
