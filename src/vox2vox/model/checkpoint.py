"""One safe checkpoint format: a single ``.safetensors`` file with JSON metadata, written atomically.

Tensors (generator and discriminator weights, Adam moments) are stored as safetensors, which
holds raw arrays and cannot run code when loaded. Everything else (the resolved config, epoch,
step, best score, optimizer hyper-parameters, library versions) is one JSON document stored in
the safetensors header under the key ``vox2vox``. One file means one atomic rename: a kill at
any moment leaves the previous checkpoint intact. A checkpoint alone rebuilds its generator.

Pickle-based files (``torch.save`` output, ``.pt``/``.pth``/``.ckpt``) are refused before any
byte of them is deserialised.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import nibabel
import numpy as np
import safetensors
import torch
from safetensors.torch import load_file, save

from vox2vox.atomic import atomic_write_bytes
from vox2vox.config import Config
from vox2vox.device import unwrap
from vox2vox.errors import Vox2VoxError
from vox2vox.model.builtin import find_builtin, is_builtin
from vox2vox.model.record import LoopCounters, MetadataReader, ModelInfo, ModelRecord
from vox2vox.model.record import SourceModel as SourceModel  # re-exported: the fine-tuning source
from vox2vox.rundir import RunDir

FORMAT = "vox2vox-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "vox2vox"


#: A JSON object as the file stores it: the format layer only (code reads ``state`` through
#: :class:`vox2vox.model.record.ModelRecord`, the config through :class:`Config`).
JsonObject = dict[str, Any]


@dataclass
class Checkpoint:
    """What a checkpoint holds, as the file's JSON and CPU tensors. ``state`` is the JSON of a
    :class:`ModelRecord` (:attr:`record`); hand-made and malformed files are written through it."""

    config: JsonObject
    generator: dict[str, torch.Tensor]
    discriminator: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizers: dict[str, JsonObject] = field(default_factory=dict)
    state: JsonObject = field(default_factory=dict)

    def record(self, path: str | Path) -> ModelRecord:
        """The typed ``state`` (``path``: the file, for messages)."""
        return ModelRecord.from_json(self.state, path)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks (checkpoints can be hundreds of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ResumableState(Protocol):
    """What a resumable checkpoint saves and restores (``vox2vox.train.state.TrainState``)."""

    generator: torch.nn.Module
    discriminator: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    epoch: int
    step: int
    best_score: float
    best_epoch: int
    batches_done: int
    partial_sums: dict[str, float]
    rng_state: torch.Tensor | None
    seconds: float
    val_mark: int
    last_score: float | None


def training_checkpoint(state: ResumableState, config: JsonObject, info: ModelInfo | None) -> Checkpoint:
    """A resumable checkpoint of ``state``: both networks' weights, Adam moments, the grad scaler,
    the loop's counters (epoch, step, best score, a Ctrl-C'd epoch's progress and RNG state), and
    ``info`` (what prediction needs: channels, layout, label convention)."""
    counters = LoopCounters(
        epoch=state.epoch,
        step=state.step,
        best_score=state.best_score if math.isfinite(state.best_score) else None,
        best_epoch=state.best_epoch,
        scaler=state.scaler.state_dict() if state.scaler.is_enabled() else None,
        batches_done=state.batches_done,
        partial_sums=state.partial_sums,
        seconds=state.seconds,
        val_mark=state.val_mark,
        last_score=state.last_score,
        rng_state=base64.b64encode(state.rng_state.numpy().tobytes()).decode() if state.rng_state is not None else None,
    )
    return Checkpoint(
        config=config,
        generator=unwrap(state.generator).state_dict(),
        discriminator=unwrap(state.discriminator).state_dict(),
        optimizers={"generator": state.opt_g.state_dict(), "discriminator": state.opt_d.state_dict()},
        state=ModelRecord.of(counters, info).to_json(),
    )


def restore_training_state(state: ResumableState, ckpt: Checkpoint, path: str | Path) -> None:
    """Load what :func:`training_checkpoint` saved into ``state`` (optimiser moments onto its device).

    Weights, optimiser state or counters that do not fit the run are one :class:`Vox2VoxError`
    naming ``path`` (the checkpoint file).
    """
    path = Path(path)
    counters = ckpt.record(path).counters
    load_weights(unwrap(state.generator), ckpt.generator, path, what="generator")
    load_weights(unwrap(state.discriminator), ckpt.discriminator, path, what="discriminator")
    try:
        state.opt_g.load_state_dict(_to_device(ckpt.optimizers["generator"], state.device))
        state.opt_d.load_state_dict(_to_device(ckpt.optimizers["discriminator"], state.device))
        if counters.scaler and state.scaler.is_enabled():
            state.scaler.load_state_dict(counters.scaler)
        if counters.epoch is None or counters.step is None:
            raise KeyError("epoch" if counters.epoch is None else "step")
        state.epoch, state.step = counters.epoch, counters.step
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise Vox2VoxError(f"{path}: optimiser state or counters do not fit this run ({first}); "
                           "resume with the run's own checkpoint") from err
    state.best_score = -math.inf if counters.best_score is None else float(counters.best_score)
    state.best_epoch = -1 if counters.best_epoch is None else counters.best_epoch
    state.batches_done = counters.batches_done or 0
    state.partial_sums = dict(counters.partial_sums or {})
    state.seconds = float(counters.seconds or 0.0)
    state.val_mark = counters.val_mark or 0
    state.last_score = None if counters.last_score is None else float(counters.last_score)
    rng = counters.rng_state
    state.rng_state = torch.frombuffer(bytearray(base64.b64decode(rng)), dtype=torch.uint8) if rng else None


def _to_device(osd: JsonObject, device: torch.device) -> JsonObject:
    state = {k: {n: (v.to(device) if torch.is_tensor(v) and n != "step" else v) for n, v in s.items()}
             for k, s in osd["state"].items()}
    return {"state": state, "param_groups": osd["param_groups"]}


def software_versions() -> dict[str, str]:
    import monai  # lazy: MONAI takes seconds to import and only its version string is needed here

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "monai": monai.__version__,
        "nibabel": nibabel.__version__,
        "safetensors": safetensors.__version__,
    }


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` atomically to ``path`` (a ``.safetensors`` file)."""
    tensors: dict[str, torch.Tensor] = {}
    for prefix, sd in (("generator.", ckpt.generator), ("discriminator.", ckpt.discriminator)):
        for name, t in sd.items():
            tensors[prefix + name] = t.detach().to("cpu").contiguous()
    optim_meta: JsonObject = {}
    for opt_name, osd in ckpt.optimizers.items():
        optim_meta[opt_name] = {"param_groups": osd["param_groups"], "state": {}}
        for idx, pstate in osd["state"].items():
            entry: JsonObject = {}
            for key, value in pstate.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{opt_name}.{idx}.{key}"] = value.detach().to("cpu").contiguous()
                    entry[key] = "tensor"
                else:
                    entry[key] = value
            optim_meta[opt_name]["state"][str(idx)] = entry
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": ckpt.config,
        "state": ckpt.state,
        "optimizers": optim_meta,
        "versions": software_versions(),
    }
    data = save(tensors, metadata={METADATA_KEY: json.dumps(meta)})
    atomic_write_bytes(path, data)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; refuse anything else."""
    path = Path(path)
    if path.is_dir():
        path = resolve_checkpoint(path)
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device=str(map_location))
    except (OSError, safetensors.SafetensorError, ValueError) as err:
        raise Vox2VoxError(f"{path}: not a readable safetensors checkpoint ({err})") from err
    check_finite_tensors(tensors, path)
    generator = {k[len("generator.") :]: v for k, v in tensors.items() if k.startswith("generator.")}
    discriminator = {k[len("discriminator.") :]: v for k, v in tensors.items() if k.startswith("discriminator.")}
    optimizers: dict[str, JsonObject] = {}
    for opt_name, om in meta.get("optimizers", {}).items():
        state = {}
        for idx, entry in om["state"].items():
            state[int(idx)] = {}
            for key, value in entry.items():
                name = f"optim.{opt_name}.{idx}.{key}"
                if value == "tensor" and name not in tensors:
                    raise Vox2VoxError(f"{path}: malformed checkpoint: optimizer tensor {name!r} is missing")
                state[int(idx)][key] = tensors[name] if value == "tensor" else value
        optimizers[opt_name] = {"param_groups": om["param_groups"], "state": state}
    state = dict(meta.get("state", {}))
    state["versions"] = meta.get("versions", {})
    return Checkpoint(config=meta["config"], generator=generator, discriminator=discriminator,
                      optimizers=optimizers, state=state)


def read_metadata(path: str | Path) -> JsonObject:
    """A checkpoint file's validated JSON metadata (config, state, optimiser layout, versions),
    without reading its tensors; refuses pickle and anything that is not a vox2vox checkpoint."""
    meta = _read_header(Path(path))
    check_metadata(meta, Path(path))
    return meta


@dataclass(frozen=True)
class CheckpointMetadata:
    """A checkpoint file's metadata, typed: its config and its record (with the file's library versions)."""

    config: Config
    record: ModelRecord


def read_checkpoint_metadata(path: str | Path) -> CheckpointMetadata:
    """:func:`read_metadata`, typed."""
    meta = read_metadata(path)
    return CheckpointMetadata(
        Config.from_dict(meta["config"], source=str(path), ignore_unknown=True),
        ModelRecord.from_json({**meta.get("state", {}), "versions": meta.get("versions", {})}, path))


def read_record(path: str | Path) -> ModelRecord:
    """A checkpoint file's validated :class:`ModelRecord`, without reading its tensors."""
    return read_checkpoint_metadata(path).record


