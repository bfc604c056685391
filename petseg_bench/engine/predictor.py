"""A model ready for inference, and the one way to load one from a checkpoint.

:func:`load_predictor` (checkpoint -> weights, BatchNorm folded, frozen backbone
attached) serves ``evaluate``, the sweep and the app; training validates through a
:class:`Predictor` around the model it trains. Predictions go back to each image's
original resolution (:func:`restore`) before anything is scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from ..backbones import Backbone, FeatureCache, load_backbone
from ..bn_fold import fold_batchnorm
from ..data.points import eval_click
from ..data.letterbox import Letterbox
from ..errors import PLUGIN_FAILURES, ModelRunError, PetsegError, call_plugin
from ..plugins import get_registry
from ..specs import ModelConfig, ModelSpec
from . import checkpoint
from .inputs import model_inputs
from .runtime import Runtime, compiled, in_parallel


@dataclass
class Predictor:
    model: torch.nn.Module
    spec: ModelSpec
    config: ModelConfig
    runtime: Runtime
    backbone: Backbone | None = None
    #: With torch.compile, batches are padded to this size so one graph serves the
    #: whole sweep (a smaller last batch would otherwise trigger a recompile).
    pad_to: int | None = None
    #: Input pixels per forward: larger batches run in slices, which bounds the
    #: activation memory (16 images at 256 px) without costing throughput.
    max_pixels: int = 16 * 256 * 256
    #: What produced it (checkpoint metadata), for run records and reports.
    info: dict | None = None

    def __post_init__(self) -> None:
        self.model.eval()
        self.forward = self.model
        if self.backbone is None:  # a model on a frozen backbone always gets it
            self.backbone = attach_backbone(self.spec, self.config)
        if self.backbone is not None:
            self.backbone.to(self.runtime.device)

    @property
    def slice_size(self) -> int:
        return max(1, self.max_pixels // (self.config.in_size ** 2))

    @property
    def needs_clicks(self) -> bool:
        return "point" in self.spec.inputs

    def compile(self, batch_size: int) -> None:
        """Compile the forward (torch.compile): slower first batch, faster after; the kernels
        are kept for later runs (``runtime.compiled``)."""
        self.forward = compiled(self.model)
        self.pad_to = min(batch_size, self.slice_size)

    @torch.no_grad()
    def logits(self, images_u8: torch.Tensor, points: torch.Tensor | None = None,
               cache: FeatureCache | None = None) -> torch.Tensor:
        """Letterboxed uint8 batch ``[B, 3, S, S]`` -> float logits ``[B, C, S, S]``, in eval
        mode; a module in train mode (the training loop validates between epochs) is put
        back in it afterwards, as detectron2's ``inference_context`` does."""
        training = self.model.training
        self.model.eval()
        try:
            return self._logits(images_u8, points, cache)
        finally:
            self.model.train(training)

    def _logits(self, images_u8: torch.Tensor, points: torch.Tensor | None, cache: FeatureCache | None) -> torch.Tensor:
        rt = self.runtime
        images_u8 = images_u8.to(rt.device, non_blocking=True)
        try:
            inputs = model_inputs(self.spec, images_u8, points, self.backbone, cache or FeatureCache(), rt.autocast)
            outs = []
            for start in range(0, images_u8.shape[0], self.slice_size):
                part = {k: v[start:start + self.slice_size] for k, v in inputs.items()}
                n = len(part["image"])
                if self.pad_to and n < self.pad_to:
                    part = {k: _pad(v, self.pad_to) for k, v in part.items()}
                with rt.autocast():
                    outs.append(self.forward(**part)[:n].float())
        except PetsegError:
            raise
        except PLUGIN_FAILURES as exc:  # a plugin's forward (or backbone) failing, sys.exit too: one line naming it
            raise ModelRunError.from_exception(self.spec.name, exc) from None
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def predict(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
        """Label maps at each image's original resolution (``labels`` place the clicks
        of point-prompted models)."""
        if self.needs_clicks and labels is None:
            raise ValueError(f"model {self.spec.name} needs ground truth to place its evaluation click")
        batch, boxes, points = letterbox_batch(images, self.config.in_size, labels if self.needs_clicks else None)
        return restore(self.logits(batch, points), boxes)


def _pad(x, n: int):
    """Zero-pad a batch (a tensor or backbone Features) to ``n`` items."""
    if not isinstance(x, torch.Tensor):
        return type(x)(_pad(x.embedding, n), tuple(_pad(m, n) for m in x.maps))
    pad = x.new_zeros((n - x.shape[0],) + tuple(x.shape[1:]))
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    return torch.cat([x, pad]).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


def build_model(spec: ModelSpec, config: ModelConfig, runtime: Runtime, seed: int | None = None) -> torch.nn.Module:
    """A fresh model on the runtime's device (seeded when ``seed`` is given)."""
    if seed is not None:
        torch.manual_seed(seed)
    model = call_plugin(f"model {spec.name} failed to build", spec.build, config)
    return model.to(runtime.device, memory_format=torch.channels_last)


def attach_backbone(spec: ModelSpec, config: ModelConfig) -> Backbone | None:
    key = spec.backbone_key(config)
    return None if key is None else load_backbone(key)


def trainable_state(spec: ModelSpec, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights a checkpoint stores: all but the parts the spec declares frozen."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if not k.startswith(spec.frozen or ("\0",))}


def load_weights(spec: ModelSpec, model: torch.nn.Module, state: dict, path: Path) -> None:
    """``state`` into ``model``, or one line naming the file: no weights, weights of
    another shape or model, or weights that are not finite (a diverged training)."""
    if not isinstance(state, dict):
        raise PetsegError(f"checkpoint {path} has no weights (state_dict is {type(state).__name__})")
    bad = checkpoint.nonfinite(state)
    if bad[0]:
        raise PetsegError(f"checkpoint {path} is unusable: {checkpoint.describe_nonfinite(bad)}")
    checkpoint.check_dtypes(state, model.state_dict(), path, spec.name)  # load_state_dict would cast them
    try:
        result = model.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:  # shapes that do not fit, odd values
        raise PetsegError(f"checkpoint {path} does not fit model {spec.name}: {_last_line(exc)}") from None
    missing = [k for k in result.missing_keys if not k.startswith(spec.frozen or ("\0",))]
    if missing or result.unexpected_keys:
        bad_keys = (missing + list(result.unexpected_keys))[:4]
        raise PetsegError(f"checkpoint {path} does not fit model {spec.name}: mismatched weights {', '.join(bad_keys)}")


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def file_predictor(path: Path, runtime: Runtime | None, expect_model: str | None) -> Predictor | None:
    """A Predictor for a model file (``expect_model`` a model-file key, or ``path`` an
    ONNX/TorchScript file); None when ``path`` is an ordinary checkpoint."""
    from ..families import file_config, sniff_model_file
    from ..plugins import is_model_file

    if expect_model is not None:
        if not is_model_file(expect_model):
            return None
        key = expect_model
    else:
        kind = sniff_model_file(path)
        if kind is None:
            return None
        key = f"{kind}:{path}"
    spec = get_registry().get("model", key)
    config = file_config(spec, {})
    runtime = runtime or Runtime.choose()
    model = build_model(spec, config, runtime)
    info = {"model": key, "model_config": config.to_dict(), "file": str(path), "encoder": None}
    return Predictor(model, spec, config, runtime, info=info)


def load_predictor(path: Path, runtime: Runtime | None = None, expect_model: str | None = None,
                   fold_bn: bool = True) -> Predictor:
    """Checkpoint -> a Predictor: weights loaded, BatchNorm folded into the convolutions,
    the frozen backbone (if any) attached; ``info`` holds the checkpoint's metadata.
    A model file (``onnx:``/``torchscript:``, see :mod:`petseg_bench.families`) loads as it is."""
    found = file_predictor(Path(path), runtime, expect_model)
    if found is not None:
        return found
    data = checkpoint.load(path, expect_model)
    try:
        spec = get_registry().get("model", data.get("model"))
    except PetsegError as exc:
        raise PetsegError(f"checkpoint {path}: {exc}") from None
    config = checkpoint.model_config(data, spec, Path(path))
    runtime = runtime or Runtime.choose()
    model = build_model(spec, config, runtime)
    load_weights(spec, model, data.get("state_dict"), Path(path))
    model.eval()
    if fold_bn:
        fold_batchnorm(model)  # inference only: BN folded into the conv before it
    info = {k: v for k, v in data.items() if k not in ("state_dict", "optimizer", "scheduler", "rng", "loop")}
    pr = Predictor(model, spec, config, runtime, info=info)
    info["backbone"] = None if pr.backbone is None else pr.backbone.describe()
    info["encoder"] = spec.encoder_name(config)  # from the options: checkpoints older than the field get it too
    return pr


def letterbox_batch(images: Sequence[np.ndarray], size: int, labels: Sequence[np.ndarray] | None = None,
                    moves: np.ndarray | None = None, clicks: np.ndarray | None = None):
    """Letterboxed uint8 batch ``[B, 3, S, S]``, the geometries, and the evaluation clicks
    ``[B, 2]`` placed on the letterboxed ground truth (only when ``labels`` are given).
    The batch is a channels_last view of ``[B, S, S, 3]`` pixels: the layout the
    convolutions take, with no transposing copy.

    ``moves``: per image a click displacement (dy, dx) in original pixels (a click
    perturbation's); it is scaled into the letterbox, added to the click and kept inside
    the image content. Without it the clicks are exactly those of the evaluation rule.
    ``clicks``: those evaluation clicks ``[B, 2]`` when already known
    (:func:`letterbox_clicks` of the same labels and size), not placed again."""
    boxes = [Letterbox.fit(im.shape[0], im.shape[1], size) for im in images]
    batch = np.empty((len(images), size, size, 3), np.uint8)

    def fill(lo: int, hi: int) -> list:
        for i in range(lo, hi):
            batch[i] = boxes[i].apply(images[i])
        return []

    in_parallel(fill, len(images))
    points = None
    if labels is not None:
        if clicks is None:
            clicks = letterbox_clicks(labels, size, boxes)
        clicks = [(int(y), int(x)) for y, x in clicks]
        if moves is not None:
            clicks = [move_click(lb, c, d) for lb, c, d in zip(boxes, clicks, moves)]
        points = torch.tensor(clicks, dtype=torch.int64).reshape(-1, 2)
    return torch.from_numpy(batch).permute(0, 3, 1, 2), boxes, points


def letterbox_clicks(labels: Sequence[np.ndarray], size: int, boxes: Sequence[Letterbox] | None = None) -> np.ndarray:
    """The evaluation click (y, x) of each ground truth letterboxed to ``size``, ``[B, 2]``
    int64: the same for every perturbation of a pixel, so a sweep places them once."""
    boxes = boxes or [Letterbox.fit(lab.shape[0], lab.shape[1], size) for lab in labels]
    found = in_parallel(lambda lo, hi: [eval_click(boxes[i].apply(labels[i], label=True)) for i in range(lo, hi)],
                        len(labels))
    return np.array(found, dtype=np.int64).reshape(-1, 2)


def move_click(lb: Letterbox, click: tuple[int, int], move) -> tuple[int, int]:
    """``click`` (y, x) in letterbox pixels moved by ``move`` (dy, dx) in original pixels,
    rounded and clamped to the content region of the letterbox."""
    dy, dx = float(move[0]), float(move[1])
    if dy == 0 and dx == 0:
        return int(click[0]), int(click[1])
    y = round(click[0] + dy * lb.new_h / lb.height)
    x = round(click[1] + dx * lb.new_w / lb.width)
    y = min(max(y, lb.top), lb.top + lb.new_h - 1)
    x = min(max(x, lb.left), lb.left + lb.new_w - 1)
    return int(y), int(x)


def restore(logits: torch.Tensor, boxes: Sequence[Letterbox], then=None) -> list:
    """Each image's logits back to its original size (bilinear, :meth:`Letterbox.invert`),
    then the argmax. OpenCV's resize on HWC float32 and a per-class running maximum are
    several times faster here than torch's interpolate and argmax on the CPU, with the
    same result (half-pixel centres, first class wins ties). Images in parallel; with
    ``then``, each image's result is ``then(i, mask)`` (computed on the same thread)."""
    scores = host_scores(logits)

    def part(lo: int, hi: int) -> list:
        masks = ((i, argmax_last(boxes[i].invert(scores[i]))) for i in range(lo, hi))
        return [m if then is None else then(i, m) for i, m in masks]

    return in_parallel(part, len(boxes))


def host_scores(logits: torch.Tensor) -> np.ndarray:
    """Float32 logits ``[B, C, S, S]`` as a numpy ``[B, S, S, C]`` view (contiguous when
    the model returns channels_last logits, as a convolution on channels_last input does)."""
    return logits.float().cpu().permute(0, 2, 3, 1).numpy()


def argmax_last(x: np.ndarray) -> np.ndarray:
    """``argmax`` over the last axis as uint8; the first class wins ties, as np.argmax."""
    n = x.shape[-1]
    # HxWxC float32 (restored logits): one plane per class, contiguous (OpenCV's split),
    # so the comparisons below run on contiguous memory rather than every C-th float.
    planes = cv2.split(x) if x.ndim == 3 and x.dtype == np.float32 and 1 < n <= 512 else \
        [x[..., 0].copy()] + [x[..., c] for c in range(1, n)]
    idx = np.zeros(x.shape[:-1], np.uint8)
    best = planes[0]
    for c in range(1, n):
        # idx = c where class c beats the best so far: every earlier index is below c, so
        # a maximum with (better * c) sets it, branch-free (a masked store is as slow as
        # the mask is irregular)
        better = planes[c] > best
        np.maximum(idx, better.view(np.uint8) * np.uint8(c), out=idx)
        if c < n - 1:
            np.maximum(best, planes[c], out=best)
    return idx
