"""The Python API: load a model once, predict files or arrays (notebooks, scripts, services).

    from vox2vox import load_model
    model = load_model("runs/brats")        # run folder, .safetensors, or an export (.onnx, .pt)
    result = model.predict("case.nii.gz")   # or ["t1.nii.gz", "flair.nii.gz"], or an array
    result.labels, result.affine            # label map on the input's own grid, on-disk values
    result.save("case_seg.nii.gz")
    result = model.predict(volume, spacing=(1.0, 1.0, 1.0), probabilities=True)

    synth = load_model("runs/t1-to-flair").predict("t1.nii.gz")   # a translation model
    synth.volume, synth.scale               # the synthesised FLAIR on the input's grid, "z-scored"
    synth.save("flair_synth.nii.gz")

A thin layer over :mod:`vox2vox.infer.inference`: preprocessing, the network run, TTA,
post-processing and the mapping back to the input grid are the same calls ``vox2vox predict``
makes (``predict_case``), so an array, a file and the command line give the same label maps.
A translation model (``task.kind = "translate"``) returns a :class:`Synthesis` through
:mod:`vox2vox.infer.translation` (``synthesise_case`` / ``synthesise_loaded``), as ``predict`` does.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vox2vox.data.cases import CaseFiles
from vox2vox.data.io import Geometry, canonical_from_array, to_source_orientation, write_volume
from vox2vox.data.loading import load_case, load_case_without, preprocess_without
from vox2vox.data.preprocessing import LoadedCase, PreprocessConfig, preprocess
from vox2vox.data.translation import (
    intensity_scale,
    prepare_translation_case,
    synthesis_description,
)
from vox2vox.device import resolve_device
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.case_files import CasePrediction
from vox2vox.infer.ensemble import (
    check_absent_allowed,
    check_channels,
    discover_like_training,
    with_absent_channels,
)
from vox2vox.infer.inference import PredictionReport, read_model
from vox2vox.infer.loaded import LoadedModel
from vox2vox.infer.options import API_NAMES, PredictionOptions
from vox2vox.infer.predictor import Predictor
from vox2vox.infer.translation import discover_sources
from vox2vox.train.crossval import expand_model_paths

PathLike = str | Path
#: ``predict_folder`` spells the uncertainty maps ``save_uncertainty=`` (``predict``: ``uncertainty=``).
FOLDER_NAMES = {**API_NAMES, "uncertainty": "save_uncertainty="}


@dataclass(frozen=True)
class Prediction:
    """One predicted case on the input's own grid.

    ``labels``: ``(X, Y, Z)`` integer label map in the training data's on-disk values (e.g. BraTS
    4 for enhancing tumour), in the input's voxel order (a file's as stored; an array's as given).
    ``affine``: 4x4 voxel -> world (RAS+ mm) of that grid. ``probabilities``: ``(K, X, Y, Z)``
    float32 when asked for, else None: the softmax (channel ``k`` is class ``label_values[k]``),
    or for a model with region outputs one sigmoid per region (``channel_names``, e.g. WT, TC,
    ET). ``entropy`` / ``spread``: ``(X, Y, Z)`` uncertainty maps in [0, 1] when asked for (spread
    only with TTA or an ensemble; :mod:`vox2vox.infer.uncertainty`). ``warnings``: how the case
    differs from the model's training data (it was still segmented; also issued as Python warnings).
    """

    labels: np.ndarray
    affine: np.ndarray
    probabilities: np.ndarray | None
    label_values: tuple[int, ...]
    class_names: tuple[str, ...]
    geometry: Geometry
    channel_names: tuple[str, ...] = ()
    entropy: np.ndarray | None = None
    spread: np.ndarray | None = None
    warnings: tuple[str, ...] = ()

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the label map's axes."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def save(self, path: PathLike) -> Path:
        """Write the label map as NIfTI (atomically) on the input's grid; returns the path."""
        canonical = _to_canonical_axes(self.labels, self.geometry)
        write_volume(canonical, self.geometry, path)
        return Path(path)


