"""Example strips: one test image at every level of each perturbation, perturbed through
:func:`petseg_bench.perturbation.perturb` with the run's seed, so the pixels are the
ones the models saw; under it, one row per model of the run with its predicted mask
over the perturbed image at each level, so a reader sees where each model breaks.

The masks come from the engine (:mod:`petseg_bench.engine.examples`): each model as the
run loaded it, all levels in one batch built, run and restored as the run's cells were.
The strips need the test split; whatever cannot be drawn (no data, a model that no
longer loads) becomes a note in the report, never an error.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import one_line
from ..labels import CLASS_NAMES
from ..run_record import RunRecord
from .model_views import ModelView, label

STRIP_HEIGHT = 200  # thumbnail height in pixels when the strip shows the image alone (never upscaled)
ROW_HEIGHT = 128  # thumbnail height with model rows under the image
#: Overlay colour and opacity per class: the background dimmed, the pets in colour.
COLOURS = ((0, 0, 0), (255, 140, 0), (30, 144, 255), (60, 200, 90), (200, 60, 200), (240, 220, 40))
ALPHAS = (0.45, 0.55, 0.55, 0.55, 0.55, 0.55)
MARK = (255, 30, 60)  # where a model's click was
TEXT = (31, 35, 40)


@dataclass(frozen=True)
class Row:
    """One row of a strip: its title and its tiles (one per level)."""

    title: str
    tiles: list[np.ndarray]
    marked: bool = False  # the tiles mark the model's click


@dataclass(frozen=True)
class Grid:
    """Where everything of a strip lies: a header of level titles, rows (each a title
    band over its tiles) and, when masks are shown, a legend at the bottom."""

    n_cols: int
    n_rows: int
    tile_w: int
    tile_h: int
    legend: bool
    gap: int = 6
    header: int = 24
    band: int = 20
    legend_h: int = 28

    @property
    def size(self) -> tuple[int, int]:
        width = self.n_cols * self.tile_w + (self.n_cols - 1) * self.gap
        rows = self.n_rows * (self.band + self.tile_h + self.gap)
        return width, self.header + rows + (self.legend_h if self.legend else 0)

    def tile(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a tile."""
        x = col * (self.tile_w + self.gap)
        y = self.header + row * (self.band + self.tile_h + self.gap) + self.band
        return x, y, x + self.tile_w, y + self.tile_h

    @classmethod
    def fit(cls, shape: Sequence[int], n_cols: int, n_rows: int) -> "Grid":
        h, w = int(shape[0]), int(shape[1])
        th = min(ROW_HEIGHT if n_rows > 1 else STRIP_HEIGHT, h)
        return cls(n_cols, n_rows, max(1, round(w * th / h)), th, legend=n_rows > 1)


def example_strips(run: RunRecord, summary: Mapping[str, Any], plots_dir: Path,
                   data_root: Path | None, cache_dir: Path | None,
                   models: Mapping[str, ModelView] | None = None) -> tuple[dict[str, Path], list[str]]:
    """(perturbation -> strip PNG, notes for the report)."""
    found = _example_image(run, data_root, cache_dir)
    if isinstance(found, str):
        return {}, [found]
    image_id, image, truth = found

    from ..plugins import get_registry

    perturbations = get_registry().perturbations
    seed = int(run.seed or 0)
    predictors, notes = _models(run, models or {}) if summary["perturbations"] else ({}, [])
    notes.insert(0, f"Test image {image_id}, perturbed with the run's seed {seed}: the pixels the models saw.")
    paths: dict[str, Path] = {}
    for p in summary["perturbations"]:
        spec = perturbations.get(p)
        if spec is None:
            notes.append(f"No example strip for {p}: the perturbation plugin is not installed here.")
            continue
        recorded = summary["perturbation_params"].get(p) or {}
        problem = _levels_problem(spec.levels, recorded.get("values"))
        if problem:
            notes.append(f"No example strip for {p}: {problem}")
            continue
        try:
            frames = [image] + [perturb_one(spec, image, lv, image_id, seed) for lv in range(1, len(spec.levels))]
            try:
                rows = model_rows(predictors, spec, frames, truth, (image_id, seed), models or {})
            except Exception as exc:  # noqa: BLE001 - the image row alone, then
                rows = []
                notes.append(f"The strip of {p} shows no masks: {_describe(exc)}")
            titles = [f"{recorded.get('param') or spec.param} {v:g}" for v in spec.levels]
            paths[p] = draw_strip(frames, titles, plots_dir / f"example-{p}.png", rows, image_id)
        except Exception as exc:  # noqa: BLE001 - a report never fails for want of a picture
            notes.append(f"No example strip for {p}: {_describe(exc)}")
    return paths, notes


def _models(run: RunRecord, models: Mapping[str, ModelView]) -> tuple[dict, list[str]]:
    """The run's models, loaded once for every strip, and the notes on them."""
    from ..engine.examples import example_runtime, load_run_models

    runtime = example_runtime(run)
    predictors, problems = load_run_models(run, runtime)
    notes = [f"The strips show no masks of {label(models, m)}: {why}." for m, why in problems.items()]
    if predictors:
        notes.insert(0, f"Under the image, each model's predicted mask over it at every level (background dimmed, "
                        f"{' and '.join(CLASS_NAMES[1:])} in colour; the legend is under each strip), recomputed from "
                        f"the run's models on {runtime.describe()}.")
    return predictors, notes


