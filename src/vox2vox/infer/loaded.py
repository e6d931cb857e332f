"""A model ready to predict: the generator rebuilt from a checkpoint or an export, with its config
and what training recorded beside the weights. Its own module so that inference and ensembling
(which :mod:`vox2vox.infer.inference` imports) both name it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vox2vox.config import Config


@dataclass
class LoadedModel:
    """A generator rebuilt from a checkpoint alone, with what prediction needs to know.

    ``state`` holds what training stored beside the weights: ``channels`` (input channel names in
    order), ``convention`` (the label convention as JSON) and ``layout``.
    """

    generator: torch.nn.Module
    config: Config
    state: dict[str, Any]
    path: Path

    @property
    def channels(self) -> list[str] | None:
        return self.state.get("channels")

    @property
    def backend(self) -> str:
        """``pytorch``, or the exported file's runtime (``onnx``, ``torchscript``)."""
        return getattr(self.generator, "backend", "pytorch")