@dataclass(frozen=True)
class Synthesis:
    """One case's synthesised target channels (a translation model) on the input's own grid.

    ``volumes``: ``(T, X, Y, Z)`` float32, one volume per target (``targets``, e.g. ``("flair",)``),
    in the input's voxel order (a file's as stored; an array's as given); ``volume`` is the one
    target's. ``scale``: what the values are (``z-scored``: over the source foreground, the
    target's own mean/std being unknown, 0 outside; ``HU``; ``input units``), as ``vox2vox
    predict`` writes them. ``affine``: 4x4 voxel -> world (RAS+ mm) of that grid.
    """

    volumes: np.ndarray
    targets: tuple[str, ...]
    scale: str
    affine: np.ndarray
    geometry: Geometry

    @property
    def volume(self) -> np.ndarray:
        """The ``(X, Y, Z)`` volume of a one-target model."""
        if len(self.targets) != 1:
            raise Vox2VoxError(f"this synthesis has {len(self.targets)} targets ({', '.join(self.targets)}); "
                               "take volumes[i] or volume_of(name)")
        return self.volumes[0]

    def volume_of(self, target: str) -> np.ndarray:
        if target not in self.targets:
            raise Vox2VoxError(f"target {target!r}: this synthesis has {', '.join(self.targets)}")
        return self.volumes[self.targets.index(target)]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the volumes' axes."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def description(self, target: str | None = None) -> str:
        """The NIfTI header description ``save`` (and ``vox2vox predict``) writes."""
        return synthesis_description(target or self._one_target(), self.scale)

    def save(self, path: PathLike, *, target: str | None = None) -> Path:
        """Write one target as float32 NIfTI (atomically) on the input's grid, with the header
        description ``vox2vox predict`` writes; ``target`` names it when there are several."""
        name = target or self._one_target()
        canonical = _to_canonical_axes(self.volume_of(name), self.geometry)
        write_volume(canonical, self.geometry, path, dtype=np.float32, description=self.description(name))
        return Path(path)

    def _one_target(self) -> str:
        if len(self.targets) != 1:
            raise Vox2VoxError(f"this synthesis has {len(self.targets)} targets ({', '.join(self.targets)}); "
                               "name one with target=")
        return self.targets[0]


