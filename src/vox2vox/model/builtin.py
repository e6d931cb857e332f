"""Models shipped inside the package, named ``builtin:<name>`` wherever a model path is taken.

Each shipped model is two files in ``model/shipped/``: ``<name>.safetensors`` (the generator's
weights and the checkpoint metadata every vox2vox checkpoint carries) and ``<name>.json``, its card:
how it was made, what it was trained on, what it scored on real cases and where it fails. The
card holds the weights' sha256, checked before the file is used, so a damaged or replaced file
is refused rather than run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vox2vox.errors import Vox2VoxError

PREFIX = "builtin:"
SHIPPED = Path(__file__).resolve().parent / "shipped"


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model: its name, weights file and card (the card's JSON as written)."""

    name: str
    weights: Path
    sha256: str
    summary: str
    card: dict[str, Any]

    @classmethod
    def read(cls, card_file: Path) -> ShippedModel:
        try:
            card = json.loads(card_file.read_text())
        except (OSError, ValueError) as err:
            raise Vox2VoxError(f"{card_file}: unreadable model card ({err}); reinstall vox2vox") from None
        if not isinstance(card, dict) or not all(isinstance(card.get(k), str) for k in ("sha256", "summary")):
            raise Vox2VoxError(f"{card_file}: malformed model card (needs sha256 and summary); reinstall vox2vox")
        name = card_file.stem
        return cls(name, card_file.with_suffix(".safetensors"), card["sha256"], card["summary"], card)


def is_builtin(path: str | Path) -> bool:
    return str(path).startswith(PREFIX)


def shipped_models(folder: Path = SHIPPED) -> list[ShippedModel]:
    """Every shipped model whose card and weights are both present, by name."""
    return [ShippedModel.read(card) for card in sorted(folder.glob("*.json")) if card.with_suffix(".safetensors").is_file()]


def find_builtin(path: str | Path, folder: Path = SHIPPED) -> ShippedModel:
    """The shipped model ``builtin:<name>`` names, its weights checked against its card's sha256."""
    name = str(path)[len(PREFIX):]
    models = {m.name: m for m in shipped_models(folder)}
    if name not in models:
        known = ", ".join(PREFIX + n for n in models) or "none in this installation"
        raise Vox2VoxError(f"{path}: no such shipped model; shipped: {known} (vox2vox models lists them)")
    model = models[name]
    digest = hashlib.sha256(model.weights.read_bytes()).hexdigest()
    if digest != model.sha256:
        raise Vox2VoxError(f"{model.weights}: sha256 {digest[:16]}... differs from its card's "
                           f"{model.sha256[:16]}...; the file is damaged or replaced, reinstall vox2vox")
    return model


def format_shipped(model: ShippedModel) -> str:
    """The shipped card as text: how the model was made, its zero-shot scores and its limits."""
    card = model.card
    lines = [f"shipped model {PREFIX}{model.name}: {model.summary}", f"  sha256      {model.sha256}"]
    made = card.get("made_by") or {}
    if made:
        lines.append(f"  made by     {made.get('command')} ({made.get('steps')} steps, seed {made.get('seed')}, "
                     f"{made.get('train_seconds')} s on {made.get('cpu')}, {made.get('date')})")
    for source, scores in (card.get("zero_shot") or {}).items():
        if isinstance(scores, dict):
            shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in scores.items())
            lines.append(f"  zero-shot   {source}: {shown}")
    for limit in card.get("limits") or ():
        lines.append(f"  limit       {limit}")
    return "\n".join(lines)
