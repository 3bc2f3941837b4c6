"""Ray Data scoring pipeline: test manifest → CPU preprocessing → scoring actors → Parquet.

Shape of the pipeline (the pattern of Ray's batch-inference release test):

    from_items(test rows) ─map_batches(load_batch)──────────▶ CPU tasks: images, masks, regions
                          ─map_batches(ScoringActor, ActorPoolStrategy)▶ GPU actors (CPU without GPUs):
                                                               every configured variant per batch
                          ─iter_batches──▶ driver: per-variant Parquet, written atomically

Each (category, variant) partition is written under a temporary name, renamed when complete and
then given a success marker; a re-run skips complete partitions and rewrites the others, so there
are no duplicates and nothing already complete is touched. Readers (``scan_pixels``) only see
complete partitions.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from raydiff.config import Config, config_from_dict, config_to_dict
from raydiff.io import MARKER, is_complete, write_marker
from raydiff.paths import partition_dir, run_dir

PIXEL_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("defect_type", pa.string()),
        ("label", pa.int8()),
        ("y", pa.int16()),
        ("x", pa.int16()),
        ("score", pa.float32()),
        ("gt", pa.int8()),
        ("region", pa.int32()),
    ]
)
IMAGE_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("defect_type", pa.string()),
        ("label", pa.int8()),
        ("score", pa.float32()),
        ("forwards_per_image", pa.float32()),
        ("seconds_per_image", pa.float32()),
    ]
)

#: Test hook (reliability tests): an actor exits hard after this many batches, once per run.
KILL_ENV = "RAYDIFF_TEST_KILL_ACTOR_AFTER"


# --------------------------------------------------------------------------------------------
# Stage 1: CPU preprocessing (plain function, Ray tasks)
# --------------------------------------------------------------------------------------------


def load_batch(batch: dict[str, np.ndarray], size: int, channels: int, fit: str) -> dict[str, np.ndarray]:
    """Load images (B,C,H,W float32 in [-1,1]), GT masks (B,H,W int8) and 8-connected regions."""
    from raydiff.data.images import load_image, load_mask
    from raydiff.metrics import label_regions

    images, gts, regions = [], [], []
    for img_path, mask_path in zip(batch["image_path"], batch["mask_path"], strict=True):
        images.append(load_image(img_path, size, channels, fit))  # type: ignore[arg-type]
        if not isinstance(mask_path, str) or mask_path == "":  # "" (see score_category), or a null turned NaN
            gt = np.zeros((size, size), np.uint8)
        else:
            gt = load_mask(mask_path, size, fit)  # type: ignore[arg-type]
        gts.append(gt.astype(np.int8))
        regions.append(label_regions(gt).astype(np.int32))
    return {
        "image_id": batch["image_id"],
        "defect_type": batch["defect_type"],
        "label": batch["label"].astype(np.int8),
        "image": np.stack(images),
        "gt": np.stack(gts),
        "region": np.stack(regions),
    }


# --------------------------------------------------------------------------------------------
# Stage 2: scoring actors
# --------------------------------------------------------------------------------------------


class ScoringActor:
    """Holds one category's models and fitted state; scores every variant per batch."""

    def __init__(self, cfg_data: dict[str, Any], category: str, variants: Sequence[str], device: str) -> None:
        import torch

        from raydiff.scoring.fit import load_category_context

        self.cfg = config_from_dict(cfg_data)
        self.variants = list(variants)
        self.device = torch.device(device)
        self.ctx = load_category_context(self.cfg, category, self.device)
        self.batches = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from raydiff.scoring import score_batch

        kill_after = os.environ.get(KILL_ENV)
        if kill_after and self.batches >= int(kill_after.split(":")[0]):
            marker = Path(kill_after.split(":", 1)[1])
            if not marker.exists():  # die once per test run, then behave
                marker.write_text("killed")
                os._exit(1)
        self.batches += 1
        images = torch.from_numpy(np.ascontiguousarray(batch["image"]))
        results = score_batch(self.ctx, images, [str(i) for i in batch["image_id"]], self.variants)
        out = {k: batch[k] for k in ("image_id", "defect_type", "label", "gt", "region")}
        for vid, res in results.items():
            out[f"map:{vid}"] = res.maps.astype(np.float32)
            out[f"score:{vid}"] = res.scores.astype(np.float32)
            n = len(res.scores)
            out[f"forwards:{vid}"] = np.full(n, res.forwards_per_image, np.float32)
            out[f"seconds:{vid}"] = np.full(n, res.seconds_per_image, np.float32)
        return out


