"""Breeds: per-breed and per-group scores from per-image confusion matrices.

Oxford-IIIT Pet names every image ``<breed>_<number>`` (``Abyssinian_12``,
``american_bulldog_3``; cats capitalised), so an image id is enough to know its breed,
in both layouts, without the data. A split can be very uneven (the shared partial copy
has about 100 labelled training images of each of six breeds and a handful of the other
31), so results are also given for two groups: the breeds with at least
:data:`WELL_REPRESENTED` labelled training images, and the rest. The groups come from
the training split's counts, recorded beside the results; on the full release every
breed is well represented and the second group is empty.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..metrics import dice, iou, mean_over_classes, reduce
from ..specs import MetricSpec

#: Labelled training images a breed needs to count as well represented.
WELL_REPRESENTED = 20
UNKNOWN = "(unknown breed)"
WELL, THIN = "well represented", "under-represented"

_NAME = re.compile(r"^(?P<breed>.+?)_\d+$")
_IOU = MetricSpec("iou", iou, per_class=True)
_DICE = MetricSpec("dice", dice, per_class=True)


def breed_of(image_id: str) -> str:
    """The breed in an official image name (``Bengal_7`` -> ``Bengal``)."""
    found = _NAME.match(str(image_id))
    return found.group("breed") if found else UNKNOWN


def breed_counts(ids: Iterable[str]) -> dict[str, int]:
    """Images per breed, most first (ties by name)."""
    counts = Counter(breed_of(i) for i in ids)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


@dataclass(frozen=True)
class BreedGroups:
    """Which breeds the training split represents well (``train_counts[b] >= min_count``)."""

    train_counts: Mapping[str, int]
    min_count: int = WELL_REPRESENTED

    def group_of(self, breed: str) -> str:
        return WELL if self.train_counts.get(breed, 0) >= self.min_count else THIN

    def to_dict(self) -> dict:
        return {"min_count": int(self.min_count), "train_counts": dict(self.train_counts)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "BreedGroups":
        return cls({str(k): int(v) for k, v in data["train_counts"].items()}, int(data["min_count"]))


def _scores(cms: np.ndarray) -> dict:
    """Dataset-reduction mIoU, mDice and per-class IoU of a stack of matrices."""
    if len(cms) == 0:
        return {"n_images": 0, "miou": None, "mdice": None, "iou": None}
    per_class = reduce(_IOU, cms, "dataset")
    return {"n_images": int(len(cms)), "miou": _num(mean_over_classes(per_class)),
            "mdice": _num(mean_over_classes(reduce(_DICE, cms, "dataset"))),
            "iou": [_num(v) for v in per_class]}


def _num(value) -> float | None:
    value = float(value)
    return None if not np.isfinite(value) else round(value, 6)


def breed_scores(ids: Sequence[str], cms: np.ndarray, groups: BreedGroups) -> dict:
    """``{"groups": {group: scores}, "breeds": {breed: scores + group}}``, dataset reduction."""
    cms = np.asarray(cms)
    breeds = np.array([breed_of(i) for i in ids])
    names = list(breed_counts(ids))
    group = np.array([groups.group_of(b) for b in breeds])
    out_groups = {g: _scores(cms[group == g]) for g in (WELL, THIN)}
    out_breeds = {b: {**_scores(cms[breeds == b]), "group": groups.group_of(b),
                      "train_images": int(groups.train_counts.get(b, 0))} for b in names}
    return {"reduction": "dataset", "min_count": groups.min_count, "groups": out_groups, "breeds": out_breeds}


def training_breeds(data_root: Path) -> BreedGroups:
    """The breed groups of the labelled training split (trainval's usable images)."""
    from .layout import list_split

    return BreedGroups(breed_counts(s.name for s in list_split(data_root, "trainval").samples))
