"""The ``raydiff`` command line: single-category debugging and small runs.

Every command parses options, loads the config and calls one library function. Errors caused by
the user's input are printed as one line with the fix (a traceback only with ``--debug``).
"""

from __future__ import annotations

import functools
import inspect
import json
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from raydiff.config import (
    DATASET_LAYOUTS,
    DEFAULT_CONFIG,
    Config,
    check_plain_name,
    dump_config,
    flag_overrides,
    load_config,
    load_config_explained,
    parse_overrides,
)
from raydiff.errors import RaydiffError

# Every command imports what it runs inside its own body: `raydiff --help` and a mistyped option
# answer in 0.1 s instead of the 3-5 s that torch, Ray, polars and matplotlib take to import.

DEBUG_HINT = "(raydiff --debug ... shows the traceback)"


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings as one line, ``warning: <message>`` (not Python's file:line source format)."""
    click.secho(f"warning: {message}", fg="yellow", err=True)


class RaydiffGroup(click.Group):
    """A group that turns :class:`RaydiffError` into one readable line (``--debug`` for tracebacks).

    ``--debug`` is accepted anywhere before a ``--`` (``raydiff validate --debug DIR`` as well as
    ``raydiff --debug validate DIR``).
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        cut = args.index("--") if "--" in args else len(args)
        if "--debug" in args[:cut]:
            args = [a for a in args[:cut] if a != "--debug"] + args[cut:]
            args.insert(0, "--debug")
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except RaydiffError as err:
                if debug:
                    raise
                click.secho(f"error: {err} {DEBUG_HINT}", fg="red", err=True)
                sys.exit(2)


@click.group(cls=RaydiffGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.version_option(package_name="raydiff")
def main(debug: bool) -> None:
    """raydiff: diffusion-based anomaly detection, trained and scored on Ray.

    \b
    Example:
      raydiff demo
      raydiff validate --config configs/mvtec.yaml
    """


def config_options(func: Callable[..., Any] | None = None, *, one_category: bool = False,
                   explained: bool = False, smoke_test: bool = False) -> Any:
    """Options shared by the commands that read a config; they override the YAML's keys
    (``raydiff.config.flag_overrides``, which jobs/sweep.py uses too).

    ``one_category``: a command that works on one category takes ``--category NAME`` instead of
    ``--categories``. ``explained``: the command also gets ``origins`` (where each value came from).
    ``smoke_test``: the command takes ``--smoke-test`` (a tiny budget) and gets ``smoke_test``.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(config_path: Path | None, dataset_root: Path | None, output_root: Path | None,
                    seed: int | None, sets: tuple[str, ...], categories: str | None = None, **kwargs: Any) -> Any:
            if dataset_root is None and kwargs.get("directory") is not None:  # validate DIR: DIR is the root
                dataset_root = kwargs["directory"]
            overrides, origins = flag_overrides(dataset_root, output_root, categories, seed, sets,
                                                smoke_test=bool(kwargs.get("smoke_test")))
            if one_category and kwargs.get("category"):
                kwargs["category"] = check_plain_name(kwargs["category"], "--category", "--category")
            path = config_path.expanduser() if config_path is not None else DEFAULT_CONFIG
            cfg, rows = load_config_explained(path, overrides, origins=origins)
            if explained:
                kwargs["origins"] = rows
            if "config_given" in _params(func):
                kwargs["config_given"] = config_path is not None
            return func(cfg=cfg, **kwargs)

        options = [
            click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                         help=f"YAML config (default: {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[1])})."),
            click.option("--dataset-root", type=click.Path(path_type=Path), help="Overrides dataset.root."),
            click.option("--output", "output_root", type=click.Path(path_type=Path), help="Overrides output.root."),
            click.option("--seed", type=int, help="Overrides seed."),
            click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                         help="Override any config key (repeatable), e.g. --set models.lr=3e-4."),
        ]
        if not one_category:
            options.append(click.option("--categories", help="Comma-separated; overrides dataset.categories."))
        if smoke_test:
            options.append(click.option("--smoke-test", is_flag=True,
                                        help="Tiny budget: few steps, the first category, 4 test images; checks the set-up."))
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate(func) if func is not None else decorate


def _params(func: Callable[..., Any]) -> set[str]:

    return set(inspect.signature(func).parameters)


