"""Device and precision choices, made once and recorded with every result; how the
per-image work around the forward shares the CPU cores (:func:`in_parallel`)."""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import torch

from ..errors import PetsegError

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_supports_bf16() -> bool:
    """bf16 autocast only pays on CPUs with native bf16 (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - an older torch without the probe
        return False


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # "fp32" | "bf16" | "fp16" (CUDA AMP without bf16)

    @classmethod
    def choose(cls, device: str = "auto", precision: str = "auto") -> "Runtime":
        if device == "auto":
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            try:
                dev = torch.device(device)
            except RuntimeError:
                raise PetsegError(f"--device {device!r} is not a torch device (try cpu, cuda, cuda:0)") from None
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise PetsegError("--device cuda asked for, but no CUDA device is available")
        if precision not in PRECISIONS:
            raise PetsegError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision == "auto":
            if dev.type == "cuda":
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                precision = "bf16" if cpu_supports_bf16() else "fp32"
        return cls(dev, precision)

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def describe(self) -> str:
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
        else:
            name = f"CPU, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}"
        return f"{self.device.type} ({name}), {self.precision}"

    def device_kind(self) -> str:
        """What decides the numbers a device computes: the GPU model, or the CPU's vector
        instructions (not the thread count, nor which of two equal GPUs)."""
        if self.device.type == "cuda":
            return f"cuda ({torch.cuda.get_device_name(self.device)})"
        return f"{self.device.type} ({torch.backends.cpu.get_cpu_capability()})"

    @property
    def overlaps_host_work(self) -> bool:
        """Whether the per-image work (perturbation, letterbox, scoring) runs on helper
        threads beside the forward: on a GPU, whose forward leaves the CPU cores free.
        On the CPU the forward's own threads use every core: a helper thread beside it
        takes cores and the GIL from the forward's threads and slows both, so the work
        runs between forwards instead, split over the same threads (:func:`in_parallel`)."""
        return self.device.type != "cpu"


def compile_cache_dir() -> Path:
    """Where torch.compile keeps its compiled kernels between runs: ``inductor`` beside the
    prepared-data cache (PETSEG_CACHE), unless TORCHINDUCTOR_CACHE_DIR names another folder
    (not torch's own /tmp default, which importing inductor writes into that variable)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default

    from ..data.cache import default_cache_dir

    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if given and os.path.abspath(given) != os.path.abspath(torch_default()):
        return Path(given)
    return default_cache_dir().parent / "inductor"


def compiled(module: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(module)`` (inductor, static shapes) with its graphs and kernels kept
    in :func:`compile_cache_dir`, so a second run loads them instead of compiling again.
    Lazy: the compile happens at the first call."""
    folder = compile_cache_dir()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)  # read by inductor when it first compiles
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True  # the forward and backward graphs' kernels
    functorch_config.enable_autograd_cache = True  # the joint forward+backward graph itself
    return torch.compile(module, dynamic=False)


T = TypeVar("T")
_POOL: dict[tuple[int, int], ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()
_IN_WORKER = threading.local()


def in_parallel(fn: Callable[[int, int], list[T]], n: int) -> list[T]:
    """``fn(lo, hi)`` (a list for items ``lo..hi-1``) over ``range(n)`` in contiguous
    parts, one per torch thread, the caller's thread doing the first; the lists joined
    in order. Items must be independent (per-image work whose numpy and OpenCV calls
    release the GIL); with one thread, or from inside a part, it is one plain call."""
    threads = min(torch.get_num_threads(), n)
    if threads <= 1 or getattr(_IN_WORKER, "active", False):
        return list(fn(0, n))
    bounds = [n * i // threads for i in range(threads + 1)]
    pool = _workers(threads - 1)
    parts = [pool.submit(_run_part, fn, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    out = _run_part(fn, bounds[0], bounds[1])
    for part in parts:
        out += part.result()
    return out


def _run_part(fn: Callable[[int, int], list[T]], lo: int, hi: int) -> list[T]:
    _IN_WORKER.active = True
    try:
        return list(fn(lo, hi))
    finally:
        _IN_WORKER.active = False


def _workers(n: int) -> ThreadPoolExecutor:
    """The process's helper threads (made again in a forked child, where they are gone)."""
    key = (os.getpid(), n)
    with _POOL_LOCK:
        if key not in _POOL:
            _POOL[key] = ThreadPoolExecutor(n, thread_name_prefix="petseg-host")
        return _POOL[key]
