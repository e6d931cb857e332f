"""The Vox2Vox generator: a 3D U-Net whose output is a per-voxel class distribution.

Defaults follow the authors' current code (docs/method.md, "Generator"): four stride-2 encoder
convolutions (64-128-256-512 filters, kernel 4), four bottleneck blocks at 1/16 resolution that
each concatenate their activated output with their own pre-norm convolution output, three
transposed-convolution decoder stages with skip connections, and a final transposed convolution to
``n_classes`` channels followed by a softmax (a sigmoid per region with ``output="regions"``, see
:mod:`vox2vox.model.outputs`). At 4 input channels and 4 classes this is about
150 M parameters, most of them in the bottleneck.

Shapes: input ``(B, in_channels, D, H, W)`` with each of D, H, W a multiple of ``2 ** depth``;
output ``(B, n_classes, D, H, W)`` probabilities (or logits with ``return_logits=True``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from vox2vox.data.settings import setting
from vox2vox.errors import Vox2VoxError
from vox2vox.model.blocks import (
    Conv3d,
    ConvTranspose3d,
    NormKind,
    check_positive_ints,
    init_he_normal,
    make_norm,
    same_padding,
)
from vox2vox.model.outputs import activate


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of the 3D U-Net generator (paper defaults).

    ``arch="paper"`` is the authors' network (this module); ``"residual"`` the U-Net of 3^3 residual
    units in :mod:`vox2vox.model.residual`, which uses ``base_filters``, ``max_filters``, ``depth``,
    ``dropout`` and ``norm_eps`` (its bottleneck, kernel and slope are fixed).
    """

    arch: Literal["paper", "residual"] = setting(
        "paper",
        "paper (the authors' 4^3 stride-2 U-Net) or residual (3^3 residual units at every level)")
    in_channels: int = setting(4, "image channels (training sets it from the data)", at_most=1024)
    # Output channels: the classes, or with output="regions" the label convention's nested regions;
    # "linear"/"tanh": continuous channels of a translation (vox2vox.model.translation).
    n_classes: int = setting(
        4,
        "output channels: the classes, or the nested regions with output=regions (training sets it "
        "from the label convention)", at_most=1024)
    output: Literal["classes", "regions", "linear", "tanh"] = setting(
        "classes",
        "classes (softmax, one output per class: the paper) or regions (sigmoid per nested region, "
        "e.g. BraTS WT/TC/ET, turned back into labels on output); linear or tanh: a translation's "
        "(training sets them from task.head)")
    # Residual generator only: extra outputs at 1/2 and 1/4 resolution trained too (nnU-Net's deep
    # supervision); prediction uses the full-resolution output alone.
    deep_supervision: bool = setting(
        False,
        "residual generator: also train 1x1x1 heads on the decoder at 1/2 and 1/4 resolution (weights"
        " 1, 1/2, 1/4; nnU-Net's deep supervision); prediction uses the full-resolution output")
    base_filters: int = setting(64, "filters of the first encoder stage (doubling per stage)", at_most=4096)
    max_filters: int = setting(512, "cap on the filters of any stage", at_most=4096)
    depth: int = setting(4, "stride-2 encoder stages; input sizes must be multiples of 2^depth")
    bottleneck_blocks: int = setting(
        4,
        "blocks at the deepest resolution (each concatenates its output with its convolution's)", at_most=64)
    kernel_size: int = setting(4, "convolution kernel size", at_most=15)
    dropout: float = setting(0.2, "dropout rate of the U-Net's blocks (off in eval mode)")
    negative_slope: float = setting(0.3, "LeakyReLU slope")
    norm: NormKind = setting("instance", "instance, batch or none")
    norm_eps: float = setting(1e-3, "normalisation epsilon")

    def __post_init__(self) -> None:
        check_positive_ints(self, "generator", "in_channels", "n_classes", "base_filters", "max_filters", "kernel_size")
        if self.arch not in ("paper", "residual"):
            raise Vox2VoxError(f"generator.arch={self.arch!r}: choose paper or residual")
        if self.output not in ("classes", "regions", "linear", "tanh"):
            raise Vox2VoxError(f"generator.output={self.output!r}: choose classes or regions (linear, tanh: translation)")
        if self.deep_supervision and self.arch != "residual":
            raise Vox2VoxError("generator.deep_supervision=true works with generator.arch=residual only")
        if not 2 <= self.depth <= 7:
            raise Vox2VoxError(f"generator.depth={self.depth}: must be between 2 and 7")
        if self.bottleneck_blocks < 0:
            raise Vox2VoxError(f"generator.bottleneck_blocks={self.bottleneck_blocks}: must be >= 0")
        if self.kernel_size < 2:
            raise Vox2VoxError(f"generator.kernel_size={self.kernel_size}: a stride-2 layer needs a kernel of at least 2")
        if not 0.0 <= self.dropout < 1.0:
            raise Vox2VoxError(f"generator.dropout={self.dropout}: must be in [0, 1)")
        if self.norm not in ("instance", "batch", "none"):
            raise Vox2VoxError(f"generator.norm={self.norm!r}: choose instance, batch or none")

    @property
    def size_multiple(self) -> int:
        """Every spatial input size must be a multiple of this (``2 ** depth``)."""
        return 2**self.depth

    def size_problem(self, sizes: Sequence[int], *, batch: int = 1) -> Literal["multiple", "too small"] | None:
        """Why the generator cannot take spatial ``sizes`` (None when it can); the one statement of
        the input-size rules, for the config's patch size and the network's input alike.

        ``"multiple"``: a size is not a positive multiple of :attr:`size_multiple`. ``"too small"``:
        the deepest feature map would hold one voxel per channel (times ``batch`` for batch norm),
        too few for normalisation statistics (e.g. 16^3 at depth 4).
        """
        m = self.size_multiple
        if any(s % m != 0 or s == 0 for s in sizes):
            return "multiple"
        deepest = [s // m for s in sizes]
        if self.norm != "none" and deepest[0] * deepest[1] * deepest[2] * (batch if self.norm == "batch" else 1) < 2:
            return "too small"
        return None

    def encoder_filters(self) -> list[int]:
        return [min(self.base_filters * 2**i, self.max_filters) for i in range(self.depth)]


class DownBlock(nn.Module):
    """Conv3d (stride 2, 'same') -> norm -> LeakyReLU -> dropout: halves each spatial size."""

    def __init__(self, cin: int, cout: int, cfg: GeneratorConfig, *, norm: bool, dropout: float):
        super().__init__()
        before, after = same_padding(cfg.kernel_size, 2)
        self.pad = nn.ConstantPad3d((before, after) * 3, 0.0) if before != after else nn.Identity()
        self.conv = Conv3d(cin, cout, cfg.kernel_size, stride=2, padding=before if before == after else 0)
        self.norm = make_norm(cfg.norm, cout, cfg.norm_eps) if norm else nn.Identity()
        self.act = nn.LeakyReLU(cfg.negative_slope, inplace=True)
        self.drop = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.norm(self.conv(self.pad(x)))))


