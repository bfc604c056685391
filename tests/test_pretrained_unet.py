"""The U-Net on a pretrained EfficientNet-Lite encoder, per-prefix learning rates, and the
unlabelled-image reader (which must refuse any test-split name)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from petseg_bench.data.unlabelled import UnlabelledSet, read_unlabelled
from petseg_bench.engine.train_loop import param_groups
from petseg_bench.errors import DataError, PetsegError
from petseg_bench.plugins import get_registry
from petseg_bench_models.efficientnet import build_encoder


@pytest.fixture(scope="module")
def spec():
    return get_registry().get("model", "effnet_unet")


def test_builds_and_returns_logits_at_the_input_size(spec):
    config = spec.config({"in_size": 64}, {"weights": "none"})
    model = spec.build(config).eval()
    with torch.no_grad():
        out = model(image=torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3, 64, 64)
    assert spec.mean == spec.std == (0.5, 0.5, 0.5)  # the encoder's own input scaling, as data
    assert config.in_size == 64 and spec.config().in_size == 224  # its default size, the profile's when given


def test_imagenet_encoder_weights_are_the_wheels(spec):
    model = spec.build(spec.config({"in_size": 64}))
    reference = build_encoder("lite0", "imagenet").state_dict()
    own = model.encoder.state_dict()
    assert own.keys() == reference.keys()
    assert all(torch.equal(own[k], reference[k]) for k in own)


def test_encoder_learns_at_its_scaled_rate(spec):
    model = spec.build(spec.config({"in_size": 64}, {"weights": "none"}))
    groups = param_groups(model, spec.lr_scales, 1e-3)
    by_lr = {round(g["lr"], 9): sum(p.numel() for p in g["params"]) for g in groups}
    n_encoder = sum(p.numel() for p in model.encoder.parameters())
    n_all = sum(p.numel() for p in model.parameters())
    assert by_lr == {3e-4: n_encoder, 1e-3: n_all - n_encoder}
    # without scales, one group in the model's parameter order (what a resume's optimizer state expects)
    (only,) = param_groups(model, {}, 1e-3)
    assert [id(p) for p in only["params"]] == [id(p) for p in model.parameters()]


def test_training_log_shows_the_base_lr_not_the_encoders_scaled_one(tmp_path):
    from conftest import train, write_dataset

    from petseg_bench.config import TrainConfig

    data = write_dataset(tmp_path / "pets", n_cat=4, n_dog=4, size=(40, 56))
    cfg = TrainConfig(epochs=2, batch_size=4, workers=0, precision="fp32", device="cpu", val_fraction=0.25,
                      lr=1e-3, patience=0)
    effnet = train("effnet_unet", cfg, {"in_size": 32, "weights": "none"}, data, tmp_path / "out")
    unet = train("unet", cfg, {"in_size": 32, "base_channels": 4}, data, tmp_path / "out")
    # one schedule for both: the encoder's group runs at 0.3x, the log names the base rate
    assert [r["lr"] for r in effnet.history] == pytest.approx([r["lr"] for r in unet.history])
    assert effnet.history[0]["lr"] > 0.3 * cfg.lr
    # the encoder is named in the checkpoint, and in what a predictor reads back
    from petseg_bench.engine import checkpoint
    from petseg_bench.engine.predictor import load_predictor

    assert checkpoint.load(effnet.best_path)["encoder"] == "EfficientNet-Lite0 (random init)"
    assert load_predictor(effnet.best_path).info["encoder"] == "EfficientNet-Lite0 (random init)"
    assert load_predictor(unet.best_path).info["encoder"] is None


@pytest.mark.parametrize("options,label", [
    ({}, "EfficientNet-Lite0 (ImageNet)"),
    ({"encoder": "lite1"}, "EfficientNet-Lite1 (ImageNet)"),
    ({"encoder": "lite2", "weights": "none"}, "EfficientNet-Lite2 (random init)"),
    ({"weights": "/tmp/x/my-lite0.pth"}, "EfficientNet-Lite0 (weights from my-lite0.pth)"),
])
def test_the_encoder_is_named_for_the_reports(spec, options, label):
    from petseg_bench.reporting.model_views import describe_models

    assert spec.encoder_name(spec.config({"in_size": 64}, options)) == label
    views = describe_models({"model_info": {"effnet_unet": {"encoder": label}, "unet": {"encoder": None}}}, [])
    assert views["effnet_unet"].label == f"{spec.display} [{label}]"
    assert views["unet"].label == get_registry().get("model", "unet").display


@pytest.mark.parametrize("options,needle", [
    ({"decoder": "1,2,3"}, "5 positive widths"),
    ({"decoder": "a,b,c,d,e"}, "comma-separated"),
    ({"drop_path": 1.5}, "drop_path"),
    ({"encoder": "lite9"}, "must be one of"),
])
def test_bad_options_are_one_line(spec, options, needle):
    with pytest.raises(PetsegError, match=needle) as info:
        spec.config({"in_size": 64}, options)
    assert "\n" not in str(info.value)


def _unlabelled(tmp_path, names, test_names=()):
    root, data = tmp_path / "unlabelled", tmp_path / "pets"
    (root / "images").mkdir(parents=True)
    (data / "annotations").mkdir(parents=True)
    (data / "annotations" / "test.txt").write_text("".join(f"{n} 1 1 1\n" for n in test_names))
    rows = ["name,species,breed_id,class_id"]
    for k, name in enumerate(names):
        Image.fromarray(np.full((20, 30, 3), 40 * k, np.uint8)).save(root / "images" / f"{name}.jpg")
        rows.append(f"{name},{1 + k % 2},1,1")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root, data


def test_unlabelled_images_load_letterboxed_with_no_mask(tmp_path):
    root, data = _unlabelled(tmp_path, ["Bengal_1", "beagle_2"], test_names=["Bengal_9"])
    images = read_unlabelled(root, data)
    assert images.names == ("Bengal_1", "beagle_2") and images.species.tolist() == [1, 2]
    item = UnlabelledSet(images, 32)[1]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.uint8
    assert (item["label"] == 255).all()  # ignored by every loss: no mask


def test_unlabelled_images_refuse_a_test_split_name(tmp_path):
    root, data = _unlabelled(tmp_path, ["Bengal_1", "beagle_2"], test_names=["beagle_2"])
    with pytest.raises(DataError, match="test-split names .*beagle_2"):
        read_unlabelled(root, data)


def test_reconstruction_phase_trains_on_the_unlabelled_images_too(tmp_path):
    from conftest import train, write_dataset

    from petseg_bench.config import TrainConfig
    from petseg_bench.engine import checkpoint

    data = write_dataset(tmp_path / "pets", n_cat=4, n_dog=4, size=(40, 56))
    root, _ = _unlabelled(tmp_path / "u", [f"Bengal_{k}" for k in range(6)])
    cfg = TrainConfig(epochs=2, batch_size=4, workers=0, precision="fp32", device="cpu", val_fraction=0.25,
                      lr=1e-3, patience=0, unlabelled=str(root))
    messages = []
    result = train("autoencoder", cfg, {"in_size": 32, "base_channels": 4, "latent_dim": 16}, data, tmp_path / "out",
                   log=messages.append)
    assert any("6 unlabelled images" in m for m in messages)
    assert checkpoint.load(result.last_path)["n_unlabelled"] == 6
    rows = {r["phase"]: r for r in result.history}
    # 6 labelled training images (+6 unlabelled in the mask-free phase), batch 4, drop_last
    assert rows["reconstruct"]["images_per_s"] > 0 and rows["segment"]["images_per_s"] > 0
    # a model with no mask-free phase ignores them; "auto" without the folder says so
    messages.clear()
    train("unet", cfg, {"in_size": 32, "base_channels": 4}, data, tmp_path / "out", log=messages.append)
    assert not any("unlabelled" in m for m in messages)
    auto = TrainConfig(**{**cfg.to_dict(), "class_weights": cfg.class_weights, "unlabelled": "auto"})
    train("autoencoder", auto, {"in_size": 32, "base_channels": 4, "latent_dim": 16}, data, tmp_path / "auto",
          log=messages.append)
    assert any("no unlabelled images beside the data" in m for m in messages)


def test_a_model_sets_its_own_generic_fields_per_profile_below_explicit_options():
    from petseg_bench.config import resolve

    reg = get_registry()
    ae = reg.get("model", "autoencoder")
    _, fields = resolve("reference", {}, {}, ae)
    assert fields == {"in_size": 160}  # the profile's size
    assert ae.config(fields, {}, "reference").opt("base_channels") == 32  # the model's own width option
    assert ae.config(fields, {"base_channels": "8"}, "reference").opt("base_channels") == 8  # explicit wins
    assert ae.config(fields, {}, "reference").options["latent_dim"] == 512
    clip = reg.get("model", "clip_unet")
    assert clip.config({}, {}, "reference").options["backbone"] == "efficientnet:lite0"  # a real frozen encoder
    effnet = reg.get("model", "effnet_unet")
    assert effnet.config({}, {}, "reference").options["encoder"] == "lite1"  # chosen by validation
    assert effnet.config({}, {"encoder": "lite2"}, "reference").options["encoder"] == "lite2"
    assert effnet.config({}, {}, "quick").options["encoder"] == "lite0"


def test_species_loss_ignores_unknown_species():
    from petseg_bench.engine.losses import species_loss

    logits = torch.tensor([[4.0, -4.0], [-4.0, 4.0], [4.0, -4.0]])
    assert species_loss(logits, torch.tensor([1, 2, 0])) < 0.01  # both known ones right; the 0 ignored
    assert species_loss(logits, torch.tensor([2, 1, 0])) > 7.0
    assert torch.isclose(species_loss(logits, torch.tensor([1, 2, 0])), species_loss(logits[:2], torch.tensor([1, 2])))

