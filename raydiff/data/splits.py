"""The held-out normal images: a deterministic part of each category's training images, kept out
of training for the normalisation statistics (split "holdout" in the manifest)."""

from __future__ import annotations

import polars as pl

from raydiff.data.manifest import MANIFEST_SCHEMA
from raydiff.seeding import derive_seed


def holdout_count(n_train: int, fraction: float, min_count: int) -> int:
    """How many of ``n_train`` normal images to hold out: max(round(fraction·n), min_count),
    0 when ``fraction`` is 0, and never all of them (at least one stays for training)."""
    if fraction <= 0 or n_train < 2:
        return 0
    return min(max(round(fraction * n_train), min_count), n_train - 1)


def assign_holdout(manifest: pl.DataFrame, fraction: float, min_count: int, seed: int) -> pl.DataFrame:
    """Mark a deterministic subset of each category's train rows as split "holdout".

    The subset is the ``holdout_count`` rows with the smallest hash of (seed, category,
    image_id), so it depends on neither row order nor RNG state. Rows already marked "holdout"
    are first returned to "train", so calling this twice gives the same result.
    """
    df = manifest.with_columns(
        pl.when(pl.col("split") == "holdout").then(pl.lit("train")).otherwise(pl.col("split")).alias("split")
    )
    chosen: set[tuple[str, str]] = set()
    train = df.filter(pl.col("split") == "train")
    for (category,), group in train.group_by(["category"], maintain_order=True):
        ids = group["image_id"].to_list()
        k = holdout_count(len(ids), fraction, min_count)
        ranked = sorted(ids, key=lambda i: (derive_seed(seed, "holdout", category, i), i))
        chosen.update((str(category), i) for i in ranked[:k])
    is_holdout = [
        split == "train" and (cat, iid) in chosen
        for cat, split, iid in zip(df["category"], df["split"], df["image_id"], strict=True)
    ]
    mark = pl.Series(is_holdout, dtype=pl.Boolean)
    return (
        df.with_columns(pl.when(mark).then(pl.lit("holdout")).otherwise(pl.col("split")).alias("split"))
        .select(list(MANIFEST_SCHEMA))
        .sort(["category", "split", "image_id"])
    )