class Model:
    """One model (or an ensemble) ready to predict; see :func:`load_model`."""

    def __init__(self, models: Sequence[LoadedModel], device: torch.device):
        self.models = list(models)
        self.device = device
        # The models checked together once (a segmentation's convention and output head, which turn
        # probabilities into labels as predict does; a translation ensemble's task).
        checked = Predictor(self.models, device=device)
        self.convention, self.head = checked.convention, checked.head

    @property
    def task(self) -> str:
        """``segment`` (label maps) or ``translate`` (synthesised channels)."""
        return self.models[0].config.task.kind

    @property
    def channels(self) -> list[str]:
        """The input channels (a translation's sources), in the order arrays and file lists must give them."""
        first = self.models[0]
        return list(first.channels or [f"channel_{i}" for i in range(first.config.generator.in_channels)])

    @property
    def classes(self) -> dict[int, str]:
        """On-disk label value -> class name (a segmentation model's)."""
        if self.convention is None:
            raise Vox2VoxError(f"{self.models[0].path}: a translation model has no classes; it synthesises "
                               f"{', '.join(self.targets)} (model.targets)")
        return dict(zip(self.convention.source_values, self.convention.class_names, strict=True))

    @property
    def regions(self) -> dict[str, tuple[int, ...]]:
        """The regions its predictions are scored on (region name -> on-disk label values), by the rule
        ``evaluate`` and validation use (:func:`vox2vox.data.labels.scoring_regions_for`)."""
        if self.convention is None:
            raise Vox2VoxError(f"{self.models[0].path}: a translation model has no label regions")
        return self.convention.scoring_regions()

    @property
    def targets(self) -> list[str]:
        """The channels a translation model synthesises, in the order of ``Synthesis.volumes``."""
        if self.task != "translate":
            raise Vox2VoxError(f"{self.models[0].path}: a segmentation model synthesises no channels; it predicts "
                               "the classes in model.classes")
        return list(self.models[0].config.task.target or ())

    @property
    def backend(self) -> str:
        return ", ".join(sorted({m.backend for m in self.models}))

    def __repr__(self) -> str:
        paths = ", ".join(str(m.path) for m in self.models)
        if self.task == "translate":
            task = self.models[0].config.task
            return (f"Model({paths}; {self.backend}; translate {self.channels} -> {self.targets}; "
                    f"{task.head} head, written {_scale(self.models[0])})")
        return f"Model({paths}; {self.backend}; channels {self.channels}; classes {self.classes})"

    def predict(
        self,
        image: np.ndarray | torch.Tensor | PathLike | Sequence[PathLike] | Mapping[str, PathLike],
        *,
        spacing: Sequence[float] | None = None,
        affine: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        probabilities: bool = False,
        uncertainty: bool = False,
        tta: bool | None = None,
        largest_component: str | None = None,
        min_et_voxels: int = 0,
        threshold: float | str | None = None,
        mode: str = "auto",
        window: tuple[int, int, int] = (128, 128, 128),
        overlap: float = 0.5,
        amp: str = "off",
        missing: Sequence[str] = (),
    ) -> Prediction | Synthesis:
        """Segment one case (a translation model: synthesise its targets, a :class:`Synthesis`).

        ``image``: a file (or DICOM folder, or case folder) path; a list of channel files in
        :attr:`channels` order, or a dict channel name -> file; or an array ``(C, X, Y, Z)``
        (``(X, Y, Z)`` for a one-channel model) with its grid as ``spacing`` (mm per axis) or
        ``affine`` (4x4 voxel -> RAS+ mm; default: 1 mm, identity). An array is read as a file of
        that affine would be (reoriented to the canonical axes the model was trained on, and back).
        ``mask``: optional ``(X, Y, Z)`` brain/body mask for an array (normalisation and cropping use
        it, as a manifest's mask column). ``uncertainty``: also the entropy (and spread) maps.
        ``tta`` / ``largest_component`` / ``threshold`` (foreground probability, or ``"argmax"``):
        default what the model's training chose (``vox2vox predict``'s defaults); the other options
        are ``predict``'s too. A translation model takes
        the same inputs (its source channels) and options but the segmentation-only ones
        (``probabilities``, ``uncertainty``, ``largest_component``, ``min_et_voxels``, ``threshold``); ``mask``
        then replaces the source foreground as the voxels the synthesis is defined in.
        ``missing``: channels the case lacks (``predict --missing``), for a model trained with
        channel dropout: the files or the array then hold the other channels only, in
        :attr:`channels` order; a model trained without it refuses.
        """
        options = PredictionOptions(tta=tta, threshold=threshold, largest_component=largest_component,
                                    min_et_voxels=min_et_voxels, mode=mode, window=window, overlap=overlap, amp=amp,
                                    missing=missing, probabilities=probabilities, uncertainty=uncertainty)
        predictor = Predictor(self.models, options, device=self.device)
        if predictor.translate:
            return self._synthesise(image, spacing=spacing, affine=affine, mask=mask, predictor=predictor)
        missing = self._check_missing(options.missing)
        if isinstance(image, str | Path) or _is_file_list(image):
            if spacing is not None or affine is not None or mask is not None:
                raise Vox2VoxError("spacing=, affine= and mask= are for arrays; a file's header gives its grid")
            (loaded, names), where = self._load_files(image, missing), str(image)
        else:
            loaded = self._load_array(image, spacing=spacing, affine=affine, mask=mask, missing=missing)
            names, where = None, "array"
        result = predictor.predict_case(loaded, where=where, channel_names=names)
        for problem in result.warnings:
            warnings.warn(f"{where}: unlike the model's training data: {problem}", stacklevel=2)
        return self._prediction(result, probabilities)

    def predict_folder(self, input_path: PathLike, output_dir: PathLike, *, layout: str = "auto",
                       save_probabilities: str | None = None, output_format: str = "nifti",
                       save_uncertainty: bool = False, progress: bool = True,
                       tta: bool | None = None, largest_component: str | None = None, min_et_voxels: int = 0,
                       threshold: float | str | None = None, mode: str = "auto", window: tuple[int, int, int] = (128, 128, 128),
                       overlap: float = 0.5, amp: str = "off", missing: Sequence[str] = ()) -> PredictionReport:
        """``vox2vox predict`` on a dataset folder, manifest or image: ``<output_dir>/<case_id>.nii.gz``
        (``output_format``: ``nifti``, ``seg-nrrd`` or ``dicom-seg``; ``save_uncertainty``: entropy
        and spread maps with ``uncertainty.csv``, as ``predict --save-uncertainty``). A translation
        model writes its synthesised volumes (``<case_id>_<target>.nii.gz`` for several targets).
        ``missing``: channels no case has (``predict --missing``), as :meth:`predict`'s."""
        options = PredictionOptions(tta=tta, threshold=threshold, largest_component=largest_component,
                                    min_et_voxels=min_et_voxels, mode=mode, window=window, overlap=overlap, amp=amp,
                                    missing=missing, uncertainty=save_uncertainty,
                                    save_probabilities=save_probabilities,  # type: ignore[arg-type]
                                    output_format=output_format, layout=layout, progress=progress)  # type: ignore[arg-type]
        predictor = Predictor(self.models, options, device=self.device, names=FOLDER_NAMES)
        if not predictor.translate:
            self._check_missing(options.missing)
        return predictor.predict_folder(input_path, output_dir)

    # ---- the pieces --------------------------------------------------------------------------
    def _check_missing(self, missing: Sequence[str]) -> tuple[str, ...]:
        """``missing`` as a tuple, refused for a translation model or one trained without channel dropout."""
        if isinstance(missing, str):
            missing = (missing,)
        missing = tuple(dict.fromkeys(missing))
        for name in missing:
            if name not in self.channels:
                raise Vox2VoxError(f"missing={name!r}: the model has no such channel; its channels are "
                                   f"{', '.join(self.channels)}")
            for model in self.models:
                check_absent_allowed(model, name, "this case")
        if missing and len(missing) == len(self.channels):
            raise Vox2VoxError("missing=: every channel named missing; at least one must be given")
        return missing

    def _synthesise(self, image: Any, *, spacing: Sequence[float] | None, affine: np.ndarray | None,
                    mask: np.ndarray | None, predictor: Predictor) -> Synthesis:
        """A translation model's :class:`Synthesis` of one case: files through ``synthesise_case``
        (``vox2vox predict``'s per-case call), arrays through ``synthesise_loaded``."""
        first = self.models[0]
        if isinstance(image, str | Path) or _is_file_list(image):
            if spacing is not None or affine is not None or mask is not None:
                raise Vox2VoxError("spacing=, affine= and mask= are for arrays; a file's header gives its grid")
            if isinstance(image, str | Path):
                spec = discover_sources(first, image)
                if len(spec.cases) != 1:
                    raise Vox2VoxError(f"{image}: holds {len(spec.cases)} cases; predict one case here, or a "
                                       "dataset with Model.predict_folder")
                case = spec.cases[0]
            else:
                case = CaseFiles("case", self._channel_files(image), None)
            volumes, scale, geometry = predictor.synthesise_case(case)
        else:
            canonical, geometry, canonical_mask = self._canonical_array(image, spacing=spacing, affine=affine, mask=mask)
            loaded, fg = prepare_translation_case("array", canonical, geometry, canonical_mask,
                                                  n_source=canonical.shape[0], prep=self._prep())
            volumes, scale, geometry = predictor.synthesise_loaded(loaded, fg, where="array")
        on_input = np.moveaxis(to_source_orientation(np.moveaxis(volumes, 0, -1), geometry), -1, 0)
        return Synthesis(np.ascontiguousarray(on_input, dtype=np.float32), tuple(self.targets), scale,
                         geometry.source_affine, geometry)

    def _prep(self) -> PreprocessConfig:  # the training preprocessing, without the training machine's cache
        return dataclasses.replace(self.models[0].config.preprocess, cache_dir=None)

    def _load_files(self, image: Any, missing: Sequence[str] = ()) -> tuple[LoadedCase, tuple[str, ...] | None]:
        """The case and its channel names when they come from the files (compared with training's)."""
        first = self.models[0]
        names = None
        if isinstance(image, str | Path):
            spec = discover_like_training(first, image, "auto", missing)
            if len(spec.cases) != 1:
                raise Vox2VoxError(f"{image}: holds {len(spec.cases)} cases; predict one case here, or a "
                                   "dataset with Model.predict_folder")
            spec = with_absent_channels(self.models, spec, missing, image)
            check_channels(first, spec.channel_names, image)
            case = spec.cases[0]
            files = CaseFiles(case.case_id, case.channels, None, case.mask, case.absent)
            # A single image's one channel is always called "image": named channels only.
            names = tuple(spec.channel_names) if spec.layout != "single" else None
        else:
            files = CaseFiles("case", self._channel_files(image, missing), None, absent=tuple(missing))
        if files.absent:
            return load_case_without(files, self.channels, files.absent, prep=self._prep()), names
        return load_case(files, convention=None, prep=self._prep()), names

    def _channel_files(self, image: Sequence[PathLike] | Mapping[str, PathLike],
                       missing: Sequence[str] = ()) -> dict[str, Path]:
        names = [n for n in self.channels if n not in missing]
        if isinstance(image, Mapping):
            missing = [n for n in names if n not in image]
            if missing:
                raise Vox2VoxError(f"channel files: no file for {', '.join(missing)}; the model needs {', '.join(names)}")
            return {n: Path(image[n]) for n in names}
        files = list(image)
        if len(files) != len(names):
            raise Vox2VoxError(f"channel files: {len(files)} given, the model needs {len(names)} "
                               f"({', '.join(names)}) in that order")
        return {n: Path(f) for n, f in zip(names, files, strict=True)}

    def _load_array(self, image: Any, *, spacing: Sequence[float] | None, affine: np.ndarray | None,
                    mask: np.ndarray | None, missing: Sequence[str] = ()) -> LoadedCase:
        canonical, geometry, canonical_mask = self._canonical_array(image, spacing=spacing, affine=affine, mask=mask,
                                                                    n_absent=len(missing))
        if missing:
            image_p, record = preprocess_without(canonical, self.channels, missing, spacing=geometry.spacing,
                                                 prep=self._prep(), mask=canonical_mask)
        else:
            image_p, _, record = preprocess(canonical, None, spacing=geometry.spacing, config=self._prep(),
                                            mask=canonical_mask)
        return LoadedCase("array", image_p, None, geometry, record)

    def _canonical_array(self, image: Any, *, spacing: Sequence[float] | None, affine: np.ndarray | None,
                         mask: np.ndarray | None, n_absent: int = 0) -> tuple[np.ndarray, Geometry, np.ndarray | None]:
        """An array (and its optional mask) checked and reoriented as a file read would be; with
        ``n_absent`` channels missing it holds the others only."""
        array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        n_in = self.models[0].config.generator.in_channels - n_absent
        if array.ndim == 3 and n_in == 1:
            array = array[None]
        if array.ndim != 4 or array.shape[0] != n_in:
            given = "the channels given" if n_absent else "the model's channels"
            raise Vox2VoxError(f"array of shape {array.shape}: the model takes (C, X, Y, Z) with C = {n_in}, {given} "
                               f"(of {', '.join(self.channels)})" + ("" if n_in > 1 else " or (X, Y, Z)"))
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
            raise Vox2VoxError(f"array of dtype {array.dtype}: give real intensities")
        array = array.astype(np.float32, copy=False)
        if not np.isfinite(array).all():
            raise Vox2VoxError(f"array: {int((~np.isfinite(array)).sum())} NaN/Inf voxels; replace them first")
        target = self._prep().target_spacing
        if target is not None and spacing is None and affine is None:  # 1 mm would be a guess that matters
            raise Vox2VoxError(f"array: the model resamples to {list(target)} mm; give the array's spacing= "
                               "(mm per axis) or affine=")
        grid = _grid_affine(spacing, affine)
        canonical, geometry = canonical_from_array(array, grid)
        canonical_mask = None
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != array.shape[1:]:
                raise Vox2VoxError(f"mask of shape {mask.shape}: must match the image's {array.shape[1:]}")
            canonical_mask = canonical_from_array(mask[None] > 0.5, grid)[0][0]
            if not canonical_mask.any():
                raise Vox2VoxError("mask is empty; pass mask=None or a mask of the body/brain")
        return canonical, geometry, canonical_mask

    def _prediction(self, result: CasePrediction, probabilities: bool) -> Prediction:
        geometry = result.geometry
        probs = None
        if probabilities:
            moved = np.moveaxis(result.probabilities.astype(np.float32, copy=False), 0, -1)
            probs = np.moveaxis(to_source_orientation(moved, geometry), -1, 0)
        entropy, spread = (None if m is None else to_source_orientation(m.astype(np.float32, copy=False), geometry)
                           for m in (result.entropy, result.spread))
        return Prediction(labels=to_source_orientation(result.labels, geometry), affine=geometry.source_affine,
                          probabilities=probs, label_values=tuple(self.convention.source_values),
                          class_names=tuple(self.convention.class_names), geometry=geometry,
                          channel_names=tuple(self.head.names), entropy=entropy, spread=spread,
                          warnings=result.warnings)