def print_table(df: Any) -> None:
    """Print a polars DataFrame without truncation."""
    import polars as pl

    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
        click.echo(df)


# --------------------------------------------------------------------------------------------


@main.command("make-textures")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", type=int, default=None,
              help="Image side in pixels (256 for GPU runs; default: the config's dataset.image_size, else 64).")
@click.option("--seed", type=int, default=None, help="Seed of the images (default: the config's, else 0).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Draw with this config's textures: section (counts, crop, defect floors), e.g. "
                   "configs/textures.yaml for the demo's benchmark; without it, the generator's defaults.")
def make_textures_cmd(out: Path, size: int | None, seed: int | None, config_path: Path | None) -> None:
    """Write the texture benchmark (MVTec layout) generated from scikit-image's photos.

    \b
    Example:
      raydiff make-textures raydiff-out/data/textures --size 64
      raydiff make-textures /tmp/demo-data --config configs/textures.yaml --seed 1
    """
    if config_path is not None:
        from raydiff.workflow import write_textures

        path = write_textures(load_config(config_path), out, size, seed)
    else:
        from raydiff.data.textures import make_textures

        path = make_textures(out, size=64 if size is None else size, seed=0 if seed is None else seed)
    click.echo(f"textures: {path}")


@main.command()
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@click.option(
    "--layout",
    "kind",
    type=click.Choice(DATASET_LAYOUTS),
    default=None,
    help="Layout of DIRECTORY (default: with --config, the config's dataset.layout; else detected from the folder).",
)
@config_options
def validate(cfg: Config, directory: Path | None, kind: str | None, config_given: bool) -> None:
    """Check a dataset folder (or the config and the dataset it names); print counts.

    Checks what the pipeline needs too: image modes, enough training images for the hold-out,
    an image size the model preset can use. Exits non-zero with one line naming the file and
    the fix on the first problem.

    \b
    Examples:
      raydiff validate ../shared/data/real/MPDD
      raydiff validate /data/visa --config configs/visa.yaml
      raydiff validate --config configs/mvtec.yaml --dataset-root /data/mvtec
    """
    from raydiff.workflow import validate_dataset_for

    if directory is not None:
        directory = directory.expanduser()
        if kind is None and config_given:
            kind = cfg.dataset.layout
    summary = validate_dataset_for(cfg, root=directory, kind=kind)
    print_table(summary.table())
    click.echo(f"ok: {summary.describe()}")


def _category(cfg: Config, category: str | None) -> tuple[str, Any]:
    """Resolve the one category a debugging command works on: ``--category``, else the config's
    only category, else the first found (said on stderr). Returns it and the dataset prepared for
    it (``raydiff.workflow.Prepared``, whose ``cfg`` names that category)."""
    from raydiff.workflow import prepare

    if not category and len(cfg.dataset.categories) == 1:
        category = cfg.dataset.categories[0]
    if category:
        cfg = replace(cfg, dataset=replace(cfg.dataset, categories=(category,)))
    prepared = prepare(cfg)
    if not category:
        found = prepared.categories
        category = found[0]
        if len(found) > 1:
            click.echo(f"category: {category} (the first of {len(found)}; pick another with --category)", err=True)
    return category, prepared


@main.command()
@config_options(one_category=True)
@click.option("--category", help="Category to train (default: the first).")
@click.option("--kind", "--model", "kinds", multiple=True,
              help="Model name(s) of the config (default: those the enabled variants need).")
@click.option("--ray", "use_ray", is_flag=True, help="Train on the local Ray (Ray Train) instead of in process.")
def train(cfg: Config, category: str | None, kinds: tuple[str, ...], use_ray: bool) -> None:
    """Train one category's diffusion model(s); a finished model is skipped, a partial one resumes.

    \b
    Example:
      raydiff train --category brick --kind pixel --set models.train_steps=200
    """
    from raydiff.train.loop import train_one
    from raydiff.workflow import ray_session

    category, prepared = _category(cfg, category)
    cfg = prepared.cfg
    unknown = [k for k in kinds if k not in cfg.models.names]
    if unknown:
        raise click.UsageError(f"--model {unknown[0]}: not a model of this config; its models: "
                               f"{', '.join(cfg.models.names)}.")
    kinds = kinds or cfg.models_needed()
    if use_ray:
        from raydiff.train.launch import train_all

        with ray_session(cfg):
            paths = train_all(prepared, [category], list(kinds))
    else:
        paths = [train_one(prepared, category, k, progress=click.echo) for k in kinds]
    for p in paths:
        click.echo(f"model: {p}")


