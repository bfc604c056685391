"""Data: layouts, cleaning of bad inputs, void fill, letterbox, the prepared cache,
seeded splits and the training augmentation. Tiny synthetic images only (except the
one `realdata` test, which skips where the partial copy is absent)."""

from __future__ import annotations

import errno
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from petseg_bench.data import cache as cache_mod
from petseg_bench.data.augment import SALT_PEPPER_MAX, salt_and_pepper, training_augmentation
from petseg_bench.data.cache import dropped_summary, fingerprint, prepare, prepare_all
from petseg_bench.data.decode import SampleError, fill_void, load_mask, load_rgb, load_sample
from petseg_bench.data.layout import detect_layout, list_split
from petseg_bench.data.letterbox import Letterbox
from petseg_bench.data.report import check_report
from petseg_bench.data.split import limit, validation_split
from petseg_bench.errors import DataError

from conftest import COLOURS, sample_arrays, sample_names

SIZE = (20, 30)  # height, width of the synthetic images


def img_path(root, name):
    return root / "images" / f"{name}.jpg"


def tri_path(root, name):
    return root / "annotations" / "trimaps" / f"{name}.png"


def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue()


# --- layouts and listing --------------------------------------------------------------

def test_detect_layout(make_dataset, tmp_path):
    assert detect_layout(make_dataset(layout="official")) == "official"
    assert detect_layout(make_dataset(layout="processed")) == "processed"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither the official layout"):
        detect_layout(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        detect_layout(tmp_path / "file")


def test_missing_data_root_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "pets"
    with pytest.raises(DataError) as info:
        list_split(missing, "test")
    assert str(missing) in str(info.value)
    assert "\n" not in str(info.value)


def test_list_official(make_dataset):
    root = make_dataset(n_cat=2, n_dog=3)
    for split in ("trainval", "test"):
        listing = list_split(root, split)
        assert len(listing.samples) == 5 and not listing.dropped and not listing.absent
        assert sorted(s.species for s in listing.samples) == [1, 1, 2, 2, 2]
        for s in listing.samples:
            assert s.layout == "official" and s.image.is_file() and s.mask.is_file()
            assert (s.species == 1) == s.name[0].isupper()  # cats Capitalised, dogs lower-case
    names = {s.name for s in list_split(root, "trainval").samples}
    assert names.isdisjoint(s.name for s in list_split(root, "test").samples)


def test_list_processed(make_dataset):
    root = make_dataset(layout="processed", n_cat=1, n_dog=2)
    listing = list_split(root, "test")
    assert len(listing.samples) == 3 and not listing.dropped
    assert {s.layout for s in listing.samples} == {"processed"}
    assert {s.species for s in listing.samples} == {0}  # read off the mask at load time


def test_unknown_split(make_dataset):
    with pytest.raises(DataError, match="unknown split"):
        list_split(make_dataset(), "val")


def test_missing_split_file(make_dataset):
    root = make_dataset()
    (root / "annotations" / "test.txt").unlink()
    with pytest.raises(DataError, match="test.txt"):
        list_split(root, "test")
    assert len(list_split(root, "trainval").samples) == 5  # the other split still lists


def test_missing_folder_official_and_processed(make_dataset):
    root = make_dataset()
    os.rename(root / "annotations" / "trimaps", root / "annotations" / "masks")
    with pytest.raises(DataError, match="trimaps"):
        list_split(root, "test")
    proc = make_dataset(layout="processed")
    os.rename(proc / "Test" / "label", proc / "Test" / "labels")
    with pytest.raises(DataError, match="label"):
        list_split(proc, "test")


def test_malformed_split_line_names_file_and_line(make_dataset):
    root = make_dataset()
    with open(root / "annotations" / "test.txt", "a") as f:
        f.write("beagle_500 6 dog 1\n")
    with pytest.raises(DataError, match=r"test\.txt:6"):
        list_split(root, "test")


@pytest.mark.realdata
def test_real_data_lists(real_data):
    listing = list_split(real_data, "test")
    assert detect_layout(real_data) == "official"
    assert listing.samples and {s.species for s in listing.samples} <= {1, 2}
    for s in listing.samples[:2]:
        image, label, species = load_sample(s.image, s.mask, s.layout, s.species)
        assert image.shape[:2] == label.shape and image.shape[2] == 3
        assert set(np.unique(label).tolist()) <= {0, species}


# --- bad inputs: each dropped with a one-line reason, the rest still load ------------

@pytest.fixture
def broken_official(make_dataset):
    """trainval: Abyssinian_1..3 fine, beagle_1..6 and beagle_11 broken, beagle_7..10
    odd but usable, beagle_99 listed but not on disk."""
    root = make_dataset(n_cat=3, n_dog=11)
    tri_path(root, "beagle_1").unlink()  # image without trimap
    img_path(root, "beagle_2").unlink()  # trimap without image
    noise = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    data = jpeg_bytes(noise)
    img_path(root, "beagle_3").write_bytes(data[: len(data) // 2])  # truncated JPEG
    _, tri = sample_arrays(0, 2, SIZE)
    bad = tri.copy()
    bad[0, 0] = 7
    Image.fromarray(bad).save(tri_path(root, "beagle_4"))  # value outside 1/2/3
    Image.fromarray(np.full((SIZE[0], SIZE[1] + 1), 2, np.uint8)).save(tri_path(root, "beagle_5"))  # size
    Image.fromarray(np.full(SIZE, 2, np.uint8)).save(tri_path(root, "beagle_6"))  # no foreground
    rgb, _ = sample_arrays(6, 2, SIZE)
    Image.fromarray(rgb).save(img_path(root, "beagle_7"), format="GIF")  # GIF inside .jpg
    Image.fromarray(rgb).save(img_path(root, "beagle_8"), format="PNG")  # PNG inside .jpg
    rgba = np.dstack([rgb, np.full(SIZE, 128, np.uint8)])
    Image.fromarray(rgba).save(img_path(root, "beagle_9"), format="PNG")  # RGBA
    Image.fromarray(rgb).convert("L").save(img_path(root, "beagle_10"), format="JPEG")  # grey
    # a 16-bit trimap whose values (257) would read as 1 if cast to uint8 first
    Image.fromarray(tri.astype(np.uint16) + 256).save(tri_path(root, "beagle_11"))
    with open(root / "annotations" / "trainval.txt", "a") as f:
        f.write("beagle_99 6 2 1\n")  # listed, not on disk
    return root


EXPECTED_DROPS = {
    "beagle_1": ("beagle_1.jpg", "no trimap"),
    "beagle_2": ("beagle_2.png", "no image"),
    "beagle_3": ("beagle_3.jpg", "truncated or corrupt"),
    "beagle_4": ("beagle_4.png", "outside"),
    "beagle_5": ("beagle_5.jpg", "30x20 but mask is 31x20"),
    "beagle_6": ("beagle_6.png", "no foreground"),
    "beagle_11": ("beagle_11.png", "outside"),
}


def test_bad_inputs_are_dropped_with_reasons(broken_official, tmp_path):
    sp = prepare(broken_official, "trainval", cache_dir=tmp_path / "cache")
    assert sorted(sp.names) == sorted(["Abyssinian_1", "Abyssinian_2", "Abyssinian_3",
                                       "beagle_7", "beagle_8", "beagle_9", "beagle_10"])
    assert sp.absent == ["beagle_99"]
    dropped = {d.name: d for d in sp.dropped}
    assert set(dropped) == set(EXPECTED_DROPS)
    for name, (file, words) in EXPECTED_DROPS.items():
        line = dropped[name].line()
        assert "\n" not in line
        assert file in line, line
        assert words in line, line
    # the unaffected test split is untouched
    assert len(prepare(broken_official, "test", cache_dir=tmp_path / "cache")) == 14


def test_odd_image_formats_become_rgb(broken_official, tmp_path):
    sp = prepare(broken_official, "trainval", cache_dir=tmp_path / "cache")
    rgb, _ = sample_arrays(6, 2, SIZE)
    for name in ("beagle_7", "beagle_8", "beagle_9", "beagle_10"):
        image = sp.image(sp.names.index(name))
        assert image.shape == (*SIZE, 3) and image.dtype == np.uint8, name
    assert (sp.image(sp.names.index("beagle_8")) == rgb).all()  # PNG content: lossless
    assert (sp.image(sp.names.index("beagle_9")) == rgb).all()  # alpha dropped, colours kept
    grey = sp.image(sp.names.index("beagle_10"))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    gif = sp.image(sp.names.index("beagle_7")).astype(int)
    assert np.abs(gif - rgb).max() <= 8  # palette, close to the original colours


def test_processed_layout_bad_inputs(make_dataset, tmp_path):
    root = make_dataset(layout="processed", n_cat=2, n_dog=3)
    test = root / "Test"
    (test / "label" / "beagle_100.png").unlink()  # colour image without label
    (test / "color" / "beagle_101.jpg").unlink()  # label without colour image
    _, tri = sample_arrays(0, 2, SIZE)
    label = np.where(tri == 1, 3, 0).astype(np.uint8)  # 3 is not a processed label value
    Image.fromarray(label).save(test / "label" / "beagle_102.png")
    rgb, _ = sample_arrays(0, 1, SIZE)
    (test / "color" / "Abyssinian_100.jpg").unlink()
    Image.fromarray(np.dstack([rgb, np.zeros(SIZE, np.uint8)])).save(test / "color" / "Abyssinian_100.png")
    sp = prepare(root, "test", cache_dir=tmp_path / "cache")
    assert sp.names == ["Abyssinian_100", "Abyssinian_101"]
    assert list(sp.species) == [1, 1]  # species read off the mask
    assert (sp.image(0) == rgb).all()
    lines = {d.name: d.line() for d in sp.dropped}
    assert set(lines) == {"beagle_100", "beagle_101", "beagle_102"}
    assert "beagle_100.jpg" in lines["beagle_100"] and "no label" in lines["beagle_100"]
    assert "beagle_101.png" in lines["beagle_101"] and "no colour" in lines["beagle_101"]
    assert "beagle_102.png" in lines["beagle_102"] and "outside" in lines["beagle_102"]
    assert list(prepare(root, "trainval", cache_dir=tmp_path / "cache").species) == [1, 1, 2, 2, 2]


def test_unreadable_files_raise_sample_error(tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(SampleError, match="not an image"):
        load_rgb(junk)
    with pytest.raises(SampleError) as info:
        load_mask(junk, "official", 1)
    assert info.value.file == "mask"


# --- masks and void -------------------------------------------------------------------

def test_trimap_to_label(tmp_path):
    tri = np.array([[1, 2], [3, 1]], np.uint8)
    Image.fromarray(tri).save(tmp_path / "t.png")
    assert (load_mask(tmp_path / "t.png", "official", 2) == [[2, 0], [255, 2]]).all()
    assert (load_mask(tmp_path / "t.png", "official", 1) == [[1, 0], [255, 1]]).all()


def test_fill_void_nearest_and_ignore():
    label = np.array([[1, 1, 255, 255, 0, 0],
                      [1, 1, 255, 255, 0, 0]], np.uint8)
    filled = fill_void(label, "nearest")
    assert (filled == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]]).all()
    assert (fill_void(label, "ignore") == label).all()
    with pytest.raises(SampleError, match="entirely void"):
        fill_void(np.full((2, 2), 255, np.uint8))
    with pytest.raises(ValueError):
        fill_void(label, "zero")


def test_void_border_through_load_sample(make_dataset):
    root = make_dataset(n_cat=1, n_dog=0)
    image_p, tri_p = img_path(root, "Abyssinian_1"), tri_path(root, "Abyssinian_1")
    tri = np.asarray(Image.open(tri_p))
    border = tri == 3
    assert border.any()
    _, kept, _ = load_sample(image_p, tri_p, "official", 1, void="ignore")
    assert (kept[border] == 255).all() and (kept[~border] != 255).all()
    _, filled, species = load_sample(image_p, tri_p, "official", 1, void="nearest")
    assert species == 1
    assert set(np.unique(filled[border]).tolist()) <= {0, 1}
    assert (filled[~border] == kept[~border]).all()
    assert 255 not in filled


# --- letterbox ------------------------------------------------------------------------

@pytest.mark.parametrize("h, w", [(30, 20), (20, 30), (25, 25)])
def test_letterbox_fit_keeps_aspect_and_centres(h, w):
    lb = Letterbox.fit(h, w, 64)
    assert max(lb.new_h, lb.new_w) == 64
    assert abs(lb.new_h / lb.new_w - h / w) < 0.05
    assert lb.top == (64 - lb.new_h) // 2 and lb.left == (64 - lb.new_w) // 2
    bottom, right = 64 - lb.top - lb.new_h, 64 - lb.left - lb.new_w
    assert 0 <= bottom - lb.top <= 1 and 0 <= right - lb.left <= 1


def test_letterbox_fit_portrait_and_landscape():
    assert Letterbox.fit(30, 20, 64) == Letterbox(64, 30, 20, 64, 43, 0, 10)
    assert Letterbox.fit(20, 30, 64) == Letterbox(64, 20, 30, 43, 64, 10, 0)


def test_letterbox_apply_pads_with_zero_around_centred_content():
    image = np.full((20, 30, 3), 200, np.uint8)
    lb = Letterbox.fit(20, 30, 64)
    out = lb.apply(image)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (lb.crop(out.transpose(2, 0, 1)) == 200).all()
    assert out[: lb.top].max() == 0 and out[lb.top + lb.new_h:].max() == 0
    label = np.full((20, 30), 2, np.uint8)
    lab = lb.apply(label, label=True)
    assert lab.shape == (64, 64) and set(np.unique(lab).tolist()) == {0, 2}
    with pytest.raises(ValueError):
        lb.apply(np.zeros((30, 20), np.uint8), label=True)


def test_letterbox_invert_exact_when_longer_side_is_size():
    label = np.random.default_rng(0).integers(0, 3, (20, 30)).astype(np.uint8)
    lb = Letterbox.fit(20, 30, 30)
    boxed = lb.apply(label, label=True)
    assert boxed.shape == (30, 30)
    assert np.array_equal(lb.invert(boxed, label=True), label)


def test_letterbox_invert_exact_for_integer_upscale():
    small = np.random.default_rng(1).integers(0, 3, (10, 15)).astype(np.uint8)
    up = small.repeat(2, 0).repeat(2, 1)  # nearest 2x upsample, 20x30
    lb = Letterbox.fit(20, 30, 30)
    assert np.array_equal(lb.invert(lb.apply(up, label=True), label=True), up)
    # and letterboxing the small label straight to 30 (an exact 2x) also inverts exactly
    lb2 = Letterbox.fit(10, 15, 30)
    boxed = lb2.apply(small, label=True)
    assert np.array_equal(lb2.crop(boxed), up)
    assert np.array_equal(lb2.invert(boxed, label=True), small)


def test_letterbox_invert_shrink_returns_original_shape():
    label = np.zeros((60, 100), np.uint8)
    label[10:50, 20:70] = 1
    lb = Letterbox.fit(60, 100, 32)
    back = lb.invert(lb.apply(label, label=True), label=True)
    assert back.shape == label.shape
    assert (back == label).mean() > 0.9


# --- the prepared cache ---------------------------------------------------------------

def count_loads(monkeypatch) -> list:
    calls = []
    real = cache_mod.load_sample

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "load_sample", counting)
    return calls


def test_prepare_twice_builds_once(make_dataset, tmp_path, monkeypatch):
    root = make_dataset()
    calls = count_loads(monkeypatch)
    first = prepare(root, "trainval", cache_dir=tmp_path / "cache")
    assert len(calls) == 5
    mtime = first.root.stat().st_mtime_ns
    second = prepare(root, "trainval", cache_dir=tmp_path / "cache")
    assert len(calls) == 5
    assert second.root == first.root and second.root.stat().st_mtime_ns == mtime
    assert second.names == first.names and second.fingerprint == first.fingerprint


def test_cache_round_trips_direct_decode(make_dataset, tmp_path):
    root = make_dataset(layout="official", n_cat=2, n_dog=2)
    for void in ("nearest", "ignore"):
        sp = prepare(root, "test", void=void, cache_dir=tmp_path / "cache")
        listing = {s.name: s for s in list_split(root, "test").samples}
        assert sp.void == void and sp.layout == "official" and len(sp) == 4
        for i, name in enumerate(sp.names):
            s = listing[name]
            image, label, species = load_sample(s.image, s.mask, s.layout, s.species, void)
            assert np.array_equal(sp.image(i), image)
            assert np.array_equal(sp.label(i), label)
            assert sp.species[i] == species
        assert (255 in np.asarray(sp.labels_flat)) == (void == "ignore")
    assert sp.index_of(sp.names[::-1]) == list(range(len(sp)))[::-1]


def test_cache_key_follows_content(make_dataset, tmp_path):
    root = make_dataset()
    first = prepare(root, "test", cache_dir=tmp_path / "cache")
    rgb, _ = sample_arrays(0, 1, SIZE)
    img_path(root, "Abyssinian_100").write_bytes(jpeg_bytes(255 - rgb))
    second = prepare(root, "test", cache_dir=tmp_path / "cache")
    assert second.fingerprint != first.fingerprint and second.root != first.root


def test_leftover_temp_folder_does_not_break_prepare(make_dataset, tmp_path, monkeypatch):
    root = make_dataset()
    cache_dir = tmp_path / "cache"
    fp = fingerprint(list_split(root, "trainval"))
    stale = cache_dir / f".trainval-{fp}-nearest-x1y2z3"  # an interrupted prepare
    stale.mkdir(parents=True)
    (stale / "images.npy").write_bytes(b"half written")
    sp = prepare(root, "trainval", cache_dir=cache_dir)
    assert len(sp) == 5 and sp.root.name == f"trainval-{fp}-nearest"
    assert sp.image(0).shape == (*SIZE, 3)


def test_final_folder_without_index_is_rebuilt(make_dataset, tmp_path):
    root = make_dataset()
    cache_dir = tmp_path / "cache"
    fp = fingerprint(list_split(root, "test"))
    broken = cache_dir / f"test-{fp}-nearest"
    broken.mkdir(parents=True)
    (broken / "images.npy").write_bytes(b"junk")
    sp = prepare(root, "test", cache_dir=cache_dir)
    assert len(sp) == 5 and sp.root == broken


def test_prepare_all_and_empty_split(make_dataset, tmp_path):
    root = make_dataset(n_cat=1, n_dog=1)
    for name in ("Abyssinian_100", "beagle_100"):
        Image.fromarray(np.full(SIZE, 2, np.uint8)).save(tri_path(root, name))
    splits = prepare_all(root, cache_dir=tmp_path / "cache")
    assert set(splits) == {"trainval", "test"}
    assert len(splits["trainval"]) == 2
    assert len(splits["test"]) == 0 and len(splits["test"].dropped) == 2


# --- splits ---------------------------------------------------------------------------

SPECIES = np.array([1] * 20 + [2] * 40)


def test_validation_split_seeded_disjoint_covering_stratified():
    train, val = validation_split(SPECIES, 0.25, seed=3)
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(SPECIES)))
    assert (SPECIES[val] == 1).sum() == 5 and (SPECIES[val] == 2).sum() == 10
    again = validation_split(SPECIES, 0.25, seed=3)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    other = validation_split(SPECIES, 0.25, seed=4)
    assert not np.array_equal(other[1], val)