def load_model(path: PathLike | Sequence[PathLike], *, device: str = "auto") -> Model:
    """A :class:`Model` from a run folder, a ``.safetensors`` checkpoint, a ``vox2vox export`` file
    (``.onnx``, TorchScript ``.pt``), a cross-validation folder (its folds as an ensemble), or a
    list of these (an ensemble). ``device``: ``auto``, ``cpu`` or ``cuda``."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    torch_device = resolve_device(device)
    return Model([read_model(p, device=torch_device) for p in expand_model_paths(paths)], torch_device)


def _scale(model: LoadedModel) -> str:
    return intensity_scale(model.config.preprocess)


def _is_file_list(image: Any) -> bool:
    if isinstance(image, Mapping):
        return True
    return isinstance(image, list | tuple) and bool(image) and all(isinstance(i, str | Path) for i in image)


def _grid_affine(spacing: Sequence[float] | None, affine: np.ndarray | None) -> np.ndarray:
    if affine is not None:
        grid = np.asarray(affine, dtype=float)
        if grid.shape != (4, 4) or not np.isfinite(grid).all() or abs(np.linalg.det(grid[:3, :3])) < 1e-12:
            raise Vox2VoxError(f"affine: give a finite, invertible 4x4 voxel-to-world matrix (got shape {grid.shape})")
        if spacing is not None and not np.allclose(np.linalg.norm(grid[:3, :3], axis=0), spacing, rtol=1e-3):
            raise Vox2VoxError(f"spacing={tuple(spacing)} disagrees with the affine's voxel size; give one of them")
        return grid
    if spacing is None:
        return np.eye(4)
    values = [float(s) for s in spacing]
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise Vox2VoxError(f"spacing={tuple(spacing)}: give three positive voxel sizes in mm")
    return np.diag([*values, 1.0])


def _to_canonical_axes(labels: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The inverse of :func:`to_source_orientation` (for writing through ``write_volume``)."""
    return canonical_from_array(labels[None], geometry.source_affine)[0][0]
