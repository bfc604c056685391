"""The five built-in models and the ``clip`` backbone, built through the real plugin registry.

64-px inputs, base width 4, and the tiny CLIP architecture ``petseg-tiny-vit`` with
random weights (``none``): no network, no model hub, a few seconds on 2 CPU cores. The
CLIP models never run their backbone: the harness computes its :class:`Features` once
per batch and passes them as ``backbone``; the tests here do the same.
"""

from __future__ import annotations

import contextlib
import dataclasses

import open_clip
import pytest
import torch
from torch import nn

from petseg_bench import backbones
from petseg_bench.backbones import Backbone, FeatureCache, Features, Preprocess, backbone_input, load_backbone
from petseg_bench.engine import checkpoint
from petseg_bench.engine.inputs import model_inputs, normalise
from petseg_bench.engine.predictor import trainable_state
from petseg_bench.errors import PetsegError, PluginError
from petseg_bench.plugins import get_registry
from petseg_bench.specs import LossWeights, ModelConfig, ModelOption, Phase
from petseg_bench_models.blocks import click_heatmaps
from petseg_bench_models.clip_backbone import TINY_CLIP_MODEL, ClipEncoder, build_clip

BUILTIN = ["autoencoder", "clip_only", "clip_unet", "point_clip_unet", "unet"]
CLIP_MODELS = ["clip_only", "clip_unet", "point_clip_unet"]
TINY_KEY = f"clip:{TINY_CLIP_MODEL}:none"
SIZE = 64
BATCH = 2
NO_AUTOCAST = contextlib.nullcontext


def spec_of(name: str):
    return get_registry().get("model", name)


#: The U-Net family's width and dropout options at their defaults (the paper's).
WIDTH = {"base_channels": 64, "dropout": 0.0}


def has_option(spec, name: str) -> bool:
    return any(o.name == name for o in spec.options)


def tiny_config(name: str, generic: dict | None = None, **options):
    """The model's spec and a tiny config: 64 px, width 4, latent 32, the tiny random CLIP."""
    spec = spec_of(name)
    if spec.backbone_option:
        options.setdefault(spec.backbone_option, TINY_KEY)
    if has_option(spec, "latent_dim"):
        options.setdefault("latent_dim", 32)
    return spec, spec.config({"in_size": SIZE, "base_channels": 4, **(generic or {})}, options)


def build(name: str, seed: int = 0, generic: dict | None = None, **options) -> nn.Module:
    spec, cfg = tiny_config(name, generic, **options)
    torch.manual_seed(seed)
    return spec.build(cfg)


def u8_images(seed: int = 1, batch: int = BATCH) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)


CLICKS = torch.tensor([[10.0, 20.0], [40.0, 33.0]])


def inputs(name: str, seed: int = 1) -> dict:
    """The forward arguments the harness would pass, computed directly."""
    spec = spec_of(name)
    images = u8_images(seed)
    batch: dict = {"image": normalise(images, spec.mean, spec.std)}
    if "point" in spec.inputs:
        batch["point"] = CLICKS.clone()
    if "backbone" in spec.inputs:
        bb = load_backbone(TINY_KEY)
        batch["backbone"] = bb(backbone_input(bb.preprocess, images))
    return batch


# --- the registry's built-ins ------------------------------------------------------------

