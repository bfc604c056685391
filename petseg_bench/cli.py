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


def _floats(text: str | None, option: str, n: int) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise PetsegError(f"{option} needs {n} comma-separated numbers, got {text!r}") from None
    if len(values) != n:
        raise PetsegError(f"{option} needs {n} comma-separated numbers, got {text!r}")
    return values


@main.command()
@click.argument("model")
@click.option("--profile", default="paper", show_default=True, help="paper (the seed's settings) or quick (CPU minutes).")
@data_root_option
@cache_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="checkpoints", show_default=True,
              help="Checkpoints go to OUT/<model>/{best,last}.pt with metrics.jsonl.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT/<model>/last.pt.")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float)
@click.option("--weight-decay", type=float)
@click.option("--optimizer", type=str, help="adamw (default), adam, sgd, rmsprop")
@click.option("--scheduler", type=str, help="cosine (warm restarts, default) or none")
@click.option("--restart-epochs", type=int, help="Epochs per cosine warm-restart cycle.")
@click.option("--class-weights", type=str, help="Cross-entropy weights background,cat,dog (default 0.3,2.2,0.8).")
@click.option("--val-fraction", type=float)
@click.option("--ce-weight", type=float, help="Cross-entropy loss weight (default: the model's).")
@click.option("--dice-weight", type=float, help="Dice loss weight (default: the model's).")
@click.option("--grad-clip", type=float, help="Max gradient norm; 0 disables.")
@click.option("--precision", type=str, help="auto (bf16 where the hardware has it), fp32 or bf16")
@click.option("--device", type=str, help="auto, cpu, cuda, cuda:N")
@click.option("--patience", type=int, help="Early stopping patience in epochs; 0 disables.")
@click.option("--seed", type=int)
@click.option("--limit", type=int, help="Train on a fixed seeded subset of N trainval images.")
@click.option("--val-limit", type=int, help="Validate on a fixed seeded subset of N images.")
@click.option("--workers", type=int, help="Data-loading worker processes.")
@void_option
@click.option("--in-size", type=int, help="Input size in pixels (multiple of 16).")
@click.option("--base-channels", type=int)
@click.option("--dropout", type=float)
@click.option("--upsample", type=click.Choice(["bilinear", "transposed"]), default=None)
@click.option("--fuse-clip", type=click.Choice(["add", "replace"]), default=None)
@click.option("--freeze-encoder/--finetune-encoder", default=None, help="Autoencoder stage 2.")
@click.option("--latent-dim", type=int)
@click.option("--heatmap-sigma", type=float, help="Click heatmap sigma in input pixels.")
@click.option("--clip-model", type=str, help="open_clip model name (default ViT-B-32).")
@click.option("--clip-pretrained", type=str, help="open_clip tag, a local weights file, or none.")
@click.option("--wandb", is_flag=True, help="Log to Weights & Biases (offline unless WANDB_MODE says otherwise).")
def train(model, profile, data_root, cache_dir, out_dir, resume, void, upsample, wandb, **opts):
    """Train MODEL (a name from `petseg-bench list`)."""
    from .config import resolve
    from .training import train as run_training

    model_keys = ("in_size", "base_channels", "dropout", "fuse_clip", "freeze_encoder", "latent_dim",
                  "heatmap_sigma", "clip_model", "clip_pretrained")
    model_over = {k: opts.pop(k) for k in model_keys}
    if upsample is not None:
        model_over["bilinear"] = upsample == "bilinear"
    opts["class_weights"] = _floats(opts["class_weights"], "--class-weights", 3)
    opts["void"] = void
    cfg, model_over = resolve(profile, opts, model_over)
    root = resolve_data_root(data_root)
    result = run_training(model, cfg, model_over, root, Path(out_dir), resume=resume,
                          cache_dir=Path(cache_dir) if cache_dir else None, progress=sys.stderr.isatty(),
                          log=lambda m: click.echo(m, err=True), wandb=wandb)
    click.echo(f"{model}: best validation mIoU {result.best_val_miou:.4f} (all-background baseline "
               f"{result.baseline_val_miou:.4f}) after {result.epochs_run} epochs, {result.images_per_s:.1f} train img/s")
    click.echo(f"checkpoint: {result.best_path}")


