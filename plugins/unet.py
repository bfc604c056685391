"""Built-in model ``unet``: the classic U-Net (the seed's baseline)."""

from __future__ import annotations

import torch
from torch import nn

from petseg_bench import hookimpl
from petseg_bench.specs import ModelConfig, ModelSpec

from .blocks import UNetDecoder, UNetEncoder


class UNet(nn.Module):
    """U-Net: 4 max-pool downs, bilinear (or transposed-conv) ups with skip concatenation."""

    def __init__(self, config: ModelConfig, in_channels: int = 3):
        super().__init__()
        c = config
        self.encoder = UNetEncoder(in_channels, c.base_channels, c.dropout, c.bilinear)
        self.decoder = UNetDecoder(c.base_channels, c.n_classes, c.bilinear, c.dropout, skips=True)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        skips, x = self.encoder(image)
        return self.decoder(x, skips)


def build(config: ModelConfig) -> nn.Module:
    config.validate()
    return UNet(config)


@hookimpl
def petseg_bench_models():
    return [
        ModelSpec(
            name="unet",
            build=build,
            description="U-Net (4 downs, 16x16 bottleneck at 256 px, skip concatenation), trained from scratch",
            inputs=("image",),
        )
    ]
