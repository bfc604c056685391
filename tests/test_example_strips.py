"""The report's example strips with every model's masks, on tiny trained models and a real
sweep of them: one row per model under the image row, the masks the sweep scored, a
fallback to the image alone (with a note) for a model whose checkpoint is gone or
broken, and nothing at all with ``--no-examples``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import quiet, train, write_dataset
from petseg_bench.config import TrainConfig
from petseg_bench.data.cache import prepare
from petseg_bench.engine.sweep import SweepJob, SweepPlan, run_sweep
from petseg_bench.metrics import confusion_matrix
from petseg_bench.perturbation import perturb
from petseg_bench.plugins import get_registry
from petseg_bench.reporting.strips import Grid, overlay
from petseg_bench.results import CLEAN, Cell, read_cell

MODELS = ["unet", "point_clip_unet"]
PERTS = ["gaussian_noise", "occlusion"]
SIZE = (40, 56)
TINY = dict(in_size=32, base_channels=4, backbone="clip:petseg-tiny-vit:none")
TRAIN = TrainConfig(epochs=3, lr=1e-2, batch_size=4, workers=0, precision="fp32", device="cpu",
                    val_fraction=0.25, patience=0)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """(data root, prepared cache, the swept run folder) of two tiny trained models."""
    base = tmp_path_factory.mktemp("strips")
    root = write_dataset(base / "pets", n_cat=2, n_dog=2, size=SIZE)
    cache, ckpts = base / "prepared", base / "checkpoints"
    for name in MODELS:
        train(name, TRAIN, TINY, root, ckpts, cache_dir=cache, log=quiet)
    plan = SweepPlan(list(MODELS), [*PERTS, "click_jitter"], [1, 5, 9], seed=0, batch_size=4)
    run_sweep(SweepJob(plan=plan, checkpoints_dir=ckpts, run_dir=base / "run", data_root=root, cache_dir=cache, precision="fp32", device="cpu"), log=quiet)
    return root, cache, base / "run"


def copy_run(swept, tmp_path: Path) -> Path:
    return Path(shutil.copytree(swept[2], tmp_path / "run"))


def example(run_dir: Path, cache: Path, root: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """The strips' image: the run's first test image, with its ground truth."""
    record = json.loads((run_dir / "run.json").read_text())
    test = prepare(root, "test", "nearest", cache)
    image_id = record["image_ids"][0]
    pos = test.index_of([image_id])[0]
    return image_id, test.image(pos), test.label(pos)


def frames_of(pert: str, image_id: str, image: np.ndarray) -> list[np.ndarray]:
    spec = get_registry().get("perturbation", pert)
    return [image] + [perturb(spec, [image], lv, [image_id], 0)[0] for lv in range(1, len(spec.levels))]


def read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(path).convert("RGB"))


def tile(strip: np.ndarray, grid: Grid, row: int, col: int) -> np.ndarray:
    x0, y0, x1, y1 = grid.tile(row, col)
    return strip[y0:y1, x0:x1].astype(np.int64)


def test_strip_has_a_row_per_model_with_its_mask_over_each_level(swept, tmp_path):
    from petseg_bench.engine.examples import load_run_models, level_masks
    from petseg_bench.reporting import write_report

    root, cache, _ = swept
    run_dir = copy_run(swept, tmp_path)
    write_report(run_dir, data_root=root, cache_dir=cache, n_boot=10)
    n_levels = len(get_registry().get("perturbation", "gaussian_noise").levels)
    grid = Grid.fit(SIZE, n_levels, 1 + len(MODELS))
    strip = read_png(run_dir / "plots" / "example-gaussian_noise.png")
    assert strip.shape[:2] == (grid.size[1], grid.size[0])  # the image row + one row per model
    assert grid.size != Grid.fit(SIZE, n_levels, len(MODELS)).size

    image_id, image, truth = example(run_dir, cache, root)
    frames = frames_of("gaussian_noise", image_id, image)
    record = json.loads((run_dir / "run.json").read_text())
    predictors, problems = load_run_models(record)
    assert not problems and list(predictors) == MODELS
    masks = level_masks(predictors, get_registry().get("perturbation", "gaussian_noise"), frames, truth, image_id, 0)
    assert masks["unet"].clicks is None and len(masks["point_clip_unet"].clicks) == n_levels
    for row, name in enumerate(MODELS, start=1):
        for col in (0, 5, n_levels - 1):
            plain, shown = tile(strip, grid, 0, col), tile(strip, grid, row, col)
            assert np.abs(plain - shown).mean() > 5, (name, col)  # the overlay is not the plain image
            clicks = masks[name].clicks
            want = Image.fromarray(overlay(frames[col], masks[name].masks[col], clicks[col] if clicks else None))
            want = np.asarray(want.resize((grid.tile_w, grid.tile_h), Image.LANCZOS), dtype=np.int64)
            np.testing.assert_array_equal(shown, want)  # exactly that model's mask at that level
    md = (run_dir / "report.md").read_text()
    assert "each model's predicted mask" in md and "no masks" not in md


def test_the_masks_are_the_ones_the_sweep_scored(swept, tmp_path):
    from petseg_bench.engine.examples import load_run_models, level_masks

    root, cache, run_dir = swept
    image_id, image, truth = example(run_dir, cache, root)
    record = json.loads((run_dir / "run.json").read_text())
    predictors, _ = load_run_models(record)
    for pert in PERTS:
        spec = get_registry().get("perturbation", pert)
        masks = level_masks(predictors, spec, frames_of(pert, image_id, image), truth, image_id, 0)
        for name in MODELS:
            for level in (0, 1, 5, 9):
                cell = Cell(name, CLEAN, 0) if level == 0 else Cell(name, pert, level)
                ids, cms = read_cell(run_dir, cell)
                got = confusion_matrix(masks[name].masks[level], truth)
                np.testing.assert_array_equal(got, cms[ids.index(image_id)], err_msg=f"{name} {pert} {level}")


def test_a_click_perturbation_moves_the_click_as_the_sweep_did(swept):
    """Only the model with a click input has cells of a click perturbation; its masks at
    each level are those of the sweep's cells, the click moved as the sweep moved it."""
    from petseg_bench.engine.examples import load_run_models, level_masks

    root, cache, run_dir = swept
    image_id, image, truth = example(run_dir, cache, root)
    predictors, _ = load_run_models(json.loads((run_dir / "run.json").read_text()))
    spec = get_registry().get("perturbation", "click_jitter")
    masks = level_masks(predictors, spec, frames_of("click_jitter", image_id, image), truth, image_id, 0)
    assert list(masks) == ["point_clip_unet"]
    clicks = masks["point_clip_unet"].clicks
    assert len(set(clicks)) > 1  # the click moves with the level
    for level in (1, 5, 9):
        ids, cms = read_cell(run_dir, Cell("point_clip_unet", "click_jitter", level))
        got = confusion_matrix(masks["point_clip_unet"].masks[level], truth)
        np.testing.assert_array_equal(got, cms[ids.index(image_id)], err_msg=f"level {level}")


