"""What an attack (a perturbation with ``target="model"``) gets from the engine.

An adversarial perturbation is computed per model from the model's own gradient, on the
image that model sees: the letterboxed batch as float pixels in 0..255 (before the
spec's mean/std), at the model's input size. :func:`differentiable_forward` is the
model's forward on such a batch, built exactly as the predictor builds its inputs
(normalisation, channels_last, the frozen backbone's preprocessing) but without
``torch.no_grad``, without in-place ops on its input and, for the gradient, in fp32:
the frozen backbone is differentiated through (its ``extract``, not its
``no_grad`` ``forward``) and a point model's click is passed unchanged (it is not
attacked). :func:`attack_labels` are the ground truths at that resolution, 255 where
nothing is scored (void and the letterbox's padding); :func:`attack_rng` seeds one
generator per (run seed, attack, level, image, model).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones import Backbone
from ..data.letterbox import Letterbox
from ..labels import IGNORE
from .predictor import Predictor


def attack_rng(seed: int, perturbation: str, level: int, image_id: str, model: str) -> np.random.Generator:
    """The generator of one (run seed, attack, level, image, model): an attack's random
    start then depends on nothing else (batch, order, shard, resume)."""
    key = [seed, zlib.crc32(perturbation.encode()), level, zlib.crc32(image_id.encode()), zlib.crc32(model.encode())]
    return np.random.default_rng(np.random.SeedSequence(key))


def attack_labels(labels: Sequence[np.ndarray], boxes: Sequence[Letterbox]) -> torch.Tensor:
    """Ground truths letterboxed like the images, int64 ``[B, S, S]``: 0 background, 1 cat,
    2 dog, 255 (ignored by the loss) for void and for the padding, which is never scored."""
    out = np.full((len(boxes), boxes[0].size, boxes[0].size), IGNORE, np.int64) if boxes else \
        np.zeros((0, 0, 0), np.int64)
    for i, (lab, box) in enumerate(zip(labels, boxes)):
        out[i, box.top:box.top + box.new_h, box.left:box.left + box.new_w] = box.crop(box.apply(lab, label=True))
    return torch.from_numpy(out)


def _backbone_input(backbone: Backbone, x255: torch.Tensor) -> torch.Tensor:
    """:func:`~petseg_bench.backbones.backbone_input` of a float 0..255 batch, out of place."""
    pre = backbone.preprocess
    x = x255.contiguous() / 255.0
    if x.shape[-2:] != (pre.size, pre.size):
        smooth = pre.interpolation in ("bilinear", "bicubic")
        x = F.interpolate(x, size=(pre.size, pre.size), mode=pre.interpolation,
                          align_corners=False if smooth else None, antialias=smooth).clamp(0.0, 1.0)
    mean = torch.tensor(pre.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def differentiable_forward(pr: Predictor, points: torch.Tensor | None = None,
                           autocast: Callable | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``forward(x)``: float ``[B, 3, S, S]`` pixels in 0..255 -> float32 logits
    ``[B, C, S, S]``, differentiable with respect to ``x``. In fp32 unless ``autocast``
    (a context factory, e.g. the run's ``Runtime.autocast``) is given; the model in eval
    mode (its BatchNorms folded as the predictor has them). ``points``: the click of each
    image for a point model (its ``point`` input, the same in every call)."""
    spec, model = pr.spec, pr.model
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
    if "point" in spec.inputs and points is None:
        raise ValueError(f"model {spec.name} needs click points")

    def forward(x: torch.Tensor) -> torch.Tensor:
        dev = x.device
        image = ((x / 255.0 - mean.to(dev)) / std.to(dev)).contiguous(memory_format=torch.channels_last)
        kwargs: dict = {"image": image}
        if "point" in spec.inputs:
            kwargs["point"] = points.to(dev)
        ctx = autocast() if autocast is not None else torch.autocast(dev.type, enabled=False)
        with ctx:
            if "backbone" in spec.inputs:
                # extract, not the backbone's no_grad forward: the gradient flows through it
                kwargs["backbone"] = pr.backbone.extract(_backbone_input(pr.backbone, x)).float()
            return model(**kwargs).float()

    return forward