def test_registry_has_the_five_builtins():
    reg = get_registry()
    assert set(BUILTIN) <= set(reg.models)
    assert not [p for p in reg.problems if any(n in p for n in ("unet", "autoencoder", "clip"))]
    for name in BUILTIN:
        spec = reg.models[name]
        assert spec.description and "\n" not in spec.description
        assert spec.inputs[0] == "image"
        assert spec.label and spec.paper is not None
    assert reg.models["unet"].inputs == ("image",)
    assert reg.models["autoencoder"].inputs == ("image",)
    assert reg.models["clip_only"].inputs == ("image", "backbone")
    assert reg.models["clip_unet"].inputs == ("image", "backbone")
    assert reg.models["point_clip_unet"].inputs == ("image", "backbone", "point")
    assert reg.models["point_clip_unet"].loss == LossWeights(ce=3.0, dice=0.3)
    assert reg.models["autoencoder"].phases == (
        Phase("reconstruct", loss="reconstruction", epochs_fraction=0.5),
        Phase("segment", loss="segmentation", epochs_fraction=0.5),
    )
    for name in CLIP_MODELS:
        assert reg.models[name].backbone_option == "backbone"
        assert reg.models[name].frozen == ()  # the backbone is not part of the model at all
    for name in ("unet", "autoencoder"):
        assert reg.models[name].backbone_option is None
    # the paper's settings are the defaults
    cfg = reg.models["unet"].config()
    assert (cfg.in_size, cfg.n_classes) == (256, 3)
    assert cfg.options == {"upsample": "bilinear", "base_channels": 64, "dropout": 0.0}
    ae = reg.models["autoencoder"].config()
    assert ae.options == {"latent_dim": 1024, "norm": "none", "freeze_encoder": False, **WIDTH}
    clip = reg.models["clip_unet"].config()
    assert clip.options == {"backbone": "clip:ViT-B-32:openai", "fuse_clip": "add", "upsample": "bilinear", **WIDTH}
    assert reg.models["clip_unet"].backbone_key(clip) == "clip:ViT-B-32:openai"
    assert reg.models["point_clip_unet"].config().opt("heatmap_sigma") == 10.0
    assert reg.models["unet"].backbone_key(cfg) is None


# --- shapes, layers, precision -------------------------------------------------------------

@pytest.mark.parametrize("upsample", ["bilinear", "transposed"])
@pytest.mark.parametrize("name", BUILTIN)
def test_builds_and_returns_logits(name, upsample):
    spec = spec_of(name)
    options = {"upsample": upsample} if has_option(spec, "upsample") else {}
    model = build(name, **options).eval()
    with torch.no_grad():
        out = model(**inputs(name))
    assert out.shape == (BATCH, 3, SIZE, SIZE)
    assert torch.isfinite(out).all()
    has_transposed = any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    if name != "autoencoder":  # the autoencoder's decoders are transposed convs either way
        assert has_transposed is (upsample == "transposed")


@pytest.mark.parametrize("name", BUILTIN)
def test_channels_last_and_bf16_autocast(name):
    model = build(name).to(memory_format=torch.channels_last).eval()
    batch = {k: v.contiguous(memory_format=torch.channels_last) if isinstance(v, torch.Tensor) and v.dim() == 4 else v
             for k, v in inputs(name).items()}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    assert out.shape == (BATCH, 3, SIZE, SIZE)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()


def test_config_and_build_validate():
    spec = spec_of("unet")
    with pytest.raises(PetsegError, match="in_size"):
        spec.config({"in_size": 50})
    with pytest.raises(PetsegError, match="in_size"):  # build checks too (a config made by hand)
        spec.build(ModelConfig(in_size=50, options={"upsample": "bilinear", "base_channels": 4, "dropout": 0.0}))
    with pytest.raises(PetsegError, match="unknown model config field.*latent_dim"):
        spec.config({"latent_dim": 32})  # a model option is not a generic field


