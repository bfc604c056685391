"""Built-in model ``unet``: the classic U-Net (the seed's baseline)."""

from __future__ import annotations

import torch
from torch import nn

from petseg_bench import hookimpl
from petseg_bench.specs import ModelConfig, ModelOption, ModelSpec, PaperFigures

from .blocks import BASE_CHANNELS, DROPOUT, UNetDecoder, UNetEncoder, check_width_and_dropout

UPSAMPLE = ("bilinear", "transposed")


class UNet(nn.Module):
    """U-Net: 4 max-pool downs, bilinear (or transposed-conv) ups with skip concatenation."""

    def __init__(self, config: ModelConfig, in_channels: int = 3):
        super().__init__()
        bilinear, base, dropout = config.opt("upsample") == "bilinear", config.opt("base_channels"), config.opt("dropout")
        self.encoder = UNetEncoder(in_channels, base, dropout, bilinear)
        self.decoder = UNetDecoder(base, config.n_classes, bilinear, dropout, skips=True)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        skips, x = self.encoder(image)
        return self.decoder(x, skips)


def build(config: ModelConfig) -> nn.Module:
    config.validate()
    return UNet(config)


def upgrade_upsample(options: dict) -> dict:
    """Options of a format-1 checkpoint: ``bilinear: bool`` became ``upsample``."""
    if "bilinear" in options:
        options["upsample"] = "bilinear" if options.pop("bilinear") else "transposed"
    return options


@hookimpl
def petseg_bench_models():
    return [
        ModelSpec(
            name="unet",
            label="U-Net",
            build=build,
            description="U-Net (4 downs, 16x16 bottleneck at 256 px, skip concatenation), trained from scratch",
            inputs=("image",),
            options=(ModelOption("upsample", "bilinear", "decoder upsampling", UPSAMPLE, flag="--upsample"),
                     BASE_CHANNELS, DROPOUT),
            prepare_options=check_width_and_dropout,
            upgrade=upgrade_upsample,
            reference=True,  # the plain baseline CE and mCE are normalised by
            # From scratch it needs more epochs than the pretrained models for the same budget.
            profiles={"reference": {"epochs": 24, "restart_epochs": 24}},
            paper=PaperFigures("U-Net", (0.68, 0.75, 0.87), (0.84, 0.68, 0.52)),
        )
    ]
