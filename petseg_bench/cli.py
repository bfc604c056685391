"""The ``petseg-bench`` command line.

Every user error (a missing file, a bad option, an unknown plugin) surfaces as one
line on stderr and a non-zero exit, never as a traceback.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shlex
import sys
import time
import warnings
from pathlib import Path

import click

from .data.layout import refuse_overlap
from .errors import PetsegError
from .options import FiniteFloat
from .paths import refuse_output_over_inputs

VOID_CHOICE = click.Choice(["nearest", "ignore"])


class Group(click.Group):
    """Turns PetsegError (and a file error that escaped one) anywhere below into click's
    one-line ``Error: ...``, and Ctrl-C into one line saying how to resume (exit 130)."""

    argv: list[str] = []

    def main(self, args=None, *rest, **kwargs):
        self.argv = list(args) if args is not None else sys.argv[1:]
        return super().main(args, *rest, **kwargs)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PetsegError as exc:
            raise click.ClickException(str(exc)) from None
        except click.BadParameter as exc:  # the message names the option: no usage lines around it
            raise OneLineUsageError(exc.format_message()) from None
        except OSError as exc:  # a write that no PetsegError names: still one line
            raise click.ClickException(file_error_line(exc)) from None
        except KeyboardInterrupt:
            click.echo(interrupted_line(getattr(ctx.find_root().command, "argv", [])), err=True)
            raise click.exceptions.Exit(130) from None


class OneLineUsageError(click.ClickException):
    """A bad option value, as one ``Error:`` line with click's usage exit status (2)."""

    exit_code = 2


def file_error_line(exc: OSError) -> str:
    from .errors import os_error_text

    verb = "write" if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT) else "access"
    return f"could not {verb} {exc.filename}: {os_error_text(exc)}" if exc.filename else f"file error: {os_error_text(exc)}"


#: Commands that can pick up where an interrupted call stopped, with --resume.
RESUMABLE = ("train", "run")


def interrupted_line(argv: list[str]) -> str:
    """Ctrl-C: what was kept, and the exact command that continues."""
    command = next((a for a in argv if not a.startswith("-")), "")
    if command not in RESUMABLE:
        return "interrupted"
    again = ["petseg-bench", *[a for a in argv if a != "--overwrite"]]
    if "--resume" not in again:
        again.append("--resume")
    return f"interrupted; finished work is kept: continue with `{shlex.join(again)}`"


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
    warnings.showwarning = _one_line_warning


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    """Warnings (e.g. a class absent from every image) as one ``warning:`` line on stderr."""
    click.echo(f"warning: {str(message).splitlines()[0] if str(message) else category.__name__}", err=True)


@main.command("list")
@click.argument("pattern", required=False, default="*")
def list_cmd(pattern: str) -> None:
    """List installed models, backbones, perturbations and metrics (PATTERN: a name or a wildcard, e.g. '*net')."""
    from tabulate import tabulate

    from .plugins import get_registry

    reg = get_registry()
    warn_plugin_problems(reg)
    shown = 0
    for kind in ("model", "model family", "backbone", "perturbation", "metric"):
        table = reg.table(kind)
        rows = [[name, reg.origins[(kind, name)], _detail(kind, table[name]), table[name].description]
                for name in sorted(table) if pattern in ("all", "*") or fnmatch.fnmatchcase(name, pattern)]
        if rows:
            shown += len(rows)
            click.echo(f"{'model families' if kind == 'model family' else kind + 's'}:")
            click.echo(tabulate(rows, headers=["name", "plugin", "details", "description"]))
            click.echo()
    if not shown:
        raise PetsegError(f"nothing installed matches {pattern!r}")


