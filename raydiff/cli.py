"""The ``raydiff`` command line: single-category debugging and small runs.

Every command parses options, loads the config and calls one library function. Errors caused by
the user's input are printed as one line with the fix (a traceback only with ``--debug``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from raydiff.config import Config, load_config
from raydiff.errors import RaydiffError

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "textures.yaml"


class RaydiffGroup(click.Group):
    """A group that turns :class:`RaydiffError` into one readable line (``--debug`` for tracebacks)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RaydiffError as err:
            if ctx.params.get("debug"):
                raise
            click.secho(f"error: {err}", fg="red", err=True)
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


def parse_set(values: tuple[str, ...]) -> dict[str, Any]:
    """``--set models.lr=3e-4`` → ``{"models.lr": 0.0003}`` (values parsed as YAML scalars/lists)."""
    out: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"'{item}' is not KEY=VALUE (e.g. models.train_steps=200)", param_hint="--set")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw)
    return out


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by the commands that read a config; they override the YAML's keys."""

    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=f"YAML config (default: {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[1])}).",
    )
    @click.option("--dataset-root", type=click.Path(path_type=Path), help="Overrides dataset.root.")
    @click.option("--output", "output_root", type=click.Path(path_type=Path), help="Overrides output.root.")
    @click.option("--categories", help="Comma-separated; overrides dataset.categories.")
    @click.option("--seed", type=int, help="Overrides seed.")
    @click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config key (repeatable).")
    @functools.wraps(func)
    def wrapper(
        config_path: Path | None,
        dataset_root: Path | None,
        output_root: Path | None,
        categories: str | None,
        seed: int | None,
        sets: tuple[str, ...],
        **kwargs: Any,
    ) -> Any:
        overrides = parse_set(sets)
        if dataset_root is not None:
            overrides["dataset.root"] = str(dataset_root.resolve())
        if output_root is not None:
            overrides["output.root"] = str(output_root)
        if categories:
            overrides["dataset.categories"] = [c.strip() for c in categories.split(",") if c.strip()]
        if seed is not None:
            overrides["seed"] = seed
        cfg = load_config(config_path or DEFAULT_CONFIG, overrides)
        return func(cfg=cfg, **kwargs)

    return wrapper


def print_table(df: Any) -> None:
    """Print a polars DataFrame without truncation."""
    import polars as pl

    with pl.Config(tbl_rows=-1, tbl_cols=-1, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
        click.echo(df)


# --------------------------------------------------------------------------------------------


@main.command("make-textures")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", default=64, show_default=True, help="Image side in pixels (256 for GPU runs).")
@click.option("--seed", default=0, show_default=True)
def make_textures_cmd(out: Path, size: int, seed: int) -> None:
    """Write the texture benchmark (MVTec layout) generated from scikit-image's photos.

    \b
    Example:
      raydiff make-textures raydiff-out/data/textures --size 64
    """
    from raydiff.data.textures import make_textures

    path = make_textures(out, size=size, seed=seed)
    click.echo(f"textures: {path}")


@main.command()
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(["mvtec", "visa", "btad", "generic"]),
    default=None,
    help="Layout of DIRECTORY (default mvtec; with --config, the config's dataset.kind).",
)
@config_options
def validate(cfg: Config, directory: Path | None, kind: str | None) -> None:
    """Check a dataset folder (or the config and the dataset it names); print counts.

    Exits non-zero with one line naming the file and the fix on the first problem.

    \b
    Examples:
      raydiff validate ../shared/data/real/MPDD
      raydiff validate --config configs/mvtec.yaml --dataset-root /data/mvtec
    """
    from raydiff.workflow import validate_dataset_for

    summary = validate_dataset_for(cfg, root=directory, kind=kind)
    print_table(summary.table())
    click.echo(f"ok: {summary.describe()}")


@main.command()
@click.option("--output", "output_root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output root (default: the config's, raydiff-out/).")
def demo(output_root: Path | None) -> None:
    """Run the main job on the embedded texture benchmark (configs/textures.yaml).

    \b
    Example:
      raydiff demo
    """
    from raydiff.workflow import demo as run_demo

    run_demo(output_root)
