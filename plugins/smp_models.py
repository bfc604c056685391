"""Built-in model family ``smp:ARCH:ENCODER``: any segmentation_models_pytorch model.

``smp:Unet:resnet18``, ``smp:FPN:efficientnet-b0``, ``smp:DeepLabV3Plus:mobilenet_v2``:
the architecture (smp's class name) on the encoder (smp's encoder name, ``tu-*`` for
timm's), 3 classes, trained with ``petseg-bench train`` like the built-ins. Encoder
weights: ``none`` (seeded random init, the default) or a local state-dict file
(``--model-opt encoder_weights=FILE``: the encoder's own keys, or a whole smp model's
with ``encoder.`` in front); nothing is downloaded at run time. Checkpoints go to
``OUT/smp+ARCH+ENCODER/``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from petseg_bench import hookimpl
from petseg_bench.errors import PetsegError, one_line
from petseg_bench.families import ModelFamilySpec
from petseg_bench.specs import ModelConfig, ModelOption, ModelSpec

INSTALL = "segmentation_models_pytorch is not installed: pip install 'petseg-bench[smp]'"
NO_WEIGHTS = ("none", "random", "")


def architectures() -> dict[str, type]:
    import segmentation_models_pytorch as smp

    return {cls.__name__: cls for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()}


def encoder_names() -> list[str]:
    import segmentation_models_pytorch as smp

    return list(smp.encoders.get_encoder_names())


def parse_key(argument: str) -> tuple[str, str]:
    """``ARCH:ENCODER`` -> (smp's class name, encoder), or one line listing the choices."""
    arch, sep, encoder = argument.partition(":")
    archs = architectures()
    if not sep or not arch or not encoder:
        raise PetsegError(f"smp:{argument}: an smp model is smp:ARCH:ENCODER, e.g. smp:Unet:resnet18 "
                          f"(architectures: {', '.join(sorted(archs))})")
    if arch not in archs:
        near = [a for a in archs if a.lower() == arch.lower()]
        hint = f"did you mean smp:{near[0]}:{encoder}?" if near else f"architectures: {', '.join(sorted(archs))}"
        raise PetsegError(f"smp:{argument}: no smp architecture {arch!r} ({hint})")
    if not encoder.startswith("tu-") and encoder not in encoder_names():
        near = [e for e in encoder_names() if e.startswith(encoder.split("-")[0].split("_")[0])][:6]
        raise PetsegError(f"smp:{argument}: no smp encoder {encoder!r}"
                          + (f" (similar: {', '.join(near)})" if near else " (see smp's encoder list, or tu-<timm name>)"))
    return arch, encoder


class SmpModel(nn.Module):
    """An smp model with the harness's keyword forward: ``forward(image) -> logits``."""

    def __init__(self, arch: str, encoder: str, config: ModelConfig):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.net = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=3,
                                    classes=config.n_classes)
        weights = str(config.opt("encoder_weights"))
        if weights.lower() not in NO_WEIGHTS:
            load_encoder(self.net.encoder, Path(weights), f"smp:{arch}:{encoder}")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


def load_encoder(encoder: nn.Module, path: Path, key: str) -> None:
    """A local state-dict file into the encoder, or one line naming the file."""
    if not path.is_file():
        raise PetsegError(f"{key}: encoder weights file {path} not found (nothing is downloaded at run time: "
                          f"save the encoder's state dict there, or pass encoder_weights=none)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise PetsegError(f"{key}: encoder weights {path} unreadable ({one_line(exc, 160)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PetsegError(f"{key}: encoder weights {path} hold a {type(state).__name__}, not a state dict")
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    own = encoder.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # a classifier's head
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        what = f"missing {', '.join(missing[:3])}" if missing else f"wrong shape {', '.join(wrong[:3])}"
        raise PetsegError(f"{key}: encoder weights {path} do not fit the encoder ({what})")
    encoder.load_state_dict({k: state[k] for k in own}, strict=True)


def _check(arch: str, encoder: str):
    def prepare(options: dict) -> dict:
        weights = str(options["encoder_weights"])
        if weights.lower() in ("imagenet", "ssl", "swsl", "true"):
            raise ValueError(f"encoder_weights={weights} would be downloaded at run time, which petseg-bench "
                             f"does not do: download the {encoder} weights yourself and pass "
                             f"encoder_weights=/path/to/{encoder}.pth (a state dict), or none")
        return options
    return prepare


def _label(encoder: str):
    def label(options: Mapping[str, Any]) -> str:
        w = str(options["encoder_weights"])
        return f"{encoder} ({'random init' if w.lower() in NO_WEIGHTS else f'weights from {Path(w).name}'})"
    return label


def build_spec(argument: str) -> ModelSpec:
    arch, encoder = parse_key(argument)
    return ModelSpec(
        name="smp",
        label=f"{arch} ({encoder}, smp)",
        build=lambda config: SmpModel(arch, encoder, config),
        description=f"segmentation_models_pytorch {arch} on {encoder}",
        options=(ModelOption("encoder_weights", "none",
                             "encoder weights: none (random init) or a local state-dict file", flag="--encoder-weights"),),
        prepare_options=_check(arch, encoder),
        encoder_label=_label(encoder),
    )


@hookimpl
def petseg_bench_model_families():
    missing = importlib.util.find_spec("segmentation_models_pytorch") is None
    return [ModelFamilySpec(name="smp", build=build_spec, example="smp:Unet:resnet18",
                            description="segmentation_models_pytorch ARCH:ENCODER, trainable (encoder weights: "
                                        "none or a local file)",
                            unavailable=INSTALL if missing else None)]
