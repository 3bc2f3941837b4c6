"""Ray Data scoring pipeline for one category: test rows → scoring actors → Parquet, written by the actors.

    from_items(test rows: id, paths, index) ─map_batches(ScoringActor, autoscaling pool 1..N)─▶
        each actor: load images/masks → every pending variant → one Parquet part per (table,
        variant, batch) written straight into the run folder's staging area
    ─iter_batches──▶ driver: a few bytes per image (which part, where it ran) → commit

Design (why a pool per category, why the actors load their own inputs):

- An actor loads a category's models and fitted state once, in its constructor, and keeps them
  for every batch of that category; the pool grows from one actor to ``ray.scoring_actors``
  (default: as many as the category has batches) while batches are queued and GPUs are free, so
  the last category still running spreads over every idle GPU. ``raydiff.workflow`` runs the
  pipelines of all ready categories at once (one thread each), so the categories share the
  cluster's GPUs and no GPU idles while any category has batches left. One pool serving all
  categories would have to reload models whenever its input switches category and could not
  start before every category's models exist.
- Image decoding happens inside the actor (a few ms per image against seconds of UNet work):
  a separate CPU stage would need CPUs that the actors of concurrent categories and the
  trainings may hold all of, which deadlocks a small node.
- Pixel rows never reach the driver: each actor writes its parts itself (``raydiff.runs``: parts
  are renamed into place whole, a retried batch replaces its own part) and returns only which
  part it wrote and where it ran. The driver checks that every batch reported, then commits
  each partition (rename + marker), so a killed actor or driver leaves no partial or duplicate
  rows, and a re-run skips complete partitions and recomputes the others.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import polars as pl
import torch

from raydiff.config import Config
from raydiff.data.images import Fit, load_image, load_mask
from raydiff.data.prepared import Prepared
from raydiff.errors import user_error_in
from raydiff.metrics import label_regions
from raydiff.paths import partition_dir, run_dir
from raydiff.placement import gpus_for, utc_now, where_ran, worker_device
from raydiff.runs import (
    TABLES,
    commit_staged,
    discard_staged,
    image_set_digest,
    image_table,
    part_name,
    pending_variants,
    pixel_table,
    remove_stale,
    require_visible,
    run_probe,
    write_part,
)
from raydiff.scoring import score_batch
from raydiff.scoring.fit import load_category_context


def load_batch(
    batch: dict[str, np.ndarray], size: int, channels: Literal[1, 3], resize: Fit
) -> dict[str, np.ndarray]:
    """Load images (B,C,H,W float32 in [-1,1]), GT masks (B,H,W int8) and 8-connected regions (B,H,W int32)."""
    images, gts, regions = [], [], []
    for img_path, mask_path in zip(batch["image_path"], batch["mask_path"], strict=True):
        images.append(load_image(img_path, size, channels, resize))
        if not isinstance(mask_path, str) or mask_path == "":  # "" (see score_category), or a null turned NaN
            gt = np.zeros((size, size), np.uint8)
        else:
            gt = load_mask(mask_path, size, resize)
        gts.append(gt.astype(np.int8))
        regions.append(label_regions(gt).astype(np.int32))
    return {
        "image_id": batch["image_id"],
        "defect_type": batch["defect_type"],
        "label": np.asarray(batch["label"]).astype(np.int8),
        "image": np.stack(images),
        "gt": np.stack(gts),
        "region": np.stack(regions),
    }


class ScoringActor:
    """Holds one category's models and fitted state; scores every pending variant per batch and
    writes the batch's Parquet parts. Returns one small row per image: its part and placement."""

    def __init__(self, cfg: Config, category: str, variants: Sequence[str], attempt: str,
                 channels: Literal[1, 3]) -> None:
        self.cfg = cfg  # pickled across by Ray as it is: validated once, by the driver's loader
        self.category, self.variants, self.attempt, self.channels = category, list(variants), attempt, channels
        require_visible(run_probe(self.cfg), f"the scoring actor on {socket.gethostname()}")
        self.device = worker_device(self.cfg)
        self.ctx = load_category_context(self.cfg, category, torch.device(self.device))

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = utc_now()
        d = self.cfg.dataset
        batch = load_batch(rows, d.image_size, self.channels, d.resize)
        images = torch.from_numpy(np.ascontiguousarray(batch["image"]))
        results = score_batch(self.ctx, images, [str(i) for i in batch["image_id"]], self.variants)
        first = int(np.min(rows["index"]))
        for vid, res in results.items():
            n = len(res.scores)
            batch[f"map:{vid}"] = res.maps.astype(np.float32)
            batch[f"score:{vid}"] = res.scores.astype(np.float32)
            batch[f"forwards:{vid}"] = np.full(n, res.forwards_per_image, np.float32)
            batch[f"seconds:{vid}"] = np.full(n, res.seconds_per_image, np.float32)
            write_part(partition_dir(self.cfg, "pixels", self.category, vid), self.attempt, first, pixel_table(batch, vid))
            write_part(partition_dir(self.cfg, "images", self.category, vid), self.attempt, first, image_table(batch, vid))
        n = len(rows["index"])
        record = json.dumps(where_ran(self.device, started))
        passes = json.dumps({vid: res.pass_of for vid, res in results.items()})
        return {"index": np.asarray(rows["index"]), "first": np.full(n, first), "placement": np.array([record] * n),
                "pass_of": np.array([passes] * n)}


#: Seconds between two progress lines of one category's scoring.
SAY_EVERY_S = 10.0


