"""vox2vox: 3D conditional GAN (Vox2Vox) segmentation of CT and MRI volumes.

The Python API (``from vox2vox import load_model``; see :mod:`vox2vox.api`) is imported on first
use: importing ``vox2vox`` alone, as the command line does for ``--help``, must not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vox2vox.version import __version__

__all__ = ["Model", "Prediction", "Synthesis", "__version__", "load_model"]

if TYPE_CHECKING:
    from vox2vox.api import Model, Prediction, Synthesis, load_model

_API = ("Model", "Prediction", "Synthesis", "load_model")


def __getattr__(name: str) -> Any:
    if name in _API:
        # Lazy on purpose (module __getattr__, PEP 562): vox2vox.api imports torch and MONAI.
        from vox2vox import api

        return getattr(api, name)
    raise AttributeError(f"module 'vox2vox' has no attribute {name!r}")
