"""The report's tables, from the summary (numbers) and the model views (names, paper rows)."""

from __future__ import annotations

from typing import Any, Mapping

from ..run_record import RunRecord
from .document import Table
from .fmt import DASH, axis_label, fixed, paper_figure, pct, with_ci
from .model_views import PROVIDED_BASELINE, SEED_SOURCE, ModelView, label


def _paper_conditions(models: Mapping[str, ModelView], names: list[str]) -> str:
    """Where a paper row was obtained differently (another name, a pretrained part), say so."""
    notes = []
    for m in names:
        view = models.get(m)
        if not view or not view.paper:
            continue
        parts = [f"the seed's “{view.paper.label}”"] if view.paper.label != view.display else []
        parts += [view.paper.conditions] if view.paper.conditions else []
        if parts:
            notes.append(f"{view.display} ({'; '.join(parts)})")
    return f" Paper conditions: {', '.join(notes)}." if notes else ""


def clean_table(summary: Mapping[str, Any], models: Mapping[str, ModelView]) -> Table:
    rows = []
    for m in summary["models"]:
        c = summary["clean"].get(m)
        d, s = (c["dataset"], c["seed"]) if c else ({}, {})
        paper = models[m].paper if m in models else None
        rows.append([label(models, m), fixed(d.get("miou")), fixed(s.get("miou")), with_ci(d) if c else DASH,
                     with_ci(s) if c else DASH, fixed(d.get("pixel_accuracy")), fixed(s.get("pixel_accuracy")),
                     *([paper_figure(v) for v in paper.table1] if paper else [DASH] * 3)])
    base = PROVIDED_BASELINE
    rows.append([f"{base.label} (paper only)", *[DASH] * 6, *[paper_figure(v) for v in base.table1]])
    headers = ["model", "mIoU dataset", "mIoU seed", "mDice dataset (95%\u00a0CI)", "mDice seed (95%\u00a0CI)",
               "PixAcc dataset", "PixAcc seed", "mIoU", "Dice", "PixAcc"]
    boot = summary.get("bootstrap", {})
    return Table(headers, rows,
                 caption=(f"Clean test split. mDice 95% CIs: percentile bootstrap over images, "
                          f"{boot.get('n_boot')} replicates, seed {boot.get('seed')}. "
                          f"Paper columns: {SEED_SOURCE}, Table 1."
                          + _paper_conditions(models, summary["models"])),
                 groups=[("", 1), (f"this run ({summary['n_images']} test images)", 6), (SEED_SOURCE, 3)],
                 md_headers=headers[:7] + ["paper mIoU", "paper Dice", "paper PixAcc"])


def per_class_table(summary: Mapping[str, Any], models: Mapping[str, ModelView]) -> Table:
    classes = summary["classes"]
    rows = []
    for m in summary["models"]:
        c = summary["clean"].get(m) or {}
        ours = [fixed(c.get(r, {}).get("iou", {}).get(k)) for r in ("dataset", "seed") for k in classes]
        paper = models[m].paper if m in models else None
        theirs = [f"{v:.2f}" for v in paper.table2] if paper and paper.table2 else [DASH] * len(classes)
        rows.append([label(models, m), *ours, *theirs])
    md = ["model", *[f"{k} ({r})" for r in ("dataset", "seed", "paper") for k in classes]]
    return Table(["model", *classes, *classes, *classes], rows,
                 caption=f"Per-class IoU. Paper columns: {SEED_SOURCE}, Table 2.",
                 groups=[("", 1), ("this run, dataset reduction", 3), ("this run, seed reduction", 3),
                         (SEED_SOURCE, 3)], md_headers=md)


