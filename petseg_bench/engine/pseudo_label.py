"""``petseg-bench pseudo-label``: a teacher checkpoint labels the unlabelled photos.

Each photo goes through the one inference path (:func:`~.predictor.load_predictor`,
letterboxed as :func:`~.predictor.letterbox_batch` does, the model's logits restored to
the photo's resolution as :func:`~.predictor.restore` does), so the pseudo label is
exactly what ``evaluate`` would predict. A pixel whose largest softmax probability is
below the threshold becomes void (255: ignored by CE and Dice). ``wrong_species``
uses the photo's species (labels.csv): ``void`` (default) makes pet pixels of the other
species void, ``relabel`` gives them the photo's species, ``keep`` leaves them.
A photo with no confident pet pixel left is skipped (listed in the manifest).

Output: :mod:`petseg_bench.data.pseudo`'s folder. Each image's files are written
atomically, so an interrupted run is continued by the same command (finished images are
skipped); the manifest is written last, with ``complete: true``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..atomic import temp_path, write_bytes_atomic, write_json_atomic
from ..data.breeds import breed_of
from ..data.decode import SampleError, load_rgb
from ..data.pseudo import FORMAT, MANIFEST, SPLIT_DIR, refuse_labelled_names
from ..data.split import limit as limit_positions
from ..data.unlabelled import read_unlabelled
from ..errors import DataError, ModelRunError, PetsegError, write_error
from ..labels import IGNORE
from ..provenance import code_version, file_sha256
from .checkpoint import folder_model
from .inference import prefetch
from .lock import folder_lock
from .predictor import argmax_last, host_scores, letterbox_batch, load_predictor
from .runtime import Runtime, in_parallel

WRONG_SPECIES = ("void", "relabel", "keep")


@dataclass(kw_only=True)
class PseudoJob:
    checkpoint: Path
    unlabelled: Path
    out_dir: Path
    data_root: Path
    threshold: float = 0.9
    wrong_species: str = "void"
    limit: int | None = None  # a fixed seeded subset of N photos
    batch_size: int = 16
    device: str = "auto"
    precision: str = "auto"

    def validate(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise PetsegError(f"--threshold must be within 0..1, got {self.threshold}")
        if self.wrong_species not in WRONG_SPECIES:
            raise PetsegError(f"--wrong-species must be one of {', '.join(WRONG_SPECIES)}, got {self.wrong_species!r}")
        if self.limit is not None and self.limit < 1:
            raise PetsegError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise PetsegError(f"--batch-size must be >= 1, got {self.batch_size}")


def confident_label(scores: np.ndarray, threshold: float, species: int, wrong_species: str) -> np.ndarray:
    """Restored logits ``HxWxC`` -> the predicted label map (:func:`~.predictor.argmax_last`,
    as ``evaluate`` predicts) with unsure pixels, and per ``wrong_species`` pet pixels of
    the species the photo is not (``species``: 1 cat, 2 dog), made void."""
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    confidence = 1.0 / np.exp(scores - scores.max(-1, keepdims=True)).sum(-1)  # the largest softmax probability
    label = argmax_last(scores)
    wrong = label == (3 - species) if species in (1, 2) else np.zeros(label.shape, bool)
    if wrong_species == "relabel":
        label[wrong] = species
    label[confidence < threshold] = IGNORE
    if wrong_species == "void":
        label[wrong] = IGNORE
    return label


def _png(label: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", label)
    if not ok:
        raise PetsegError("could not encode a pseudo label as PNG")
    return data.tobytes()


def pseudo_label(job: PseudoJob, log: Callable[[str], None] = print) -> dict:
    """Label ``job.unlabelled`` into ``job.out_dir``; returns the manifest written."""
    job.validate()
    images = read_unlabelled(job.unlabelled, job.data_root)  # refuses test-split names
    refuse_labelled_names(images.names, job.data_root, f"unlabelled images in {job.unlabelled}")
    chosen = limit_positions(np.arange(len(images)), job.limit, 0)
    pr = load_predictor(job.checkpoint, Runtime.choose(job.device, job.precision),
                        expect_model=folder_model(job.checkpoint))
    if pr.needs_clicks:
        raise PetsegError(f"teacher {pr.spec.name} is point-prompted: its click is placed on the ground truth, "
                          f"which unlabelled photos do not have; choose a teacher without clicks")
    out = Path(job.out_dir)
    teacher = {"checkpoint": str(job.checkpoint), "sha256": file_sha256(job.checkpoint, 64),
               "model": (pr.info or {}).get("model"), "data_fingerprint": (pr.info or {}).get("data_fingerprint")}
    settings = {"format": FORMAT, "teacher": teacher,
                "unlabelled": str(Path(job.unlabelled).resolve()), "threshold": job.threshold,
                "wrong_species": job.wrong_species, "limit": job.limit, "layout": "processed"}
    color, labels = out / SPLIT_DIR / "color", out / SPLIT_DIR / "label"
    with folder_lock(out, scan=("", f"{SPLIT_DIR}/color", f"{SPLIT_DIR}/label"), log=log):
        _claim(out, settings)
        for d in (color, labels):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise write_error(d, exc, "to folder") from None
        todo = [int(k) for k in chosen if not (labels / f"{images.names[k]}.png").is_file()]
        if len(todo) < len(chosen):
            log(f"{len(chosen) - len(todo)} of {len(chosen)} photos already labelled in {out}; labelling the rest")
        t0 = time.perf_counter()
        skipped = _label(job, pr, images, todo, color, labels)
        seconds = time.perf_counter() - t0
        manifest = {**settings, **_summary(images, chosen, labels, skipped), "code_version": code_version(),
                    "seconds": round(seconds, 2),
                    "images_per_s": round(len(todo) / seconds, 2) if todo and seconds > 0 else None,
                    "complete": True}
        write_json_atomic(out / MANIFEST, manifest)
    return manifest


def _claim(out: Path, settings: dict) -> None:
    """The folder is new, empty, or an unfinished or finished run of the same settings
    (then it is continued); anything else is refused rather than mixed."""
    path = out / MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        diff = _changed(old, settings) if isinstance(old, dict) else ["a manifest that cannot be read"]
        if diff:
            raise PetsegError(f"{out} holds pseudo labels made with other settings ({', '.join(diff)}); "
                              f"choose another --out or remove that folder")
    elif any(not p.name.startswith(".") for p in out.iterdir()):
        raise PetsegError(f"{out} is not empty and holds no {MANIFEST}; choose a new or empty --out folder")
    write_json_atomic(path, {**settings, "complete": False})


def _changed(old: dict, now: dict) -> list[str]:
    """The settings that differ (the teacher by its bytes, not by the path it was given as)."""
    def key(d: dict, k: str):
        return (d.get(k) or {}).get("sha256") if k == "teacher" and isinstance(d.get(k), dict) else d.get(k)

    return [k for k in ("format", "teacher", "unlabelled", "threshold", "wrong_species", "limit")
            if key(old, k) != key(now, k)]


def _label(job: PseudoJob, pr, images, todo: list[int], color: Path, labels: Path) -> dict[str, str]:
    """Label the photos ``todo`` in batches; returns {name: why skipped}."""
    size = pr.config.in_size
    starts = list(range(0, len(todo), job.batch_size))
    skipped: dict[str, str] = {}

    def load(start: int):
        chunk = todo[start:start + job.batch_size]
        pixels, kept = [], []
        for k in chunk:
            try:
                pixels.append(load_rgb(images.path(k)))
                kept.append(k)
            except SampleError as exc:
                skipped[images.names[k]] = str(exc)
        return kept, pixels, (letterbox_batch(pixels, size) if pixels else None)

    for kept, pixels, boxed in prefetch(load, starts, pr.runtime.overlaps_host_work):
        if boxed is None:
            continue
        batch, boxes, _ = boxed
        try:
            scores = host_scores(pr.logits(batch))
        except ModelRunError as exc:
            raise exc.at(f"pseudo-labelling with {job.checkpoint}") from None

        def finish(lo: int, hi: int) -> list:
            for i in range(lo, hi):
                k = kept[i]
                name = images.names[k]
                label = confident_label(boxes[i].invert(scores[i]), job.threshold, int(images.species[k]),
                                           job.wrong_species)
                if not ((label == 1) | (label == 2)).any():
                    skipped[name] = "no confident pet pixel"
                    continue
                _copy(images.path(k), color / f"{name}.jpg")
                write_bytes_atomic(labels / f"{name}.png", _png(label))  # last: marks the photo done
            return []

        in_parallel(finish, len(kept))
    return skipped


def _copy(src: Path, dst: Path) -> None:
    tmp = temp_path(dst)
    try:
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(dst, exc) from None


def _summary(images, chosen: np.ndarray, labels: Path, skipped: dict[str, str]) -> dict:
    """Kept-pixel fractions per photo, per breed and overall, from the label files (so a
    continued run counts the photos of the first one too)."""
    per_image, kept_px, all_px, breeds = {}, 0, 0, {}
    for k in chosen:
        name = images.names[int(k)]
        path = labels / f"{name}.png"
        if not path.is_file():
            continue
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if label is None:
            raise DataError(f"pseudo label {path} is unreadable; remove it and run again")
        n_kept = int((label != IGNORE).sum())
        per_image[name] = {"species": int(images.species[int(k)]), "kept_fraction": round(n_kept / label.size, 6),
                           "pet_fraction": round(float(((label == 1) | (label == 2)).mean()), 6)}
        kept_px, all_px = kept_px + n_kept, all_px + label.size
        b = breeds.setdefault(breed_of(name), {"images": 0, "kept_pixels": 0, "pixels": 0})
        b["images"] += 1
        b["kept_pixels"] += n_kept
        b["pixels"] += label.size
    still_skipped = {n: why for n, why in skipped.items() if n not in per_image}
    return {
        "n_photos": int(len(chosen)), "n_images": len(per_image), "n_skipped": len(still_skipped),
        "kept_fraction": round(kept_px / all_px, 6) if all_px else None,
        "breeds": {b: {"images": v["images"], "kept_fraction": round(v["kept_pixels"] / v["pixels"], 6)}
                   for b, v in sorted(breeds.items())},
        "skipped": dict(sorted(still_skipped.items())),
        "images": per_image,
    }
