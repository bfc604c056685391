"""What the report shows about each model: its label, its backbone, the seed's figures.

Everything model-specific is data: the label and published figures come from the
model's :class:`~petseg_bench.specs.ModelSpec` (when its plugin is installed here), the
backbone from the run record. A model whose plugin is missing keeps its bare name and
gets no paper row, so a report can always be re-rendered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ..run_record import ModelInfo, RunRecord
from ..specs import ModelSpec, PaperFigures

#: How the tables name the seed study's columns.
SEED_SOURCE = "seed study (full dataset, GPU)"

#: Table 1's last row: the course's provided baseline, which is no model of any plugin.
PROVIDED_BASELINE = PaperFigures("provided baseline", (0.33, None, None))


@dataclass(frozen=True)
class ModelView:
    name: str
    display: str
    backbone: Mapping[str, Any] | None  # run.json model_info[name]["backbone"]
    paper: PaperFigures | None
    encoder: str | None = None  # run.json model_info[name]["encoder"]: a pretrained encoder it fine-tuned

    @property
    def backbone_label(self) -> str | None:
        if not self.backbone:
            return None
        return str(self.backbone.get("label") or self.backbone.get("key") or "")

    @property
    def label(self) -> str:
        """The display name, with the backbone (or pretrained encoder) that produced the
        numbers where there is one: the same model on other weights is another result."""
        backbone = self.backbone_label or self.encoder
        return f"{self.display} [{backbone}]" if backbone else self.display

    @property
    def random_init(self) -> bool:
        return bool(self.backbone and self.backbone.get("random_init"))

    def describe(self) -> dict[str, Any]:
        """summary.json's ``model_labels`` entry: what produced the model's numbers."""
        return {"label": self.label, "backbone": self.backbone_label, "encoder": self.encoder,
                "random_init": self.random_init}


def find_spec(name: str) -> ModelSpec | None:
    from ..plugins import get_registry

    return get_registry().models.get(name)


def describe_models(run: RunRecord | Mapping[str, Any], names: Iterable[str]) -> dict[str, ModelView]:
    """A view of every model named, and of every model in the run record."""
    run = RunRecord.of(run)
    out: dict[str, ModelView] = {}
    for name in [*names, *run.model_info]:
        if name in out:
            continue
        spec = find_spec(name)
        info = run.info(name) or ModelInfo()
        out[name] = ModelView(name, spec.display if spec else name, info.backbone or None,
                              spec.paper if spec else None, info.encoder or None)
    return out


def label(models: Mapping[str, ModelView], name: str) -> str:
    view = models.get(name)
    return view.label if view else name


def robustness_notes(models: Iterable[ModelView]) -> list[str]:
    """The seed's robustness findings, in words, for the models of the run that have any."""
    return [m.paper.robustness for m in models if m.paper and m.paper.robustness]