def robustness_table(summary: Mapping[str, Any], models: Mapping[str, ModelView]) -> Table:
    reduction = summary["scores"]["reduction"]
    all_levels = sorted({lv for m in summary["models"] for c in summary["curves"].get(m, {}).values()
                         for lv in c["levels"]})
    rows = []
    for p in summary["perturbations"]:
        info = summary["perturbation_params"].get(p, {})
        values = info.get("values") or []
        name = f"{p} ({axis_label(info.get('param'), [values[lv] if lv < len(values) else None for lv in all_levels])})"
        for m in summary["models"]:
            curve = summary["curves"].get(m, {}).get(p)
            if curve:
                by_level = dict(zip(curve["levels"], curve[reduction]))
                rows.append([name, label(models, m), *[pct(by_level.get(lv)) for lv in all_levels]])
    headers = ["perturbation", "model", *[("0 (clean)" if lv == 0 else str(lv)) for lv in all_levels]]
    return Table(headers, rows, text_columns=2,
                 caption=(f"Mean Dice in percent ({reduction} reduction) per severity level; level 0 is the "
                          f"model's clean result, shared by every perturbation."),
                 md_headers=["perturbation", "model", *[f"L{lv}" for lv in all_levels]])


NA = "n/a"


def click_table(summary: Mapping[str, Any], models: Mapping[str, ModelView]) -> Table:
    """Mean Dice per level of each click perturbation, beside the model's pixel robustness
    (mean Dice over the pixel perturbations' levels >= 1). A model without a click input
    has no such cells: n/a, never its clean score."""
    reduction = summary["scores"]["reduction"]
    perts = summary.get("click_perturbations") or []
    all_levels = sorted({lv for m in summary["models"] for p in perts
                         for lv in (summary["curves"].get(m, {}).get(p) or {}).get("levels", [])} | {0})
    off = summary.get("click_off_foreground") or {}
    rows = []
    for p in perts:
        info = summary["perturbation_params"].get(p, {})
        values = info.get("values") or []
        name = f"{p} ({axis_label(info.get('param'), [values[lv] if lv < len(values) else None for lv in all_levels])})"
        for m in summary["models"]:
            curve = summary["curves"].get(m, {}).get(p)
            pixel = (summary["scores"]["models"].get(m) or {}).get("mean_dice")
            if curve:
                by_level = dict(zip(curve["levels"], curve[reduction]))
                cells = [pct(by_level.get(lv)) if lv in by_level else DASH for lv in all_levels]
            else:
                cells = [NA] * len(all_levels)
            rows.append([name, label(models, m), *cells, pct(pixel) if summary["perturbations"] else DASH])
        shares = off.get(p) or {}
        if shares:
            rows.append([name, "clicks off the pet, %",
                         *[pct(shares.get(str(lv))) if str(lv) in shares else (pct(0.0) if lv == 0 else DASH)
                           for lv in all_levels], DASH])
    headers = ["click perturbation", "model", *[("0 (clean)" if lv == 0 else str(lv)) for lv in all_levels],
               "pixel robustness: mean Dice %"]
    return Table(headers, rows, text_columns=2,
                 caption=(f"Mean Dice in percent ({reduction} reduction) when the evaluation click is moved; level 0 "
                          f"is the model's clean result (the evaluation rule's click). The last column is the same "
                          f"model's mean Dice over the pixel perturbations (levels ≥ 1). n/a: the model takes no "
                          f"click, so the cell is not computed. 'Clicks off the pet': share of test images whose "
                          f"moved click (original resolution) misses the pet."),
                 md_headers=["click perturbation", "model", *[f"L{lv}" for lv in all_levels], "pixel mean Dice %"])


def _score_definitions(scores: Mapping[str, Any], ref: str) -> str:
    note = "" if scores["reference_in_run"] else f" {ref} is not in this run, so CE and mCE are not defined."
    return (f"All on mean Dice, {scores['reduction']} reduction, over the perturbed levels present in the run. "
            f"Mean Dice: mean over levels ≥ 1 (percent). Relative robustness: that mean / clean Dice. AUC: area "
            f"under the Dice-vs-level curve from level 0, trapezoids over the level index, divided by the highest "
            f"level (1.0 = Dice 1 everywhere). CE (ImageNet-C, normalised by ref = {ref}): Σ(1 − D) / Σ(1 − D_ref); "
            f"relative CE: Σ(D_clean − D) / Σ(D_ref,clean − D_ref); {ref} scores 1.000 by construction; mCE and "
            f"relative mCE average them over perturbations (undefined if any term is).{note}")


