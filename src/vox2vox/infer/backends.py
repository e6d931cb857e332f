"""Run an exported generator (ONNX Runtime or TorchScript) where prediction runs a PyTorch one.

A backend here is an ``nn.Module`` whose ``forward`` takes a float32 ``(B, C, D, H, W)`` tensor and
returns the generator's output ``(B, K, D, H, W)`` float32 on the same device (a segmentation's
probabilities: softmax or region sigmoids; a translation's synthesised targets), and whose
``config`` is the :class:`GeneratorConfig` it was exported from (``size_multiple``, channel and
class counts). That is all :func:`vox2vox.infer.inference.predict_probabilities` asks of the
PyTorch generator, so the padding, sliding windows, flips, ensembles, post-processing and the
writing of label maps (or synthesised volumes) are one code path for every kind of model file;
only loading differs.

Loading checks the file's vox2vox metadata (:mod:`vox2vox.infer.contract`) before anything runs:
a TorchScript archive is a zip, and its ``extra/vox2vox.json`` is read with :mod:`zipfile`, so a
file without it (a ``torch.save`` pickle, say) is refused without being deserialised. A
TorchScript file holds a TorchScript program (not Python), which ``torch.jit.load`` runs: load
only files you trust. ONNX files hold a graph of operators and no code.
"""

from __future__ import annotations

import abc
import sys
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from vox2vox.device import AmpDtype, resolve_prediction_amp
from vox2vox.errors import Vox2VoxError
from vox2vox.infer.contract import INPUT_NAME, METADATA_KEY, Contract, output_name, parse_contract
from vox2vox.model.checkpoint import JsonObject
from vox2vox.model.generator import Generator, GeneratorConfig

ExportFormat = Literal["onnx", "torchscript"]
#: File suffixes of exported models (``predict --model`` tells them from checkpoints by these).
SUFFIXES: dict[str, ExportFormat] = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}
TORCHSCRIPT_EXTRA = f"{METADATA_KEY}.json"
ONNX_EXTRA_HINT = "pip install 'vox2vox[onnx]'"


def exported_format(path: str | Path) -> ExportFormat | None:
    """``onnx`` / ``torchscript`` for a file named like an export, else None (a checkpoint or run)."""
    path = Path(path)
    return SUFFIXES.get(path.suffix.lower()) if not path.is_dir() else None


class ExportedGenerator(nn.Module, metaclass=abc.ABCMeta):
    """The common part of the backends: the config, the input checks, no parameters of its own."""

    backend: str = ""

    def __init__(self, config: GeneratorConfig, path: Path):
        super().__init__()
        self.config = config
        self.path = path
        self.contract: JsonObject = {}  # the file's metadata document (vox2vox.infer.contract)

    def check_input(self, x: torch.Tensor) -> None:
        # The PyTorch generator's own rules and messages (an exported graph checks nothing itself).
        Generator.check_input(self, x)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            # Autocast does not reach an exported graph; half precision would only lose accuracy.
            x = x.float()
        self.check_input(x)
        return self.run(x)

    @abc.abstractmethod
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The generator's output for a float32 ``(B, C, D, H, W)`` input, from the exported graph."""


class OnnxRuntimeGenerator(ExportedGenerator):
    """An ONNX file run by ONNX Runtime: the CPU provider, or CUDA's when asked for and available."""

    backend = "onnx"

    def __init__(self, config: GeneratorConfig, path: Path, session: Any):
        super().__init__(config, path)
        self.session = session

    def run(self, x: torch.Tensor) -> torch.Tensor:
        # ONNX Runtime takes C-contiguous host arrays (a channels-last tensor is not one).
        feed = {INPUT_NAME: np.ascontiguousarray(x.detach().cpu().numpy())}
        try:
            out = self.session.run(None, feed)[0]
        except Exception as err:  # ORT raises its own exception types, one per failure kind
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise Vox2VoxError(f"{self.path}: ONNX Runtime failed on input {tuple(x.shape)} ({first})") from err
        return torch.from_numpy(out).to(x.device)