@main.command()
@config_options(one_category=True)
@click.option("--category", help="Category to fit (default: the first).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="What torch computes on (default: the config's ray.device).")
def fit(cfg: Config, category: str | None, device: str | None) -> None:
    """Fit one category's KNN prior and normalisation statistics (after training).

    \b
    Example:
      raydiff fit --category brick
    """
    from raydiff.workflow import fit_one

    category, prepared = _category(cfg, category)
    click.echo(f"fitted: {fit_one(prepared, category, device, progress=click.echo)}")


@main.command()
@config_options(one_category=True)
@click.option("--category", help="Category to score (default: the first).")
@click.option("--variant", "variants", multiple=True, help="Variant id(s) (default: the config's enabled ones).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Score only N test images (half good, half defective).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="cuda: the actors ask Ray for GPUs and compute on them (default: the config's ray section).")
def score(cfg: Config, category: str | None, variants: tuple[str, ...], limit: int | None, device: str | None) -> None:
    """Score one category's test images with the chosen variants (Ray Data → Parquet).

    \b
    Example:
      raydiff score --category brick --variant kl --variant trend --limit 8
    """
    from raydiff.pipeline import score_category
    from raydiff.runs import write_manifest, write_run_metadata
    from raydiff.workflow import ray_session, require_trained

    if variants:
        cfg = replace(cfg, variants=replace(cfg.variants, enabled=tuple(variants)))
    if device:
        cfg = replace(cfg, ray=replace(cfg.ray, device=device, accelerator="gpu" if device == "cuda" else cfg.ray.accelerator))
    category, prepared = _category(cfg, category)
    cfg = prepared.cfg
    require_trained(cfg, category)  # before Ray starts: one line, not a worker's traceback
    write_manifest(write_run_metadata(cfg, categories=(category,)), prepared.manifest)
    with ray_session(cfg, click.echo):
        s = score_category(prepared, category, limit=limit, say=click.echo)
    click.echo(f"{category}: {s['images']} images in {s['seconds']:.1f} s; written {s['written']}, skipped {s['skipped']}")


@main.command()
@config_options
@click.option("--allow-incomplete", is_flag=True,
              help="Write metrics for the complete (category, variant) pairs even when others are missing.")
def metrics(cfg: Config, allow_incomplete: bool) -> None:
    """Compute exact metrics of the config's run folder (metrics.csv / .parquet).

    Fails, naming them, when some (category, variant) scores are missing or incomplete.

    \b
    Example:
      raydiff metrics --config configs/textures.yaml
    """
    from raydiff.paths import run_dir
    from raydiff.runs import limited_pairs
    from raydiff.workflow import evaluate

    table, _, missing = evaluate(cfg, allow_incomplete=allow_incomplete)
    print_table(summary(table))
    if missing:
        click.secho(f"warning: left out (scores missing or incomplete): {', '.join(missing)}", fg="yellow", err=True)
    limited = limited_pairs(run_dir(cfg))
    if limited:
        shown = ", ".join(f"{pair} ({n} images)" for pair, n in list(limited.items())[:12])
        click.secho(f"warning: scored with --limit, a subset of the test set (not the benchmark's numbers; n_images "
                    f"says how many): {shown}{' …' if len(limited) > 12 else ''}. Re-run `raydiff score` without "
                    "--limit for the full set.", fg="yellow", err=True)
    click.echo(f"metrics: {run_dir(cfg) / 'metrics.csv'}")


@main.command()
@config_options(smoke_test=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Score only N test images per category.")
@click.option("--overwrite", is_flag=True, help="Delete a run folder written by a different config instead of refusing.")
def sweep(cfg: Config, limit: int | None, overwrite: bool, smoke_test: bool) -> None:
    """Everything for a config on the current Ray cluster (or a local one): train, fit, score, metrics.

    The same options as python jobs/sweep.py (the sweep as a Ray job). The default config
    writes its texture data under the output root when it is missing.

    \b
    Example:
      raydiff sweep --config configs/real-smoke.yaml
      raydiff sweep --smoke-test --output /tmp/smoke
    """
    from raydiff.workflow import sweep as run_sweep

    result = run_sweep(cfg, limit=limit, overwrite=overwrite, smoke_test=smoke_test, progress=click.echo)
    show_sweep(result)


#: The metrics table's columns printed on the terminal (metrics.csv has them all).
SUMMARY_COLUMNS = ("category", "variant", "i_auroc", "p_auroc", "p_ap", "aupro", "argmax_on_border", "seconds_per_image")


def summary(table: Any) -> Any:
    """The metrics table as printed: SUMMARY_COLUMNS, best I-AUROC first per category."""
    cols = [c for c in SUMMARY_COLUMNS if c in table.columns]
    return table.select(cols).sort(["category", "i_auroc"], descending=[False, True], nulls_last=True)


def show_sweep(result: dict[str, Any]) -> None:
    """The end of a sweep: the metrics table best first per category, placement, where things are."""
    from raydiff.workflow import describe_stages

    print_table(summary(result["tables"]["metrics"]))
    for line in describe_stages(result["stages"]):
        click.echo(line)
    click.echo(f"run folder: {result['run_dir']}")
    click.echo(f"metrics:    {result['metrics']}")
    if "report" in result:
        click.echo(f"report:     {result['report']}")
        click.echo(f"open it:    {open_command(result['report'])}")


def open_command(path: str | Path) -> str:
    """The shell command that opens ``path`` (an HTML file) in the default browser, on any OS:
    this Python's standard-library ``webbrowser`` with the file's absolute ``file://`` URI."""
    return f"{shlex.quote(sys.executable)} -m webbrowser -t {shlex.quote(Path(path).resolve().as_uri())}"


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--output", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write report.html and its figures (default: RUN_DIR).")
@click.option("--overwrite", is_flag=True, help="Replace report files in --output that another run or you wrote.")
def report(run_dir: Path, out: Path | None, overwrite: bool) -> None:
    """Write the HTML report (tables, ROC/PRO curves, example maps) of a run folder.

    \b
    Example:
      raydiff report raydiff-out/<run_id>
    """
    from raydiff.report import write_report

    click.echo(f"report: {write_report(run_dir, out, overwrite=overwrite)}")


def _not_nan(param: click.Parameter, value: float) -> float:
    """click's FloatRange lets NaN through (every comparison with it is false)."""
    if value != value:
        raise click.BadParameter(f"{value} is not a number in the allowed range.", param=param)
    return value


@main.command("inspect")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--fpr", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.01,
              show_default=True, callback=lambda _ctx, param, value: _not_nan(param, value),
              help="Pixel false-positive rate that sets each threshold, in (0, 1).")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="Worst normal images listed per variant.")
@click.option("--coverage-below", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.1, show_default=True,
              callback=lambda _ctx, param, value: _not_nan(param, value),
              help="A defect region is missed when less than this fraction (0-1] of it is above the threshold.")
@click.option("--output", "save", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write every table as Parquet into this folder.")
def inspect_cmd(run_dir: Path, fpr: float, top: int, coverage_below: float, save: Path | None) -> None:
    """Error analysis of a run: thresholds, worst false positives, missed defect regions.

    \b
    Example:
      raydiff inspect raydiff-out/<run_id> --fpr 0.01 --top 5 --output tables/
    """
    from raydiff.inspect_run import inspect_run

    tables = inspect_run(run_dir, fpr=fpr, top=top, coverage_below=coverage_below)
    for name, table in tables.items():
        click.secho(f"\n{name}", bold=True)
        print_table(table)
        if save is not None:
            save.mkdir(parents=True, exist_ok=True)
            table.write_parquet(save / f"{name}.parquet")
    if save is not None:
        click.echo(f"\ntables: {save}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--output", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for scores.csv/.parquet, pixels/ and overlays/ (new, or an earlier predict output).")
@click.option("--variant", "variants", multiple=True, help="Variant(s) to score with (default: the run's enabled ones).")
@click.option("--category", help="The run's category whose models score the images (default: its only one).")
@click.option("--fpr", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.01, show_default=True,
              help="Normal-pixel false-positive rate of the overlays' threshold (from the run's normal test images).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="What torch computes on (default: cpu; with --ray, the run's ray section).")
@click.option("--ray", "use_ray", is_flag=True,
              help="Score on Ray (the run's ray section: a local Ray, or ray.address / RAY_ADDRESS's cluster).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a ray.* key of the run's config (repeatable), e.g. --set ray.address=auto.")
def predict(run_dir: Path, images: tuple[Path, ...], out: Path, variants: tuple[str, ...], category: str | None,
            fpr: float, device: str | None, use_ray: bool, sets: tuple[str, ...]) -> None:
    """Score new images (files or folders, any size) with a finished run's models: per-image
    scores, per-pixel maps and PNG overlays with each variant's threshold. With --ray, Ray
    actors score (on a cluster, its GPU nodes) and this process writes the same files.

    \b
    Example:
      raydiff predict raydiff-out/<run_id> new-parts/ --output predictions/ --variant trend
      raydiff predict raydiff-out/<run_id> new-parts/ --output predictions/ --ray --set ray.address=auto
    """
    from raydiff.predict import predict as run_predict
    from raydiff.predict import prepare_prediction

    overrides = parse_overrides(sets)
    if not use_ray:
        result = run_predict(run_dir, images, out, variants, category, fpr, device or "cpu", click.echo, overrides)
    else:
        from raydiff.predict_ray import predict_on_ray
        from raydiff.workflow import ray_session

        if device is not None:  # as `raydiff score --device`: cuda asks Ray for GPUs
            overrides.setdefault("ray.device", device)
            if device == "cuda":
                overrides.setdefault("ray.accelerator", "gpu")
        job = prepare_prediction(run_dir, images, out, variants, category, fpr, overrides, click.echo)
        with ray_session(job.cfg, click.echo):  # started after every input is checked
            result = predict_on_ray(job, progress=click.echo)
    print_table(result["scores"].select("variant", "image_id", "score", "pixel_threshold", "pixels_above"))
    click.echo(f"predictions: {result['output']}")


@main.command("export-mvtec-ad2")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--variant", required=True, help="The variant whose maps are submitted (one per image).")
@click.option("--output", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for submission/ (what the server takes), scores.csv/.parquet and meta.json.")
@click.option("--split", "splits", multiple=True,
              help="Private test set to score, test_private or test_private_mixed (repeatable; default: both).")
@click.option("--fpr", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.01, show_default=True,
              help="Normal-pixel false-positive rate of the binary maps' threshold (from the run's normal test images).")
@click.option("--dataset-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the MVTec AD 2 folder is now (default: the run's dataset.root).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="What torch computes on.")
def export_mvtec_ad2_cmd(run_dir: Path, variant: str, out: Path, splits: tuple[str, ...], fpr: float,
                         dataset_root: Path | None, device: str) -> None:
    """Score MVTec AD 2's private test sets (no ground truth) with a finished mvtec-ad2 run and
    write them as MVTec's evaluation server takes them: float16 TIFF maps and 0/255 PNG masks
    per image, at each image's own size, under OUTPUT/submission.

    \b
    Example:
      raydiff export-mvtec-ad2 raydiff-out/<run_id> --variant trend --output ad2/
    """
    from raydiff.export_mvtec_ad2 import export_mvtec_ad2

    result = export_mvtec_ad2(run_dir, out, variant, splits, fpr, dataset_root, device, progress=click.echo)
    for problem in result["problems"]:
        click.echo(f"not accepted by the server as it is: {problem}", err=True)
    click.echo(f"submission: {result['submission']}")


@main.command("config")
@config_options(explained=True)
@click.option("--format", "fmt", type=click.Choice(["table", "yaml"]), default="table", show_default=True,
              help="table: every key with its value and where it came from; yaml: the effective config.")
def config_cmd(cfg: Config, origins: list[dict[str, Any]], fmt: str) -> None:
    """Print the effective config after overrides and ${VAR} expansion, and where each value came
    from (the file, an option such as --set, an environment variable, or the default).

    \b
    Example:
      raydiff config --config configs/mvtec.yaml --set models.lr=3e-4
    """


    if fmt == "yaml":
        click.echo(dump_config(cfg), nl=False)
        return
    width = max(len(r["key"]) for r in origins)
    for r in origins:
        value = json.dumps(r["value"]) if not isinstance(r["value"], str) else r["value"]
        click.echo(f"{r['key']:<{width}}  {value:<24}  {r['origin']}")


@main.command("plan")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="YAML config (default: configs/textures.yaml).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config key (repeatable).")
@click.option("--categories", help="Comma-separated; overrides dataset.categories.")
@click.option("--mfu", type=click.FloatRange(0, 1, min_open=True), default=0.35, show_default=True,
              help="Model-FLOP utilisation the estimate assumes.")
@click.option("--gpu-tflops", type=click.FloatRange(0, min_open=True), default=989.0, show_default=True,
              help="Peak TFLOP/s of one GPU (989: H100/H200 dense bf16).")
@click.option("--test-images", type=click.IntRange(1), default=100, show_default=True,
              help="Test images per category (MVTec AD's categories use their own counts).")
@click.option("--train-images", type=click.IntRange(1), default=200, show_default=True,
              help="Normal training images per category (likewise).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the plan as JSON (keys: models, variants, cost).")
def plan_cmd(config_path: Path | None, sets: tuple[str, ...], categories: str | None, mfu: float,
             gpu_tflops: float, test_images: int, train_images: int, json_out: Path | None) -> None:
    """List what a config trains and scores, and estimate its GPU-hours; no data and no GPU needed.

    \b
    Example:
      raydiff plan --config configs/mvtec-papers.yaml --json plan.json
    """
    from raydiff.io import atomic_write_text
    from raydiff.plan import build_plan

    overrides, origins = flag_overrides(None, None, categories, None, sets)
    # The plan reads no data: a dataset root given by an unset ${VAR} does not stop it.
    overrides.setdefault("dataset.root", ".")
    origins.setdefault("dataset.root", "raydiff plan (reads no data)")
    cfg = load_config(config_path.expanduser() if config_path else DEFAULT_CONFIG, overrides, origins=origins)
    plan = build_plan(cfg, mfu=mfu, gpu_tflops=gpu_tflops, test_images=test_images, train_images=train_images)
    click.echo(f"config: {plan['config']}")
    click.echo(f"models (trained once per category, {len(plan['models'])}):")

    def budget(m: dict[str, Any]) -> str:
        return f"{m['train_steps']} steps" if m["train_epochs"] is None else f"{m['train_epochs']} epochs"

    for m in plan["models"]:
        betas = "" if m["beta_start"] is None else f" {m['beta_start']:g}->{m['beta_end']:g}"
        click.echo(f"  {m['name']}: {m['arch']} {m['preset']}, {m['schedule']}{betas} T={m['timesteps']}, "
                   f"noise {m['noise']}, variance {m['variance']}, {budget(m)} x {m['batch_size']}, "
                   f"lr {m['lr']:g}{' linear to 0' if m['lr_schedule'] == 'linear' else ''}, "
                   f"wd {m['weight_decay']:g}, ema {m['ema_decay']:g}; "
                   f"{m['forward_gflop']:.3g} GFLOP/forward; used by {', '.join(m['used_by'])}")
        click.echo(f"      init: {m['init']}")
        if m["train_epochs"] is not None:
            click.echo("      steps per category: " + ", ".join(f"{c} {n}" for c, n in m["train_steps_by_category"].items()))
    click.echo(f"variants ({len(plan['variants'])}):")
    for v in plan["variants"]:
        shared = "" if v["shares_computation_with"] == v["name"] else f" (shares its pass with {v['shares_computation_with']})"
        extra = f", backward {v['unet_backwards_per_image']:g}" if v["unet_backwards_per_image"] else ""
        click.echo(f"  {v['name']}: {v['method']} on {v['model']}; UNet forwards/image {v['unet_forwards_per_image']:g}"
                   f"{extra}{shared}" + (f"; reproduces {v['reproduces']}" if v["reproduces"] else ""))
        params = ", ".join(f"{k}={json.dumps(val)}" for k, val in v["params"].items())
        click.echo(f"      {params}")
        for cat, changed in v["per_category"].items():
            if changed:
                click.echo(f"      {cat}: " + ", ".join(f"{k}={json.dumps(val)}" for k, val in changed.items()))
    c = plan["cost"]
    click.echo(f"cost at MFU {c['mfu']:g} of {c['gpu_tflops']:g} TFLOP/s, {len(c['categories'])} categories "
               f"(image counts: {c['image_counts']}):")
    click.echo(f"  training {c['training_gpu_hours']:.3g} GPU-h, fitting {c['fit_gpu_hours']:.3g} GPU-h, "
               f"scoring {c['scoring_gpu_hours']:.3g} GPU-h; total {c['total_gpu_hours']:.3g} GPU-h")
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(plan, indent=2) + "\n")
        click.echo(f"plan: {json_out}")


@main.command()
@click.option("--output", "output_root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output root (default: the config's, raydiff-out/).")
@click.option("--seed", type=int, default=None,
              help="Seed of the images, their defects and the models (default: the config's, 0). Another seed "
                   "is another benchmark: its data goes to its own folder under the output root.")
def demo(output_root: Path | None, seed: int | None) -> None:
    """Run the main job on the embedded texture benchmark (configs/textures.yaml).

    \b
    Example:
      raydiff demo
      raydiff demo --seed 1 --output raydiff-seed1
    """
    from raydiff.workflow import demo_config, sweep, validate_dataset_for

    start = time.perf_counter()
    cfg = demo_config(output_root, seed)
    click.echo(f"[data] texture benchmark -> {cfg.dataset.root}")
    summary = validate_dataset_for(cfg)
    print_table(summary.table())
    click.echo(f"ok: {summary.describe()}")
    show_sweep(sweep(cfg, progress=click.echo))
    click.echo(f"demo finished in {time.perf_counter() - start:.0f} s")


@main.command()
@config_options(one_category=True)
@click.option("--category", help="Category to compare on (default: the first).")
@click.option("--reference", "references", multiple=True, required=True, metavar="KEY=PATH",
              help="A checkout of a reference implementation (repeatable): ddad=, dynad=, ran=, anoddpm=.")
@click.option("--method", "methods", multiple=True, metavar="NAME",
              help="Checks to run (repeatable; default: every check whose reference is given).")
@click.option("--good", "n_good", type=click.IntRange(1, 1000), default=4, show_default=True,
              help="Normal test images compared.")
@click.option("--defect", "n_defect", type=click.IntRange(0, 1000), default=4, show_default=True,
              help="Defective test images compared.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the table (markdown) here.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write every row and what was compared (JSON) here.")
def parity(cfg: Config, category: str | None, references: tuple[str, ...], methods: tuple[str, ...], n_good: int,
           n_defect: int, markdown_path: Path | None, json_path: Path | None, config_given: bool) -> None:
    """Compare raydiff's maps with the authors' reference code, stage by stage (docs/parity.md).

    The config's Gaussian and simplex pixel models are trained (or reused when complete) for
    the category and given to both implementations, with the same images and noise.

    \b
    Example:
      raydiff parity --reference ddad=../DDAD --reference dynad=../Dynamic-noise-AD \\
                     --reference ran=../anomaly_diff --reference anoddpm=../AnoDDPM
      raydiff parity --dataset-root ../shared/data/real/MPDD --set dataset.image_size=64 --reference ...
    """
    from raydiff.parity.compare import markdown
    from raydiff.parity.inputs import build_inputs
    from raydiff.parity.run import parse_references, run_parity
    from raydiff.workflow import write_textures

    refs = parse_references(references)
    if not config_given and not Path(cfg.dataset.root).exists():
        click.echo(f"[data] texture benchmark -> {cfg.dataset.root}")
        write_textures(cfg, Path(cfg.dataset.root))
    inputs = build_inputs(cfg, category, n_good, n_defect, progress=click.echo)
    result = run_parity(inputs, refs, methods, progress=click.echo)
    table = markdown(result.rows)
    click.echo(table)
    for name, why in result.skipped.items():
        click.echo(f"skipped {name}: {why}")
    counts = {s: sum(r.status == s for r in result.rows) for s in ("equal", "deviation", "DIFFERS")}
    click.echo(f"{len(result.rows)} stages: {counts['equal']} equal, {counts['deviation']} deliberate deviations, "
               f"{counts['DIFFERS']} differ")
    if markdown_path:
        markdown_path.write_text(table)
    if json_path:
        json_path.write_text(json.dumps({"rows": [r.row() for r in result.rows], "references": result.references,
                                         "skipped": result.skipped, "context": result.context}, indent=2, default=str))
    if counts["DIFFERS"]:
        sys.exit(1)


def _add_bench() -> None:
    from raydiff.bench.cli import bench

    main.add_command(bench)


_add_bench()
