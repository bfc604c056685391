"""Torch datasets over the prepared cache: letterboxed, optionally augmented, with clicks.

Randomness (augmentation, training clicks) is seeded per (seed, epoch, image), so a
batch is the same whatever the number of workers and after a resume.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from .points import eval_click, train_click
from .cache import PreparedSplit
from .letterbox import Letterbox


def sample_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0])


class LetterboxedSet(Dataset):
    """Items: ``image`` uint8 [3, S, S], ``label`` int64 [S, S], ``point`` int64 [2] (y, x),
    ``index`` (position in the prepared split), ``species`` (1 cat, 2 dog, 0 unknown)."""

    def __init__(self, prepared: PreparedSplit, positions: np.ndarray, size: int,
                 augment: str | None = None, clicks: str = "eval", seed: int = 0, salt_pepper: float = 0.0,
                 stream: int = 0):
        self.prepared = prepared
        #: Seeds another split's images apart from the labelled ones of the same positions
        #: (0, the labelled split: the seeds as ever).
        self.stream = stream
        self.positions = np.asarray(positions, dtype=np.int64)
        self.size = size
        self.clicks = clicks  # "train": random on the foreground; "eval": the fixed rule
        self.seed = seed
        self.epoch = 0
        self.augment = None
        self.salt_pepper = salt_pepper
        if augment:
            from .augment import training_augmentation

            self.augment = training_augmentation(seed, augment)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int) -> dict:
        pos = int(self.positions[k])
        image, label = self.prepared.image(pos), self.prepared.label(pos)
        lb = Letterbox.fit(image.shape[0], image.shape[1], self.size)
        image, label = lb.apply(image), lb.apply(label, label=True)
        s = sample_seed(self.seed, self.epoch, pos, *((self.stream,) if self.stream else ()))
        if self.augment is not None:
            self.augment.set_random_seed(s)
            out = self.augment(image=image, mask=label)
            image, label = out["image"], out["mask"]
        if self.salt_pepper > 0:
            from .augment import salt_and_pepper

            # Its own stream, so the clicks below draw the same with or without it.
            image = salt_and_pepper(image, np.random.default_rng([s, 1]), self.salt_pepper)
        if self.clicks == "train":
            point = train_click(label, np.random.default_rng(s))
        else:
            point = eval_click(label)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "label": torch.from_numpy(label.astype(np.int64)),
            "point": torch.tensor(point, dtype=torch.int64),
            "index": pos,
            "species": int(self.prepared.species[pos]),  # 1 cat, 2 dog, 0 unknown
        }


class JoinedSet(ConcatDataset):
    """Training sets one after the other (the labelled part, then pseudo-labelled
    images); the loop's ``epoch`` reaches every part."""

    def __init__(self, parts: list[LetterboxedSet]):
        super().__init__(parts)
        self._epoch = 0

    @property
    def epoch(self) -> int:
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch = value
        for part in self.datasets:
            part.epoch = value