def _detail(kind: str, spec) -> str:
    if kind == "model":
        opts = ", ".join(f"{o.name}={o.default!r}" for o in spec.options)
        return "+".join(spec.inputs) + ("; the CE/mCE reference" if spec.reference else "") + \
            (f"; options: {opts}" if opts else "")
    if kind == "model family":
        return f"unavailable ({spec.unavailable})" if spec.unavailable else f"e.g. {spec.example}"
    if kind == "backbone":
        return f"e.g. {spec.example}" if spec.example else ""
    if kind == "perturbation":
        levels = f"{spec.param}: {', '.join(f'{v:g}' for v in spec.levels)}"
        return f"unavailable ({spec.unavailable})" if spec.unavailable else levels
    return ("per class" if spec.per_class else "scalar") + (", higher is better" if spec.higher_is_better else "")


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
    refuse_output_over_inputs(cache_dir, {"data root": root}, "--cache-dir")
    text, usable = check_report(root, void=void, cache_dir=Path(cache_dir) if cache_dir else None)
    click.echo(text)
    if not usable:
        from .data.layout import split_overlap

        both = split_overlap(root)
        why = f": {len(both)} name(s) are listed in both trainval and test" if both else ""
        raise click.ClickException(f"data at {root} is not usable{why} (see above)")


@data.command("prepare")
@data_root_option
@cache_option
@void_option
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
def data_prepare(data_root: str | None, cache_dir: str | None, void: str, workers: int) -> None:
    """Decode and clean every image and mask once into the prepared cache."""
    from .data.cache import prepare_all

    root = resolve_data_root(data_root)
    refuse_output_over_inputs(cache_dir, {"data root": root}, "--cache-dir")
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


def config_options(config: type | None = None):
    """Decorator: one option per command-line setting of ``config`` (TrainConfig by
    default; :func:`petseg_bench.config.setting` declares them). Every default is None,
    "not given", so the profile's and the model's values apply underneath."""
    from .config import cli_settings

    kinds = {float: FiniteFloat(), int: int, str: str}

    def decorate(command):
        for s in reversed(cli_settings(config)):
            if s.kind is bool:  # --compile / --no-compile, so a profile's True can be turned off
                command = click.option(f"{s.flag}/--no-{s.flag[2:]}", s.name, default=None, help=s.help)(command)
                continue
            metavar = f"[{'|'.join(s.choices)}]" if s.choices else None
            command = click.option(s.flag, s.name, type=kinds[s.kind], default=None, help=s.help,
                                   metavar=metavar)(command)
        return command
    return decorate


def config_values(opts: dict, config: type | None = None) -> dict:
    """The given settings of ``config`` among a command's ``opts`` (None: not given),
    list settings parsed (``--class-weights 1,1,1``)."""
    from .config import cli_settings

    values = {}
    for s in cli_settings(config):
        text = opts.pop(s.name)
        values[s.name] = s.parse(text, s.flag) if s.parse is not None and text is not None else text
    return values


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
              epilog="A model's own settings: --model-opt KEY=VALUE (repeatable), or its shorthand flags "
                     "(e.g. --base-channels 32, --dropout 0.1, --latent-dim 256); `petseg-bench list MODEL` shows them.")
@click.argument("model")
@click.option("--profile", default="paper", show_default=True, help="paper (the seed's settings), quick (CPU minutes) or reference (pretrained encoders, "
                   "full trainval, sized for a 2-core CPU).")
@data_root_option
@cache_option
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="checkpoints", show_default=True,
              help="Checkpoints go to OUT/<model>/{best,last}.pt with metrics.jsonl.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT/<model>/last.pt.")
