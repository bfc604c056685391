"""The ``petseg-bench`` command line.

Every user error (a missing file, a bad option, an unknown plugin) surfaces as one
line on stderr and a non-zero exit, never as a traceback.
"""

from __future__ import annotations

import fnmatch
import os
import sys
import time
from pathlib import Path

import click

from .errors import PetsegError

VOID_CHOICE = click.Choice(["nearest", "ignore"])


class Group(click.Group):
    """Turns PetsegError anywhere below into click's one-line ``Error: ...``."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PetsegError as exc:
            raise click.ClickException(str(exc)) from None


def resolve_data_root(data_root: str | None) -> Path:
    """``--data-root``, else ``PETSEG_DATA``, else where ``data download`` puts the release."""
    if data_root:
        return Path(data_root)
    if os.environ.get("PETSEG_DATA"):
        return Path(os.environ["PETSEG_DATA"])
    from .data.download import default_data_root

    return default_data_root()


def warn_plugin_problems(registry) -> None:
    for line in registry.problems:
        click.echo(f"warning: {line}", err=True)


data_root_option = click.option(
    "--data-root", type=click.Path(file_okay=False), default=None,
    help="Dataset folder (official or processed layout). Default: $PETSEG_DATA, else the download cache.")
cache_option = click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                            help="Where prepared (decoded) data is kept. Default: $PETSEG_CACHE/prepared or the user cache.")
void_option = click.option("--void", type=VOID_CHOICE, default="nearest", show_default=True,
                           help="Void (border) pixels: fill from the nearest valid pixel, or ignore them.")


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="petseg-bench")
def main() -> None:
    """Train, evaluate and stress-test pet segmentation models (background / cat / dog)."""


@main.command("list")
@click.argument("pattern", required=False, default="*")
def list_cmd(pattern: str) -> None:
    """List installed models, perturbations and metrics (PATTERN: e.g. 'clip*')."""
    from tabulate import tabulate

    from .plugins import get_registry

    reg = get_registry()
    warn_plugin_problems(reg)
    shown = 0
    for kind, table in (("model", reg.models), ("perturbation", reg.perturbations), ("metric", reg.metrics)):
        rows = []
        for name in sorted(table):
            if pattern not in ("all", "*") and not fnmatch.fnmatchcase(name, pattern):
                continue
            spec = table[name]
            detail = {
                "model": lambda s: "+".join(s.inputs),
                "perturbation": lambda s: f"{s.param}: {', '.join(f'{v:g}' for v in s.levels)}",
                "metric": lambda s: ("per class" if s.per_class else "scalar") + (", higher is better" if s.higher_is_better else ""),
            }[kind](spec)
            rows.append([name, reg.origins[(kind, name)], detail, spec.description])
        if rows:
            shown += len(rows)
            click.echo(f"{kind}s:")
            click.echo(tabulate(rows, headers=["name", "plugin", "details", "description"]))
            click.echo()
    if not shown:
        raise PetsegError(f"nothing installed matches {pattern!r}")


@main.group(cls=Group)
def data() -> None:
    """Check, prepare and download the Oxford-IIIT Pet data."""


@data.command("check")
@click.argument("data_dir", required=False, type=click.Path(file_okay=False))
@cache_option
@void_option
def data_check(data_dir: str | None, cache_dir: str | None, void: str) -> None:
    """Counts, dropped files with reasons, label histogram and sizes; exit 1 if unusable."""
    from .data.report import check_report

    root = resolve_data_root(data_dir)
    text, usable = check_report(root, void=void, cache_dir=Path(cache_dir) if cache_dir else None)
    click.echo(text)
    if not usable:
        raise click.ClickException(f"data at {root} is not usable (see above)")


@data.command("prepare")
@data_root_option
@cache_option
@void_option
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
def data_prepare(data_root: str | None, cache_dir: str | None, void: str, workers: int) -> None:
    """Decode and clean every image and mask once into the prepared cache."""
    from .data.cache import prepare_all

    root = resolve_data_root(data_root)
    t0 = time.perf_counter()
    splits = prepare_all(root, void=void, cache_dir=Path(cache_dir) if cache_dir else None,
                         workers=workers, progress=sys.stderr.isatty())
    for name, sp in splits.items():
        click.echo(f"{name}: {len(sp)} usable, {len(sp.dropped)} dropped -> {sp.root}")
    click.echo(f"prepared in {time.perf_counter() - t0:.1f} s")


@data.command("download")
@click.argument("dest", required=False, type=click.Path(file_okay=False))
@click.option("--base-url", default=None, help="Mirror of the official release folder.")
def data_download(dest: str | None, base_url: str | None) -> None:
    """Fetch the official images.tar.gz and annotations.tar.gz (checksummed, resumable)."""
    from .data import download

    target = Path(dest) if dest else download.default_data_root()
    kwargs = {"base_url": base_url} if base_url else {}
    path = download.download_release(target, **kwargs)
    click.echo(f"Oxford-IIIT Pet is ready in {path}")
    click.echo(f"use it with: export PETSEG_DATA={path}")


if __name__ == "__main__":  # pragma: no cover
    main()