def test_a_missing_or_broken_model_leaves_its_row_out_with_a_note(swept, tmp_path):
    from petseg_bench.provenance import file_sha256
    from petseg_bench.reporting import write_report

    root, cache, _ = swept
    run_dir = copy_run(swept, tmp_path)
    record = json.loads((run_dir / "run.json").read_text())
    record["model_info"]["unet"]["checkpoint"] = str(tmp_path / "gone" / "best.pt")
    (run_dir / "run.json").write_text(json.dumps(record))
    write_report(run_dir, data_root=root, cache_dir=cache, n_boot=10)
    n_levels = len(get_registry().get("perturbation", "gaussian_noise").levels)
    strip = read_png(run_dir / "plots" / "example-gaussian_noise.png")
    assert strip.shape[:2] == Grid.fit(SIZE, n_levels, 2).size[::-1]  # the image and the model that loads
    md = (run_dir / "report.md").read_text()
    assert "The strips show no masks of U-Net: its checkpoint" in md and "is missing" in md

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    record["model_info"]["point_clip_unet"]["checkpoint"] = str(broken)
    record["checkpoints"]["point_clip_unet"] = file_sha256(broken)
    (run_dir / "run.json").write_text(json.dumps(record))
    write_report(run_dir, data_root=root, cache_dir=cache, n_boot=10)
    strip = read_png(run_dir / "plots" / "example-gaussian_noise.png")
    assert strip.shape[:2] == Grid.fit(SIZE, n_levels, 1).size[::-1]  # the image alone
    md = (run_dir / "report.md").read_text()
    assert "does not load" in md and "Under the image" not in md

    shutil.copy(Path(swept[2]).parent / "checkpoints" / "point_clip_unet" / "best.pt", broken)  # another file now
    write_report(run_dir, data_root=root, cache_dir=cache, n_boot=10)
    assert "has changed since the run" in (run_dir / "report.md").read_text()


def test_no_examples_draws_and_loads_nothing(swept, tmp_path, monkeypatch):
    from petseg_bench.cli import main
    from petseg_bench.engine import examples

    def refuse(*_args, **_kwargs):
        raise AssertionError("--no-examples must not load the models")

    monkeypatch.setattr(examples, "load_run_models", refuse)
    root, cache, _ = swept
    run_dir = copy_run(swept, tmp_path)
    result = CliRunner().invoke(main, ["report", str(run_dir), "--data-root", str(root), "--cache-dir", str(cache),
                                       "--no-examples"])
    assert result.exit_code == 0, result.output
    assert not list((run_dir / "plots").glob("example-*.png"))
    assert "Example images left out (--no-examples)" in (run_dir / "report.md").read_text()
