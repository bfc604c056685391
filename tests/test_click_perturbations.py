"""Click perturbations: the built-ins' determinism and placement, the engine's displacement
of the evaluation click, the sweep computing click cells only for point-prompted models
(clean cells unchanged), and n/a in the report for the others.

Tiny synthetic data as in tests/test_sweep.py (40x56 px images, 32 px models, CPU, fp32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from petseg_bench.config import TrainConfig
from petseg_bench.data.cache import prepare
from petseg_bench.data.points import eval_click
from petseg_bench.data.letterbox import Letterbox
from petseg_bench.engine.inference import inference_on_dataset, make_batch
from petseg_bench.engine.predictor import letterbox_batch, load_predictor, move_click
from petseg_bench.engine.runtime import Runtime
from petseg_bench.engine.sweep import SweepJob, SweepPlan, run_sweep
from petseg_bench.errors import PluginError
from petseg_bench.perturbation import off_foreground, perturb_clicks
from petseg_bench.plugins import get_registry
from petseg_bench.reporting.summary import load_summary
from petseg_bench.reporting.tables import click_table
from petseg_bench.results import CLEAN, Cell, read_cell
from petseg_bench.specs import PerturbationSpec

from conftest import quiet, train, write_dataset

CLICK_PERTS = ["click_jitter", "click_random_fg", "click_centroid", "click_wrong"]


def _masks(n: int = 6, seed: int = 3) -> list[np.ndarray]:
    """Ellipses, a crescent (centre of mass off the pet) and sizes that differ."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        h, w = int(rng.integers(60, 120)), int(rng.integers(60, 140))
        yy, xx = np.mgrid[:h, :w]
        cy, cx = h / 2 + rng.uniform(-8, 8), w / 2 + rng.uniform(-8, 8)
        ry, rx = h / 4 + rng.uniform(0, 6), w / 4 + rng.uniform(0, 6)
        fg = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        if k % 3 == 0:  # crescent: remove an inner, shifted disc
            fg &= ((yy - cy) / (ry * 0.8)) ** 2 + ((xx - cx - rx * 0.4) / (rx * 0.8)) ** 2 > 1
        lab = np.zeros((h, w), np.uint8)
        lab[fg] = 1 + k % 2
        edge = fg ^ ndimage.binary_erosion(fg)
        lab[edge] = 255
        out.append(lab)
    return out


def _spec(name: str) -> PerturbationSpec:
    return get_registry().get("perturbation", name)


@pytest.mark.parametrize("name", CLICK_PERTS)
def test_click_perturbation_is_deterministic_and_batch_independent(name):
    spec = _spec(name)
    assert spec.acts_on_clicks and spec.levels[0] == 0
    labels, ids = _masks(), [f"img_{k}" for k in range(6)]
    for level in range(1, len(spec.levels)):
        base, a = perturb_clicks(spec, labels, level, ids, seed=7)
        _, b = perturb_clicks(spec, labels, level, ids, seed=7)
        np.testing.assert_array_equal(a, b)
        # The same image in another batch, at another position: the same click.
        parts = [perturb_clicks(spec, labels[i:i + 2][::-1], level, ids[i:i + 2][::-1], seed=7)[1][::-1]
                 for i in range(0, 6, 2)]
        np.testing.assert_array_equal(np.concatenate(parts), a)
        for (y, x), lab in zip(a, labels):
            assert 0 <= y < lab.shape[0] and 0 <= x < lab.shape[1]
    base0, same = perturb_clicks(spec, labels, 0, ids, seed=7)
    np.testing.assert_array_equal(base0, same)  # level 0: the rule's click
    np.testing.assert_array_equal(base0, [eval_click(lab) for lab in labels])


def test_random_draws_depend_on_seed_and_level():
    labels, ids = _masks(), [f"img_{k}" for k in range(6)]
    spec = _spec("click_random_fg")
    a = perturb_clicks(spec, labels, 1, ids, seed=0)[1]
    assert not np.array_equal(a, perturb_clicks(spec, labels, 2, ids, seed=0)[1])
    assert not np.array_equal(a, perturb_clicks(spec, labels, 1, ids, seed=1)[1])


