"""Where a result came from: code version, package versions, hardware."""

from __future__ import annotations

import functools
import hashlib
import platform
import re
import subprocess
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

from . import __version__



@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>+g<git revision>[.dirty]`` when run from a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if not rev:
            return __version__
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{__version__}+g{rev}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return __version__


def package_versions() -> dict[str, str]:
    """Python and every installed package that petseg-bench requires (its own metadata)."""
    out = {"python": platform.python_version()}
    try:
        wanted = [r for r in requires("petseg-bench") or [] if "extra ==" not in r]
    except PackageNotFoundError:
        wanted = []
    for req in wanted:
        name = re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def file_sha256(path: Path, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:length]


def hardware() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    text = f"{cpu}, {torch.get_num_threads()} torch threads, {torch.backends.cpu.get_cpu_capability()}"
    if torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name(0)}"
    return text
