"""The residual generator (``generator.arch = "residual"``): a 3D U-Net of residual units.

Where the paper's generator (:mod:`vox2vox.model.generator`) uses 4^3 stride-2 convolutions and a
wide bottleneck at 1/16 resolution, this one has two 3^3 convolutions in a residual unit at every
level, a stride-2 unit per level down, a transposed convolution plus a residual unit per level up,
and an output stage at full resolution. It is MONAI's ``UNet`` (``num_res_units=2``, instance norm):
the network the quality study found learning fastest on a CPU budget (docs/method.md, "Choices
beyond the paper"). Same contract as the paper's generator: probabilities (or logits) for every
class, input sizes multiples of ``2 ** depth``, and the GAN, losses and inference are unchanged.
"""

from __future__ import annotations

import torch
from monai.networks.nets import UNet
from torch import nn

from vox2vox.model.generator import Generator, GeneratorConfig
from vox2vox.model.outputs import activate


class ResidualGenerator(nn.Module):
    """``forward(x)`` -> ``(B, n_classes, D, H, W)`` probabilities (float32; softmax, or sigmoid per region)."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        channels = [min(config.base_filters * 2**i, config.max_filters) for i in range(config.depth + 1)]
        self.net = UNet(spatial_dims=3, in_channels=config.in_channels, out_channels=config.n_classes,
                        channels=channels, strides=(2,) * config.depth, num_res_units=2,
                        norm=("instance", {"affine": True}), dropout=config.dropout)
        # Deep supervision: a 1x1x1 head on the decoder's output at 1/2 and 1/4 resolution. MONAI's
        # UNet nests (down, SkipConnection(inner), up) per level; level k's `up` gives channels[k-1]
        # at 1/2^k. Hooks keep those features during training steps only.
        self.aux_heads = nn.ModuleList()
        self._aux_features: list[torch.Tensor] = []
        if config.deep_supervision:
            level, ups = self.net.model, []
            while isinstance(level, nn.Sequential) and len(level) == 3:
                ups.append(level[2])
                level = level[1].submodule
            for k, up in enumerate(ups[1:3], start=1):
                self.aux_heads.append(nn.Conv3d(channels[k - 1], config.n_classes, kernel_size=1))
                up.register_forward_hook(self._keep_aux_feature)
        # On the CPU the narrow 3^3 convolutions run about 1.3-1.5x faster channels-last (oneDNN);
        # weights are stored in that format once, inputs are converted in forward.
        self._channels_last = True
        self.to(memory_format=torch.channels_last_3d)

    def _keep_aux_feature(self, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        if self.training and torch.is_grad_enabled():
            self._aux_features.append(output)

    def aux_outputs(self) -> list[torch.Tensor]:
        """Probabilities of the last training forward's deep-supervision heads, finest first (then
        forgotten); empty without deep supervision or outside training."""
        # Hooks fire innermost first: reversed, the 1/2-resolution feature comes first.
        features, self._aux_features = list(reversed(self._aux_features)), []
        return [activate(head(f), self.config.output) for head, f in zip(self.aux_heads, features, strict=False)]

    def check_input(self, x: torch.Tensor) -> None:
        """The same input rules and messages as the paper's generator (they depend on the config only)."""
        Generator.check_input(self, x)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor, *, return_logits: bool = False) -> torch.Tensor:
        self.check_input(x)
        self._aux_features = []
        if x.device.type == "cpu" and self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        logits = self.net(x).contiguous()
        if return_logits:
            return logits
        return activate(logits, self.config.output)


def build_generator(config: GeneratorConfig) -> nn.Module:
    """The generator ``config.arch`` names: the paper's or the residual U-Net."""
    return ResidualGenerator(config) if config.arch == "residual" else Generator(config)
