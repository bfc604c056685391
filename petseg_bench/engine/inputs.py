"""A model's forward arguments from a letterboxed uint8 batch, as its spec declares them.

``image``: normalised with the spec's mean/std; ``point``: the clicks; ``backbone``: the
features of the model's frozen backbone, from a :class:`~petseg_bench.backbones.FeatureCache`
so that models sharing a backbone compute them once per batch. Everything runs on whole
batches in torch, in channels_last (faster convolutions on oneDNN and cuDNN); a
letterboxed batch arrives in that layout already (``letterbox_batch``), so the image
needs no transposing copy.
"""

from __future__ import annotations

import torch

from ..backbones import Backbone, FeatureCache
from ..specs import ModelSpec


def normalise(images_u8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float32 ``(x / 255 - mean) / std``."""
    x = images_u8.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def model_inputs(spec: ModelSpec, images_u8: torch.Tensor, points: torch.Tensor | None,
                 backbone: Backbone | None, cache: FeatureCache, autocast) -> dict:
    """The keyword arguments of the model's forward for the inputs its spec names."""
    out: dict = {"image": normalise(images_u8, spec.mean, spec.std).contiguous(memory_format=torch.channels_last)}
    if "point" in spec.inputs:
        if points is None:
            raise ValueError(f"model {spec.name} needs click points")
        out["point"] = points.to(images_u8.device)
    if "backbone" in spec.inputs:
        if backbone is None:
            raise ValueError(f"model {spec.name} needs its backbone")
        # the backbone's resize runs on the plain layout it has always had: its features unchanged
        out["backbone"] = cache.get(backbone, images_u8.contiguous(), autocast)
    return out
