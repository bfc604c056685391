"""Frozen backbones: the contract a backbone plugin fulfils, and the process-wide cache.

A backbone is chosen by a key ``<family>:<argument>`` (``efficientnet:lite0``,
``efficientnet:lite0:none``): the family names a :class:`~petseg_bench.specs.BackboneSpec`
registered through the ``petseg_bench_backbones`` hook, whose ``build(argument)``
returns a :class:`Backbone`. The backbone declares, as data, what it needs
(:class:`Preprocess`: mean, std, input size, interpolation) and what it gives
(a pooled embedding of ``embed_dim``, optionally feature maps with
``feature_channels``). Models that use one name its key in an option; the harness
builds it once per process (:func:`load_backbone`), computes its features once per batch
for every model that shares it (:class:`FeatureCache`), and passes them to the models as
their ``backbone`` input.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .bn_fold import fold_batchnorm
from .errors import PetsegError, PluginError, call_plugin

#: Values of a weights argument that mean "random initialisation".
RANDOM_INIT = ("none", "random", "")


@dataclass(frozen=True)
class Preprocess:
    """How a backbone wants its input: RGB in 0..1 resized to ``size`` (torch
    ``interpolate`` mode, antialiased when shrinking), then ``(x - mean) / std``."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int
    interpolation: str = "bicubic"


@dataclass
class Features:
    """What a backbone gives for a batch: ``embedding [B, D]`` and ``maps`` (coarser
    feature maps ``[B, C_i, H_i, W_i]``, finest first; may be empty)."""

    embedding: torch.Tensor
    maps: tuple[torch.Tensor, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return self.embedding.shape[0]

    def __getitem__(self, index: slice) -> "Features":
        return Features(self.embedding[index], tuple(m[index] for m in self.maps))

    def to(self, device: torch.device) -> "Features":
        return Features(self.embedding.to(device), tuple(m.to(device) for m in self.maps))

    def float(self) -> "Features":
        return Features(self.embedding.float(), tuple(m.float() for m in self.maps))


class Backbone(nn.Module):
    """Base class of frozen feature extractors.

    Subclasses set ``key`` (the full key), ``label`` (what reports call it, e.g.
    "EfficientNet-Lite0 (ImageNet)"), ``preprocess``, ``embed_dim``, ``feature_channels``
    and ``random_init`` (True when the weights are random: reports warn), and implement
    :meth:`extract`. Parameters are frozen and the module stays in eval mode.
    """

    key: str
    label: str
    preprocess: Preprocess
    embed_dim: int
    feature_channels: tuple[int, ...] = ()
    random_init: bool = False

    def freeze(self) -> "Backbone":
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> "Backbone":  # noqa: ARG002 - frozen: always eval
        return super().train(False)

    def extract(self, x: torch.Tensor) -> Features:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> Features:
        return self.extract(x)

    def describe(self) -> dict:
        """The record kept in checkpoints, run.json and reports."""
        return {"key": self.key, "label": self.label, "random_init": bool(self.random_init)}


def backbone_input(pre: Preprocess, images_u8: torch.Tensor) -> torch.Tensor:
    """Letterboxed uint8 ``[B, 3, S, S]`` -> the backbone's input (its size, mean, std)."""
    x = images_u8.float().div_(255.0)
    if x.shape[-2:] != (pre.size, pre.size):
        smooth = pre.interpolation in ("bilinear", "bicubic")
        x = F.interpolate(x, size=(pre.size, pre.size), mode=pre.interpolation,
                          align_corners=False if smooth else None, antialias=smooth)
        x = x.clamp_(0.0, 1.0)
    mean = torch.tensor(pre.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def split_key(key: str) -> tuple[str, str]:
    """``family:argument`` -> (family, argument); one clear line when malformed."""
    family, sep, arg = str(key).partition(":")
    if not sep or not family:
        raise PetsegError(f"backbone key {key!r} must look like <family>:<argument>, e.g. efficientnet:lite0")
    return family, arg


_CACHE: dict[str, Backbone] = {}
_LOCK = threading.Lock()


def load_backbone(key: str) -> Backbone:
    """The frozen backbone for ``key``, built once per process and shared by every model."""
    with _LOCK:
        found = _CACHE.get(key)
        if found is None:
            found = _build(key)
            _CACHE[key] = found
        return found


def _build(key: str) -> Backbone:
    from .plugins import get_registry

    family, arg = split_key(key)
    spec = get_registry().get("backbone", family)
    backbone = call_plugin(f"backbone {key!r} failed to build", spec.build, arg)
    if not isinstance(backbone, Backbone):
        raise PluginError(f"backbone plugin {family!r} returned {type(backbone).__name__}, not a Backbone")
    backbone.key = key
    # channels_last like the models: oneDNN's fastest convolution layout; frozen, so
    # always in eval mode: its BatchNorms fold into the convolutions for good
    backbone = backbone.freeze().to(memory_format=torch.channels_last)
    fold_batchnorm(backbone)
    return backbone


def clear_cache() -> None:
    """Forget every built backbone (tests; or to free memory)."""
    with _LOCK:
        _CACHE.clear()


class FeatureCache:
    """Backbone features of one batch, computed once per (backbone, input size) and
    shared by every model of that batch that uses the same backbone."""

    def __init__(self) -> None:
        self._store: dict[tuple[str, int], Features] = {}

    def get(self, backbone: Backbone, images_u8: torch.Tensor, autocast) -> Features:
        slot = (backbone.key, int(images_u8.shape[-1]))
        if slot not in self._store:
            with torch.no_grad(), autocast():
                self._store[slot] = backbone(backbone_input(backbone.preprocess, images_u8)).float()
        return self._store[slot]


def keys_in_use(keys: Sequence[str | None]) -> list[str]:
    """Distinct backbone keys, in first-seen order."""
    return list(dict.fromkeys(k for k in keys if k))