def test_jitter_moves_by_the_radius_inside_the_image():
    labels, ids = _masks(), [f"img_{k}" for k in range(6)]
    spec = _spec("click_jitter")
    for level, radius in enumerate(spec.levels):
        base, moved = perturb_clicks(spec, labels, level, ids, seed=0)
        dist = np.hypot(*(moved - base).T)
        assert (dist <= radius + 1).all()
        for d, (y, x), lab in zip(dist, base, labels):
            room = min(y, x, lab.shape[0] - 1 - y, lab.shape[1] - 1 - x)
            if radius <= room:  # far enough from every border: exactly the radius (rounded)
                assert abs(d - radius) <= 1.0


def test_random_fg_is_on_the_pet_and_wrong_is_off_it_at_the_distance():
    labels, ids = _masks(), [f"img_{k}" for k in range(6)]
    for level in range(1, 10):
        _, moved = perturb_clicks(_spec("click_random_fg"), labels, level, ids, seed=0)
        assert not off_foreground(moved, labels).any()
    spec = _spec("click_wrong")
    for level, d in enumerate(spec.levels):
        if level == 0:
            continue
        _, moved = perturb_clicks(spec, labels, level, ids, seed=0)
        for (y, x), lab in zip(moved, labels):
            assert lab[y, x] == 0  # background, never void or pet
            fg = (lab == 1) | (lab == 2)
            dist = ndimage.distance_transform_edt(~fg)
            assert dist[y, x] >= d or dist[y, x] == dist[lab == 0].max()


def test_centroid_falls_off_a_crescent_and_the_share_is_measured():
    labels, ids = _masks(), [f"img_{k}" for k in range(6)]
    _, moved = perturb_clicks(_spec("click_centroid"), labels, 1, ids, seed=0)
    off = off_foreground(moved, labels)
    assert off[0] and not off.all()  # the first crescent; the ellipses keep it on the pet
    for (y, x), lab in zip(moved, labels):
        ys, xs = np.nonzero((lab == 1) | (lab == 2))
        assert (y, x) == (round(ys.mean()), round(xs.mean()))


def test_bad_click_plugin_is_one_line():
    spec = PerturbationSpec("bad_clicks", "v", (0.0, 1.0), lambda im, v, r: list(im), target="clicks",
                            apply_clicks=lambda c, lab, v, r: c + 10_000)
    spec.validate()
    with pytest.raises(PluginError, match="outside the"):
        perturb_clicks(spec, _masks(2), 1, ["a", "b"], seed=0)
    with pytest.raises(ValueError):
        PerturbationSpec("x", "v", (0.0, 1.0), lambda im, v, r: list(im), target="clicks").validate()
    with pytest.raises(ValueError):
        PerturbationSpec("x", "v", (0.0, 1.0), lambda im, v, r: list(im), target="both").validate()


def test_rule_at_original_resolution_differs_from_the_letterbox_so_clean_keeps_the_letterbox():
    """Why the engine moves the letterbox click instead of mapping the original one: the
    deepest pixel after downscaling is often not the image of the original deepest pixel."""
    differs = 0
    for lab in _masks(12, seed=5):
        lb = Letterbox.fit(lab.shape[0], lab.shape[1], 32)
        y, x = eval_click(lab)
        mapped = (round((y + 0.5) * lb.new_h / lb.height - 0.5) + lb.top,
                  round((x + 0.5) * lb.new_w / lb.width - 0.5) + lb.left)
        differs += mapped != eval_click(lb.apply(lab, label=True))
    assert differs > 0


def test_move_click_scales_and_stays_in_the_content():
    lb = Letterbox.fit(40, 80, 32)  # content 16 x 32, top 8
    assert move_click(lb, (15, 10), (0, 0)) == (15, 10)
    assert move_click(lb, (15, 10), (10, 20)) == (19, 18)
    assert move_click(lb, (15, 10), (-100, 1000)) == (lb.top, lb.left + lb.new_w - 1)
    images = [np.zeros((40, 80, 3), np.uint8)]
    labels = [np.zeros((40, 80), np.uint8)]
    labels[0][10:30, 20:60] = 2
    _, _, clean = letterbox_batch(images, 32, labels)
    _, _, zero = letterbox_batch(images, 32, labels, np.zeros((1, 2), np.int64))
    assert clean.tolist() == zero.tolist()


# --- the sweep on tiny models ----------------------------------------------------------------------