def eta(elapsed: float, done: int, total: int) -> str:
    """``", ETA 42 s"`` from the rate so far ("" when done or nothing done yet)."""
    if done <= 0 or done >= total:
        return ""
    return f", ETA {elapsed / done * (total - done):.0f} s"


def category_test_rows(manifest: pl.DataFrame, category: str, limit: int | None = None) -> pl.DataFrame:
    """A category's test rows sorted by image id (``limit``: a subset with both classes, half good)."""
    if limit is not None and limit < 1:  # polars' head(-n) would drop the last n instead
        raise ValueError(f"limit must be a positive number of images, got {limit}")
    rows = manifest.filter((pl.col("category") == category) & (pl.col("split") == "test")).sort("image_id")
    if limit is not None:
        good = rows.filter(pl.col("label") == 0)
        n_good = min(good.height, limit // 2)
        rows = pl.concat([good.head(n_good), rows.filter(pl.col("label") == 1).head(limit - n_good)]).sort("image_id")
    return rows


def score_category(
    prepared: Prepared,
    category: str,
    variants: Sequence[str] | None = None,
    limit: int | None = None,
    progress: bool = True,
    actor: type = ScoringActor,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score one category's test images with every pending variant; commit their partitions.

    Needs a running Ray and the category's trained models and fitted state. Resources come from
    the config (``ray.accelerator``, ``ray.gpus_per_scoring_actor``, ``ray.scoring_actors``).
    Returns a summary: images, seconds, images/s, variants written / skipped, and one placement
    record per scored batch. ``actor``: a ScoringActor subclass (the reliability tests inject
    faults with one). ``progress``: Ray Data's bar; ``say``: a line of images done / total with an
    ETA as batches come back (at most one every ``SAY_EVERY_S`` seconds, and the last).
    """
    import ray  # only where work is distributed: the rest of the module runs without Ray

    cfg = prepared.cfg
    variants = list(variants or cfg.variants.enabled)
    rows = category_test_rows(prepared.manifest, category, limit)
    image_set = image_set_digest(rows["image_id"].to_list())
    todo = pending_variants(cfg, category, variants, image_set)
    summary: dict[str, Any] = {"category": category, "skipped": [v for v in variants if v not in todo],
                               "written": todo, "placement": []}
    if not todo:
        summary.update(images=0, seconds=0.0, images_per_s=0.0)
        return summary
    remove_stale(cfg, category)
    channels = prepared.channels_of(category)
    batch_size = cfg.ray.scoring_batch_size
    ray.data.DataContext.get_current().enable_progress_bars = progress

    # "" for "no mask": a block of good images only would otherwise hold an all-null column.
    items = rows.select("image_id", "defect_type", "label", "image_path", pl.col("mask_path").fill_null("")).with_row_index(
        "index").to_dicts()
    n_blocks = max(1, -(-len(items) // batch_size))
    ds = ray.data.from_items(items, override_num_blocks=n_blocks)
    attempt = uuid.uuid4().hex[:12]
    ds = ds.map_batches(
        actor,
        batch_size=batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={"cfg": cfg, "category": category, "variants": todo,
                               "attempt": attempt, "channels": channels},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.ray.scoring_actors or n_blocks),
        num_gpus=gpus_for(cfg, cfg.ray.gpus_per_scoring_actor),
        num_cpus=cfg.ray.cpus_per_scoring_actor,
        # A killed actor is restarted and its batches retried: Ray Data's defaults for actor
        # pools (max_restarts=-1, max_task_retries=-1), exercised by tests/test_end_to_end.py.
    )
    finals = {(t, v): partition_dir(cfg, t, category, v) for t in TABLES for v in todo}
    start = time.perf_counter()
    firsts: dict[int, str] = {}
    scored: set[int] = set()
    pass_of: dict[str, str | None] = {}
    said = start
    try:
        for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
            scored.update(int(i) for i in out["index"])
            firsts.update(zip((int(f) for f in out["first"]), (str(p) for p in out["placement"]), strict=True))
            if "pass_of" in out and len(out["pass_of"]):  # the same in every batch: the cache's rules
                pass_of.update(json.loads(str(out["pass_of"][0])))
            now = time.perf_counter()
            if say is not None and (now - said >= SAY_EVERY_S or len(scored) == len(items)):
                said = now
                say(f"[score] {category}: {len(scored)}/{len(items)} images, {len(todo)} variants, "
                    f"{now - start:.0f} s{eta(now - start, len(scored), len(items))}")
        if scored != set(range(len(items))):
            raise RuntimeError(f"scored {len(scored)} images of {len(items)} in category {category}")
        size = cfg.dataset.image_size
        info = {"category": category, "images": len(items), "image_set": image_set, "limit": limit,
                "config_run_id": run_dir(cfg).name, "attempt": attempt,
                "placement": [json.loads(p) for _, p in sorted(firsts.items())]}
        parts = [part_name(f) for f in sorted(firsts)]
        for (table, v), final in finals.items():
            rows_per_image = size * size if table == "pixels" else 1
            # pass_of: whose UNet pass this variant's forwards rode on (itself when its own).
            commit_staged(final, attempt, parts, len(items) * rows_per_image, {**info, "pass_of": pass_of.get(v) or v})
    except BaseException as err:
        for final in finals.values():
            discard_staged(final, attempt)
        cause = user_error_in(err)  # e.g. an actor without CUDA: its one-line error, not Ray's wrapping
        if cause is not None and cause is not err:
            raise cause from None
        raise
    seconds = time.perf_counter() - start
    summary.update(images=len(items), seconds=seconds, images_per_s=len(items) / seconds if seconds else 0.0,
                   placement=info["placement"])
    return summary
