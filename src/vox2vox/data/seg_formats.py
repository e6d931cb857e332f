"""Label maps as files: NIfTI, DICOM Segmentation objects and 3D Slicer ``.seg.nrrd``.

The one owner of the label-map output formats ``predict --output-format`` offers; NIfTI itself
is written by :func:`vox2vox.data.io.write_volume`. Every format puts the label map on the input's
own grid, atomically, with one segment per foreground class of the label convention (its name,
and its colour from :mod:`vox2vox.data.colours`, as the report draws it):

- ``nifti``: ``<case>.nii.gz``, integer labels in the convention's on-disk values.
- ``dicom-seg``: ``<case>.dcm``, a binary DICOM Segmentation (highdicom, the ``dicom`` extra)
  that references the source series: one frame per source slice and segment, on that slice, in
  its orientation; the study, patient and frame of reference are the series'. Only for DICOM
  series input: a SEG must point at the images it segments.
- ``seg-nrrd``: ``<case>.seg.nrrd``, the labelmap NRRD 3D Slicer opens as a segmentation
  (SimpleITK, no extra): ``SegmentN_*`` fields per Slicer's documented format (developer guide,
  "Segmentation labelmap file format"), LPS space directions and origin.

highdicom and pydicom are imported when a DICOM SEG is written (an optional extra, seconds of
import); :func:`require_writer` says when the extra is missing, before any work.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from vox2vox.atomic import atomic_path
from vox2vox.data.colours import colours_for
from vox2vox.data.dicom import series_files
from vox2vox.data.io import Geometry, format_of, to_source_orientation, write_volume
from vox2vox.data.labels import LabelConvention
from vox2vox.errors import Vox2VoxError
from vox2vox.version import __version__

OutputFormat = Literal["nifti", "dicom-seg", "seg-nrrd"]
OUTPUT_FORMATS: tuple[str, ...] = ("nifti", "dicom-seg", "seg-nrrd")
#: File name ending of each format's label map (``<case><suffix>``).
SUFFIXES: dict[str, str] = {"nifti": ".nii.gz", "dicom-seg": ".dcm", "seg-nrrd": ".seg.nrrd"}
#: The module each format needs and the extra that installs it.
_EXTRAS: dict[str, tuple[str, str]] = {"dicom-seg": ("highdicom", "dicom")}

#: NIfTI/Geometry world frame is RAS+; DICOM and NRRD files here use LPS+. The flip is its own inverse.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: A source slice must start within this fraction of a pixel of the label map's grid.
_IN_PLANE_TOLERANCE = 0.05
#: The SEG's own series number: high, so viewers list it after the acquired series.
SEG_SERIES_NUMBER = 1000
#: Type 2 attributes (present, may be empty) of the patient and study a SEG copies from its
#: source; exports often leave them out, and an absent one means the same as an empty one.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "AccessionNumber", "StudyID")
#: Generic SNOMED CT "Tissue" (Slicer's default too): the convention names a class, not its anatomy.
_TISSUE = ("85756007", "SCT", "Tissue")


@dataclass(frozen=True)
class Segment:
    """One foreground class as a segment: DICOM segment ``number`` (1, 2, ...), its on-disk label
    ``value``, display ``name`` and ``colour`` (RGB in [0, 1])."""

    number: int
    value: int
    name: str
    colour: tuple[float, float, float]


def segments_of(convention: LabelConvention) -> tuple[Segment, ...]:
    """The convention's foreground classes in class order, named and coloured."""
    names = convention.value_names()
    colours = colours_for(list(names))
    return tuple(
        Segment(number, value, " ".join(name.split()) or f"label {value}", colours[value])
        for number, (value, name) in enumerate(names.items(), start=1)
    )


def check_output_format(output_format: str) -> None:
    """Refuse an unknown format, or one whose optional extra is not installed."""
    if output_format not in OUTPUT_FORMATS:
        raise Vox2VoxError(f"output format {output_format!r}: choose {', '.join(OUTPUT_FORMATS)}")
    require_writer(output_format)