# --------------------------------------------------------------------------------------------
# Stage 3: atomic per-variant Parquet partitions (driver)
# --------------------------------------------------------------------------------------------


def pixel_table(batch: dict[str, np.ndarray], variant: str) -> pa.Table:
    """One row per pixel for one variant, built from whole arrays (no per-pixel Python)."""
    maps = batch[f"map:{variant}"]
    b, h, w = maps.shape
    hw = h * w
    yy, xx = np.indices((h, w), dtype=np.int16)
    return pa.Table.from_arrays(
        [
            pa.array(np.repeat(np.asarray(batch["image_id"], dtype=object), hw), pa.string()),
            pa.array(np.repeat(np.asarray(batch["defect_type"], dtype=object), hw), pa.string()),
            pa.array(np.repeat(batch["label"].astype(np.int8), hw)),
            pa.array(np.tile(yy.ravel(), b)),
            pa.array(np.tile(xx.ravel(), b)),
            pa.array(maps.reshape(-1).astype(np.float32)),
            pa.array(batch["gt"].reshape(-1).astype(np.int8)),
            pa.array(batch["region"].reshape(-1).astype(np.int32)),
        ],
        schema=PIXEL_SCHEMA,
    )


def image_table(batch: dict[str, np.ndarray], variant: str) -> pa.Table:
    return pa.Table.from_arrays(
        [
            pa.array(np.asarray(batch["image_id"], dtype=object), pa.string()),
            pa.array(np.asarray(batch["defect_type"], dtype=object), pa.string()),
            pa.array(batch["label"].astype(np.int8)),
            pa.array(batch[f"score:{variant}"]),
            pa.array(batch[f"forwards:{variant}"]),
            pa.array(batch[f"seconds:{variant}"]),
        ],
        schema=IMAGE_SCHEMA,
    )


class PartitionWriter:
    """Writes one partition under a temporary sibling name; ``commit`` renames and marks it."""

    def __init__(self, final: Path, schema: pa.Schema) -> None:
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir()
        self.writer = pq.ParquetWriter(self.tmp / "part-0.parquet", schema, compression="zstd")
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)
        self.rows += table.num_rows

    def commit(self, info: dict[str, Any]) -> None:
        self.writer.close()
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        write_marker(self.final, {**info, "rows": self.rows})

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def remove_stale(cfg: Config, category: str) -> None:
    """Delete temporaries a killed run left in this category's partition folders."""
    for table in ("pixels", "images"):
        parent = partition_dir(cfg, table, category, "x").parent
        if parent.is_dir():
            for p in parent.glob(".tmp-*"):
                shutil.rmtree(p, ignore_errors=True)


