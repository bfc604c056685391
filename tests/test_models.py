"""The five built-in models, built through the real plugin registry at tiny sizes.

64-px inputs, base width 4, and the tiny CLIP architecture ``petseg-tiny-vit`` with
random weights (``none``): no network, no model hub, a few seconds on 2 CPU cores.
"""

from __future__ import annotations

import open_clip
import pytest
import torch
from torch import nn

from petseg_bench.errors import PetsegError
from petseg_bench.plugins import get_registry
from petseg_bench.specs import LossWeights, Phase
from petseg_bench_models import clip_backbone
from petseg_bench_models.clip_backbone import CLIP_MEAN, CLIP_SIZE, CLIP_STD, TINY_CLIP_MODEL, ClipEncoder, load_clip

BUILTIN = ["autoencoder", "clip_only", "clip_unet", "point_clip_unet", "unet"]
CLIP_MODELS = ["clip_only", "clip_unet", "point_clip_unet"]
SIZE = 64
BATCH = 2


def tiny_config(name: str, **over):
    spec = get_registry().get("model", name)
    values = dict(in_size=SIZE, base_channels=4, latent_dim=32, clip_pretrained="none", clip_model=TINY_CLIP_MODEL)
    values.update(over)
    return spec, spec.config(**values)


def build(name: str, seed: int = 0, **over) -> nn.Module:
    spec, cfg = tiny_config(name, **over)
    torch.manual_seed(seed)
    return spec.build(cfg)


def inputs(name: str, seed: int = 1) -> dict[str, torch.Tensor]:
    spec = get_registry().get("model", name)
    g = torch.Generator().manual_seed(seed)
    batch = {"image": torch.randn(BATCH, 3, SIZE, SIZE, generator=g)}
    if "point" in spec.inputs:
        batch["point"] = torch.rand(BATCH, 1, SIZE, SIZE, generator=g)
    if "clip_image" in spec.inputs:
        batch["clip_image"] = torch.randn(BATCH, 3, CLIP_SIZE, CLIP_SIZE, generator=g)
    return batch


def test_registry_has_the_five_builtins():
    reg = get_registry()
    assert set(BUILTIN) <= set(reg.models)
    assert not [p for p in reg.problems if any(n in p for n in ("unet", "autoencoder", "clip"))]
    for name in BUILTIN:
        spec = reg.models[name]
        assert spec.description and "\n" not in spec.description
        assert spec.inputs[0] == "image"
    assert reg.models["unet"].inputs == ("image",)
    assert reg.models["autoencoder"].inputs == ("image",)
    assert reg.models["clip_only"].inputs == ("image", "clip_image")
    assert reg.models["clip_unet"].inputs == ("image", "clip_image")
    assert reg.models["point_clip_unet"].inputs == ("image", "point", "clip_image")
    assert reg.models["point_clip_unet"].loss == LossWeights(ce=3.0, dice=0.3)
    assert reg.models["autoencoder"].phases == (
        Phase("reconstruct", loss="reconstruction", epochs_fraction=0.5),
        Phase("segment", loss="segmentation", epochs_fraction=0.5),
    )
    # the paper's settings are ModelConfig's defaults
    cfg = reg.models["unet"].config()
    assert (cfg.in_size, cfg.base_channels, cfg.latent_dim) == (256, 64, 1024)


@pytest.mark.parametrize("bilinear", [True, False], ids=["bilinear", "transposed"])
@pytest.mark.parametrize("name", BUILTIN)
def test_builds_and_returns_logits(name, bilinear):
    model = build(name, bilinear=bilinear).eval()
    with torch.no_grad():
        out = model(**inputs(name))
    assert out.shape == (BATCH, 3, SIZE, SIZE)
    assert torch.isfinite(out).all()
    has_transposed = any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    if name != "autoencoder":  # the autoencoder's decoders are transposed convs either way
        assert has_transposed is (not bilinear)


@pytest.mark.parametrize("name", BUILTIN)
def test_channels_last_and_bf16_autocast(name):
    model = build(name).to(memory_format=torch.channels_last).eval()
    batch = {k: v.contiguous(memory_format=torch.channels_last) for k, v in inputs(name).items()}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    assert out.shape == (BATCH, 3, SIZE, SIZE)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()


def test_build_validates_config():
    spec, cfg = tiny_config("unet", in_size=50)
    with pytest.raises(PetsegError, match="in_size"):
        spec.build(cfg)


