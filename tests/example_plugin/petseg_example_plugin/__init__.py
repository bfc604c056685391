"""A third-party petseg-bench plugin: a tiny fully-convolutional segmenter (``example_fcn``)
and a tiny frozen backbone family (``example_pool``), registered from outside petseg-bench.

The backbone is a toy: it mean-pools the image into a 2x2 grid and maps those 12 numbers
through a fixed random projection to an ``embed_dim``-d embedding (key
``example_pool:<embed_dim>``, 8 when omitted). It declares its own preprocessing (64 px,
bilinear, mean and std 0.5), so any built-in model that takes a backbone
(``clip_unet --model-opt backbone=example_pool:8``) uses it with no change to the core.
"""

import torch
import torch.nn.functional as F
from torch import nn

from petseg_bench import hookimpl
from petseg_bench.backbones import Backbone, Features, Preprocess
from petseg_bench.specs import BackboneSpec, ModelConfig, ModelOption, ModelSpec


class TinyFCN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.opt("width")
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, config.n_classes, 1),
        )

    def forward(self, image):
        return self.net(image)


def build(config: ModelConfig) -> nn.Module:
    config.validate()
    return TinyFCN(config)


POOL_SIZE = 64  # the input size this backbone asks for
POOL_GRID = 2  # the image is mean-pooled to POOL_GRID x POOL_GRID per channel
POOL_SEED = 1234  # the projection is random but the same in every process
DEFAULT_DIM = 8


class MeanPoolBackbone(Backbone):
    """``extract(x [B, 3, 64, 64]) -> Features(embedding [B, embed_dim], maps=([B, 3, 8, 8],))``."""

    def __init__(self, embed_dim: int = DEFAULT_DIM):
        super().__init__()
        self.key = f"example_pool:{embed_dim}"
        self.label = f"example mean-pool projection ({embed_dim}-d)"
        self.preprocess = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), size=POOL_SIZE,
                                     interpolation="bilinear")
        self.embed_dim = embed_dim
        self.feature_channels = (3,)
        self.random_init = True  # a random projection: reports say so
        g = torch.Generator().manual_seed(POOL_SEED)
        features = 3 * POOL_GRID * POOL_GRID
        self.register_buffer("projection", torch.randn(features, embed_dim, generator=g) / features ** 0.5)
        self.freeze()

    def extract(self, x: torch.Tensor) -> Features:
        if x.shape[-2:] != (POOL_SIZE, POOL_SIZE):
            raise ValueError(f"example_pool takes {POOL_SIZE}x{POOL_SIZE} inputs, got {tuple(x.shape[-2:])}")
        pooled = F.adaptive_avg_pool2d(x, POOL_GRID).flatten(1)
        embedding = pooled @ self.projection.to(pooled.dtype)
        return Features(embedding, (F.avg_pool2d(x, POOL_SIZE // 8),))


def build_pool(argument: str) -> MeanPoolBackbone:
    """``example_pool:<embed_dim>`` (8 when omitted)."""
    text = argument.strip()
    if not text:
        return MeanPoolBackbone()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"example_pool takes a positive embedding size (example_pool:8), got {argument!r}")
    return MeanPoolBackbone(int(text))


@hookimpl
def petseg_bench_models():
    return [ModelSpec(name="example_fcn", build=build, description="third-party example: 2-layer FCN",
                      options=(ModelOption("width", 8, "channels of its two convolutions", flag="--width"),))]


@hookimpl
def petseg_bench_backbones():
    return [BackboneSpec(name="example_pool", build=build_pool, example="example_pool:8",
                         description="third-party example: mean-pooled image, fixed random projection")]