def test_unet_bottleneck_is_in_size_over_16():
    model = build("unet")
    skips, bottleneck = model.encoder(torch.randn(1, 3, SIZE, SIZE))
    assert bottleneck.shape == (1, 16 * 4 // 2, SIZE // 16, SIZE // 16)
    assert [s.shape[1] for s in skips] == [4, 8, 16, 32]


@pytest.mark.parametrize("name", BUILTIN)
def test_dropout_adds_dropout_layers(name):
    def count(model):
        return sum(isinstance(m, nn.Dropout2d) for m in model.modules())

    assert count(build(name, generic={"dropout": 0.0})) == 0
    assert count(build(name, generic={"dropout": 0.2})) > 0


# --- the point model ------------------------------------------------------------------------

def test_click_heatmaps_peak_at_the_click():
    heat = click_heatmaps(CLICKS, SIZE, sigma=3.0)
    assert heat.shape == (BATCH, 1, SIZE, SIZE) and heat.dtype == torch.float32
    for (y, x), h in zip(CLICKS.long().tolist(), heat[:, 0]):
        assert h[y, x] == pytest.approx(1.0)
        assert divmod(int(h.argmax()), SIZE) == (y, x)
    assert heat.min() >= 0 and heat.max() <= 1


def test_point_model_uses_the_heatmap():
    model = build("point_clip_unet", heatmap_sigma=5.0).eval()
    assert model.sigma == 5.0
    first = model.encoder.inc.block[0]
    assert isinstance(first, nn.Conv2d) and first.in_channels == 4
    batch = inputs("point_clip_unet")
    with torch.no_grad():
        a = model(**batch)
        b = model(**{**batch, "point": torch.zeros_like(batch["point"])})
        c = model(**{**batch, "point": torch.zeros_like(batch["point"])})
    assert not torch.allclose(a, b)
    assert torch.equal(b, c)
    with pytest.raises(ValueError, match="point"):
        model(image=batch["image"], backbone=batch["backbone"])


def test_fuse_add_and_replace_differ():
    # train mode: BatchNorm uses batch statistics (at init the running statistics leave
    # the eval-mode bottleneck near 0, so add and replace would look alike)
    add = build("clip_unet", fuse_clip="add").train()
    replace = build("clip_unet", fuse_clip="replace").train()
    assert (add.fuse, replace.fuse) == ("add", "replace")
    replace.load_state_dict(add.state_dict())  # same weights, only the fusion differs
    batch = inputs("clip_unet")
    with torch.no_grad():
        a, r = add(**batch), replace(**batch)
    assert (a - r).abs().max() > 1e-3


# --- the autoencoder --------------------------------------------------------------------------

def test_autoencoder_phases_and_freezing():
    model = build("autoencoder", freeze_encoder=True)
    image = inputs("autoencoder")["image"]
    assert model.set_phase("reconstruct") is model
    recon = model(image=image)
    assert recon.shape == (BATCH, 3, SIZE, SIZE)
    recon.square().mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    model.zero_grad(set_to_none=True)

    model.set_phase("segment")
    model.train()
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert not model.encoder.training and model.segmentation_decoder.training
    logits = model(image=image)
    assert logits.shape == (BATCH, 3, SIZE, SIZE)
    logits.mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.segmentation_decoder.parameters())

    model.set_phase("reconstruct")  # back to stage 1: trainable again
    assert all(p.requires_grad for p in model.encoder.parameters())
    with pytest.raises(PetsegError, match="phase"):
        model.set_phase("bogus")


def test_autoencoder_finetunes_encoder_by_default():
    model = build("autoencoder")  # freeze_encoder False
    model.set_phase("segment")
    model.train()
    assert all(p.requires_grad for p in model.encoder.parameters()) and model.encoder.training
    model(image=inputs("autoencoder")["image"]).mean().backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_autoencoder_latent_dim_option():
    model = build("autoencoder", latent_dim=24)
    assert model.encoder[-1].out_features == 24
    with pytest.raises(PetsegError, match="autoencoder: latent_dim must be >= 1"):
        tiny_config("autoencoder", latent_dim=0)


def test_autoencoder_norm_option():
    plain, normed = build("autoencoder"), build("autoencoder", norm="batch")
    # "none" keeps the layer indices of checkpoints written before the option existed
    assert {k for k in plain.state_dict() if k.startswith("encoder.")} == {
        f"encoder.{i}.{w}" for i in (0, 2, 4, 6, 8, 11) for w in ("weight", "bias")}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in normed.encoder) == 5
    assert sum(isinstance(m, nn.BatchNorm2d) for m in normed.segmentation_decoder) == 4
    normed.set_phase("reconstruct")
    assert normed(image=inputs("autoencoder")["image"]).shape == (BATCH, 3, SIZE, SIZE)
    with pytest.raises(PetsegError, match="norm"):
        tiny_config("autoencoder", norm="layer")


# --- models on a frozen backbone ------------------------------------------------------------

@pytest.mark.parametrize("name", CLIP_MODELS)
def test_backbone_stays_frozen_and_outside_the_model(name):
    model = build(name)
    model.train()
    bb = load_backbone(TINY_KEY)
    assert isinstance(bb, ClipEncoder) and isinstance(bb, Backbone)
    bb.train()  # a frozen backbone ignores it
    assert not bb.training and not bb.visual.training
    assert bb.key == TINY_KEY
    assert all(not p.requires_grad for p in bb.parameters())
    assert not any(isinstance(m, Backbone) for m in model.modules())
    batch = inputs(name)
    assert not batch["backbone"].embedding.requires_grad
    model(**batch).mean().backward()
    assert all(p.grad is None for p in bb.parameters())
    assert model.project.weight.grad is not None
    assert all(p.grad is not None for p in model.decoder.parameters())


