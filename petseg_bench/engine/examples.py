"""Masks for the report's example strips: one test image at every level, every model of a run.

The models are the run's: each loaded with :func:`~.predictor.load_predictor` from the
checkpoint the sweep used (run.json's ``model_info[model]["checkpoint"]``, which must
still have the sha256 the run recorded). The levels of the image go through the sweep's
own steps, as one batch: :func:`~.inference.make_batch` (letterbox once per input size,
the evaluation click placed on the ground truth and moved by a click perturbation as
:func:`~.sweep.compute_cells` moves it), :meth:`~.predictor.Predictor.logits` with one
:class:`~petseg_bench.backbones.FeatureCache` shared by the models, and
:func:`~.predictor.restore` to the original resolution: a strip shows the masks the
sweep scored. A model whose checkpoint is missing, changed or unloadable is a line of
text for the report, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..backbones import FeatureCache
from ..data.letterbox import Letterbox
from ..errors import one_line
from ..perturbation import perturb_clicks
from ..provenance import file_sha256
from ..run_record import RunRecord
from ..specs import PerturbationSpec
from .inference import make_batch
from .predictor import Predictor, load_predictor, restore
from .runtime import Runtime
from .groups import applies


@dataclass(frozen=True)
class ExampleMasks:
    """One model's masks of the frames (original resolution) and, for a model with a
    click input, the click (y, x) it got on each frame, in original pixels."""

    masks: list[np.ndarray]
    clicks: list[tuple[int, int]] | None = None


def example_runtime(run: RunRecord | Mapping) -> Runtime:
    """The run's precision where this machine can run it (bf16 or fp32), else the default."""
    precision = RunRecord.of(run).precision
    try:
        return Runtime.choose("auto", precision if precision in ("fp32", "bf16") else "auto")
    except Exception:  # noqa: BLE001 - a run record from another kind of machine
        return Runtime.choose()


def load_run_models(run: RunRecord | Mapping, runtime: Runtime | None = None
                    ) -> tuple[dict[str, Predictor], dict[str, str]]:
    """(model -> predictor, model -> why it has no masks) for every model of the run record."""
    run = RunRecord.of(run)
    runtime = runtime or example_runtime(run)
    loaded: dict[str, Predictor] = {}
    problems: dict[str, str] = {}
    for name in run.models:
        found = load_run_model(run, name, runtime)
        if isinstance(found, str):
            problems[name] = found
        else:
            loaded[name] = found
    return loaded, problems


def load_run_model(run: RunRecord, name: str, runtime: Runtime) -> Predictor | str:
    """The predictor of ``name`` from the checkpoint its run used, or why there is none."""
    info = run.info(name)
    recorded = info.checkpoint if info is not None else None
    if not recorded:
        return "the run records no checkpoint for it"
    path = Path(recorded)
    if not path.is_file():
        return f"its checkpoint {path} is missing"
    sha = run.checkpoints.get(name)
    try:
        if sha and file_sha256(path) != sha:
            return f"its checkpoint {path} has changed since the run (sha256 {file_sha256(path)}, the run's {sha})"
        return load_predictor(path, runtime, expect_model=name)
    except Exception as exc:  # noqa: BLE001 - a report never fails for want of a mask
        return f"its checkpoint {path} does not load ({type(exc).__name__}: {one_line(exc, 200, '')})"


def level_masks(predictors: Mapping[str, Predictor], spec: PerturbationSpec, frames: Sequence[np.ndarray],
                label: np.ndarray, image_id: str, seed: int) -> dict[str, ExampleMasks]:
    """The masks of ``frames`` (the image at levels 0, 1, ... of ``spec``) of every
    predictor that has cells of ``spec`` (a click perturbation: only models with a click
    input), the clicks moved as the sweep moves them at each level."""
    chosen = {m: pr for m, pr in predictors.items() if applies(spec, pr.spec.inputs)}
    moves = None
    if spec.acts_on_clicks and any(pr.needs_clicks for pr in chosen.values()):
        moved = [perturb_clicks(spec, [label], lv, [image_id], seed) for lv in range(len(frames))]
        moves = np.concatenate([after - before for before, after in moved])
    return predict_frames(chosen, frames, label, moves)


def predict_frames(predictors: Mapping[str, Predictor], frames: Sequence[np.ndarray], label: np.ndarray,
                   moves: np.ndarray | None = None) -> dict[str, ExampleMasks]:
    """Every predictor's masks of ``frames`` (one image, several levels) in one batch, as
    the sweep builds, runs and restores its batches; ``label`` places the evaluation
    click, ``moves`` (per frame, original pixels) displaces it."""
    if not predictors or not frames:
        return {}
    sizes = {pr.config.in_size for pr in predictors.values()}
    clicks = any(pr.needs_clicks for pr in predictors.values())
    batch = make_batch(list(frames), [label] * len(frames), sizes, clicks, moves)
    cache = FeatureCache()  # one backbone pass for the models that share it
    out = {}
    for name, pr in predictors.items():
        images, boxes, where = batch.boxed[pr.config.in_size]
        given = where if pr.needs_clicks else None
        masks = restore(pr.logits(images, given, cache), boxes)
        shown = None if given is None else [to_original(lb, yx) for lb, yx in zip(boxes, given.tolist())]
        out[name] = ExampleMasks(masks, shown)
    return out


def to_original(lb: Letterbox, yx: Sequence[int]) -> tuple[int, int]:
    """A pixel (y, x) of the letterbox in the original image (its centre, clamped)."""
    y = (yx[0] - lb.top + 0.5) * lb.height / lb.new_h - 0.5
    x = (yx[1] - lb.left + 0.5) * lb.width / lb.new_w - 0.5
    return int(min(max(round(y), 0), lb.height - 1)), int(min(max(round(x), 0), lb.width - 1))
