"""The ``clip`` backbone family: CLIP's frozen image tower, through open_clip.

Key ``clip:<model>[:<weights>]``, where ``<weights>`` is one of:

* an open_clip pretrained tag (``openai``, the default; ``laion2b_s34b_b79k``...):
  downloaded, or taken from the Hugging Face cache; with no internet an uncached tag
  raises a one-line :class:`~petseg_bench.errors.PetsegError` saying how to pass a file;
* a path to a local weights file (``.bin``/``.pt``/``.pth`` read with
  ``torch.load(weights_only=True)``, or ``.safetensors``): a full open_clip / OpenAI
  CLIP state dict, or one of the visual tower alone;
* ``none``: random initialisation, made deterministic (seed 0) so that every process
  builds the same random backbone. Results with it are not results with CLIP, and the
  backbone says so (``random_init``), so every report warns.

The preprocessing (mean, std, size, bicubic) is read from open_clip's config of the
tower. This module registers the tiny architecture ``petseg-tiny-vit``
(plugins/clip_configs/) with open_clip at import: a 2-layer, width-64 ViT with 64-d
embeddings for tests and quick CPU profiles (with ``none`` only: no pretrained
weights exist for it).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

import open_clip
import torch
from torch import nn

from petseg_bench import hookimpl
from petseg_bench.backbones import RANDOM_INIT, Backbone, Features, Preprocess
from petseg_bench.specs import BackboneSpec
from petseg_bench.errors import PetsegError, one_line

DEFAULT_WEIGHTS = "openai"
#: The tiny architecture shipped for tests and quick profiles.
TINY_CLIP_MODEL = "petseg-tiny-vit"
CONFIG_DIR = Path(__file__).resolve().parent / "clip_configs"

NONE_SEED = 0
_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".safetensors")


def _register_configs() -> None:
    if CONFIG_DIR.is_dir() and TINY_CLIP_MODEL not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_DIR)


_register_configs()


class ClipEncoder(Backbone):
    """CLIP's visual tower, frozen: ``extract(x [B,3,S,S]) -> Features(embedding [B, D])``."""

    def __init__(self, visual: nn.Module, model_name: str, pretrained: str):
        super().__init__()
        self.visual = visual
        self.key = f"clip:{model_name}:{pretrained}"
        self.random_init = pretrained.strip().lower() in RANDOM_INIT
        weights = "random init" if self.random_init else f"{pretrained} weights"
        self.label = f"CLIP {model_name} ({weights})"
        pp = getattr(visual, "preprocess_cfg", None) or {}
        size = pp.get("size", getattr(visual, "image_size", 224))
        self.preprocess = Preprocess(mean=tuple(pp["mean"]), std=tuple(pp["std"]),
                                     size=int(size[0] if isinstance(size, (tuple, list)) else size),
                                     interpolation=pp.get("interpolation", "bicubic"))
        self.freeze()
        self.embed_dim = int(getattr(visual, "output_dim", 0) or 0)
        if not self.embed_dim:  # towers without output_dim: measure it once
            probe = torch.zeros(1, 3, self.preprocess.size, self.preprocess.size)
            self.embed_dim = int(self.extract(probe).embedding.shape[-1])

    def extract(self, x: torch.Tensor) -> Features:
        param = next(self.visual.parameters())
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(param.dtype)
        feats = self.visual(x)
        if isinstance(feats, (tuple, list)):  # towers that also return tokens
            feats = feats[0]
        return Features(feats)

    def extra_repr(self) -> str:
        return f"key={self.key!r}, embed_dim={self.embed_dim}, frozen"


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Drop open_clip's root-logger chatter ("No pretrained weights loaded...") for one call."""

    def _filter(record: logging.LogRecord) -> bool:
        return "open_clip" not in (record.pathname or "")

    root = logging.getLogger()
    root.addFilter(_filter)
    try:
        yield
    finally:
        root.removeFilter(_filter)


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or "/" in value
        or value.startswith((".", "~"))
        or value.lower().endswith(_WEIGHT_SUFFIXES)
    )


