"""``petseg-bench data check``: what is in a data folder and what was dropped, and why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tabulate import tabulate

from ..errors import DataError, one_line
from ..labels import CLASS_NAMES, IGNORE
from .cache import PreparedSplit, prepare
from .layout import SPLITS, detect_layout, split_overlap

SPECIES = {1: "cat", 2: "dog"}


def split_stats(sp: PreparedSplit) -> dict:
    counts = np.bincount(sp.labels_flat, minlength=256) if len(sp) else np.zeros(256, np.int64)
    total = max(int(counts.sum()), 1)
    h, w = (sp.shapes[:, 0], sp.shapes[:, 1]) if len(sp) else (np.zeros(1), np.zeros(1))
    return {
        "usable": len(sp),
        "cats": int((sp.species == 1).sum()),
        "dogs": int((sp.species == 2).sum()),
        "dropped": len(sp.dropped),
        "absent": len(sp.absent),
        "pixels": {**{c: int(counts[i]) for i, c in enumerate(CLASS_NAMES)}, "void": int(counts[IGNORE])},
        "fractions": {**{c: counts[i] / total for i, c in enumerate(CLASS_NAMES)}, "void": counts[IGNORE] / total},
        "height": (int(h.min()), int(np.median(h)), int(h.max())),
        "width": (int(w.min()), int(np.median(w)), int(w.max())),
    }


def check_report(root: Path, void: str = "nearest", cache_dir: Path | None = None) -> tuple[str, bool]:
    """The report text and whether the data is usable: the test split has usable images
    and no name is in both splits.

    A folder with test images but no usable trainval image (or no trainval split at
    all) is usable for evaluation: the report says training is not possible. A split
    that cannot be listed (its split file or folder missing) is reported in one line
    with the reason, and the other split is still checked."""
    layout = detect_layout(root)
    splits: dict[str, PreparedSplit] = {}
    unlisted: dict[str, str] = {}
    for name in SPLITS:
        try:
            splits[name] = prepare(root, name, void=void, cache_dir=cache_dir)
        except DataError as exc:
            unlisted[name] = one_line(exc)
    stats = {name: split_stats(sp) for name, sp in splits.items()}
    lines = [f"data root: {root} ({layout} layout), void pixels: {void}", ""]
    lines.append(tabulate(
        [[n, s["cats"], s["dogs"], s["usable"], s["dropped"], s["absent"]] for n, s in stats.items()]
        + [[n, "-", "-", 0, "-", "-"] for n in unlisted],
        headers=["split", "cats", "dogs", "usable", "dropped", "listed, not on disk"]))
    for name, reason in unlisted.items():
        lines.append(f"{name}: not listed: {reason}")
    for name, sp in splits.items():
        lines += [f"warning: {d}" for d in sp.duplicates]
    both = split_overlap(root)
    if both:
        lines.append(f"leak: {len(both)} name(s) are listed in both trainval and test "
                     f"({', '.join(both[:5])}{' ...' if len(both) > 5 else ''}): test images must not be trained on")
    for name, sp in splits.items():
        if sp.absent:
            lines.append(f"{name}: {len(sp.absent)} names in the split file have neither image nor mask on disk "
                         f"(a partial copy?), e.g. {', '.join(sp.absent[:3])}")
    dropped = [(name, d) for name, sp in splits.items() for d in sp.dropped]
    lines += ["", f"dropped ({len(dropped)}):" if dropped else "dropped: none"]
    lines += [f"  [{name}] {d.line()}" for name, d in dropped]
    for name, sp in splits.items():
        if sp.dropped:
            lines.append(f"  ({name} list: {sp.dropped_list})")
    if stats:
        lines += ["", "label histogram (share of pixels):"]
        keys = list(CLASS_NAMES) + (["void"] if void == "ignore" else [])
        lines.append(tabulate([[n] + [f"{s['fractions'][k]:.1%}" for k in keys] for n, s in stats.items()],
                              headers=["split"] + keys))
        lines += ["", "image size (min / median / max):"]
        lines.append(tabulate([[n, "/".join(map(str, s["height"])), "/".join(map(str, s["width"]))]
                               for n, s in stats.items()], headers=["split", "height", "width"]))
    n_usable = {name: stats[name]["usable"] if name in stats else 0 for name in SPLITS}
    usable = n_usable["test"] > 0 and not both
    if n_usable["trainval"] == 0 and usable:
        lines += ["", "no trainval images: training is not possible; evaluation is"]
    if both:
        lines += ["", "unusable: trainval and test overlap (see 'leak' above); remove those names from one split list"]
    elif not usable:
        also = "; training is" if n_usable["trainval"] > 0 else ""
        lines += ["", f"unusable: no usable image in test: evaluation is not possible{also}"]
        if n_usable["trainval"] == 0:
            lines.append("no usable image in trainval either")
    return "\n".join(lines), usable
