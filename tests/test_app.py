"""The app's functions behind the page (no browser): uploads, checkpoints, inference,
drawing, and the page handlers' messages for bad input.

Tiny models (32 px, 4 channels) trained for a few epochs on 64 px synthetic pets.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_support import MODELS, TRAIN, pet_photo, save, train_checkpoints
from conftest import COLOURS, quiet, train
from petseg_bench.app import render
from petseg_bench.app.segment import AppMessage, Request, click_sigma, describe_level, segment, to_letterbox
from petseg_bench.app.catalog import ModelCache, backbone_text, find_checkpoints, no_checkpoints_line
from petseg_bench.app.uploads import MAX_SIDE, UploadError, load_upload, payload_source
from petseg_bench.data.letterbox import Letterbox
from petseg_bench.errors import PetsegError
from petseg_bench.plugins import get_registry
from petseg_bench.specs import PerturbationSpec

gr = pytest.importorskip("gradio", reason="the app's page needs Gradio (pip install 'petseg-bench[app]')")
from petseg_bench.app.page import Page  # noqa: E402 - after the Gradio check

@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    return train_checkpoints(tmp_path_factory)


@pytest.fixture(scope="module")
def cache() -> ModelCache:
    from petseg_bench.engine.runtime import Runtime

    return ModelCache(Runtime.choose("cpu", "fp32"))


@pytest.fixture
def photo(tmp_path):
    return load_upload(save(pet_photo(), tmp_path / "pet.png"))


# --- uploads -----------------------------------------------------------------------------------


def test_upload_decodes_png_jpeg_rgba_and_grey(tmp_path):
    image = pet_photo()
    assert np.array_equal(load_upload(save(image, tmp_path / "a.png")).image, image)
    jpeg = load_upload(save(image, tmp_path / "a.jpg", quality=95))
    assert jpeg.image.shape == image.shape and np.abs(jpeg.image.astype(int) - image).mean() < 3
    rgba = np.dstack([image, np.full(image.shape[:2], 7, np.uint8)])
    assert np.array_equal(load_upload(save(rgba, tmp_path / "b.png")).image, image)
    grey = load_upload(save(image[..., 0], tmp_path / "g.png")).image
    assert grey.shape == image.shape and np.array_equal(grey[..., 1], image[..., 0])
    sixteen = Image.fromarray(np.full((20, 30), 65535, np.uint16))
    sixteen.save(tmp_path / "s.png")
    assert load_upload(tmp_path / "s.png").image.max() == 255
    # the same pixels name the same image (the perturbations' generators depend on it)
    assert load_upload(tmp_path / "a.png").key == load_upload(tmp_path / "b.png").key


def test_upload_downscales_first_and_says_so(tmp_path):
    big = np.zeros((1500, 2400, 3), np.uint8)
    big[300:1200, 600:1800] = (200, 50, 50)
    for name in ("big.jpg", "big.png"):
        up = load_upload(save(big, tmp_path / name))
        assert up.image.shape == (640, MAX_SIDE, 3)
        assert up.original == (1500, 2400)
        assert "2400x1500 px, downscaled to 1024x640 px" in up.note


@pytest.mark.parametrize("content, expected", [
    (b"this is not an image at all\n" * 20, "not an image"),
    (b"", "empty file"),
])
def test_upload_refuses_non_images_with_one_line(tmp_path, content, expected):
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    with pytest.raises(UploadError, match=expected) as info:
        load_upload(path)
    assert "\n" not in str(info.value)


def test_upload_refuses_a_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    data = (tmp_path / "full.jpg")
    save(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), data, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(UploadError, match="truncated or corrupt"):
        load_upload(cut)


def test_upload_refuses_too_many_pixels_and_tiny_images(tmp_path, monkeypatch):
    from petseg_bench.app import uploads

    monkeypatch.setattr(uploads, "MAX_PIXELS", 1000)
    with pytest.raises(UploadError, match="MP are accepted"):
        load_upload(save(pet_photo(), tmp_path / "a.png"))
    monkeypatch.undo()
    with pytest.raises(UploadError, match="at least 8 px"):
        load_upload(save(pet_photo(4, 40), tmp_path / "thin.png"))


def test_payload_forms(tmp_path):
    import base64

    path = save(pet_photo(), tmp_path / "a.png")
    meta = {"_type": "gradio.FileData"}
    assert payload_source({"path": str(path), "url": "http://127.0.0.1/x", "meta": meta}, tmp_path) == str(path)
    url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    assert np.array_equal(load_upload(payload_source({"path": None, "url": url}, tmp_path)).image, pet_photo())
    assert payload_source(None, tmp_path) is None
    with pytest.raises(UploadError, match="uploaded from the page"):  # tests/test_app_security.py has the rest
        payload_source(str(path), tmp_path)


HUGE = textwrap.dedent("""
    import json, sys
    from petseg_bench.app.uploads import load_upload

    def peak_mb():  # this process's own high-water mark (ru_maxrss would include the parent's)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    before = peak_mb()
    up = load_upload(sys.argv[1])
    print(json.dumps({"before_mb": before, "after_mb": peak_mb(), "shape": up.image.shape, "note": up.note}))
