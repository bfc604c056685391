"""Batched prediction at original resolution, shared by validation, ``evaluate`` and the sweep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

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
    #: With torch.compile, batches are padded to this size so one graph serves the
    #: whole sweep (a smaller last batch would otherwise trigger a recompile).
    pad_to: int | None = None
    #: Input pixels per forward: larger batches run in slices, which bounds the
    #: activation memory (16 images at 256 px) without costing throughput.
    max_pixels: int = 16 * 256 * 256

    def __post_init__(self) -> None:
        self.model.eval()
        self.forward = self.model

    @property
    def slice_size(self) -> int:
        return max(1, self.max_pixels // (self.config.in_size ** 2))

    def compile(self, batch_size: int) -> None:
        """Compile the forward (torch.compile): slower first batch, faster after."""
        self.forward = torch.compile(self.model, dynamic=False)
        self.pad_to = min(batch_size, self.slice_size)

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
        step = self.slice_size
        outs = []
        for start in range(0, images_u8.shape[0], step):
            part = {k: v[start:start + step] for k, v in inputs.items()}
            n = next(iter(part.values())).shape[0]
            if self.pad_to and n < self.pad_to:
                part = {k: _pad(v, self.pad_to) for k, v in part.items()}
            with rt.autocast():
                outs.append(self.forward(**part)[:n].float())
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def letterbox(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray] | None = None):
        if "point" in self.spec.inputs and labels is None:
            raise ValueError("the point model needs ground truth to place its evaluation click")
        return letterbox_batch(images, self.config.in_size, labels if "point" in self.spec.inputs else None)

    def predict(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray] | None = None,
                clip_features: torch.Tensor | None = None) -> list[np.ndarray]:
        """Label maps at each image's original resolution."""
        batch, boxes, points = self.letterbox(images, labels)
        return restore(self.logits(batch, points, clip_features), boxes)


def _pad(x: torch.Tensor, n: int) -> torch.Tensor:
    pad = x.new_zeros((n - x.shape[0],) + tuple(x.shape[1:]))
    return torch.cat([x, pad]).contiguous(memory_format=torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)


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
    """Un-pad each image's logits, resize them (bilinear) to its original size, argmax.

    OpenCV's resize on HWC float32 and a per-class running maximum are several times
    faster here than torch's interpolate and argmax on the CPU, with the same result
    (half-pixel centres, first class wins ties).
    """
    batch = logits.float().cpu().permute(0, 2, 3, 1).numpy()  # [B, S, S, C]
    out = []
    for lg, lb in zip(batch, boxes):
        content = np.ascontiguousarray(lg[lb.top:lb.top + lb.new_h, lb.left:lb.left + lb.new_w])
        if content.shape[:2] != (lb.height, lb.width):
            content = cv2.resize(content, (lb.width, lb.height), interpolation=cv2.INTER_LINEAR)
            if content.ndim == 2:  # OpenCV drops a single channel axis
                content = content[..., None]
        out.append(argmax_last(content))
    return out


def argmax_last(x: np.ndarray) -> np.ndarray:
    """``argmax`` over the last axis as uint8; the first class wins ties, as np.argmax."""
    idx = np.zeros(x.shape[:-1], np.uint8)
    best = x[..., 0].copy()
    for c in range(1, x.shape[-1]):
        better = x[..., c] > best
        idx[better] = c
        np.maximum(best, x[..., c], out=best)
    return idx


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
