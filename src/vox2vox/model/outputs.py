"""What the generator's output channels mean: one softmax class each, or one sigmoid region each.

``generator.output = "classes"`` (the paper) predicts mutually exclusive classes; the target is the
one-hot label map and a voxel's class is the argmax. ``"regions"`` predicts a label convention's
nested regions as overlapping sigmoid outputs (BraTS: WT, TC, ET), the way the BraTS 2020-21
winners trained: the loss then scores the regions the challenge scores, instead of classes whose
borders (edema vs. core) the evaluation never looks at. A voxel's class is read back from the chain
of regions, inner regions overriding outer ones (docs/method.md, "Region-based training").

:class:`OutputHead` is the one place both directions live: training targets from class indices,
class indices from (averaged) probabilities. Training, validation, the selection of prediction
options and prediction all go through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from vox2vox.data.labels import LabelConvention
from vox2vox.errors import Vox2VoxError

OutputKind = Literal["classes", "regions", "linear", "tanh"]  # linear/tanh: a translation's continuous channels


@dataclass(frozen=True)
class OutputHead:
    """How ``n_outputs`` generator channels relate to a convention's ``n_classes`` classes.

    ``membership[c, r]`` is 1 when class ``c`` belongs to output ``r`` (the identity for classes).
    ``region_class[r]`` is the class a voxel gets when region ``r`` is the innermost one above 0.5
    (above the foreground threshold when one is given).
    """

    kind: OutputKind
    n_classes: int
    names: tuple[str, ...]
    membership: np.ndarray
    region_class: tuple[int, ...] = ()

    @property
    def n_outputs(self) -> int:
        return len(self.names)

    def targets(self, label: torch.Tensor) -> torch.Tensor:
        """``(B, D, H, W)`` class indices -> ``(B, n_outputs, D, H, W)`` float targets (one-hot or
        region masks). Ignore-label voxels (negative) get all zeros; the loss mask leaves them out."""
        label = label.long()
        one_hot = torch.nn.functional.one_hot(label.clamp_min(0), self.n_classes).float()
        one_hot = one_hot * (label >= 0).unsqueeze(-1)
        if self.kind == "regions":
            member = torch.as_tensor(self.membership, dtype=torch.float32, device=label.device)
            one_hot = one_hot @ member
        return one_hot.movedim(-1, 1).contiguous()

    def to_classes(self, probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """``(n_outputs, *spatial)`` probabilities -> ``spatial`` int64 class indices.

        ``threshold`` None: the plain rule (argmax of classes; regions above 0.5). A number ``t``
        moves the foreground boundary: classes make a voxel foreground where ``1 - P(background)
        >= t`` (its class the most probable foreground class), regions count where their sigmoid
        is ``>= t``. A model that under-segments is corrected with ``t < 0.5``; training chooses
        ``t`` on its validation cases (:mod:`vox2vox.train.selection`).
        """
        probs = np.asarray(probs)
        if probs.shape[0] != self.n_outputs:
            raise Vox2VoxError(f"the model gives {probs.shape[0]} output channels; its {self.kind} head "
                               f"expects {self.n_outputs} ({', '.join(self.names)})")
        check_threshold(threshold)
        if self.kind == "classes":
            if threshold is None:
                return probs.argmax(0).astype(np.int64)
            labels = probs[1:].argmax(0).astype(np.int64) + 1
            labels[1.0 - probs[0] < threshold] = 0
            return labels
        labels = np.zeros(probs.shape[1:], dtype=np.int64)
        for r, cls in enumerate(self.region_class):  # outermost first: inner regions override
            labels[probs[r] > 0.5 if threshold is None else probs[r] >= threshold] = cls
        return labels


def check_threshold(threshold: float | None) -> None:
    """A foreground threshold is None (the plain rule) or a number strictly between 0 and 1."""
    if threshold is not None and not (isinstance(threshold, int | float) and 0.0 < threshold < 1.0):
        raise Vox2VoxError(f"foreground threshold {threshold!r}: must lie strictly between 0 and 1")


def output_head(convention: LabelConvention, kind: OutputKind = "classes") -> OutputHead:
    """The head for ``convention``: one output per class, or one per region of its nested chain
    (:meth:`LabelConvention.nested_regions`, which refuses regions that do not nest)."""
    n = convention.n_classes
    if kind == "classes":
        return OutputHead("classes", n, tuple(convention.class_names), np.eye(n, dtype=np.float32))
    if kind != "regions":
        raise Vox2VoxError(f"generator.output={kind!r}: choose classes or regions")
    chain = convention.nested_regions()
    membership = np.zeros((n, len(chain)), dtype=np.float32)
    for r, (_, classes) in enumerate(chain):
        membership[list(classes), r] = 1.0
    # Each region holds the next one plus exactly one class: that class is the region's own.
    inner = [set(classes) for _, classes in chain[1:]] + [set()]
    region_class = tuple(next(iter(set(classes) - below)) for (_, classes), below in zip(chain, inner, strict=True))
    return OutputHead("regions", n, tuple(name for name, _ in chain), membership, region_class)


def activate(logits: torch.Tensor, kind: OutputKind) -> torch.Tensor:
    """Logits -> probabilities in float32 (half-precision softmax/sigmoid would underflow small ones);
    a translation's continuous channels: as they are (``linear``) or through ``tanh``."""
    logits = logits.float()
    if kind == "linear":
        return logits
    if kind == "tanh":
        return torch.tanh(logits)
    return torch.sigmoid(logits) if kind == "regions" else torch.softmax(logits, dim=1)


def head_for(n_outputs: int, kind: OutputKind, convention: LabelConvention | None) -> OutputHead:
    """The head of a generator with ``n_outputs`` channels of ``kind`` trained on ``convention``
    (None: plain classes ``0..n_outputs-1``); a checkpoint or config that disagrees is refused."""
    if convention is None:
        if kind == "regions":
            raise Vox2VoxError("generator.output=regions needs the label convention whose regions it predicts")
        names = tuple(f"class {c}" for c in range(n_outputs))
        return OutputHead("classes", n_outputs, names, np.eye(n_outputs, dtype=np.float32))
    head = output_head(convention, kind)
    if head.n_outputs != n_outputs:
        raise Vox2VoxError(
            f"the generator has {n_outputs} output channels, but label convention {convention.name!r} "
            f"gives {head.n_outputs} {kind} ({', '.join(head.names)})")
    return head
