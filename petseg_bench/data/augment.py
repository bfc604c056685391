"""The training augmentation (Albumentations, image and mask together, seeded).

The six transforms and probabilities are the seed study's: horizontal flip 0.5,
rotate +-20 degrees 0.5, elastic 0.2, grid distortion 0.2, colour jitter 0.3,
Gaussian noise 0.3. Geometric transforms fill with 0 (image) and background (mask),
matching the letterbox padding.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import

import albumentations as A  # noqa: E402
import cv2  # noqa: E402


def training_augmentation(seed: int) -> A.Compose:
    border = dict(border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0)
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Rotate(limit=20, p=0.5, **border),
            A.ElasticTransform(p=0.2, **border),
            A.GridDistortion(p=0.2, **border),
            A.ColorJitter(p=0.3),
            A.GaussNoise(p=0.3),
        ],
        seed=seed,
    )
