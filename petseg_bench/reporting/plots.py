"""Dice-vs-level plots: one PNG per perturbation with every model on it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping

from ..atomic import write_bytes_atomic
from ..metrics import SCORE_REDUCTION
from .fmt import axis_label


def new_figure(width: float, height: float):
    # The object API with an Agg canvas: no pyplot, no global backend switch. The
    # constrained layout makes room for a legend outside the axes.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes_atomic(path, buf.getvalue())
    return path


def plot_curves(summary: Mapping[str, Any], perturbation: str, labels: Mapping[str, str], path: Path,
                beside: Mapping[str, float | None] | None = None) -> Path:
    """Mean Dice (seed reduction) against level, one line per model (``labels``: model ->
    legend text). ``beside``: model -> a level drawn as a dashed line in the model's
    colour (e.g. its mean Dice over the pixel perturbations)."""
    info = summary["perturbation_params"].get(perturbation, {"param": None, "values": []})
    values = info["values"]
    names = [labels.get(m, m) for m in summary["models"]]
    ncol = 2 if max(map(len, names), default=0) <= 36 else 1  # two columns of long labels overflow the width
    fig = new_figure(5.6, 3.6 + 0.17 * -(-len(names) // ncol))  # and room below for the legend rows
    ax = fig.add_subplot()
    levels_seen: set[int] = set()
    ys_all: list[float] = []
    for model in summary["models"]:
        curve = summary["curves"].get(model, {}).get(perturbation) or {}
        pts = [(lv, v) for lv, v in zip(curve.get("levels", []), curve.get(SCORE_REDUCTION, [])) if v is not None]
        if not pts:
            continue
        xs, ys = zip(*pts)
        levels_seen.update(xs)
        ys_all += ys
        (line,) = ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.6, label=labels.get(model, model))
        ref = (beside or {}).get(model)
        if ref is not None:
            ax.axhline(ref, color=line.get_color(), linestyle="--", linewidth=1.0, alpha=0.7)
            ys_all.append(ref)
    ticks = sorted(levels_seen) or [0]
    shown = [values[lv] if lv < len(values) else None for lv in ticks]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{v:g}" if v is not None else str(lv) for lv, v in zip(ticks, shown)], fontsize=8)
    ax.set_xlabel(axis_label(info["param"], shown))
    ax.set_ylabel(f"mean Dice ({SCORE_REDUCTION} reduction)")
    if ys_all:
        lo, hi = min(ys_all), max(ys_all)
        pad = max(0.02, (hi - lo) * 0.15)  # a flat curve still gets a readable band
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
        # Below the axes: labels name their backbone and would hide the curves inside.
        fig.legend(fontsize=8, loc="outside lower center", ncol=ncol, frameon=False)
    ax.set_title(perturbation.replace("_", " "), fontsize=11)
    ax.grid(True, alpha=0.3)
    return save_png(fig, path)
