"""``petseg-bench check``: compare a run's headline Dice figures with a committed baseline.

A baseline is JSON::

    {"reduction": "seed", "tolerance": 0.02,
     "models": {"unet": {"clean_mdice": 0.486, "perturbations": {"gaussian_noise": 0.485, ...}}}}

``clean_mdice`` is the clean mean Dice and each perturbation's figure its mean Dice over
the perturbed levels, both on the ``seed`` reduction (:func:`.summary.baseline_values`).
A figure lower than baseline - tolerance is a regression; a model or perturbation in the
baseline but not in the run fails too; improvements are shown and pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import PetsegError
from .fmt import DASH
from .summary import SCORE_REDUCTION

DEFAULT_TOLERANCE = 0.02


@dataclass(frozen=True)
class Comparison:
    model: str
    metric: str
    baseline: float | None
    now: float | None
    status: str  # ok | improved | REGRESSED | MISSING | new

    @property
    def delta(self) -> float | None:
        return None if self.baseline is None or self.now is None else self.now - self.baseline

    @property
    def failed(self) -> bool:
        return self.status in ("REGRESSED", "MISSING")

    def row(self) -> list[str]:
        def f(v: float | None, sign: bool = False) -> str:
            return DASH if v is None else (f"{v:+.4f}" if sign else f"{v:.4f}")

        return [self.model, self.metric, f(self.baseline), f(self.now), f(self.delta, sign=True), self.status]

    def describe(self) -> str:
        if self.status == "MISSING":
            return f"{self.model} {self.metric} (missing from the run)"
        return f"{self.model} {self.metric} {self.baseline:.4f} -> {self.now:.4f} ({self.delta:+.4f})"


HEADERS = ["model", "metric", "baseline", "now", "delta", "status"]


def load_baseline(path: Path, run_dir: Path | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        hint = f"petseg-bench check {run_dir} --baseline {path} --update-baseline" if run_dir else "--update-baseline"
        raise PetsegError(f"baseline {path} not found; write one from a good run with `{hint}`")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PetsegError(f"baseline {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise PetsegError(f"baseline {path} has no \"models\" object; expected "
                          f"{{\"reduction\": \"seed\", \"models\": {{model: {{\"clean_mdice\": x, \"perturbations\": {{...}}}}}}}}")
    reduction = data.get("reduction", SCORE_REDUCTION)
    if reduction != SCORE_REDUCTION:
        raise PetsegError(f"baseline {path} uses the {reduction!r} reduction; check compares {SCORE_REDUCTION!r}")
    return data


def resolve_tolerance(option: float | None, baseline: Mapping[str, Any] | None) -> float:
    if option is not None:
        return float(option)
    if baseline and baseline.get("tolerance") is not None:
        return float(baseline["tolerance"])
    return DEFAULT_TOLERANCE


def _status(baseline: float | None, now: float | None, tolerance: float) -> str:
    if baseline is None:
        return "new"
    if now is None:
        return "MISSING"
    if now < baseline - tolerance:
        return "REGRESSED"
    if now > baseline + tolerance:
        return "improved"
    return "ok"


def compare(current: Mapping[str, Any], baseline: Mapping[str, Any], tolerance: float) -> list[Comparison]:
    """One comparison per figure in the baseline or the run (baseline order first)."""
    out: list[Comparison] = []
    now_models = current.get("models", {})
    base_models = baseline.get("models", {})
    for model in [*base_models, *[m for m in now_models if m not in base_models]]:
        base = base_models.get(model) or {}
        now = now_models.get(model) or {}
        pairs = [("clean mDice", base.get("clean_mdice"), now.get("clean_mdice"), "clean_mdice" in base)]
        base_p, now_p = base.get("perturbations") or {}, now.get("perturbations") or {}
        for p in [*base_p, *[p for p in now_p if p not in base_p]]:
            pairs.append((f"{p} mean Dice", base_p.get(p), now_p.get(p), p in base_p))
        for metric, b, n, in_base in pairs:
            status = "MISSING" if in_base and b is not None and n is None else _status(b, n, tolerance)
            out.append(Comparison(model, metric, b, n, status))
    return out


def baseline_document(current: Mapping[str, Any], tolerance: float) -> dict:
    return {"reduction": current["reduction"], "tolerance": tolerance, "models": current["models"]}