@pytest.mark.parametrize("name", CLIP_MODELS)
def test_harness_features_equal_the_backbones_own(name):
    """What the harness passes (FeatureCache via model_inputs) is what the backbone computes
    on backbone_input, and the model's output is the same either way."""
    spec, cfg = tiny_config(name)
    model = build(name).eval()
    bb = load_backbone(spec.backbone_key(cfg))
    images = u8_images(3)
    cache = FeatureCache()
    harness = model_inputs(spec, images, CLICKS, bb, cache, NO_AUTOCAST)
    assert set(harness) == set(spec.inputs)
    assert cache.get(bb, images, NO_AUTOCAST) is harness["backbone"]  # computed once per batch
    x = backbone_input(bb.preprocess, images)
    assert x.shape == (BATCH, 3, bb.preprocess.size, bb.preprocess.size)
    direct = bb(x)
    assert isinstance(direct, Features) and len(direct) == BATCH
    assert direct.embedding.shape == (BATCH, bb.embed_dim)
    torch.testing.assert_close(harness["backbone"].embedding, direct.embedding)
    with torch.no_grad():
        from_harness = model(**harness)
        from_direct = model(**{**harness, "backbone": direct})
    torch.testing.assert_close(from_harness, from_direct)
    rest = {k: v for k, v in harness.items() if k != "backbone"}
    with pytest.raises(ValueError, match="backbone"):
        model(**rest)
    with pytest.raises(ValueError, match=r"\[B, 64\]"):
        model(**{**rest, "backbone": Features(torch.zeros(BATCH, 7))})


def test_clip_models_share_one_backbone():
    bb = load_backbone(TINY_KEY)
    assert load_backbone(TINY_KEY) is bb  # one instance per key, per process
    models = {n: build(n) for n in CLIP_MODELS}
    backbone_tensors = {t.data_ptr() for t in bb.state_dict().values()}
    for name, model in models.items():
        assert model.embed_dim == bb.embed_dim == 64
        assert model.project.in_features == 64
        state = model.state_dict()
        assert not any(k.startswith(("visual.", "backbone.", "clip.")) for k in state), name
        assert not backbone_tensors & {t.data_ptr() for t in state.values()}, name
        assert trainable_state(spec_of(name), model).keys() == state.keys()  # nothing to leave out


def test_clip_backbone_declares_its_preprocessing():
    bb = load_backbone(TINY_KEY)
    assert bb.preprocess == Preprocess(mean=tuple(open_clip.OPENAI_DATASET_MEAN),
                                       std=tuple(open_clip.OPENAI_DATASET_STD), size=224, interpolation="bicubic")
    assert bb.embed_dim == 64 and bb.feature_channels == ()
    assert bb.random_init and "random init" in bb.label
    assert bb.describe() == {"key": TINY_KEY, "label": bb.label, "random_init": True}
    assert TINY_CLIP_MODEL in open_clip.list_models()
    registry = get_registry()
    assert registry.backbones["clip"].build is build_clip
    assert registry.origins[("backbone", "clip")] == "clip_backbone"


# --- the clip backbone's weights --------------------------------------------------------------

