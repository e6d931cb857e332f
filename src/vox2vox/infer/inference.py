"""Run a trained generator on whole volumes: one pass or sliding window, flips, ensembles.

The generator is fully convolutional, so the default runs the whole (padded) volume in one pass,
as the authors did on 160x192x128 crops; that computes every voxel once. Sliding-window inference
with Gaussian blending (MONAI's ``sliding_window_inference``) is for volumes too large for memory:
with 128^3 windows at overlap 0.5 it computes each voxel about 4 times over (a 240x240x155 case
needs 3x3x2 = 18 windows of 2.1 M voxels for 8.9 M voxels).

Shapes: an image is ``(C, D, H, W)`` float32 (preprocessed); probabilities are
``(n_classes, D, H, W)`` float32 on the same grid.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vox2vox.config import Config
from vox2vox.data.cases import CaseFiles, DatasetSpec
from vox2vox.data.labels import LabelConvention, write_prediction_record
from vox2vox.data.loading import load_case, load_case_without
from vox2vox.data.preprocessing import LoadedCase
from vox2vox.data.seg_formats import (
    check_dicom_seg_inputs,
    check_output_format,
    read_dicom_source,
    segments_of,
)
from vox2vox.device import AmpDtype, autocast, tune_cpu_allocator
from vox2vox.errors import Vox2VoxError
from vox2vox.infer import ensemble
from vox2vox.infer.backends import check_precision, exported_format, load_exported, prediction_amp
from vox2vox.infer.case_files import CasePrediction, finish_case, write_case
from vox2vox.infer.loaded import LoadedModel
from vox2vox.infer.options import DEFAULT_OPTIONS, PredictionOptions
from vox2vox.infer.postprocessing import PostprocessConfig, check_postprocess
from vox2vox.infer.uncertainty import (
    UNCERTAINTY_CSV,
    UncertaintyScores,
    entropy_scale,
    read_uncertainty_csv,
    write_uncertainty_csv,
)
from vox2vox.model.blocks import PhaseTransposedConv3d
from vox2vox.model.checkpoint import load_checkpoint, load_weights, resolve_checkpoint
from vox2vox.model.outputs import OutputHead, OutputKind
from vox2vox.model.residual import build_generator
from vox2vox.progress import bar_hidden

Mode = Literal["auto", "whole", "sliding"]

#: The 8 combinations of flips along the three spatial axes of a ``(B, C, D, H, W)`` tensor
#: (the identity first), as nnU-Net's test-time mirroring.
FLIP_AXES: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


@dataclass(frozen=True)
class InferenceConfig:
    """How to run the network over a volume.

    mode: ``whole`` runs the padded volume in one pass; ``sliding`` runs ``window``-sized crops
        with Gaussian blending at ``overlap`` (fraction of the window, in [0, 1)); ``auto`` picks
        ``whole`` up to ``max_whole_voxels`` voxels, else ``sliding``.
    window: sliding-window size in voxels ``(D, H, W)``, rounded to the network's size multiple.
    sw_batch_size: windows run together in one forward pass (more: faster on GPUs, more memory).
    tta_flips: average the softmax over the 8 axis-flip combinations (8x the compute).
    amp: ``bf16``/``fp16`` autocast on CUDA; on a CPU ``bf16`` only (oneDNN runs bf16
        convolutions ~1.5-2x faster than float32 on CPUs with avx512_bf16 or AMX; the softmax
        stays float32, probabilities differ from float32 by about 1e-2); ``off``: float32.
    channels_last: run convolutions in the channels-last 3D memory format (``torch.
        channels_last_3d``); whether that is faster depends on the oneDNN/cuDNN build (measured in
        ``benchmarks/predict.py``).
    fast_layers: compute narrow transposed convolutions (the 4-class head) as ordinary ones
        (:class:`PhaseTransposedConv3d`): the same result to float rounding, faster on CPUs.
    """

    mode: Mode = "auto"
    window: tuple[int, int, int] = (128, 128, 128)
    overlap: float = 0.5
    # 'auto' runs the whole volume when it has at most this many voxels, else sliding windows.
    # A 256x256x192 whole pass of the paper-size generator peaks near 3.5 GiB on a CPU.
    max_whole_voxels: int = 256 * 256 * 192
    sw_batch_size: int = 1
    tta_flips: bool = False
    amp: AmpDtype = "off"
    channels_last: bool = False
    fast_layers: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise Vox2VoxError(f"overlap={self.overlap}: must be in [0, 1); e.g. 0.5")
        if self.mode not in ("auto", "whole", "sliding"):
            raise Vox2VoxError(f"mode={self.mode!r}: choose auto, whole or sliding")
        if len(self.window) != 3 or min(self.window) < 1:
            raise Vox2VoxError(f"window={self.window}: give three positive sizes, e.g. 128 128 128")
        if self.sw_batch_size < 1:
            raise Vox2VoxError(f"sw_batch_size={self.sw_batch_size}: must be >= 1")
        if self.amp not in ("off", "bf16", "fp16"):
            raise Vox2VoxError(f"amp={self.amp!r}: choose off, bf16 or fp16")


def read_model(path: str | Path, *, device: torch.device | str = "cpu") -> LoadedModel:
    """Rebuild the generator from a run directory or a ``.safetensors`` checkpoint (eval mode), or
    load a ``vox2vox export`` file (``.onnx``; ``.pt``/``.ts`` TorchScript) with the same contract
    (see :mod:`vox2vox.infer.backends`)."""
    if exported_format(path) is not None:
        generator, contract = load_exported(path, device=device)
        return LoadedModel(generator, contract.config, contract.record, Path(path))
    ckpt_path = resolve_checkpoint(path, which="best")
    ckpt = load_checkpoint(ckpt_path)
    config = Config.from_dict(ckpt.config, source=str(ckpt_path), ignore_unknown=True)
    generator = build_generator(config.generator)
    load_weights(generator, ckpt.generator, ckpt_path, what="generator")
    generator.to(device).eval()
    return LoadedModel(generator, config, ckpt.record(ckpt_path), ckpt_path)


@dataclass
class AveragedPrediction:
    """The averaged softmax of one image and what uncertainty needs from its members.

    ``probabilities``: ``(n_classes, D, H, W)`` float32, the mean over members; ``members``: how
    many softmax outputs were averaged (models x flips); ``expected_entropy``: ``(D, H, W)``, the
    mean over members of each one's normalised entropy (:mod:`vox2vox.infer.uncertainty`), only
    when asked for and there are several members, else None.
    """

    probabilities: np.ndarray
    members: int
    expected_entropy: np.ndarray | None = None


@torch.inference_mode()
def predict_probabilities(
    models: Sequence[torch.nn.Module],
    image: np.ndarray | torch.Tensor,
    *,
    config: InferenceConfig = InferenceConfig(),
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Softmax probabilities ``(n_classes, D, H, W)`` float32 for one image ``(C, D, H, W)``.

    With several models (an ensemble) and/or flips, the softmax outputs are averaged (the mean
    over models of the mean over flips). A float32 numpy image on the CPU is used without a copy.
    """
    return predict_averaged(models, image, config=config, device=device).probabilities


