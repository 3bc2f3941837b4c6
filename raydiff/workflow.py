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
    """The main job on the embedded default benchmark (configs/textures.yaml), end to end."""
    from raydiff.cli import DEFAULT_CONFIG, print_table
    from raydiff.config import load_config
    from raydiff.data.textures import make_textures

    overrides = {"output.root": str(output_root)} if output_root else {}
    cfg = load_config(DEFAULT_CONFIG, overrides)
    start = time.perf_counter()
    click.echo(f"[data] texture benchmark -> {cfg.dataset.root}")
    make_textures(Path(cfg.dataset.root), size=cfg.dataset.image_size, seed=cfg.seed)
    summary = validate_dataset_for(cfg)
    print_table(summary.table())
    click.echo(f"ok: {summary.describe()}")
    result = sweep(cfg)
    click.echo(f"run folder: {result['run_dir']}")
    click.echo(f"metrics:    {result['metrics']}")
    if "report" in result:
        click.echo(f"report:     {result['report']}")
    click.echo(f"demo finished in {time.perf_counter() - start:.0f} s")
    return result


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


def write_run_metadata(cfg: Config, overwrite: bool = False) -> Path:
    """Write config.yaml + versions.json into the run folder; refuse a folder of another config
    (``overwrite``: delete that folder's scores first)."""
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
        if run_id(other) != run_id(cfg) and overwrite:
            import shutil

            click.echo(f"--overwrite: deleting {folder} (written by another config)")
            shutil.rmtree(folder)
        elif run_id(other) != run_id(cfg):
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


def init_ray(cfg: Config) -> bool:
    """Connect to the configured cluster or start a local Ray (dashboard on 127.0.0.1).

    - Inside ``ray job submit`` (``RAY_ADDRESS`` is set) or with ``ray.address`` configured:
      a plain connect; the job's runtime environment (``--working-dir``) applies as submitted.
    - Otherwise a local Ray with its dashboard on ``ray.dashboard_host``. The dashboard is not
      optional: Ray Train frees a finished run's placement group through a cleaner that asks the
      dashboard's State API, and without it the next runs wait for CPUs forever.

    Returns True when this call started Ray (the caller then shuts it down).
    """
    import os

    import ray

    if ray.is_initialized():
        return False
    if cfg.ray.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cfg.ray.address or None, log_to_driver=True)
    else:
        env = {"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}}
        ray.init(include_dashboard=True, dashboard_host=cfg.ray.dashboard_host, runtime_env=env, log_to_driver=True)
    return True


def load_images(cfg: Config, rows: pl.DataFrame, channels: int) -> Any:
    """Images of manifest rows as one tensor (N,C,H,W) in [-1, 1] (datasets are small)."""
    import numpy as np
    import torch

    from raydiff.data.images import load_image

    size = cfg.dataset.image_size
    if rows.height == 0:
        return torch.zeros((0, channels, size, size))
    arrays = [load_image(p, size, channels, cfg.dataset.fit) for p in rows["image_path"]]  # type: ignore[arg-type]
    return torch.from_numpy(np.stack(arrays))


def train_models(cfg: Config, manifest: pl.DataFrame, categories: list[str], use_ray: bool = True) -> list[Path]:
    """Train every missing (category, kind) the enabled variants need."""
    kinds = list(cfg.model_kinds_needed())
    if use_ray:
        from raydiff.train.launch import train_all

        return train_all(cfg, categories, kinds, manifest)
    from raydiff.train.loop import train_one

    return [train_one(cfg, c, k, manifest, progress=click.echo) for c in categories for k in kinds]


def fit_one(cfg: Config, category: str, manifest: pl.DataFrame, device: str | None = None) -> Path:
    """Fit the KNN prior and normalisation statistics of one category (skipped when complete)."""
    import torch

    from raydiff.data.images import dataset_channels
    from raydiff.io import is_complete
    from raydiff.models.checkpoint import load_model
    from raydiff.paths import fitted_dir, model_dir
    from raydiff.scoring.fit import fit_category

    folder = fitted_dir(cfg, category)
    if is_complete(folder):
        return folder
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = manifest.filter(pl.col("category") == category)
    channels = dataset_channels(rows, cfg.dataset.channels)
    models = {k: load_model(model_dir(cfg, category, k), dev) for k in cfg.model_kinds_needed()}
    train = rows.filter(pl.col("split") == "train").sort("image_id")
    holdout = rows.filter(pl.col("split") == "holdout").sort("image_id")
    if holdout.height == 0:
        raise DatasetError(
            Path(cfg.dataset.root) / category,
            "no held-out normal images for the normalisation statistics.",
            "raise dataset.holdout_fraction / holdout_min, or add train/good images.",
        )
    state = fit_category(
        cfg,
        category,
        models,
        load_images(cfg, train, channels),
        load_images(cfg, holdout, channels),
        holdout["image_id"].to_list(),
        list(cfg.variants.enabled),
        device=dev,
        batch_size=cfg.ray.scoring_batch_size,
    )
    state.save(folder)
    return folder


def fit_all(cfg: Config, manifest: pl.DataFrame, categories: list[str]) -> list[Path]:
    """Fit every category as a Ray task (one GPU each when the cluster has GPUs)."""
    import ray

    from raydiff.io import is_complete
    from raydiff.paths import fitted_dir

    pending = [c for c in categories if not is_complete(fitted_dir(cfg, c))]  # no task for finished ones
    if pending:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) else 0
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=2)(fit_one)
        ray.get([remote.remote(cfg, c, manifest) for c in pending])
    return [fitted_dir(cfg, c) for c in categories]


