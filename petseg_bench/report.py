"""The report of a sweep run: ``summary.json``, ``report.md``, ``index.html`` and PNGs.

``write_report(run_dir)`` reads the run record and every finished cell, builds the
summary (:mod:`petseg_bench.summary`), draws one Dice-vs-level plot per perturbation
(every model on it) and one example strip per perturbation (one test image at every
level, perturbed exactly as the sweep perturbed it), and renders the same sections as
Markdown (tabulate, GitHub format) and HTML (the Jinja2 template
``templates/report.html.j2``). The example strips need the test images; when the data
is not available they are skipped with a note, never an error.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import PetsegError, one_line
from .io import write_bytes_atomic, write_json_atomic, write_text_atomic
from .results import load_run
from .seed_figures import (MODEL_LABELS, ROBUSTNESS_NOTE, SEED_SOURCE, TABLE1, TABLE1_PROVIDED_BASELINE, TABLE2,
                           format_figure, model_label)
from .summary import REDUCTION_DESCRIPTIONS, SCORE_REDUCTION, build_summary

RUN_FILE = "run.json"
PLOTS_DIR = "plots"
TEMPLATE = "report.html.j2"
CLIP_NONE_VALUES = ("none", "random", "")
DASH = "—"


# --- the report's content, shared by Markdown and HTML ------------------------------------

@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    groups: list[tuple[str, int]] = field(default_factory=list)  # HTML header row above `headers`
    md_headers: list[str] | None = None  # Markdown has no grouped headers: fuller names
    text_columns: int = 1  # leading columns that are text (left-aligned); the rest are numbers
    kind: str = "table"


@dataclass
class Paragraph:
    text: str
    kind: str = "paragraph"


@dataclass
class Callout:
    text: str
    level: str = "warning"  # warning | note
    kind: str = "callout"


@dataclass
class Figure:
    path: str  # relative to the run folder
    caption: str
    kind: str = "figure"


@dataclass
class Gallery:
    figures: list[Figure]
    layout: str = "grid"  # grid (plots) | strips (full width)
    kind: str = "gallery"


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Any]


# --- entry point --------------------------------------------------------------------------

def write_report(run_dir: Path, data_root: Path | None = None, cache_dir: Path | None = None,
                 n_boot: int = 500, examples: bool = True) -> list[Path]:
    """Write ``summary.json``, ``report.md``, ``index.html`` and ``plots/*.png`` into
    ``run_dir``; returns every written path (the three documents first)."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    df = load_run(run_dir)
    if df.empty:
        raise PetsegError(f"{run_dir} has no finished cell yet; run or resume the sweep first")
    summary = build_summary(df, run, n_boot=n_boot)

    plots_dir = run_dir / PLOTS_DIR
    curve_paths = {p: plot_curves(summary, p, plots_dir / f"dice-{p}.png") for p in summary["perturbations"]}
    if examples:
        strip_paths, strip_notes = example_strips(run, summary, plots_dir, data_root, cache_dir)
    else:  # e.g. a report committed to a repository, which must hold no dataset pixels
        strip_paths, strip_notes = {}, ["Example images left out (--no-examples): they show dataset images."]

    sections = build_sections(run, summary, run_dir, curve_paths, strip_paths, strip_notes)
    title = "petseg-bench robustness report"
    paths = [run_dir / "summary.json", run_dir / "report.md", run_dir / "index.html"]
    write_json_atomic(paths[0], summary)
    write_text_atomic(paths[1], render_markdown(title, sections))
    write_text_atomic(paths[2], render_html(title, sections, run))
    return paths + list(curve_paths.values()) + list(strip_paths.values())


def read_run(run_dir: Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise PetsegError(f"no {RUN_FILE} in {run_dir}: not a sweep run folder (make one with `petseg-bench run`)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PetsegError(f"{path} is unreadable: {exc}") from None


# --- plots ----------------------------------------------------------------------------------

def _new_figure(width: float, height: float):
    # The object API with an Agg canvas: no pyplot, no global backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_bytes_atomic(path, buf.getvalue())
    return path


def axis_label(param: str | None, values: Sequence[float | None]) -> str:
    """``std 0..18`` from the parameter name and its per-level values."""
    known = [v for v in values if v is not None]
    name = param or "level"
    if not known:
        return name
    return f"{name} {known[0]:g}..{known[-1]:g}"


def plot_curves(summary: Mapping[str, Any], perturbation: str, path: Path) -> Path:
    """Mean Dice (seed reduction) against level, one line per model."""
    info = summary["perturbation_params"].get(perturbation, {"param": None, "values": []})
    values = info["values"]
    fig = _new_figure(5.6, 3.6)
    ax = fig.add_subplot()
    levels_seen: set[int] = set()
    ys_all: list[float] = []
    for model in summary["models"]:
        curve = summary["curves"].get(model, {}).get(perturbation)
        if not curve:
            continue
        pts = [(lv, v) for lv, v in zip(curve["levels"], curve[SCORE_REDUCTION]) if v is not None]
        if not pts:
            continue
        xs, ys = zip(*pts)
        levels_seen.update(xs)
        ys_all += ys
        ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.6, label=model_label(model))
    ticks = sorted(levels_seen) or [0]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{values[lv]:g}" if lv < len(values) and values[lv] is not None else str(lv) for lv in ticks],
                       fontsize=8)
    ax.set_xlabel(axis_label(info["param"], [values[lv] if lv < len(values) else None for lv in ticks]))
    ax.set_ylabel(f"mean Dice ({SCORE_REDUCTION} reduction)")
    if ys_all:
        lo, hi = min(ys_all), max(ys_all)
        pad = max(0.02, (hi - lo) * 0.15)
        ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad))
    ax.set_title(perturbation.replace("_", " "), fontsize=11)
    ax.grid(True, alpha=0.3)
    if ys_all:
        ax.legend(fontsize=8, loc="best", frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def example_strips(run: Mapping[str, Any], summary: Mapping[str, Any], plots_dir: Path,
                   data_root: Path | None, cache_dir: Path | None) -> tuple[dict[str, Path], list[str]]:
    """One strip per perturbation: one test image at every level, perturbed with the
    sweep's generators. Never raises: what cannot be drawn becomes a note."""
    root = data_root or (Path(run["data_root"]) if run.get("data_root") else None)
    if root is None:
        return {}, ["Example images skipped: no data folder given (pass --data-root to `petseg-bench report`)."]
    try:
        from .data.cache import prepare

        test = prepare(Path(root), "test", run.get("void") or "nearest", cache_dir)
    except Exception as exc:  # noqa: BLE001 - a report never fails for want of images
        return {}, [f"Example images skipped: the test split at {root} is not readable ({_one_line(exc)})."]
    if run.get("data_fingerprint") and test.fingerprint != run["data_fingerprint"]:
        return {}, [f"Example images skipped: the data at {root} (fingerprint {test.fingerprint}) is not the "
                    f"data this run used ({run['data_fingerprint']})."]
    names = set(test.names)
    image_id = next((i for i in run.get("image_ids", []) if i in names), None)
    if image_id is None:
        return {}, [f"Example images skipped: none of the run's test images is in {root}."]
    image = np.asarray(test.image(test.index_of([image_id])[0]))

    from .plugins import get_registry
    from .sweep import image_rng

    registry = get_registry()
    seed = int(run.get("seed") or 0)
    paths: dict[str, Path] = {}
    notes: list[str] = []
    for p in summary["perturbations"]:
        spec = registry.perturbations.get(p)
        if spec is None:
            notes.append(f"No example strip for {p}: the perturbation plugin is not installed here.")
            continue
        try:
            values = list(summary["perturbation_params"].get(p, {}).get("values") or [])
            if not values or None in values:
                values = list(spec.levels)
            frames = [image]
            for level in range(1, len(values)):
                frames += spec.apply([image], float(values[level]), [image_rng(seed, p, level, image_id)])
            paths[p] = _draw_strip(frames, values, summary["perturbation_params"].get(p, {}).get("param") or spec.param,
                                   plots_dir / f"example-{p}.png")
        except Exception as exc:  # noqa: BLE001
            notes.append(f"No example strip for {p}: {_one_line(exc)}")
    notes.insert(0, f"Test image {image_id}, perturbed with the run's seed {seed}: the pixels the models saw.")
    return paths, notes


STRIP_HEIGHT = 200  # thumbnail height in pixels (never upscaled)


def _draw_strip(frames: Sequence[np.ndarray], values: Sequence[float], param: str, path: Path) -> Path:
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


# --- sections -------------------------------------------------------------------------------

def _f(value: float | None, digits: int = 3) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return DASH if value is None else f"{100 * value:.1f}"


def _ci(block: Mapping[str, Any]) -> str:
    ci = block.get("mdice_ci95")
    text = _f(block.get("mdice"))
    if ci and None not in ci:
        text += f" ({ci[0]:.3f}–{ci[1]:.3f})"
    return text


def _ranges(levels: Sequence[int]) -> str:
    levels = sorted(levels)
    if not levels:
        return "none"
    if levels == list(range(levels[0], levels[-1] + 1)) and len(levels) > 2:
        return f"{levels[0]}–{levels[-1]}"
    return ", ".join(str(lv) for lv in levels)


def _random_clip_models(run: Mapping[str, Any]) -> list[str]:
    out = []
    for m, info in (run.get("model_info") or {}).items():
        clip = (info or {}).get("clip")
        if clip and str(clip.get("pretrained", "")).strip().lower() in CLIP_NONE_VALUES:
            out.append(m)
    return out


def build_sections(run: Mapping[str, Any], summary: Mapping[str, Any], run_dir: Path,
                   curve_paths: Mapping[str, Path], strip_paths: Mapping[str, Path],
                   strip_notes: Sequence[str]) -> list[Section]:
    models, perts = summary["models"], summary["perturbations"]
    labels = ", ".join(f"{model_label(m)} ({m})" if m in MODEL_LABELS else m for m in models)
    n = summary["n_images"]
    limit = run.get("limit")
    void = {"nearest": "filled from the nearest valid pixel (the seed's choice)",
            "ignore": "ignored (left out of every confusion matrix)"}.get(run.get("void"), str(run.get("void")))
    levels = run.get("levels") or sorted({lv for m in models for c in summary["curves"].get(m, {}).values()
                                          for lv in c["levels"] if lv > 0})
    intro = (
        f"Models: {labels}. Test images: {n}"
        + (f" (a seeded subset, --limit {limit})" if limit else "")
        + f"; data fingerprint {run.get('data_fingerprint') or DASH}. "
        f"Perturbations ({len(perts)}): {', '.join(perts) or 'none'}; levels 0 (clean, computed once per model) "
        f"and {_ranges(levels)}; perturbation seed {run.get('seed', DASH)}. "
        f"Void (border) pixels were {void}. "
        f"Two reductions are reported: dataset ({REDUCTION_DESCRIPTIONS['dataset']}) and seed "
        f"({REDUCTION_DESCRIPTIONS['seed']}). Robustness figures use the {SCORE_REDUCTION} reduction, as the seed "
        f"study's robustness plots did. Metrics are computed at the original mask resolution."
    )
    blocks: list[Any] = [Paragraph(intro)]
    random_clip = _random_clip_models(run)
    if random_clip:
        blocks.append(Callout(
            f"Random-init CLIP: not comparable with the seed's pretrained-CLIP results. "
            f"{', '.join(model_label(m) for m in random_clip)} ran with CLIP pretrained = \"none\" (random weights); "
            f"their numbers say nothing about CLIP features.", "warning"))
    for m, info in (run.get("model_info") or {}).items():
        rule = (info or {}).get("eval_click_rule")
        if rule:
            blocks.append(Callout(f"{model_label(m)} is a point-prompted model: its evaluation click is {rule}.", "note"))
    blocks.append(Callout(
        f"Numbers labelled \"{SEED_SOURCE}\" are copied from the seed study. This run used "
        f"{n} test images on {run.get('runtime') or run.get('hardware') or 'this machine'}; checkpoints, data and "
        f"hardware differ, so compare trends, not digits.", "note"))
    sections = [Section("what-was-run", "What was run", blocks)]

    sections.append(Section("clean", "Clean test metrics beside the seed's Table 1",
                            [clean_table(summary), per_class_table(summary)]))
    sections.append(Section("robustness", "Robustness: mean Dice per level",
                            [robustness_table(summary), Paragraph(f"For comparison, the {SEED_SOURCE}: {ROBUSTNESS_NOTE}")]))
    sections.append(Section("scores", "Summary scores", score_tables(summary)))
    figures = [Figure(_rel(path, run_dir), f"{p}: mean Dice ({SCORE_REDUCTION} reduction) against level")
               for p, path in curve_paths.items()]
    sections.append(Section("plots", "Dice against perturbation level", [Gallery(figures, "grid")]))
    strip_blocks: list[Any] = [Callout(note, "note") for note in strip_notes]
    if strip_paths:
        strip_blocks.append(Gallery([Figure(_rel(path, run_dir), p.replace("_", " ")) for p, path in strip_paths.items()],
                                    "strips"))
    sections.append(Section("examples", "Example image at every level", strip_blocks))
    sections.append(Section("provenance", "Provenance", provenance_tables(run)))
    return sections


def _rel(path: Path, run_dir: Path) -> str:
    return Path(path).relative_to(run_dir).as_posix()


def clean_table(summary: Mapping[str, Any]) -> Table:
    rows = []
    for m in summary["models"]:
        c = summary["clean"].get(m)
        d, s = (c["dataset"], c["seed"]) if c else ({}, {})
        paper = TABLE1.get(m)
        rows.append([model_label(m), _f(d.get("miou")), _f(s.get("miou")), _ci(d) if c else DASH, _ci(s) if c else DASH,
                     _f(d.get("pixel_accuracy")), _f(s.get("pixel_accuracy")),
                     *([format_figure(paper.miou), format_figure(paper.dice), format_figure(paper.pixel_accuracy)]
                       if paper else [DASH] * 3)])
    base = TABLE1_PROVIDED_BASELINE
    rows.append([f"{base.label} (paper only)", *[DASH] * 6, format_figure(base.miou), format_figure(base.dice),
                 format_figure(base.pixel_accuracy)])
    headers = ["model", "mIoU dataset", "mIoU seed", "mDice dataset (95%\u00a0CI)", "mDice seed (95%\u00a0CI)",
               "PixAcc dataset", "PixAcc seed", "mIoU", "Dice", "PixAcc"]
    md = headers[:7] + ["paper mIoU", "paper Dice", "paper PixAcc"]
    boot = summary.get("bootstrap", {})
    return Table(headers, rows,
                 caption=(f"Clean test split. mDice 95% CIs: percentile bootstrap over images, "
                          f"{boot.get('n_boot')} replicates, seed {boot.get('seed')}. "
                          f"Paper columns: {SEED_SOURCE}, Table 1."),
                 groups=[("", 1), (f"this run ({summary['n_images']} test images)", 6), (SEED_SOURCE, 3)],
                 md_headers=md)


def per_class_table(summary: Mapping[str, Any]) -> Table:
    classes = summary["classes"]
    rows = []
    for m in summary["models"]:
        c = summary["clean"].get(m)
        ours = [_f((c or {}).get(r, {}).get("iou", {}).get(k)) for r in ("dataset", "seed") for k in classes]
        paper = TABLE2.get(m)
        rows.append([model_label(m), *ours,
                     *([f"{getattr(paper, k):.2f}" for k in classes] if paper else [DASH] * len(classes))])
    headers = ["model", *classes, *classes, *classes]
    md = ["model", *[f"{k} ({r})" for r in ("dataset", "seed", "paper") for k in classes]]
    return Table(headers, rows, caption=f"Per-class IoU. Paper columns: {SEED_SOURCE}, Table 2.",
                 groups=[("", 1), ("this run, dataset reduction", 3), ("this run, seed reduction", 3),
                         (SEED_SOURCE, 3)], md_headers=md)


def robustness_table(summary: Mapping[str, Any]) -> Table:
    all_levels = sorted({lv for m in summary["models"] for c in summary["curves"].get(m, {}).values()
                         for lv in c["levels"]})
    rows = []
    for p in summary["perturbations"]:
        info = summary["perturbation_params"].get(p, {})
        values = info.get("values") or []
        shown = [values[lv] if lv < len(values) else None for lv in all_levels]
        name = f"{p} ({axis_label(info.get('param'), shown)})"
        for m in summary["models"]:
            curve = summary["curves"].get(m, {}).get(p)
            if not curve:
                continue
            by_level = dict(zip(curve["levels"], curve[SCORE_REDUCTION]))
            rows.append([name, model_label(m), *[_pct(by_level.get(lv)) for lv in all_levels]])
    headers = ["perturbation", "model", *[("0 (clean)" if lv == 0 else str(lv)) for lv in all_levels]]
    return Table(headers, rows, text_columns=2,
                 caption=(f"Mean Dice in percent ({SCORE_REDUCTION} reduction) per severity level; level 0 is the "
                          f"model's clean result, shared by every perturbation."),
                 md_headers=["perturbation", "model", *[f"L{lv}" for lv in all_levels]])


def score_tables(summary: Mapping[str, Any]) -> list[Any]:
    scores = summary["scores"]
    ref = model_label(scores["reference_model"])
    overview = []
    detail = []
    for m in summary["models"]:
        s = scores["models"].get(m)
        if not s:
            continue
        overview.append([model_label(m), _pct(s["clean_mdice"]), _pct(s["mean_dice"]), _f(s["relative_robustness"]),
                         _f(s["auc"]), _f(s["mce"]), _f(s["relative_mce"])])
    for p in summary["perturbations"]:
        for m in summary["models"]:
            r = (scores["models"].get(m) or {}).get("perturbations", {}).get(p)
            if r:
                detail.append([p, model_label(m), _pct(r["mean_dice"]), _f(r["relative_robustness"]), _f(r["auc"]),
                               _f(r["ce"]), _f(r["relative_ce"])])
    note = ("" if scores["reference_in_run"] else f" {ref} is not in this run, so CE and mCE are not defined.")
    defs = (f"All on mean Dice, {scores['reduction']} reduction, over the perturbed levels present in the run. "
            f"Mean Dice: mean over levels ≥ 1 (percent). Relative robustness: that mean / clean Dice. AUC: area "
            f"under the Dice-vs-level curve from level 0, trapezoids over the level index, divided by the highest "
            f"level (1.0 = Dice 1 everywhere). CE (ImageNet-C, normalised by ref = {ref}): Σ(1 − D) / Σ(1 − D_ref); "
            f"relative CE: Σ(D_clean − D) / Σ(D_ref,clean − D_ref); {ref} scores 1.000 by construction; mCE and relative mCE "
            f"average them over perturbations (undefined if any term is).{note}")
    return [
        Table(["model", "clean mDice %", "mean Dice % (perturbed)", "relative robustness", "AUC", "mCE", "relative mCE"],
              overview, caption=f"Per model, averaged over perturbations. {defs}"),
        Table(["perturbation", "model", "mean Dice % (L≥1)", "relative robustness", "AUC", "CE", "relative CE"], detail,
              caption="Per model and perturbation.", text_columns=2),
    ]


def provenance_tables(run: Mapping[str, Any]) -> list[Any]:
    wall = run.get("wall_seconds")
    rate = run.get("image_levels_per_s")
    facts = [
        ["code version", run.get("code_version", DASH)],
        ["started", run.get("started", DASH)],
        ["perturbation seed", run.get("seed", DASH)],
        ["test images", f"{len(run.get('image_ids') or [])}" + (f" (--limit {run['limit']})" if run.get("limit") else "")],
        ["data fingerprint", run.get("data_fingerprint") or DASH],
        ["void handling", run.get("void", DASH)],
        ["runtime", run.get("runtime", DASH)],
        ["hardware", run.get("hardware", DASH)],
        ["batch size", run.get("batch_size", DASH)],
        ["wall time", DASH if wall is None else f"{wall:.1f} s"],
        ["throughput", DASH if rate is None else f"{rate:g} image-levels/s"],
        ["cells computed in the last session", run.get("cells_computed", DASH)],
    ]
    facts = [[k, str(v)] for k, v in facts]
    ckpt_rows = []
    infos = run.get("model_info") or {}
    for m, sha in (run.get("checkpoints") or {}).items():
        info = infos.get(m) or {}
        clip = info.get("clip")
        clip_text = f"{clip.get('model')} / {clip.get('pretrained')}" if clip else DASH
        val = (info.get("val") or {}).get("val_miou")
        ckpt_rows.append([model_label(m), sha, str(info.get("checkpoint", DASH)), clip_text, str(info.get("in_size", DASH)),
                          str(info.get("base_channels", DASH)), str(info.get("epoch", DASH)), _f(val)])
    packages = [[k, str(v)] for k, v in (run.get("packages") or {}).items()]
    out: list[Any] = [Table(["item", "value"], facts, caption="Run", text_columns=2)]
    out.append(Table(["model", "sha256", "checkpoint", "CLIP (model / pretrained)", "input size", "base channels", "epoch",
                      "val mIoU"], ckpt_rows, caption="Checkpoints", text_columns=4))
    if packages:
        out.append(Table(["package", "version"], packages, caption="Packages", text_columns=2))
    return out


# --- rendering ------------------------------------------------------------------------------

def render_markdown(title: str, sections: Sequence[Section]) -> str:
    from tabulate import tabulate

    lines = [f"# {title}", ""]
    for sec in sections:
        lines += [f"## {sec.title}", ""]
        for block in sec.blocks:
            if block.kind == "paragraph":
                lines += [block.text, ""]
            elif block.kind == "callout":
                lines += [f"> **{'Warning' if block.level == 'warning' else 'Note'}:** {block.text}", ""]
            elif block.kind == "table":
                if block.caption:
                    lines += [f"*{block.caption}*", ""]
                align = ["left"] * block.text_columns + ["right"] * (len(block.headers) - block.text_columns)
                lines += [tabulate(block.rows, headers=block.md_headers or block.headers, tablefmt="github",
                                   colalign=align, disable_numparse=True), ""]
            elif block.kind == "gallery":
                for fig in block.figures:
                    lines += [f"![{fig.caption}]({fig.path})", ""]
    return "\n".join(lines).rstrip() + "\n"


def render_html(title: str, sections: Sequence[Section], run: Mapping[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("petseg_bench", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE).render(title=title, sections=sections, run=run)


def _one_line(exc: BaseException) -> str:
    message = one_line(exc, default="")
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
