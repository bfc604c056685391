"""A plugin conformance kit: run a spec through everything the engine will do to it.

The runtime contract of each hook (:mod:`petseg_bench.hookspecs`, "Runs under") as
checks. Each ``check_*`` returns a list of broken promises, one line each:
``"<promise>: <what happened>; fix: <how>"``; an empty list means the spec conforms.
Use them in a plugin's own tests::

    from petseg_bench.testing import check_model_spec
    assert check_model_spec(my_spec, {"in_size": 32}) == []

or from the command line: ``petseg-bench plugin check my_net my_noise``.
"""

from __future__ import annotations

import copy
import io
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .errors import PetsegError, one_line

#: Options that keep a model small enough to check in seconds on a CPU, on top of its
#: own ``quick`` profile (where the built-ins pick their tiny backbones and widths);
#: each applies only to a model that declares it.
SMALL = {"base_channels": 4, "weights": "none"}


def small_options(spec, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The options ``plugin check`` builds ``spec`` with: its ``quick`` profile, then
    :data:`SMALL`, then ``given``."""
    return {**spec.profiles.get("quick", {}), **SMALL, **(given or {})}
SIZES = (32, 64)


def _line(promise: str, what: str, fix: str) -> str:
    return f"{promise}: {what}; fix: {fix}"


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc, 160)}"


# --------------------------------------------------------------------------- models


def check_model_spec(spec, options: Mapping[str, Any] | None = None, sizes: Sequence[int] = SIZES) -> list[str]:
    """Build ``spec`` at two input sizes and run it as the engine does: batch 1 and an odd
    batch, zero-padded batches, fp32 and bf16 autocast, channels_last, determinism, the
    click, BatchNorm folding, a weights_only checkpoint round trip, every phase."""
    try:
        spec.validate()
    except (ValueError, PetsegError) as exc:
        return [_line("valid spec", one_line(exc), "correct the ModelSpec field it names")]
    opts = {k: v for k, v in (options or {}).items() if k in {o.name for o in spec.options}}
    generic = {k: v for k, v in (options or {}).items() if k in ("in_size",) and k not in opts}
    file_size = opts.get("in_size") or next((o.default for o in spec.options if o.name == "in_size"), None)
    if file_size:  # a model file takes one size only
        sizes = (int(file_size),)
    problems: list[str] = []
    for size in sizes:
        try:
            run = _Runner.build(spec, generic, opts, size)
        except Exception as exc:  # noqa: BLE001
            return problems + [_line("build", f"build at in_size {size} raised {_err(exc)}",
                                     "build(config) must work for every in_size multiple of 16 it allows")]
        g = torch.Generator().manual_seed(size)
        imgs = torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8, generator=g)
        pts = torch.randint(size // 4, 3 * size // 4, (3, 2), generator=g)
        found, out = _check_forward(spec, run, imgs, pts, size)
        problems += found
        if out is not None and size == sizes[0]:
            problems += _check_fold(run.model, run, imgs, pts, out)
            problems += _check_checkpoint(spec, run.cfg, run.model, run, imgs, pts, out)
            problems += _check_phases(spec, run.cfg, run.backbone, size)
    return problems


@dataclass
class _Runner:
    """One built model, called as the engine calls it (keyword inputs, no grad)."""

    spec: Any
    cfg: Any
    model: torch.nn.Module
    backbone: Any

    @classmethod
    def build(cls, spec, generic: Mapping[str, Any], opts: Mapping[str, Any], size: int) -> "_Runner":
        from .engine.predictor import attach_backbone

        cfg = spec.config({**generic, "in_size": size}, opts)
        cfg.in_size = size
        torch.manual_seed(0)
        model = spec.build(cfg).to(memory_format=torch.channels_last).eval()
        return cls(spec, cfg, model, attach_backbone(spec, cfg))

    def __call__(self, images_u8, points=None, bf16=False, m=None, layout=torch.channels_last):
        from .backbones import FeatureCache
        from .engine.inputs import model_inputs

        ac = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else _null
        inputs = model_inputs(self.spec, images_u8, points, self.backbone, FeatureCache(), ac)
        inputs["image"] = inputs["image"].contiguous(memory_format=layout)
        with torch.no_grad(), ac():
            return (m or self.model)(**inputs)


def _check_forward(spec, run: _Runner, imgs, pts, size: int) -> tuple[list[str], torch.Tensor | None]:
    """The fp32 forward's promises; its logits (None when there are none to compare)."""
    try:
        out = run(imgs, pts)
    except Exception as exc:  # noqa: BLE001
        try:  # fine on the plain layout: it is the channels_last input that breaks it
            plain = copy.deepcopy(run.model).to(memory_format=torch.contiguous_format)
            run(imgs, pts, layout=torch.contiguous_format, m=plain)
            return [_line("channels_last", f"forward raised {_err(exc)} on a channels_last image "
                          f"(it runs on a contiguous one)", "no .view() on NCHW strides; use reshape")], None
        except Exception:  # noqa: BLE001
            return [_line("forward (fp32)", f"raised {_err(exc)} at in_size {size}, batch 3",
                          "forward must take its inputs as keyword arguments and run in eval mode")], None
    want = (3, 3, size, size)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return [_line("output shape", f"got {got} for batch 3 at in_size {size}, expected {want}",
                      "return logits [B, n_classes=3, S, S] at the input size")], None
    problems = []
    if not out.dtype.is_floating_point or not torch.isfinite(out.float()).all():
        problems.append(_line("output values", f"dtype {out.dtype}, finite: {bool(torch.isfinite(out.float()).all())}",
                              "return finite floating-point logits"))
    if not torch.equal(out, run(imgs, pts)):
        problems.append(_line("determinism", "two identical calls gave different logits",
                              "no randomness in eval mode (dropout off, no torch.rand in forward)"))
    return problems + _check_batching(run, imgs, pts, out) + _check_click(spec, run, imgs, pts, out, size) \
        + _check_bf16(run, imgs, pts, want), out


def _check_batching(run: _Runner, imgs, pts, out) -> list[str]:
    """Batch 1, zero-padded batches and the plain layout give the same logits."""
    problems = []
    one = run(imgs[:1], pts[:1])
    if not torch.allclose(one[0], out[0], atol=1e-4, rtol=1e-4):
        problems.append(_line("batch independence", "an image's logits change with the other images of its batch",
                              "no statistics over the batch axis in eval mode (BatchNorm uses running stats)"))
    padded = torch.cat([imgs, torch.zeros_like(imgs[:2])])
    ppts = torch.cat([pts, torch.zeros_like(pts[:2])])
    if not torch.allclose(run(padded, ppts)[:3], out, atol=1e-4, rtol=1e-4):
        problems.append(_line("padded batches", "zero items appended to the batch changed the real items' logits",
                              "an image's logits must not depend on the other items (run --compile pads)"))
    if not torch.allclose(run(imgs, pts, layout=torch.contiguous_format), out, atol=1e-4, rtol=1e-4):
        problems.append(_line("channels_last", "a contiguous and a channels_last image gave different logits",
                              "no .view() on NCHW strides; use reshape or flatten"))
    return problems


def _check_click(spec, run: _Runner, imgs, pts, out, size: int) -> list[str]:
    if "point" not in spec.inputs:
        return []
    moved = pts.clone()
    moved[:, 0] = size - 1 - moved[:, 0]
    moved[:, 1] = size - 1 - moved[:, 1]
    if torch.allclose(run(imgs, moved), out):
        return [_line("click", "moving the click did not change the logits", "a model with a 'point' input must use it")]
    return []


def _check_bf16(run: _Runner, imgs, pts, want: tuple) -> list[str]:
    try:
        low = run(imgs, pts, bf16=True)
    except Exception as exc:  # noqa: BLE001
        return [_line("bf16 autocast", f"forward raised {_err(exc)} under torch.autocast(bfloat16)",
                      "do not assume float32 tensors inside forward (cast with .to(x.dtype))")]
    if tuple(low.shape) != want or not torch.isfinite(low.float()).all():
        return [_line("bf16 autocast", f"gave shape {tuple(low.shape)} / non-finite values",
                      "work in whatever dtype autocast hands each op")]
    return []


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _check_fold(model, run, imgs, pts, out) -> list[str]:
    from .bn_fold import fold_batchnorm

    try:
        folded = copy.deepcopy(model)
    except Exception:  # noqa: BLE001 - a model file holding a session: nothing of its own to fold
        return []
    try:
        fold_batchnorm(folded)
        after = run(imgs, pts, m=folded)
    except Exception as exc:  # noqa: BLE001
        return [_line("BatchNorm folding", f"folding raised {_err(exc)}", "name only (conv, bn) pairs in fold_pairs")]
    if not torch.allclose(after, out, atol=1e-3, rtol=1e-3):
        return [_line("BatchNorm folding", "logits changed after folding BatchNorm into the conv before it",
                      "a conv named with a BN in fold_pairs (or before it in a Sequential) must feed only that BN")]
    return []


def _check_checkpoint(spec, cfg, model, run, imgs, pts, out) -> list[str]:
    from .engine.predictor import load_weights, trainable_state

    state = trainable_state(spec, model)
    buf = io.BytesIO()
    try:
        torch.save({"state_dict": state}, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=True)["state_dict"]
    except Exception as exc:  # noqa: BLE001
        return [_line("checkpoint", f"state dict does not survive torch.load(weights_only=True): {_err(exc)}",
                      "keep only tensors in the state dict (no extra state objects)")]
    try:
        torch.manual_seed(1)  # other random weights: only the checkpoint can make them agree
        fresh = spec.build(cfg).to(memory_format=torch.channels_last).eval()
        load_weights(spec, fresh, loaded, "<check>")
        again = run(imgs, pts, m=fresh)
    except Exception as exc:  # noqa: BLE001
        return [_line("checkpoint", f"reloading the weights failed: {one_line(exc, 200)}",
                      "build must recreate exactly the modules whose weights it saved; frozen parts under 'frozen'")]
    if not torch.allclose(again, out, atol=1e-5, rtol=1e-5):
        return [_line("checkpoint", "a rebuilt model with the saved weights gives other logits",
                      "everything the forward depends on must be a weight, a buffer or rebuilt by build "
                      "(declare rebuilt parts in 'frozen')")]
    return []


_PHASE_SHAPES = {"segmentation": lambda b, s: (b, 3, s, s), "reconstruction": lambda b, s: (b, 3, s, s),
                 "species": lambda b, s: (b, 2)}


def _check_phases(spec, cfg, backbone, size) -> list[str]:
    """Every phase in train mode, forward and backward, as training runs it."""
    from .backbones import FeatureCache
    from .engine.inputs import model_inputs

    torch.manual_seed(0)
    model = spec.build(cfg).to(memory_format=torch.channels_last)
    if not any(p.requires_grad for p in model.parameters()):
        return []  # nothing to train (a model file)
    problems = []
    g = torch.Generator().manual_seed(7)
    imgs = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=g)
    pts = torch.randint(size // 4, 3 * size // 4, (2, 2), generator=g)
    for phase in spec.phases:
        try:
            if len(spec.phases) > 1:
                model.set_phase(phase.name)
            model.train()
            inputs = model_inputs(spec, imgs, pts, backbone, FeatureCache(), _null)
            y = model(**inputs)
            want = _PHASE_SHAPES[phase.loss](2, size)
            if tuple(y.shape) != want:
                problems.append(_line(f"phase {phase.name}", f"returned {tuple(y.shape)} in training, expected {want} "
                                      f"for its {phase.loss} loss", "set_phase must switch what forward returns"))
                continue
            y.float().square().mean().backward()
        except Exception as exc:  # noqa: BLE001
            problems.append(_line(f"phase {phase.name}", f"training step raised {_err(exc)}",
                                  "set_phase(name) for every declared phase; forward + backward in train mode"))
    return problems


# --------------------------------------------------------------------------- backbones


def check_backbone_spec(spec, argument: str | None = None) -> list[str]:
    """Build ``family:argument`` and extract features as the engine does."""
    from .backbones import Backbone, Features

    argument = argument if argument is not None else (spec.example.partition(":")[2] if spec.example else "")
    try:
        spec.validate()
        bb = spec.build(argument)
    except Exception as exc:  # noqa: BLE001
        return [_line("build", f"build({argument!r}) raised {_err(exc)}", "build(argument) must return a Backbone")]
    if not isinstance(bb, Backbone):
        return [_line("build", f"build returned {type(bb).__name__}", "return a petseg_bench.backbones.Backbone")]
    problems = []
    bb = bb.freeze()
    s = bb.preprocess.size
    x = torch.randn(3, 3, s, s, generator=torch.Generator().manual_seed(0))
    try:
        f = bb(x)
    except Exception as exc:  # noqa: BLE001
        return [_line("extract", f"raised {_err(exc)}", "extract(x) on [B, 3, size, size] must return Features")]
    if not isinstance(f, Features) or tuple(f.embedding.shape) != (3, bb.embed_dim):
        got = tuple(f.embedding.shape) if isinstance(f, Features) else type(f).__name__
        return [_line("features", f"got {got}, expected Features with embedding [3, {bb.embed_dim}]",
                      "return Features(embedding [B, embed_dim], maps)")]
    if tuple(m.shape[1] for m in f.maps) != tuple(bb.feature_channels):
        problems.append(_line("feature maps", f"channels {[m.shape[1] for m in f.maps]} != feature_channels "
                              f"{list(bb.feature_channels)}", "declare feature_channels as the maps have them"))
    if not torch.equal(bb(x).embedding, f.embedding):
        problems.append(_line("determinism", "two identical calls differ", "no randomness in extract"))
    if not torch.allclose(bb(x[:1]).embedding[0], f.embedding[0], atol=1e-4, rtol=1e-4):
        problems.append(_line("batch independence", "an image's features change with its batch",
                              "no statistics over the batch axis"))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = bb(x)
        if not torch.isfinite(low.embedding.float()).all():
            raise ValueError("non-finite features")
    except Exception as exc:  # noqa: BLE001
        problems.append(_line("bf16 autocast", f"extract raised {_err(exc)}", "do not assume float32 inside extract"))
    return problems


# --------------------------------------------------------------------------- perturbations


def _images(n: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = [(40, 56), (33, 33), (64, 48), (17, 29), (50, 50), (31, 70)]
    out = []
    for k in range(n):
        a = rng.integers(0, 256, sizes[k % len(sizes)] + (3,), dtype=np.uint8)
        a.flags.writeable = False  # the prepared cache's arrays are read-only views
        out.append(a)
    return out


def _rngs(n: int, salt: int = 0) -> list[np.random.Generator]:
    return [np.random.default_rng([salt, k]) for k in range(n)]


def check_perturbation_spec(spec, levels: Sequence[int] | None = None) -> list[str]:
    """Apply ``spec`` as a sweep does: several images of differing sizes (read-only),
    one generator per image, sub-batches on several threads at once."""
    try:
        spec.validate()
    except ValueError as exc:
        return [_line("valid spec", one_line(exc), "correct the PerturbationSpec field it names")]
    if spec.unavailable:
        return []
    images = _images()
    problems: list[str] = []
    for level in levels or sorted({1, len(spec.levels) - 1}):
        where = f"level {level}"

        def call(imgs, rngs, value=spec.levels[level]):
            return spec.apply(list(imgs), value, list(rngs))

        found, ref = _check_first_call(call, images, where)
        if not found:
            found = _check_repeatable(call, images, where, ref) or _check_threads(call, images, where, ref)
        problems += found
        if any(not np.array_equal(a, b) for a, b in zip(images, _images())):
            problems.append(_line("inputs untouched", f"{where}: an input array changed",
                                  "never write into the input arrays"))
    return problems


def _seed_globals(seed: int) -> None:
    import random

    np.random.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)


def _check_first_call(call, images: list, where: str) -> tuple[list[str], list]:
    """It runs, and gives one uint8 image of each input's shape (then returns them)."""
    n = len(images)
    try:
        _seed_globals(0)
        ref = call(images, _rngs(n))
    except Exception as exc:  # noqa: BLE001
        text = _err(exc)
        if "read-only" in text or "not writeable" in text or "WRITEABLE" in text:
            return [_line("inputs untouched", f"{where}: wrote into an input array ({text})",
                          "copy before modifying (the inputs are read-only views of the shared cache)")], []
        return [_line("apply", f"{where}: raised {text}", "apply(images, value, rngs) must not raise")], []
    if not isinstance(ref, (list, tuple)) or len(ref) != n:
        count = len(ref) if hasattr(ref, "__len__") else "?"
        return [_line("output", f"{where}: returned {type(ref).__name__} of {count} items for {n} images",
                      "return a list with one array per image")], []
    bad_dtype = [k for k, r in enumerate(ref) if not isinstance(r, np.ndarray) or r.dtype != np.uint8]
    if bad_dtype:
        r = ref[bad_dtype[0]]
        return [_line("output dtype", f"{where}: image {bad_dtype[0]} came back as "
                      f"{getattr(r, 'dtype', type(r).__name__)}, not uint8", "clip to 0..255 and return .astype(np.uint8)")], []
    bad_shape = [k for k in range(n) if ref[k].shape != images[k].shape]
    if bad_shape:
        k = bad_shape[0]
        return [_line("output shape", f"{where}: image {k} {images[k].shape} came back {ref[k].shape}",
                      "return each image at its own shape (resize back if you rescale)")], []
    return [], ref


def _check_repeatable(call, images: list, where: str, ref: list) -> list[str]:
    """The same per-image generators give ``ref`` (made under global seeds 0) again,
    whatever the global seeds and whatever else is in the batch."""
    n = len(images)
    _seed_globals(1)
    again = call(images, _rngs(n))
    if not all(np.array_equal(a, b) for a, b in zip(ref, again)):
        return [_line("global random state",
                      f"{where}: the same per-image generators gave other pixels when the global seeds "
                      f"(np.random, random, torch) changed, or between two calls",
                      "draw only from rngs[i] (no np.random.*, random, torch default generator, "
                      "default_rng() without a seed)")]
    alone = [call(images[k:k + 1], _rngs(n)[k:k + 1])[0] for k in range(n)]
    if not all(np.array_equal(a, b) for a, b in zip(ref, alone)):
        return [_line("batch independence", f"{where}: an image perturbed alone differs from the same "
                      f"image in a batch", "image i may depend only on images[i], value and rngs[i]")]
    return []


def _check_threads(call, images: list, where: str, ref: list, parts=((0, 2), (2, 3), (3, 6)),
                   rounds: int = 3) -> list[str]:
    """Sub-batches applied on several threads at once give the single call's pixels ``ref``."""
    n = len(images)
    for _ in range(rounds):
        results: dict[int, list] = {}
        errors: list[str] = []
        barrier = threading.Barrier(len(parts))

        def worker(lo, hi):
            try:
                barrier.wait()
                results[lo] = call(images[lo:hi], _rngs(n)[lo:hi])
            except Exception as exc:  # noqa: BLE001
                errors.append(_err(exc))

        threads = [threading.Thread(target=worker, args=p) for p in parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        joined = [a for lo, _hi in parts for a in results.get(lo, [])]
        if errors or len(joined) != n or not all(np.array_equal(a, b) for a, b in zip(ref, joined)):
            return [_line("thread safety", f"{where}: sub-batches applied on several threads at once "
                          f"gave other pixels{' (' + errors[0] + ')' if errors else ''}",
                          "no shared mutable state without a lock; per-image generators only")]
    return []


# --------------------------------------------------------------------------- metrics


def check_metric_spec(spec) -> list[str]:
    """``fn`` on [C, C], [N, C, C] and float [n_boot, C, C] confusion matrices."""
    try:
        spec.validate()
    except ValueError as exc:
        return [_line("valid spec", one_line(exc), "correct the MetricSpec field it names")]
    rng = np.random.default_rng(0)
    cms = rng.integers(0, 50, (4, 3, 3)).astype(np.int64)
    cms[1, 2, :] = 0  # class 2 absent from image 1's ground truth
    tail = (3,) if spec.per_class else ()
    problems = []
    for name, x, lead in (("[C, C]", cms[0], ()), ("[N, C, C]", cms, (4,)), ("float [B, N, C, C]",
                                                                            cms[None].repeat(2, 0).astype(float), (2, 4))):
        try:
            y = np.asarray(spec.fn(x), dtype=float)
        except Exception as exc:  # noqa: BLE001
            problems.append(_line("leading axes", f"fn on {name} raised {_err(exc)}",
                                  "compute over the last two axes only (x[..., i, j]) and accept float counts"))
            continue
        if y.shape != lead + tail:
            problems.append(_line("output shape", f"fn on {name} gave {y.shape}, expected {lead + tail}",
                                  "per_class: [..., C]; else [...]"))
            continue
        if name == "[N, C, C]":
            each = np.stack([np.asarray(spec.fn(c), dtype=float) for c in cms])
            if not np.allclose(each, y, equal_nan=True):
                problems.append(_line("leading axes", "fn on a stack differs from fn on each matrix",
                                      "no reduction over the leading axes"))
            if spec.per_class and not np.isnan(y[1, 2]):
                problems.append(_line("absent class", "a class absent from the ground truth did not score NaN",
                                      "return NaN where the class has no ground-truth pixels"))
    return problems


# --------------------------------------------------------------------------- the command


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)
    checked: int = 0
    failed: int = 0

    @property
    def ok(self) -> bool:
        return self.failed == 0

    @property
    def text(self) -> str:
        return "\n".join(self.lines + [f"{self.checked - self.failed} of {self.checked} conform"])


def check_names(names: Sequence[str], model_opts: Mapping[str, Any] | None = None,
                log: Callable[[str], None] = print) -> Report:
    """``petseg-bench plugin check``: names, patterns, ``all`` or keys of any kind."""
    from .plugins import get_registry

    reg = get_registry()
    targets: list[tuple[str, str]] = []
    for name in names:
        found = False
        for kind in ("model", "perturbation", "metric"):
            try:
                hits = reg.select(kind, name)
            except PetsegError:
                continue
            targets += [(kind, h) for h in hits if (kind, h) not in targets]
            found = True
        fam = name.partition(":")[0]
        if name == "all" or (fam in reg.backbones and ":" in name) or name in reg.backbones:
            keys = [f"{b}:{name.partition(':')[2]}"] if ":" in name and fam in reg.backbones else \
                [reg.backbones[b].example or f"{b}:" for b in (reg.backbones if name == "all" else [name])]
            targets += [("backbone", k) for k in keys]
            found = True
        if not found:
            raise PetsegError(f"plugin check: {name!r} is no model, backbone, perturbation or metric (see petseg-bench list)")
    report = Report()
    for kind, name in targets:
        log(f"checking {kind} {name}")
        if kind == "model":
            spec = reg.get("model", name)
            problems = check_model_spec(spec, small_options(spec, model_opts))
        elif kind == "perturbation":
            problems = check_perturbation_spec(reg.get("perturbation", name))
        elif kind == "metric":
            problems = check_metric_spec(reg.get("metric", name))
        else:
            fam, _, arg = name.partition(":")
            problems = check_backbone_spec(reg.backbones[fam], arg)
        report.checked += 1
        report.failed += bool(problems)
        report.lines += [f"ok    {kind} {name}"] if not problems else [f"FAIL  {kind} {name}: {p}" for p in problems]
    return report
