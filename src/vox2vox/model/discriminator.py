"""The Vox2Vox conditional 3D PatchGAN discriminator.

It judges an (image, segmentation) pair: the input is ``concat(image, segmentation)`` with
``in_channels + n_classes`` channels (the authors' code swapped the two inputs, which only worked
when the counts were equal). Defaults (docs/method.md, "Discriminator"): three stride-2 4^3 convolutions
(64-128-256 filters, instance norm on all but the first, LeakyReLU, dropout 0.2), then two stride-1
4^3 convolutions (512, then 1 filter) giving a raw score map (14^3 for a 128^3 input), no sigmoid,
as the least-squares GAN loss expects.

Shapes: image ``(B, in_channels, D, H, W)``, segmentation ``(B, n_classes, D, H, W)`` (one-hot or
softmax), output ``(B, 1, d, h, w)`` patch scores.

A cheaper critic (docs/method.md, "A cheaper critic"): ``input_scale = s`` judges the pair
average-pooled by ``s`` (s^3 fewer voxels in every layer; the last ``size mod s`` voxels of an axis
are not seen); ``update_every = k`` makes training run the critic's half-step on every k-th step
only (read by :mod:`vox2vox.train.training`); ``forward(..., features=True)`` also returns the
activations of every hidden layer, for the feature-matching term (``loss.lambda_fm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vox2vox.data.settings import setting
from vox2vox.errors import Vox2VoxError
from vox2vox.model.blocks import (
    Conv3d,
    NormKind,
    check_positive_ints,
    init_he_normal,
    make_norm,
)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Architecture of the conditional PatchGAN (paper defaults)."""

    in_channels: int = setting(4, "image channels (training sets it from the data)", at_most=1024)
    n_classes: int = setting(
        4,
        "segmentation channels it sees beside the image (the generator's outputs; set from the data)", at_most=1024)
    base_filters: int = setting(64, "filters of the first layer (doubling per strided layer)", at_most=4096)
    max_filters: int = setting(512, "cap on the filters of any layer", at_most=4096)
    n_strided: int = setting(3, "stride-2 layers (fewer: smaller patches, smaller receptive field)", at_most=8)
    kernel_size: int = setting(4, "convolution kernel size", at_most=15)
    dropout: float = setting(0.2, "dropout after each strided layer")
    negative_slope: float = setting(0.3, "LeakyReLU slope")
    norm: NormKind = setting("instance", "instance, batch or none")
    norm_eps: float = setting(1e-3, "normalisation epsilon")
    # The critic judges the (image, segmentation) pair average-pooled by this factor (1: as given).
    input_scale: int = setting(
        1,
        "the critic judges the (image, segmentation) pair average-pooled by this factor (2: 8x fewer "
        "voxels per critic pass; 1: as given, the paper)", at_most=16)
    # The critic's half-step runs on every k-th training step only (1: every step, as the paper).
    update_every: int = setting(
        1,
        "the critic's half-step runs on every k-th training step only (the generator's adversarial "
        "term still every step; 1: every step, the paper)", at_most=1000)

    def __post_init__(self) -> None:
        check_positive_ints(self, "discriminator", "in_channels", "n_classes", "base_filters", "max_filters",
                            "n_strided", "kernel_size", "input_scale", "update_every")
        if not 0.0 <= self.dropout < 1.0:
            raise Vox2VoxError(f"discriminator.dropout={self.dropout}: must be in [0, 1)")

    def output_size(self, size: int) -> int:
        """Spatial size of the score map for an input of ``size`` voxels along one axis."""
        return self._sizes(size)[-1]

    def _sizes(self, size: int) -> list[int]:
        """Sizes after each layer along one axis: the strided ones, then the two stride-1 ones."""
        k = self.kernel_size
        pad = (k - 1) // 2
        sizes = []
        for _ in range(self.n_strided):
            size = (size + 2 * pad - k) // 2 + 1
            sizes.append(size)
        for _ in range(2):
            size = size + 2 * 1 - k + 1
            sizes.append(size)
        return sizes

    def fits(self, size: int) -> bool:
        """Whether an input of ``size`` voxels per axis gives a score map and normalisable layers.

        Normalisation (strided layers after the first, and the first stride-1 layer) needs more
        than one voxel to compute statistics; with odd kernels the map can shrink to 1^3 there
        while the score map is still non-empty.
        """
        sizes = self._sizes(size)
        if min(sizes) < 1:
            return False
        normed = sizes[1 : self.n_strided] + [sizes[self.n_strided]]
        return self.norm == "none" or min(normed) >= 2

    def min_input_size(self) -> int:
        """The smallest patch side the critic accepts (before its ``input_scale`` pooling)."""
        size = 1
        while not self.fits(size):
            size += 1
        return size * self.input_scale


class Discriminator(nn.Module):
    """Conditional PatchGAN: ``forward(image, segmentation)`` -> raw patch scores."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        self.config = config
        k = config.kernel_size
        layers: list[nn.Module] = []
        cin = config.in_channels + config.n_classes
        for i in range(config.n_strided):
            cout = min(config.base_filters * 2**i, config.max_filters)
            layers += [Conv3d(cin, cout, k, stride=2, padding=(k - 1) // 2)]
            if i > 0:
                layers.append(make_norm(config.norm, cout, config.norm_eps))
            layers.append(nn.LeakyReLU(config.negative_slope, inplace=True))
            if config.dropout > 0:
                layers.append(nn.Dropout3d(config.dropout))
            cin = cout
        # Two stride-1 convolutions with one voxel of zero padding each (pix2pix-style 'valid'
        # after ZeroPadding), shrinking the map by k - 3 per layer: 16^3 -> 15^3 -> 14^3 for k=4.
        cout = min(config.base_filters * 2**config.n_strided, config.max_filters)
        layers += [
            Conv3d(cin, cout, k, stride=1, padding=1),
            make_norm(config.norm, cout, config.norm_eps),
            nn.LeakyReLU(config.negative_slope, inplace=True),
            Conv3d(cout, 1, k, stride=1, padding=1),
        ]
        self.net = nn.Sequential(*layers)
        init_he_normal(self)

    def forward(self, image: torch.Tensor, segmentation: torch.Tensor, *,
                features: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Raw patch scores; with ``features`` also every hidden layer's activation (after its LeakyReLU)."""
        cfg = self.config
        if image.shape[1] != cfg.in_channels or segmentation.shape[1] != cfg.n_classes:
            raise Vox2VoxError(
                f"discriminator expects image with {cfg.in_channels} channels and segmentation with "
                f"{cfg.n_classes} classes; got {image.shape[1]} and {segmentation.shape[1]}"
            )
        if image.shape[2:] != segmentation.shape[2:]:
            raise Vox2VoxError(
                f"image {tuple(image.shape[2:])} and segmentation {tuple(segmentation.shape[2:])} differ in size"
            )
        smallest = min(image.shape[2:])
        if smallest < cfg.min_input_size():
            raise Vox2VoxError(
                f"patch size {tuple(image.shape[2:])} is too small for the discriminator "
                f"({cfg.n_strided} stride-2 layers need at least {cfg.min_input_size()} voxels per axis)"
            )
        x = torch.cat([image, segmentation.to(image.dtype)], dim=1)
        if cfg.input_scale > 1:
            x = F.avg_pool3d(x, cfg.input_scale)
        if not features:
            return self.net(x)
        hidden = []
        for layer in self.net:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                hidden.append(x)
        return x, hidden