class TorchScriptGenerator(ExportedGenerator):
    """A traced TorchScript generator (its input-size checks ran at trace time; ours run here)."""

    backend = "torchscript"

    def __init__(self, config: GeneratorConfig, path: Path, module: torch.jit.ScriptModule):
        super().__init__(config, path)
        self.module = module

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x).float()


def prediction_amp(choice: str, device: torch.device, backends: Sequence[str]) -> AmpDtype:
    """``--amp`` for these models: ``auto`` is off when an ONNX model is among them (autocast does
    not reach ONNX Runtime); otherwise :func:`vox2vox.device.resolve_prediction_amp`."""
    if choice == "auto" and "onnx" in backends:
        return "off"
    return resolve_prediction_amp(choice, device)


def check_precision(models: Sequence[nn.Module], amp: str) -> None:
    """Autocast does not reach ONNX Runtime: refuse mixed precision for an ONNX model, not ignore it."""
    onnx = [m for m in models if getattr(m, "backend", "") == "onnx"]
    if onnx and amp != "off":
        raise Vox2VoxError(f"{onnx[0].path}: an ONNX model runs in float32; predict it with --amp off")


def _existing_export(path: Path) -> ExportFormat:
    """The format of an exported model file that exists; one line for anything else."""
    kind = exported_format(path)
    if kind is None:
        raise Vox2VoxError(f"{path}: not an exported model (expected .onnx, or .pt/.ts for TorchScript)")
    if not path.is_file():
        raise Vox2VoxError(f"{path}: model file not found")
    return kind


