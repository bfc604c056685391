"""Guards against bad input that would lose or falsify results (issue 22, items 1, 3, 4, 5).

Four kinds, each a table of cases: an output over an input, leaking or double-counted or
changed data, a checkpoint that is not what it claims, and a number that is not a
number. Every case must end in one ``Error:`` line naming the file or option and the
problem, a non-zero exit, no traceback, and every input file byte-identical afterwards.
Tiny synthetic data (6 + 6 images of 40x56 px) and a one-epoch 32-px U-Net on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from petseg_bench.data.cache import prepare
from petseg_bench.options import FiniteFloat, FiniteFloatList
from petseg_bench.paths import clash
from petseg_bench.results import RUN_FILE, Cell

from conftest import write_dataset
# The bad-input tests' module fixtures (a tiny dataset, its cache, a one-epoch unet), shared.
from test_bad_input import SIZE, TINY, Cli, cache_dir, ckpts, data_root, error_line, invoke, tiny_cfg  # noqa: F401


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, data_root, cache_dir, ckpts) -> Path:
    out = tmp_path_factory.mktemp("base") / "run"
    result = invoke(Cli(data_root, cache_dir, ckpts, out.parent).run(out))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def baseline_file(tmp_path_factory, base_run) -> Path:
    out = tmp_path_factory.mktemp("baseline") / "baseline.json"
    result = invoke(["baseline", str(base_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@dataclass
class World:
    """The tiny setup a case works on; ``inputs`` are hashed before and after."""

    cli: Cli
    run: Path  # a copy of the finished sweep, the test's own
    baseline: Path
    tmp: Path

    @property
    def best(self) -> Path:
        return self.cli.ckpts / "unet" / "best.pt"

    def inputs(self) -> list[Path]:
        return [self.cli.data_root, self.cli.ckpts, self.run, self.baseline]


@pytest.fixture
def world(data_root, cache_dir, ckpts, base_run, baseline_file, tmp_path) -> World:
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    return World(Cli(data_root, cache_dir, ckpts, tmp_path), run, baseline_file, tmp_path)


def digests(paths: list[Path]) -> dict[str, str]:
    """SHA-256 of every file under ``paths`` (a refusal must leave them all as they were)."""
    out = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def refused(result, *needles: str, report: bool = False) -> str:
    """The one ``Error:`` line of a refusal (nothing else on stdout unless the command
    reports first, as ``data check`` does), with every needle."""
    line = error_line(result)
    assert report or not [ln for ln in result.stdout.splitlines() if ln.strip()], result.stdout
    for needle in needles:
        assert needle in line, line
    return line


@dataclass
class Case:
    id: str
    args: Callable[[World], list[str]]
    needles: Callable[[World], tuple[str, ...]]


def _run_args(w: World, out: Path, *extra: str) -> list[str]:
    return w.cli.run(out, *extra)


# --------------------------------------------------------------------------- 1. outputs never overwrite inputs

READS = "which this command reads"

OVERWRITES = [
    Case("evaluate-out-is-the-checkpoint", lambda w: w.cli.evaluate(w.best, "--out", str(w.best)),
         lambda w: ("--out", str(w.best), "is the checkpoint", READS)),
    Case("evaluate-out-is-its-last-pt",
         lambda w: w.cli.evaluate(w.best, "--out", str(w.cli.ckpts / "unet" / "last.pt")),
         lambda w: ("last.pt", "is the checkpoint last.pt", READS)),
    Case("evaluate-out-is-its-metrics-log",
         lambda w: w.cli.evaluate(w.best, "--out", str(w.cli.ckpts / "unet" / "metrics.jsonl")),
         lambda w: ("metrics.jsonl", READS)),
    Case("evaluate-out-dotdot-to-the-checkpoint",
         lambda w: w.cli.evaluate(w.best, "--out", str(w.cli.ckpts / "unet" / ".." / "unet" / "best.pt")),
         lambda w: ("is the checkpoint", str(w.best), READS)),
    Case("evaluate-out-symlink-to-the-checkpoint",
         lambda w: w.cli.evaluate(w.best, "--out", str(_link(w.tmp / "link.json", w.best))),
         lambda w: ("link.json", "is the checkpoint", READS)),
    Case("evaluate-out-inside-the-data",
         lambda w: w.cli.evaluate(w.best, "--out", str(w.cli.data_root / "annotations" / "test.txt")),
         lambda w: ("test.txt", "is inside the data root", READS)),
    Case("baseline-out-is-run-json", lambda w: ["baseline", str(w.run), "--out", str(w.run / RUN_FILE)],
         lambda w: (str(w.run / RUN_FILE), "is inside the run folder", READS)),
    Case("baseline-out-is-a-cell",
         lambda w: ["baseline", str(w.run), "--out", str(Cell("unet", "clean", 0).path(w.run))],
         lambda w: ("clean.parquet", "is inside the run folder", READS)),
    Case("check-update-baseline-onto-run-json",
         lambda w: ["check", str(w.run), "--baseline", str(w.run / RUN_FILE), "--update-baseline"],
         lambda w: ("--baseline", str(w.run / RUN_FILE), "is inside the run folder", READS)),
    Case("check-update-baseline-onto-a-cell",
         lambda w: ["check", str(w.run), "--baseline", str(Cell("unet", "gaussian_noise", 1).path(w.run)),
                    "--update-baseline"],
         lambda w: ("--baseline", "gaussian_noise-L1.parquet", "is inside the run folder")),
    Case("run-out-is-the-checkpoints-folder", lambda w: _run_args(w, w.cli.ckpts),
         lambda w: ("--out", "is the checkpoints folder", READS)),
    Case("run-out-inside-a-model-checkpoint-folder", lambda w: _run_args(w, w.cli.ckpts / "unet"),
         lambda w: ("--out", "is inside the checkpoints folder", READS)),
    Case("run-out-inside-the-data", lambda w: _run_args(w, w.cli.data_root / "runs"),
         lambda w: ("--out", "is inside the data root", READS)),
    Case("train-out-inside-the-data", lambda w: w.cli.train(w.cli.data_root / "images"),
         lambda w: ("--out", "is inside the data root", READS)),
    Case("prepare-cache-inside-the-data",
         lambda w: ["data", "prepare", "--data-root", str(w.cli.data_root), "--cache-dir", str(w.cli.data_root / "c")],
         lambda w: ("--cache-dir", "is inside the data root", READS)),
    Case("report-merge-into-one-of-its-inputs",
         lambda w: ["report", str(w.run), str(_copy(w.run, w.tmp / "other")), "--out", str(w.run), "--no-examples"],
         lambda w: ("--out", str(w.run), "is the run folder", READS)),
]


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("case", OVERWRITES, ids=[c.id for c in OVERWRITES])
def test_output_over_an_input_is_refused_before_anything_runs(case, world):
    args = case.args(world)  # may create a link or a copy: before the snapshot
    before = digests(world.inputs())
    refused(invoke(args), *case.needles(world))
    assert digests(world.inputs()) == before
    assert not (world.cli.data_root / "runs").exists() and not (world.cli.data_root / "c").exists()


def test_clash_resolves_relative_paths_and_hard_links(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    target = tmp_path / "d" / "best.pt"
    target.write_bytes(b"x")
    os.link(target, tmp_path / "hard.pt")
    monkeypatch.chdir(tmp_path / "d")
    assert clash("best.pt", target) == "is"
    assert clash("../d/./best.pt", target) == "is"
    assert clash(tmp_path / "hard.pt", target) == "is"
    assert clash("sub/x.json", tmp_path / "d") == "is inside"
    assert clash("best.pt.test.json", target) is None and clash(tmp_path, tmp_path / "d") is None


def test_default_outputs_beside_inputs_still_work(world):
    """evaluate's default (CHECKPOINT.test.json beside best.pt) and `make demo`'s
    checkpoints inside the run folder are outputs beside inputs, not over them."""
    ckpt = world.tmp / "ck" / "unet" / "best.pt"
    ckpt.parent.mkdir(parents=True)
    shutil.copyfile(world.best, ckpt)
    args = world.cli.evaluate(ckpt)
    args.remove("--out")
    args.remove(str(world.tmp / "eval.json"))
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert ckpt.with_suffix(".test.json").is_file()


# --------------------------------------------------------------------------- 3. leakage, duplicates, changed data


def _leaky(w: World, names: tuple[str, ...] = ("beagle_100",)) -> Path:
    """A copy of the data whose trainval also lists test images ``names``."""
    root = _copy(w.cli.data_root, w.tmp / "leaky")
    listed = {ln.split()[0]: ln for ln in (root / "annotations" / "test.txt").read_text().splitlines()}
    with open(root / "annotations" / "trainval.txt", "a") as f:
        f.writelines(listed[n] + "\n" for n in names)
    return root


def _with_root(args: list[str], root: Path) -> list[str]:
    args = list(args)
    args[args.index("--data-root") + 1] = str(root)
    return args


LEAKS = [
    Case("data-check-overlap",
         lambda w: ["data", "check", str(_leaky(w)), "--cache-dir", str(w.tmp / "c")],
         lambda w: ("not usable", "1 name(s) are listed in both trainval and test")),
    Case("train-overlap", lambda w: _with_root(w.cli.train(w.tmp / "ck"), _leaky(w, ("beagle_100", "Abyssinian_101"))),
         lambda w: ("2 image(s) are listed in both trainval and test", "Abyssinian_101, beagle_100")),
    Case("evaluate-overlap", lambda w: _with_root(w.cli.evaluate(w.best), _leaky(w)),
         lambda w: ("listed in both trainval and test (beagle_100)", "--allow-overlap")),
    Case("run-overlap", lambda w: _with_root(w.cli.run(w.tmp / "r"), _leaky(w)),
         lambda w: ("listed in both trainval and test (beagle_100)", "--allow-overlap")),
    Case("run-overlap-resume", lambda w: _with_root(w.cli.run(w.run, "--resume"), _leaky(w)),
         lambda w: ("listed in both trainval and test",)),
]


@pytest.mark.parametrize("case", LEAKS, ids=[c.id for c in LEAKS])
def test_test_images_also_in_trainval_are_refused(case, world):
    args = case.args(world)
    before = digests(world.inputs() + [world.tmp / "leaky"])
    result = invoke(args)
    refused(result, *case.needles(world), report=args[0] == "data")
    if args[0] == "data":
        assert "leak: 1 name(s) are listed in both trainval and test (beagle_100)" in result.stdout
    assert digests(world.inputs() + [world.tmp / "leaky"]) == before
    assert not (world.tmp / "r").exists() and not (world.tmp / "ck").exists() and not (world.tmp / "eval.json").exists()


def test_allow_overlap_evaluates_and_records_the_names(world):
    root = _leaky(world)
    result = invoke(_with_root(world.cli.evaluate(world.best, "--allow-overlap"), root))
    assert result.exit_code == 0, result.output
    assert "warning: --allow-overlap: 1 test image(s) are also in trainval (beagle_100)" in result.stderr
    assert json.loads((world.tmp / "eval.json").read_text())["allowed_overlap"] == ["beagle_100"]
    result = invoke(_with_root(world.cli.run(world.tmp / "r", "--allow-overlap"), root))
    assert result.exit_code == 0, result.output
    assert json.loads((world.tmp / "r" / RUN_FILE).read_text())["allowed_overlap"] == ["beagle_100"]


def test_a_name_listed_twice_counts_once_with_a_warning(world):
    root = _copy(world.cli.data_root, world.tmp / "twice")
    test_txt = root / "annotations" / "test.txt"
    lines = test_txt.read_text().splitlines()
    test_txt.write_text("\n".join(lines + [lines[0], lines[0]]) + "\n")  # 3 times in all, lines 1, 7, 8
    name = lines[0].split()[0]
    sp = prepare(root, "test", cache_dir=world.tmp / "c")
    assert len(sp) == 6 and sorted(sp.names) == sorted(set(sp.names))
    assert sp.duplicates == [f"{test_txt}: {name} is listed 3 times (lines 1, 7, 8); counted once"]

    result = invoke(["data", "check", str(root), "--cache-dir", str(world.tmp / "c")])
    assert result.exit_code == 0, result.output
    assert f"warning: {test_txt}: {name} is listed 3 times (lines 1, 7, 8); counted once" in result.output
    assert [ln.split()[:4] for ln in result.output.splitlines() if ln.startswith("test ")][0] == ["test", "3", "3", "6"]

    result = invoke(_with_root(world.cli.evaluate(world.best), root))
    assert result.exit_code == 0, result.output
    assert f"{name} is listed 3 times" in result.stderr
    assert json.loads((world.tmp / "eval.json").read_text())["metrics"]["n_images"] == 6


def test_a_file_stored_twice_in_the_processed_layout_is_used_once(tmp_path):
    root = write_dataset(tmp_path / "proc", layout="processed", n_cat=2, n_dog=2)
    color = root / "Test" / "color"
    first = sorted(color.iterdir())[0]
    shutil.copyfile(first, color / f"{first.stem}.png")  # a.jpg and a.png: the same sample twice
    sp = prepare(root, "test", cache_dir=tmp_path / "c")
    assert len(sp) == 4
    assert sp.duplicates == [f"{color}: {first.stem} is stored twice ({first.name}, {first.stem}.png); "
                             f"{first.name} is used"]


def _repaint(path: Path) -> None:
    """Other pixels, same name and size: only the contents say it changed."""
    arr = np.asarray(Image.open(path)).copy()
    if arr.ndim == 2:  # a trimap: 1 pet, 2 background, 3 void -> 2, 3, 1 in the top row
        arr[0] = arr[0] % 3 + 1
    else:
        arr[:3] = arr[:3] // 2 + 1
    before = path.read_bytes()
    Image.fromarray(arr).save(path)
    assert path.read_bytes() != before


CHANGES = [
    ("trainval-image", "images/Abyssinian_1.jpg", "train", "1 changed (Abyssinian_1.jpg)"),
    ("trainval-mask", "annotations/trimaps/beagle_2.png", "train", "1 changed (beagle_2.png)"),
    ("trainval-removed", "annotations/trainval.txt", "train", "1 removed (beagle_3)"),
    ("test-image", "images/beagle_100.jpg", "run", "1 changed (beagle_100.jpg)"),
    ("test-mask", "annotations/trimaps/Abyssinian_101.png", "run", "1 changed (Abyssinian_101.png)"),
]


@pytest.fixture(scope="module")
def trained_and_swept(tmp_path_factory, data_root, ckpts):
    """A data copy, a one-epoch training on it and a sweep of it (their own cache)."""
    base = tmp_path_factory.mktemp("changing")
    root = _copy(data_root, base / "pets")
    cli = Cli(root, base / "cache", base / "ck", base)
    assert invoke(cli.train(cli.ckpts)).exit_code == 0
    assert invoke(cli.run(base / "run")).exit_code == 0
    return cli


@pytest.mark.parametrize("name,rel,command,needle", CHANGES, ids=[c[0] for c in CHANGES])
def test_resume_on_changed_data_names_the_files(name, rel, command, needle, trained_and_swept, tmp_path):
    src = trained_and_swept
    root = _copy(src.data_root, tmp_path / "pets")
    ck, run = _copy(src.ckpts, tmp_path / "ck"), _copy(src.tmp / "run", tmp_path / "run")
    cli = Cli(root, src.cache_dir, ck, tmp_path)
    if rel.endswith(".txt"):
        (root / rel).write_text("".join(ln + "\n" for ln in (root / rel).read_text().splitlines()
                                        if not ln.startswith("beagle_3 ")))
    else:
        _repaint(root / rel)
    before = digests([root, ck, run])
    args = cli.train(ck, "--resume") if command == "train" else cli.run(run, "--resume")
    line = refused(invoke(args), "--resume", "on other data", needle)
    assert ("trainval fingerprint" if command == "train" else "test fingerprint") in line
    assert digests([root, ck, run]) == before


def test_resume_without_the_old_file_list_says_so(trained_and_swept, tmp_path):
    src = trained_and_swept
    root = _copy(src.data_root, tmp_path / "pets")
    _repaint(root / "images" / "beagle_1.jpg")
    ck = _copy(src.ckpts, tmp_path / "ck")
    empty_cache = tmp_path / "cache"  # the old data's prepared folder (and file list) is not here
    line = refused(invoke(Cli(root, empty_cache, ck, tmp_path).train(ck, "--resume")))
    assert "which files changed cannot be named" in line and "trainval fingerprint" in line


def test_real_data_has_no_overlap_and_no_duplicates(real_data):
    from petseg_bench.data.layout import list_split, split_overlap

    assert split_overlap(real_data) == []
    for split in ("trainval", "test"):
        assert list_split(real_data, split).duplicates == []


# --------------------------------------------------------------------------- 4. checkpoints checked against their claim


def _doctored(w: World, change: Callable[[dict], None], folder: str = "unet") -> Path:
    data = torch.load(w.best, weights_only=True)
    data["state_dict"] = dict(data["state_dict"])
    change(data)
    path = w.tmp / "ck" / folder / "best.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


def _as(dtype, pick):
    def change(data):
        sd = data["state_dict"]
        key = pick(sd)
        sd[key] = sd[key].to(dtype)
    return change


def _conv(sd):
    return next(k for k, v in sd.items() if v.is_floating_point() and v.dim() == 4)


def _running_mean(sd):
    return next(k for k in sd if k.endswith("running_mean"))


def _tracked(sd):
    return next(k for k in sd if k.endswith("num_batches_tracked"))


def _renamed_key(data):
    sd = data["state_dict"]
    key = _conv(sd)
    sd[key + "_old"] = sd.pop(key)


def _copied_as(w: World, model: str) -> Path:
    path = w.tmp / "ck" / model / "best.pt"
    path.parent.mkdir(parents=True)
    shutil.copyfile(w.best, path)
    return path


def _sweep(w: World, model: str) -> list[str]:
    args = w.cli.run(w.tmp / "r")
    args[args.index("--models") + 1] = model
    args[args.index("--checkpoints") + 1] = str(w.tmp / "ck")
    return args


CLAIMS = [
    Case("evaluate-unet-copied-as-autoencoder", lambda w: w.cli.evaluate(_copied_as(w, "autoencoder")),
         lambda w: ("holds model 'unet', not 'autoencoder'", str(w.tmp / "ck" / "autoencoder" / "best.pt"))),
    Case("sweep-unet-copied-as-autoencoder", lambda w: (_copied_as(w, "autoencoder"), _sweep(w, "autoencoder"))[1],
         lambda w: ("holds model 'unet', not 'autoencoder'",)),
    Case("evaluate-conv-weight-as-int32", lambda w: w.cli.evaluate(_doctored(w, _as(torch.int32, _conv))),
         lambda w: ("does not fit model unet", "non-float (int32)", "floating-point (float32)")),
    Case("evaluate-conv-weight-as-bool", lambda w: w.cli.evaluate(_doctored(w, _as(torch.bool, _conv))),
         lambda w: ("does not fit model unet", "non-float (bool)")),
    Case("sweep-running-mean-as-int64", lambda w: (_doctored(w, _as(torch.int64, _running_mean)), _sweep(w, "unet"))[1],
         lambda w: ("does not fit model unet", "running_mean", "non-float (int64)")),
    Case("evaluate-batch-counter-as-float", lambda w: w.cli.evaluate(_doctored(w, _as(torch.float32, _tracked))),
         lambda w: ("num_batches_tracked is floating-point (float32)", "non-float (int64)")),
    Case("evaluate-renamed-key", lambda w: w.cli.evaluate(_doctored(w, _renamed_key)),
         lambda w: ("does not fit model unet", "mismatched weights", "_old")),
    Case("evaluate-claims-another-model",
         lambda w: w.cli.evaluate(_doctored(w, lambda d: d.update(model="autoencoder"), folder="x")),
         lambda w: ("checkpoint", str(w.tmp / "ck" / "x" / "best.pt"))),
    Case("train-resume-from-another-models-last",
         lambda w: _train_as(w, "autoencoder"),
         lambda w: ("holds model 'unet', not 'autoencoder'", "last.pt")),
]


def _last_of_unet_as(w: World, model: str) -> Path:
    path = w.tmp / "ck" / model / "last.pt"
    path.parent.mkdir(parents=True)
    shutil.copyfile(w.cli.ckpts / "unet" / "last.pt", path)
    return w.tmp / "ck"


def _train_as(w: World, model: str) -> list[str]:
    args = w.cli.train(_last_of_unet_as(w, model), "--resume")
    args[args.index("unet")] = model
    return args


@pytest.mark.parametrize("case", CLAIMS, ids=[c.id for c in CLAIMS])
def test_checkpoint_not_what_it_claims_is_refused(case, world):
    args = case.args(world)
    before = digests(world.inputs() + [world.tmp / "ck"])
    refused(invoke(args), *case.needles(world))
    assert digests(world.inputs() + [world.tmp / "ck"]) == before
    assert not (world.tmp / "eval.json").exists()


# --------------------------------------------------------------------------- 5. NaN and infinity refused


NON_FINITE = [
    Case("check-tolerance-nan", lambda w: ["check", str(w.run), "--baseline", str(w.baseline), "--tolerance", "nan"],
         lambda w: ("--tolerance", "finite", "'nan'")),
    Case("check-tolerance-inf", lambda w: ["check", str(w.run), "--baseline", str(w.baseline), "--tolerance", "inf"],
         lambda w: ("--tolerance", "finite", "'inf'")),
    Case("check-tolerance-negative",
         lambda w: ["check", str(w.run), "--baseline", str(w.baseline), "--tolerance", "-0.5"],
         lambda w: ("--tolerance", ">= 0")),
    Case("baseline-tolerance-nan", lambda w: ["baseline", str(w.run), "--out", str(w.tmp / "b.json"), "--tolerance", "NaN"],
         lambda w: ("--tolerance", "finite", "'NaN'")),
    Case("baseline-tolerance-overflow",
         lambda w: ["baseline", str(w.run), "--out", str(w.tmp / "b.json"), "--tolerance", "1e999"],
         lambda w: ("--tolerance", "finite", "'1e999'")),
    Case("baseline-tolerance-minus-inf",
         lambda w: ["baseline", str(w.run), "--out", str(w.tmp / "b.json"), "--tolerance=-inf"],
         lambda w: ("--tolerance", "finite")),
    Case("train-salt-pepper-inf", lambda w: w.cli.train(w.tmp / "ck", "--salt-pepper", "inf"),
         lambda w: ("--salt-pepper", "finite")),
    Case("train-dropout-nan", lambda w: w.cli.train(w.tmp / "ck", "--dropout", "nan"),
         lambda w: ("dropout", "finite")),
    Case("train-class-weights-nan", lambda w: w.cli.train(w.tmp / "ck", "--class-weights", "0.3,nan,0.8"),
         lambda w: ("--class-weights",)),
    Case("train-model-option-nan",
         lambda w: w.cli.train(w.tmp / "ck", "--model-opt", "heatmap_sigma=nan")[:1] + ["point_clip_unet"]
         + w.cli.train(w.tmp / "ck", "--model-opt", "heatmap_sigma=nan")[2:],
         lambda w: ("heatmap_sigma", "finite")),
]


@pytest.mark.parametrize("case", NON_FINITE, ids=[c.id for c in NON_FINITE])
def test_non_finite_numbers_are_refused(case, world):
    before = digests(world.inputs())
    refused(invoke(case.args(world)), *case.needles(world))
    assert digests(world.inputs()) == before
    assert not (world.tmp / "b.json").exists() and not (world.tmp / "ck").exists()


def test_finite_float_types():
    import click

    t = FiniteFloat(min=0, max=1, max_open=True)
    assert t.convert("0.5", None, None) == 0.5 and t.convert("0", None, None) == 0.0
    for bad in ("nan", "inf", "-inf", "1", "-0.1", "x", "1e999"):
        with pytest.raises(click.BadParameter):
            t.convert(bad, None, None)
    lst = FiniteFloatList(3, min=0)
    assert lst.convert("0.3, 2.2,0.8", None, None) == (0.3, 2.2, 0.8)
    for bad in ("1,2", "1,nan,2", "1,-1,2", "1,,2"):
        with pytest.raises(click.BadParameter):
            lst.convert(bad, None, None)
