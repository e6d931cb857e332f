"""``vox2vox export``: a checkpoint's generator as one ONNX or TorchScript file with its contract.

The file holds the generator with its output activation (``(B, C, D, H, W)`` float32 image in,
``(B, K, D, H, W)`` out; batch and spatial axes dynamic): a segmentation's ``probabilities``
(softmax, or a sigmoid per region) or a translation's ``synthesis`` (its linear or tanh head),
and, as metadata, the input contract of :mod:`vox2vox.infer.contract`. Before the file is
written, the export is run on an input of another size and batch than the one it was traced
with and compared with the PyTorch generator (:func:`verify_tolerance`), so a file that exists
is one that reproduces its checkpoint.

What is exported is the plain generator, not the copy prediction runs (``fast_inference_model``
swaps the few-channel transposed-convolution head for an equivalent ordinary convolution plus
an interleave of strided slice writes, which is a speed trick for oneDNN, equal to float
rounding, and would export as a scatter of slice assignments).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vox2vox.atomic import atomic_write_bytes, ensure_folder
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.backends import (
    ONNX_EXTRA_HINT,
    SUFFIXES,
    TORCHSCRIPT_EXTRA,
    ExportFormat,
    exported_format,
)
from vox2vox.infer.contract import (
    INPUT_NAME,
    METADATA_KEY,
    build_contract,
    dump_contract,
)
from vox2vox.infer.inference import read_model
from vox2vox.model import blocks
from vox2vox.model.checkpoint import JsonObject, resolve_checkpoint

FORMATS: tuple[ExportFormat, ...] = ("onnx", "torchscript")
#: ONNX opset: 17 has every operator the generators use (GroupNormalization's opset-18 form had
#: a per-group scale that opset 21 redefined; the exporter lowers GroupNorm to InstanceNormalization
#: + affine below 18, which every ONNX Runtime runs).
ONNX_OPSET = 17
#: Largest difference in any probability between the exported model and PyTorch at export time
#: (for a translation's unbounded output: per unit of its largest magnitude, see verify_tolerance).
VERIFY_TOLERANCE = 1e-4
#: A single ONNX file is one protobuf message, which cannot exceed 2 GiB.
ONNX_MAX_BYTES = 2**31 - 2**24


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: ExportFormat
    contract: JsonObject
    parameters: int
    max_difference: float


def export_model(model: str | Path, out: str | Path, *, fmt: str | None = None) -> ExportResult:
    """Export the generator of ``model`` (a run folder or ``.safetensors`` checkpoint) to ``out``.

    ``fmt``: ``onnx`` or ``torchscript`` (default: from ``out``'s suffix, ``.onnx`` / ``.pt``).
    Refuses, before any work, an unknown format, a suffix that does not match it (``predict``
    tells model files apart by suffix), an unwritable ``out`` and missing ONNX packages.
    """
    out = Path(out)
    fmt = _check_format(fmt, out)
    if exported_format(model) is not None:
        raise Vox2VoxError(f"{model}: already an exported model; export a run folder or .safetensors checkpoint")
    ckpt_path = resolve_checkpoint(model, which="best")
    _check_writable(out)
    if fmt == "onnx":
        _require_onnx(out)
    loaded = read_model(ckpt_path)
    generator = loaded.generator.eval()
    contract = build_contract(loaded.config, loaded.record, backend=fmt, source=ckpt_path,
                              sha256=file_sha256(ckpt_path), opset=ONNX_OPSET if fmt == "onnx" else None)
    if loaded.record.versions is not None:  # the libraries it was trained with, for the export's model card
        contract["source"]["versions"] = dict(loaded.record.versions)
    data, difference = (_onnx_bytes if fmt == "onnx" else _torchscript_bytes)(generator, contract, ckpt_path)
    atomic_write_bytes(out, data)
    n_params = sum(p.numel() for p in generator.parameters())
    return ExportResult(out, fmt, contract, n_params, difference)


def _check_format(fmt: str | None, out: Path) -> ExportFormat:
    by_suffix = SUFFIXES.get(out.suffix.lower())
    if fmt is None:
        if by_suffix is None:
            raise Vox2VoxError(f"{out}: cannot tell the format from the name; give --format onnx or torchscript "
                               "(or name the file .onnx / .pt)")
        return by_suffix
    if fmt not in FORMATS:
        raise Vox2VoxError(f"--format {fmt}: unknown export format; choose onnx or torchscript")
    if by_suffix != fmt:
        wanted = ".onnx" if fmt == "onnx" else ".pt (or .ts)"
        raise Vox2VoxError(f"{out}: --format {fmt} writes files named {wanted}; `vox2vox predict` tells "
                           "model files apart by their suffix")
    return fmt  # type: ignore[return-value]


def _check_writable(out: Path) -> None:
    if out.is_dir():
        raise Vox2VoxError(f"{out}: is a folder; give the file to write, e.g. {out / 'model.onnx'}")
    folder = ensure_folder(out.parent if str(out.parent) else Path("."))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise Vox2VoxError(f"{out}: cannot write in {folder} (permission denied); choose a writable folder")


def _require_onnx(out: Path) -> None:
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            # Lazy: the onnx extra is optional; exporting to ONNX needs onnx (to write the metadata)
            # and ONNX Runtime (to check the export against PyTorch).
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise Vox2VoxError(f"{out}: ONNX export needs {' and '.join(missing)}; install the onnx extra "
                           f"({ONNX_EXTRA_HINT})")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Graph(nn.Module):
    """``forward(image) -> output``: one named input and one output, as the exported graph has them."""

    def __init__(self, generator: nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.generator(image)


class TwoPassInstanceNorm(nn.Module):
    """Instance normalisation (per sample and channel, over D, H, W) spelled out for ONNX.

    The exporter turns ``InstanceNorm3d`` and the paper generator's ``GroupNorm(C, C)`` into ONNX
    ``InstanceNormalization``, whose ONNX Runtime CPU kernel is not accurate over whole volumes:
    on a 4x240x240x160 input of mean 5 and std 3 it was 1.9e-3 off a float64 reference (PyTorch:
    7e-7), which moved the residual generator's probabilities by 1.6e-4 on a BraTS-size case.
    Here the mean is a mean of per-slice means (two-level sums), and the variance is that of the
    centred values (two passes), which ONNX Runtime computes as accurately as PyTorch does.
    """

    def __init__(self, norm: nn.GroupNorm | nn.InstanceNorm3d):
        super().__init__()
        self.eps = float(norm.eps)
        self.weight = None if norm.weight is None else nn.Parameter(norm.weight.detach().clone())
        self.bias = None if norm.bias is None else nn.Parameter(norm.bias.detach().clone())

    @staticmethod
    def replaces(module: nn.Module) -> bool:
        if isinstance(module, nn.GroupNorm):
            return module.num_groups == module.num_channels
        return isinstance(module, nn.InstanceNorm3d) and not module.track_running_stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(3, 4), keepdim=True).mean(dim=2, keepdim=True)
        centred = x - mean
        var = (centred * centred).mean(dim=(3, 4), keepdim=True).mean(dim=2, keepdim=True)
        y = centred / torch.sqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(1, -1, 1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1, 1)
        return y


def _portable(generator: nn.Module) -> nn.Module:
    """A copy computing the same function in a form ONNX Runtime runs well.

    The CPU layout rule (:class:`vox2vox.model.blocks.Conv3d`: few-channel layers run
    channels-last) is a speed choice for oneDNN that the ONNX exporter cannot express (it
    refuses ``memory_format``); ONNX Runtime picks its own layouts. The subclasses add no state,
    so the copy's layers become the plain torch classes they extend. Instance norms become
    :class:`TwoPassInstanceNorm` (accuracy, see there).
    """
    plain = copy.deepcopy(generator)
    for module in plain.modules():
        if type(module) is blocks.Conv3d:
            module.__class__ = nn.Conv3d
        elif type(module) is blocks.ConvTranspose3d:
            module.__class__ = nn.ConvTranspose3d
    for name, module in list(plain.named_modules()):
        if name and TwoPassInstanceNorm.replaces(module):
            parent_name, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent_name) if parent_name else plain, child, TwoPassInstanceNorm(module))
    if getattr(plain, "_channels_last", False):  # the residual generator converts its input
        plain._channels_last = False
        plain.to(memory_format=torch.contiguous_format)
    return plain


def _examples(generator: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A trace input and a check input of another batch and size (both valid for the network)."""
    cfg = generator.config
    m = cfg.size_multiple
    rng = torch.Generator().manual_seed(0)
    trace = torch.randn((1, cfg.in_channels, 2 * m, 2 * m, 2 * m), generator=rng)
    check = torch.randn((2, cfg.in_channels, 2 * m, 3 * m, m), generator=rng)
    return trace, check


@contextlib.contextmanager
def _quiet_trace() -> Iterator[None]:
    """Tracing runs the generators' Python input-size checks once on the example (TracerWarnings
    say they will not be re-run): the backends run those checks themselves before every call.
    The exporter's notes (its own deprecation, constant folding, instance norm's train flag,
    which is right for instance norm without running statistics) are not the user's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*(legacy TorchScript-based ONNX export|Constant folding|"
                                "instance_norm|will be removed|`torch.jit.[a-z_]+` is deprecated).*")
        yield


def _onnx_bytes(generator: nn.Module, contract: JsonObject, source: Path) -> tuple[bytes, float]:
    # Lazy: the onnx extra is optional (checked by _require_onnx before this runs).
    import onnx
    import onnxruntime as ort

    n_bytes = sum(p.numel() * p.element_size() for p in generator.parameters())
    if n_bytes > ONNX_MAX_BYTES:
        raise Vox2VoxError(f"{source}: the generator's weights ({n_bytes / 2**30:.1f} GiB) exceed what one ONNX "
                           "file holds (2 GiB); export it with --format torchscript")
    trace, check = _examples(generator)
    axes = {0: "batch", 2: "D", 3: "H", 4: "W"}
    output = contract["output"]["name"]
    buffer = io.BytesIO()
    with _quiet_trace(), torch.no_grad():
        # The TorchScript-based exporter (dynamo=False), not torch 2.13's default torch.export one:
        # torch.export turns the generators' input-size checks into guards on the spatial sizes
        # (`D % 16 == 0`) and specialises the batch to the example's, so it refuses the dynamic
        # axes outright (and would need onnxscript too); tracing records the 3D convolutions,
        # norms and concatenations with symbolic shapes, and the graph it gives runs every size
        # and batch (checked below on an input unlike the trace's).
        torch.onnx.export(_Graph(_portable(generator)), (trace,), buffer, dynamo=False,
                          opset_version=ONNX_OPSET, input_names=[INPUT_NAME], output_names=[output],
                          dynamic_axes={INPUT_NAME: axes, output: axes}, do_constant_folding=True)
    proto = onnx.load_from_string(buffer.getvalue())
    del buffer
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, dump_contract(contract)
    proto.producer_name, proto.producer_version = "vox2vox", contract["vox2vox_version"]
    gen = contract["generator"]
    what = (f"{gen['output']} probabilities" if contract["task"]["kind"] == "segment"
            else f"synthesised {', '.join(contract['task']['target'])} ({gen['output']} head)")
    proto.doc_string = (f"vox2vox {gen['arch']} generator from {contract['source']['file']} "
                        f"(sha256 {contract['source']['sha256'][:12]}): {INPUT_NAME} (B, {gen['in_channels']}, "
                        f"D, H, W) -> {output}: {what} (B, {gen['n_classes']}, D, H, W); "
                        f"the input contract is the '{METADATA_KEY}' metadata entry")
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    del proto
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {INPUT_NAME: check.numpy()})[0])
    return data, _verify(generator, check, got, source)


def _torchscript_bytes(generator: nn.Module, contract: JsonObject, source: Path) -> tuple[bytes, float]:
    trace, check = _examples(generator)
    with _quiet_trace(), torch.no_grad():
        # Traced, not scripted: the generators' forward has Python-only input checks. The trace
        # keeps the CPU layout rule, so the TorchScript model runs as fast as the PyTorch one here.
        # (torch 2.13 marks torch.jit deprecated in favour of torch.export, whose programs do
        # not take dynamic spatial sizes for these networks, see _onnx_bytes: TorchScript stays
        # the PyTorch-native format that does.)
        traced = torch.jit.trace(_Graph(generator), (trace,), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_EXTRA: dump_contract(contract)})
        data = buffer.getvalue()
        got = torch.jit.load(io.BytesIO(data))(check)
    return data, _verify(generator, check, got, source)


def verify_tolerance(want: torch.Tensor, kind: str) -> float:
    """The largest difference an export may show against PyTorch on ``want`` (PyTorch's output).

    Probabilities and a tanh head live in [0, 1] / [-1, 1]: :data:`VERIFY_TOLERANCE` absolute. A
    linear head's z-scored output has no fixed range, and float32 rounding grows with the values
    (and with the sums of the convolutions before them), so the bound scales with the output's
    largest magnitude, never below the absolute one: 1e-4 of the output's range is far below any
    intensity difference a synthesis is judged by.
    """
    if kind != "linear":
        return VERIFY_TOLERANCE
    return VERIFY_TOLERANCE * max(1.0, float(want.float().abs().max()))


def _verify(generator: nn.Module, check: torch.Tensor, got: torch.Tensor, source: Path) -> float:
    with torch.no_grad():
        want = generator(check)
    if got.shape != want.shape:
        raise Vox2VoxError(f"{source}: the exported model gives shape {tuple(got.shape)} where PyTorch gives "
                           f"{tuple(want.shape)} on a {tuple(check.shape)} input; nothing was written")
    difference = float((got.float() - want.float()).abs().max())
    kind = generator.config.output
    tolerance = verify_tolerance(want, kind)
    if not difference <= tolerance:
        what = "probabilities" if kind in ("classes", "regions") else "synthesised values"
        raise Vox2VoxError(f"{source}: the exported model's {what} differ from PyTorch's by {difference:.2g} "
                           f"(> {tolerance:.2g}) on a {tuple(check.shape)} input; nothing was written")
    return difference
