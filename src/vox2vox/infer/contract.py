"""The input contract an exported model carries: what a file of ``vox2vox export`` promises.

An exported generator (ONNX or TorchScript) is only usable with what its checkpoint knew besides
the weights: the channels in order and how their intensities were normalised, the voxel spacing
it was trained at, the size multiple its inputs must have, what its output classes mean on disk,
and the prediction options its training chose. This module builds that record as one JSON
document (stored under :data:`METADATA_KEY`: an ONNX ``metadata_props`` entry, a TorchScript
``_extra_files`` entry) and reads it back, validated, so that ``vox2vox predict`` runs an exported
file exactly as it runs the checkpoint.

The document is readable without vox2vox (Netron shows ONNX metadata; ``unzip -p model.pt
'*/extra/vox2vox.json'`` prints a TorchScript file's): ``task``, ``input``, ``output``, ``labels``
and ``predict`` spell the contract out; ``config`` and ``state`` are the checkpoint's own records,
which vox2vox reads back.

Two tasks (``task.kind``): a segmentation's output is ``probabilities`` (the graph's output
tensor has that name) and ``labels`` says what its classes are on disk; a translation's output
is ``synthesis``, the synthesised target channels in the generator's head (``linear``: the
normalised target; ``tanh``: its [0, 1] window scaled to [-1, 1]), ``output.intensity`` says how
``predict`` writes them (:func:`vox2vox.data.translation.restore_synthesis`), and ``labels`` is
null. Format versions: 1 is a segmentation export (what every vox2vox with exports reads);
2 adds the translate task, so translation files say 2 and segmentation files stay 1, readable by
older versions; a v1 document without ``task`` is a segmentation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vox2vox.config import Config
from vox2vox.data.labels import LabelConvention
from vox2vox.data.translation import RESTORE_MEANING, head_meaning, intensity_scale
from vox2vox.errors import Vox2VoxError
from vox2vox.model.checkpoint import JsonObject, check_metadata
from vox2vox.model.outputs import OutputHead, head_for
from vox2vox.model.record import ModelRecord, PredictionChoice
from vox2vox.version import __version__

FORMAT = "vox2vox-export"
#: The newest format this vox2vox reads and writes (module docstring: 1 segmentation, 2 translation).
FORMAT_VERSION = 2
FORMAT_VERSIONS = {"segment": 1, "translate": 2}
#: The ONNX metadata_props key and the TorchScript extra file's stem holding the JSON document.
METADATA_KEY = "vox2vox"
INPUT_NAME = "image"
#: The graph's output tensor per task (an ONNX file's output name, checked on loading).
OUTPUT_NAMES = {"segment": "probabilities", "translate": "synthesis"}

#: What an exported file's ``state`` keeps of the checkpoint's (the rest is training progress).
# data_profile: so predictions from an export warn about cases unlike the training data too.
_STATE_KEYS = ("channels", "layout", "convention", "predict", "data_profile", "init_from")
#: The checkpoint's counters an export's ``source`` records (its model card's training lines).
_SOURCE_KEYS = ("epoch", "step", "seconds", "best_score", "best_epoch", "last_score", "run")

_AXES = ("D, H, W: the NIfTI voxel axes (i, j, k) after reorientation to the closest canonical "
         "(RAS+) orientation, as nibabel's as_closest_canonical gives them")

# What the output channels are, and how the label map follows from them (model/outputs.py).
_OUTPUT_MEANING = {
    "classes": "softmax class probabilities; the label map is the argmax mapped through labels.classes",
    "regions": "independent sigmoid per nested region (output.regions, outermost first); a voxel's label "
               "is the innermost_value of the innermost region above 0.5, else the background value",
}

_NORMALIZATION = {
    "zscore-nonzero": "per channel: (x - mean) / std over the foreground voxels (those differing from "
                      "the channel's background value, or inside the mask); background set to 0",
    "zscore": "per channel: (x - mean) / std over all voxels",
    "ct-window": "clip to ct_window (HU), then scale linearly to [0, 1]",
    "none": "intensities used as read",
}


def output_name(kind: str) -> str:
    """The output tensor's name for a ``task.kind`` (``segment`` / ``translate``)."""
    return OUTPUT_NAMES[kind]


@dataclass(frozen=True)
class Contract:
    """An export's validated contract: the document as stored, its config, the checkpoint's record
    it keeps (``state``) and the source checkpoint's counters and versions (``source``)."""

    doc: JsonObject
    config: Config
    record: ModelRecord
    source: ModelRecord


