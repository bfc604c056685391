"""Decode and clean one sample: RGB image, 0/1/2 label, void filled or kept as 255.

Problems raise :class:`SampleError` with a one-line reason; the caller drops the sample
and lists it, so one bad file never stops the others.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from ..errors import one_line
from ..labels import IGNORE as VOID  # void pixels kept as "ignore"
from ..labels import N_CLASSES
from .layout import file_problem

VOID_MODES = ("nearest", "ignore")
TRIMAP_VALUES = {1, 2, 3}  # 1 pet, 2 background, 3 border / unclassified
PROCESSED_VALUES = {0, 1, 2, VOID}


class SampleError(Exception):
    """One sample cannot be used; the message is the reason, ``file`` says which file
    ("image" or "mask") it concerns."""

    def __init__(self, reason: str, file: str = "image"):
        super().__init__(reason)
        self.file = file


#: Pillow modes of 16-bit single-channel images (PNG, TIFF, PGM).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")

# The warnings filter is process-wide: opening under a lock keeps two prepare workers
# from restoring each other's filters (header parsing only, so the lock is brief).
_OPEN_LOCK = threading.Lock()


def _open(path: Path, what: str = "image") -> Image.Image:
    """``Image.open`` on a checked regular file, with decompression bombs refused before
    any pixel is decoded (PIL checks the header's size at open)."""
    subject = "" if what == "image" else "mask: "
    problem = file_problem(path)
    if problem:  # a directory, FIFO, dangling link or empty file is never opened
        raise SampleError(subject + problem, what)
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise SampleError(f"{subject}refused as a possible decompression bomb, not decoded "
                          f"({one_line(exc, 120)})", what) from None
    except UnidentifiedImageError:
        raise SampleError(f"{subject}not an image file PIL can read", what) from None
    except (OSError, SyntaxError, ValueError) as exc:
        reason = "truncated or corrupt image" if what == "image" else "mask unreadable"
        raise SampleError(f"{reason} ({one_line(exc, 120)})", what) from None


def _sixteen_to_eight(arr: np.ndarray) -> np.ndarray:
    """0..65535 to 0..255, rounded (v / 257 is exact at 0, 257, ..., 65535)."""
    return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)


def load_rgb(path: Path) -> np.ndarray:
    """Any image content (JPEG, PNG, GIF, ... whatever the extension says) as HxWx3 uint8.

    Grey, palette, RGBA and CMYK images are converted to RGB (alpha dropped, as the
    seed did). 16-bit grey images are scaled to 8 bits (v / 257, rounded), not clipped.
    A truncated or corrupt file, a file that is not a regular non-empty file, an image
    over PIL's decompression-bomb limit and a floating-point image raise SampleError.
    """
    im = _open(path)
    try:
        with im:
            im.load()  # forces a full decode: a truncated JPEG fails here
            if im.mode in SIXTEEN_BIT_MODES or im.mode == "I":
                arr = np.asarray(im)
                lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
                if lo < 0 or hi > 65535:
                    raise SampleError(f"32-bit integer image with values {lo}..{hi}: no known range to scale to 8 bits")
                grey = _sixteen_to_eight(arr)
                return np.repeat(grey[..., None], 3, axis=2)
            if im.mode == "F":
                raise SampleError("floating-point image (mode F): no known range to scale to 8 bits")
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA").convert("RGB")  # drop alpha, keep colours
            elif im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except SampleError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise SampleError(f"truncated or corrupt image ({one_line(exc, 120)})") from None


def load_mask(path: Path, layout: str, species: int) -> np.ndarray:
    """The label map HxW uint8: 0 background, 1 cat, 2 dog, 255 void.

    Official trimaps: 1 pet (-> the species' class), 2 background, 3 void. Processed
    labels are already 0/1/2/255. Values outside the layout's set raise SampleError.
    """
    im = _open(path, "mask")
    try:
        with im:
            im.load()
            arr = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as exc:
        raise SampleError(f"mask unreadable ({one_line(exc, 120)})", "mask") from None
    if arr.ndim == 3:  # an RGB-saved mask: usable only if its channels agree
        if not (arr[..., :1] == arr[..., : min(arr.shape[2], 3)]).all():
            raise SampleError(f"mask has {arr.shape[2]} differing channels; expected a single-channel label map", "mask")
        arr = arr[..., 0]
    # Check the values before narrowing to uint8: a 16-bit 257 must not pass as 1.
    values = set(np.unique(arr).tolist())
    allowed = TRIMAP_VALUES if layout == "official" else PROCESSED_VALUES
    if not values <= allowed:
        bad = sorted(values - allowed)
        raise SampleError(f"mask values {bad[:6]} outside the {layout} layout's set {sorted(allowed)}", "mask")
    arr = arr.astype(np.uint8, copy=False)
    if layout == "official":
        if species not in (1, 2):
            raise SampleError(f"species {species} unknown (list.txt gives 1 cat or 2 dog)", "mask")
        label = np.zeros(arr.shape, np.uint8)
        label[arr == 1] = species
        label[arr == 3] = VOID
        return label
    return arr.copy()


def fill_void(label: np.ndarray, mode: str = "nearest") -> np.ndarray:
    """Void pixels take the class of the nearest valid pixel ("nearest", the seed's
    choice) or stay 255 and are ignored by losses and metrics ("ignore").

    Nearest is Euclidean; when valid pixels of different classes are exactly equally
    near, the lowest class id wins (background before cat before dog), as the seed's
    rule and the spec say. One exact distance transform per class present gives, for
    each void pixel, the squared distance to that class's nearest pixel (integers, so
    ties are exact); the first class with the smallest distance is taken.
    """
    if mode == "ignore":
        return label
    if mode != "nearest":
        raise ValueError(f"void mode must be one of {VOID_MODES}, got {mode!r}")
    void = label == VOID
    if not void.any():
        return label
    if void.all():
        raise SampleError("mask is entirely void", "mask")
    vy, vx = np.nonzero(void)
    best = np.full(len(vy), np.iinfo(np.int64).max, np.int64)
    winner = np.zeros(len(vy), np.uint8)
    for c in range(N_CLASSES):  # ascending: a later class must be strictly nearer to win
        if not (label == c).any():
            continue
        iy, ix = ndimage.distance_transform_edt(label != c, return_distances=False, return_indices=True)
        d2 = (iy[vy, vx].astype(np.int64) - vy) ** 2 + (ix[vy, vx].astype(np.int64) - vx) ** 2
        nearer = d2 < best
        best[nearer] = d2[nearer]
        winner[nearer] = c
    out = label.copy()
    out[vy, vx] = winner
    return out


def load_sample(image_path: Path, mask_path: Path, layout: str, species: int,
                void: str = "nearest") -> tuple[np.ndarray, np.ndarray, int]:
    """Decoded RGB image, cleaned label, and the species (read off the mask when the
    layout has no list). Raises SampleError with the reason the sample must go."""
    image = load_rgb(image_path)
    raw = load_mask(mask_path, layout, species)
    if image.shape[:2] != raw.shape:
        raise SampleError(f"image is {image.shape[1]}x{image.shape[0]} but mask is {raw.shape[1]}x{raw.shape[0]}")
    fg = (raw == 1) | (raw == 2)
    if not fg.any():
        raise SampleError("mask has no foreground (no cat or dog pixel)", "mask")
    if layout != "official":
        has_cat, has_dog = bool((raw == 1).any()), bool((raw == 2).any())
        species = 1 if has_cat and not has_dog else 2 if has_dog and not has_cat else 0
    return image, fill_void(raw, void), species

