"""Batched prediction at original resolution, shared by validation, ``evaluate`` and the sweep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data.letterbox import Letterbox
from .inputs import eval_click, model_inputs
from .metrics import confusion_matrix
from .runtime import Runtime
from .specs import ModelConfig, ModelSpec


@dataclass
class Predictor:
    model: torch.nn.Module
    spec: ModelSpec
    config: ModelConfig
    runtime: Runtime

    def __post_init__(self) -> None:
        self.model.eval()

    @torch.no_grad()
    def logits(self, images_u8: torch.Tensor, points: torch.Tensor | None = None,
               clip_features: torch.Tensor | None = None) -> torch.Tensor:
        """Letterboxed uint8 batch ``[B, 3, S, S]`` -> float logits ``[B, C, S, S]``."""
        rt = self.runtime
        if self.model.training:  # the training loop validates between epochs: never in train mode
            self.model.eval()
        images_u8 = images_u8.to(rt.device, non_blocking=True)
        needs = self.spec.inputs
        if clip_features is not None:
            needs = tuple(n for n in needs if n != "clip_image")
        inputs = model_inputs(needs, images_u8, None if points is None else points.to(rt.device),
                              self.config.heatmap_sigma, rt.channels_last)
        if clip_features is not None:
            inputs["clip_features"] = clip_features.to(rt.device)
        with rt.autocast():
            return self.model(**inputs).float()

    def letterbox(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray] | None = None):
        if "point" in self.spec.inputs and labels is None:
            raise ValueError("the point model needs ground truth to place its evaluation click")
        return letterbox_batch(images, self.config.in_size, labels if "point" in self.spec.inputs else None)

    def predict(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray] | None = None,
                clip_features: torch.Tensor | None = None) -> list[np.ndarray]:
        """Label maps at each image's original resolution."""
        batch, boxes, points = self.letterbox(images, labels)
        return restore(self.logits(batch, points, clip_features), boxes)


def letterbox_batch(images: Sequence[np.ndarray], size: int, labels: Sequence[np.ndarray] | None = None):
    """Letterboxed uint8 batch ``[B, 3, S, S]``, the geometries, and the evaluation clicks
    ``[B, 2]`` placed on the letterboxed ground truth (only when ``labels`` are given)."""
    boxes = [Letterbox.fit(im.shape[0], im.shape[1], size) for im in images]
    batch = np.stack([lb.apply(im) for lb, im in zip(boxes, images)]).transpose(0, 3, 1, 2)
    points = None
    if labels is not None:
        points = torch.tensor([eval_click(lb.apply(lab, label=True)) for lb, lab in zip(boxes, labels)])
    return torch.from_numpy(np.ascontiguousarray(batch)), boxes, points


def restore(logits: torch.Tensor, boxes: Sequence[Letterbox]) -> list[np.ndarray]:
    """Un-pad each image's logits, resize them (bilinear) to its original size, argmax."""
    # channels_last logits make every per-image crop strided, which slows the
    # interpolate and argmax below several times over.
    logits = logits.contiguous()
    out = []
    for lg, lb in zip(logits, boxes):
        content = lb.crop(lg)[None].contiguous()
        if content.shape[-2:] != (lb.height, lb.width):
            content = F.interpolate(content, size=(lb.height, lb.width), mode="bilinear", align_corners=False)
        out.append(np.argmax(content[0].cpu().numpy(), axis=0).astype(np.uint8))  # numpy: ~10x faster than torch here
    return out


def confusion_over(predictor: Predictor, prepared, positions: Sequence[int], batch_size: int = 16,
                   progress=None) -> np.ndarray:
    """Per-image confusion matrices ``[N, C, C]`` of ``predictor`` on the given images."""
    mats = []
    for start in range(0, len(positions), batch_size):
        chunk = positions[start:start + batch_size]
        images = [prepared.image(int(p)) for p in chunk]
        labels = [prepared.label(int(p)) for p in chunk]
        preds = predictor.predict(images, labels)
        mats += [confusion_matrix(p, t, predictor.config.n_classes) for p, t in zip(preds, labels)]
        if progress is not None:
            progress.update(len(chunk))
    return np.stack(mats) if mats else np.zeros((0, predictor.config.n_classes, predictor.config.n_classes), np.int64)
