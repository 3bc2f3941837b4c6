"""Parquet writing of the scoring pipeline: pixel rows from arrays, atomic partitions, readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from raydiff.config import config_from_dict
from raydiff.io import is_complete
from raydiff.paths import partition_dir, run_dir
from raydiff.runs import (
    IMAGE_SCHEMA,
    PIXEL_SCHEMA,
    PartitionWriter,
    image_table,
    pending_variants,
    pixel_table,
    remove_stale,
    scan_images,
    scan_pixels,
)


def fake_batch(rng: np.random.Generator, b: int = 3, h: int = 4, w: int = 5) -> dict[str, np.ndarray]:
    gt = (rng.random((b, h, w)) > 0.7).astype(np.int8)
    return {
        "image_id": np.array([f"test/crack/{i:03d}.png" for i in range(b)], dtype=object),
        "defect_type": np.array(["crack"] * b, dtype=object),
        "label": np.ones(b, np.int8),
        "gt": gt,
        "region": gt.astype(np.int32) * 2,
        "map:kl": rng.random((b, h, w)).astype(np.float32),
        "score:kl": rng.random(b).astype(np.float32),
        "forwards:kl": np.full(b, 3, np.float32),
        "seconds:kl": np.full(b, 0.5, np.float32),
    }


def test_pixel_table_rows_match_the_maps() -> None:
    batch = fake_batch(np.random.default_rng(0))
    t = pixel_table(batch, "kl")
    assert t.schema == PIXEL_SCHEMA and t.num_rows == 3 * 4 * 5
    df = pl.from_arrow(t)
    for row in df.sample(10, seed=1).iter_rows(named=True):
        i = int(row["image_id"][-7:-4])
        assert row["score"] == pytest.approx(float(batch["map:kl"][i, row["y"], row["x"]]))
        assert row["gt"] == batch["gt"][i, row["y"], row["x"]]
        assert row["region"] == batch["region"][i, row["y"], row["x"]]
    assert image_table(batch, "kl").schema == IMAGE_SCHEMA


def test_partitions_are_atomic_and_readers_see_only_complete_ones(tmp_path: Path) -> None:
    cfg = config_from_dict({"output": {"root": str(tmp_path)}, "dataset": {"name": "tex"}})
    batch = fake_batch(np.random.default_rng(0))
    done = PartitionWriter(partition_dir(cfg, "pixels", "01", "kl"), PIXEL_SCHEMA)
    done.write(pixel_table(batch, "kl"))
    done.commit({"images": 3})
    img = PartitionWriter(partition_dir(cfg, "images", "01", "kl"), IMAGE_SCHEMA)
    img.write(image_table(batch, "kl"))
    img.commit({"images": 3})
    # A writer killed mid-way leaves only a hidden temporary, never a partition.
    killed = PartitionWriter(partition_dir(cfg, "pixels", "01", "trend"), PIXEL_SCHEMA)
    killed.write(pixel_table(batch, "kl"))
    assert not partition_dir(cfg, "pixels", "01", "trend").exists()
    assert pending_variants(cfg, "01", ["kl", "trend"]) == ["trend"]

    pixels = scan_pixels(run_dir(cfg)).collect()
    assert pixels.height == 60 and set(pixels["variant"]) == {"kl"}
    assert pixels["category"].dtype == pl.String and set(pixels["category"]) == {"01"}
    assert scan_images(run_dir(cfg)).collect().height == 3

    remove_stale(cfg, "01")
    assert not killed.tmp.exists() and is_complete(partition_dir(cfg, "pixels", "01", "kl"))


def test_abort_removes_the_temporary(tmp_path: Path) -> None:
    w = PartitionWriter(tmp_path / "variant=x", PIXEL_SCHEMA)
    w.abort()
    assert not w.tmp.exists() and not (tmp_path / "variant=x").exists()
