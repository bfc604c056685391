"""petseg-bench: robustness benchmark for pet segmentation (background / cat / dog)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("petseg-bench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from .hookspecs import hookimpl  # noqa: E402  (re-exported for plugin authors)
from .labels import CLASS_NAMES, N_CLASSES  # noqa: E402

__all__ = ["CLASS_NAMES", "N_CLASSES", "hookimpl", "__version__"]