def load_exported(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[nn.Module, Contract]:
    """An exported model file -> (backend module, its validated :class:`Contract`: config, the
    checkpoint's record, the whole metadata document). Refuses files without valid vox2vox metadata."""
    path = Path(path)
    kind = _existing_export(path)
    device = torch.device(device)
    if kind == "onnx":
        return _load_onnx(path, device)
    return _load_torchscript(path, device)


def _load_onnx(path: Path, device: torch.device) -> tuple[nn.Module, Contract]:
    try:
        # Lazy: ONNX Runtime is an optional extra, needed only for .onnx models.
        import onnxruntime as ort
    except ImportError as err:
        raise Vox2VoxError(f"{path}: running ONNX models needs ONNX Runtime; install the onnx extra "
                           f"({ONNX_EXTRA_HINT})") from err
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        else:  # the CPU gives the same result, slower: say so rather than refuse a GPU machine
            print(f"note: {path}: this ONNX Runtime has no CUDA provider, so the model runs on the CPU "
                  "(pip install onnxruntime-gpu for the GPU)", file=sys.stderr)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise
    threads = torch.get_num_threads()
    options.intra_op_num_threads = threads  # the thread count torch uses (OMP_NUM_THREADS), not all cores
    options.inter_op_num_threads = 1
    # ONNX Runtime's CPU memory arena stays on: alone it costs memory (a BraTS-size pass of the
    # residual generator: 1.6 GiB with it, 1.16 without), but inside prediction, where
    # device.tune_cpu_allocator makes glibc keep freed memory, the arena's own reuse peaked
    # lower (2.31 against 2.51-2.58 GiB) and ran as fast (ONNX Runtime 1.32, this 2-core CPU).
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as err:  # ORT's Fail/InvalidProtobuf/... share no public base class
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise Vox2VoxError(f"{path}: not a readable ONNX model ({first[:200]})") from err
    meta = session.get_modelmeta().custom_metadata_map
    contract = parse_contract(meta.get(METADATA_KEY), path, backend="onnx")
    _check_graph_io(path, [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()],
                    output_name(contract.config.task.kind))
    backend = OnnxRuntimeGenerator(contract.config.generator, path, session)
    backend.contract = contract.doc
    return backend, contract


def _check_graph_io(path: Path, inputs: list[str], outputs: list[str], output: str) -> None:
    # The names say what flows: a segmentation's "probabilities" or a translation's "synthesis".
    for what, names, wanted in (("inputs", inputs, INPUT_NAME), ("outputs", outputs, output)):
        if names != [wanted]:
            raise Vox2VoxError(f"{path}: the ONNX graph's {what} are {names}, its vox2vox metadata expects "
                               f"[{wanted!r}]; export the model again")


def read_exported_contract(path: str | Path) -> Contract:
    """An exported file's validated metadata document and config, without running or
    deserialising the model (``vox2vox info``): the ONNX file's ``metadata_props`` through the
    ``onnx`` package (the file is parsed as protobuf data, nothing executes), a TorchScript
    archive's JSON through :mod:`zipfile`."""
    path = Path(path)
    kind = _existing_export(path)
    if kind == "torchscript":
        return parse_contract(read_torchscript_metadata(path), path, backend="torchscript")
    try:
        # Lazy: the onnx package is the optional onnx extra, needed only for .onnx files.
        import onnx
    except ImportError as err:
        raise Vox2VoxError(f"{path}: reading ONNX models needs the onnx package; install the onnx extra "
                           f"({ONNX_EXTRA_HINT})") from err
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and onnx's own errors share no public base
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise Vox2VoxError(f"{path}: not a readable ONNX model ({first[:200]})") from err
    meta = {entry.key: entry.value for entry in proto.metadata_props}
    contract = parse_contract(meta.get(METADATA_KEY), path, backend="onnx")
    _check_graph_io(path, [i.name for i in proto.graph.input], [o.name for o in proto.graph.output],
                    output_name(contract.config.task.kind))
    return contract


def read_torchscript_metadata(path: Path) -> str | None:
    """The vox2vox JSON inside a TorchScript archive (``<archive>/extra/vox2vox.json``), read
    with :mod:`zipfile` so that nothing in the file is deserialised or run; None if absent.

    A ``torch.save`` file under a TorchScript name (a raw pickle, or a zip of pickles without
    TorchScript code) is refused as the pickle it is.
    """
    pickled = Vox2VoxError(f"{path}: refusing a pickle-based file (torch.save output could run code when "
                           "loaded); vox2vox loads .safetensors checkpoints and the .onnx / TorchScript "
                           "files `vox2vox export` writes")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            found = [n for n in names if n.split("/")[-2:] == ["extra", TORCHSCRIPT_EXTRA]]
            if len(found) == 1:
                return archive.read(found[0]).decode("utf-8")
            if not any("/code/" in n for n in names):
                raise pickled  # a zip of pickles and no TorchScript program: torch.save's format
            return None
    except zipfile.BadZipFile as err:
        with path.open("rb") as f:
            if f.read(1) == b"\x80":  # the pickle protocol marker
                raise pickled from err
        raise Vox2VoxError(f"{path}: not a TorchScript archive ({err}); TorchScript models are written by "
                           "`vox2vox export --format torchscript`") from err
    except (OSError, UnicodeDecodeError) as err:
        raise Vox2VoxError(f"{path}: unreadable TorchScript archive ({err}); export the model again") from err


def _load_torchscript(path: Path, device: torch.device) -> tuple[nn.Module, Contract]:
    contract = parse_contract(read_torchscript_metadata(path), path, backend="torchscript")
    try:
        with warnings.catch_warnings():  # torch.jit's deprecation notice is not the user's business
            warnings.filterwarnings("ignore", message=".*`torch.jit.load` is deprecated.*")
            module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise Vox2VoxError(f"{path}: cannot load the TorchScript program ({first[:200]}); export the model again") from err
    module.eval()
    backend = TorchScriptGenerator(contract.config.generator, path, module)
    backend.contract = contract.doc
    return backend, contract
