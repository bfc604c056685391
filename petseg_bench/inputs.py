"""Model inputs from letterboxed uint8 batches: normalised RGB, CLIP image, click heatmap.

Everything here runs on whole batches in torch, so the per-image work before a
forward is only the letterbox (in numpy/OpenCV).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OpenAI CLIP's preprocessing (open_clip's OPENAI_DATASET_MEAN / _STD), at 224 px.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224

#: How the evaluation click is placed; reported with every point-model result.
EVAL_CLICK_RULE = ("the foreground pixel deepest inside the pet (largest distance to the background) "
                   "in the letterboxed ground truth; first in raster order on ties")


def _norm(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def normalise(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` -> float32 ImageNet-normalised."""
    return _norm(images_u8.float().div_(255.0), IMAGENET_MEAN, IMAGENET_STD)


def clip_image(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, S, S]`` -> CLIP's input: 224 px, CLIP mean/std."""
    x = images_u8.float().div_(255.0)
    if x.shape[-1] != CLIP_SIZE or x.shape[-2] != CLIP_SIZE:
        x = F.interpolate(x, size=(CLIP_SIZE, CLIP_SIZE), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp_(0.0, 1.0)
    return _norm(x, CLIP_MEAN, CLIP_STD)


def heatmaps(points: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Gaussian click heatmaps ``h = exp(-d^2 / (2 sigma^2))``: points ``[B, 2]`` as (y, x)
    in pixels of the ``size x size`` input -> ``[B, 1, size, size]``."""
    coords = torch.arange(size, dtype=torch.float32, device=points.device)
    dy = (coords.view(1, size) - points[:, 0:1].float()) ** 2  # [B, size]
    dx = (coords.view(1, size) - points[:, 1:2].float()) ** 2
    d2 = dy[:, :, None] + dx[:, None, :]
    return torch.exp(-d2 / (2.0 * sigma * sigma)).unsqueeze(1)


def eval_click(label: np.ndarray) -> tuple[int, int]:
    """The deterministic evaluation click (y, x): see EVAL_CLICK_RULE.

    The seed used the centre of mass, which can fall off a curled-up pet; the
    distance-transform maximum always lies on the object.
    """
    fg = (label == 1) | (label == 2)
    if not fg.any():
        return label.shape[0] // 2, label.shape[1] // 2
    dist = ndimage.distance_transform_edt(np.pad(fg, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(y), int(x)


def train_click(label: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """A training click drawn uniformly from the ground-truth foreground."""
    ys, xs = np.nonzero((label == 1) | (label == 2))
    if len(ys) == 0:
        return label.shape[0] // 2, label.shape[1] // 2
    k = int(rng.integers(len(ys)))
    return int(ys[k]), int(xs[k])


def model_inputs(needs: tuple[str, ...], images_u8: torch.Tensor, points: torch.Tensor | None,
                 sigma: float, channels_last: bool = False) -> dict[str, torch.Tensor]:
    """The keyword arguments a model's forward takes, for the inputs it declares."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = {"image": normalise(images_u8).contiguous(memory_format=fmt)}
    if "point" in needs:
        if points is None:
            raise ValueError("this model needs click points")
        out["point"] = heatmaps(points, images_u8.shape[-1], sigma).contiguous(memory_format=fmt)
    if "clip_image" in needs:
        out["clip_image"] = clip_image(images_u8).contiguous(memory_format=fmt)
    return out
