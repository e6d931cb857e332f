"""Building blocks the generator and discriminator share, and the fast transposed convolution.

- :class:`Conv3d` / :class:`ConvTranspose3d`: the torch layers with the CPU layout rule (few
  channels run channels-last); same parameters and state dict.
- :func:`make_norm`, :func:`same_padding` (Keras 'same'), :func:`init_he_normal` (Keras init),
  :func:`check_positive_ints` (config validation of both networks' sections).
- :class:`PhaseTransposedConv3d`: a 4/2/1 transposed convolution computed as one ordinary
  convolution plus an interleave; prediction swaps it in for the generator's few-channel head.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vox2vox.errors import Vox2VoxError

NormKind = Literal["instance", "batch", "none"]


def check_positive_ints(cfg: object, section: str, *names: str) -> None:
    """Raise a config error naming ``section.name`` for any field that is not a positive integer."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise Vox2VoxError(f"{section}.{name}={value!r}: must be a positive integer")


def make_norm(kind: NormKind, channels: int, eps: float) -> nn.Module:
    """Normalisation layer; instance norm is affine (Keras InstanceNormalization has scale/shift).

    Instance norm is computed as ``GroupNorm`` with one channel per group: the same function
    (per sample and channel over the spatial axes, then a per-channel scale and shift) with the
    same parameter names (``weight``, ``bias``), but PyTorch's CPU group-norm kernel avoids
    ``InstanceNorm3d``'s reshape to a (1, B*C, ...) batch norm and its repeated parameters;
    measured faster for every shape in this network (benchmarks/RESULTS.md).
    """
    if kind == "instance":
        return nn.GroupNorm(channels, channels, eps=eps, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels, eps=eps)
    return nn.Identity()


# oneDNN's channels-first 3D convolution is slow on the CPU, backward above all, when one side has
# only a few channels (the generator's first and last layers, the discriminator's first); in the
# channels-last layout the same layers ran 3-7x faster (benchmarks/RESULTS.md), while the wide
# inner layers are faster channels-first. So only these layers switch layout, inside forward.
FEW_CHANNELS = 16


def _wants_channels_last(x: torch.Tensor, cin: int, cout: int) -> bool:
    return x.device.type == "cpu" and x.ndim == 5 and min(cin, cout) < FEW_CHANNELS


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` (same parameters and state dict) that runs channels-last on the CPU when it
    has fewer than ``FEW_CHANNELS`` input or output channels; output in the default layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _wants_channels_last(x, self.in_channels, self.out_channels):
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last_3d)).contiguous()


class ConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` with the same layout rule as :class:`Conv3d`."""

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if not _wants_channels_last(x, self.in_channels, self.out_channels):
            return super().forward(x, output_size)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        return super().forward(x, output_size).contiguous()


def same_padding(kernel_size: int, stride: int) -> tuple[int, int]:
    """Keras 'same' padding (before, after) for a conv whose input is divisible by the stride.

    Keras pads ``k - s`` in total with the extra voxel after, e.g. (1, 2) for k=4, s=1.
    """
    total = max(kernel_size - stride, 0)
    return total // 2, total - total // 2


def init_he_normal(module: nn.Module) -> None:
    """He-normal weights (as the authors' Keras code), zero biases, unit norm scales."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
            # Keras he_normal is a truncated normal with std sqrt(2 / fan_in); fan_in for a
            # transposed conv in PyTorch's layout is weight.size(0) * k^3, which
            # kaiming_normal_(mode="fan_in") computes from dim 1, so pick the mode that matches.
            mode = "fan_out" if isinstance(m, nn.ConvTranspose3d) else "fan_in"
            nn.init.kaiming_normal_(m.weight, a=0.0, mode=mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.GroupNorm | nn.InstanceNorm3d | nn.BatchNorm3d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class PhaseTransposedConv3d(torch.nn.Module):
    """A ``ConvTranspose3d(kernel 4, stride 2, padding 1)`` computed as one ordinary convolution.

    Each output voxel ``2m + r`` (parity ``r`` per axis) sums input voxels ``m - 1, m`` (r = 0,
    kernel taps 3, 1) or ``m, m + 1`` (r = 1, taps 2, 0). So a stride-1 kernel-2 convolution
    with padding 1 to ``8 * out_channels`` channels (one group per parity triple) computes every
    output voxel, and an interleave puts them in place. Same FLOPs (plus the one-voxel border);
    the point is speed: oneDNN's transposed convolution vectorises over output channels and is
    slow for the generator's 4-class head (measured 1.3-2x faster on this CPU; no gain for the
    wide decoder stages, which keep the original layer).

    Shapes: input ``(B, C_in, D, H, W)`` -> output ``(B, C_out, 2D, 2H, 2W)``, as the original.
    """

    _TAPS = ((3, 1), (2, 0))  # kernel index for (parity r, tap t)

    def __init__(self, deconv: torch.nn.ConvTranspose3d):
        super().__init__()
        w = deconv.weight.detach()  # (C_in, C_out, 4, 4, 4)
        self.out_channels = int(w.shape[1])
        taps = torch.tensor(self._TAPS, device=w.device)
        groups = []
        for r0 in range(2):
            for r1 in range(2):
                for r2 in range(2):
                    sub = w[:, :, taps[r0]][:, :, :, taps[r1]][:, :, :, :, taps[r2]]
                    groups.append(sub.transpose(0, 1))  # (C_out, C_in, 2, 2, 2)
        self.register_buffer("weight", torch.cat(groups).contiguous(), persistent=False)
        bias = None if deconv.bias is None else deconv.bias.detach().repeat(8)
        self.register_buffer("bias", bias, persistent=False)

    @staticmethod
    def eligible(module: torch.nn.Module) -> bool:
        """A plain 4/2/1 transposed conv with few output channels (where the rewrite pays)."""
        return (
            isinstance(module, torch.nn.ConvTranspose3d)
            and module.kernel_size == (4, 4, 4) and module.stride == (2, 2, 2)
            and module.padding == (1, 1, 1) and module.output_padding == (0, 0, 0)
            and module.dilation == (1, 1, 1) and module.groups == 1
            and module.out_channels < 16
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv3d(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype), padding=1)
        n0, n1, n2 = x.shape[2:]
        c = self.out_channels
        out = y.new_empty((x.shape[0], c, 2 * n0, 2 * n1, 2 * n2))
        group = 0
        for r0 in range(2):
            for r1 in range(2):
                for r2 in range(2):
                    out[:, :, r0::2, r1::2, r2::2] = y[:, group * c : (group + 1) * c, r0 : r0 + n0, r1 : r1 + n1, r2 : r2 + n2]
                    group += 1
        return out