def _read_header(path: Path) -> JsonObject:
    """The unvalidated metadata object of a safetensors checkpoint of this format."""
    _refuse_unsafe(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (OSError, safetensors.SafetensorError, ValueError) as err:
        raise Vox2VoxError(f"{path}: not a readable safetensors checkpoint ({err})") from err
    if METADATA_KEY not in header:
        raise Vox2VoxError(f"{path}: safetensors file without vox2vox metadata; not a vox2vox checkpoint")
    try:
        meta = json.loads(header[METADATA_KEY])
    except (ValueError, RecursionError) as err:
        raise Vox2VoxError(f"{path}: corrupt vox2vox metadata in the checkpoint header ({err})") from err
    if not isinstance(meta, dict):
        raise Vox2VoxError(f"{path}: corrupt vox2vox metadata in the checkpoint header (not a JSON object)")
    version = meta.get("format_version", 0)
    if meta.get("format") != FORMAT or not isinstance(version, int) or version > FORMAT_VERSION:
        raise Vox2VoxError(f"{path}: unsupported checkpoint format {meta.get('format')!r} v{version!r}")
    return meta


def check_finite_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse NaN/Inf weights (they predict all background silently), naming the first tensor."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            n_bad = int((~torch.isfinite(tensor)).sum())
            raise Vox2VoxError(
                f"{path}: tensor {name!r} holds {n_bad} NaN/Inf value(s); the checkpoint is corrupt or "
                "from a diverged run: use an earlier checkpoint"
            )


def check_metadata(meta: JsonObject, path: Path) -> ModelRecord:
    """Validate the checkpoint's JSON metadata and return its typed ``state``: the config with the
    same typed :class:`Config` as ``--config``, the state as a :class:`ModelRecord`, the optimiser
    layout by shape.

    Every problem is one :class:`Vox2VoxError` naming ``path`` and the field.
    """
    read = MetadataReader(path)
    config = meta.get("config")
    if not isinstance(config, dict):
        raise read.bad("config", config, "expected a table of sections")
    try:
        Config.from_dict(config, source=f"{path}: checkpoint config", ignore_unknown=True)
    except Vox2VoxError as err:
        message = str(err)
        raise Vox2VoxError(message if message.startswith(str(path)) else f"{path}: checkpoint config: {message}") from err
    record = ModelRecord.from_json(meta.get("state", {}), path)
    optimizers = meta.get("optimizers", {})
    if not isinstance(optimizers, dict):
        raise read.bad("optimizers", optimizers, "expected a JSON object")
    for name, om in optimizers.items():
        if not isinstance(om, dict) or not isinstance(om.get("param_groups"), list) or not isinstance(om.get("state"), dict):
            raise read.bad(f"optimizers.{name}", om, "expected param_groups (a list) and state (an object)")
        if not all(isinstance(g, dict) for g in om["param_groups"]):
            raise read.bad(f"optimizers.{name}.param_groups", om["param_groups"], "expected a list of objects")
        for idx, entry in om["state"].items():
            if not str(idx).isdigit() or not isinstance(entry, dict):
                raise read.bad(f"optimizers.{name}.state.{idx}", entry, "expected a parameter index and an object")
    return record


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], path: Path, *, what: str) -> None:
    """``module.load_state_dict(weights)`` with one line naming ``path`` when they do not fit.

    Lists (at most three of) the missing, unexpected and mis-shaped tensors instead of torch's
    multi-line report.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items() if k in weights and tuple(weights[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape differs (checkpoint vs model)", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    if problems:
        raise Vox2VoxError(
            f"{path}: {what} weights do not fit the network its config describes ({'; '.join(problems)}); "
            "use the checkpoint with the config it was trained with"
        )
    try:
        module.load_state_dict(weights)
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise Vox2VoxError(f"{path}: {what} weights cannot be loaded ({first})") from err


def resolve_checkpoint(path: str | Path, *, which: str = "best") -> Path:
    """A run directory -> its ``checkpoints/<which>.safetensors`` (falling back to ``last``);
    ``builtin:<name>`` -> the shipped model's checked weights (:mod:`vox2vox.model.builtin`)."""
    if is_builtin(path):
        return find_builtin(path).weights
    path = Path(path)
    if path.is_file():
        return path
    run = RunDir(path)
    folder = run.checkpoints if run.checkpoints.is_dir() else path
    for name in (which, "last", "best"):
        candidate = folder / f"{name}.safetensors"
        if candidate.is_file():
            return candidate
    raise Vox2VoxError(f"{path}: no checkpoint found (expected checkpoints/{which}.safetensors in a run directory)")


_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".tar"}


def _refuse_unsafe(path: Path) -> None:
    """Refuse pickle-based files by name and by content, without unpickling anything.

    A safetensors file starts with an 8-byte little-endian header length followed by a JSON
    header (``{``). That length's low byte may well be 0x80 (any header of 128 + 256 k bytes), so
    the pickle markers are only checked on files that do not have this structure.
    """
    if not path.is_file():
        raise Vox2VoxError(f"{path}: checkpoint not found")
    with path.open("rb") as f:
        head = f.read(9)
    size = path.stat().st_size
    looks_safetensors = (
        len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size
    )
    # torch.save writes a zip (PK\x03\x04) or a raw pickle (protocol marker 0x80).
    pickle_bytes = head[:2] == b"PK" or head[:1] == b"\x80"
    if path.suffix.lower() in _PICKLE_SUFFIXES or (pickle_bytes and not looks_safetensors):
        raise Vox2VoxError(
            f"{path}: refusing a pickle-based checkpoint (it could run code when loaded); "
            "vox2vox loads only .safetensors checkpoints with vox2vox metadata"
        )
    if not looks_safetensors:
        raise Vox2VoxError(f"{path}: not a safetensors checkpoint (no safetensors header)")
