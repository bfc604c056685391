"""Built-in model family ``onnx:FILE``: an ONNX segmentation model run with onnxruntime.

The file takes the letterboxed, normalised image ``[N, 3, S, S]`` float32 (and, when it
has a second input named ``point``, the click ``[N, 2]`` int64) and returns logits
``[N, 3, S, S]``. Its size, normalisation, channel and class order come from its
``metadata_props`` (``petseg.in_size`` ... as ``petseg-bench export`` writes them, see
:data:`petseg_bench.families.META_KEYS`). A fixed batch size is served by padding
with zero images. CPU execution provider; CUDA's where onnxruntime has it and the run is
on a GPU.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import torch
from torch import nn

from petseg_bench import hookimpl
from petseg_bench.errors import PetsegError
from petseg_bench.families import META_KEYS, ModelFamilySpec, model_file, model_file_spec, renormaliser
from petseg_bench.specs import ModelConfig, ModelSpec

INSTALL = "onnxruntime is not installed: pip install 'petseg-bench[onnx]'"


def read_meta(path: Path) -> dict[str, str]:
    meta = session(path).get_modelmeta().custom_metadata_map
    return {k[len("petseg."):]: v for k, v in meta.items() if k.startswith("petseg.") and k[7:] in META_KEYS}


_SESSIONS: dict[tuple[str, str], object] = {}
_LOCK = threading.Lock()


def session(path: Path, device: str = "cpu"):
    """One onnxruntime session per file and device per process (sessions are thread-safe)."""
    import onnxruntime as ort

    slot = (str(Path(path).resolve()), device)
    with _LOCK:
        if slot not in _SESSIONS:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            providers = ["CPUExecutionProvider"]
            if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            try:
                _SESSIONS[slot] = ort.InferenceSession(str(path), opts, providers=providers)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own kinds
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise PetsegError(f"onnx:{path}: not a readable ONNX model ({first[:200]})") from None
        return _SESSIONS[slot]


def _dim(d) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def check_io(key: str, sess) -> tuple[tuple[str, ...], int | None, int | None]:
    """(inputs, fixed batch or None, static size or None), or one line refusing the file."""
    ins, outs = sess.get_inputs(), sess.get_outputs()
    img = ins[0]
    if len(img.shape) != 4 or (_dim(img.shape[1]) not in (None, 3)) or "float" not in img.type:
        raise PetsegError(f"{key}: its input {img.name!r} is {img.type} {list(img.shape)}, not a float "
                          f"(N, 3, H, W) image: refused")
    inputs = ("image",)
    if len(ins) == 2 and ins[1].name == "point" and len(ins[1].shape) == 2:
        inputs = ("image", "point")
    elif len(ins) != 1:
        raise PetsegError(f"{key}: takes {len(ins)} inputs ({', '.join(i.name for i in ins)}); a segmentation "
                          f"model takes the image (and optionally 'point' [N, 2]): refused")
    out = outs[0]
    if len(out.shape) != 4 or _dim(out.shape[1]) not in (None, 3):
        raise PetsegError(f"{key}: its output {out.name!r} is {list(out.shape)}, not (N, 3, H, W) class "
                          f"logits: refused")
    h, w = _dim(img.shape[2]), _dim(img.shape[3])
    if h is not None and h != w:
        raise PetsegError(f"{key}: takes {h}x{w} images; petseg-bench letterboxes to a square: refused")
    return inputs, _dim(img.shape[0]), h


class OnnxModel(nn.Module):
    """An ONNX file as a module: ``forward(image[, point]) -> logits [B, 3, S, S]``."""

    def __init__(self, key: str, path: Path, config: ModelConfig, spec_mean, spec_std):
        super().__init__()
        self.key, self.path = key, Path(path)
        self.inputs, self.fixed_batch, _ = check_io(key, session(self.path))
        self.size = config.in_size
        self.scale, self.shift, self.flip, self.perm = renormaliser(spec_mean, spec_std, config.options)
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    def forward(self, image: torch.Tensor, point: torch.Tensor | None = None) -> torch.Tensor:
        dev = image.device
        x = image.detach().float()
        if self.scale is not None:
            x = x * self.scale.to(dev) + self.shift.to(dev)
        if self.flip:
            x = x.flip(1)
        x = x.contiguous().cpu().numpy()
        feeds = [x] if "point" not in self.inputs else [x, point.detach().to(torch.int64).cpu().numpy()]
        sess = session(self.path, dev.type)
        names = [i.name for i in sess.get_inputs()]
        n = x.shape[0]
        step = self.fixed_batch or n
        outs = []
        for lo in range(0, n, step):
            part = [f[lo:lo + step] for f in feeds]
            k = part[0].shape[0]
            if k < step:  # a fixed batch: pad with zero items, drop their outputs
                import numpy as np

                part = [np.concatenate([p, np.zeros((step - k,) + p.shape[1:], p.dtype)]) for p in part]
            outs.append(sess.run(None, dict(zip(names, part)))[0][:k])
        import numpy as np

        y = np.concatenate(outs) if len(outs) > 1 else outs[0]
        if y.ndim != 4 or y.shape[0] != n or y.shape[1] != 3 or y.shape[2:] != tuple(image.shape[2:]):
            raise PetsegError(f"{self.key}: returned {list(y.shape)} for input {list(image.shape)}; expected "
                              f"(N, 3, H, W) class logits at the input size: refused")
        out = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
        if self.perm != [0, 1, 2]:
            out = out[:, self.perm]
        return out.to(dev).contiguous(memory_format=torch.channels_last)


def build_spec(argument: str) -> ModelSpec:
    key = f"onnx:{argument}"
    path = model_file(key, argument)
    inputs, _, static = check_io(key, session(path))
    return model_file_spec(key, path, read_meta(path), inputs, static, "ONNX",
                           lambda config, mean, std: OnnxModel(key, path, config, mean, std))


@hookimpl
def petseg_bench_model_families():
    missing = importlib.util.find_spec("onnxruntime") is None
    return [ModelFamilySpec(name="onnx", build=build_spec, model_file=True, example="onnx:model.onnx",
                            description="an ONNX file run with onnxruntime (evaluation only)",
                            unavailable=INSTALL if missing else None)]
