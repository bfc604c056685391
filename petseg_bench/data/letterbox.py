"""Letterbox: scale the longer side to ``size`` keeping aspect, zero-pad to a square.

The geometry is kept so that predictions go back exactly to the original mask
resolution: :meth:`Letterbox.invert` removes the padding, then resizes to the original
size. Padding is split evenly (as Albumentations' PadIfNeeded does), label pad is 0
(background).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Letterbox:
    size: int
    height: int  # original
    width: int
    new_h: int  # content after scaling
    new_w: int
    top: int
    left: int

    @classmethod
    def fit(cls, height: int, width: int, size: int) -> "Letterbox":
        scale = size / max(height, width)
        new_h = min(size, max(1, round(height * scale)))
        new_w = min(size, max(1, round(width * scale)))
        return cls(size, height, width, new_h, new_w, (size - new_h) // 2, (size - new_w) // 2)

    def apply(self, arr: np.ndarray, *, label: bool = False) -> np.ndarray:
        """Image (HxWxC, area/linear) or label map (HxW, nearest) to ``size x size``."""
        if arr.shape[:2] != (self.height, self.width):
            raise ValueError(f"array is {arr.shape[:2]}, letterbox was fitted to {(self.height, self.width)}")
        if (self.new_h, self.new_w) == (self.height, self.width):
            scaled = arr
        else:
            shrink = self.new_h < self.height
            interp = cv2.INTER_NEAREST if label else (cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            scaled = cv2.resize(arr, (self.new_w, self.new_h), interpolation=interp)
        out = np.zeros((self.size, self.size) + arr.shape[2:], dtype=arr.dtype)
        out[self.top:self.top + self.new_h, self.left:self.left + self.new_w] = scaled
        return out

    def crop(self, arr: np.ndarray) -> np.ndarray:
        """The content region of a letterboxed ``HxW`` or ``HxWxC`` array."""
        return arr[self.top:self.top + self.new_h, self.left:self.left + self.new_w]

    def invert(self, arr: np.ndarray, *, label: bool = False) -> np.ndarray:
        """A ``size x size`` array (HxW label map, nearest; or HxWxC scores, bilinear) back
        to the original ``height x width``: the exact inverse of :meth:`apply` when no
        resize was needed, half-pixel-centred resampling otherwise."""
        content = np.ascontiguousarray(self.crop(arr))
        if content.shape[:2] == (self.height, self.width):
            return content
        interp = cv2.INTER_NEAREST if label else cv2.INTER_LINEAR
        out = cv2.resize(content, (self.width, self.height), interpolation=interp)
        return out[..., None] if content.ndim == 3 and out.ndim == 2 else out  # OpenCV drops a single channel