def evaluate(cfg: Config) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Exact metrics of the run folder → metrics.parquet / metrics.csv (+ per defect type).

    Returns (per category × variant, per category × variant × defect type).
    """
    from raydiff.io import atomic_write_text
    from raydiff.metrics import compute_metrics
    from raydiff.paths import run_dir
    from raydiff.pipeline import scan_images, scan_pixels

    folder = run_dir(cfg)
    pixels, images = scan_pixels(folder), scan_images(folder)
    cost = images.group_by("dataset", "category", "variant").agg(
        pl.col("forwards_per_image").mean().alias("unet_forwards_per_image"),
        pl.col("seconds_per_image").mean().alias("seconds_per_image"),
    )
    keys = ["dataset", "category", "variant"]
    table = compute_metrics(pixels, images).join(cost.collect(), on=keys, how="left").sort(keys)
    by_defect = compute_metrics(pixels, images, by_defect=True)
    for name, df in (("metrics", table), ("metrics_by_defect", by_defect)):
        tmp = folder / f".{name}.parquet.tmp"
        df.write_parquet(tmp)
        tmp.replace(folder / f"{name}.parquet")
        atomic_write_text(folder / f"{name}.csv", df.write_csv())
    return table, by_defect


def score_all(
    cfg: Config, manifest: pl.DataFrame, categories: list[str], limit: int | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    from raydiff.pipeline import score_category

    summaries = []
    for category in categories:
        s = score_category(cfg, category, manifest, limit=limit, progress=progress)
        if s["images"]:
            click.echo(
                f"scored {category}: {s['images']} images, {len(s['written'])} variants, "
                f"{s['seconds']:.1f} s, {s['images_per_s']:.2f} images/s"
            )
        else:
            click.echo(f"scored {category}: all {len(s['skipped'])} variants already complete, skipped")
        summaries.append(s)
    return summaries


def sweep(cfg: Config, limit: int | None = None, report: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Everything for a config on the current (or a local) Ray: train → fit → score → metrics → report.

    Idempotent: finished trainings, fitted states and (category, variant) partitions are skipped.
    """
    from raydiff.cli import print_table
    from raydiff.paths import run_dir

    start = time.perf_counter()
    manifest = prepare(cfg)
    categories = categories_of(manifest)
    folder = write_run_metadata(cfg, overwrite=overwrite)
    started = init_ray(cfg)
    try:
        t0 = time.perf_counter()
        click.echo(f"[train] {len(categories)} categories x {len(cfg.model_kinds_needed())} model kinds")
        train_models(cfg, manifest, categories)
        t1 = time.perf_counter()
        click.echo(f"[fit] KNN prior + normalisation statistics ({t1 - t0:.0f} s training)")
        fit_all(cfg, manifest, categories)
        t2 = time.perf_counter()
        click.echo(f"[score] {len(cfg.variants.enabled)} variants ({t2 - t1:.0f} s fitting)")
        summaries = score_all(cfg, manifest, categories, limit=limit)
    finally:
        if started:
            import ray

            ray.shutdown()
    t3 = time.perf_counter()
    metrics, by_defect = evaluate(cfg)
    print_table(metrics.select("category", "variant", "i_auroc", "p_auroc", "p_ap", "aupro", "seconds_per_image"))
    result: dict[str, Any] = {
        "run_dir": str(folder),
        "categories": categories,
        "scoring": summaries,
        "metrics": str(folder / "metrics.csv"),
        "seconds": round(time.perf_counter() - start, 1),
        "scoring_seconds": round(t3 - t2, 1),
    }
    if report:
        from raydiff.report import write_report

        result["report"] = str(write_report(folder, metrics=metrics, by_defect=by_defect))
    return result


def smoke_overrides() -> dict[str, Any]:
    """A tiny budget that checks the whole set-up in a minute or two on CPU."""
    return {
        "models.preset": "tiny",
        "models.train_steps": 20,
        "models.checkpoint_every": 10,
        "models.batch_size": 4,
        "models.latent.vae_train_steps": 10,
        "dataset.image_size": 32,
    }


def sweep_from_args(
    config: Path,
    categories: str | None = None,
    dataset_root: str | None = None,
    output: str | None = None,
    smoke_test: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """What ``jobs/sweep.py`` calls: parse overrides, run the sweep."""
    from raydiff.config import load_config

    overrides: dict[str, Any] = smoke_overrides() if smoke_test else {}
    if categories:
        overrides["dataset.categories"] = [c.strip() for c in categories.split(",") if c.strip()]
    if dataset_root:
        overrides["dataset.root"] = str(Path(dataset_root).resolve())
    if output:
        overrides["output.root"] = output
    cfg = load_config(config, overrides)
    if smoke_test and not cfg.dataset.categories:
        first = categories_of(scan(cfg))[:1]
        from dataclasses import replace

        cfg = replace(cfg, dataset=replace(cfg.dataset, categories=tuple(first)))
    return sweep(cfg, limit=4 if smoke_test else None, overwrite=overwrite)
