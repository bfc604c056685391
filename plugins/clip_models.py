"""Built-in CLIP models: ``clip_only``, ``clip_unet`` and ``point_clip_unet``.

Each runs the frozen CLIP image encoder (:mod:`.clip_backbone`) on ``clip_image``
(CLIP preprocessing, 224 px), projects the ``[B, embed_dim]`` embedding with a
trainable Linear to a ``[B, 16b // factor, in_size/16, in_size/16]`` tensor, and
decodes it with a U-Net decoder. Every model's forward is::

    forward(image, clip_image=None, point=None, clip_features=None) -> logits [B, 3, H, W]

``clip_features`` (``[B, embed_dim]``), when given, replaces running CLIP on
``clip_image``: a sweep computes the features once per backbone (``model.clip_key``)
and shares them between models.
"""

from __future__ import annotations

import torch
from torch import nn

from petseg_bench import hookimpl
from petseg_bench.specs import LossWeights, ModelConfig, ModelSpec

from .blocks import UNetDecoder, UNetEncoder, bottleneck_channels
from .clip_backbone import load_clip


class _ClipSegmenter(nn.Module):
    """Frozen CLIP + trainable projection + U-Net decoder; optionally a U-Net encoder beside CLIP."""

    def __init__(self, config: ModelConfig, encoder_channels: int | None):
        super().__init__()
        c = config
        self.clip = load_clip(c.clip_model, c.clip_pretrained)
        self.clip_key = self.clip.key
        self.fuse = c.fuse_clip
        self.channels = bottleneck_channels(c.base_channels, c.bilinear)
        self.spatial = c.in_size // 16
        self.project = nn.Linear(self.clip.embed_dim, self.channels * self.spatial * self.spatial)
        self.encoder = (
            UNetEncoder(encoder_channels, c.base_channels, c.dropout, c.bilinear) if encoder_channels else None
        )
        self.decoder = UNetDecoder(c.base_channels, c.n_classes, c.bilinear, c.dropout, skips=self.encoder is not None)

    def clip_tensor(self, clip_image: torch.Tensor | None, clip_features: torch.Tensor | None) -> torch.Tensor:
        """The projected CLIP embedding as a ``[B, C, s, s]`` bottleneck-shaped tensor."""
        if clip_features is None:
            if clip_image is None:
                raise ValueError(f"{type(self).__name__} needs clip_image or clip_features")
            clip_features = self.clip(clip_image)
        if clip_features.ndim != 2 or clip_features.shape[1] != self.clip.embed_dim:
            raise ValueError(
                f"clip_features must be [B, {self.clip.embed_dim}] for {self.clip_key}, got {tuple(clip_features.shape)}"
            )
        w = self.project.weight
        if not torch.is_autocast_enabled(w.device.type):
            clip_features = clip_features.to(device=w.device, dtype=w.dtype)
        x = self.project(clip_features)
        return x.view(x.shape[0], self.channels, self.spatial, self.spatial)

    def _fuse_and_decode(self, x: torch.Tensor, clip_image, clip_features) -> torch.Tensor:
        assert self.encoder is not None
        skips, bottleneck = self.encoder(x)
        if bottleneck.shape[-2:] != (self.spatial, self.spatial):
            raise ValueError(
                f"model built for in_size {self.spatial * 16}, got an input of {x.shape[-2]}x{x.shape[-1]}"
            )
        clip_map = self.clip_tensor(clip_image, clip_features).to(bottleneck.dtype)
        fused = bottleneck + clip_map if self.fuse == "add" else clip_map
        return self.decoder(fused, skips)


class ClipOnly(_ClipSegmenter):
    """CLIP embedding -> Linear -> bottleneck tensor -> U-Net decoder without skips."""

    def __init__(self, config: ModelConfig):
        super().__init__(config, encoder_channels=None)

    def forward(self, image=None, clip_image=None, point=None, clip_features=None) -> torch.Tensor:  # noqa: ARG002
        return self.decoder(self.clip_tensor(clip_image, clip_features))


class ClipUNet(_ClipSegmenter):
    """U-Net encoder and frozen CLIP side by side, fused at the bottleneck; decoder with skips."""

    def __init__(self, config: ModelConfig):
        super().__init__(config, encoder_channels=3)

    def forward(self, image, clip_image=None, point=None, clip_features=None) -> torch.Tensor:  # noqa: ARG002
        return self._fuse_and_decode(image, clip_image, clip_features)


class PointClipUNet(_ClipSegmenter):
    """CLIP+U-Net whose encoder takes 4 channels: RGB and the click heatmap."""

    def __init__(self, config: ModelConfig):
        super().__init__(config, encoder_channels=4)

    def forward(self, image, clip_image=None, point=None, clip_features=None) -> torch.Tensor:
        if point is None:
            raise ValueError("point_clip_unet needs the point heatmap (point=[B, 1, H, W])")
        if point.ndim == 3:
            point = point.unsqueeze(1)
        x = torch.cat([image, point.to(image.dtype)], dim=1)
        return self._fuse_and_decode(x, clip_image, clip_features)


def build_clip_only(config: ModelConfig) -> nn.Module:
    config.validate()
    return ClipOnly(config)


def build_clip_unet(config: ModelConfig) -> nn.Module:
    config.validate()
    return ClipUNet(config)


def build_point_clip_unet(config: ModelConfig) -> nn.Module:
    config.validate()
    return PointClipUNet(config)


@hookimpl
def petseg_bench_models():
    return [
        ModelSpec(
            name="clip_only",
            build=build_clip_only,
            description="Frozen CLIP image embedding -> linear -> bottleneck tensor -> U-Net decoder without skips",
            inputs=("image", "clip_image"),
        ),
        ModelSpec(
            name="clip_unet",
            build=build_clip_unet,
            description="U-Net with the projected frozen-CLIP embedding added to (or replacing) its bottleneck",
            inputs=("image", "clip_image"),
        ),
        ModelSpec(
            name="point_clip_unet",
            build=build_point_clip_unet,
            description="CLIP+U-Net whose encoder also takes a Gaussian heatmap of one click (RGB + point, 4 channels)",
            inputs=("image", "point", "clip_image"),
            loss=LossWeights(ce=3.0, dice=0.3),
            defaults={"fuse_clip": "add"},
        ),
    ]