@click.option("--overwrite", is_flag=True, help="Replace a previous run of MODEL in OUT (its best.pt, last.pt, metrics.jsonl).")
@config_options()
@click.option("--in-size", type=int, help="Input size in pixels (multiple of 16).")
@click.option("--model-opt", "model_opts", multiple=True, metavar="KEY=VALUE", help="A model option (repeatable).")
@click.option("--wandb", is_flag=True, help="Log to Weights & Biases (offline unless WANDB_MODE says otherwise).")
@click.pass_context
def train(ctx, model, **opts):
    """Train MODEL (a name from `petseg-bench list`); data-parallel under
    `torchrun --nproc-per-node N` (--batch-size is the global batch)."""
    from .config import resolve
    from .engine.training import TrainJob
    from .engine.training import train as run_training
    from .plugins import get_registry

    from .plugins import refuse_training

    refuse_output_over_inputs(opts["out_dir"], {"data root": resolve_data_root(opts["data_root"])})
    refuse_training(model)  # onnx:/torchscript: files are evaluation-only
    spec = get_registry().get("model", model)
    model_options = model_option_values(spec, opts.pop("model_opts"), ctx.args)
    train_over = config_values(opts)
    cfg, fields = resolve(opts["profile"], train_over, {"in_size": opts["in_size"]}, spec)
    job = TrainJob(model=model, cfg=cfg, data_root=resolve_data_root(opts["data_root"]), out_dir=Path(opts["out_dir"]),
                   model_fields=fields, model_options=model_options, profile=opts["profile"], resume=opts["resume"],
                   cache_dir=_path(opts["cache_dir"]), wandb=opts["wandb"], overwrite=opts["overwrite"])
    result = run_training(job, log=lambda m: click.echo(m, err=True), progress=sys.stderr.isatty())
    if os.environ.get("RANK", "0") not in ("", "0"):  # torchrun: rank 0 reports
        return
    click.echo(f"{model}: best validation mIoU {result.best_val_miou:.4f} (all-background baseline "
               f"{result.baseline_val_miou:.4f}) after {result.epochs_run} epochs, {result.images_per_s:.1f} train img/s")
    click.echo(f"checkpoint: {result.best_path}")