""")


@pytest.mark.parametrize("fmt, budget_mb", [("jpg", 60), ("png", 320)])
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="peak RSS is read from /proc (Linux)")
def test_an_8000px_upload_is_downscaled_without_a_memory_blow_up(tmp_path, fmt, budget_mb):
    """The peak RSS a fresh process gains decoding an 8000 x 8000 upload: a JPEG decodes
    at 1/8 scale (tens of MB), a PNG once at full size (256 MB: Pillow keeps RGB in 4
    bytes a pixel) and is shrunk before any copy is made."""
    big = Image.new("RGB", (8000, 8000), COLOURS[0])
    big.paste(COLOURS[2], (2000, 2000, 6000, 6000))
    path = tmp_path / f"huge.{fmt}"
    big.save(path, quality=85) if fmt == "jpg" else big.save(path, compress_level=1)
    del big
    out = subprocess.run([sys.executable, "-c", HUGE, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rss = json.loads(out.stdout)
    assert tuple(rss["shape"]) == (MAX_SIDE, MAX_SIDE, 3)
    assert "8000x8000 px, downscaled to 1024x1024 px" in rss["note"]
    gained = rss["after_mb"] - rss["before_mb"]
    print(f"8000x8000 {fmt}: peak RSS {rss['after_mb']:.0f} MB, +{gained:.0f} MB for the decode")
    assert gained < budget_mb


# --- checkpoints -------------------------------------------------------------------------------


def test_every_checkpoint_is_listed_with_its_backbone(ckpts):
    choices = find_checkpoints(ckpts)
    labels = {c.path.parent.name: c.label for c in choices}
    assert set(labels) == set(MODELS)
    assert all(c.problem is None for c in choices)
    assert "backbone: none (its own encoder)" in labels["unet"]
    assert "clip:petseg-tiny-vit:none" in labels["point_clip_unet"]
    assert "random" in labels["point_clip_unet"]  # random backbone weights are said so
    assert "32 px" in labels["unet"]


def test_backbone_text():
    assert backbone_text(None, None) == "none (its own encoder)"
    assert backbone_text("efficientnet:lite0", {"label": "EfficientNet-Lite0 (ImageNet)", "random_init": False}) \
        == "EfficientNet-Lite0 (ImageNet) [efficientnet:lite0]"
    assert "random weights" in backbone_text("x:y", {"label": "toy", "random_init": True})


def test_no_checkpoints_is_a_clear_line(tmp_path):
    assert find_checkpoints(tmp_path / "absent") == []
    assert "does not exist" in no_checkpoints_line(tmp_path / "absent")
    assert "holds no <model>/best.pt" in no_checkpoints_line(tmp_path)
    page = Page(tmp_path / "absent")
    assert "No checkpoints" in page.start_line()
    with pytest.warns(UserWarning):
        out = page.respond(load_upload(save(pet_photo(), tmp_path / "a.png")), None, None, "none", 0)
    assert out[1] is None and "No checkpoints" in out[-1] and "Traceback" not in out[-1]


def test_checkpoints_that_fail_to_load_say_why_in_the_page(ckpts, tmp_path, cache):
    import torch

    good = ckpts / "unet" / "best.pt"
    cut = tmp_path / "cut" / "best.pt"  # truncated: found unusable while listing
    cut.parent.mkdir()
    cut.write_bytes(good.read_bytes()[:300])
    data = torch.load(good, weights_only=True)
    key = next(k for k, v in data["state_dict"].items() if v.ndim == 4)
    data["state_dict"][key] = torch.zeros(1, 1, 1, 1)  # listed fine, fails when loaded
    (tmp_path / "unfit").mkdir()
    torch.save(data, tmp_path / "unfit" / "best.pt")
    choices = {c.path.parent.name: c for c in find_checkpoints(tmp_path)}
    assert "unusable" in choices["cut"].label and "truncated or corrupt" in choices["cut"].problem
    assert choices["unfit"].problem is None
    page = Page(tmp_path, cache)
    up = load_upload(save(pet_photo(), tmp_path / "a.png"))
    for name, expected in (("cut", "truncated or corrupt"), ("unfit", "does not fit model unet")):
        with pytest.warns(UserWarning):
            out = page.respond(up, None, str(tmp_path / name / "best.pt"), "none", 0)
        assert out[1] is None and out[-1].startswith("⚠") and expected in out[-1], out[-1]
        assert "Traceback" not in out[-1] and "\n" not in out[-1]


def test_models_load_once_and_stay_cached(ckpts, cache):
    path = ckpts / "unet" / "best.pt"
    first = cache.get(path)
    assert cache.get(path) is first
    os.utime(path, (time.time() + 5, time.time() + 5))  # a retrained file is loaded again
    assert cache.get(path) is not first


# --- inference ---------------------------------------------------------------------------------


def test_the_clean_mask_is_the_predictors_own(ckpts, cache, photo):
    """The app runs the one inference path: its clean mask is Predictor.predict's."""
    pr = cache.get(ckpts / "unet" / "best.pt")
    result = segment(pr, Request(photo))
    assert result.clean.mask.shape == photo.image.shape[:2]
    assert np.array_equal(result.clean.mask, pr.predict([photo.image])[0])
    assert result.perturbed is result.clean  # level 0 is the clean image
    assert set(np.unique(result.clean.mask).tolist()) <= {0, 1, 2}