def _visual_state(enc: ClipEncoder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in enc.visual.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_none_is_deterministic():
    first = _visual_state(build_clip(f"{TINY_CLIP_MODEL}:none"))
    torch.manual_seed(12345)  # the caller's RNG state must not matter
    second = build_clip(f"{TINY_CLIP_MODEL}:none")
    _assert_same(first, _visual_state(second))
    assert second.key == TINY_KEY and second.random_init
    # nor does building one disturb the caller's RNG
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    build_clip(f"{TINY_CLIP_MODEL}:none")
    assert torch.equal(torch.rand(3), expected)
    # a fresh process cache builds an equal, new instance
    cached = load_backbone(TINY_KEY)
    backbones.clear_cache()
    try:
        rebuilt = load_backbone(TINY_KEY)
        assert rebuilt is not cached
        _assert_same(_visual_state(cached), _visual_state(rebuilt))
    finally:
        backbones.clear_cache()


@pytest.mark.parametrize("fmt", ["torch", "safetensors", "visual-only"])
def test_loads_a_local_weights_file(tmp_path, fmt):
    torch.manual_seed(7)
    full = open_clip.create_model(TINY_CLIP_MODEL, pretrained=None)
    state = full.state_dict()
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "visual-only":
        path = tmp_path / "visual.pt"
        torch.save(full.visual.state_dict(), path)
    else:
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(state, path)
    key = f"clip:{TINY_CLIP_MODEL}:{path}"
    enc = load_backbone(key)
    assert isinstance(enc, ClipEncoder)
    assert enc.key == key == build_clip(f"{TINY_CLIP_MODEL}:{path}").key
    assert not enc.random_init and "random" not in enc.label
    _assert_same(_visual_state(enc), dict(full.visual.state_dict()))
    assert all(not p.requires_grad for p in enc.parameters())
    # not the random-init backbone
    none = _visual_state(load_backbone(TINY_KEY))
    assert any(not torch.equal(none[k], v) for k, v in _visual_state(enc).items())


def test_wrong_weights_file_is_one_line(tmp_path):
    path = tmp_path / "other.bin"
    torch.save({"something.else": torch.zeros(3)}, path)
    with pytest.raises(PetsegError) as err:
        build_clip(f"{TINY_CLIP_MODEL}:{path}")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    # through the process cache the plugin's own one-line error comes through unchanged
    with pytest.raises(PetsegError) as err:
        load_backbone(f"clip:{TINY_CLIP_MODEL}:{path}")
    assert str(err.value) == msg


def test_missing_weights_file_names_it(tmp_path):
    missing = tmp_path / "nowhere" / "open_clip_pytorch_model.bin"
    with pytest.raises(PetsegError, match="not found") as err:
        build_clip(f"ViT-B-32:{missing}")
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_tag_offline_is_one_clear_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    # offline with an empty cache, whatever the machine has
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    key = "clip:ViT-B-32:openai"
    with pytest.raises(PetsegError) as err:
        load_backbone(key)
    msg = str(err.value)
    assert "\n" not in msg
    assert "'openai'" in msg and "could not be fetched" in msg
    assert "clip:ViT-B-32:/path/to/open_clip_pytorch_model.bin" in msg
    assert key not in backbones._CACHE


def test_unknown_model_and_tag():
    with pytest.raises(PetsegError, match="unknown CLIP model 'ViT-Nope'.*ViT-B-32"):
        build_clip("ViT-Nope:none")
    with pytest.raises(PetsegError, match="unknown CLIP pretrained tag 'nonsense'.*openai"):
        build_clip("ViT-B-32:nonsense")
    with pytest.raises(PetsegError, match="unknown CLIP model 'ViT-Nope'"):
        load_backbone("clip:ViT-Nope:none")
    assert "clip:ViT-Nope:none" not in backbones._CACHE


def test_backbone_keys_are_checked():
    with pytest.raises(PluginError, match="unknown backbone 'nope'.*clip"):
        load_backbone("nope:anything")
    with pytest.raises(PetsegError, match="must look like <family>:<argument>"):
        load_backbone("clip")
    with pytest.raises(PetsegError, match="must look like"):
        load_backbone(":ViT-B-32")


# --- options: parsing, profiles, legacy shorthands ----------------------------------------------

def test_option_parse_types():
    flag = ModelOption("freeze", False)
    for text, value in [("1", True), ("true", True), ("Yes", True), (" on ", True),
                        ("0", False), ("false", False), ("no", False), ("OFF", False)]:
        assert flag.parse(text) is value, text
    assert flag.parse(True) is True
    number = ModelOption("latent_dim", 1024)
    assert number.parse("256") == 256 and type(number.parse("256")) is int
    assert number.parse(64) == 64
    real = ModelOption("sigma", 10.0)
    assert real.parse("2.5") == 2.5
    assert real.parse(3) == 3.0 and type(real.parse(3)) is float  # an int is a fine float
    text = ModelOption("backbone", "clip:ViT-B-32:openai")
    assert text.parse("efficientnet:lite0") == "efficientnet:lite0"
    choice = ModelOption("upsample", "bilinear", choices=("bilinear", "transposed"))
    assert choice.parse("transposed") == "transposed"


@pytest.mark.parametrize("option, value, match", [
    (ModelOption("freeze", False), "maybe", "model option freeze: 'maybe' is not a bool"),
    (ModelOption("latent_dim", 1024), "2.5", "model option latent_dim: '2.5' is not a int"),
    (ModelOption("latent_dim", 1024), "many", "is not a int"),
    (ModelOption("latent_dim", 1024), 2.5, "latent_dim: expected a int value, got 2.5"),
    (ModelOption("sigma", 10.0), "wide", "model option sigma: 'wide' is not a float"),
    (ModelOption("sigma", 10.0), True, "expected a float"),
    (ModelOption("name", "x"), 3, "expected a str value, got 3"),
    (ModelOption("upsample", "bilinear", choices=("bilinear", "transposed")), "nearest",
     "upsample must be one of bilinear, transposed, got 'nearest'"),
])
def test_option_parse_errors_are_one_line(option, value, match):
    with pytest.raises(PetsegError, match=match) as err:
        option.parse(value)
    assert "\n" not in str(err.value)


def test_options_from_strings_reach_the_model_config():
    """What ``--model-opt k=v`` hands over: strings, parsed by each option's type."""
    spec = spec_of("point_clip_unet")
    cfg = spec.config({"in_size": SIZE}, {"heatmap_sigma": "4", "upsample": "transposed", "fuse_clip": "replace"})
    assert cfg.opt("heatmap_sigma") == 4.0 and isinstance(cfg.opt("heatmap_sigma"), float)
    assert (cfg.opt("upsample"), cfg.opt("fuse_clip")) == ("transposed", "replace")
    ae = spec_of("autoencoder").config(options={"latent_dim": "48", "freeze_encoder": "yes", "dropout": None})
    assert ae.options == {"latent_dim": 48, "norm": "none", "freeze_encoder": True, **WIDTH}
    with pytest.raises(PetsegError, match="fuse_clip must be one of add, replace"):
        spec.config(options={"fuse_clip": "concat"})
    with pytest.raises(PetsegError, match="point_clip_unet: heatmap_sigma must be > 0"):
        spec.config(options={"heatmap_sigma": "0"})


@pytest.mark.parametrize("name", BUILTIN)
def test_unknown_option_names_error(name):
    spec = spec_of(name)
    with pytest.raises(PetsegError) as err:
        spec.config(options={"no_such_option": 1})
    msg = str(err.value)
    assert "\n" not in msg
    assert f"model {name} has no option 'no_such_option'" in msg
    assert all(o.name in msg for o in spec.options)  # says which it has
    with pytest.raises(PetsegError, match=f"model {name} has no option 'bilinear'"):
        spec.config(options={"bilinear": False})  # a format-1 field is not an option


@pytest.mark.parametrize("name", CLIP_MODELS)
def test_quick_profile_uses_the_tiny_backbone(name):
    spec = spec_of(name)
    cfg = spec.config(profile="quick")
    assert cfg.opt("backbone") == TINY_KEY
    assert spec.config().opt("backbone") == "clip:ViT-B-32:openai"  # no profile: the paper's
    if name == "point_clip_unet":
        assert cfg.opt("heatmap_sigma") == 4.0
    # what the user gives wins over the profile
    assert spec.config(options={"backbone": "efficientnet:lite0"}, profile="quick").opt("backbone") == "efficientnet:lite0"
    assert spec.config(options={"backbone": None}, profile="quick").opt("backbone") == TINY_KEY  # None: not given
    assert spec.config(profile="paper").opt("backbone") == "clip:ViT-B-32:openai"  # a profile it does not override


def test_quick_profile_of_the_other_builtins():
    assert spec_of("autoencoder").config(profile="quick").opt("latent_dim") == 256
    assert spec_of("autoencoder").config(options={"latent_dim": 64}, profile="quick").opt("latent_dim") == 64
    assert spec_of("unet").config(profile="quick").options == {"upsample": "bilinear", "base_channels": 16,
                                                              "dropout": 0.0}  # the profile's width


@pytest.mark.parametrize("name", CLIP_MODELS)
def test_legacy_clip_shorthands_fold_into_the_key(name):
    spec = spec_of(name)
    cfg = spec.config(options={"clip_model": TINY_CLIP_MODEL, "clip_pretrained": "none"})
    assert cfg.opt("backbone") == TINY_KEY
    assert "clip_model" not in cfg.options and "clip_pretrained" not in cfg.options
    assert spec.config(options={"clip_pretrained": "none"}).opt("backbone") == "clip:ViT-B-32:none"
    assert spec.config(options={"clip_model": "ViT-B-16"}).opt("backbone") == "clip:ViT-B-16:openai"
    # on top of the quick profile's key, the shorthand changes only its part
    assert spec.config(options={"clip_pretrained": "/w/tiny.bin"}, profile="quick").opt("backbone") == \
        f"clip:{TINY_CLIP_MODEL}:/w/tiny.bin"
    # a non-CLIP backbone: the shorthand means CLIP again
    assert spec.config(options={"backbone": "efficientnet:lite0", "clip_pretrained": "none"}).opt("backbone") == \
        "clip:ViT-B-32:none"
    # the folded config is stable: built again from its own options it is the same
    assert spec.config(options=cfg.options).options == cfg.options


# --- format-1 checkpoints --------------------------------------------------------------------

#: A format-1 model config: every setting of every built-in as a flat field.
FORMAT1 = dict(in_size=SIZE, base_channels=4, n_classes=3, dropout=0.1, bilinear=False, fuse_clip="replace",
               freeze_encoder=True, latent_dim=32, heatmap_sigma=6.0, clip_model=TINY_CLIP_MODEL,
               clip_pretrained="none", options={})
CLIP_OPTIONS = {"backbone": TINY_KEY, "fuse_clip": "replace", "upsample": "transposed"}
OLD_WIDTH = {"base_channels": 4, "dropout": 0.1}  # generic fields then, options now
UPGRADED = {
    "unet": {"upsample": "transposed", **OLD_WIDTH},
    "autoencoder": {"latent_dim": 32, "norm": "none", "freeze_encoder": True, **OLD_WIDTH},
    "clip_only": {**CLIP_OPTIONS, **OLD_WIDTH},
    "clip_unet": {**CLIP_OPTIONS, **OLD_WIDTH},
    "point_clip_unet": {**CLIP_OPTIONS, "heatmap_sigma": 6.0, **OLD_WIDTH},
}


@pytest.mark.parametrize("name", BUILTIN)
def test_format1_checkpoint_config_is_upgraded(tmp_path, name):
    spec = spec_of(name)
    path = tmp_path / "old.pt"
    torch.save({"format": checkpoint.FORMAT, "format_version": 1, "model": name, "model_config": dict(FORMAT1),
                "state_dict": {}}, path)
    data = checkpoint.load(path, expect_model=name)
    cfg = checkpoint.model_config(data, spec, path)
    assert (cfg.in_size, cfg.n_classes) == (SIZE, 3)
    assert cfg.options == UPGRADED[name]
    model = spec.build(cfg)  # and it builds
    assert sum(isinstance(m, nn.Dropout2d) for m in model.modules()) > 0
    # today's format round-trips the upgraded config unchanged
    again = checkpoint.model_config({"format_version": checkpoint.FORMAT_VERSION, "model_config": cfg.to_dict()},
                                    spec, path)
    assert again == cfg


@pytest.mark.parametrize("name", BUILTIN)
def test_format1_checkpoint_loads_into_a_predictor(tmp_path, name):
    """A whole format-1 file (flat config, weights under today's module names, no backbone
    weights) loads through load_predictor, with its backbone attached."""
    import numpy as np

    from petseg_bench.engine.predictor import load_predictor
    from petseg_bench.engine.runtime import Runtime

    spec = spec_of(name)
    cfg = checkpoint.model_config({"format_version": 1, "model_config": dict(FORMAT1)}, spec, "old.pt")
    torch.manual_seed(0)
    state = trainable_state(spec, spec.build(cfg))
    path = tmp_path / "old.pt"
    torch.save({"format": checkpoint.FORMAT, "format_version": 1, "model": name, "model_config": dict(FORMAT1),
                "state_dict": state}, path)
    predictor = load_predictor(path, Runtime.choose("cpu", "fp32"), expect_model=name, fold_bn=False)
    assert predictor.config == cfg
    loaded = predictor.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    expected = TINY_KEY if spec.backbone_option else None
    assert (predictor.info["backbone"] or {}).get("key") == expected
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 52, 3), dtype=np.uint8), rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)]
    labels = [np.ones(im.shape[:2], np.uint8) for im in images]
    assert [m.shape for m in predictor.predict(images, labels)] == [(40, 52), (20, 30)]