def build_contract(config: Config, record: ModelRecord, *, backend: str, source: Path, sha256: str,
                   opset: int | None = None) -> JsonObject:
    """The JSON document for a generator of ``config`` trained as ``record`` records (a checkpoint's)."""
    gen, task = config.generator, config.task
    prep = config.preprocess.to_json()
    prep.pop("cache_dir", None)  # a training machine's folder, not part of the contract
    predict = record.predict or PredictionChoice()
    state = record.to_json()
    if task.translate:
        check_translation_config(config, record, source)
        output, labels = _translation_output(config), None
        predict_options: JsonObject = {"tta": bool(predict.tta)}
        task_section: JsonObject = {"kind": "translate", "source": list(task.source or ()),
                                    "target": list(task.target or ()), "head": task.head,
                                    "lambda_l1": task.lambda_l1, "lambda_ssim": task.lambda_ssim,
                                    "select": task.select}
    else:
        convention = record.convention
        if convention is None:
            raise Vox2VoxError(f"{source}: the checkpoint does not record its label convention; export needs "
                               "a checkpoint written by vox2vox train")
        head = head_for(gen.n_classes, gen.output, convention)  # refuses a checkpoint that contradicts itself
        output, labels = _segmentation_output(config, convention, head), {
            "convention": convention.name,
            "classes": [{"class": i, "value": int(v), "name": n}
                        for i, (v, n) in enumerate(zip(convention.source_values, convention.class_names, strict=True))],
        }
        predict_options = {"tta": bool(predict.tta),
                           "largest_component": predict.largest_component or "off",
                           "foreground_threshold": predict.foreground_threshold}
        task_section = {"kind": "segment"}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSIONS[task.kind],
        "vox2vox_version": __version__,
        "backend": backend,
        **({"onnx_opset": opset} if opset is not None else {}),
        "source": {"file": source.name, "sha256": sha256,
                   **{k: state[k] for k in _SOURCE_KEYS if k in state}},
        "task": task_section,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", "channels", "D", "H", "W"],
            "dtype": "float32",
            "channels": list(record.channels or [f"channel_{i}" for i in range(gen.in_channels)]),
            "axes": _AXES,
            "size_multiple": gen.size_multiple,
            "normalization": {"method": prep["normalize"], "ct_window": prep["ct_window"],
                              "meaning": _NORMALIZATION.get(prep["normalize"], "")
                              + ("; computed over the source channels' foreground" if task.translate else "")},
            "target_spacing_mm": prep["target_spacing"],
            "spacing": ("cases are resampled to target_spacing_mm before the network" if prep["target_spacing"]
                        else "cases run at their own voxel spacing (no resampling)"),
            "training_patch": list(config.train.patch_size),
            "preprocess": prep,
        },
        "output": output,
        "labels": labels,
        "predict": predict_options,
        "generator": {"arch": gen.arch, "in_channels": gen.in_channels, "n_classes": gen.n_classes,
                      "output": gen.output},
        "config": config.to_dict(),
        "state": {k: state[k] for k in _STATE_KEYS if k in state},
    }


def _segmentation_output(config: Config, convention: LabelConvention, head: OutputHead) -> JsonObject:
    gen = config.generator
    return {
        "name": output_name("segment"),
        "shape": ["batch", gen.output, "D", "H", "W"],
        "dtype": "float32",
        "kind": gen.output,
        "channels": list(head.names),
        "what": _OUTPUT_MEANING[gen.output],
        **({"regions": [{"name": n, "classes": [int(convention.source_values[c]) for c in range(head.n_classes)
                                                 if head.membership[c, r]],
                         "innermost_value": int(convention.source_values[head.region_class[r]])}
                        for r, n in enumerate(head.names)]} if gen.output == "regions" else {}),
    }


def _translation_output(config: Config) -> JsonObject:
    task, prep = config.task, config.preprocess
    return {
        "name": output_name("translate"),
        "shape": ["batch", "targets", "D", "H", "W"],
        "dtype": "float32",
        "kind": task.head,
        "channels": list(task.target or ()),
        "what": f"the synthesised target channels: {head_meaning(task.head)}",
        "intensity": {"scale": intensity_scale(prep), "restore": RESTORE_MEANING[prep.normalize],
                      "ct_window": list(prep.ct_window) if prep.ct_window else None},
    }


