"""The input contract an exported model carries: what a file of ``vox2vox export`` promises.

An exported generator (ONNX or TorchScript) is only usable with what its checkpoint knew besides
the weights: the channels in order and how their intensities were normalised, the voxel spacing
it was trained at, the size multiple its inputs must have, what its output classes mean on disk,
and the prediction options its training chose. This module builds that record as one JSON
document (stored under :data:`METADATA_KEY`: an ONNX ``metadata_props`` entry, a TorchScript
``_extra_files`` entry) and reads it back, validated, so that ``vox2vox predict`` runs an exported
file exactly as it runs the checkpoint.

The document is readable without vox2vox (Netron shows ONNX metadata; ``unzip -p model.pt
'*/extra/vox2vox.json'`` prints a TorchScript file's): ``input``, ``output``, ``labels`` and
``predict`` spell the contract out; ``config`` and ``state`` are the checkpoint's own records,
which vox2vox reads back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vox2vox import __version__
from vox2vox.config import Config
from vox2vox.data.labels import get_convention
from vox2vox.errors import Vox2VoxError
from vox2vox.model.checkpoint import check_metadata
from vox2vox.model.outputs import head_for

FORMAT = "vox2vox-export"
FORMAT_VERSION = 1
#: The ONNX metadata_props key and the TorchScript extra file's stem holding the JSON document.
METADATA_KEY = "vox2vox"
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"

#: What an exported file's ``state`` keeps of the checkpoint's (the rest is training progress).
# data_profile: so predictions from an export warn about cases unlike the training data too.
_STATE_KEYS = ("channels", "layout", "convention", "predict", "data_profile")

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


def build_contract(config: Config, state: dict[str, Any], *, backend: str, source: Path, sha256: str,
                   opset: int | None = None) -> dict[str, Any]:
    """The JSON document for a generator of ``config`` trained as ``state`` records (a checkpoint's)."""
    if "convention" not in state:
        raise Vox2VoxError(f"{source}: the checkpoint does not record its label convention; export needs "
                           "a checkpoint written by vox2vox train")
    convention = get_convention(state["convention"])
    gen = config.generator
    head = head_for(gen.n_classes, gen.output, convention)  # refuses a checkpoint that contradicts itself
    prep = config.preprocess.to_json()
    prep.pop("cache_dir", None)  # a training machine's folder, not part of the contract
    predict = dict(state.get("predict") or {})
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vox2vox_version": __version__,
        "backend": backend,
        **({"onnx_opset": opset} if opset is not None else {}),
        "source": {"file": source.name, "sha256": sha256,
                   **{k: state[k] for k in ("epoch", "step", "best_score", "best_epoch") if k in state}},
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", "channels", "D", "H", "W"],
            "dtype": "float32",
            "channels": list(state.get("channels") or [f"channel_{i}" for i in range(gen.in_channels)]),
            "axes": _AXES,
            "size_multiple": gen.size_multiple,
            "normalization": {"method": prep["normalize"], "ct_window": prep["ct_window"],
                              "meaning": _NORMALIZATION.get(prep["normalize"], "")},
            "target_spacing_mm": prep["target_spacing"],
            "spacing": ("cases are resampled to target_spacing_mm before the network" if prep["target_spacing"]
                        else "cases run at their own voxel spacing (no resampling)"),
            "training_patch": list(config.train.patch_size),
            "preprocess": prep,
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", gen.output, "D", "H", "W"],
            "dtype": "float32",
            "kind": gen.output,
            "channels": list(head.names),
            "what": _OUTPUT_MEANING[gen.output],
            **({"regions": [{"name": n, "classes": [int(convention.source_values[c]) for c in range(head.n_classes)
                                                     if head.membership[c, r]],
                             "innermost_value": int(convention.source_values[head.region_class[r]])}
                            for r, n in enumerate(head.names)]} if gen.output == "regions" else {}),
        },
        "labels": {
            "convention": convention.name,
            "classes": [{"class": i, "value": int(v), "name": n}
                        for i, (v, n) in enumerate(zip(convention.source_values, convention.class_names, strict=True))],
        },
        "predict": {"tta": bool(predict.get("tta", False)),
                    "largest_component": str(predict.get("largest_component", "off"))},
        "generator": {"arch": gen.arch, "in_channels": gen.in_channels, "n_classes": gen.n_classes,
                      "output": gen.output},
        "config": config.to_dict(),
        "state": {k: state[k] for k in _STATE_KEYS if k in state},
    }


def dump_contract(contract: dict[str, Any]) -> str:
    return json.dumps(contract, sort_keys=True)


def parse_contract(text: str | bytes | None, path: Path, *, backend: str) -> tuple[dict[str, Any], Config]:
    """Validate an exported file's metadata; return the document and its :class:`Config`.

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
    state = doc.get("state")
    if not isinstance(state, dict) or "convention" not in state:
        raise Vox2VoxError(f"{path}: malformed vox2vox metadata: no label convention; export the model again")
    # The checkpoint's own checks: the config through the typed Config, the state fields by type.
    check_metadata({"config": doc.get("config"), "state": state}, path)
    config = Config.from_dict(doc["config"], source=f"{path}: exported config", ignore_unknown=True)
    gen = config.generator
    recorded = doc.get("generator", {}).get("output", "classes") if isinstance(doc.get("generator"), dict) else None
    if recorded != gen.output:
        raise Vox2VoxError(f"{path}: malformed vox2vox metadata: generator.output is {recorded!r} in the "
                           f"contract but {gen.output!r} in its config; export the model again")
    try:
        head_for(gen.n_classes, gen.output, get_convention(state["convention"]))
    except Vox2VoxError as err:
        raise Vox2VoxError(f"{path}: malformed vox2vox metadata: {err}; export the model again") from None
    return doc, config
