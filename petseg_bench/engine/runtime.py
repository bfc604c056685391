"""Device and precision choices, made once and recorded with every result."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

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