def check_translation_config(config: Config, record: ModelRecord, where: object) -> None:
    """A translation checkpoint or export agrees with itself: sources, targets, head and network sizes."""
    gen, task = config.generator, config.task
    problem = None
    if not task.source:
        problem = "task.source is not recorded"
    elif gen.output != task.head:
        problem = f"generator.output is {gen.output!r} but task.head is {task.head!r}"
    elif gen.in_channels != len(task.source) or gen.n_classes != len(task.target or ()):
        problem = (f"the generator maps {gen.in_channels} channel(s) to {gen.n_classes}, the task "
                   f"{len(task.source)} source(s) to {len(task.target or ())} target(s)")
    elif record.channels is not None and list(record.channels) != list(task.source):
        problem = f"its channels {list(record.channels)} are not task.source {list(task.source)}"
    elif record.convention is not None:
        problem = "a translation with a label convention"
    if problem:
        raise Vox2VoxError(f"{where}: a translation model that contradicts itself ({problem}); "
                           "export a checkpoint written by vox2vox train")


def describe_output(contract: JsonObject) -> str:
    """One line on what an export's output means (``vox2vox export`` prints it)."""
    if contract.get("task", {}).get("kind") == "translate":
        task, intensity = contract["task"], contract["output"]["intensity"]
        return (f"synthesises {', '.join(task['target'])} ({task['head']} head; written {intensity['scale']}) "
                f"as output '{contract['output']['name']}'")
    return f"classes: {', '.join(c['name'] for c in contract['labels']['classes'])}"


def dump_contract(contract: JsonObject) -> str:
    return json.dumps(contract, sort_keys=True)


def parse_contract(text: str | bytes | None, path: Path, *, backend: str) -> Contract:
    """Validate an exported file's metadata; return the document with its :class:`Config` and records.

    Every problem is one :class:`Vox2VoxError` naming ``path``.
    """
    what = "an ONNX" if backend == "onnx" else "a TorchScript"
    if text is None:
        raise Vox2VoxError(f"{path}: {what} file without vox2vox metadata; not written by `vox2vox export` "
                           "(export a checkpoint with: vox2vox export RUN --format "
                           f"{backend} --out FILE)")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError, UnicodeDecodeError) as err:
        raise Vox2VoxError(f"{path}: corrupt vox2vox metadata ({err}); export the model again") from err
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise Vox2VoxError(f"{path}: vox2vox metadata of an unknown format; export the model again")
    version = doc.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise Vox2VoxError(f"{path}: vox2vox export format v{version!r} is newer than this vox2vox reads "
                           f"(v{FORMAT_VERSION}); upgrade vox2vox")
    if doc.get("backend") != backend:
        raise Vox2VoxError(f"{path}: its metadata says it is a {doc.get('backend')!r} export, not {backend}; "
                           "name ONNX files .onnx and TorchScript files .pt")
    task = doc.get("task", {"kind": "segment"})  # v1 documents hold segmentations only
    kind = task.get("kind") if isinstance(task, dict) else None
    if kind not in FORMAT_VERSIONS or (kind == "translate" and version < FORMAT_VERSIONS["translate"]):
        raise Vox2VoxError(f"{path}: malformed vox2vox metadata: task {task!r}; export the model again")
    state = doc.get("state")
    if not isinstance(state, dict) or (kind == "segment" and "convention" not in state):
        raise Vox2VoxError(f"{path}: malformed vox2vox metadata: no label convention; export the model again")
    # The checkpoint's own checks: the config through the typed Config, the state fields by type.
    record = check_metadata({"config": doc.get("config"), "state": state}, path)
    source = ModelRecord.from_json(doc.get("source", {}), path)
    config = Config.from_dict(doc["config"], source=f"{path}: exported config", ignore_unknown=True)
    gen = config.generator
    recorded = doc.get("generator", {}).get("output", "classes") if isinstance(doc.get("generator"), dict) else None
    if recorded != gen.output:
        raise Vox2VoxError(f"{path}: malformed vox2vox metadata: generator.output is {recorded!r} in the "
                           f"contract but {gen.output!r} in its config; export the model again")
    if config.task.kind != kind:
        raise Vox2VoxError(f"{path}: malformed vox2vox metadata: task {kind!r} in the contract but "
                           f"{config.task.kind!r} in its config; export the model again")
    output = doc.get("output")
    if not isinstance(output, dict) or output.get("name") != output_name(kind):
        shown = output.get("name") if isinstance(output, dict) else output
        raise Vox2VoxError(f"{path}: malformed vox2vox metadata: output {shown!r}, a {kind} export's is "
                           f"{output_name(kind)!r}; export the model again")
    if kind == "translate":
        check_translation_config(config, record, f"{path}: malformed vox2vox metadata")
        return Contract(doc, config, record, source)
    try:
        head_for(gen.n_classes, gen.output, record.convention)
    except Vox2VoxError as err:
        raise Vox2VoxError(f"{path}: malformed vox2vox metadata: {err}; export the model again") from None
    return Contract(doc, config, record, source)
