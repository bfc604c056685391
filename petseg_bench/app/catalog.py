"""The checkpoints the app offers, and the cache that loads each one once.

Every ``DIR/<model>/best.pt`` is listed, whichever plugin (built-in or third-party)
provides the model, with its display label, input size and frozen backbone named. A
checkpoint that cannot be used stays in the list with the reason, so choosing it says
why instead of failing. Loading goes through :func:`~petseg_bench.engine.predictor.load_predictor`,
the one inference path; a loaded model stays cached until its file changes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ..engine import checkpoint
from ..engine.predictor import Predictor, load_predictor
from ..engine.runtime import Runtime
from ..errors import PetsegError, one_line
from ..plugins import get_registry


@dataclass(frozen=True)
class Choice:
    """One entry of the model dropdown."""

    path: Path
    label: str
    #: Why this checkpoint cannot be used (found while listing), else None.
    problem: str | None = None


def find_checkpoints(folder: Path | str) -> list[Choice]:
    """Every ``folder/<model>/best.pt`` (and ``folder/best.pt``), described."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    paths = sorted(folder.glob("*/best.pt"))
    if (folder / "best.pt").is_file():
        paths.insert(0, folder / "best.pt")
    return [describe(p) for p in paths]


def no_checkpoints_line(folder: Path | str) -> str:
    folder = Path(folder)
    where = "does not exist" if not folder.exists() else "holds no <model>/best.pt"
    model = get_registry().reference_model() or "MODEL"
    return (f"No checkpoints: {folder} {where}. Train one, e.g. `petseg-bench train {model} --profile quick "
            f"--out {folder}`, or start the app with --checkpoints DIR.")


def describe(path: Path) -> Choice:
    """The dropdown entry of one checkpoint: model label and name, input size, backbone."""
    folder_name = path.parent.name
    try:
        data = checkpoint.load(path)
    except PetsegError as exc:
        return Choice(path, f"{folder_name}: unusable checkpoint", one_line(exc))
    name = str(data.get("model"))
    try:
        spec = get_registry().get("model", name)
        config = checkpoint.model_config(data, spec, path)
    except PetsegError as exc:
        return Choice(path, f"{name}: not usable here", f"checkpoint {path}: {one_line(exc)}")
    key = spec.backbone_key(config)
    prompt = " · click on the pet" if "point" in spec.inputs else ""
    return Choice(path, f"{spec.display} ({name}, {config.in_size} px) · backbone: "
                        f"{backbone_text(key, data.get('backbone'))}{prompt}")


def backbone_text(key: str | None, record: dict | None) -> str:
    """How the dropdown and the status name a model's frozen backbone (random weights said so)."""
    if key is None:
        return "none (its own encoder)"
    label = str((record or {}).get("label") or key)
    random = bool((record or {}).get("random_init"))
    text = label if key in label else f"{label} [{key}]"
    return text + (" (random weights, not a pretrained backbone)" if random and "random" not in text.lower() else "")


class ModelCache:
    """Predictors by checkpoint path, each loaded once (again only when the file changes)."""

    def __init__(self, runtime: Runtime | None = None):
        self.runtime = runtime
        self._items: dict[str, tuple[float, Predictor]] = {}
        self._lock = threading.Lock()

    def get(self, path: Path | str) -> Predictor:
        path = Path(path)
        try:
            stamp = path.stat().st_mtime
        except OSError as exc:
            raise PetsegError(f"checkpoint {path} cannot be read: {exc.strerror or one_line(exc)}") from None
        with self._lock:  # one load at a time: two clicks never load the same model twice
            found = self._items.get(str(path))
            if found is not None and found[0] == stamp:
                return found[1]
            if self.runtime is None:
                self.runtime = Runtime.choose()
            predictor = load_predictor(path, self.runtime)
            self._items[str(path)] = (stamp, predictor)
            return predictor

    def __len__(self) -> int:
        return len(self._items)
