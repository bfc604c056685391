"""One (perturbation, level) group of a sweep, computed wherever a backend runs it.

Every group shares what :func:`load_sweep_data` loads once per process from a picklable
:class:`SweepSource` (the test images, the predictors, the perturbations); a group is
computed by :func:`compute_group` (the moved clicks of a click perturbation, then
:func:`run_group`'s confusion matrices) and comes back as a :class:`GroupResult`. This
module writes nothing: the process that owns the run folder writes the cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.cache import prepare
from ..errors import ModelRunError, PetsegError
from ..perturbation import off_foreground, perturb, perturb_clicks
from ..plugins import get_registry
from ..provenance import file_sha256, hardware, hardware_info
from ..results import CLEAN
from ..run_record import RuntimeFacts
from ..specs import PerturbationSpec
from .attack import model_attack
from .inference import inference_on_dataset, make_batch, overlaps, prefetch
from .predictor import Predictor, letterbox_clicks, load_predictor
from .runtime import Runtime, in_parallel


@dataclass(frozen=True, kw_only=True)
class SweepSource:
    """What a process needs to load a sweep's shared data (:func:`load_sweep_data`);
    picklable and hashable, so Ray workers get it and cache what they load by it."""

    checkpoints: tuple[tuple[str, str, str], ...]  # (model, path, sha256)
    data_root: str
    cache_dir: str | None
    void: str
    fingerprint: str
    ids: tuple[str, ...]
    perturbations: tuple[str, ...]
    seed: int
    batch_size: int
    device: str
    precision: str
    compile: bool


@dataclass
class GroupResult:
    """One group's confusion matrices per model, and for a click perturbation the share
    of moved clicks off the pet; ``runtime``: the device kind and precision it ran on."""

    mats: dict[str, np.ndarray]
    click_share: float | None = None
    runtime: tuple[str, str] | None = None


@dataclass
class SweepData:
    """What every (perturbation, level) group of a sweep shares."""

    images: list[np.ndarray]
    labels: list[np.ndarray]
    ids: list[str]
    predictors: dict[str, Predictor]
    perturbations: dict[str, PerturbationSpec]
    seed: int
    batch_size: int
    #: The evaluation rule's click of each image at original resolution, computed once
    #: when a click perturbation is swept (see :func:`base_clicks`).
    clicks: np.ndarray | None = None
    #: Per input size, that click of each image in the letterboxed ground truth (what
    #: point models get), placed once for every cell (see :func:`placed_clicks`).
    placed: dict[int, np.ndarray] = field(default_factory=dict)

    def base_clicks(self) -> np.ndarray:
        if self.clicks is None:
            from ..data.points import eval_click

            self.clicks = np.array([eval_click(lab) for lab in self.labels], dtype=np.int64).reshape(-1, 2)
        return self.clicks

    def placed_clicks(self, size: int) -> np.ndarray:
        if size not in self.placed:
            self.placed[size] = letterbox_clicks(self.labels, size)
        return self.placed[size]


def applies(pert: PerturbationSpec | None, inputs) -> bool:
    """Whether a perturbation's cells exist for a model with these inputs: a click
    perturbation only for models with a ``point`` input, any other for every model."""
    return pert is None or not pert.acts_on_clicks or "point" in inputs


def runtime_facts(runtime: Runtime) -> RuntimeFacts:
    """What the run record says about the machine that computes the cells."""
    return RuntimeFacts(precision=runtime.precision, device=runtime.device_kind(), runtime=runtime.describe(),
                        hardware=hardware(), hardware_info=hardware_info())


def load_sweep_data(src: SweepSource, test=None, runtime: Runtime | None = None) -> SweepData:
    """The images, labels and predictors every group of a sweep shares, loaded in this
    process; the test split and the checkpoints must be those the run recorded."""
    runtime = runtime or Runtime.choose(src.device, src.precision)
    if test is None:
        test = prepare(Path(src.data_root), "test", src.void, None if src.cache_dir is None else Path(src.cache_dir))
    if test.fingerprint != src.fingerprint:
        raise PetsegError(f"the test split at {src.data_root} is not the run's (fingerprint {test.fingerprint}, "
                          f"the run's is {src.fingerprint})")
    positions = test.index_of(list(src.ids))
    predictors = {}
    for m, path, sha in src.checkpoints:
        if file_sha256(Path(path)) != sha:
            raise PetsegError(f"checkpoint {path} is not the one the run recorded (sha256 {sha}); it changed meanwhile")
        predictors[m] = load_predictor(Path(path), runtime, expect_model=m)
        if src.compile:
            predictors[m].compile(src.batch_size)
    perts = {p: get_registry().get("perturbation", p) for p in src.perturbations}
    return SweepData([test.image(p) for p in positions], [test.label(p) for p in positions], list(src.ids),
                     predictors, perts, src.seed, src.batch_size)


def loaded_models(data: SweepData, src: SweepSource) -> dict[str, dict]:
    """The run record's ``model_info`` of the predictors a process loaded (plain JSON
    objects: a Ray worker sends them back)."""
    return {m: model_info(data.predictors[m], Path(path), sha) for m, path, sha in src.checkpoints}


def model_info(pr: Predictor, path: Path, sha: str) -> dict:
    info = pr.info or {}
    return {"checkpoint": str(path), "sha256": sha, "backbone": info.get("backbone"), "encoder": info.get("encoder"),
            "eval_click_rule": info.get("eval_click_rule"), "in_size": pr.config.in_size,
            "base_channels": pr.config.options.get("base_channels"), "train_config": info.get("train_config"),
            "train_data_fingerprint": info.get("data_fingerprint"), "val": info.get("val"), "epoch": info.get("epoch")}


def compute_group(data: SweepData, pert: str, level: int, models: list[str], on_batch=None) -> GroupResult:
    """One (perturbation, level) group of ``models``: the clicks a click perturbation
    moves (at original resolution), then :func:`run_group`."""
    moves = share = None
    spec = data.perturbations.get(pert)
    if spec is not None and spec.acts_on_clicks:
        base, moved = perturb_clicks(spec, data.labels, level, data.ids, data.seed, data.base_clicks())
        moves = moved - base
        share = float(off_foreground(moved, data.labels).mean()) if len(moved) else None
    try:
        mats = run_group(data, pert, level, models, on_batch, moves)
    except ModelRunError as exc:
        raise exc.at(f"in cell ({pert}, level {level})") from None
    return GroupResult(mats, share)


def run_group(data: SweepData, pert: str, level: int, models: list[str], on_batch=None,
              moves: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Confusion matrices of every model in ``models`` on one (perturbation, level): each
    batch is perturbed once and letterboxed once per input size (on a background thread
    beside a GPU's forward, split over the threads between forwards on the CPU).
    ``moves``: per image (all of ``data``) the click displacement of a click perturbation.
    An attack (``target="model"``) is then computed per model on its letterboxed batch."""
    chosen = {m: data.predictors[m] for m in models}
    spec = data.perturbations.get(pert)
    attack = model_attack(spec, level, data.seed) if spec is not None and spec.acts_on_model and level else None
    sizes = {pr.config.in_size for pr in chosen.values()}
    clicks = any(pr.needs_clicks for pr in chosen.values())
    placed = {s: data.placed_clicks(s) for s in sizes} if clicks else {}

    def make(start: int):
        chunk = slice(start, start + data.batch_size)
        images, labels, ids = data.images[chunk], data.labels[chunk], data.ids[chunk]
        if pert != CLEAN:
            # each image draws from its own generator: any split gives the same pixels
            images = in_parallel(lambda lo, hi: perturb(data.perturbations[pert], images[lo:hi], level, ids[lo:hi],
                                                        data.seed), len(images))
        return make_batch(images, labels, sizes, clicks, None if moves is None else moves[chunk],
                          {s: p[chunk] for s, p in placed.items()}, ids)

    starts = list(range(0, len(data.images), data.batch_size))
    return inference_on_dataset(chosen, prefetch(make, starts, overlaps(chosen)), on_batch, attack)
