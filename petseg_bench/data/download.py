"""Download and unpack the official Oxford-IIIT Pet release (``images`` + ``annotations``).

Standard library (urllib) plus tqdm only. Each archive streams to ``NAME.part``, resumes
with an HTTP Range request after an interruption, and becomes ``NAME`` only once its MD5
matches, so a half-written or corrupted archive is never mistaken for a good one.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import platformdirs
from tqdm import tqdm

from petseg_bench.errors import DataError

OFFICIAL_BASE_URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/data/"


@dataclass(frozen=True)
class ReleaseFile:
    """One archive of the release: its file name under the base URL and its MD5."""

    name: str
    md5: str


# The same checksums torchvision uses (torchvision/datasets/oxford_iiit_pet.py,
# OxfordIIITPet._RESOURCES).
RELEASE_FILES: tuple[ReleaseFile, ...] = (
    ReleaseFile("images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c"),
    ReleaseFile("annotations.tar.gz", "95a8c909bbe2e81eed6a22bccdf3f68f"),
)

MARKER = ".petseg_extracted"
_CHUNK = 1 << 16
_RETRY_DELAY = 1.0  # seconds, times the attempt number; tests set it to 0


def default_data_root() -> Path:
    """``$PETSEG_CACHE/oxford-iiit-pet``, else the user cache folder's ``oxford-iiit-pet``."""
    cache = os.environ.get("PETSEG_CACHE") or platformdirs.user_cache_dir("petseg-bench")
    return Path(cache).expanduser() / "oxford-iiit-pet"


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _fetch_once(url: str, part: Path, timeout: float, progress: bool) -> None:
    """One attempt: append to ``part`` from its current size. Network errors propagate."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        # A fresh opener per attempt so proxy settings are read from the environment now.
        resp = urllib.request.build_opener().open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:  # nothing left after `have`: the .part is complete
            return
        raise
    with resp:
        if have and resp.status != 206:  # the server ignored Range: start again from zero
            have = 0
        length = resp.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        got = 0
        with open(part, "ab" if have else "wb") as f, tqdm(
            total=None if expected is None else have + expected, initial=have, unit="B",
            unit_scale=True, desc=part.name[: -len(".part")], disable=not progress, file=sys.stderr,
        ) as bar:
            while chunk := resp.read(_CHUNK):
                f.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    # http.client returns b"" rather than raising when the peer closes early.
    if expected is not None and got < expected:
        raise ConnectionError(f"connection closed after {have + got} of {have + expected} bytes")


def _download(url: str, rf: ReleaseFile, dest: Path, progress: bool, timeout: float, retries: int) -> None:
    final, part = dest / rf.name, dest / f"{rf.name}.part"
    if final.exists():
        if _md5(final) == rf.md5:
            return
        final.unlink()  # stale or corrupted: fetch it again
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, timeout, progress)
            break
        except urllib.error.HTTPError as e:
            if e.code < 500 or attempt == retries:  # 4xx will not fix itself
                raise DataError(f"could not download {url}: HTTP {e.code} {e.reason}") from None
        except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets
            if attempt == retries:
                reason = " ".join(str(getattr(e, "reason", None) or e).split()) or type(e).__name__
                raise DataError(f"could not download {url}: {reason}") from None
        time.sleep(_RETRY_DELAY * (attempt + 1))
    actual = _md5(part)
    if actual != rf.md5:
        part.unlink()
        raise DataError(f"{rf.name}: MD5 mismatch (expected {rf.md5}, got {actual}); deleted the download")
    os.replace(part, final)


def _extract(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest``, refusing members that would land outside it."""
    # The "data" filter (Python 3.10.12+/3.11.4+) also blocks devices and escaping links;
    # the explicit check below covers older Pythons and gives a clear message.
    kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(archive, "r:*") as tf:
            for m in tf:  # streaming: one pass over the gzip stream
                for p in (m.name, m.linkname if (m.issym() or m.islnk()) else ""):
                    pp = PurePosixPath(p.replace("\\", "/"))
                    if pp.is_absolute() or ".." in pp.parts:
                        raise DataError(f"{archive.name}: refusing unsafe member {p!r}")
                tf.extract(m, dest, **kwargs)
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{archive.name}: could not extract: {e}") from None


def download_release(
    dest: Path,
    base_url: str = OFFICIAL_BASE_URL,
    files: Sequence[ReleaseFile] = RELEASE_FILES,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
) -> Path:
    """Download, verify and extract the release into ``dest``; return ``dest``.

    Idempotent: archives already present with the right MD5 are not fetched again, and
    once ``dest/.petseg_extracted`` records these files the call returns immediately
    (so the archives may be deleted after extraction to save space).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    marker = dest / MARKER
    stamp = "".join(f"{rf.md5}  {rf.name}\n" for rf in files)
    if marker.exists() and marker.read_text() == stamp:
        return dest
    base = base_url if base_url.endswith("/") else base_url + "/"
    for rf in files:
        _download(base + rf.name, rf, dest, progress, timeout, retries)
    for rf in files:
        _extract(dest / rf.name, dest)
    tmp = marker.with_name(MARKER + ".tmp")
    tmp.write_text(stamp)
    os.replace(tmp, marker)  # written last, so an interrupted extraction is redone
    return dest