@main.command()
@click.argument("checkpoint_path", metavar="CHECKPOINT", type=click.Path(dir_okay=False))
@data_root_option
@cache_option
@click.option("--limit", type=int, default=None, help="Evaluate a fixed seeded subset of N test images.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--bootstrap", type=click.IntRange(0, 100000), default=1000, show_default=True,
              help="Bootstrap replicates for 95% CIs (0: none).")
@click.option("--precision", default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="JSON output (default: CHECKPOINT with .test.json).")
def evaluate(checkpoint_path, data_root, cache_dir, limit, batch_size, bootstrap, precision, device, out_file):
    """Test-split metrics of a checkpoint at the original mask resolution, both reductions."""
    from .evaluation import evaluate_checkpoint, format_summary

    result = evaluate_checkpoint(Path(checkpoint_path), resolve_data_root(data_root),
                                 cache_dir=Path(cache_dir) if cache_dir else None, limit=limit,
                                 batch_size=batch_size, n_boot=bootstrap, precision=precision, device=device)
    out = Path(out_file) if out_file else Path(checkpoint_path).with_suffix(".test.json")
    from .io import write_json_atomic

    write_json_atomic(out, result)
    click.echo(format_summary(result))
    click.echo(f"written: {out}")


@main.command()
@click.option("--models", default="all", show_default=True, help="Model names or patterns, comma-separated ('clip*', 'all').")
@click.option("--perturbations", default="all", show_default=True, help="Perturbation names or patterns, comma-separated.")
@click.option("--levels", default="all", show_default=True, help="Severity levels: 'all', '1-9', '1,5,9' (level 0 always runs).")
@click.option("--checkpoints", "checkpoints_dir", type=click.Path(file_okay=False), default="checkpoints", show_default=True,
              help="Folder with <model>/best.pt for every model.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/latest", show_default=True)
@data_root_option
@cache_option
@void_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds every perturbation's random draws.")
@click.option("--limit", type=int, default=None, help="Sweep a fixed seeded subset of N test images.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True)
@click.option("--resume", is_flag=True, help="Finish an interrupted run in --out, skipping finished cells.")
@click.option("--train-missing", is_flag=True, help="Train models without a checkpoint first (quick profile).")
@click.option("--precision", default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--compile", "compile_models", is_flag=True,
              help="torch.compile each model: faster on long sweeps, after a cold start of ~15-30 s per model.")
@click.option("--report/--no-report", default=True, show_default=True, help="Write the report at the end.")
def run(models, perturbations, levels, checkpoints_dir, out_dir, data_root, cache_dir, void, seed, limit,
        batch_size, resume, train_missing, precision, device, compile_models, report):
    """Sweep models x perturbations x levels on the test split and write the report."""
    from .plugins import get_registry
    from .sweep import SweepPlan, parse_levels, run_sweep

    reg = get_registry()
    warn_plugin_problems(reg)
    model_names = reg.select("model", models)
    pert_names = reg.select("perturbation", perturbations)
    n_levels = max(len(reg.get("perturbation", p).levels) for p in pert_names)
    plan = SweepPlan(model_names, pert_names, parse_levels(levels, n_levels), seed=seed, batch_size=batch_size,
                     limit=limit, void=void, compile=compile_models)
    if limit is not None and limit < 1:
        raise PetsegError(f"--limit must be >= 1, got {limit}")
    root = resolve_data_root(data_root)
    plan.extra["data_root"] = str(root)  # lets `petseg-bench report` find the images for its example strips
    cache = Path(cache_dir) if cache_dir else None
    if train_missing:
        from .config import resolve
        from .training import train as run_training

        for m in model_names:
            if not (Path(checkpoints_dir) / m / "best.pt").is_file():
                click.echo(f"training {m} (quick profile): no checkpoint in {checkpoints_dir}", err=True)
                cfg, over = resolve("quick", {"void": void}, {})
                run_training(m, cfg, over, root, Path(checkpoints_dir), cache_dir=cache,
                             progress=sys.stderr.isatty(), log=lambda msg: click.echo(msg, err=True))
    record = run_sweep(plan, Path(checkpoints_dir), Path(out_dir), root, resume=resume, cache_dir=cache,
                       precision=precision, device=device, progress=sys.stderr.isatty(),
                       log=lambda msg: click.echo(msg, err=True))
    click.echo(f"sweep: {len(model_names)} models x {len(pert_names)} perturbations x {len(plan.levels)} levels "
               f"on {len(record['image_ids'])} test images; {record['cells_computed']} cells computed "
               f"({record['image_levels_per_s'] or 0:.1f} image-levels/s) -> {out_dir}")
    if report:
        from .report import write_report

        _echo_report(write_report(Path(out_dir), data_root=root, cache_dir=cache))


def _echo_report(paths: list[Path]) -> None:
    docs = [p for p in paths if p.suffix != ".png"]
    pngs = [p for p in paths if p.suffix == ".png"]
    for p in docs:
        click.echo(f"report: {p}")
    if pngs:
        click.echo(f"report: {len(pngs)} plots in {pngs[0].parent}")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@data_root_option
@cache_option
@click.option("--examples/--no-examples", default=True, show_default=True,
              help="Draw the example strips (they show test images; leave them out of committed reports).")
def report(run_dir, data_root, cache_dir, examples):
    """Write summary.json, report.md, index.html and plots/ for the sweep run in RUN_DIR.

    The example images need the test split: --data-root, else the folder the run
    recorded, else $PETSEG_DATA or the download cache; without it they are skipped.
    """
    from .report import read_run, write_report

    run_path = Path(run_dir)
    recorded = read_run(run_path).get("data_root")
    root = resolve_data_root(data_root) if data_root or not recorded else None  # None: the run's own folder
    _echo_report(write_report(run_path, data_root=root, cache_dir=Path(cache_dir) if cache_dir else None,
                              examples=examples))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--baseline", "baseline_file", type=click.Path(dir_okay=False), required=True,
              help="Baseline JSON: per model, clean mDice and each perturbation's mean Dice (seed reduction).")
