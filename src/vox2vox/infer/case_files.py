"""One case from the network's output to what ``predict`` writes: :func:`finish_case` maps the
probabilities back to the input grid and takes classes (the shared per-case step of the CLI and
the Python API), :func:`write_case` writes, all on the input's grid and atomically: the label map
(in the chosen :mod:`vox2vox.data.seg_formats` format), optionally the class probabilities and
the uncertainty maps (:mod:`vox2vox.infer.uncertainty`).

File names inside the output folder: ``<case>.nii.gz`` | ``<case>.dcm`` | ``<case>.seg.nrrd``
(label map), ``<case>.npz`` or ``<case>_probs.nii.gz`` (probabilities), ``<case>_entropy.nii.gz``
and ``<case>_spread.nii.gz`` (uncertainty).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vox2vox.data.cases import check_case_id
from vox2vox.data.io import Geometry, write_probabilities_npz, write_volume
from vox2vox.data.labels import LabelConvention
from vox2vox.data.preprocessing import undo_preprocessing
from vox2vox.data.seg_formats import SUFFIXES, DicomSource, OutputFormat, Segment, write_label_map
from vox2vox.infer.postprocessing import PostprocessConfig
from vox2vox.infer.postprocessing import postprocess as apply_postprocess
from vox2vox.infer.uncertainty import UncertaintyScores, score_case, uncertainty_maps
from vox2vox.model.outputs import OutputHead

ProbabilityFormat = Literal["npz", "nifti"]


@dataclass
class CasePrediction:
    """One case predicted, on the canonical input grid (``geometry``; the file's own orientation
    is restored when writing): ``labels`` ``(X, Y, Z)`` in on-disk label values (e.g. BraTS 4),
    post-processed; ``probabilities`` ``(K, X, Y, Z)`` float32, the averaged softmax (or region
    sigmoids, one per ``head`` output); with uncertainty asked for, ``entropy`` (and with several
    members ``spread``) ``(X, Y, Z)`` and their per-case ``scores``; ``warnings``: how the case
    differs from the model's training data (it was still segmented)."""

    case_id: str
    labels: np.ndarray
    probabilities: np.ndarray
    geometry: Geometry
    empty: bool
    entropy: np.ndarray | None = None
    spread: np.ndarray | None = None
    scores: UncertaintyScores | None = None
    warnings: tuple[str, ...] = ()


@dataclass
class CaseOutputs:
    """The files written for one case, its uncertainty scores (with ``--save-uncertainty``) and
    whether the label map holds no foreground at all."""

    labels: Path
    empty: bool
    probabilities: Path | None = None
    entropy: Path | None = None
    spread: Path | None = None
    uncertainty: UncertaintyScores | None = None


def finish_case(
    probs: np.ndarray,
    loaded: Any,
    *,
    convention: LabelConvention,
    head: OutputHead,
    postprocess: PostprocessConfig,
    expected_entropy: np.ndarray | None = None,
    members: int = 1,
    uncertainty: bool = False,
    warnings: Sequence[str] = (),
) -> CasePrediction:
    """Undo preprocessing, take classes (``head``) and post-process one case's network output.

    ``probs``: the averaged softmax (or region sigmoids) ``(K, D, H, W)`` on the preprocessed grid
    of ``loaded`` (a :class:`vox2vox.data.loading.LoadedCase`); ``expected_entropy``: the members'
    mean entropy on that grid (for the spread map; None with one member).
    """
    # Network-grid uncertainty first: the probabilities are mapped back below.
    maps = uncertainty_maps(probs, expected_entropy, kind=head.kind) if uncertainty else None
    # Back to the input grid as probabilities (linear where it was resampled), then to classes:
    # interpolating probabilities, not labels, keeps boundaries smooth under resampling.
    probs = undo_preprocessing(probs, loaded.record, order=1, background_channel=head.kind == "classes")
    labels = convention.to_source(head.to_classes(probs, postprocess.foreground_threshold))
    if postprocess.active:
        labels = apply_postprocess(labels, config=postprocess, convention=convention)
    foreground = labels != convention.source_values[0]
    result = CasePrediction(loaded.case_id, labels, probs, loaded.geometry, empty=not foreground.any(),
                            warnings=tuple(warnings))
    if maps is not None:
        result.entropy = undo_preprocessing(maps[0], loaded.record, order=1)
        result.spread = undo_preprocessing(maps[1], loaded.record, order=1) if maps[1] is not None else None
        result.scores = score_case(result.entropy, result.spread, foreground, members=members)
    return result


def write_case(
    result: CasePrediction,
    output_dir: Path,
    *,
    convention: LabelConvention,
    head: OutputHead,
    save_probabilities: ProbabilityFormat | None = None,
    output_format: OutputFormat = "nifti",
    segments: Sequence[Segment] = (),
    dicom_source: DicomSource | None = None,
) -> CaseOutputs:
    """Write one case's label map in ``output_format``, and its probabilities and uncertainty
    maps when ``result`` holds them (see :func:`finish_case`), atomically on the input's grid."""
    # Case ids are output names: never let one reach outside output_dir (discover checks too).
    check_case_id(result.case_id, where=output_dir)
    target = output_dir / f"{result.case_id}{SUFFIXES[output_format]}"
    write_label_map(result.labels, result.geometry, target, output_format=output_format, segments=segments,
                    dicom_source=dicom_source)
    out = CaseOutputs(labels=target, empty=result.empty, uncertainty=result.scores)
    if save_probabilities is not None:
        out.probabilities = _write_probabilities(result, output_dir, convention, head, save_probabilities)
    if result.entropy is not None:
        out.entropy = output_dir / f"{result.case_id}_entropy.nii.gz"
        write_volume(result.entropy, result.geometry, out.entropy, dtype=np.float32)
    if result.spread is not None:
        out.spread = output_dir / f"{result.case_id}_spread.nii.gz"
        write_volume(result.spread, result.geometry, out.spread, dtype=np.float32)
    return out


def _write_probabilities(
    result: CasePrediction, output_dir: Path, convention: LabelConvention, head: OutputHead,
    fmt: ProbabilityFormat,
) -> Path:
    # (C, X, Y, Z) canonical -> (X, Y, Z, C) in the file's own voxel order.
    on_disk = np.moveaxis(result.probabilities.astype(np.float32, copy=False), 0, -1)
    if fmt == "nifti":
        path = output_dir / f"{result.case_id}_probs.nii.gz"
        write_volume(on_disk, result.geometry, path, dtype=np.float32)
        return path
    path = output_dir / f"{result.case_id}.npz"
    values = convention.source_values
    if head.kind == "regions":  # each region channel stands for the class it adds
        values = tuple(convention.source_values[c] for c in head.region_class)
    write_probabilities_npz(on_disk, result.geometry, path, label_values=values, channel_names=head.names)
    return path
