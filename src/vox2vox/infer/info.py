"""``vox2vox info MODEL`` for every kind of model file: a checkpoint or run folder through
:func:`vox2vox.model.card.read_card`, a ``vox2vox export`` file (ONNX, TorchScript) through its
contract (:func:`vox2vox.infer.backends.read_exported_contract`, which runs nothing in the file);
a translator's fill-check records (:mod:`vox2vox.infer.fill_record`) beside it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vox2vox.infer.backends import exported_format, read_exported_contract
from vox2vox.infer.fill_record import records_beside
from vox2vox.model.card import ModelCard, card_from_export, read_card


def read_model_card(path: str | Path) -> ModelCard:
    """The card of a run folder, ``.safetensors`` checkpoint, ``.onnx`` or TorchScript export; a
    translator's card also lists the fill-check records beside its file."""
    if exported_format(path) is not None:
        contract = read_exported_contract(path)
        card = card_from_export(path, contract.doc, contract.config, contract.record, contract.source)
    else:
        card = read_card(path)
    if not card.translate:
        return card
    return dataclasses.replace(card, fill_checks=tuple(records_beside(card.path)))