@click.option("--tolerance", type=click.FloatRange(min=0), default=None,
              help="Allowed drop in Dice before a figure counts as a regression. Default: the baseline's, else 0.02.")
@click.option("--update-baseline", is_flag=True, help="Write this run's figures as the new baseline and exit 0.")
def check(run_dir, baseline_file, tolerance, update_baseline):
    """Compare the run in RUN_DIR with a baseline; exit 1 if Dice regressed past the tolerance."""
    from tabulate import tabulate

    from .baseline import HEADERS, baseline_document, compare, load_baseline, resolve_tolerance
    from .io import write_json_atomic
    from .report import read_run
    from .results import load_run
    from .summary import baseline_values, build_summary

    run_path, baseline_path = Path(run_dir), Path(baseline_file)
    run_record = read_run(run_path)
    df = load_run(run_path)
    if df.empty:
        raise PetsegError(f"{run_path} has no finished cell yet; run or resume the sweep first")
    current = baseline_values(build_summary(df, run_record, n_boot=0))
    if update_baseline:
        old = load_baseline(baseline_path) if baseline_path.is_file() else None
        tol = resolve_tolerance(tolerance, old)
        write_json_atomic(baseline_path, baseline_document(current, tol))
        n_values = sum(1 + len(m["perturbations"]) for m in current["models"].values())
        click.echo(f"baseline written: {baseline_path} ({len(current['models'])} models, {n_values} figures, "
                   f"tolerance {tol:g})")
        return
    base = load_baseline(baseline_path, run_path)
    tol = resolve_tolerance(tolerance, base)
    results = compare(current, base, tol)
    click.echo(tabulate([r.row() for r in results], headers=HEADERS, disable_numparse=True,
                        colalign=("left", "left", "right", "right", "right", "left")))
    failed = [r for r in results if r.failed]
    if failed:
        shown = "; ".join(r.describe() for r in failed[:8]) + (f"; and {len(failed) - 8} more" if len(failed) > 8 else "")
        raise PetsegError(f"{len(failed)} of {len(results)} figures regressed past tolerance {tol:g} or are "
                          f"missing ({current['reduction']} reduction): {shown}")
    n_better = sum(r.status == "improved" for r in results)
    click.echo(f"ok: {len(results)} figures within tolerance {tol:g} of {baseline_path}"
               + (f" ({n_better} improved)" if n_better else ""))


if __name__ == "__main__":  # pragma: no cover
    main()