def model_option_values(spec, pairs, extra_args: list[str]) -> dict:
    """``--model-opt k=v`` pairs and the model's shorthand flags from the extra arguments,
    as raw values (the spec parses and checks them)."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise PetsegError(f"--model-opt needs KEY=VALUE, got {pair!r}")
        values[spec.option(key.strip().replace("-", "_")).name] = value
    flags = {}
    for o in spec.options:
        for k, f in enumerate((o.flag or "").split("/")):
            if f:
                flags[f] = (o, None if not isinstance(o.default, bool) else k == 0)
    args = list(extra_args)
    while args:
        token = args.pop(0)
        name, _, inline = token.partition("=")
        if name not in flags:
            hint = ", ".join(sorted(flags)) or "none"
            raise PetsegError(f"no such option {name!r} for model {spec.name} (its flags: {hint}; or --model-opt KEY=VALUE)")
        opt, fixed = flags[name]
        if fixed is not None:
            values[opt.name] = fixed
        elif inline or args:
            values[opt.name] = inline or args.pop(0)
        else:
            raise PetsegError(f"option {name} of model {spec.name} needs a value")
    return values


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


@main.command()
@click.argument("checkpoint_path", metavar="CHECKPOINT", type=click.Path(dir_okay=False))
@data_root_option
@cache_option
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True,
              help="test, or val: the checkpoint's own validation part of trainval (its seed and fraction), "
                   "where settings are chosen.")
@click.option("--limit", type=int, default=None, help="Evaluate a fixed seeded subset of N images.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--bootstrap", type=click.IntRange(0, 100000), default=1000, show_default=True,
              help="Bootstrap replicates for 95% CIs (0: none).")
@click.option("--precision", default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--void", type=VOID_CHOICE, default=None,
              help="Void (border) pixels: nearest (fill from the nearest valid pixel) or ignore. "
                   "Default: the mode the checkpoint was trained with.")
@click.option("--out", "out_file", type=click.Path(), default=None,
              help="JSON output (default: CHECKPOINT with .test.json, or .val.json with --split val).")
@click.option("--allow-overlap", is_flag=True,
              help="Evaluate even where test images are also listed in trainval (evaluation-only data); "
                   "the result lists them.")
def evaluate(checkpoint_path, data_root, cache_dir, out_file, **opts):
    """Test-split (or validation, --split val) metrics of a checkpoint at the original mask resolution."""
    from .atomic import check_writable, write_json_atomic
    from .paths import checkpoint_inputs
    from .engine.evaluation import EvalJob, evaluate_checkpoint, format_summary

    job = EvalJob(Path(checkpoint_path), resolve_data_root(data_root), _path(cache_dir), opts["limit"],
                  opts["batch_size"], opts["bootstrap"], opts["precision"], opts["device"], void=opts["void"],
                  allow_overlap=opts["allow_overlap"], split=opts["split"])
    job.validate()
    out = Path(out_file) if out_file else Path(checkpoint_path).with_suffix(f".{job.split}.json")
    refuse_output_over_inputs(out, {**checkpoint_inputs(checkpoint_path), "data root": job.data_root})
    check_writable(out)  # before the work, not after it
    result = evaluate_checkpoint(job, log=lambda m: click.echo(m, err=True))
    write_json_atomic(out, result)
    click.echo(format_summary(result))
    click.echo(f"written: {out}")


@main.command()
@click.option("--models", default="all", show_default=True, help="Model names or patterns, comma-separated ('*net', 'all').")
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
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where the (perturbation, level) groups run: this process, or Ray tasks "
                   "(pip install 'petseg-bench[ray]').")
@click.option("--address", default=None, help="Ray: the cluster to join (HOST:PORT, ray://HOST:PORT or auto). "
                                               "Default: start a local Ray.")
@click.option("--cpus-per-task", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Ray: CPUs (torch threads) per group task.")
@click.option("--ray-niceness", type=click.IntRange(0, 19), default=None,
              help="Ray: niceness of the local Ray's workers, 0-19 (default 0: this process's priority; Ray's "
                   "own 15 lets any other work on the machine go first, which slows a shared box's sweep many times).")
@click.option("--shard", default=None, metavar="I/N",
              help="Compute only shard I of N (0 <= I < N) of the groups, e.g. "
                   "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; `report` merges the shards.")
@click.option("--allow-overlap", is_flag=True,
              help="Sweep even where test images are also listed in trainval (evaluation-only data); run.json lists them.")
def run(**opts):
    """Sweep models x perturbations x levels on the test split and write the report."""
    from .engine.shard import parse_shard, run_lock
    from .results import check_path_text

    check_path_text(opts["out_dir"], "--out")

    shard = parse_shard(opts["shard"])
    check_scale_out(opts, shard)
    if opts["backend"] == "ray":  # a missing Ray or a cluster that does not answer: said first
        from .engine.ray_backend import check_address

        check_address(opts["address"])
    from .engine.sweep import RUN_FOLDERS, SweepJob, SweepPlan, parse_levels, run_sweep
    from .results import RunRecord
    from .plugins import get_registry

    reg = get_registry()
    warn_plugin_problems(reg)
    model_names = reg.select("model", opts["models"])
    pert_names = reg.select("perturbation", opts["perturbations"])
    n_levels = max(len(reg.get("perturbation", p).levels) for p in pert_names)
    root, cache, ckpt_dir = resolve_data_root(opts["data_root"]), _path(opts["cache_dir"]), Path(opts["checkpoints_dir"])
    plan = SweepPlan(model_names, pert_names, parse_levels(opts["levels"], n_levels), seed=opts["seed"],
                     batch_size=opts["batch_size"], limit=opts["limit"], void=opts["void"],
                     compile=opts["compile_models"], extra={"data_root": str(root)},  # the report's example strips
                     shard=shard)
    plan.validate()  # before anything is trained or written
    out = Path(opts["out_dir"])
    refuse_output_over_inputs(out, {"checkpoints folder": ckpt_dir, "data root": root})
    log = lambda msg: click.echo(msg, err=True)  # noqa: E731
    if overlap := refuse_overlap(root, opts["allow_overlap"], log, "--allow-overlap"):
        plan.extra["allowed_overlap"] = overlap  # recorded in run.json
    with run_lock(out, shard, RUN_FOLDERS, log):  # held through the sweep and the report
        if opts["train_missing"]:
            train_missing(model_names, ckpt_dir, root, cache, opts["void"])
        job = SweepJob(plan=plan, checkpoints_dir=ckpt_dir, run_dir=out, data_root=root, resume=opts["resume"],
                       cache_dir=cache, precision=opts["precision"], device=opts["device"], backend=opts["backend"],
                       address=opts["address"], cpus_per_task=opts["cpus_per_task"],
                       ray_niceness=opts["ray_niceness"] or 0)
        record = RunRecord.of(run_sweep(job, progress=sys.stderr.isatty(), log=log))
        click.echo(f"sweep{f' shard {shard}' if shard else ''}: {len(model_names)} models x {len(pert_names)} "
                   f"perturbations x {len(plan.levels)} levels on {len(record.image_ids)} test images; "
                   f"{record.cells_computed} cells computed ({record.image_levels_per_s or 0:.1f} image-levels/s) -> {out}")
        if shard is not None:
            log(f"shard {shard} done; once every shard is, `petseg-bench report {out}` merges them "
                f"(or `petseg-bench report FOLDER... --out MERGED` for one folder per shard)")
        elif opts["report"]:
            from .reporting import write_report

            _echo_report(write_report(out, data_root=root, cache_dir=cache))


def check_scale_out(opts: dict, shard) -> None:
    """Options of ``run`` that only make sense together, in one line each."""
    if opts["backend"] != "ray":
        for name, default in (("address", None), ("cpus_per_task", 1), ("ray_niceness", None)):
            if opts[name] != default:
                raise PetsegError(f"--{name.replace('_', '-')} is for --backend ray")
    if opts["address"] and opts["ray_niceness"] is not None:
        raise PetsegError("--ray-niceness is for the local Ray a run starts; a cluster's workers run at the niceness "
                          "its nodes were started with (RAY_worker_niceness=N ray start ...)")
    if shard is not None and opts["train_missing"]:
        raise PetsegError("--train-missing cannot be combined with --shard (every shard would train the same models "
                          "at once): train first, then start the shards")


def train_missing(models: list[str], checkpoints_dir: Path, root: Path, cache: Path | None, void: str) -> None:
    """Train, in the quick profile, every model without a checkpoint (continuing an
    interrupted training of it where its last.pt is)."""
    from .config import resolve
    from .engine.training import TrainJob
    from .engine.training import train as run_training
    from .plugins import get_registry

    for m in models:
        from .plugins import checkpoint_path

        if not checkpoint_path(m, checkpoints_dir).is_file():
            click.echo(f"training {m} (quick profile): no checkpoint in {checkpoints_dir}", err=True)
            cfg, fields = resolve("quick", {"void": void}, {}, get_registry().get("model", m))
            resume = checkpoint_path(m, checkpoints_dir).with_name("last.pt").is_file()
            run_training(TrainJob(model=m, cfg=cfg, data_root=root, out_dir=checkpoints_dir, model_fields=fields,
                                  profile="quick", cache_dir=cache, resume=resume),
                         log=lambda msg: click.echo(msg, err=True), progress=sys.stderr.isatty())


def _echo_report(paths: list[Path]) -> None:
    docs = [p for p in paths if p.suffix != ".png"]
    pngs = [p for p in paths if p.suffix == ".png"]
    for p in docs:
        click.echo(f"report: {p}")
    if pngs:
        click.echo(f"report: {len(pngs)} plots in {pngs[0].parent}")


@main.command()
@click.argument("run_dirs", metavar="RUN_DIR...", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Several folders (one per shard): merge them into this folder and report there.")
@data_root_option
@cache_option
@click.option("--examples/--no-examples", default=True, show_default=True,
              help="Draw the example strips (they show test images; leave them out of committed reports).")
@click.option("--reference-model", default=None,
              help="The model that CE and mCE are normalised by. Default: the installed model whose plugin "
                   "declares itself the reference (`petseg-bench list` marks it).")
@click.option("--allow-partial", is_flag=True,
              help="Report a run that lacks cells (a shard missing, a sweep unfinished); its first section names them.")
def report(run_dirs, out_dir, data_root, cache_dir, examples, reference_model, allow_partial):
    """Write summary.json, report.md, index.html and plots/ for the sweep run in RUN_DIR.

    Shards of a sweep (`run --shard I/N`) are merged first: those of one shared RUN_DIR
    in place, those of several folders into --out. The example images need the test
    split: --data-root, else the folder the run recorded, else $PETSEG_DATA or the
    download cache; without it they are skipped.
    """
    from .engine.lock import folder_lock
    from .engine.merge import merge_runs
    from .engine.sweep import RUN_FOLDERS
    from .reporting import write_report
    from .results import check_path_text, read_run

    for d in (*run_dirs, out_dir):
        check_path_text(d, "--out" if d is out_dir else "RUN_DIR")
    if len(run_dirs) > 1 and not out_dir:
        raise PetsegError(f"report: {len(run_dirs)} run folders are merged into one: pass --out FOLDER")
    run_path = Path(out_dir or run_dirs[0])
    refuse_output_over_inputs(out_dir, [*(("run folder", d) for d in run_dirs if len(run_dirs) > 1),
                                        ("data root", data_root)])
    with folder_lock(run_path, RUN_FOLDERS):  # not while a `run` still writes there
        merge_runs([Path(d) for d in run_dirs], run_path, log=lambda m: click.echo(m, err=True),
                   allow_partial=allow_partial)
        recorded = read_run(run_path).data_root
        root = resolve_data_root(data_root) if data_root or not recorded else None  # None: the run's own folder
        _echo_report(write_report(run_path, data_root=root, cache_dir=_path(cache_dir), examples=examples,
                                  reference_model=reference_model, allow_partial=allow_partial))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--baseline", "baseline_file", type=click.Path(dir_okay=False), required=True,
              help="Baseline JSON: per model, clean mDice and each perturbation's mean Dice (seed reduction).")
@click.option("--tolerance", type=FiniteFloat(min=0), default=None,
              help="Allowed drop in Dice before a figure counts as a regression. Default: the baseline's, else 0.02.")
@click.option("--update-baseline", is_flag=True,
              help="Write this run alone as the baseline (per-image scores, no spread); "
                   "`petseg-bench baseline` builds one from several runs.")
def check(run_dir, baseline_file, tolerance, update_baseline):
    """Compare the run in RUN_DIR with a baseline; exit 1 if Dice regressed past the tolerance."""
    from .reporting.check import check_run

    if update_baseline:
        refuse_output_over_inputs(baseline_file, {"run folder": Path(run_dir)}, "--baseline")
    outcome = check_run(Path(run_dir), Path(baseline_file), tolerance, update_baseline)
    click.echo(outcome.text)
    if outcome.error:
        raise PetsegError(outcome.error)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "out_file", type=click.Path(dir_okay=False), required=True, help="The baseline JSON to write.")
@click.option("--tolerance", type=FiniteFloat(min=0), default=None,
              help="Allowed drop beyond the runs' spread. Default: the existing baseline's, else 0.02.")
def baseline(run_dirs, out_file, tolerance):
    """Build a `check` baseline from several runs of one sweep (training seeds, fp32/bf16, CPUs):
    per figure the mean and spread over the runs, and per-image scores for paired comparison."""
    from .reporting.check import write_baseline

    refuse_output_over_inputs(out_file, [("run folder", d) for d in run_dirs])
    click.echo(write_baseline([Path(d) for d in run_dirs], Path(out_file), tolerance).text)


@main.command()
@click.option("--checkpoints", "checkpoints_dir", type=click.Path(file_okay=False), default="checkpoints", show_default=True,
              help="Folder with <model>/best.pt: every checkpoint found is offered.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
def app(checkpoints_dir, host, port):
    """The interactive page: upload a photo, pick a model, click on the pet, watch it under corruption."""
    from .app import gradio_missing

    missing = gradio_missing()
    if missing:
        raise PetsegError(missing)
    from .app.page import check_bind, launch

    check_bind(host, port)  # an address or port it cannot serve on: one line, said first
    click.echo(f"petseg-bench app on http://{host}:{port} (checkpoints: {checkpoints_dir}); Ctrl-C stops it", err=True)
    launch(Path(checkpoints_dir), host, port)



@main.command("pseudo-label")
@click.argument("checkpoint_path", metavar="CHECKPOINT", type=click.Path(dir_okay=False))
@click.option("--unlabelled", "unlabelled_dir", type=click.Path(file_okay=False), default="auto", show_default=True,
              help="Photos without masks (images/ + labels.csv); 'auto': the folder <data root>-unlabelled.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="New folder for the pseudo labels (processed layout + pseudo-labels.json); "
                   "the same command continues an interrupted run in it.")
@data_root_option
@click.option("--threshold", type=FiniteFloat(min=0, max=1), default=0.9, show_default=True,
              help="Pixels whose largest softmax probability is below this become void (ignored in training).")
@click.option("--wrong-species", type=click.Choice(["void", "relabel", "keep"]), default="void", show_default=True,
              help="Pet pixels of the species the photo is not (labels.csv): void them, relabel them as the "
                   "photo's species, or keep them.")
@click.option("--limit", type=int, default=None, help="Label a fixed seeded subset of N photos.")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=16, show_default=True)
@click.option("--precision", default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True)
def pseudo_label_cmd(checkpoint_path, unlabelled_dir, out_dir, data_root, **opts):
    """Pseudo labels of the unlabelled photos by a teacher checkpoint (train a student with --pseudo OUT)."""
    from .engine.pseudo_label import PseudoJob, pseudo_label
    from .paths import checkpoint_inputs

    root = resolve_data_root(data_root)
    photos = Path(f"{root.resolve()}-unlabelled") if unlabelled_dir == "auto" else Path(unlabelled_dir)
    refuse_output_over_inputs(out_dir, {**checkpoint_inputs(checkpoint_path), "data root": root,
                                        "unlabelled photos": photos})
    job = PseudoJob(checkpoint=Path(checkpoint_path), unlabelled=photos, out_dir=Path(out_dir), data_root=root,
                    threshold=opts["threshold"], wrong_species=opts["wrong_species"], limit=opts["limit"],
                    batch_size=opts["batch_size"], device=opts["device"], precision=opts["precision"])
    m = pseudo_label(job, log=lambda line: click.echo(line, err=True))
    kept = "n/a" if m["kept_fraction"] is None else f"{m['kept_fraction']:.3f}"
    click.echo(f"{m['n_images']} of {m['n_photos']} photos pseudo-labelled ({m['n_skipped']} skipped), "
               f"kept-pixel fraction {kept} at threshold {m['threshold']:g}"
               + (f", {m['images_per_s']:g} images/s" if m.get("images_per_s") else ""))
    click.echo(f"written: {Path(out_dir) / 'pseudo-labels.json'}; train a student with --pseudo {out_dir}")


@main.command("export")
@click.argument("source", metavar="CKPT", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), required=True)
@click.option("--out", "out_file", type=click.Path(dir_okay=False), required=True)
@click.option("--model-opt", "model_opts", multiple=True, metavar="KEY=VALUE",
              help="Tagging an ONNX/TorchScript file made elsewhere: in_size=, mean=, std=, classes=, channel_order=.")
def export_cmd(source, fmt, out_file, model_opts):
    """Export a checkpoint as an ONNX or TorchScript file (run it with --models onnx:FILE)."""
    from .engine.export import export

    refuse_output_over_inputs(out_file, {"checkpoint": Path(source)})
    done = export(Path(source), fmt, Path(out_file), pairs_to_dict(model_opts))
    click.echo(f"exported: {done.path} ({done.note or f'max |logit difference| vs torch: {done.max_diff:.2e}'})")
    click.echo(f"run it with: petseg-bench run --models {fmt}:{done.path} ...")


def pairs_to_dict(pairs) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise PetsegError(f"--model-opt needs KEY=VALUE, got {pair!r}")
        out[key.strip().replace("-", "_")] = value
    return out


@main.group("plugin", cls=Group)
def plugin_group() -> None:
    """Check that plugins keep the engine's contract."""


@plugin_group.command("check")
@click.argument("names", metavar="NAME...", nargs=-1, required=True)
@click.option("--model-opt", "model_opts", multiple=True, metavar="KEY=VALUE", help="Options for the models checked.")
def plugin_check(names, model_opts):
    """Run models, backbones, perturbations and metrics (names, patterns, all, or family keys)
    through everything the engine does to them; one line per broken promise."""
    from .testing import check_names

    report = check_names(names, pairs_to_dict(model_opts), log=lambda m: click.echo(m, err=True))
    click.echo(report.text)
    if not report.ok:
        raise PetsegError(f"plugin check: {report.failed} of {report.checked} failed")


if __name__ == "__main__":  # pragma: no cover
    main()