@dataclass(frozen=True)
class AttackLevel:
    """One attack at one level of a run: the plugin's ``attack(forward, images, labels,
    value, rngs)`` (see ``PerturbationSpec.attack``), its name, the level, the level's
    value and the run's seed (what :func:`attack_rng` seeds by)."""

    attack: Callable
    name: str
    value: float
    level: int
    seed: int


def attacked_logits(at: AttackLevel, model: str, pr: Predictor, images_u8: torch.Tensor, boxes: Sequence[Letterbox],
                    points: torch.Tensor | None, labels: Sequence[np.ndarray], ids: Sequence[str]) -> torch.Tensor:
    """The logits ``[B, C, S, S]`` of ``pr`` on its letterboxed batch after the attack
    ``at`` at its level's value: attacked in slices of the predictor's size (activations and their
    gradients bounded as for inference), then scored by the same forward under the run's
    precision. A plugin that raises, or returns anything but finite float images of the
    input's shape within 0..255, gets one line naming the attack, the level and the model."""
    from ..errors import ModelRunError, PluginError, one_line

    name, level = at.name, at.level
    device = pr.runtime.device
    x = images_u8.to(device).float()
    y = attack_labels(labels, boxes).to(device)
    rngs = [attack_rng(at.seed, name, level, i, model) for i in ids]
    step = pr.slice_size
    out = []
    for lo in range(0, len(x), step):
        part = slice(lo, lo + step)
        pts = None if points is None else points[part]
        forward = differentiable_forward(pr, pts)
        xs = x[part]
        try:
            adv = at.attack(forward, xs.clone(), y[part].clone(), at.value, rngs[part])
        except Exception as exc:  # noqa: BLE001 - a plugin's failure becomes one line naming it
            raise PluginError(f"attack {name} level {level} failed on model {model} (images {ids[lo]}..): "
                              f"{type(exc).__name__}: {one_line(exc)}") from None
        if not isinstance(adv, torch.Tensor) or adv.shape != xs.shape or not adv.is_floating_point():
            got = f"{adv.dtype} {tuple(adv.shape)}" if isinstance(adv, torch.Tensor) else type(adv).__name__
            raise PluginError(f"attack {name} level {level} returned {got} on model {model}; expected float "
                              f"images {tuple(xs.shape)}")
        adv = adv.detach().to(device, torch.float32)
        if not bool(torch.isfinite(adv).all()) or float(adv.min()) < 0 or float(adv.max()) > 255:
            raise PluginError(f"attack {name} level {level} returned pixels outside 0..255 (or not finite) "
                              f"on model {model}")
        try:
            with torch.no_grad():
                out.append(differentiable_forward(pr, pts, pr.runtime.autocast)(adv))
        except Exception as exc:  # noqa: BLE001 - the model's forward failing: one line naming it
            raise ModelRunError.from_exception(pr.spec.name, exc) from None
    if not out:
        return torch.zeros((0, pr.config.n_classes) + tuple(x.shape[-2:]))
    return out[0] if len(out) == 1 else torch.cat(out)


def model_attack(spec, level: int, seed: int) -> Callable:
    """``attack(model, predictor, images, boxes, points, labels, ids) -> logits`` of an
    attack spec at ``level``: what :func:`~.inference.inference_on_dataset` calls per model."""
    at = AttackLevel(spec.attack, spec.name, float(spec.levels[level]), level, seed)

    def run(model: str, pr: Predictor, images_u8, boxes, points, labels, ids) -> torch.Tensor:
        return attacked_logits(at, model, pr, images_u8, boxes, points, labels, ids)

    return run