def test_validation_split_small_and_bad_fractions():
    train, val = validation_split(np.array([1, 2, 2, 2]), 0.1, seed=0)
    assert len(val) == 1 and len(train) == 3  # at least one dog in val; the lone cat trains
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            validation_split(SPECIES, bad, seed=0)


def test_limit_seeded_fixed_subset():
    pos = np.arange(100, 150)
    sub = limit(pos, 10, seed=1)
    assert len(sub) == 10 and len(np.unique(sub)) == 10 and np.isin(sub, pos).all()
    assert np.array_equal(sub, np.sort(sub))
    assert np.array_equal(limit(pos, 10, seed=1), sub)
    assert not np.array_equal(limit(pos, 10, seed=2), sub)
    assert np.array_equal(limit(pos, None, seed=1), pos)
    assert np.array_equal(limit(pos, 500, seed=1), pos)
    with pytest.raises(ValueError):
        limit(pos, 0, seed=1)


# --- training augmentation ------------------------------------------------------------

def coded_sample(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A grey image whose brightness encodes the label (0 black, pet white) and an
    asymmetric pet so that flips and rotations show."""
    mask = np.zeros((size, size), np.uint8)
    mask[8:40, 6:22] = 1
    mask[30:40, 22:50] = 2
    image = np.where(mask[..., None] > 0, 255, 0).astype(np.uint8).repeat(3, axis=2)
    return image, mask


@pytest.mark.parametrize("name", ["seed", "light"])
def test_augmentation_seeded(name):
    image, mask = coded_sample()
    outs = []
    for seed in (7, 7, 8):
        aug = training_augmentation(seed, name)
        outs.append([aug(image=image, mask=mask) for _ in range(3)])
    for a, b in zip(outs[0], outs[1]):
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
    assert any(not np.array_equal(a["image"], c["image"]) for a, c in zip(outs[0], outs[2]))


@pytest.mark.parametrize("name", ["seed", "light"])
def test_augmentation_keeps_image_and_mask_aligned(name):
    image, mask = coded_sample()
    changed = 0
    for seed in range(8):
        out = training_augmentation(seed, name)(image=image, mask=mask)
        img, msk = out["image"], out["mask"]
        assert img.shape == image.shape and msk.shape == mask.shape and msk.dtype == np.uint8
        assert set(np.unique(msk).tolist()) <= {0, 1, 2}
        changed += not np.array_equal(msk, mask)
        # average away the Gaussian noise, then read the label back off the brightness
        smooth = ndimage.uniform_filter(img.astype(np.float64).mean(axis=2), size=5)
        fg_image = smooth > 100
        fg_mask = msk > 0
        # compare away from edges, where interpolation (linear vs nearest) may differ
        interior = ndimage.minimum_filter(fg_mask, 5) == ndimage.maximum_filter(fg_mask, 5)
        agree = (fg_image == fg_mask)[interior].mean()
        assert agree > 0.95, (seed, agree)
    assert changed >= 3  # geometric transforms did happen


def test_no_augmentation_is_the_identity():
    image, mask = coded_sample()
    out = training_augmentation(3, "none")(image=image, mask=mask)
    assert np.array_equal(out["image"], image) and np.array_equal(out["mask"], mask)
    with pytest.raises(ValueError, match="augmentation must be one of"):
        training_augmentation(3, "heavy")


def test_salt_and_pepper_augmentation_is_seeded_and_bounded():
    image = np.full((64, 64, 3), 128, np.uint8)
    never = salt_and_pepper(image, np.random.default_rng(0), 0.0)
    assert never is image
    outs = [salt_and_pepper(image, np.random.default_rng(s), 1.0) for s in (5, 5, 6)]
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
    for out in outs:
        hit = out != 128
        assert set(np.unique(out[hit]).tolist()) <= {0, 255}
        assert hit.mean() <= SALT_PEPPER_MAX + 0.02  # never past the sweep's top level
    # p is the share of images touched
    touched = sum(not np.array_equal(salt_and_pepper(image, np.random.default_rng(s), 0.3), image)
                  for s in range(200))
    assert 40 <= touched <= 80


def test_synthetic_colours_are_distinct():
    # the synthetic dataset's colours must stay apart after JPEG for the tests above
    assert len(set(COLOURS.values())) == 3


# --- issue 10: unreadable files of every kind, dropped with one line, never opened ---

def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` grey pixels but holds almost no data:
    enough for PIL to read the size (and refuse a bomb) without decoding anything."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def make_directory(path):
    path.unlink()
    path.mkdir()


def make_dangling_symlink(path):
    path.unlink()
    path.symlink_to(path.parent / "gone-for-good.jpg")


def make_fifo(path):
    path.unlink()
    os.mkfifo(path)


def make_empty(path):
    path.write_bytes(b"")


def make_bomb(path):
    path.write_bytes(png_header_only(12000, 12000))  # 144 Mpx: over PIL's 89 Mpx warning limit


def make_big_bomb(path):
    path.write_bytes(png_header_only(20000, 20000))  # 400 Mpx: over PIL's hard (error) limit


def make_float_tiff(path):
    Image.fromarray(np.full(SIZE, 0.5, np.float32)).save(path, format="TIFF")


# (case, which file of beagle_1 to spoil, how, words the reason must hold)
UNREADABLE = [
    ("directory named .jpg", "image", make_directory, "is a directory, not a regular file"),
    ("dangling symlink .jpg", "image", make_dangling_symlink, "dangling symlink"),
    ("FIFO named .jpg", "image", make_fifo, "is a FIFO (named pipe), not a regular file"),
    ("zero-byte JPEG", "image", make_empty, "empty file (0 bytes)"),
    ("decompression bomb PNG named .jpg", "image", make_bomb, "decompression bomb, not decoded"),
    ("decompression bomb over the hard limit", "image", make_big_bomb, "decompression bomb, not decoded"),
    ("floating-point TIFF named .jpg", "image", make_float_tiff, "floating-point image"),
    ("directory named .png (trimap)", "mask", make_directory, "is a directory, not a regular file"),
    ("FIFO named .png (trimap)", "mask", make_fifo, "FIFO"),
    ("zero-byte trimap", "mask", make_empty, "empty file (0 bytes)"),
]


def prepare_or_unblock(root, split, cache_dir, fifo=None, timeout=20.0):
    """``prepare`` in a thread; if it is still running after ``timeout`` (blocked on a
    FIFO), open the FIFO's write end so it can finish, and fail."""
    import threading

    out = {}

    def work():
        try:
            out["sp"] = prepare(root, split, cache_dir=cache_dir)
        except BaseException as exc:  # noqa: BLE001 - reported below
            out["exc"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if fifo is not None:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        thread.join(5)
        pytest.fail(f"prepare blocked for {timeout} s (opened the FIFO {fifo})")
    if "exc" in out:
        raise out["exc"]
    return out["sp"]


@pytest.mark.parametrize("case, which, spoil, words", UNREADABLE, ids=[c[0] for c in UNREADABLE])
def test_unreadable_files_are_dropped_with_one_line(make_dataset, tmp_path, case, which, spoil, words):
    root = make_dataset(n_cat=1, n_dog=2)
    target = img_path(root, "beagle_1") if which == "image" else tri_path(root, "beagle_1")
    spoil(target)
    sp = prepare_or_unblock(root, "trainval", tmp_path / "cache", fifo=target if spoil is make_fifo else None)
    assert sorted(sp.names) == ["Abyssinian_1", "beagle_2"]  # the others still load
    (dropped,) = sp.dropped
    line = dropped.line()
    assert dropped.name == "beagle_1" and "\n" not in line
    assert target.name in line and words in line, line
    # and the list next to the cache names it too
    assert line in sp.dropped_list.read_text().splitlines()


def test_fifo_is_never_opened_by_the_fingerprint(make_dataset, tmp_path):
    """A FIFO that appears after the listing (the fingerprint used to read it and hang)."""
    root = make_dataset(n_cat=1, n_dog=1)
    listing = list_split(root, "test")
    fifo = img_path(root, "beagle_100")
    make_fifo(fifo)
    import threading

    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("fp", fingerprint(listing)), daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("fingerprint() blocked on a FIFO")
    assert len(out["fp"]) == 16
    with pytest.raises(SampleError, match="FIFO"):
        load_rgb(fifo)


def test_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    from PIL import ImageFile

    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or real_load(self))
    bomb = tmp_path / "bomb.jpg"
    make_bomb(bomb)
    with pytest.raises(SampleError, match="decompression bomb") as info:
        load_rgb(bomb)
    assert not decoded and "\n" not in str(info.value) and "144000000 pixels" in str(info.value)
    # a real image over a lowered limit: the warning level and the error level both refuse it
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(small)
    for limit in (1000, 500):  # 1600 px: over the warning limit, then over twice the limit
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(SampleError, match="decompression bomb"):
            load_rgb(small)
    assert not decoded


def test_sixteen_bit_images_are_scaled_not_clipped(make_dataset, tmp_path):
    root = make_dataset(n_cat=1, n_dog=1)
    rgb, _ = sample_arrays(0, 2, SIZE)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    sixteen = grey.astype(np.uint16) * 257 + 100  # rounds back to grey
    im = Image.fromarray(sixteen)
    assert im.mode == "I;16"
    im.save(img_path(root, "beagle_1"), format="PNG")  # a 16-bit grey PNG named .jpg
    sp = prepare(root, "trainval", cache_dir=tmp_path / "cache")
    assert not sp.dropped
    image = sp.image(sp.names.index("beagle_1"))
    assert np.array_equal(image, np.repeat(grey[..., None], 3, axis=2))  # not 99.99% white
    # the full range maps onto 0..255, rounded
    ramp = np.array([[0, 128, 129, 257, 32767, 65406, 65407, 65535]], np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert load_rgb(tmp_path / "ramp.png")[0, :, 0].tolist() == [0, 0, 1, 1, 127, 254, 255, 255]


# --- issue 10: a damaged prepared cache is rebuilt, with one line ---------------------

def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def edit_index(folder, fn):
    index = json.loads((folder / "index.json").read_text())
    fn(index)
    (folder / "index.json").write_text(json.dumps(index))


DAMAGE = [
    ("truncated images.npy", lambda f: truncate(f / "images.npy"), "images.npy"),
    ("images.npy cut inside its header", lambda f: truncate(f / "images.npy", 0.001), "images.npy"),
    ("truncated labels.npy", lambda f: truncate(f / "labels.npy", 0.9), "labels.npy"),
    ("missing labels.npy", lambda f: (f / "labels.npy").unlink(), "labels.npy is missing"),
    ("missing index.json", lambda f: (f / "index.json").unlink(), "index.json is missing"),
    ("malformed index.json", lambda f: (f / "index.json").write_text("{\"names\": [1, 2"), "index.json unreadable"),
    ("index.json not an object", lambda f: (f / "index.json").write_text("[]"), "not an object"),
    ("index.json lacks a key", lambda f: edit_index(f, lambda i: i.pop("shapes")), "lacks shapes"),
    ("index.json shapes disagree", lambda f: edit_index(f, lambda i: i["shapes"].pop()), "disagree"),
    ("an older cache version", lambda f: edit_index(f, lambda i: i.update(version=1)), "version 1"),
    ("wrong array size", lambda f: np.save(f / "labels.npy", np.zeros(7, np.uint8)), "expected uint8"),
]


@pytest.mark.parametrize("case, damage, words", DAMAGE, ids=[c[0] for c in DAMAGE])
def test_damaged_cache_is_verified_and_rebuilt(make_dataset, tmp_path, capsys, case, damage, words):
    root = make_dataset(n_cat=2, n_dog=2)
    cache_dir = tmp_path / "cache"
    good = prepare(root, "test", cache_dir=cache_dir)
    expected = [(good.image(i).copy(), good.label(i).copy()) for i in range(len(good))]
    names = list(good.names)
    del good
    capsys.readouterr()
    damage(cache_dir / f"test-{fingerprint(list_split(root, 'test'))}-nearest")
    sp = prepare(root, "test", cache_dir=cache_dir)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is damaged" in err[0] and "rebuilding it" in err[0] and words in err[0], err
    assert sp.names == names
    for i, (image, label) in enumerate(expected):
        assert np.array_equal(sp.image(i), image) and np.array_equal(sp.label(i), label)
    assert [p.name for p in cache_dir.iterdir()] == [sp.root.name]  # nothing left over
    prepare(root, "test", cache_dir=cache_dir)  # and now it opens quietly
    assert capsys.readouterr().err == ""


def test_repair_lines_go_to_the_notice_sink(make_dataset, tmp_path, capsys):
    root = make_dataset(n_cat=1, n_dog=1)
    sp = prepare(root, "test", cache_dir=tmp_path / "cache")
    (sp.root / "labels.npy").unlink()
    lines = []
    cache_mod.set_notice_sink(lines.append)
    try:
        prepare(root, "test", cache_dir=tmp_path / "cache")
    finally:
        cache_mod.set_notice_sink(None)
    assert len(lines) == 1 and "rebuilding" in lines[0]
    assert capsys.readouterr().err == ""


# --- issue 10: leftovers of a killed prepare are cleaned on the next run --------------

def dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def temp_folder(cache_dir, name, owner=None, age_s=0.0):
    folder = cache_dir / name
    folder.mkdir(parents=True)
    (folder / "images.npy").write_bytes(b"half written")
    if owner is not None:
        (folder / "owner").write_text(owner)
    if age_s:
        old = time.time() - age_s
        os.utime(folder, (old, old))
    return folder


def test_leftover_temp_folders_are_cleaned_only_when_their_writer_is_gone(make_dataset, tmp_path, capsys):
    import socket

    root = make_dataset()
    cache_dir = tmp_path / "cache"
    fp = fingerprint(list_split(root, "trainval"))
    host = socket.gethostname()
    dead = temp_folder(cache_dir, f".tmp-trainval-{fp}-nearest-dead", owner=f"{dead_pid()} {host}")
    old_style = temp_folder(cache_dir, f".trainval-{fp}-nearest-x1y2z3", age_s=3600)  # before version 2
    trash = temp_folder(cache_dir, ".tmp-trash-abc", age_s=3600)
    live = temp_folder(cache_dir, f".tmp-test-{fp}-nearest-live", owner=f"{os.getppid()} {host}")
    fresh = temp_folder(cache_dir, f".tmp-test-{fp}-ignore-new")  # no owner yet: being created
    elsewhere = temp_folder(cache_dir, f".tmp-test-{fp}-nearest-far", owner=f"{os.getppid()} other-host")
    unrelated = temp_folder(cache_dir, ".not-ours")
    sp = prepare(root, "trainval", cache_dir=cache_dir)
    assert len(sp) == 5 and sp.root.name == f"trainval-{fp}-nearest"
    for gone in (dead, old_style, trash):
        assert not gone.exists(), gone
    for kept in (live, fresh, elsewhere, unrelated):
        assert kept.exists(), kept
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"removed 3 temporary folders left in {cache_dir} by an interrupted prepare"]


def test_prepare_killed_with_sigkill_leaves_nothing_for_the_next_run(make_dataset, tmp_path, capsys):
    import signal
    import subprocess
    import sys

    root = make_dataset(n_cat=1, n_dog=1)
    cache_dir = tmp_path / "cache"
    script = (
        "import sys, time\n"
        "import numpy as np\n"
        "from petseg_bench.data import cache\n"
        "real = np.save\n"
        "def stall(path, arr, *a, **k):\n"
        "    real(path, arr, *a, **k)\n"
        "    print('WRITING', flush=True)\n"
        "    time.sleep(120)\n"
        "cache.np.save = stall\n"
        "cache.prepare(sys.argv[1], 'test', cache_dir=sys.argv[2])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(root), str(cache_dir)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "WRITING"
        leftovers = [p for p in cache_dir.iterdir() if p.name.startswith(".tmp-test-")]
        assert len(leftovers) == 1 and (leftovers[0] / "owner").is_file()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    sp = prepare(root, "test", cache_dir=cache_dir)
    assert len(sp) == 2
    assert [p.name for p in cache_dir.iterdir()] == [sp.root.name]
    assert "removed 1 temporary folder" in capsys.readouterr().err


# --- issue 10: a cache folder that cannot be written is one line ----------------------

def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def eacces(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied")


WRITE_FAILURES = [
    ("disk full while writing an array", "np.save", enospc, "no space left on device"),
    ("disk full while writing the index", "index.json", None, "no space left on device"),
    ("read-only cache folder", "tempfile.mkdtemp", eacces, "permission denied"),
    ("cache folder cannot be created", "Path.mkdir", eacces, "permission denied"),
]


@pytest.mark.parametrize("case, where, fail, words", WRITE_FAILURES, ids=[c[0] for c in WRITE_FAILURES])
def test_unwritable_cache_is_one_line(make_dataset, tmp_path, monkeypatch, case, where, fail, words):
    root = make_dataset(n_cat=1, n_dog=1)
    cache_dir = tmp_path / "cache"
    if where == "np.save":
        monkeypatch.setattr(cache_mod.np, "save", fail)
    elif where == "index.json":  # the last file written, after the arrays
        real_write = Path.write_text

        def write_text(self, data, *a, **k):
            if self.name == "index.json":
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(self, data, *a, **k)

        monkeypatch.setattr(Path, "write_text", write_text)
    elif where == "tempfile.mkdtemp":
        monkeypatch.setattr(cache_mod.tempfile, "mkdtemp", fail)
    else:
        monkeypatch.setattr(Path, "mkdir", fail)
    with pytest.raises(DataError) as info:
        prepare(root, "test", cache_dir=cache_dir)
    message = str(info.value)
    assert "\n" not in message and words in message and "cannot write the prepared cache" in message
    assert "PETSEG_CACHE" in message
    if cache_dir.exists():
        assert list(cache_dir.iterdir()) == []  # no half-written temporary folder


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_cache_folder_is_one_line(make_dataset, tmp_path):
    root = make_dataset(n_cat=1, n_dog=1)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    cache_dir.chmod(0o500)
    try:
        with pytest.raises(DataError, match="cannot write the prepared cache.*permission denied"):
            prepare(root, "test", cache_dir=cache_dir)
    finally:
        cache_dir.chmod(0o700)


# --- issue 10: the dropped list and its one line --------------------------------------

def test_dropped_summary_names_the_count_and_the_list(broken_official, tmp_path):
    sp = prepare(broken_official, "trainval", cache_dir=tmp_path / "cache")
    line = dropped_summary(sp)
    assert line == f"{len(EXPECTED_DROPS)} trainval images dropped (list: {sp.root / 'dropped.txt'})"
    listed = sp.dropped_list.read_text().splitlines()
    for d in sp.dropped:
        assert d.line() in listed
    assert "beagle_99" in listed  # the absent name, in its own section
    clean = prepare(broken_official, "test", cache_dir=tmp_path / "cache")
    assert dropped_summary(clean) is None
    # a list deleted by hand is written again
    sp.dropped_list.unlink()
    assert dropped_summary(sp) == line and sp.dropped_list.is_file()


def test_notice_sink_gets_the_dropped_line_once(broken_official, tmp_path):
    lines = []
    cache_mod.set_notice_sink(lines.append)
    try:
        for _ in range(3):
            sp = prepare(broken_official, "trainval", cache_dir=tmp_path / "cache")
        prepare(broken_official, "test", cache_dir=tmp_path / "cache")  # nothing dropped: no line
    finally:
        cache_mod.set_notice_sink(None)
    assert lines == [dropped_summary(sp)]


def test_bad_void_mode_is_one_line(make_dataset, tmp_path):
    with pytest.raises(DataError, match="void mode must be one of nearest, ignore"):
        prepare(make_dataset(), "test", void="zero", cache_dir=tmp_path / "cache")


# --- issue 10: evaluation-only data ----------------------------------------------------

def test_check_report_evaluation_only_data(make_dataset, tmp_path):
    root = make_dataset(n_cat=1, n_dog=2)
    for name, _ in sample_names(1, 2, 1):  # no trainval image on disk
        img_path(root, name).unlink()
        tri_path(root, name).unlink()
    text, usable = check_report(root, cache_dir=tmp_path / "cache")
    assert usable
    assert "no trainval images: training is not possible; evaluation is" in text
    # and with no trainval split file at all
    (root / "annotations" / "trainval.txt").unlink()
    text, usable = check_report(root, cache_dir=tmp_path / "cache")
    assert usable and "no trainval images: training is not possible; evaluation is" in text
    assert "trainval: not listed: split file" in text


def test_check_report_without_test_images_is_unusable(make_dataset, tmp_path):
    root = make_dataset(n_cat=1, n_dog=1)
    (root / "annotations" / "test.txt").unlink()
    text, usable = check_report(root, cache_dir=tmp_path / "cache")
    assert not usable
    assert "no usable image in test: evaluation is not possible; training is" in text