@torch.inference_mode()
def predict_averaged(
    models: Sequence[torch.nn.Module],
    image: np.ndarray | torch.Tensor,
    *,
    config: InferenceConfig = InferenceConfig(),
    device: torch.device | str = "cpu",
    member_entropy: bool = False,
    output_kind: OutputKind = "classes",
) -> AveragedPrediction:
    """:func:`predict_probabilities` as a :class:`AveragedPrediction`; with ``member_entropy`` it also
    sums each member's entropy as it goes (one extra volume, never all members in memory), of a
    softmax or, with ``output_kind="regions"``, of independent region sigmoids."""
    if not models:
        raise Vox2VoxError("no model to predict with; give at least one checkpoint")
    device = torch.device(device)
    if device.type == "cpu" and config.amp == "fp16":
        raise Vox2VoxError("amp='fp16' is for CUDA; on a CPU use amp='bf16' or 'off'")
    check_precision(models, config.amp)
    x = torch.as_tensor(image, dtype=torch.float32)
    if x.ndim != 4:
        raise Vox2VoxError(f"image must be (C, D, H, W); got shape {tuple(x.shape)}")
    x = x.unsqueeze(0).to(device)
    tune_cpu_allocator()
    flips = FLIP_AXES if config.tta_flips else FLIP_AXES[:1]
    n = len(models) * len(flips)
    track_entropy = member_entropy and n > 1
    total: torch.Tensor | None = None
    entropy_total: torch.Tensor | None = None
    for model in models:
        model.eval()
        model = fast_inference_model(model) if config.fast_layers else model
        for axes in flips:
            probs = _run(model, torch.flip(x, axes) if axes else x, config, device)
            if axes:
                probs = torch.flip(probs, axes)
            if track_entropy:
                entropy = _entropy_sum(probs, output_kind)
                entropy_total = entropy if entropy_total is None else entropy_total.add_(entropy)
                del entropy
            if total is None:
                # Own the memory of the running sum: the first output may be a view into the
                # padded network output, which would otherwise stay alive (and be written to).
                total = probs if probs.is_contiguous() else probs.contiguous()
            else:
                total.add_(probs)
            del probs
    assert total is not None
    if n > 1:
        total.div_(n)
    expected = None
    if entropy_total is not None:
        # The mean of the members' normalised entropies, as uncertainty.normalised_entropy scales them.
        scale = n * entropy_scale(total.shape[1], output_kind)
        expected = entropy_total.div_(scale).clamp_(0.0, 1.0)[0].cpu().numpy()
    return AveragedPrediction(total[0].cpu().numpy(), n, expected)


