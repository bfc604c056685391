"""Example strips: one test image at every level of each perturbation, perturbed through
:func:`petseg_bench.perturbation.perturb` with the run's seed, so the pixels are the
ones the models saw. The strips need the test split; whatever cannot be drawn becomes a
note in the report, never an error.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..atomic import write_bytes_atomic
from ..errors import one_line

STRIP_HEIGHT = 200  # thumbnail height in pixels (never upscaled)


def example_strips(run: Mapping[str, Any], summary: Mapping[str, Any], plots_dir: Path,
                   data_root: Path | None, cache_dir: Path | None) -> tuple[dict[str, Path], list[str]]:
    """(perturbation -> strip PNG, notes for the report)."""
    found = _example_image(run, data_root, cache_dir)
    if isinstance(found, str):
        return {}, [found]
    image_id, image = found

    from ..plugins import get_registry

    perturbations = get_registry().perturbations
    seed = int(run.get("seed") or 0)
    paths: dict[str, Path] = {}
    notes = [f"Test image {image_id}, perturbed with the run's seed {seed}: the pixels the models saw."]
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
            paths[p] = draw_strip(frames, spec.levels, recorded.get("param") or spec.param,
                                  plots_dir / f"example-{p}.png")
        except Exception as exc:  # noqa: BLE001 - a report never fails for want of a picture
            notes.append(f"No example strip for {p}: {_describe(exc)}")
    return paths, notes


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


def _example_image(run: Mapping[str, Any], data_root: Path | None,
                   cache_dir: Path | None) -> tuple[str, np.ndarray] | str:
    """(image id, RGB array) of the first run image in the data, or why there is none."""
    root = data_root or (Path(run["data_root"]) if run.get("data_root") else None)
    if root is None:
        return "Example images skipped: no data folder given (pass --data-root to `petseg-bench report`)."
    try:
        from ..data.cache import prepare

        test = prepare(Path(root), "test", run.get("void") or "nearest", cache_dir)
    except Exception as exc:  # noqa: BLE001
        return f"Example images skipped: the test split at {root} is not readable ({_describe(exc)})."
    if run.get("data_fingerprint") and test.fingerprint != run["data_fingerprint"]:
        return (f"Example images skipped: the data at {root} (fingerprint {test.fingerprint}) is not the "
                f"data this run used ({run['data_fingerprint']}).")
    names = set(test.names)
    image_id = next((i for i in run.get("image_ids", []) if i in names), None)
    if image_id is None:
        return f"Example images skipped: none of the run's test images is in {root}."
    return image_id, np.asarray(test.image(test.index_of([image_id])[0]))


def draw_strip(frames: Sequence[np.ndarray], values: Sequence[float], param: str, path: Path) -> Path:
    """Thumbnails side by side, each titled with its parameter value (PIL: fast, no
    matplotlib layout pass)."""
    from PIL import Image, ImageDraw

    h, w = frames[0].shape[:2]
    th = min(STRIP_HEIGHT, h)
    tw = max(1, round(w * th / h))
    gap, band = 6, 24
    font = _font(13)
    strip = Image.new("RGB", (len(frames) * tw + (len(frames) - 1) * gap, th + band), "white")
    draw = ImageDraw.Draw(strip)
    for k, frame in enumerate(frames):
        thumb = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).resize((tw, th), Image.LANCZOS)
        x = k * (tw + gap)
        strip.paste(thumb, (x, band))
        title = f"{param} {values[k]:g}"
        width = draw.textlength(title, font=font)
        draw.text((x + (tw - width) / 2, 4), title, fill=(31, 35, 40), font=font)
    buf = io.BytesIO()
    strip.save(buf, format="PNG", optimize=True)
    write_bytes_atomic(path, buf.getvalue())
    return path


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
