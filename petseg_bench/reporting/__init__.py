"""The report of a sweep run: ``summary.json``, ``report.md``, ``index.html`` and PNGs.

``write_report(run_dir)`` reads the run folder (through :mod:`petseg_bench.results`),
builds the summary (:mod:`.summary`), draws one Dice-vs-level plot per perturbation
(:mod:`.plots`) and one example strip per perturbation with each model's masks
(:mod:`.strips`), assembles the sections (:mod:`.sections`) and renders them as
Markdown (:mod:`.markdown`) and HTML (:mod:`.html`). ``petseg-bench check`` lives in :mod:`.check`.

Nothing here knows a model: labels, backbones and the seed's published figures come from
the run record and each model's spec (:mod:`.model_views`).
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import write_json_atomic, write_text_atomic
from .document import Callout, Section, Table
from .html import render_html
from .markdown import render_markdown
from .model_views import describe_models
from .plots import plot_curves
from .sections import build_sections
from .strips import example_strips
from .summary import DEFAULT_REFERENCE, load_summary

PLOTS_DIR = "plots"
TITLE = "petseg-bench robustness report"

__all__ = ["write_report"]


def partial_section(missing: list[str], shards: list[str] | None) -> Section:
    """The first section of a partial run's report: which cells are absent."""
    n = len(missing)
    why = f" Shard{'s' if len(shards) > 1 else ''} {', '.join(shards)} of the sweep {'are' if len(shards) > 1 else 'is'} missing." if shards else ""
    text = (f"This run is partial: {n} of the cells its run.json asks for {'are' if n > 1 else 'is'} absent, so "
            f"every figure that needs them is missing or covers fewer perturbations or levels.{why}")
    return Section("partial", "Partial run: missing cells",
                   [Callout(text), Table(["missing cell"], [[path] for path in missing])])


def add_adversarial(sections: list[Section], summary: dict, models, labels: dict, run_dir: Path,
                    plots_dir: Path) -> list[Path]:
    """The "Adversarial robustness" section (before the examples) and its plots, when the
    run has attacks (:mod:`.adversarial_section`); the plots' paths."""
    block = summary.get("adversarial")
    if not block:
        return []
    from .adversarial_section import adversarial_section, plot_model, plot_name

    paths = {m: plot_model(block, m, labels.get(m, m), plots_dir / plot_name(m)) for m in block["models"]}
    at = next((i for i, s in enumerate(sections) if s.id == "examples"), len(sections))
    sections.insert(at, adversarial_section(block, summary, models, paths, run_dir))
    return list(paths.values())


def write_report(run_dir: Path, data_root: Path | None = None, cache_dir: Path | None = None,
                 n_boot: int = 500, examples: bool = True, reference_model: str = DEFAULT_REFERENCE,
                 allow_partial: bool = False) -> list[Path]:
    """Write ``summary.json``, ``report.md``, ``index.html`` and ``plots/*.png`` into
    ``run_dir``; returns every written path (the three documents first).

    ``reference_model`` normalises the corruption errors (CE, mCE); summary.json records it.
    A run that lacks cells is an error unless ``allow_partial``; its report then names
    them in its first section.
    """
    run_dir = Path(run_dir)
    run, summary = load_summary(run_dir, n_boot=n_boot, reference_model=reference_model, allow_partial=allow_partial)
    reference = summary["scores"]["reference_model"]  # the default resolved
    models = describe_models(run, [*summary["models"], *([reference] if reference else [])])
    labels = {m: view.label for m, view in models.items()}
    plots_dir = run_dir / PLOTS_DIR
    curve_paths = {p: plot_curves(summary, p, labels, plots_dir / f"dice-{p}.png") for p in summary["perturbations"]}
    if examples:
        strip_paths, strip_notes = example_strips(run, summary, plots_dir, data_root, cache_dir, models)
    else:  # e.g. a report committed to a repository, which must hold no dataset pixels
        strip_paths, strip_notes = {}, ["Example images left out (--no-examples): they show dataset images."]
    pixel = {m: (summary["scores"]["models"].get(m) or {}).get("mean_dice") for m in summary["models"]}
    click_paths = {p: plot_curves(summary, p, labels, plots_dir / f"dice-{p}.png", beside=pixel)
                   for p in summary.get("click_perturbations") or []
                   if any(summary["curves"].get(m, {}).get(p) for m in summary["models"])}
    sections = build_sections(run, summary, models, run_dir, curve_paths, strip_paths, strip_notes, click_paths)
    adversarial_paths = add_adversarial(sections, summary, models, labels, run_dir, plots_dir)
    if summary.get("missing_cells"):
        sections.insert(0, partial_section(summary["missing_cells"], run.missing_shards))
    paths = [run_dir / "summary.json", run_dir / "report.md", run_dir / "index.html"]
    write_json_atomic(paths[0], summary)
    write_text_atomic(paths[1], render_markdown(TITLE, sections))
    write_text_atomic(paths[2], render_html(TITLE, sections, run))
    return (paths + list(curve_paths.values()) + list(click_paths.values()) + adversarial_paths
            + list(strip_paths.values()))
