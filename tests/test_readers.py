"""External readers of a run folder (issue 31, item 9): polars and pyarrow datasets read the hive
trees ``pixels/`` and ``images/`` while a scoring attempt is in flight or was killed (its staging
folder lives beside the trees, not inside), and BTAD's category ``01`` stays a string with the
reader options docs/usage.md gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds

from raydiff.config import config_from_dict
from raydiff.paths import partition_dir, run_dir
from raydiff.runs import (
    HIVE_SCHEMA,
    STAGING,
    PartitionWriter,
    IMAGE_SCHEMA,
    commit_staged,
    image_table,
    pixel_table,
    remove_stale,
    scan_pixels,
    staging_dir,
    write_part,
)


def _batch(n: int = 2, size: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "image_id": np.array([f"img{i}" for i in range(n)]), "defect_type": np.array(["good"] * n),
        "label": np.zeros(n, np.int8), "gt": np.zeros((n, size, size), np.int8),
        "region": np.zeros((n, size, size), np.int32), "map:kl": rng.random((n, size, size)).astype(np.float32),
        "score:kl": rng.random(n), "forwards:kl": np.ones(n), "seconds:kl": np.ones(n),
    }


def _run_with_leftovers(tmp_path: Path) -> Path:
    """Category 01 committed for variant kl; an attempt in flight for trend (parts staged, no
    commit) and a killed single-process writer."""
    cfg = config_from_dict({"output": {"root": str(tmp_path)}, "dataset": {"name": "btad"}})
    for table, make in (("pixels", pixel_table), ("images", image_table)):
        final = partition_dir(cfg, table, "01", "kl")
        write_part(final, "a1", 0, make(_batch(), "kl"))
        commit_staged(final, "a1", ["part-000000.parquet"], 2 * (16 if table == "pixels" else 1), {})
        write_part(partition_dir(cfg, table, "01", "trend"), "a2", 0, make(_batch(), "kl"))  # in flight
    killed = PartitionWriter(partition_dir(cfg, "images", "01", "gmm"), IMAGE_SCHEMA)
    killed.write(image_table(_batch(), "kl"))  # never committed
    run = run_dir(cfg)
    assert (run / STAGING / "a2" / "pixels").is_dir() and killed.tmp.is_relative_to(run / STAGING)
    # Nothing but committed partitions and their markers inside the hive trees.
    inside = {p.relative_to(run).as_posix() for t in ("pixels", "images") for p in (run / t).rglob("*") if p.is_file()}
    assert inside == {f"{t}/dataset=btad/category=01/variant=kl/{f}" for t in ("pixels", "images")
                      for f in ("part-000000.parquet", "_SUCCESS")}
    return run


def test_polars_and_pyarrow_read_the_trees_beside_a_staged_attempt(tmp_path: Path) -> None:
    run = _run_with_leftovers(tmp_path)
    # polars, as docs/usage.md writes it (a glob: the folder alone also lists the _SUCCESS markers).
    df = pl.scan_parquet(run / "pixels" / "**" / "*.parquet", hive_partitioning=True, hive_schema=HIVE_SCHEMA).collect()
    assert df.height == 32 and df["category"].dtype == pl.String
    assert set(df["category"]) == {"01"} and set(df["variant"]) == {"kl"}
    # Without the pinned types polars would read category 01 as the integer 1.
    guessed = pl.scan_parquet(run / "images" / "**" / "*.parquet", hive_partitioning=True).collect()
    assert guessed["category"].dtype != pl.String
    # pyarrow datasets, as docs/usage.md writes it.
    part = ds.partitioning(pa.schema([(k, pa.string()) for k in HIVE_SCHEMA]), flavor="hive")
    table = ds.dataset(run / "images", format="parquet", partitioning=part).to_table()
    assert table.num_rows == 2 and table.column("category").to_pylist() == ["01", "01"]
    # raydiff's own reader: the same.
    assert scan_pixels(run).collect()["category"].unique().to_list() == ["01"]


def test_commit_is_a_rename_out_of_the_staging_folder_and_stale_attempts_go(tmp_path: Path) -> None:
    run = _run_with_leftovers(tmp_path)
    cfg = config_from_dict({"output": {"root": str(tmp_path)}, "dataset": {"name": "btad"}})
    staged = staging_dir(partition_dir(cfg, "pixels", "01", "trend"), "a2")
    assert staged == run / STAGING / "a2" / "pixels" / "dataset=btad" / "category=01" / "variant=trend"
    assert not (run / STAGING / "a1").exists()  # a committed attempt leaves no empty folders
    remove_stale(cfg, "01")  # what a new scoring attempt of the category does first
    assert list((run / STAGING).iterdir()) == []