def test_a_perturbation_level_changes_the_input_and_is_seeded(ckpts, cache, photo):
    pr = cache.get(ckpts / "unet" / "best.pt")
    a = segment(pr, Request(photo, None, "gaussian_noise", 9))
    b = segment(pr, Request(photo, None, "gaussian_noise", 9))
    assert not np.array_equal(a.perturbed.image, photo.image)
    assert np.array_equal(a.perturbed.image, b.perturbed.image)  # same image, same noise
    assert np.array_equal(a.clean.mask, segment(pr, Request(photo)).clean.mask)
    assert not np.array_equal(a.perturbed.overlay(), a.clean.overlay())
    assert describe_level("gaussian_noise", 9).startswith("gaussian_noise level 9 (")
    assert describe_level("none", 3) == "clean (level 0)"


def test_point_models_need_a_click_inside_the_image(ckpts, cache, photo):
    pr = cache.get(ckpts / "point_clip_unet" / "best.pt")
    with pytest.raises(AppMessage, match="click on the pet"):
        segment(pr, Request(photo))
    with pytest.raises(AppMessage, match="outside the 80x64 image"):
        segment(pr, Request(photo, (70, 10)))
    with pytest.raises(AppMessage, match="outside"):
        segment(pr, Request(photo, (-1, 10)))
    on_pet = segment(pr, Request(photo, (32, 40)))
    assert on_pet.clean.click == (32, 40)
    off = segment(pr, Request(photo, (2, 2)))  # a corner: background
    if off.clean.mask[2, 2] == 0:
        assert any("background" in w for w in off.warnings)