def test_unet_bottleneck_is_in_size_over_16():
    model = build("unet")
    skips, bottleneck = model.encoder(torch.randn(1, 3, SIZE, SIZE))
    assert bottleneck.shape == (1, 16 * 4 // 2, SIZE // 16, SIZE // 16)
    assert [s.shape[1] for s in skips] == [4, 8, 16, 32]


@pytest.mark.parametrize("name", BUILTIN)
def test_dropout_adds_dropout_layers(name):
    def count(model):
        return sum(isinstance(m, nn.Dropout2d) for m in model.modules())

    assert count(build(name, dropout=0.0)) == 0
    assert count(build(name, dropout=0.2)) > 0


def test_point_model_uses_the_heatmap():
    model = build("point_clip_unet").eval()
    first = model.encoder.inc.block[0]
    assert isinstance(first, nn.Conv2d) and first.in_channels == 4
    batch = inputs("point_clip_unet")
    with torch.no_grad():
        a = model(**batch)
        batch["point"] = torch.zeros_like(batch["point"])
        b = model(**batch)
        c = model(**{**batch, "point": batch["point"][:, 0]})  # [B, H, W] is accepted too
    assert not torch.allclose(a, b)
    assert torch.equal(b, c)
    with pytest.raises(ValueError, match="point"):
        model(image=batch["image"], clip_image=batch["clip_image"])


def test_fuse_add_and_replace_differ():
    # train mode: BatchNorm uses batch statistics (at init the running statistics leave
    # the eval-mode bottleneck near 0, so add and replace would look alike)
    add = build("clip_unet", fuse_clip="add").train()
    replace = build("clip_unet", fuse_clip="replace").train()
    replace.load_state_dict(add.state_dict())  # same weights, only the fusion differs
    batch = inputs("clip_unet")
    with torch.no_grad():
        a, r = add(**batch), replace(**batch)
    assert (a - r).abs().max() > 1e-3


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


@pytest.mark.parametrize("name", CLIP_MODELS)
def test_clip_stays_frozen(name):
    model = build(name)
    model.train()
    assert isinstance(model.clip, ClipEncoder)
    assert not model.clip.training and not model.clip.visual.training
    assert model.clip_key == model.clip.key == f"{TINY_CLIP_MODEL}:none"
    assert all(not p.requires_grad for p in model.clip.parameters())
    model(**inputs(name)).mean().backward()
    assert all(p.grad is None for p in model.clip.parameters())
    assert model.project.weight.grad is not None
    assert all(p.grad is not None for p in model.decoder.parameters())


@pytest.mark.parametrize("name", CLIP_MODELS)
def test_clip_features_path_equals_clip_image_path(name):
    model = build(name).eval()
    batch = inputs(name)
    features = model.clip(batch["clip_image"])
    assert features.shape == (BATCH, model.clip.embed_dim)
    with torch.no_grad():
        from_image = model(**batch)
        rest = {k: v for k, v in batch.items() if k != "clip_image"}
        from_features = model(**rest, clip_features=features)
    torch.testing.assert_close(from_image, from_features)
    with pytest.raises(ValueError, match="clip"):
        model(**rest)


def test_clip_models_share_one_backbone():
    models = [build(n) for n in CLIP_MODELS]
    assert models[0].clip is models[1].clip is models[2].clip
    assert load_clip(TINY_CLIP_MODEL, "none") is models[0].clip


def test_clip_constants():
    assert CLIP_SIZE == 224
    assert CLIP_MEAN == tuple(open_clip.OPENAI_DATASET_MEAN)
    assert CLIP_STD == tuple(open_clip.OPENAI_DATASET_STD)
    enc = load_clip(TINY_CLIP_MODEL, "none")
    assert enc.image_size == CLIP_SIZE and enc.embed_dim == 64
    assert TINY_CLIP_MODEL in open_clip.list_models()


def _visual_state(enc: ClipEncoder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in enc.visual.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_none_is_deterministic():
    first = _visual_state(load_clip(TINY_CLIP_MODEL, "none"))
    clip_backbone.clear_cache()
    try:
        torch.manual_seed(12345)  # the caller's RNG state must not matter
        _assert_same(first, _visual_state(load_clip(TINY_CLIP_MODEL, "none")))
    finally:
        clip_backbone.clear_cache()


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
    enc = load_clip(TINY_CLIP_MODEL, str(path))
    assert enc.key == f"{TINY_CLIP_MODEL}:{path}"
    assert not enc.random_init
    _assert_same(_visual_state(enc), {k: v for k, v in full.visual.state_dict().items()})
    assert all(not p.requires_grad for p in enc.parameters())
    # not the random-init backbone
    none = _visual_state(load_clip(TINY_CLIP_MODEL, "none"))
    assert any(not torch.equal(none[k], v) for k, v in _visual_state(enc).items())


def test_wrong_weights_file_is_one_line(tmp_path):
    path = tmp_path / "other.bin"
    torch.save({"something.else": torch.zeros(3)}, path)
    with pytest.raises(PetsegError) as err:
        load_clip(TINY_CLIP_MODEL, str(path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg


def test_missing_weights_file_names_it(tmp_path):
    missing = tmp_path / "nowhere" / "open_clip_pytorch_model.bin"
    with pytest.raises(PetsegError, match="not found") as err:
        load_clip("ViT-B-32", str(missing))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_tag_offline_is_one_clear_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    # offline with an empty cache, whatever the machine has
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PetsegError) as err:
        load_clip("ViT-B-32", "openai")
    msg = str(err.value)
    assert "\n" not in msg
    assert "'openai'" in msg and "could not be fetched" in msg
    assert "--clip-pretrained /path/to/open_clip_pytorch_model.bin" in msg
    assert ("ViT-B-32", "openai") not in clip_backbone._CACHE


def test_unknown_model_and_tag():
    with pytest.raises(PetsegError, match="unknown CLIP model 'ViT-Nope'.*ViT-B-32"):
        load_clip("ViT-Nope", "none")
    with pytest.raises(PetsegError, match="unknown CLIP pretrained tag 'nonsense'.*openai"):
        load_clip("ViT-B-32", "nonsense")
