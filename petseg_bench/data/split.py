"""Seeded, reproducible subsets: the validation split and ``--limit`` selections."""

from __future__ import annotations

import numpy as np


def validation_split(species: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) positions: ``fraction`` of each species goes to validation.

    Stratifying by species keeps the 1:2 cat/dog ratio in both parts, which matters on
    small subsets. At least one image of every present species goes to each side.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be strictly between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for sp in np.unique(species):
        pos = np.flatnonzero(species == sp)
        pos = pos[rng.permutation(len(pos))]
        n_val = int(round(len(pos) * fraction))
        n_val = min(max(n_val, 1), len(pos) - 1) if len(pos) > 1 else 0
        val.append(pos[:n_val])
        train.append(pos[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def limit(positions: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """A fixed, seeded subset of ``n`` positions (all when ``n`` is None or larger)."""
    positions = np.asarray(positions)
    if n is None or n >= len(positions):
        return positions
    if n < 1:
        raise ValueError(f"limit must be >= 1, got {n}")
    rng = np.random.default_rng(seed + 7919)  # independent of the validation draw
    return np.sort(rng.choice(positions, size=n, replace=False))