def test_the_click_reaches_the_model_where_it_was_placed(ckpts, cache):
    lb = Letterbox.fit(64, 80, 32)  # 80 wide -> 32, 64 high -> 26 (3 px padding top)
    assert to_letterbox(lb, (0, 0)) == (lb.top, 0)
    assert to_letterbox(lb, (63, 79)) == (lb.top + lb.new_h - 1, 31)
    pr = cache.get(ckpts / "point_clip_unet" / "best.pt")
    # two clicks far apart give two different heatmaps, hence (in general) different logits
    image = pet_photo()
    from petseg_bench.engine.predictor import letterbox_batch

    batch, boxes, _ = letterbox_batch([image, image], 32)
    import torch

    points = torch.tensor([to_letterbox(boxes[0], (32, 40)), to_letterbox(boxes[1], (2, 2))])
    logits = pr.logits(batch, points)
    assert not torch.allclose(logits[0], logits[1])
    assert click_sigma(pr, image.shape) == pytest.approx(pr.config.options["heatmap_sigma"] * 80 / 32)


def test_click_perturbations_move_the_click_of_point_models_only(ckpts, cache, photo):
    point = cache.get(ckpts / "point_clip_unet" / "best.pt")
    moved = segment(point, Request(photo, (32, 40), "click_jitter", 9))
    assert moved.perturbed.click != (32, 40) and "moved the click" in moved.notes[0]
    assert 0 <= moved.perturbed.click[0] < 64 and 0 <= moved.perturbed.click[1] < 80
    plain = cache.get(ckpts / "unet" / "best.pt")
    result = segment(plain, Request(photo, (32, 40), "click_jitter", 9))
    assert "takes none" in result.notes[0]
    assert any("takes no click" in n for n in result.notes)


def test_unavailable_or_out_of_range_perturbations_are_messages(ckpts, cache, photo, monkeypatch):
    reg = get_registry()
    spec = PerturbationSpec("fancy_fog", "density", (0.0, 1.0), lambda ims, v, r: list(ims),
                            unavailable="needs the fog package: pip install fog")
    monkeypatch.setitem(reg.perturbations, "fancy_fog", spec)
    pr = cache.get(ckpts / "unet" / "best.pt")
    with pytest.raises(AppMessage, match="not available here: needs the fog package"):
        segment(pr, Request(photo, None, "fancy_fog", 1))
    with pytest.raises(AppMessage, match="levels 0 to 9, not 12"):
        segment(pr, Request(photo, None, "gaussian_noise", 12))
    with pytest.raises(PetsegError, match="unknown perturbation"):
        segment(pr, Request(photo, None, "no_such_thing", 1))