def _create(model_name: str, **kwargs) -> nn.Module:
    with _quiet_open_clip():
        return open_clip.create_model(model_name, pretrained=None, **kwargs)


def _load_file(model: nn.Module, model_name: str, path: str) -> None:
    """Load a full CLIP state dict (or a visual-only one) from ``path``, safely."""
    try:
        with _quiet_open_clip():
            open_clip.load_checkpoint(model, path, strict=True, weights_only=True)
        return
    except Exception as full_exc:  # noqa: BLE001 - try the visual-only layout next
        first = full_exc
    try:
        from open_clip.factory import load_state_dict

        state = load_state_dict(path, weights_only=True)
        if any(k.startswith("visual.") for k in state):
            state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        model.visual.load_state_dict(state, strict=True)
    except Exception:  # noqa: BLE001
        raise PetsegError(
            f"could not load CLIP weights for {model_name} from {path}: {type(first).__name__}: {one_line(first)}"
        ) from first



def _build(model_name: str, pretrained: str) -> ClipEncoder:
    known = open_clip.list_models()
    if model_name not in known:
        sample = [m for m in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50", TINY_CLIP_MODEL) if m in known]
        raise PetsegError(
            f"unknown CLIP model {model_name!r}; open_clip has {len(known)} architectures, e.g. {', '.join(sample)}"
        )
    value = pretrained.strip()
    if value.lower() in RANDOM_INIT:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(NONE_SEED)
            model = _create(model_name)
        return ClipEncoder(model.visual, model_name, pretrained)

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if value in tags:
        cfg = open_clip.get_pretrained_cfg(model_name, value)
        hint = f" (model {model_name}-quickgelu)" if cfg.get("quick_gelu") and not model_name.endswith("quickgelu") else ""
        try:
            with _quiet_open_clip():
                open_clip.download_pretrained(cfg)
        except Exception as exc:  # noqa: BLE001 - offline, no cache, HTTP error...
            raise PetsegError(
                f"the CLIP weights for {model_name} tag {value!r} could not be fetched (offline and not cached: "
                f"{type(exc).__name__}); download open_clip_pytorch_model.bin elsewhere and pass "
                f"the backbone clip:{model_name}:/path/to/open_clip_pytorch_model.bin{hint} (--clip-pretrained FILE), or clip:{model_name}:none for random init"
            ) from exc
        try:
            with _quiet_open_clip():
                model = open_clip.create_model(
                    model_name, pretrained=value, force_quick_gelu=bool(cfg.get("quick_gelu", False))
                )
        except Exception as exc:  # noqa: BLE001
            raise PetsegError(f"could not load CLIP {model_name} tag {value!r}: {one_line(exc)}") from exc
        return ClipEncoder(model.visual, model_name, pretrained)

    path = os.path.expanduser(value)
    if os.path.isfile(path):
        model = _create(model_name)
        _load_file(model, model_name, path)
        return ClipEncoder(model.visual, model_name, pretrained)
    if _looks_like_path(value):
        raise PetsegError(f"CLIP weights file not found: {path}")
    shown = ", ".join(tags[:6]) + (", ..." if len(tags) > 6 else "") if tags else "none published"
    raise PetsegError(
        f"unknown CLIP pretrained tag {value!r} for {model_name} (tags: {shown}); "
        "pass a tag, a local weights file, or 'none'"
    )


def build_clip(argument: str) -> ClipEncoder:
    """The backbone for ``clip:<argument>``, ``<argument>`` = ``<model>[:<weights>]``."""
    model_name, _, weights = argument.partition(":")
    return _build(model_name, weights or DEFAULT_WEIGHTS)


@hookimpl
def petseg_bench_backbones():
    return [BackboneSpec(
        name="clip",
        build=build_clip,
        description="CLIP's frozen image tower (open_clip): <model>:<tag | weights file | none>; pooled embedding",
        example="clip:ViT-B-32:openai",
    )]
