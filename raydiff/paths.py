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
from raydiff.errors import OutputError


def child(parent: Path, name: str) -> Path:
    """``parent / name``, which must be a folder strictly inside ``parent`` (one level down).

    Every folder that raydiff replaces atomically (models, fitted states, partitions) is built with
    this, so a name such as ``.``, ``""``, ``..`` or ``brick/Data`` can never make it ``parent``
    itself (replacing it would delete every sibling) or another category's folder.
    """
    path = Path(parent) / name
    if not name or name in (".", "..") or "/" in name or "\\" in name or path.parent != Path(parent):
        raise OutputError(
            Path(parent),
            f"{name!r} does not name a folder inside this one (a category, dataset or variant name must be "
            "one plain folder name).",
            "rename the category (or dataset / variant) to a plain name such as 'bottle'.",
        )
    return path


def output_root(cfg: Config) -> Path:
    return Path(cfg.output.root).expanduser()


def model_dir(cfg: Config, category: str, model: str) -> Path:
    """The folder of model ``model`` (a name of ``cfg.models``) trained for ``category``."""
    base = output_root(cfg) / "models" / model_id(cfg, model, category)
    return child(child(child(base, cfg.dataset.dataset_name), category), model)


def run_dir(cfg: Config) -> Path:
    return output_root(cfg) / run_id(cfg)


def fitted_dir(cfg: Config, category: str) -> Path:
    return child(child(run_dir(cfg) / "fitted", cfg.dataset.dataset_name), category)


def partition_dir(cfg: Config, table: str, category: str, variant: str) -> Path:
    """``table`` is ``pixels`` or ``images``."""
    for name in (cfg.dataset.dataset_name, category, variant):
        child(run_dir(cfg), name)  # each a plain name: "category=." would still be one folder
    return run_dir(cfg) / table / f"dataset={cfg.dataset.dataset_name}" / f"category={category}" / f"variant={variant}"