def require_writer(output_format: str) -> None:
    """A one-line error naming the extra to install when ``output_format`` cannot be written."""
    if output_format in _EXTRAS:
        module, extra = _EXTRAS[output_format]
        if importlib.util.find_spec(module) is None:
            raise Vox2VoxError(
                f"--output-format {output_format} needs the {module} package; pip install 'vox2vox[{extra}]'"
            )


def check_dicom_seg_inputs(first_channels: Sequence[tuple[str, Path]]) -> None:
    """Refuse ``dicom-seg`` unless every case's (first) image is a DICOM series folder.

    ``first_channels``: (case id, the file or folder whose grid the label map takes). Called once
    before any case is predicted, so a wrong input costs nothing and writes nothing.
    """
    for case_id, path in first_channels:
        if format_of(path) != "dicom":
            raise Vox2VoxError(
                f"{path}: --output-format dicom-seg needs DICOM series input (a folder of slices), but case "
                f"{case_id!r} is not one; a DICOM SEG must reference its source images: use nifti or seg-nrrd"
            )


def write_label_map(
    labels: np.ndarray,
    geometry: Geometry,
    target: Path,
    *,
    output_format: OutputFormat,
    segments: Sequence[Segment],
    dicom_source: DicomSource | None = None,
) -> None:
    """Write canonical ``(X, Y, Z)`` labels (on-disk values) to ``target`` in ``output_format``."""
    if output_format == "nifti":
        write_volume(labels, geometry, target)
    elif output_format == "seg-nrrd":
        write_seg_nrrd(labels, geometry, target, segments)
    elif output_format == "dicom-seg":
        if dicom_source is None:
            raise Vox2VoxError(f"{target}: a DICOM SEG needs its source series; read it with read_dicom_source")
        write_dicom_seg(labels, geometry, dicom_source, target, segments)
    else:
        raise Vox2VoxError(f"output format {output_format!r}: choose {', '.join(OUTPUT_FORMATS)}")