MODELS = ["unet", "point_clip_unet"]
SIZE = (40, 56)
TINY = dict(in_size=32, base_channels=4, backbone="clip:petseg-tiny-vit:none")
TRAIN = TrainConfig(epochs=10, lr=1e-2, batch_size=4, workers=0, precision="fp32", device="cpu",
                    val_fraction=0.25, patience=0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("pets") / "pets", n_cat=3, n_dog=3, size=SIZE)
    cache = tmp_path_factory.mktemp("prepared")
    ckpts = tmp_path_factory.mktemp("checkpoints")
    for name in MODELS:
        train(name, TRAIN, TINY, root, ckpts, cache_dir=cache, log=quiet)
    return root, cache, ckpts


def _sweep(setup, run_dir: Path, perts, log=quiet) -> dict:
    root, cache, ckpts = setup
    plan = SweepPlan(list(MODELS), list(perts), [1, 5, 9], seed=0, batch_size=4)
    return run_sweep(SweepJob(plan=plan, checkpoints_dir=ckpts, run_dir=run_dir, data_root=root, cache_dir=cache, precision="fp32", device="cpu"), log=log)


def test_sweep_click_cells_only_for_point_models_and_clean_unchanged(setup, tmp_path):
    root, cache, ckpts = setup
    notes: list[str] = []
    record = _sweep(setup, tmp_path / "run", ["gaussian_noise", "click_jitter", "click_centroid"], notes.append)
    ids = record.image_ids
    assert any("skipped for models without a click input (unet)" in n for n in notes)
    for lv in (1, 5, 9):
        assert read_cell(tmp_path / "run", Cell("point_clip_unet", "click_jitter", lv), ids) is not None
        assert read_cell(tmp_path / "run", Cell("unet", "click_jitter", lv), ids) is None
        assert read_cell(tmp_path / "run", Cell("unet", "gaussian_noise", lv), ids) is not None
    assert read_cell(tmp_path / "run", Cell("point_clip_unet", "click_centroid", 1), ids) is not None
    assert set(record.click_off_foreground) == {"click_jitter", "click_centroid"}
    # families are recorded (click perturbations have none), for a report without the plugins
    assert record.perturbation_families == {"gaussian_noise": {"family": "seed", "label": "Seed study's eight"}}
    assert 0.0 <= record.click_off_foreground["click_centroid"]["1"] <= 1.0

    # Clean cells: identical to the path of before (clicks placed on the letterboxed
    # ground truth, no displacement) and to a sweep without click perturbations.
    test = prepare(root, "test", "nearest", cache)
    pos = [test.names.index(i) for i in ids]
    images, labels = [test.image(p) for p in pos], [test.label(p) for p in pos]
    runtime = Runtime.choose("cpu", "fp32")
    preds = {m: load_predictor(ckpts / m / "best.pt", runtime, expect_model=m) for m in MODELS}
    before = inference_on_dataset(preds, [make_batch(images[i:i + 4], labels[i:i + 4], {32}, True)
                                          for i in range(0, len(ids), 4)])
    other = _sweep(setup, tmp_path / "pixels", ["gaussian_noise"])
    assert other.image_ids == ids
    for m in MODELS:
        _, now = read_cell(tmp_path / "run", Cell(m, CLEAN, 0), ids)
        _, pixel_only = read_cell(tmp_path / "pixels", Cell(m, CLEAN, 0), ids)
        np.testing.assert_array_equal(now, before[m])
        np.testing.assert_array_equal(now, pixel_only)

    # The report: the click section shows the point model's Dice, n/a for the other,
    # and click perturbations stay out of the pixel robustness figures.
    run, summary = load_summary(tmp_path / "run", n_boot=10)
    assert summary["perturbations"] == ["gaussian_noise"]
    assert summary["click_perturbations"] == ["click_jitter", "click_centroid"]
    labels = summary["model_labels"]
    assert labels["unet"] == {"label": "U-Net", "backbone": None, "encoder": None, "random_init": False}
    backbone = record.model_info["point_clip_unet"].backbone["label"]
    assert labels["point_clip_unet"]["backbone"] == backbone and backbone in labels["point_clip_unet"]["label"]
    table = click_table(summary, {})
    unet_rows = [r for r in table.rows if r[1] == "unet"]
    point_rows = [r for r in table.rows if r[1] == "point_clip_unet"]
    assert len(unet_rows) == 2 and all(set(r[2:-1]) == {"n/a"} for r in unet_rows)
    assert all("n/a" not in r for r in point_rows)
    from petseg_bench.reporting import write_report

    paths = write_report(tmp_path / "run", n_boot=10, examples=False)
    md = paths[1].read_text()
    assert "Click robustness" in md and "n/a" in md
    assert (tmp_path / "run" / "plots" / "dice-click_jitter.png").is_file()