def test_format1_with_default_clip_fields():
    """A format-1 file written with the old CLIP defaults (ViT-B-32, openai)."""
    spec = spec_of("clip_unet")
    old = {**FORMAT1, "bilinear": True, "clip_model": "ViT-B-32", "clip_pretrained": "openai"}
    cfg = checkpoint.model_config({"format_version": 1, "model_config": old}, spec, "old.pt")
    assert cfg.options == {"backbone": "clip:ViT-B-32:openai", "fuse_clip": "replace", "upsample": "bilinear",
                           **OLD_WIDTH}


#: A format-2 model config: base_channels and dropout still generic fields.
FORMAT2 = {"in_size": SIZE, "base_channels": 4, "n_classes": 3, "dropout": 0.1, "options": {"upsample": "transposed"}}


def test_format2_width_and_dropout_become_the_models_options(tmp_path):
    """A format-2 checkpoint (base_channels, dropout as generic fields) loads with them as
    the options of the models that declare them, through the spec's upgrade hook."""
    from petseg_bench.engine.predictor import load_predictor
    from petseg_bench.engine.runtime import Runtime

    spec = spec_of("unet")
    cfg = checkpoint.model_config({"format_version": 2, "model_config": dict(FORMAT2)}, spec, "old.pt")
    assert cfg.options == {"upsample": "transposed", **OLD_WIDTH} and cfg.to_dict().keys() == {"in_size", "n_classes",
                                                                                                "options"}
    torch.manual_seed(0)
    state = trainable_state(spec, spec.build(cfg))
    path = tmp_path / "old.pt"
    torch.save({"format": checkpoint.FORMAT, "format_version": 2, "model": "unet", "model_config": dict(FORMAT2),
                "state_dict": state}, path)
    predictor = load_predictor(path, Runtime.choose("cpu", "fp32"), expect_model="unet", fold_bn=False)
    assert predictor.config == cfg and sum(isinstance(m, nn.Dropout2d) for m in predictor.model.modules()) > 0
    upgraded = []
    spec_up = dataclasses.replace(spec, upgrade=lambda options: upgraded.append(dict(options)) or options)
    checkpoint.model_config({"format_version": 2, "model_config": dict(FORMAT2)}, spec_up, "old.pt")
    assert upgraded == [{"upsample": "transposed", **OLD_WIDTH}]  # the hook sees them as options
    # a model without a width option (a pretrained encoder's) keeps its dropout and drops the width
    effnet = spec_of("effnet_unet")
    old = {"in_size": SIZE, "base_channels": 64, "n_classes": 3, "dropout": 0.2, "options": {"weights": "none"}}
    got = checkpoint.model_config({"format_version": 2, "model_config": old}, effnet, "old.pt")
    assert got.opt("dropout") == 0.2 and "base_channels" not in got.options