def image_set_digest(image_ids: Sequence[str]) -> str:
    """A short digest of which test images a partition holds (a ``--limit`` subset differs)."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(image_ids)).encode()).hexdigest()[:16]


def _marker_info(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def pending_variants(cfg: Config, category: str, variants: Sequence[str], image_set: str | None = None) -> list[str]:
    """Variants whose pixel or image partition is not complete (for this set of test images) yet."""

    def done(folder: Path) -> bool:
        if not is_complete(folder):
            return False
        return image_set is None or _marker_info(folder).get("image_set") == image_set

    return [
        v
        for v in variants
        if not (done(partition_dir(cfg, "pixels", category, v)) and done(partition_dir(cfg, "images", category, v)))
    ]


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def score_category(
    cfg: Config,
    category: str,
    manifest: pl.DataFrame,
    variants: Sequence[str] | None = None,
    limit: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score one category's test images with every pending variant; write their partitions.

    Needs a running Ray (``ray.init``) and the category's trained models and fitted state.
    Returns a summary: images, seconds, images/s, variants written / skipped.
    """
    import ray

    from raydiff.data.images import dataset_channels

    variants = list(variants or cfg.variants.enabled)
    rows = manifest.filter((pl.col("category") == category) & (pl.col("split") == "test")).sort("image_id")
    if limit is not None:  # a debugging subset with both classes: half good, half defective
        good = rows.filter(pl.col("label") == 0)
        n_good = min(good.height, limit // 2)
        rows = pl.concat([good.head(n_good), rows.filter(pl.col("label") == 1).head(limit - n_good)]).sort("image_id")
    image_set = image_set_digest(rows["image_id"].to_list())
    todo = pending_variants(cfg, category, variants, image_set)
    summary: dict[str, Any] = {"category": category, "skipped": [v for v in variants if v not in todo], "written": todo}
    if not todo:
        summary.update(images=0, seconds=0.0, images_per_s=0.0)
        return summary
    remove_stale(cfg, category)
    channels = dataset_channels(manifest.filter(pl.col("category") == category), cfg.dataset.channels)
    gpus = cluster_gpus()
    device = device or ("cuda" if gpus else "cpu")
    actors = cfg.ray.scoring_actors or max(1, gpus if device == "cuda" else 1)
    batch_size = cfg.ray.scoring_batch_size
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress

    # "" for "no mask": a block of good images only would otherwise hold an all-null column.
    items = rows.select("image_id", "defect_type", "label", "image_path", pl.col("mask_path").fill_null("")).to_dicts()
    n_blocks = max(1, min(len(items), -(-len(items) // batch_size)))
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    ds = ds.map_batches(
        load_batch,
        batch_size=batch_size,
        batch_format="numpy",
        fn_kwargs={"size": cfg.dataset.image_size, "channels": channels, "fit": cfg.dataset.fit},
        num_cpus=1,
    )
    ds = ds.map_batches(
        ScoringActor,
        batch_size=batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={"cfg_data": config_to_dict(cfg), "category": category, "variants": todo, "device": device},
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if device == "cuda" else 0,
        num_cpus=cfg.ray.cpus_per_scoring_actor,
        # A killed actor is restarted and its batches retried: Ray Data's defaults for actor
        # pools (max_restarts=-1, max_task_retries=-1), exercised by tests/test_end_to_end.py.
    )

    writers: dict[tuple[str, str], PartitionWriter] = {}
    start = time.perf_counter()
    n_images = 0
    try:
        for v in todo:
            writers[("pixels", v)] = PartitionWriter(partition_dir(cfg, "pixels", category, v), PIXEL_SCHEMA)
            writers[("images", v)] = PartitionWriter(partition_dir(cfg, "images", category, v), IMAGE_SCHEMA)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            n_images += len(batch["image_id"])
            for v in todo:
                writers[("pixels", v)].write(pixel_table(batch, v))
                writers[("images", v)].write(image_table(batch, v))
        if n_images != len(items):
            raise RuntimeError(f"scored {n_images} images of {len(items)} in category {category}")
        info = {"category": category, "images": n_images, "image_set": image_set, "limit": limit, "config_run_id": run_dir(cfg).name}
        for (_table, _v), w in writers.items():
            w.commit(info)
    except BaseException:
        for w in writers.values():
            if w.tmp.exists():
                w.abort()
        raise
    seconds = time.perf_counter() - start
    summary.update(images=n_images, seconds=seconds, images_per_s=n_images / seconds if seconds else 0.0)
    return summary


# --------------------------------------------------------------------------------------------
# Readers: only complete partitions
# --------------------------------------------------------------------------------------------


def complete_files(root: Path, table: str) -> list[str]:
    base = Path(root) / table
    files: list[str] = []
    for marker in sorted(base.glob("dataset=*/category=*/variant=*/_SUCCESS")):
        files.extend(str(p) for p in sorted(marker.parent.glob("*.parquet")))
    return files


def _scan(root: Path, table: str) -> pl.LazyFrame:
    files = complete_files(root, table)
    if not files:
        raise FileNotFoundError(f"{Path(root) / table}: no complete partitions")
    # Pinned: category "01" (BTAD) must stay a string, not be inferred as an integer.
    hive = {"dataset": pl.String, "category": pl.String, "variant": pl.String}
    return pl.scan_parquet(files, hive_partitioning=True, hive_schema=hive)


def scan_pixels(root: Path) -> pl.LazyFrame:
    """The per-pixel table of a run folder (complete partitions only), with hive columns."""
    return _scan(root, "pixels")


def scan_images(root: Path) -> pl.LazyFrame:
    """The per-image table of a run folder (complete partitions only), with hive columns."""
    return _scan(root, "images")
