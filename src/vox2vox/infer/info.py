"""``vox2vox info MODEL`` for every kind of model file: a checkpoint or run folder through
:func:`vox2vox.model.card.read_card`, a ``vox2vox export`` file (ONNX, TorchScript) through its
contract (:func:`vox2vox.infer.backends.read_exported_contract`, which runs nothing in the file)."""

from __future__ import annotations

from pathlib import Path

from vox2vox.infer.backends import exported_format, read_exported_contract
from vox2vox.model.card import ModelCard, card_from_export, read_card


def read_model_card(path: str | Path) -> ModelCard:
    """The card of a run folder, ``.safetensors`` checkpoint, ``.onnx`` or TorchScript export."""
    if exported_format(path) is not None:
        doc, config = read_exported_contract(path)
        return card_from_export(path, doc, config)
    return read_card(path)
