"""A model ready to predict: the generator rebuilt from a checkpoint or an export, with its config
and what training recorded beside the weights. Its own module so that inference and ensembling
(which :mod:`vox2vox.infer.inference` imports) both name it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vox2vox.config import Config
from vox2vox.model.record import ModelRecord


@dataclass
class LoadedModel:
    """A generator rebuilt from a checkpoint alone, with what prediction needs to know.

    ``record`` is what training stored beside the weights (:class:`ModelRecord`): the channel names
    in order, the label convention, the layout, the prediction options training chose, ...
    """

    generator: torch.nn.Module
    config: Config
    record: ModelRecord
    path: Path

    @property
    def channels(self) -> list[str] | None:
        return None if self.record.channels is None else list(self.record.channels)

    @property
    def backend(self) -> str:
        """``pytorch``, or the exported file's runtime (``onnx``, ``torchscript``)."""
        return getattr(self.generator, "backend", "pytorch")