# ---- 3D Slicer .seg.nrrd ------------------------------------------------------------------------
def write_seg_nrrd(labels: np.ndarray, geometry: Geometry, path: str | Path, segments: Sequence[Segment]) -> None:
    """A 3D Slicer segmentation file: the label map on the input's grid (its voxel order), one
    layer, ``SegmentN_{ID,Name,Color,LabelValue,Layer,Extent,...}`` per segment, atomically.

    Written by SimpleITK (ITK's NRRD writer, as Slicer's own): LPS ``space directions`` and
    ``space origin``, ``kinds: domain domain domain``, gzip, and the segmentation fields as
    ``key:=value`` lines. An empty segment gets VTK's empty extent ``0 -1 0 -1 0 -1``.
    """
    path = Path(path)
    source = to_source_orientation(np.asarray(labels), geometry)
    top = int(source.max()) if source.size else 0
    dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.int32
    lps = _RAS_TO_LPS @ np.asarray(geometry.source_affine, dtype=float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    # ITK arrays are indexed (k, j, i); its direction matrix holds one unit axis per column.
    image = sitk.GetImageFromArray(np.ascontiguousarray(source.astype(dtype, copy=False).transpose(2, 1, 0)))
    try:
        image.SetSpacing(tuple(float(v) for v in spacing))
        image.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
        image.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
    except RuntimeError as err:  # e.g. a sheared grid ITK cannot represent
        raise Vox2VoxError(f"{path}: the input's grid cannot be stored as NRRD ({str(err).strip().splitlines()[-1]})") from err
    fields = {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        # The closing '|' as Slicer writes it (older Slicer versions need it).
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for index, segment in enumerate(segments):
        prefix = f"Segment{index}_"
        fields[prefix + "ID"] = f"Segment_{segment.value}"
        fields[prefix + "Name"] = segment.name
        # 0: chosen by us, so Slicer keeps name and colour instead of regenerating them.
        fields[prefix + "NameAutoGenerated"] = "0"
        fields[prefix + "Color"] = " ".join(f"{c:.6g}" for c in segment.colour)
        fields[prefix + "ColorAutoGenerated"] = "0"
        fields[prefix + "LabelValue"] = str(segment.value)
        fields[prefix + "Layer"] = "0"
        fields[prefix + "Extent"] = _extent(source == segment.value)
        fields[prefix + "Tags"] = "|"
    for key, value in fields.items():
        image.SetMetaData(key, value)
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=True)
        except RuntimeError as err:
            raise Vox2VoxError(f"{path}: write failed ({str(err).strip().splitlines()[-1]})") from err


def _extent(mask: np.ndarray) -> str:
    """``minI maxI minJ maxJ minK maxK`` of the non-empty voxels (inclusive), or VTK's empty extent."""
    if not mask.any():
        return "0 -1 0 -1 0 -1"
    bounds = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        bounds += [int(hit[0]), int(hit[-1])]
    return " ".join(str(b) for b in bounds)


# ---- DICOM Segmentation -------------------------------------------------------------------------
@dataclass
class DicomSource:
    """The slices of one DICOM series, headers only (pydicom datasets without pixel data), in the
    order GDCM stacks them, checked to carry what a SEG must reference."""

    folder: Path
    datasets: list[Any]


def read_dicom_source(folder: str | Path) -> DicomSource:
    """Read the headers of the series in ``folder`` (the slices :func:`series_files` picks).

    Empty SOP Class/Instance UIDs are taken from each file's meta header (PS3.10 makes them
    equal), absent Type 2 patient/study attributes the SEG copies are added empty; a series without Study, Series or Frame of Reference UIDs (an anonymised export) is
    refused: a SEG that referenced made-up UIDs would not find its images.
    """
    # Lazy: pydicom comes with the optional highdicom extra (vox2vox[dicom]).
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    datasets = []
    for file in series_files(folder):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as err:
            raise Vox2VoxError(f"{folder}: slice {Path(file).name} cannot be read as DICOM ({err})") from err
        meta = getattr(ds, "file_meta", None)
        for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not str(ds.get(key, "") or "").strip() and meta is not None and str(meta.get(meta_key, "") or "").strip():
                setattr(ds, key, meta.get(meta_key))
        for key in _TYPE2_COPIED:
            if key not in ds:
                setattr(ds, key, "")
        datasets.append(ds)
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID", "SOPClassUID"):
        missing = [Path(d.filename).name for d in datasets if not str(d.get(key, "") or "").strip()]
        if missing:
            raise Vox2VoxError(
                f"{folder}: slice {missing[0]} ({len(missing)} of {len(datasets)}) has no {key} (an anonymised "
                "export?); a DICOM SEG must reference the source study, series and images: restore the UIDs "
                "or use --output-format nifti or seg-nrrd"
            )
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(d.get(key)) for d in datasets}
        if len(values) > 1:
            raise Vox2VoxError(f"{folder}: slices carry {len(values)} different {key}s; put one series per folder")
    uids = [str(d.SOPInstanceUID) for d in datasets]
    if len(set(uids)) != len(uids):
        raise Vox2VoxError(f"{folder}: two slices share one SOPInstanceUID; the series is damaged or duplicated")
    return DicomSource(folder, datasets)


def write_dicom_seg(
    labels: np.ndarray,
    geometry: Geometry,
    source: DicomSource,
    path: str | Path,
    segments: Sequence[Segment],
) -> None:
    """A binary DICOM Segmentation of canonical ``(X, Y, Z)`` labels over the ``source`` slices.

    Each source slice gets the label map's plane through it (the nearest plane when the series
    was resampled along its normal, ``--allow-nonuniform``); its position and orientation are
    checked against the label map's grid first. Segments without voxels are still described
    (the SEG says the class was looked for); a prediction with no foreground at all is written
    with every (empty) frame, as highdicom must keep at least one.
    """
    # Lazy: highdicom is an optional extra (vox2vox[dicom]) and takes seconds to import.
    import highdicom as hd

    path = Path(path)
    frames = _frames_on_source_slices(np.asarray(labels), geometry, source, segments)
    descriptions = _segment_descriptions(segments)
    try:
        with warnings.catch_warnings():
            # highdicom warns about the source's own values (e.g. a one-part patient name) that the
            # SEG copies unchanged; nothing the user of predict can act on, so not on their terminal.
            warnings.simplefilter("ignore", UserWarning)
            seg = hd.seg.Segmentation(
                source_images=source.datasets,
                pixel_array=frames,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=hd.UID(),
                series_number=SEG_SERIES_NUMBER,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="vox2vox",
                manufacturer_model_name="vox2vox",
                software_versions=__version__,
                device_serial_number="0",
                content_label="VOX2VOX",
                content_description=f"vox2vox {__version__} automatic segmentation",
                series_description="vox2vox segmentation",
                content_qualification=hd.ContentQualificationValues.RESEARCH,
                # An all-background prediction keeps every frame (highdicom cannot omit them all).
                omit_empty_frames=bool(frames.any()),
            )
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        raise Vox2VoxError(f"{source.folder}: cannot build a DICOM SEG over this series ({err})") from err
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp), enforce_file_format=True)


