"""Where everything lives under the output root.

    OUT/
      models/<model_id>/<dataset>/<category>/<model>/    checkpoint (diffusers folders + meta.json)
      <run_id>/
        config.yaml, versions.json                       what produced the run
        fitted/<dataset>/<category>/                     KNN prior + normalisation statistics
        pixels/dataset=<d>/category=<c>/variant=<v>/     one row per pixel (Parquet)
        images/dataset=<d>/category=<c>/variant=<v>/     one row per image (Parquet)
        metrics.parquet, metrics.csv, report.html
"""

from __future__ import annotations

from pathlib import Path

from raydiff.config import Config, model_id, run_id


def output_root(cfg: Config) -> Path:
    return Path(cfg.output.root).expanduser()


def model_dir(cfg: Config, category: str, model: str) -> Path:
    """The folder of model ``model`` (a name of ``cfg.models``) trained for ``category``."""
    return output_root(cfg) / "models" / model_id(cfg, model, category) / cfg.dataset.dataset_name / category / model


def run_dir(cfg: Config) -> Path:
    return output_root(cfg) / run_id(cfg)


def fitted_dir(cfg: Config, category: str) -> Path:
    return run_dir(cfg) / "fitted" / cfg.dataset.dataset_name / category


def partition_dir(cfg: Config, table: str, category: str, variant: str) -> Path:
    """``table`` is ``pixels`` or ``images``."""
    return (
        run_dir(cfg)
        / table
        / f"dataset={cfg.dataset.dataset_name}"
        / f"category={category}"
        / f"variant={variant}"
    )
