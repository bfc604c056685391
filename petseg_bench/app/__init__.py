"""``petseg-bench app``: the interactive page (Gradio, an optional extra: ``pip install 'petseg-bench[app]'``).

``uploads`` decodes and downscales what the browser sends, ``models`` lists the
checkpoints and caches loaded models, ``inference`` is the pure function behind the page
(clean and perturbed prediction through the one inference path), ``render`` draws the
overlays, heatmap and legend, and ``page`` holds the Gradio Blocks. Only ``page`` imports
Gradio; the page never reaches the network (no analytics, no share link).
"""

from __future__ import annotations

import os

# Before Gradio is imported anywhere: no usage analytics, no hub or update checks.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# The page is served and checked on this machine: never through a proxy.
for _var in ("NO_PROXY", "no_proxy"):
    _hosts = [h for h in os.environ.get(_var, "").split(",") if h]
    os.environ[_var] = ",".join(_hosts + [h for h in ("127.0.0.1", "localhost") if h not in _hosts])


def gradio_missing() -> str | None:
    """One line saying how to install Gradio, or None when it is importable."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        return "the app needs Gradio: pip install 'petseg-bench[app]'"
    return None
