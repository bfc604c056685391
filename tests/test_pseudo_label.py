"""Self-training: ``pseudo-label`` (a teacher labels the unlabelled photos, unsure pixels
void) and ``train --pseudo`` (the student trains on labelled + pseudo-labelled images,
validation untouched), plus ``evaluate --split val``.

A tiny U-Net teacher (32 px, 4 base channels) trains in seconds on 12 synthetic
labelled images; the unlabelled photos are synthetic 32x32 cats and dogs of breeds the
labelled data lacks, so the letterbox is the identity and confidences can be checked
pixel by pixel against an independent softmax.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from petseg_bench.cli import main
from petseg_bench.config import TrainConfig
from petseg_bench.data.decode import load_rgb
from petseg_bench.data.pseudo import MANIFEST, load_pseudo
from petseg_bench.engine import checkpoint
from petseg_bench.engine import training as training_mod
from petseg_bench.engine.predictor import load_predictor
from petseg_bench.engine.pseudo_label import confident_label
from petseg_bench.engine.runtime import Runtime
from petseg_bench.errors import PetsegError

from conftest import one_error_line, quiet, sample_arrays, train, write_dataset

TINY = {"in_size": 32, "base_channels": 4}
PHOTOS = [(f"Bengal_{k}", 1) for k in range(1, 5)] + [(f"boxer_{k}", 2) for k in range(1, 5)]


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=4, workers=0, precision="fp32", device="cpu", seed=3, val_fraction=0.25,
                lr=3e-3, patience=0)
    return TrainConfig(**{**base, **kw})


def write_photos(root: Path, photos=PHOTOS, size=(32, 32)) -> Path:
    (root / "images").mkdir(parents=True)
    rows = ["name,species,breed_id,class_id"]
    for k, (name, species) in enumerate(photos):
        image, _ = sample_arrays(k, species, size)
        Image.fromarray(image).save(root / "images" / f"{name}.jpg", quality=95)
        rows.append(f"{name},{species},1,{1 if species == 1 else 20}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """(data root, unlabelled photos, teacher best.pt, cache dir)."""
    base = tmp_path_factory.mktemp("self-training")
    data = write_dataset(base / "pets", n_cat=6, n_dog=6, size=(40, 56))
    photos = write_photos(base / "pets-unlabelled")
    cache = base / "cache"
    teacher = train("unet", cfg(epochs=8, lr=1e-2, augment="none", class_weights=(1.0, 1.0, 1.0)), TINY, data,
                    base / "teacher", cache_dir=cache, log=quiet)
    return data, photos, teacher.best_path, cache


@pytest.fixture(scope="module")
def softmax(setting):
    """Per photo, (largest softmax probability, argmax) of the teacher's logits, computed
    apart from the pseudo-labeller (32x32 photos at 32 px: the letterbox is the identity)."""
    _, photos, teacher, _ = setting
    pr = load_predictor(teacher, Runtime.choose("cpu", "fp32"))
    out = {}
    for name, _ in PHOTOS:
        rgb = load_rgb(photos / "images" / f"{name}.jpg")
        probs = torch.softmax(pr.logits(torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous()), 1)[0]
        out[name] = tuple(t.numpy() for t in probs.max(0))
    return out


@pytest.fixture(scope="module")
def threshold(softmax):
    """The median confidence of the pixels the (weak, tiny) teacher calls pet: some kept, some void."""
    pet = np.concatenate([conf[arg > 0] for conf, arg in softmax.values()])
    assert len(pet), "the teacher predicts no pet pixel at all"
    return round(float(np.median(pet)), 4)


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def label(setting, out, *extra):
    data, photos, teacher, _ = setting
    return run_cli("pseudo-label", teacher, "--unlabelled", photos, "--out", out, "--data-root", data,
                   "--device", "cpu", "--precision", "fp32", "--batch-size", "3", *extra)


# --- the threshold ----------------------------------------------------------------------

def test_confident_label_voids_exactly_the_unsure_pixels_and_the_wrong_species():
    # 1x5 pixels, logits for background / cat / dog; softmax maxima 0.9998, 0.69, 0.9, 0.9998, 0.33
    scores = np.array([[[0, 9, 0], [0.0, 1.5, 0.0], [0, 0, np.log(18)], [9, 0, 0], [1, 1, 1]]], np.float32)
    probs = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    for threshold in (0.0, 0.5, 0.6, 0.9 - 1e-6, 0.95):
        got = confident_label(scores, threshold, species=1, wrong_species="keep")
        want = probs.argmax(-1).astype(np.uint8)
        want[probs.max(-1) < threshold] = 255
        assert got.tolist() == want.tolist(), threshold
    # the photo is a cat: the confident dog pixel (index 2) is voided, relabelled or kept
    assert confident_label(scores, 0.5, 1, "void")[0].tolist() == [1, 1, 255, 0, 255]
    assert confident_label(scores, 0.5, 1, "relabel")[0].tolist() == [1, 1, 1, 0, 255]
    assert confident_label(scores, 0.5, 1, "keep")[0].tolist() == [1, 1, 2, 0, 255]
    assert confident_label(scores, 0.5, 2, "void")[0].tolist() == [255, 255, 2, 0, 255]


def test_pseudo_labels_keep_exactly_the_confident_pixels_and_the_manifest_says_so(setting, softmax, threshold, tmp_path):
    data, photos, teacher, _ = setting
    out = tmp_path / "pseudo"
    result = label(setting, out, "--threshold", threshold, "--wrong-species", "keep")
    assert result.exit_code == 0, result.output
    m = json.loads((out / MANIFEST).read_text())
    assert m["complete"] is True and m["threshold"] == threshold and m["n_photos"] == len(PHOTOS)
    assert m["teacher"]["sha256"] == hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert m["teacher"]["model"] == "unet" and m["layout"] == "processed"
    assert m["n_images"] + m["n_skipped"] == len(PHOTOS) and m["n_images"] >= 1, m
    kept_px = all_px = 0
    for name, _species in PHOTOS:
        conf, arg = softmax[name]
        want = arg.astype(np.uint8)
        want[conf < threshold] = 255
        path = out / "TrainVal" / "label" / f"{name}.png"
        if name in m["skipped"]:
            assert not path.exists() and not np.isin(want, (1, 2)).any()
            continue
        got = np.asarray(Image.open(path))
        clear = np.abs(conf - threshold) > 1e-5  # float rounding may differ right at the threshold
        assert (got[clear] == want[clear]).all(), name
        assert (out / "TrainVal" / "color" / f"{name}.jpg").read_bytes() == (photos / "images" / f"{name}.jpg").read_bytes()
        assert m["images"][name]["kept_fraction"] == pytest.approx((got != 255).mean(), abs=1e-6)
        kept_px, all_px = kept_px + int((got != 255).sum()), all_px + got.size
    assert m["kept_fraction"] == pytest.approx(kept_px / all_px, abs=1e-6)
    assert sum(b["images"] for b in m["breeds"].values()) == m["n_images"]
    assert set(m["breeds"]) <= {"Bengal", "boxer"}
    # the same command again continues: nothing is labelled twice, the manifest is the same
    again = label(setting, out, "--threshold", threshold, "--wrong-species", "keep")
    assert again.exit_code == 0, again.output
    assert f"{m['n_images']} of {len(PHOTOS)} photos already labelled" in again.output
    m2 = json.loads((out / MANIFEST).read_text())
    assert {k: m2[k] for k in ("images", "kept_fraction", "breeds")} == {k: m[k] for k in ("images", "kept_fraction", "breeds")}
    # another threshold into the same folder is refused, not mixed
    other = label(setting, out, "--threshold", threshold / 2, "--wrong-species", "keep")
    assert other.exit_code != 0 and "other settings (threshold)" in one_error_line(other.output)


def test_an_interrupted_run_labels_only_the_photos_left(setting, tmp_path):
    out = tmp_path / "pseudo"
    args = ("--threshold", 0, "--wrong-species", "relabel")  # every pixel kept
    assert label(setting, out, *args).exit_code == 0
    m = json.loads((out / MANIFEST).read_text())
    assert m["n_images"] >= 2 and m["kept_fraction"] == 1.0
    gone = out / "TrainVal" / "label" / f"{next(iter(m['images']))}.png"
    before = gone.read_bytes()
    gone.unlink()
    (out / MANIFEST).write_text(json.dumps({**m, "complete": False}))
    again = label(setting, out, *args)
    assert again.exit_code == 0 and f"{m['n_images'] - 1} of {len(PHOTOS)} photos already labelled" in again.output
    assert gone.read_bytes() == before and json.loads((out / MANIFEST).read_text())["complete"] is True


# --- refusals: one line each ---------------------------------------------------------------

def test_a_test_split_name_among_the_photos_is_refused(setting, tmp_path):
    data, _, _, _ = setting
    leaked = write_photos(tmp_path / "leaky", PHOTOS[:2] + [("beagle_101", 2)])  # beagle_101 is a test image
    result = run_cli("pseudo-label", setting[2], "--unlabelled", leaked, "--out", tmp_path / "o", "--data-root", data,
                     "--device", "cpu")
    assert result.exit_code != 0
    assert "test-split names" in one_error_line(result.output) and "beagle_101" in result.output
    assert not (tmp_path / "o").exists()
    labelled = write_photos(tmp_path / "labelled", PHOTOS[:2] + [("Abyssinian_2", 1)])  # a labelled trainval image
    result = run_cli("pseudo-label", setting[2], "--unlabelled", labelled, "--out", tmp_path / "o", "--data-root", data,
                     "--device", "cpu")
    assert result.exit_code != 0 and "trainval split" in one_error_line(result.output)


@pytest.mark.parametrize("args, needle", [
    (["--threshold", "1.5"], "--threshold"),
    (["--threshold", "nan"], "--threshold"),
    (["--limit", "0"], "--limit must be >= 1"),
    (["--wrong-species", "maybe"], "--wrong-species"),
    (["--unlabelled", "/nonexistent/photos"], "labels.csv"),
    (["--data-root", "/nonexistent/pets"], "does not exist"),  # the test-split guard needs the labelled data
])
def test_bad_pseudo_label_inputs_are_one_line(setting, tmp_path, args, needle):
    data, photos, teacher, _ = setting
    base = ["pseudo-label", teacher, "--unlabelled", photos, "--out", tmp_path / "o", "--data-root", data, "--device", "cpu"]
    result = run_cli(*base, *args)
    assert result.exit_code != 0 and needle in one_error_line(result.output)


def test_a_missing_teacher_or_a_foreign_out_folder_is_one_line(setting, tmp_path):
    data, photos, teacher, _ = setting
    result = run_cli("pseudo-label", tmp_path / "none.pt", "--unlabelled", photos, "--out", tmp_path / "o",
                     "--data-root", data)
    assert result.exit_code != 0 and "none.pt" in one_error_line(result.output)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    result = label(setting, busy)
    assert result.exit_code != 0 and "not empty" in one_error_line(result.output)
    result = label(setting, photos / "pseudo")  # inside an input
    assert result.exit_code != 0 and one_error_line(result.output)


# --- the student -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pseudo_dir(setting, threshold, tmp_path_factory):
    out = tmp_path_factory.mktemp("pseudo") / "labels"
    result = label(setting, out, "--threshold", threshold, "--wrong-species", "keep")
    assert result.exit_code == 0, result.output
    assert json.loads((out / MANIFEST).read_text())["n_images"] >= 2
    return out


def test_pseudo_images_join_the_training_part_only(setting, pseudo_dir, threshold, tmp_path):
    data, _, _, cache = setting
    job = training_mod.TrainJob(model="unet", cfg=cfg(pseudo=str(pseudo_dir)), data_root=data, out_dir=tmp_path,
                                model_fields={"in_size": 32}, model_options={"base_channels": 4}, cache_dir=cache)
    plain = training_mod.setup(training_mod.TrainJob(**{**vars(job), "cfg": cfg()}), False, quiet)
    ctx = training_mod.setup(job, False, quiet)
    n_pseudo = json.loads((pseudo_dir / MANIFEST).read_text())["n_images"]
    # validation: the same labelled images as without --pseudo, none of them pseudo-labelled
    assert ctx.prepared.names == plain.prepared.names and ctx.val_pos.tolist() == plain.val_pos.tolist()
    pseudo_names = set(load_pseudo(pseudo_dir, data, cache).prepared.names)
    assert not pseudo_names & set(ctx.prepared.names) and len(pseudo_names) == n_pseudo
    assert len(ctx.train_set) == len(plain.train_set) + n_pseudo and ctx.meta["n_train"] == plain.meta["n_train"]
    # the pseudo items carry their void pixels (ignored by CE and Dice), the labelled ones none (void nearest)
    ctx.train_set.epoch = 1
    assert ctx.train_set.datasets[1].epoch == 1
    labels = [ctx.train_set[k]["label"] for k in range(len(ctx.train_set))]
    assert not any((lab == 255).any() for lab in labels[:len(plain.train_set)])
    assert any((lab == 255).any() for lab in labels[len(plain.train_set):])
    assert ctx.meta["pseudo"]["n_images"] == n_pseudo and ctx.meta["pseudo"]["threshold"] == threshold


def test_a_student_trains_with_pseudo_and_its_checkpoint_records_them(setting, pseudo_dir, tmp_path):
    data, _, teacher, cache = setting
    result = train("unet", cfg(epochs=1, pseudo=str(pseudo_dir)), TINY, data, tmp_path, cache_dir=cache, log=quiet)
    saved = checkpoint.load(result.best_path)
    assert saved["train_config"]["pseudo"] == str(pseudo_dir)
    info = saved["pseudo"]
    assert info["teacher_sha256"] == hashlib.sha256(teacher.read_bytes()).hexdigest()
    assert info["fingerprint"] and info["n_images"] >= 2
    assert saved["data_fingerprint"] == checkpoint.load(teacher)["data_fingerprint"]  # the labelled trainval's
    # a resume on other pseudo labels is refused
    manifest = json.loads((pseudo_dir / MANIFEST).read_text())
    victim = pseudo_dir / "TrainVal" / "label" / f"{next(iter(manifest['images']))}.png"
    original = victim.read_bytes()
    try:
        lab = np.asarray(Image.open(victim)).copy()
        lab[0, 0] = 255 if lab[0, 0] != 255 else 0
        Image.fromarray(lab).save(victim)
        with pytest.raises(PetsegError, match="other pseudo-labelled images"):
            train("unet", cfg(epochs=1, pseudo=str(pseudo_dir)), TINY, data, tmp_path, resume=True, cache_dir=cache,
                  log=quiet)
    finally:
        victim.write_bytes(original)


def test_bad_pseudo_folders_are_one_line(setting, pseudo_dir, tmp_path):
    data, _, _, cache = setting
    for folder, needle in ((tmp_path / "none", "no such folder"), (tmp_path, "no pseudo-labels.json")):
        with pytest.raises(PetsegError, match=needle):
            load_pseudo(folder, data, cache)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / MANIFEST).write_text(json.dumps({**json.loads((pseudo_dir / MANIFEST).read_text()), "complete": False}))
    with pytest.raises(PetsegError, match="did not finish"):
        load_pseudo(unfinished, data, cache)
    # a pseudo-labelled name that the labelled data has (here: its own trainval) is refused
    clash = tmp_path / "clash"
    (clash / "TrainVal" / "color").mkdir(parents=True)
    (clash / "TrainVal" / "label").mkdir(parents=True)
    image, trimap = sample_arrays(0, 1, (40, 56))
    Image.fromarray(image).save(clash / "TrainVal" / "color" / "Abyssinian_1.jpg")
    Image.fromarray(np.where(trimap == 1, 1, 0).astype(np.uint8)).save(clash / "TrainVal" / "label" / "Abyssinian_1.png")
    (clash / MANIFEST).write_text((pseudo_dir / MANIFEST).read_text())
    with pytest.raises(PetsegError, match="labelled data's trainval split"):
        load_pseudo(clash, data, cache)
    result = run_cli("train", "unet", "--data-root", data, "--pseudo", tmp_path / "none", "--epochs", "1",
                     "--in-size", "32", "--device", "cpu", "--out", tmp_path / "o")
    assert result.exit_code != 0 and "no such folder" in one_error_line(result.output)


# --- evaluate --split val ---------------------------------------------------------------------

def test_evaluate_split_val_scores_the_checkpoints_own_validation_images(setting, tmp_path):
    data, _, teacher, cache = setting
    out = tmp_path / "val.json"
    result = run_cli("evaluate", teacher, "--split", "val", "--data-root", data, "--cache-dir", cache,
                     "--bootstrap", "0", "--device", "cpu", "--precision", "fp32", "--out", out)
    assert result.exit_code == 0, result.output
    got = json.loads(out.read_text())
    saved = checkpoint.load(teacher)
    assert got["split"] == "val" and got["metrics"]["n_images"] == saved["n_val"]
    assert sum(g["n_images"] for g in got["breeds"]["groups"].values()) == saved["n_val"]
    # the validation mIoU the training recorded for this checkpoint (BN folded here: float noise only)
    assert got["metrics"]["dataset"]["iou"]["mean"] == pytest.approx(saved["val"]["val_miou"], abs=2e-3)
    other = write_dataset(tmp_path / "other", n_cat=3, n_dog=3, size=(40, 56))
    result = run_cli("evaluate", teacher, "--split", "val", "--data-root", other, "--cache-dir", cache, "--device", "cpu",
                     "--out", tmp_path / "v2.json")
    assert result.exit_code != 0 and "was trained on other data" in one_error_line(result.output)
