"""An uploaded photo as a small RGB array: decoded, turned upright and downscaled first.

Whatever the browser sends (a file, a pasted image, a webcam snapshot) is read here and
nowhere else. The longer side is brought down to :data:`MAX_SIDE` while decoding (JPEG
decodes straight at a reduced scale), so an 8000 x 8000 photo never exists in memory as
a full-size array; anything that is not a usable image gets one line saying why.

Only what the page sent is read: a file Gradio received as an upload (inside its upload
folder) or the pixels of a ``data:`` URL. A path to anything else on the server (named in
a direct API call) is refused with :data:`NOT_SENT`, one line that is the same whether
the path exists, is missing or is a folder: no answer says which server paths exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data.layout import file_problem
from ..errors import PetsegError, one_line

#: Uploads are downscaled to this longer side before anything else happens to them.
MAX_SIDE = 1024
#: Larger images are refused unread (PIL's decompression-bomb guard goes further).
MAX_PIXELS = 120_000_000
#: Smaller images carry too little to segment.
MIN_SIDE = 8
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class UploadError(PetsegError):
    """The upload is not a usable image; the message says why in one line."""


@dataclass(frozen=True)
class Upload:
    image: np.ndarray  # uint8 HxWx3, at most MAX_SIDE on the longer side
    key: str  # content hash: names the image for the perturbations' generators
    original: tuple[int, int]  # (height, width) as uploaded

    @property
    def note(self) -> str:
        h, w = self.image.shape[:2]
        if (h, w) == self.original:
            return f"{w}x{h} px"
        return f"{self.original[1]}x{self.original[0]} px, downscaled to {w}x{h} px"


#: The one answer to a payload naming anything but a file uploaded from the page.
NOT_SENT = "The app reads only photos uploaded from the page: upload the photo again"
#: Gradio's mark on a file-data dict (FileData.meta).
FILE_DATA = "gradio.FileData"


def payload_source(payload, uploads: Path | str) -> str | bytes | None:
    """What a Gradio image component sent: the bytes of a ``data:`` URL, or the path of a
    file-data dict (``path``, ``meta``) naming a regular file inside ``uploads`` (Gradio's
    upload folder), symlinks and ``..`` resolved. Anything else is :data:`NOT_SENT`."""
    if payload is None:
        return None
    if isinstance(payload, dict):
        url = payload.get("url")
        if not payload.get("path") and isinstance(url, str) and url.startswith("data:"):
            try:
                return base64.b64decode(url.partition(",")[2], validate=False)
            except (binascii.Error, ValueError):
                raise UploadError("The pasted image could not be read (bad data URL)") from None
        path = uploaded_path(payload, uploads)
        if path is not None:
            return path
    raise UploadError(NOT_SENT)


def uploaded_path(payload: dict, uploads: Path | str) -> str | None:
    """The real path of the file ``payload`` names when Gradio received it as an upload:
    marked as file data, inside ``uploads`` once resolved, a regular file; else None.
    Which test fails is not said (the same answer for every path outside)."""
    path, meta = payload.get("path"), payload.get("meta")
    if not isinstance(path, str) or not path or not isinstance(meta, dict) or meta.get("_type") != FILE_DATA:
        return None
    try:
        real, root = os.path.realpath(path), os.path.realpath(uploads)
        inside = real != root and os.path.commonpath([real, root]) == root
    except (ValueError, OSError):  # a NUL byte, a mix of drive letters...
        return None
    return real if inside and os.path.isfile(real) else None


def load_upload(source: str | Path | bytes, max_side: int = MAX_SIDE) -> Upload:
    """Decode ``source`` (a path or the file's bytes) to an RGB array whose longer side is
    at most ``max_side``; UploadError with one line for anything unusable."""
    if isinstance(source, (str, Path)):
        problem = file_problem(source)
        if problem:
            raise UploadError(f"The upload cannot be read: {problem}")
        source = Path(source)
    im = _open(source if isinstance(source, Path) else io.BytesIO(source))
    with im:
        original = (im.height, im.width)
        if im.width * im.height > MAX_PIXELS:
            raise UploadError(f"The image is {im.width}x{im.height} px ({im.width * im.height / 1e6:.0f} MP); "
                              f"images up to {MAX_PIXELS // 1_000_000} MP are accepted")
        if min(original) < MIN_SIDE:
            raise UploadError(f"The image is {im.width}x{im.height} px; at least {MIN_SIDE} px on each side is needed")
        image = _decode_small(im, max_side)
    return Upload(image, hashlib.sha1(image.tobytes()).hexdigest()[:16], original)


def _open(fp) -> Image.Image:
    """``Image.open`` (the header only), with decompression bombs refused unread."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError("The image is too large to open (refused as a possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise UploadError("The upload is not an image (expected a photo: JPEG, PNG, WebP, GIF, BMP or TIFF)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UploadError(f"The image file is corrupt ({one_line(exc, 120)})") from None


def _decode_small(im: Image.Image, max_side: int) -> np.ndarray:
    """The pixels of ``im`` as uint8 RGB at most ``max_side`` long: JPEGs decode at a
    reduced scale (``draft``), the rest are reduced right after decoding."""
    try:
        if im.format == "JPEG":
            scale = max(im.width, im.height) / max_side
            if scale > 1:
                im.draft("RGB", (max(1, int(im.width / scale)), max(1, int(im.height / scale))))
        im.load()  # a truncated file fails here
        if im.mode in ("RGB", "RGBA", "L", "LA"):  # shrink before any copy is made
            _shrink(im, max_side)
        im = _to_rgb(ImageOps.exif_transpose(im))  # phone photos stand upright
        _shrink(im, max_side)
        return np.asarray(im, dtype=np.uint8).copy()
    except UploadError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise UploadError(f"The image file is truncated or corrupt ({one_line(exc, 120)})") from None


def _shrink(im: Image.Image, max_side: int) -> None:
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any mode as RGB: alpha dropped, palettes expanded, 16-bit grey scaled (v / 257)."""
    if im.mode in SIXTEEN_BIT:
        arr = np.asarray(im)
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
            raise UploadError("A 32-bit integer image: no known range to scale to 8 bits")
        grey = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if im.mode == "F":
        raise UploadError("A floating-point image: no known range to scale to 8 bits")
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        return im.convert("RGBA").convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")
