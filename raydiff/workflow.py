"""Library entry points behind the CLI and jobs/: each does one whole step for a config."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import polars as pl

from raydiff.config import Config
from raydiff.errors import DatasetError


def scan(cfg: Config, root: Path | None = None, kind: str | None = None) -> pl.DataFrame:
    """The manifest of the config's dataset, or of ``root`` read with layout ``kind``."""
    from raydiff.data.manifest import scan_dataset

    if root is not None:  # a folder named on the command line: its own layout and name
        return scan_dataset(kind or "mvtec", Path(root), seed=cfg.seed)
    root = Path(cfg.dataset.root)
    if not root.is_dir():
        raise DatasetError(root, "dataset folder does not exist.", "check dataset.root / --dataset-root.")
    return scan_dataset(
        kind or cfg.dataset.kind, root, categories=cfg.dataset.categories, dataset_name=cfg.dataset.name, seed=cfg.seed
    )


def validate_dataset_for(cfg: Config, root: Path | None = None, kind: str | None = None) -> Any:
    """Scan and validate the dataset a config names (or ``root`` with layout ``kind``)."""
    from raydiff.data.validate import validate_dataset

    manifest = scan(cfg, root, kind)
    kind = kind or ("mvtec" if root is not None else cfg.dataset.kind)
    return validate_dataset(manifest, Path(root or cfg.dataset.root), kind=kind)


def demo(output_root: Path | None = None) -> dict[str, Any]:
    """The main job on the embedded default benchmark (configs/textures.yaml)."""
    from raydiff.cli import DEFAULT_CONFIG, print_table
    from raydiff.config import load_config
    from raydiff.data.textures import make_textures

    overrides = {"output.root": str(output_root)} if output_root else {}
    cfg = load_config(DEFAULT_CONFIG, overrides)
    start = time.perf_counter()
    click.echo(f"[1/2] texture dataset -> {cfg.dataset.root}")
    make_textures(Path(cfg.dataset.root), size=cfg.dataset.image_size, seed=cfg.seed)
    click.echo("[2/2] validating the dataset")
    summary = validate_dataset_for(cfg)
    print_table(summary.table())
    click.echo(f"ok: {summary.describe()} ({time.perf_counter() - start:.1f} s)")
    click.echo(
        "not built yet in this version: training (Ray Train), fitting, scoring every variant "
        "(Ray Data -> Parquet), metrics and the report. No metrics are printed until they are computed."
    )
    return {"dataset": cfg.dataset.root, "summary": summary}


# --------------------------------------------------------------------------------------------
# The sweep: prepare → train → fit → score → metrics (→ report)
# --------------------------------------------------------------------------------------------


def prepare(cfg: Config) -> pl.DataFrame:
    """Scan + validate the dataset, then mark the held-out normal images (split 'holdout')."""
    from raydiff.data.manifest import assign_holdout
    from raydiff.data.validate import validate_dataset

    manifest = scan(cfg)
    validate_dataset(manifest, Path(cfg.dataset.root), kind=cfg.dataset.kind)
    return assign_holdout(manifest, cfg.dataset.holdout_fraction, cfg.dataset.holdout_min, cfg.seed)


def categories_of(manifest: pl.DataFrame) -> list[str]:
    return sorted(manifest["category"].unique().to_list())


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("raydiff", "torch", "diffusers", "ray", "polars", "pyarrow", "faiss-cpu", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def write_run_metadata(cfg: Config) -> Path:
    """Write config.yaml + versions.json into the run folder; refuse a folder of another config."""
    import json

    from raydiff.config import dump_config, model_id, run_id
    from raydiff.errors import OutputError
    from raydiff.io import atomic_write_text
    from raydiff.paths import run_dir

    folder = run_dir(cfg)
    existing = folder / "config.yaml"
    if existing.is_file():
        import yaml

        from raydiff.config import config_from_dict

        try:
            other = config_from_dict(yaml.safe_load(existing.read_text()), where=str(existing))
        except Exception as err:  # a damaged or foreign file: never mix outputs
            raise OutputError(existing, f"cannot be read as a raydiff config ({err}).", "pick a new --output.") from None
        if run_id(other) != run_id(cfg):
            raise OutputError(
                folder,
                "this output folder was written by a different config.",
                "pick a new --output, or pass --overwrite to delete it.",
            )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(existing, dump_config(cfg))
        meta = {"versions": versions(), "seed": cfg.seed, "run_id": run_id(cfg), "model_id": model_id(cfg)}
        atomic_write_text(folder / "versions.json", json.dumps(meta, indent=2))
    except OSError as err:
        raise OutputError(folder, f"cannot write the output folder ({err.strerror}).", "check free space and permissions, or pick another --output.") from None
    return folder
