"""Shared building blocks of the built-in models: the classic U-Net parts.

Channel widths follow the original U-Net scaled by ``base`` (64 in the paper):
``base, 2b, 4b, 8b`` at the four skip levels and ``16b // factor`` at the
bottleneck, where ``factor`` is 2 with bilinear upsampling and 1 with transposed
convolutions. Four 2x max-pool downs give an ``in_size / 16`` bottleneck (16x16 at
256 px).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from petseg_bench.specs import ModelOption

#: The width and the dropout of the models built from these blocks: their own options
#: (``--base-channels``, ``--dropout``), set per training profile (``Profile.options``).
BASE_CHANNELS = ModelOption("base_channels", 64, "channel width of the first U-Net level (the paper's 64)",
                            flag="--base-channels")
DROPOUT = ModelOption("dropout", 0.0, "Dropout2d probability after each double convolution (0..1)", flag="--dropout")


def check_width_and_dropout(options: dict) -> dict:
    """ValueError with one line when ``base_channels`` or ``dropout`` (where declared) is out of range."""
    if options.get("base_channels", 1) < 1:
        raise ValueError(f"base_channels must be >= 1, got {options['base_channels']}")
    if not 0.0 <= options.get("dropout", 0.0) <= 1.0:
        raise ValueError(f"dropout must be within 0..1, got {options['dropout']}")
    return options


class DoubleConv(nn.Module):
    """(3x3 conv without bias -> BatchNorm -> ReLU) x 2, then Dropout2d when ``dropout > 0``."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None, dropout: float = 0.0):
        super().__init__()
        mid = mid_channels or out_channels
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Down(nn.Module):
    """2x2 max-pool, then :class:`DoubleConv`."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(in_channels, out_channels, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Up(nn.Module):
    """2x upsampling, concatenation with a skip (when ``skip_channels > 0``), :class:`DoubleConv`.

    ``bilinear``: parameter-free bilinear upsampling keeps ``in_channels``; otherwise a
    2x2 stride-2 ConvTranspose2d halves them. With ``skip_channels == 0`` the block
    has no skip connection (the decoder of the CLIP-only model).
    """

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int = 0, bilinear: bool = True, dropout: float = 0.0):
        super().__init__()
        self.skip_channels = skip_channels
        if bilinear:
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            up_channels = in_channels
            cat = up_channels + skip_channels
            self.conv = DoubleConv(cat, out_channels, mid_channels=max(cat // 2, out_channels), dropout=dropout)
        else:
            up_channels = max(in_channels // 2, 1)
            self.up = nn.ConvTranspose2d(in_channels, up_channels, kernel_size=2, stride=2)
            self.conv = DoubleConv(up_channels + skip_channels, out_channels, dropout=dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if self.skip_channels:
            if skip is None:
                raise ValueError("this Up block was built with a skip connection but got none")
            dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            if dy or dx:  # odd sizes: pad the upsampled map to the skip's size
                x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


class OutConv(nn.Module):
    """1x1 convolution to class logits."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def bottleneck_channels(base: int, bilinear: bool) -> int:
    """Channels of the U-Net bottleneck: ``16 * base // factor`` (factor 2 if bilinear)."""
    return 16 * base // (2 if bilinear else 1)


class UNetEncoder(nn.Module):
    """The contracting path: ``forward(x) -> (skips, bottleneck)``.

    ``skips`` are the four feature maps at full, 1/2, 1/4 and 1/8 resolution (channels
    ``base, 2b, 4b, 8b``); the bottleneck is at 1/16 with ``16b // factor`` channels.
    """

    def __init__(self, in_channels: int = 3, base: int = 64, dropout: float = 0.0, bilinear: bool = True):
        super().__init__()
        b = base
        self.out_channels = bottleneck_channels(b, bilinear)
        self.inc = DoubleConv(in_channels, b, dropout=dropout)
        self.down1 = Down(b, 2 * b, dropout)
        self.down2 = Down(2 * b, 4 * b, dropout)
        self.down3 = Down(4 * b, 8 * b, dropout)
        self.down4 = Down(8 * b, self.out_channels, dropout)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        return [x1, x2, x3, x4], self.down4(x4)


class UNetDecoder(nn.Module):
    """The expanding path: ``forward(bottleneck, skips=None) -> logits``.

    Takes a ``[B, 16b // factor, s, s]`` tensor and returns ``[B, n_classes, 16 s, 16 s]``.
    With ``skips=False`` it uses no skip connections (``skips`` must then be None).
    """

    def __init__(self, base: int = 64, n_classes: int = 3, bilinear: bool = True, dropout: float = 0.0, skips: bool = True):
        super().__init__()
        b = base
        factor = 2 if bilinear else 1
        self.use_skips = skips
        self.in_channels = bottleneck_channels(b, bilinear)
        level = [8 * b, 4 * b, 2 * b, b]  # skip channels, deepest first
        outs = [8 * b // factor, 4 * b // factor, 2 * b // factor, b]
        ins = [self.in_channels] + outs[:-1]
        self.ups = nn.ModuleList(
            Up(i, o, skip_channels=s if skips else 0, bilinear=bilinear, dropout=dropout)
            for i, o, s in zip(ins, outs, level)
        )
        self.outc = OutConv(b, n_classes)

    def forward(self, x: torch.Tensor, skips: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        if self.use_skips:
            if skips is None or len(skips) != 4:
                raise ValueError("UNetDecoder built with skips=True needs the encoder's 4 skip tensors")
            for up, skip in zip(self.ups, reversed(list(skips))):
                x = up(x, skip)
        else:
            for up in self.ups:
                x = up(x)
        return self.outc(x)


def click_heatmaps(points: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Gaussian click heatmaps ``h = exp(-d^2 / (2 sigma^2))``: points ``[B, 2]`` as (y, x)
    in pixels of the ``size x size`` input -> float32 ``[B, 1, size, size]``."""
    coords = torch.arange(size, dtype=torch.float32, device=points.device)
    dy = (coords.view(1, size) - points[:, 0:1].float()) ** 2  # [B, size]
    dx = (coords.view(1, size) - points[:, 1:2].float()) ** 2
    d2 = dy[:, :, None] + dx[:, None, :]
    return torch.exp(-d2 / (2.0 * sigma * sigma)).unsqueeze(1)