def model_rows(predictors: Mapping[str, Any], spec, frames: Sequence[np.ndarray], truth: np.ndarray,
               image: tuple[str, int], models: Mapping[str, ModelView]) -> list[Row]:
    """One row per model that has cells of ``spec``: its mask over each frame (and the
    click it got, for a model that takes one)."""
    from ..engine.examples import level_masks

    image_id, seed = image
    found = level_masks(predictors, spec, frames, truth, image_id, seed)
    rows = []
    for name, got in found.items():
        clicks = got.clicks or [None] * len(frames)
        tiles = [overlay(f, m, c) for f, m, c in zip(frames, got.masks, clicks)]
        rows.append(Row(label(models, name), tiles, got.clicks is not None))
    return rows


def perturb_one(spec, image: np.ndarray, level: int, image_id: str, seed: int) -> np.ndarray:
    from ..perturbation import perturb

    return perturb(spec, [image], level, [image_id], seed)[0]


def _levels_problem(levels: Sequence[float], recorded: Sequence[float | None] | None) -> str | None:
    # The installed plugin must still have the run's levels, or the strip would show
    # corruptions the models never saw.
    if not recorded or None in recorded:
        return None
    if [float(v) for v in recorded] != [float(v) for v in levels]:
        return (f"the installed plugin's levels ({', '.join(f'{v:g}' for v in levels)}) differ from the "
                f"run's ({', '.join(f'{v:g}' for v in recorded)}).")
    return None


def _example_image(run: RunRecord, data_root: Path | None,
                   cache_dir: Path | None) -> tuple[str, np.ndarray, np.ndarray] | str:
    """(image id, RGB array, ground truth) of the first run image in the data, or why there is none."""
    root = data_root or (Path(run.data_root) if run.data_root else None)
    if root is None:
        return "Example images skipped: no data folder given (pass --data-root to `petseg-bench report`)."
    try:
        from ..data.cache import prepare

        test = prepare(Path(root), "test", run.void or "nearest", cache_dir)
    except Exception as exc:  # noqa: BLE001
        return f"Example images skipped: the test split at {root} is not readable ({_describe(exc)})."
    if run.data_fingerprint and test.fingerprint != run.data_fingerprint:
        return (f"Example images skipped: the data at {root} (fingerprint {test.fingerprint}) is not the "
                f"data this run used ({run.data_fingerprint}).")
    names = set(test.names)
    image_id = next((i for i in run.image_ids if i in names), None)
    if image_id is None:
        return f"Example images skipped: none of the run's test images is in {root}."
    pos = test.index_of([image_id])[0]
    return image_id, np.asarray(test.image(pos)), np.asarray(test.label(pos))


def overlay(image: np.ndarray, mask: np.ndarray, click: tuple[int, int] | None = None) -> np.ndarray:
    """``image`` (uint8 HxWx3) with each class of ``mask`` blended in its colour, and a
    mark where the model's click was."""
    out = image.astype(np.float32)
    for c in np.unique(mask).tolist():
        where = mask == c
        a = ALPHAS[c % len(ALPHAS)]
        out[where] = out[where] * (1 - a) + np.array(COLOURS[c % len(COLOURS)], np.float32) * a
    out = np.minimum(out + 0.5, 255).astype(np.uint8)  # blends of values in [0, 255]
    if click is not None:
        h, w = mask.shape
        r = max(2, min(h, w) // 40)
        y, x = click
        out[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = MARK
    return out


def draw_strip(frames: Sequence[np.ndarray], titles: Sequence[str], path: Path, rows: Sequence[Row] = (),
               image_id: str = "") -> Path:
    """The perturbed image at every level, each column titled, and a row per model under
    it (PIL: fast, no matplotlib layout pass)."""
    from PIL import Image, ImageDraw

    grid = Grid.fit(frames[0].shape, len(frames), 1 + len(rows))
    font = _font(13)
    strip = Image.new("RGB", grid.size, "white")
    draw = ImageDraw.Draw(strip)
    for k, title in enumerate(titles):
        x0, _, x1, _ = grid.tile(0, k)
        draw.text((x0 + (x1 - x0 - draw.textlength(title, font=font)) / 2, 4), title, fill=TEXT, font=font)
    everything = [Row(f"test image {image_id}".strip() if rows else "", list(frames)), *rows]
    for r, row in enumerate(everything):
        if row.title:
            draw.text((2, grid.tile(r, 0)[1] - grid.band + 3), row.title, fill=TEXT, font=font)
        for k, tile in enumerate(row.tiles):
            thumb = Image.fromarray(np.ascontiguousarray(tile, dtype=np.uint8)).resize((grid.tile_w, grid.tile_h),
                                                                                       Image.LANCZOS)
            strip.paste(thumb, grid.tile(r, k)[:2])
    if grid.legend:
        _legend(draw, grid, font, any(row.marked for row in rows))
    buf = io.BytesIO()
    strip.save(buf, format="PNG", optimize=True)
    write_bytes_atomic(path, buf.getvalue())
    return path


def _legend(draw, grid: Grid, font, marked: bool) -> None:
    """Class colours (as blended over white) and the click mark, along the bottom."""
    x, y = 2, grid.size[1] - grid.legend_h + 6
    entries = [(name, COLOURS[c], ALPHAS[c]) for c, name in enumerate(CLASS_NAMES)]
    entries += [("the model's click", MARK, 1.0)] if marked else []
    for name, rgb, a in entries:
        shown = tuple(int(255 * (1 - a) + v * a + 0.5) for v in rgb)
        draw.rectangle((x, y, x + 14, y + 14), fill=shown, outline=TEXT)
        draw.text((x + 19, y), name, fill=TEXT, font=font)
        x += 19 + int(draw.textlength(name, font=font)) + 16


def _font(size: int):
    from PIL import ImageFont

    try:  # matplotlib ships DejaVu Sans, so the strips look the same on every machine
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSans.ttf"), size)
    except Exception:  # noqa: BLE001
        return ImageFont.load_default()


def _describe(exc: BaseException) -> str:
    message = one_line(exc, default="")
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
