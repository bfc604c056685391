"""The report's "Adversarial robustness" section: attacks (perturbations with
``target="model"``) kept apart from the corruptions.

Per model and attack: mIoU and mean Dice against the L-infinity budget (level 0 is the
model's clean cell), the budget at which mIoU halves, and signs of gradient masking; the
section opens with the threat model and the attacks' formulas, and sets each model's
adversarial figures beside its corruption robustness.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..metrics import BUILTIN_METRICS, SCORE_REDUCTION, json_float, mean_over_classes, reduce
from ..results import CLEAN, matrices
from .document import Callout, Figure, Gallery, Paragraph, Section, Table
from .fmt import DASH, fixed
from .model_views import ModelView, label
from .plots import new_figure, save_png

_METRICS = {spec.name: spec for spec in BUILTIN_METRICS}
#: mIoU differences below this are noise of a pixel or two: no gradient-masking flag.
MASKING_TOLERANCE = 0.01
#: The built-in attacks' roles in the masking checks (third-party attacks are shown, not checked).
FGSM, PGD, RANDOM = "adv_fgsm", "adv_pgd", "adv_random_sign"

THREAT_MODEL = (
    "Threat model: white-box, untargeted, L-infinity. The attacker knows each model and its weights and "
    "changes every value of the image the model sees (the letterboxed S x S input, padding included, pixel "
    "values 0..255 before the model's mean/std) by at most eps grey levels; the result is clamped to 0..255 "
    "and not rounded back to integers, so budgets under one grey level are real. Each model is attacked "
    "through its own gradient (fp32, through its frozen backbone; a click-prompted model keeps its click), on the "
    "cross-entropy against the ground truth at its input resolution averaged over the scored pixels (void "
    "and padding left out). Scores are then computed at the original mask resolution, like every cell.")

FORMULAS = (
    "FGSM: x' = clamp(x + eps sign(grad L(x))). PGD: x_0 = x + U(-eps, eps), then "
    "x_(t+1) = clamp(proj_eps(x_t + alpha sign(grad L(x_t)))), T = {steps} steps of alpha = eps/4, the last "
    "iterate kept. SegPGD (Gu et al., ECCV 2022): PGD with L_t = (1 - l_t)/N sum over correctly classified "
    "pixels CE + l_t/N sum over wrongly classified pixels CE, l_t = (t - 1)/(2T). Random sign (baseline, no "
    "gradient): x' = clamp(x + eps s), s uniformly random in {{-1, +1}} per value: noise of the attacks' "
    "L-infinity norm, so the gap to it is the attacks' own damage. Random draws are seeded per (run seed, "
    "attack, level, image, model). The budget at which mIoU halves is interpolated linearly between the two "
    "budgets around it (> the largest budget when it never halves).")


def metric_mean(cms: np.ndarray, metric: str, reduction: str = SCORE_REDUCTION) -> float | None:
    if len(cms) == 0:
        return None
    return json_float(mean_over_classes(reduce(_METRICS[metric], cms, reduction, warn=False)))


def halving_budget(eps: Sequence[float], miou: Sequence[float | None]) -> float | None:
    """The budget at which mIoU first falls to half its clean value (``eps[0]`` = 0, clean),
    linear between budgets; None when it never does (or there is no clean value)."""
    if not miou or miou[0] is None:
        return None
    half = miou[0] / 2
    prev_e, prev_m = eps[0], miou[0]
    for e, m in zip(eps[1:], miou[1:]):
        if m is None:
            continue
        if m <= half:
            if prev_m == m:
                return float(e)
            return float(prev_e + (prev_m - half) / (prev_m - m) * (e - prev_e))
        prev_e, prev_m = e, m
    return None


def masking_signs(curves: Mapping[str, Mapping[str, Any]], tol: float = MASKING_TOLERANCE) -> list[str]:
    """Where FGSM beats PGD, or random signs beat an attack, by more than ``tol`` mIoU."""
    out = []
    pgd = curves.get(PGD)
    for name, curve in curves.items():
        if name == RANDOM or RANDOM not in curves:
            continue
        for e, m, r in zip(curve["eps"], curve["miou"], curves[RANDOM]["miou"]):
            if e > 0 and m is not None and r is not None and r < m - tol:
                out.append(f"random signs lower mIoU more than {name} at eps {e:g} ({r:.3f} vs {m:.3f})")
                break
    if pgd and FGSM in curves:
        for e, f, p in zip(pgd["eps"], curves[FGSM]["miou"], pgd["miou"]):
            if e > 0 and f is not None and p is not None and f < p - tol:
                out.append(f"FGSM lowers mIoU more than PGD at eps {e:g} ({f:.3f} vs {p:.3f})")
                break
    return out


def adversarial_block(df: pd.DataFrame, run: Mapping[str, Any], models: Sequence[str],
                      attacks: Sequence[str], values: Mapping[str, Sequence[float | None]]) -> dict:
    """summary.json's ``adversarial``: per model and attack, the budgets (``eps``), mIoU and
    mean Dice per level (``SCORE_REDUCTION``), the halving budget; per model the signs of
    gradient masking. ``values``: per attack its level values (the budgets)."""
    out: dict = {"reduction": SCORE_REDUCTION, "attacks": list(attacks), "models": {}}
    for m in models:
        dm = df[df["model"] == m]
        clean = matrices(dm[dm["perturbation"] == CLEAN])
        per: dict = {}
        for a in attacks:
            da = dm[dm["perturbation"] == a]
            if not len(da):
                continue
            levels = [0] + sorted(int(lv) for lv in set(da["level"]))
            cells = {0: clean, **{int(lv): matrices(c) for lv, c in da.groupby("level", sort=True)}}
            eps = [float(values[a][lv]) if lv < len(values[a]) and values[a][lv] is not None else float(lv)
                   for lv in levels]
            miou = [metric_mean(cells[lv], "iou") for lv in levels]
            per[a] = {"levels": levels, "eps": eps, "miou": miou,
                      "mdice": [metric_mean(cells[lv], "dice") for lv in levels],
                      "halving_eps": halving_budget(eps, miou)}
        if per:
            out["models"][m] = {"attacks": per, "masking": masking_signs(per)}
    return out


def plot_model(block: Mapping[str, Any], model: str, title: str, path: Path) -> Path:
    """mIoU against the budget (levels evenly spaced, ticks labelled with eps), one line per attack."""
    fig = new_figure(5.6, 3.8)
    ax = fig.add_subplot()
    ticks: dict[int, float] = {}
    for a, curve in block["models"][model]["attacks"].items():
        pts = [(lv, v) for lv, v in zip(curve["levels"], curve["miou"]) if v is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=4, linewidth=1.6, linestyle=":" if a == RANDOM else "-",
                    label=a.removeprefix("adv_").replace("_", " "))
            ticks.update(zip(curve["levels"], curve["eps"]))
    ax.set_xticks(sorted(ticks))
    ax.set_xticklabels([f"{ticks[lv]:g}" for lv in sorted(ticks)], fontsize=8)
    ax.set_xlabel("L-inf budget eps (grey levels of 0..255)")
    ax.set_ylabel(f"mIoU ({SCORE_REDUCTION} reduction)")
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.legend(fontsize=8, loc="outside lower center", ncol=4, frameon=False)
    return save_png(fig, path)


def _eps_header(block: Mapping[str, Any]) -> list[float]:
    seen: dict[float, None] = {}
    for per in block["models"].values():
        for curve in per["attacks"].values():
            seen.update(dict.fromkeys(curve["eps"]))
    return sorted(seen)


def metric_table(block: Mapping[str, Any], models: Mapping[str, ModelView], metric: str) -> Table:
    budgets = _eps_header(block)
    rows = []
    for m, per in block["models"].items():
        for a, curve in per["attacks"].items():
            got = dict(zip(curve["eps"], curve[metric]))
            rows.append([label(models, m), a] + [fixed(got.get(e)) for e in budgets])
    name = "mIoU" if metric == "miou" else "mean Dice"
    return Table(["model", "attack"] + [f"eps {e:g}" for e in budgets], rows,
                 f"{name} ({block['reduction']} reduction) against the L-inf budget; eps 0 is the clean cell.",
                 text_columns=2)


def overview_table(block: Mapping[str, Any], summary: Mapping[str, Any], models: Mapping[str, ModelView]) -> Table:
    """Per model: clean mIoU, the budget halving mIoU per attack, the worst attack's mean
    Dice over the budgets beside the mean Dice over the corruptions."""
    attacks = list(block["attacks"])
    scores = (summary.get("scores") or {}).get("models") or {}
    rows = []
    for m, per in block["models"].items():
        curves = per["attacks"]
        first = next(iter(curves.values()))
        halving = []
        for a in attacks:
            c = curves.get(a)
            h = None if c is None else c["halving_eps"]
            halving.append(DASH if c is None else (f"> {max(c['eps']):g}" if h is None else f"{h:.2f}"))
        means = [float(np.mean([v for v in c["mdice"][1:] if v is not None])) for a, c in curves.items()
                 if a != RANDOM and any(v is not None for v in c["mdice"][1:])]
        rows.append([label(models, m), fixed(first["miou"][0])] + halving
                    + [fixed(min(means) if means else None), fixed((scores.get(m) or {}).get("mean_dice"))])
    return Table(["model", "clean mIoU"] + [f"eps halving mIoU: {a}" for a in attacks]
                 + ["mean Dice, strongest attack", "mean Dice, corruptions"], rows,
                 "The budget (grey levels) at which each attack halves the model's clean mIoU; the strongest "
                 "gradient attack's mean Dice over its budgets beside the model's mean Dice over the run's "
                 "corruptions (the robustness table's figure; a dash where the run has none).", text_columns=1)


def adversarial_section(block: Mapping[str, Any], summary: Mapping[str, Any], models: Mapping[str, ModelView],
                        plot_paths: Mapping[str, Path], run_dir: Path, steps: int | None = None) -> Section:
    blocks: list[Any] = [Paragraph(THREAT_MODEL), Paragraph(FORMULAS.format(steps=steps or 10))]
    for m, per in block["models"].items():
        for sign in per["masking"]:
            blocks.append(Callout(f"Possible gradient masking in {label(models, m)}: {sign}. Its attacked "
                                  f"figures may overstate its robustness.", "warning"))
    blocks += [overview_table(block, summary, models), metric_table(block, models, "miou"),
               metric_table(block, models, "mdice")]
    figures = [Figure(Path(p).relative_to(run_dir).as_posix(), f"{label(models, m)}: mIoU against the budget")
               for m, p in plot_paths.items()]
    if figures:
        blocks.append(Gallery(figures, "grid"))
    return Section("adversarial", "Adversarial robustness", blocks)


def attack_perturbations(run: Any, perturbations: Sequence[str]) -> list[str]:
    """The run's attacks among ``perturbations``: run.json's ``model_perturbations`` where
    the sweep recorded them, else the installed specs with ``target="model"``."""
    from ..results import RunRecord

    recorded = RunRecord.of(run).extra.get("model_perturbations")
    if recorded is not None:
        return [p for p in perturbations if p in set(recorded)]
    from ..plugins import get_registry

    table = get_registry().perturbations
    return [p for p in perturbations if p in table and table[p].acts_on_model]


def level_values_of(run: Any, attacks: Sequence[str], df: pd.DataFrame) -> dict[str, list[float | None]]:
    """Per attack its budgets by level, from run.json's ``perturbation_params``, else the cells."""
    from ..results import RunRecord

    params = RunRecord.of(run).perturbation_params or {}
    out = {}
    for a in attacks:
        values = (params.get(a) or {}).get("values")
        if not values:
            rows = df[df["perturbation"] == a][["level", "value"]].drop_duplicates("level")
            got = {int(lv): float(v) for lv, v in zip(rows["level"], rows["value"])}
            values = [got.get(lv, 0.0 if lv == 0 else None) for lv in range(max(got, default=0) + 1)]
        out[a] = list(values)
    return out


def plot_name(model: str) -> str:
    """The plot's file name for ``model`` (a family key such as ``onnx:x.onnx`` made safe)."""
    import re

    return f"adversarial-{re.sub(r'[^A-Za-z0-9_.-]', '_', model)}.png"