def _segment_descriptions(segments: Sequence[Segment]) -> list[Any]:
    """highdicom descriptions: label, colour (CIELab), vox2vox as the automatic algorithm."""
    # Lazy: highdicom is an optional extra (vox2vox[dicom]) and takes seconds to import.
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="vox2vox", version=__version__, family=codes.cid7162.ArtificialIntelligence,
    )
    tissue = hd.sr.CodedConcept(*_TISSUE)
    return [
        hd.seg.SegmentDescription(
            segment_number=s.number,
            segment_label=s.name[:64],  # LO: at most 64 characters
            segmented_property_category=tissue,
            segmented_property_type=tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*(int(round(255 * c)) for c in s.colour)),
        )
        for s in segments
    ]


def _frames_on_source_slices(
    labels: np.ndarray, geometry: Geometry, source: DicomSource, segments: Sequence[Segment],
) -> np.ndarray:
    """``(slices, rows, columns)`` segment numbers (0 background), frame ``n`` on dataset ``n``."""
    on_disk = to_source_orientation(labels, geometry)  # (columns, rows, slices) as ITK stacked them
    lps = _RAS_TO_LPS @ np.asarray(geometry.source_affine, dtype=float)
    inverse = np.linalg.inv(lps)
    axes = lps[:3, :3] / np.linalg.norm(lps[:3, :3], axis=0)
    values = np.asarray(sorted(s.value for s in segments), dtype=np.int64)
    numbers = np.asarray([next(s.number for s in segments if s.value == v) for v in values], dtype=np.uint16)
    dtype = np.uint8 if len(segments) <= 255 else np.uint16
    frames = np.zeros((len(source.datasets), on_disk.shape[1], on_disk.shape[0]), dtype=dtype)
    for n, ds in enumerate(source.datasets):
        name = Path(ds.filename).name if getattr(ds, "filename", None) else f"slice {n}"
        try:
            position = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=float)
            orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
            rows, columns = int(ds.Rows), int(ds.Columns)
        except (AttributeError, TypeError, ValueError) as err:
            raise Vox2VoxError(f"{source.folder}: slice {name} lacks a usable position or orientation ({err})") from err
        i, j, k = (inverse @ np.append(position, 1.0))[:3]
        if (
            (columns, rows) != on_disk.shape[:2]
            or not np.allclose(orientation[:3], axes[:, 0], atol=1e-3)
            or not np.allclose(orientation[3:], axes[:, 1], atol=1e-3)
            or max(abs(i), abs(j)) > _IN_PLANE_TOLERANCE
            or not -0.5 <= k < on_disk.shape[2] - 0.5
        ):
            raise Vox2VoxError(
                f"{source.folder}: slice {name} does not lie on the label map's grid (voxel {i:.2f}, {j:.2f}, "
                f"{k:.2f}); the prediction and the series disagree, so no SEG is written"
            )
        plane = on_disk[:, :, int(round(k))].T.astype(np.int64, copy=False)  # (rows, columns)
        slot = np.clip(np.searchsorted(values, plane), 0, len(values) - 1)
        frames[n] = np.where(values[slot] == plane, numbers[slot], 0)
    return frames
