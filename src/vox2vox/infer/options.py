"""What a prediction is asked for beyond its models and its input: one typed set of options.

``vox2vox predict``'s options, :meth:`vox2vox.api.Model.predict`'s and ``predict_folder``'s
keywords and ``--fill-missing`` all build one :class:`PredictionOptions`; the predictor
(:class:`vox2vox.infer.predictor.Predictor`) resolves it once against the models (what their
training chose, the device's precision) and refuses, in one place, options that do not apply to
the models' task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from vox2vox.data.seg_formats import OutputFormat
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.case_files import ProbabilityFormat

#: How the Python API spells each option (keyword arguments) ...
API_NAMES: Mapping[str, str] = {f: f"{f}=" for f in (
    "tta", "threshold", "largest_component", "min_et_voxels", "mode", "window", "overlap", "amp", "missing", "fill_missing",
    "probabilities", "uncertainty", "save_probabilities", "output_format", "layout", "channel", "progress")}
#: ... and ``vox2vox predict`` (its command-line options).
CLI_NAMES: Mapping[str, str] = {f: "--" + f.replace("_", "-") for f in API_NAMES} | {
    "uncertainty": "--save-uncertainty", "progress": "--no-progress"}

#: Options a translation model has no use for (it writes synthesised volumes, not label maps), in
#: the order a refusal names the first one given.
SEGMENTATION_ONLY = ("save_probabilities", "probabilities", "uncertainty", "min_et_voxels", "largest_component",
                     "threshold", "fill_missing", "missing", "output_format", "channel")


@dataclass(frozen=True)
class PredictionOptions:
    """Options of one prediction. ``tta``, ``threshold`` and ``largest_component`` None: what the
    first model's training chose (``state["predict"]``), else off / argmax."""

    tta: bool | None = None  # flip test-time augmentation
    threshold: float | str | None = None  # a foreground probability, or "argmax"
    largest_component: str | None = None  # off, class or region
    min_et_voxels: int = 0
    mode: str = "auto"  # whole volume or sliding window (InferenceConfig)
    window: tuple[int, int, int] = (128, 128, 128)
    overlap: float = 0.5
    amp: str = "off"
    missing: tuple[str, ...] = ()  # channels the input lacks (predict --missing)
    fill_missing: tuple[str, ...] = ()  # channels a translation model synthesises (predict --fill-missing)
    probabilities: bool = False  # Model.predict: the probabilities in the result
    uncertainty: bool = False  # entropy (and spread) maps; a folder's with uncertainty.csv
    save_probabilities: ProbabilityFormat | None = None  # a folder's probability files: npz or nifti
    output_format: OutputFormat = "nifti"  # a folder's label maps
    layout: str = "auto"  # how the input folder is laid out
    channel: str | None = None  # the input's channel that feeds a one-channel model (predict --channel)
    progress: bool = True

    def __post_init__(self) -> None:
        missing = (self.missing,) if isinstance(self.missing, str) else self.missing
        object.__setattr__(self, "missing", tuple(dict.fromkeys(missing)))
        object.__setattr__(self, "window", tuple(self.window))

    def refuse_segmentation_only(self, model: object, names: Mapping[str, str] = API_NAMES) -> None:
        """One line naming the first segmentation-only option given (spelled as ``names`` spells it,
        the API's keywords or the CLI's options) for a translation ``model``."""
        given = {f.name: getattr(self, f.name) for f in fields(self)}
        used = [name for name in SEGMENTATION_ONLY
                if given[name] not in (None, False, 0, ()) and not (name == "output_format" and given[name] == "nifti")]
        if used:
            raise Vox2VoxError(f"{model}: a translation model; {names[used[0]]} applies to segmentation")


#: Every option at its default (training's choices where it made them).
DEFAULT_OPTIONS = PredictionOptions()
