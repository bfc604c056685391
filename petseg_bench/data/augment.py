"""Training augmentations (Albumentations, image and mask together, seeded), by name.

- ``seed``: the seed study's six transforms and probabilities: horizontal flip 0.5,
  rotate +-20 degrees 0.5, elastic 0.2, grid distortion 0.2, colour jitter 0.3,
  Gaussian noise 0.3.
- ``light``: flip, scale/shift/crop and colour jitter only; what fine-tuning a pretrained
  encoder wants (elastic and grid warps and pixel noise took validation mIoU down there).
- ``none``: nothing.

``salt_pepper`` (a probability) adds the seed's own proposal against its worst corruption:
salt-and-pepper noise after the rest (:func:`salt_and_pepper`), per channel value as the
sweep's perturbation, at an amount drawn uniformly up to the sweep's top level.
Geometric transforms fill with 0 (image) and background (mask), matching the letterbox
padding.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from ..config import AUGMENTATIONS  # noqa: E402


def _border() -> dict:
    return dict(border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0)


def _seed_transforms() -> list:
    return [
        A.HorizontalFlip(p=0.5),
        A.Rotate(limit=20, p=0.5, **_border()),
        A.ElasticTransform(p=0.2, **_border()),
        A.GridDistortion(p=0.2, **_border()),
        A.ColorJitter(p=0.3),
        A.GaussNoise(p=0.3),
    ]


def _light_transforms() -> list:
    return [
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.75, 1.25), translate_percent=(-0.1, 0.1), rotate=(-10, 10), p=0.7, **_border()),
        A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.8),
    ]


#: The sweep's salt_and_pepper tops out at 0.18 of the channel values.
SALT_PEPPER_MAX = 0.18


def training_augmentation(seed: int, name: str = "seed") -> A.Compose:
    if name not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {name!r}")
    transforms = {"seed": _seed_transforms, "light": _light_transforms, "none": list}[name]()
    return A.Compose(transforms, seed=seed)


def salt_and_pepper(image: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """With probability ``p``, set each channel value to 255 or 0 (half each) with a
    probability drawn uniformly in [0, SALT_PEPPER_MAX]; the image is returned as is otherwise."""
    if p <= 0 or rng.random() >= p:
        return image
    amount = rng.uniform(0.0, SALT_PEPPER_MAX)
    hit = rng.random(image.shape) < amount
    salt = rng.random(image.shape) < 0.5
    out = image.copy()
    out[hit & salt] = 255
    out[hit & ~salt] = 0
    return out