def test_a_third_party_model_is_offered_and_runs(tmp_path, monkeypatch, make_dataset, cache, photo):
    """A model from another plugin: listed with its label, predicted like the built-ins."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "example_plugin"))
    import petseg_example_plugin as plugin

    reg = get_registry()
    for spec in plugin.petseg_bench_models():
        monkeypatch.setitem(reg.models, spec.name, spec)
    root = make_dataset(n_cat=2, n_dog=2, size=(32, 32))
    train("example_fcn", TRAIN, dict(in_size=32, base_channels=4), root, tmp_path / "ck", log=quiet)
    (choice,) = find_checkpoints(tmp_path / "ck")
    assert choice.problem is None and "example_fcn" in choice.label and "its own encoder" in choice.label
    result = segment(cache.get(choice.path), Request(photo, None, "gaussian_blur", 3))
    assert result.clean.mask.shape == photo.image.shape[:2]


# --- drawing -----------------------------------------------------------------------------------


def test_overlay_shares_heatmap_and_legend():
    image = pet_photo()
    mask = np.zeros(image.shape[:2], np.uint8)
    assert not np.array_equal(render.overlay(image, mask), image)  # even all background shows
    mask[16:48, 20:60] = 2
    shares = render.shares(mask, 3)
    assert shares.sum() == pytest.approx(1.0) and shares[2] == pytest.approx(32 * 40 / (64 * 80))
    over = render.overlay(image, mask)
    assert over[30, 30, 2] > over[2, 2, 2]  # the dog in blue
    heat = render.heatmap(image, (32, 40), 4.0)
    diff = np.abs(heat.astype(int) - image).sum(axis=2)
    assert diff[32, 40] > diff[32, 50] > 0 and diff[32, 60] == 0  # a Gaussian around the click
    assert np.array_equal(render.heatmap(image, None, 4.0), image)
    html = render.legend_html(3, shares, shares, "gaussian_noise level 3")
    for name in ("background", "cat", "dog", "75.0%", "25.0%", "gaussian_noise level 3"):
        assert name in html
    assert "<th>clean</th>" in html and render.class_names(4)[3] == "class 3"


# --- the page's handlers (no browser) -------------------------------------------------------------


def test_handlers_turn_bad_input_into_status_lines(ckpts, cache, tmp_path):
    page = Page(ckpts, cache, uploads=tmp_path)  # the files below stand for uploads
    meta = {"_type": "gradio.FileData"}
    unet = str(ckpts / "unet" / "best.pt")
    point = str(ckpts / "point_clip_unet" / "best.pt")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.warns(UserWarning):
        out = page.on_photo({"path": str(text), "meta": meta}, unet, "none", 0)
    assert out[0] is None and "not an image" in out[-1]
    good = save(pet_photo(), tmp_path / "pet.png")
    out = page.on_photo({"path": str(good), "orig_name": "pet.png", "meta": meta}, unet, "gaussian_noise", 4)
    upload, status = out[0], out[-1]
    assert upload is not None and out[3] is not None and out[4] is not None, status
    assert "U-Net" in status and "gaussian_noise level 4" in status
    assert "background" in out[5] and "%" in out[5]
    waiting = page.respond(upload, None, point, "none", 0)
    assert waiting[1] is None and "click on the pet" in waiting[-1]
    evt = gr.SelectData(None, {"index": [200, 10], "value": None})
    out = page.on_click(upload, point, "none", 0, evt)
    assert out[0] is None and out[2] is None and "outside the 80x64 image" in out[-1]
    assert np.array_equal(render.heatmap(upload.image, (10, 200), 3.0), upload.image)
    out = page.on_click(upload, point, "none", 0, gr.SelectData(None, {"index": [40, 32], "value": None}))
    assert out[0] == (32, 40) and out[2] is not None
    assert page.on_perturbation("imagenet_c_fog" if "imagenet_c_fog" in get_registry().perturbations
                                else "gaussian_noise", 20).maximum in (5, 9)


def test_the_cli_offers_the_app():
    from click.testing import CliRunner

    from petseg_bench.cli import main

    out = CliRunner().invoke(main, ["app", "--help"])
    assert out.exit_code == 0
    for option in ("--checkpoints", "--host", "--port"):
        assert option in out.output


def test_an_image_kept_as_bytes_is_read_like_a_file(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(pet_photo()).save(buf, format="PNG")
    assert np.array_equal(load_upload(buf.getvalue()).image, pet_photo())


def test_a_port_in_use_is_one_line(tmp_path):
    import socket

    from petseg_bench.app.page import launch

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(PetsegError, match=f"cannot serve on 127.0.0.1:{port}: the port is in use"):
            launch(tmp_path, "127.0.0.1", port, block=False)


def test_a_slow_self_check_is_tried_again_then_one_line(tmp_path, monkeypatch):
    """Gradio gives its own page 3 s to answer; a busy machine gets more tries."""
    import socket

    from gradio import networking

    from petseg_bench.app.page import launch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    calls = []
    monkeypatch.setattr(networking, "url_ok", lambda url: calls.append(url) or len(calls) > 1)
    demo = launch(tmp_path, "127.0.0.1", port, block=False)
    try:
        assert len(calls) == 2
    finally:
        demo.close()
    monkeypatch.setattr(networking, "url_ok", lambda url: False)
    with pytest.raises(PetsegError, match="did not answer Gradio's own check; if a proxy is set"):
        launch(tmp_path, "127.0.0.1", port, block=False)
