"""Built-in model family ``torchscript:FILE``: a TorchScript segmentation model.

Loaded with ``torch.jit.load``: TorchScript code runs in torch's own interpreter and its
constants are read by a restricted unpickler (tensors and plain values), so no Python
object from the file is unpickled. ``forward(image[, point])`` positionally, the same
tensors as an ONNX file (see :mod:`.onnx_model`); the metadata lives in the archive's
extra file ``petseg.json`` (``petseg-bench export`` writes it).
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from petseg_bench import hookimpl
from petseg_bench.errors import PetsegError, one_line
from petseg_bench.families import (META_FILE, META_KEYS, ModelFamilySpec, meta_from_json, model_file, model_file_spec,
                                   renormaliser)
from petseg_bench.specs import ModelConfig, ModelSpec

_LOCK = threading.Lock()


def load(path: Path) -> tuple[torch.jit.ScriptModule, dict[str, str]]:
    """The scripted module (eval mode, CPU) and its metadata, or one line."""
    extra = {META_FILE: ""}
    try:
        with _LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, ValueError...
        raise PetsegError(f"torchscript:{path}: not a loadable TorchScript file ({one_line(exc, 200)})") from None
    meta = {k: v for k, v in meta_from_json(extra[META_FILE]).items() if k in META_KEYS}
    return module.eval(), meta


def arity(key: str, module) -> tuple[str, ...]:
    """The model's inputs from its forward's schema: (image) or (image, point)."""
    try:
        args = [a.name for a in module.forward.schema.arguments][1:]
    except (AttributeError, RuntimeError):
        args = ["image"]
    if len(args) == 1:
        return ("image",)
    if len(args) == 2 and args[1] == "point":
        return ("image", "point")
    raise PetsegError(f"{key}: forward takes ({', '.join(args)}); a segmentation model takes the image "
                      f"(and optionally 'point'): refused")


class ScriptedModel(nn.Module):
    """A TorchScript file as a module. The scripted module is kept out of the module
    tree (its BatchNorms are not folded again, its weights are not a checkpoint's)."""

    def __init__(self, key: str, path: Path, config: ModelConfig, spec_mean, spec_std):
        super().__init__()
        self.key = key
        module, _ = load(path)
        self._held = [module]
        self.inputs = arity(key, module)
        self.scale, self.shift, self.flip, self.perm = renormaliser(spec_mean, spec_std, config.options)

    def _apply(self, fn, *args, **kwargs):  # .to(device) reaches the held module too
        self._held[0]._apply(fn, *args, **kwargs) if hasattr(self._held[0], "_apply") else None
        return super()._apply(fn, *args, **kwargs)

    def forward(self, image: torch.Tensor, point: torch.Tensor | None = None) -> torch.Tensor:
        x = image
        if self.scale is not None:
            x = x * self.scale.to(x.device, x.dtype) + self.shift.to(x.device, x.dtype)
        if self.flip:
            x = x.flip(1)
        args = (x,) if "point" not in self.inputs else (x, point)
        y = self._held[0](*args)
        if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[0] != x.shape[0] or y.shape[1] != 3 \
                or y.shape[2:] != x.shape[2:]:
            got = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise PetsegError(f"{self.key}: returned {got} for input {list(x.shape)}; expected (N, 3, H, W) "
                              f"class logits at the input size: refused")
        return y[:, self.perm] if self.perm != [0, 1, 2] else y


def build_spec(argument: str) -> ModelSpec:
    key = f"torchscript:{argument}"
    path = model_file(key, argument)
    module, meta = load(path)
    return model_file_spec(key, path, meta, arity(key, module), None, "TorchScript",
                           lambda config, mean, std: ScriptedModel(key, path, config, mean, std))


@hookimpl
def petseg_bench_model_families():
    return [ModelFamilySpec(name="torchscript", build=build_spec, model_file=True, example="torchscript:model.pt",
                            description="a TorchScript file (torch.jit.load; evaluation only)")]