class BottleneckBlock(nn.Module):
    """y = Conv3d (stride 1, 'same'); out = concat(LeakyReLU(norm(y)), y): doubles the channels."""

    def __init__(self, cin: int, cout: int, cfg: GeneratorConfig):
        super().__init__()
        before, after = same_padding(cfg.kernel_size, 1)
        # F.pad order is (W_before, W_after, H_before, H_after, D_before, D_after).
        self.pad = nn.ConstantPad3d((before, after) * 3, 0.0)
        self.conv = Conv3d(cin, cout, cfg.kernel_size, stride=1)
        self.norm = make_norm(cfg.norm, cout, cfg.norm_eps)
        self.act = nn.LeakyReLU(cfg.negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.pad(x))
        return torch.cat([self.act(self.norm(y)), y], dim=1)


class UpBlock(nn.Module):
    """ConvTranspose3d (stride 2) -> norm -> LeakyReLU, concat with the skip, dropout."""

    def __init__(self, cin: int, cout: int, cfg: GeneratorConfig, *, dropout: float):
        super().__init__()
        self.up = transposed_conv(cin, cout, cfg.kernel_size)
        self.norm = make_norm(cfg.norm, cout, cfg.norm_eps)
        self.act = nn.LeakyReLU(cfg.negative_slope, inplace=True)
        self.drop = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.cat([self.act(self.norm(self.up(x))), skip], dim=1))


