"""The one predictor: models and options, resolved once, serving ``vox2vox predict``, the Python
API (:class:`vox2vox.api.Model`) and ``--fill-missing``.

:class:`Predictor` takes the loaded models (one, or an ensemble) and a :class:`PredictionOptions`;
building it checks that the models fit together (a segmentation ensemble's convention and output
head, or a translation ensemble's task), refuses options that do not apply to their task (in one
place, spelled as the caller's user writes them) and resolves what training chose and the
device's precision into the network run (:class:`InferenceConfig`) and the label map's clean-up
(:class:`PostprocessConfig`). Its methods are the per-case and per-folder entry points of both
tasks; the work itself is :mod:`vox2vox.infer.inference`'s and :mod:`vox2vox.infer.translation`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from vox2vox.data.cases import CaseFiles, DatasetSpec
from vox2vox.data.io import Geometry
from vox2vox.data.labels import LabelConvention
from vox2vox.data.preprocessing import LoadedCase
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.case_files import CasePrediction
from vox2vox.infer.ensemble import check_ensemble
from vox2vox.infer.inference import (
    InferenceConfig,
    PredictionReport,
    inference_config,
    postprocess_config,
    predict_case,
    predict_dataset,
)
from vox2vox.infer.loaded import LoadedModel
from vox2vox.infer.options import API_NAMES, DEFAULT_OPTIONS, PredictionOptions
from vox2vox.infer.postprocessing import PostprocessConfig
from vox2vox.infer.translation import (
    check_translation_models,
    is_translation,
    predict_with_filled,
    synthesise_case,
    synthesise_dataset,
    synthesise_loaded,
)
from vox2vox.model.outputs import OutputHead


class Predictor:
    """Models plus options, checked and resolved once (module docstring)."""

    def __init__(self, models: Sequence[LoadedModel], options: PredictionOptions = DEFAULT_OPTIONS, *,
                 device: torch.device | str = "cpu", names: Mapping[str, str] = API_NAMES):
        if not models:
            raise Vox2VoxError("no model given; pass at least one checkpoint")
        self.models = list(models)
        self.options = options
        self.device = device
        self.names = names
        self.convention: LabelConvention | None = None
        self.head: OutputHead | None = None
        self.postprocess: PostprocessConfig | None = None
        if self.translate:
            check_translation_models(self.models)  # a translation ensemble: translation models only
            options.refuse_segmentation_only(self.models[0].path, names)
        else:
            # The output head (classes or regions) turns probabilities into labels.
            self.convention, self.head = check_ensemble(self.models)
            self.postprocess = postprocess_config(self.models, options, self.convention)
        self.inference: InferenceConfig = inference_config(self.models, options, device)

    @property
    def translate(self) -> bool:
        return any(is_translation(m) for m in self.models)

    # ---- one case ------------------------------------------------------------------------------
    def predict_case(self, loaded: LoadedCase, *, where: str | Path,
                     channel_names: Sequence[str] | None = None) -> CasePrediction:
        """One preprocessed case segmented (:func:`vox2vox.infer.inference.predict_case`)."""
        assert self.convention is not None and self.head is not None, "a segmentation predictor"
        return predict_case(self.models, loaded, convention=self.convention, head=self.head, config=self.inference,
                            device=self.device, postprocess=self.postprocess, where=where,
                            uncertainty=self.options.uncertainty, channel_names=channel_names)

    def synthesise_case(self, case: CaseFiles) -> tuple[np.ndarray, str, Geometry]:
        """One case's files synthesised (a translation model's targets)."""
        return synthesise_case(self.models, case, config=self.inference, device=self.device)

    def synthesise_loaded(self, loaded: LoadedCase, foreground: np.ndarray, *,
                          where: object) -> tuple[np.ndarray, str, Geometry]:
        """One preprocessed case (sources and their foreground) synthesised."""
        return synthesise_loaded(self.models, loaded, foreground, config=self.inference, device=self.device,
                                 where=where)

    # ---- a folder ------------------------------------------------------------------------------
    def predict_folder(self, input_path: str | Path, output_dir: str | Path, *, spec: DatasetSpec | None = None,
                       fill: Mapping[str, LoadedModel] | None = None, unchecked: bool = False,
                       load_input: Callable[[CaseFiles], LoadedCase] | None = None) -> PredictionReport:
        """Every case under ``input_path`` (or in ``spec``) into ``output_dir``: a translation's
        synthesised volumes, or label maps; ``fill``: channels synthesised by translation models
        where their fill-check record shows it helps (``--fill-missing``, ``unchecked``:
        ``--fill-unchecked``)."""
        if set(fill or {}) != set(self.options.fill_missing):
            raise Vox2VoxError(f"fill={sorted(fill or {})}: the predictor's options fill {list(self.options.fill_missing)}")
        if self.translate:
            return synthesise_dataset(self.models, input_path, output_dir, config=self.inference, device=self.device,
                                      layout=self.options.layout, progress=self.options.progress)
        if fill:
            return predict_with_filled(self.models, fill, input_path, output_dir, self.options, device=self.device,
                                       unchecked=unchecked)
        return predict_dataset(self.models, input_path, output_dir, self.options, device=self.device, spec=spec,
                               load_input=load_input)