def score_tables(summary: Mapping[str, Any], models: Mapping[str, ModelView]) -> list[Table]:
    scores = summary["scores"]
    families = scores.get("families") or {}
    overview, detail = [], []
    for m in summary["models"]:
        s = scores["models"].get(m)
        if s:
            overview.append([label(models, m), pct(s["clean_mdice"]), pct(s["mean_dice"]),
                             fixed(s["relative_robustness"]), fixed(s["auc"]), fixed(s["mce"]),
                             fixed(s["relative_mce"])])
    for p in summary["perturbations"]:
        for m in summary["models"]:
            r = (scores["models"].get(m) or {}).get("perturbations", {}).get(p)
            if r:
                detail.append([p, label(models, m), pct(r["mean_dice"]), fixed(r["relative_robustness"]),
                               fixed(r["auc"]), fixed(r["ce"]), fixed(r["relative_ce"])])
    defs = _score_definitions(scores, label(models, scores["reference_model"]))
    if families:
        names = ", ".join(f["label"] for f in families.values()) + (", and none" if _unassigned(summary) else "")
        defs += (f" This run's perturbations belong to several corruption families ({names}): mCE and relative mCE "
                 f"are given per family, in the family sections, never over all of them.")
    return [
        Table(["model", "clean mDice %", "mean Dice % (perturbed)", "relative robustness", "AUC", "mCE", "relative mCE"],
              overview, caption=f"Per model, averaged over perturbations. {defs}"),
        Table(["perturbation", "model", "mean Dice % (L≥1)", "relative robustness", "AUC", "CE", "relative CE"], detail,
              caption="Per model and perturbation.", text_columns=2),
    ]


def _unassigned(summary: Mapping[str, Any]) -> list[str]:
    """The pixel perturbations of the run that belong to no family."""
    members = {p for f in (summary["scores"].get("families") or {}).values() for p in f["perturbations"]}
    return [p for p in summary["perturbations"] if p not in members]


def short_names(names: list[str]) -> list[str]:
    """Column headers: the names without the prefix they all share (up to its last ``_``)."""
    if len(names) < 2:
        return list(names)
    common = names[0]
    for n in names[1:]:
        while not n.startswith(common):
            common = common[:-1]
    cut = common.rfind("_") + 1
    return [n[cut:].replace("_", " ") for n in names]


def family_definitions(family: Mapping[str, Any], ref: str, reduction: str) -> str:
    n = len(family["perturbations"])
    levels = ", ".join(str(lv) for lv in family["levels"]) or "none"
    return (f"Corruption errors as in Hendrycks & Dietterich (ICLR 2019), with mean Dice D ({reduction} reduction) in "
            f"place of top-1 accuracy and the reference model ref = {ref} in place of AlexNet. Per corruption c, over "
            f"its severities s present in the run ({levels}): CE_c = Σ_s (1 − D_s,c) / Σ_s (1 − D^ref_s,c); relative "
            f"CE_c = Σ_s (D_clean − D_s,c) / Σ_s (D^ref_clean − D^ref_s,c). mCE and relative mCE: the mean of CE_c "
            f"and of relative CE_c over this family's {n} corruption{'s' if n != 1 else ''} (undefined when any term "
            f"is, e.g. a corruption missing for a model). Below 1: more robust than {ref}; {ref} scores 1.000.")


def family_table(family: Mapping[str, Any], summary: Mapping[str, Any], models: Mapping[str, ModelView]) -> Table:
    """One corruption family: per model clean mDice, mean Dice over the family, mCE,
    relative mCE, then the CE of each corruption."""
    scores, perts = summary["scores"], list(family["perturbations"])
    rows = []
    for m in summary["models"]:
        f = family["models"].get(m)
        if not f:
            continue
        per = (scores["models"].get(m) or {}).get("perturbations", {})
        rows.append([label(models, m), pct(f["clean_mdice"]), pct(f["mean_dice"]), fixed(f["mce"]),
                     fixed(f["relative_mce"]), *[fixed((per.get(p) or {}).get("ce")) for p in perts]])
    heads = short_names(perts)
    ref = label(models, scores["reference_model"])
    missing = "" if scores["reference_in_run"] else f" {ref} is not in this run, so no CE is defined."
    return Table(["model", "clean mDice %", "mean Dice % (perturbed)", "mCE", "relative mCE", *heads], rows,
                 caption=(f"{family['label']}: {family_definitions(family, ref, scores['reduction'])} The last "
                          f"{len(perts)} columns are CE_c per corruption ({', '.join(perts)}).{missing}"),
                 groups=[("", 1), ("", 4), ("CE per corruption", len(perts))],
                 md_headers=["model", "clean mDice %", "mean Dice % (perturbed)", "mCE", "relative mCE",
                             *[f"CE {h}" for h in heads]])


