"""``petseg-bench export``: a checkpoint as an ONNX or TorchScript file for deployment.

The exported module takes what the harness gives a model, as plain tensors:
``image`` float32 ``[N, 3, S, S]`` (the RGB image letterboxed to S, zero border, then
``(x / 255 - mean) / std``) and, for point-prompted models, ``point`` int64 ``[N, 2]``
(y, x) in input pixels; it returns float32 logits ``[N, 3, S, S]`` (background, cat,
dog). A frozen backbone is inside the file: the wrapper undoes the image's
normalisation and prepares the backbone's own input as the harness does. BatchNorm is
folded first, as for every loaded checkpoint. The file carries its metadata
(:data:`petseg_bench.families.META_KEYS`), so ``onnx:FILE`` / ``torchscript:FILE`` run
it with no option.

Given an ONNX or TorchScript file instead of a checkpoint, ``export`` writes a copy
with the metadata from ``--model-opt`` (for files made elsewhere).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PetsegError, one_line
from ..families import CLASSES, META_FILE, file_config, meta_to_strings, sniff_model_file

FORMATS = ("onnx", "torchscript")
OPSET = 17


class ExportWrapper(nn.Module):
    """``forward(image[, point]) -> logits``: the model, with its frozen backbone inside."""

    def __init__(self, model: nn.Module, spec, backbone=None):
        super().__init__()
        self.model, self.backbone = model, backbone
        self.with_click = "point" in spec.inputs
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor, point: torch.Tensor | None = None) -> torch.Tensor:
        kwargs: dict[str, Any] = {"image": image}
        if self.with_click:
            kwargs["point"] = point
        if self.backbone is not None:
            kwargs["backbone"] = self.backbone.extract(self._backbone_input(image))
        return self.model(**kwargs).float()

    def _backbone_input(self, image: torch.Tensor) -> torch.Tensor:
        pre = self.backbone.preprocess
        x = image * self.std + self.mean  # back to 0..1, as backbone_input starts
        if x.shape[-1] != pre.size:
            smooth = pre.interpolation in ("bilinear", "bicubic")
            x = F.interpolate(x, size=(pre.size, pre.size), mode=pre.interpolation,
                              align_corners=False if smooth else None, antialias=smooth).clamp(0.0, 1.0)
        m = torch.tensor(pre.mean, dtype=x.dtype).view(1, 3, 1, 1)
        s = torch.tensor(pre.std, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - m) / s


@dataclass
class Exported:
    path: Path
    max_diff: float  # largest |logit| difference of the file against the torch model on a test input
    note: str = ""


def metadata(pr, source: Path) -> dict[str, str]:
    spec, cfg = pr.spec, pr.config
    return meta_to_strings({
        "in_size": cfg.in_size, "mean": tuple(spec.mean), "std": tuple(spec.std), "channel_order": "RGB",
        "classes": ",".join(CLASSES), "inputs": ",".join(i for i in spec.inputs if i != "backbone"),
        "model": spec.name, "label": spec.display, "source": source.name,
    })


def example_inputs(pr, n: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    s = pr.config.in_size
    image = torch.randn(n, 3, s, s, generator=g)
    if "point" not in pr.spec.inputs:
        return (image,)
    return image, torch.randint(s // 4, 3 * s // 4, (n, 2), generator=g)


def export(source: Path, fmt: str, out: Path, model_opts: Mapping[str, Any] | None = None) -> Exported:
    """Export the checkpoint (or re-tag the model file) ``source`` as ``fmt`` into ``out``."""
    if fmt not in FORMATS:
        raise PetsegError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise PetsegError(f"{source} not found")
    kind = sniff_model_file(source)
    if kind is not None:
        return retag(source, kind, fmt, out, model_opts or {})
    if model_opts:
        raise PetsegError("--model-opt is for tagging an ONNX or TorchScript file; a checkpoint's export "
                          "writes its own metadata")
    from .predictor import load_predictor
    from .runtime import Runtime

    pr = load_predictor(source, Runtime.choose("cpu", "fp32"))
    wrapper = ExportWrapper(pr.model, pr.spec, pr.backbone).eval()
    args = example_inputs(pr)
    meta = metadata(pr, source)
    try:
        with torch.no_grad():
            want = wrapper(*args)
            data = _to_onnx(wrapper, args, meta) if fmt == "onnx" else _to_torchscript(wrapper, args, meta)
    except PetsegError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporters raise every kind
        raise PetsegError(f"{pr.spec.name} cannot be exported to {fmt}: {type(exc).__name__}: "
                          f"{one_line(exc, 240)}") from None
    from ..atomic import write_bytes_atomic

    write_bytes_atomic(out, data)
    got = run_file(out, fmt, args)
    return Exported(out, float((got - want).abs().max()))


@contextlib.contextmanager
def _quiet_fds():
    """Silence the process's stdout and stderr at the file-descriptor level: torch's ONNX
    exporter logs its whole graph from C++ when an operator is unsupported, and the user
    gets one line saying why instead."""
    import sys
    import tempfile

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


def _to_onnx(wrapper: nn.Module, args: tuple, meta: Mapping[str, str]) -> bytes:
    try:
        import onnx
    except ImportError:
        raise PetsegError("export --format onnx needs onnx: pip install 'petseg-bench[onnx]'") from None
    names = ["image", "point"][:len(args)]
    buf = io.BytesIO()
    with warnings.catch_warnings(), _quiet_fds():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, buf, input_names=names, output_names=["logits"], opset_version=OPSET,
                          dynamic_axes={**{n: {0: "batch"} for n in names}, "logits": {0: "batch"}}, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    set_onnx_meta(proto, meta)
    return proto.SerializeToString()


def set_onnx_meta(proto, meta: Mapping[str, str]) -> None:
    keep = [p for p in proto.metadata_props if not p.key.startswith("petseg.")]
    del proto.metadata_props[:]
    for p in keep:
        proto.metadata_props.add(key=p.key, value=p.value)
    for k, v in meta.items():
        proto.metadata_props.add(key=f"petseg.{k}", value=str(v))


def _to_torchscript(wrapper: nn.Module, args: tuple, meta: Mapping[str, str]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():  # tracer notes; jit.save's deprecation (the format still loads safely)
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, args, check_trace=False)
        torch.jit.save(traced, buf, _extra_files={META_FILE: json.dumps(dict(meta))})
    return buf.getvalue()


def run_file(path: Path, fmt: str, args: tuple) -> torch.Tensor:
    """The exported file's logits for ``args`` (the round-trip check)."""
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)}
        return torch.from_numpy(sess.run(None, feeds)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(*args).float()


def retag(source: Path, kind: str, fmt: str, out: Path, given: Mapping[str, Any]) -> Exported:
    """A copy of an ONNX/TorchScript file with petseg metadata from ``given`` on top of its own."""
    if kind != fmt:
        raise PetsegError(f"{source} is a {kind} file: it can be re-tagged as {kind} only (--format {kind})")
    from ..plugins import get_registry

    key = f"{kind}:{source}"
    spec = get_registry().get("model", key)
    config = file_config(spec, given)  # one line naming what is still missing
    o = config.options
    meta = meta_to_strings({"in_size": config.in_size, "mean": o["mean"], "std": o["std"],
                            "channel_order": o["channel_order"], "classes": o["classes"],
                            "inputs": ",".join(spec.inputs), "label": spec.display if spec.display != key else None,
                            "source": source.name})
    from ..atomic import write_bytes_atomic

    if kind == "onnx":
        import onnx

        proto = onnx.load(str(source))
        set_onnx_meta(proto, meta)
        write_bytes_atomic(out, proto.SerializeToString())
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(source), map_location="cpu")
        buf = io.BytesIO()
        torch.jit.save(module, buf, _extra_files={META_FILE: json.dumps(meta)})
        write_bytes_atomic(out, buf.getvalue())
    return Exported(out, 0.0, "metadata written; the model itself is unchanged")