def _entropy_sum(probs: torch.Tensor, kind: OutputKind) -> torch.Tensor:
    """``(1, K, ...)`` -> ``(1, ...)``: -sum p log p over the softmax classes, or the summed binary
    entropies of sigmoid regions (0 log 0 = 0); :func:`entropy_scale` normalises it."""
    h = torch.special.xlogy(probs, probs)
    if kind == "regions":
        rest = 1.0 - probs
        h.add_(torch.special.xlogy(rest, rest))
    return h.sum(dim=1).neg_()


def _run(model: torch.nn.Module, x: torch.Tensor, config: InferenceConfig, device: torch.device) -> torch.Tensor:
    """One network evaluation of ``x`` ``(1, C, D, H, W)`` -> float32 ``(1, K, D, H, W)``."""
    mode = config.mode
    if mode == "auto":
        mode = "whole" if x[0, 0].numel() <= config.max_whole_voxels else "sliding"
    with autocast(device, config.amp):
        if mode == "whole":
            return _whole(model, x, channels_last=config.channels_last)
        return _sliding(model, x, config)


def size_multiple(model: torch.nn.Module) -> int:
    """Every spatial size the network takes must be a multiple of this (16 for depth 4)."""
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "size_multiple", 16))


# model -> (weight versions it was built from, the model with fast layers); weak so a model
# that goes out of use is not kept alive by this cache.
_FAST_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fast_inference_model(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with its eligible transposed convs replaced by :class:`PhaseTransposedConv3d`.

    The original is not changed (a shallow copy along the path to each replaced layer shares
    every other layer and parameter); the result is cached per model and rebuilt when the
    replaced layers' weights change (e.g. between validations during training).
    """
    names = [name for name, m in model.named_modules() if PhaseTransposedConv3d.eligible(m)]
    if not names:
        return model
    layers = [model.get_submodule(n) for n in names]
    key = tuple((m.weight._version, m.weight.data_ptr(), None if m.bias is None else m.bias._version) for m in layers)
    cached = _FAST_MODELS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    fast = model
    for name, layer in zip(names, layers, strict=True):
        fast = _replace_submodule(fast, name.split("."), PhaseTransposedConv3d(layer))
    _FAST_MODELS[model] = (key, fast)
    return fast


def _replace_submodule(root: torch.nn.Module, path: list[str], new: torch.nn.Module) -> torch.nn.Module:
    """A shallow copy of ``root`` whose submodule at ``path`` is ``new`` (``root`` unchanged)."""
    clone = copy.copy(root)
    clone._modules = dict(root._modules)  # own child table; children themselves are shared
    head, rest = path[0], path[1:]
    clone._modules[head] = new if not rest else _replace_submodule(root._modules[head], rest, new)
    return clone


def _forward(model: torch.nn.Module, x: torch.Tensor, *, channels_last: bool) -> torch.Tensor:
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    out = model(x)
    # The generator's softmax is already float32 (also under autocast); .float() is then free.
    return out.float()


def _whole(model: torch.nn.Module, x: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
    """Pad each axis up to the network's size multiple (after the data), run once, crop back."""
    m = size_multiple(model)
    spatial = x.shape[2:]
    pads = [(-s) % m for s in spatial]
    # F.pad takes (W_lo, W_hi, H_lo, H_hi, D_lo, D_hi); pad after the data with background (0,
    # the value z-scored background has), so voxel (0, 0, 0) stays where it was.
    xp = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0])) if any(pads) else x
    out = _forward(model, xp, channels_last=channels_last)
    del xp
    return out[:, :, : spatial[0], : spatial[1], : spatial[2]]