# --- provenance ---------------------------------------------------------------------------------

#: Per-model record entries that are no table column: shown elsewhere (sha256 leads the
#: row, the click rule has its own note) or nested (shown through a summary column).
_NOT_COLUMNS = ("sha256", "eval_click_rule", "train_config", "val")
_HEADERS = {"in_size": "input size"}


def run_facts_table(run: RunRecord) -> Table:
    wall, rate = run.wall_seconds, run.image_levels_per_s
    facts = [
        ["code version", _shown(run.code_version)],
        ["started", _shown(run.started)],
        ["perturbation seed", run.seed if run.has("seed") else DASH],
        ["test images", f"{len(run.image_ids)}" + (f" (--limit {run.limit})" if run.limit else "")],
        ["data fingerprint", run.data_fingerprint or DASH],
        ["void handling", _shown(run.void)],
        ["runtime", _shown(run.runtime)],
        ["hardware", _shown(run.hardware)],
        ["batch size", _shown(run.batch_size)],
        ["wall time", DASH if wall is None else f"{wall:.1f} s"],
        ["throughput", DASH if rate is None else f"{rate:g} image-levels/s"],
        ["cells computed in the last session", _shown(run.cells_computed)],
    ]
    return Table(["item", "value"], [[k, str(v)] for k, v in facts], caption="Run", text_columns=2)


def _record_columns(infos: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(text keys, number keys) of what the sweep recorded per model, each in record order.

    Columns come from the record rather than a fixed list, so a fact the sweep starts
    recording shows up without a change here; text first, numbers after, for alignment.
    """
    keys: list[str] = []
    for info in infos.values():
        keys += [k for k, v in info.items() if k not in keys and k not in _NOT_COLUMNS
                 and (k == "backbone" or not isinstance(v, (dict, list)))]
    values = {k: [info.get(k) for info in infos.values() if info.get(k) is not None] for k in keys}
    numbers = [k for k in keys if values[k] and k != "backbone"
               and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values[k])]
    text = [k for k in keys if k not in numbers and (values[k] or k == "backbone")]
    return text, numbers


def _shown(value: Any) -> Any:
    return DASH if value is None else value


def models_table(run: RunRecord, models: Mapping[str, ModelView]) -> Table:
    # Every recorded key is a candidate column (its JSON form: a plugin's keys too).
    infos = {m: info.to_json() if info is not None else {} for m, info in run.model_info.items()}
    text, numbers = _record_columns(infos)
    rows = []
    for m, info in infos.items():
        cells = [(models[m].backbone_label if m in models else None) if k == "backbone" else info.get(k)
                 for k in [*text, *numbers]]
        rows.append([label(models, m), str(info.get("sha256") or DASH),
                     *[DASH if v is None else str(v) for v in cells],
                     fixed((info.get("val") or {}).get("val_miou"))])
    headers = ["model", "sha256", *[_HEADERS.get(k, k.replace("_", " ")) for k in [*text, *numbers]], "val mIoU"]
    return Table(headers, rows, caption="Models", text_columns=2 + len(text))


def provenance_tables(run: RunRecord, models: Mapping[str, ModelView]) -> list[Table]:
    out = [run_facts_table(run), models_table(run, models)]
    packages = [[k, str(v)] for k, v in (run.packages or {}).items()]
    if packages:
        out.append(Table(["package", "version"], packages, caption="Packages", text_columns=2))
    return out
