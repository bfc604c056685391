"""The report's sections, in reading order, as :mod:`.document` blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..run_record import RunRecord
from .document import Callout, Figure, Gallery, Paragraph, Section
from .fmt import DASH, level_ranges
from .model_views import SEED_SOURCE, ModelView, label, robustness_notes
from .summary import REDUCTION_DESCRIPTIONS
from .tables import (click_table, clean_table, family_table, per_class_table, provenance_tables, robustness_table,
                     score_tables)

VOID_TEXT = {"nearest": "filled from the nearest valid pixel (the seed's choice)",
             "ignore": "ignored (left out of every confusion matrix)"}


def build_sections(run: RunRecord, summary: Mapping[str, Any], models: Mapping[str, ModelView],
                   run_dir: Path, curve_paths: Mapping[str, Path], strip_paths: Mapping[str, Path],
                   strip_notes: Sequence[str], click_paths: Mapping[str, Path] | None = None) -> list[Section]:
    reduction = summary["scores"]["reduction"]
    figures = [Figure(_rel(path, run_dir), f"{p}: mean Dice ({reduction} reduction) against level")
               for p, path in curve_paths.items()]
    strips: list[Any] = [Callout(note, "note") for note in strip_notes]
    if strip_paths:
        strips.append(Gallery([Figure(_rel(path, run_dir), p.replace("_", " ")) for p, path in strip_paths.items()],
                              "strips"))
    sections = [
        Section("what-was-run", "What was run", [Paragraph(intro(run, summary, models)),
                                                 *callouts(run, summary, models)]),
        Section("clean", "Clean test metrics beside the seed's Table 1",
                [clean_table(summary, models), per_class_table(summary, models)]),
        Section("robustness", "Robustness: mean Dice per level",
                [robustness_table(summary, models), Paragraph(seed_robustness(models, summary["models"]))]),
        Section("scores", "Summary scores", score_tables(summary, models)),
        Section("plots", "Dice against perturbation level", [Gallery(figures, "grid")]),
        Section("examples", "Example image at every level", strips),
        Section("provenance", "Provenance", provenance_tables(run, models)),
    ]
    if summary.get("click_perturbations"):
        sections.insert(5, click_section(summary, models, run_dir, click_paths or {}))
    if summary.get("breeds"):
        sections.insert(3, breed_section(summary["breeds"], models))
    families = summary["scores"].get("families") or {}
    sections[4:4] = [family_section(fid, family, summary, models) for fid, family in families.items()]
    return sections


def breed_section(breeds: Mapping[str, Any], models: Mapping[str, ModelView]) -> Section:
    """How the breeds the training split represents well flatter each model."""
    from .breed_tables import breed_table, per_breed_table

    return Section("breeds", "Breeds: the well-represented ones against the rest",
                   [breed_table(breeds, models), per_breed_table(breeds, models)])


def family_section(family_id: str, family: Mapping[str, Any], summary: Mapping[str, Any],
                   models: Mapping[str, ModelView]) -> Section:
    """One corruption family's mCE, relative mCE and per-corruption CE (the run's
    perturbations span several families, so the overview gives no run-wide mCE)."""
    n = len(family["perturbations"])
    text = (f"Corruption errors over the {n} perturbation{'s' if n != 1 else ''} of the {family['label']} family "
            f"(id {family_id}) alone, normalised by "
            f"{label(models, summary['scores']['reference_model'])}; the formula is under the table.")
    members = family.get("members") or []
    if family.get("complete") is False:
        missing = [p for p in members if p not in family["perturbations"]]
        text += (f" This run has {n} of the family's {len(members)} perturbations (not {', '.join(missing)}): its "
                 f"mCE is the mean over those {n}, not the family's full mCE, and compares only with runs of the same "
                 f"{n}.")
    return Section(f"family-{family_id}", f"{family['label']}: mCE and corruption errors",
                   [Paragraph(text), family_table(family, summary, models)])


def click_section(summary: Mapping[str, Any], models: Mapping[str, ModelView], run_dir: Path,
                  click_paths: Mapping[str, Path]) -> Section:
    """Dice against level of each click perturbation for the models that take a click, beside
    their pixel robustness; models without a click input show n/a."""
    figures = [Figure(_rel(path, run_dir), f"{p}: mean Dice ({summary['scores']['reduction']} reduction) against "
                      f"level; dashed: the model's mean Dice over the pixel perturbations")
               for p, path in click_paths.items()]
    text = ("The images stay clean; only the click given to models with a click input moves (see each "
            "perturbation's description in `petseg-bench list`). Each move is computed at the original "
            "resolution and applied, scaled, to the click the model always gets, so level 0 is exactly the "
            "clean result.")
    return Section("clicks", "Click robustness", [Paragraph(text), click_table(summary, models),
                                                  *([Gallery(figures, "grid")] if figures else [])])


def intro(run: RunRecord, summary: Mapping[str, Any], models: Mapping[str, ModelView]) -> str:
    names = summary["models"]
    shown = ", ".join(m if label(models, m) == m else f"{label(models, m)} ({m})" for m in names)
    perts, limit = summary["perturbations"], run.limit
    levels = run.levels or sorted({lv for m in names for c in summary["curves"].get(m, {}).values()
                                          for lv in c["levels"] if lv > 0})
    return (
        f"Models: {shown}. Test images: {summary['n_images']}"
        + (f" (a seeded subset, --limit {limit})" if limit else "")
        + f"; data fingerprint {run.data_fingerprint or DASH}. "
        f"Perturbations ({len(perts)}): {', '.join(perts) or 'none'}; levels 0 (clean, computed once per model) "
        f"and {level_ranges(levels)}; perturbation seed {run.seed if run.has('seed') else DASH}. "
        f"Void (border) pixels were {VOID_TEXT.get(run.void, str(run.void))}. "
        f"Two reductions are reported: dataset ({REDUCTION_DESCRIPTIONS['dataset']}) and seed "
        f"({REDUCTION_DESCRIPTIONS['seed']}). Robustness figures use the {summary['scores']['reduction']} "
        f"reduction, as the seed study's robustness plots did. Metrics are computed at the original mask resolution."
    )


def callouts(run: RunRecord, summary: Mapping[str, Any], models: Mapping[str, ModelView]) -> list[Callout]:
    """What a reader must know before comparing any number with the seed's."""
    out = []
    random = [v.label for v in models.values() if v.random_init]
    if random:
        # The model label names the backbone, so the warning need not repeat it.
        out.append(Callout(
            f"Random-init backbone: not comparable with the seed's pretrained-backbone results. "
            f"{', '.join(random)} ran with randomly initialised backbone weights; their numbers say nothing "
            f"about what pretrained features would give.", "warning"))
    for m, info in run.model_info.items():
        rule = info.eval_click_rule if info is not None else None
        if rule:
            out.append(Callout(f"{label(models, m)} takes a click as a prompt: its evaluation click is {rule}.",
                               "note"))
    where = run.runtime or run.hardware or "this machine"
    out.append(Callout(
        f"Numbers labelled \"{SEED_SOURCE}\" are copied from the seed study. This run used "
        f"{summary['n_images']} test images on {where}; trained weights, data and hardware differ, so compare "
        f"trends, not digits.", "note"))
    return out


def seed_robustness(models: Mapping[str, ModelView], names: Sequence[str]) -> str:
    notes = robustness_notes(models[m] for m in names if m in models)
    if not notes:
        return f"The {SEED_SOURCE} published no robustness figures for the models of this run."
    return f"For comparison, the {SEED_SOURCE}: {' '.join(notes)}"


def _rel(path: Path, run_dir: Path) -> str:
    return Path(path).relative_to(run_dir).as_posix()