def transposed_conv(cin: int, cout: int, kernel_size: int) -> ConvTranspose3d:
    """Stride-2 transposed conv that exactly doubles each spatial size for any kernel >= 2."""
    # out = (n - 1) * 2 - 2 * p + k + op must equal 2n, so 2p - op = k - 2.
    padding, output_padding = ((kernel_size - 2) // 2, 0) if kernel_size % 2 == 0 else ((kernel_size - 1) // 2, 1)
    return ConvTranspose3d(cin, cout, kernel_size, stride=2, padding=padding, output_padding=output_padding)


class Generator(nn.Module):
    """Vox2Vox 3D U-Net. ``forward(x)`` -> ``(B, n_classes, D, H, W)`` softmax probabilities."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        filters = config.encoder_filters()
        # Encoder: dropout on all but the deepest stage; no norm on the first (docs/method.md, "Generator").
        self.encoder = nn.ModuleList()
        cin = config.in_channels
        for i, cout in enumerate(filters):
            drop = config.dropout if i < config.depth - 1 else 0.0
            self.encoder.append(DownBlock(cin, cout, config, norm=i > 0, dropout=drop))
            cin = cout
        # Bottleneck: each block maps its input to filters[-1] and concatenates -> 2 * filters[-1].
        self.bottleneck = nn.ModuleList()
        for _ in range(config.bottleneck_blocks):
            self.bottleneck.append(BottleneckBlock(cin, filters[-1], config))
            cin = 2 * filters[-1]
        # Decoder: up to each shallower encoder stage, concatenating its output.
        self.decoder = nn.ModuleList()
        for skip_filters in reversed(filters[:-1]):
            self.decoder.append(UpBlock(cin, skip_filters, config, dropout=config.dropout))
            cin = 2 * skip_filters
        self.head = transposed_conv(cin, config.n_classes, config.kernel_size)
        init_he_normal(self)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for a tensor the network cannot take."""
        cfg = self.config
        if x.ndim != 5:
            raise Vox2VoxError(f"generator input must be (B, C, D, H, W); got shape {tuple(x.shape)}")
        if x.shape[1] != cfg.in_channels:
            raise Vox2VoxError(
                f"generator expects {cfg.in_channels} input channels, got {x.shape[1]}; "
                "the model was trained on a different channel count"
            )
        m = cfg.size_multiple
        problem = cfg.size_problem(tuple(x.shape[2:]), batch=x.shape[0])
        if problem == "multiple":
            raise Vox2VoxError(
                f"input size {tuple(x.shape[2:])} does not work with depth {cfg.depth}: every spatial "
                f"size must be a multiple of {m} (e.g. {m}, {2 * m}, {4 * m}, ...); pad or crop the volume"
            )
        if problem == "too small":
            raise Vox2VoxError(
                f"input size {tuple(x.shape[2:])} is too small for depth {cfg.depth}: the deepest feature "
                f"map would be 1x1x1, too small for {cfg.norm} norm; use sizes that are multiples of {m} "
                f"and at least {2 * m} along one axis (e.g. {2 * m}, {3 * m}, {4 * m}, ...)"
            )

    def forward(self, x: torch.Tensor, *, return_logits: bool = False) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        for block in self.bottleneck:
            x = block(x)
        for block, skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            x = block(x, skip)
        logits = self.head(x)
        if return_logits:
            return logits
        return activate(logits, self.config.output)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