def _sliding(model: torch.nn.Module, x: torch.Tensor, config: InferenceConfig) -> torch.Tensor:
    """MONAI sliding windows with Gaussian blending; windows rounded to the size multiple."""
    # Lazy: MONAI takes seconds to import and only sliding-window prediction needs it.
    from monai.inferers import sliding_window_inference

    m = size_multiple(model)
    # Each window side: the requested size, at most the (rounded-up) volume size, a multiple of m.
    window = tuple(
        max(m, (min(w, s + (-s) % m) // m) * m) for w, s in zip(config.window, x.shape[2:], strict=True)
    )
    return sliding_window_inference(
        x,
        roi_size=window,
        sw_batch_size=config.sw_batch_size,
        predictor=lambda t: _forward(model, t, channels_last=config.channels_last),
        overlap=config.overlap,
        mode="gaussian",
        padding_mode="constant",
        cval=0.0,
    )


# ---- predicting cases on disk -------------------------------------------------------------------
@dataclass
class PredictionReport:
    """What :func:`predict_dataset` did: label maps written, probability files written, cases
    that failed (case id -> one-line reason), cases unlike the training data (case id -> what
    differs; they were still segmented); uncertainty scores when asked for."""

    written: dict[str, Path]
    failed: dict[str, str]
    probabilities: dict[str, Path] = dataclasses.field(default_factory=dict)
    #: Per-case uncertainty scores (``save_uncertainty``) and the CSV they were written to.
    uncertainty: dict[str, UncertaintyScores] = dataclasses.field(default_factory=dict)
    uncertainty_csv: Path | None = None
    #: Cases whose label map holds no foreground at all.
    empty: list[str] = dataclasses.field(default_factory=list)
    warnings: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Lines about the whole call the user must see (which route ``--fill-missing`` took, and why).
    notes: list[str] = dataclasses.field(default_factory=list)


def predict_case(
    models: Sequence[LoadedModel],
    loaded: LoadedCase,
    *,
    convention: LabelConvention,
    head: OutputHead,
    config: InferenceConfig = InferenceConfig(),
    device: torch.device | str = "cpu",
    postprocess: PostprocessConfig | None = None,
    where: str | Path = "input",
    uncertainty: bool = False,
    channel_names: Sequence[str] | None = None,
) -> CasePrediction:
    """The one per-case step of :func:`predict_dataset` and the Python API (:mod:`vox2vox.api`):
    compare the case with the training data (``warnings``; ``channel_names`` by name when given),
    run it (ensemble and flips averaged; ``loaded.image`` is then released), check the output,
    and :func:`~vox2vox.infer.case_files.finish_case` (input grid, classes through ``head``,
    post-processing; with ``uncertainty`` the entropy and spread maps)."""
    problems = ensemble.training_data_problems(models[0], loaded.record, channel_names)
    prediction = predict_averaged([m.generator for m in models], loaded.image, config=config, device=device,
                                  member_entropy=uncertainty, output_kind=head.kind)
    if not np.all(np.isfinite(prediction.probabilities)):  # argmax of NaN is class 0: all background
        raise Vox2VoxError(
            f"{where}: the model's output is NaN/Inf for this case "
            "(intensities far outside what it was trained on?); check the image and its preprocessing"
        )
    loaded.image = np.empty(0, np.float32)  # free the preprocessed image before undoing
    return finish_case(prediction.probabilities, loaded, convention=convention, head=head,
                       postprocess=postprocess or PostprocessConfig(),
                       expected_entropy=prediction.expected_entropy, members=prediction.members,
                       uncertainty=uncertainty, warnings=problems)


def inference_config(models: Sequence[LoadedModel], options: PredictionOptions,
                     device: torch.device | str) -> InferenceConfig:
    """How the network runs for ``options``: flip TTA as given, else as the first model's training
    chose; the precision for ``device`` and the models' backends (:func:`prediction_amp`)."""
    tta = ensemble.prediction_options(models, tta=options.tta)[0]
    return InferenceConfig(mode=options.mode, window=options.window, overlap=options.overlap,  # type: ignore[arg-type]
                           tta_flips=tta, amp=prediction_amp(options.amp, torch.device(device),
                                                             [m.backend for m in models]))


def postprocess_config(models: Sequence[LoadedModel], options: PredictionOptions,
                       convention: LabelConvention) -> PostprocessConfig:
    """The label map's clean-up and foreground threshold for ``options`` (training's choice where
    not given), checked against ``convention``."""
    _, largest, cut = ensemble.prediction_options(models, largest_component=options.largest_component,
                                                  threshold=options.threshold)
    post = PostprocessConfig(min_et_voxels=options.min_et_voxels, largest_component=largest,  # type: ignore[arg-type]
                             foreground_threshold=cut)
    check_postprocess(post, convention)
    return post


def predict_dataset(
    models: Sequence[LoadedModel],
    input_path: str | Path,
    output_dir: str | Path,
    options: PredictionOptions = DEFAULT_OPTIONS,
    *,
    device: torch.device | str = "cpu",
    spec: DatasetSpec | None = None,
    load_input: Callable[[CaseFiles], LoadedCase] | None = None,
) -> PredictionReport:
    """Predict every case under ``input_path`` and write ``<output_dir>/<case_id>.nii.gz``.

    ``input_path``: one image file (or DICOM folder), a dataset folder in any layout
    :func:`vox2vox.data.layouts.discover` knows, or a manifest. Each case is preprocessed as the models
    were trained, run (ensemble and flips averaged), mapped back to the input's grid and
    orientation (crop, resampling and reorientation undone) and written atomically as integer
    labels in the training data's convention (e.g. BraTS 4 for enhancing tumour), with the first
    channel's shape and affine. An existing file of the same name is replaced atomically.
    ``models`` may be checkpoints or exported files (:func:`load_model` loads both).

    ``options`` (:class:`PredictionOptions`): the network run (:func:`inference_config`), the
    clean-up of the label map (:func:`postprocess_config`, :mod:`vox2vox.infer.postprocessing`) and
    what is written. ``save_probabilities``: also write the averaged softmax on the input grid, float32:
    ``"npz"`` -> ``<case_id>.npz`` as nnU-Net's ``--save_probabilities`` does (key
    ``probabilities``, axes ``(C, Z, Y, X)`` = the reverse of the file's voxel axes, nnU-Net's
    order for SimpleITK-read images; plus ``affine`` (4x4, the file's) and ``labels`` (the value
    each channel stands for)); ``"nifti"`` -> ``<case_id>_probs.nii.gz``, 4D ``(X, Y, Z, C)``
    on the input's grid, which any viewer overlays.

    ``output_format``: the label map as ``nifti`` (above), ``dicom-seg`` (``<case_id>.dcm``, a
    DICOM SEG referencing the input series; DICOM input only, refused before any case otherwise)
    or ``seg-nrrd`` (``<case_id>.seg.nrrd`` for 3D Slicer), see :mod:`vox2vox.data.seg_formats`.
    ``uncertainty``: also write ``<case_id>_entropy.nii.gz`` (and with several members,
    TTA or an ensemble, ``<case_id>_spread.nii.gz``) and ``uncertainty.csv`` with per-case
    scores (rows of cases predicted into the folder earlier are kept), see
    :mod:`vox2vox.infer.uncertainty`.

    A case that fails (unreadable file, too little memory, ...) is reported in the result and,
    with ``progress``, on stderr; the others go on. A case whose spacing, intensities or channels
    are far from the first model's training data (:func:`vox2vox.data.profile.distribution_problems`)
    is segmented and gets one warning line on stderr (and in the result's ``warnings``).

    ``spec`` (the cases, instead of discovering ``input_path``) and ``load_input`` (a case's
    preprocessed image, instead of reading its channels) let a caller supply channels the input
    lacks: :func:`vox2vox.infer.translation.predict_with_filled` synthesises them.

    ``missing`` (``predict --missing``) names model channels no case has, and an empty manifest
    cell one a case lacks: such cases run with that channel absent (0, as channel dropout trained
    the model, :func:`vox2vox.data.loading.load_case_without`); a model trained without channel
    dropout refuses them before any case (:func:`vox2vox.infer.ensemble.with_absent_channels`).
    """
    save_probabilities, output_format, progress = options.save_probabilities, options.output_format, options.progress
    if save_probabilities not in (None, "npz", "nifti"):
        raise Vox2VoxError(f"save_probabilities={save_probabilities!r}: choose npz or nifti")
    check_output_format(output_format)
    convention, head = ensemble.check_ensemble(models)
    config = inference_config(models, options, device)
    check_precision([m.generator for m in models], config.amp)
    first = models[0]
    spec = spec if spec is not None else ensemble.discover_like_training(first, input_path, options.layout,
                                                                         options.missing, options.channel)
    spec = ensemble.with_absent_channels(models, spec, options.missing, input_path)
    ensemble.check_channels(first, spec.channel_names, input_path)
    if output_format == "dicom-seg":
        check_dicom_seg_inputs([(c.case_id, next(iter(c.channels.values()))) for c in spec.cases])
    segments = segments_of(convention)
    output_dir = Path(output_dir)
    # Scores of cases predicted into this folder before stay (unless predicted again); read now so
    # a damaged table stops the run before any work.
    scores_path = output_dir / UNCERTAINTY_CSV
    earlier = read_uncertainty_csv(scores_path) if options.uncertainty and scores_path.is_file() else {}
    # Checked against the convention once, not once per case.
    postprocess = postprocess_config(models, options, convention)
    prep = dataclasses.replace(first.config.preprocess, cache_dir=None)
    # A single image's one channel is always called "image": only named channels are compared by name.
    names = spec.channel_names if spec.layout != "single" else None
    report = PredictionReport({}, {})
    for case in tqdm(spec.cases, desc="predicting", unit="case", disable=bar_hidden(progress), file=sys.stderr):
        try:
            first_channel = next(iter(case.channels.values()))
            # The series' headers first: a SEG that cannot reference them costs no prediction.
            source = read_dicom_source(first_channel) if output_format == "dicom-seg" else None
            if load_input is not None:
                loaded = load_input(case)
            elif case.absent:
                loaded = load_case_without(case, spec.channel_names, case.absent, prep=prep)
            else:
                loaded = load_case(CaseFiles(case.case_id, case.channels, None, case.mask), convention=None, prep=prep)
            result = predict_case(models, loaded, convention=convention, head=head, config=config, device=device,
                                  postprocess=postprocess, where=first_channel, uncertainty=options.uncertainty,
                                  channel_names=names)
            if result.warnings:
                report.warnings[case.case_id] = "; ".join(result.warnings)
                tqdm.write(f"warning: {case.case_id}: unlike the model's training data: {'; '.join(result.warnings)}",
                           file=sys.stderr)
            written = write_case(result, output_dir, convention=convention, head=head,
                                 save_probabilities=save_probabilities, output_format=output_format,
                                 segments=segments, dicom_source=source)
            del result
            report.written[case.case_id] = written.labels
            if written.probabilities is not None:
                report.probabilities[case.case_id] = written.probabilities
            if written.uncertainty is not None:
                report.uncertainty[case.case_id] = written.uncertainty
            if written.empty:
                report.empty.append(case.case_id)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # one bad case must not stop the others (issue 4)
            reason = str(err) if isinstance(err, Vox2VoxError) else f"{type(err).__name__}: {err}"
            reason = " | ".join(part.strip() for part in reason.splitlines() if part.strip())  # one line
            report.failed[case.case_id] = reason
            if progress:
                tqdm.write(f"{case.case_id}: failed: {reason}", file=sys.stderr)
    if report.uncertainty:
        report.uncertainty_csv = write_uncertainty_csv(scores_path, {**earlier, **report.uncertainty})
    if report.written:
        write_prediction_record(output_dir, convention)  # evaluate scores this label set's regions
    return report

