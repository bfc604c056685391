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


#: CPU flags that change results: which bf16 / matrix kernels torch can use (Intel AMX,
#: AVX-512 BF16), the vector width, and Arm's bf16 extension ("Features" on aarch64).
RESULT_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_info(cpuinfo: str | None = None) -> dict:
    """``{"model": ..., "flags": [...]}`` of the first CPU in ``/proc/cpuinfo`` (or the text
    given); the model falls back to :func:`platform.processor` where there is no cpuinfo."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name") or fields.get("hardware") or platform.processor() or platform.machine()
    present = set((fields.get("flags") or fields.get("features") or "").split())
    return {"model": model or "unknown CPU", "flags": [f for f in RESULT_FLAGS if f in present]}


def hardware_info() -> dict:
    """What the machine is, as data: CPU model, the result-changing CPU flags, the torch
    thread count and CPU capability, the GPU (None without one)."""
    import torch

    cpu = cpu_info()
    return {"cpu": cpu["model"], "machine": platform.machine(), "cpu_flags": cpu["flags"],
            "torch_threads": torch.get_num_threads(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def bf16_matmul_units(info: dict | None = None) -> str:
    """What multiplies bf16 matrices on this CPU, read from its :data:`RESULT_FLAGS`:
    AMX tiles, AVX-512 BF16 dot products, Arm's bf16 extension, or none (emulated)."""
    flags = set((info or hardware_info())["cpu_flags"])
    if {"amx_tile", "amx_bf16"} <= flags:
        return "AMX (amx_bf16)"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16 (avx512_bf16), no AMX"
    if "bf16" in flags:
        return "Arm bf16 extension"
    return "no native bf16 (emulated)"


def hardware(info: dict | None = None) -> str:
    """:func:`hardware_info` in one line, e.g. ``AMD EPYC 7B13 (x86_64; avx2), 2 torch threads, AVX2``."""
    info = info or hardware_info()
    flags = " ".join(info["cpu_flags"]) or "no avx2/avx512/amx/bf16 flags"
    text = (f"{info['cpu']} ({info['machine']}; {flags}), {info['torch_threads']} torch threads, "
            f"{info['torch_cpu_capability']}")
    if info.get("gpu"):
        text += f"; GPU {info['gpu']}"
    return text