def test_width_and_dropout_are_options_checked_by_the_model():
    with pytest.raises(PetsegError, match="model unet: dropout must be within 0..1, got 1.5"):
        spec_of("unet").config(options={"dropout": "1.5"})
    with pytest.raises(PetsegError, match="base_channels must be >= 1"):
        spec_of("autoencoder").config({"base_channels": 0})
    with pytest.raises(PetsegError, match="unknown model config field.*base_channels"):
        spec_of("effnet_unet").config({"base_channels": 8})  # it has no width option
    # the profile's width reaches every model that declares one, under the model's own
    assert spec_of("clip_unet").config(profile="reference").opt("base_channels") == 16
    assert spec_of("autoencoder").config(profile="reference").opt("base_channels") == 32
    assert spec_of("autoencoder").config({"base_channels": 8}, profile="reference").opt("base_channels") == 8


def test_format2_rejects_flat_fields():
    spec = spec_of("unet")
    data = {"format_version": 2, "model_config": {"in_size": SIZE, "bilinear": False, "options": {}}}
    with pytest.raises(PetsegError, match="unknown model config field.*bilinear"):
        checkpoint.model_config(data, spec, "new.pt")
    bad = {"format_version": 2, "model_config": {"in_size": SIZE, "options": {"upsample": "cubic"}}}
    with pytest.raises(PetsegError, match="checkpoint new.pt: model option upsample must be one of"):
        checkpoint.model_config(bad, spec, "new.pt")
