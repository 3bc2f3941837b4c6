"""The held-out normal images: a deterministic part of each category's training images, kept out
of training for the normalisation statistics (split "holdout" in the manifest).

A layout that ships its own held-out normal images (MVTec AD 2's ``validation/good``, image ids
under ``GIVEN_HOLDOUT_PREFIX``) scans them as "holdout" already: such a category keeps exactly
those and gives up none of its training images."""

from __future__ import annotations

import polars as pl

from raydiff.data.manifest import GIVEN_HOLDOUT_PREFIX, MANIFEST_SCHEMA
from raydiff.seeding import derive_seed


def holdout_count(n_train: int, fraction: float, min_count: int) -> int:
    """How many of ``n_train`` normal images to hold out: max(round(fraction·n), min_count),
    0 when ``fraction`` is 0, and never all of them (at least one stays for training)."""
    if fraction <= 0 or n_train < 2:
        return 0
    return min(_asked(n_train, fraction, min_count), n_train - 1)


def _asked(n_train: int, fraction: float, min_count: int) -> int:
    """The hold-out size the settings ask for, before ``holdout_count`` keeps one image to train on."""
    return max(round(fraction * n_train), min_count)


#: Rows of the dataset's own held-out images (ids under ``GIVEN_HOLDOUT_PREFIX``).
_GIVEN_HOLDOUT = (pl.col("split") == "holdout") & pl.col("image_id").str.starts_with(GIVEN_HOLDOUT_PREFIX)


def capped_holdouts(manifest: pl.DataFrame, fraction: float, min_count: int) -> list[tuple[str, int, int]]:
    """(category, training images, held out) for each category where ``min_count`` asks for
    all of train/good or more, so ``holdout_count`` holds out all but one: a model would train
    on a single image. Categories with their own held-out images draw nothing and are skipped."""
    has_given = set(manifest.filter(_GIVEN_HOLDOUT)["category"].to_list())
    train = manifest.filter(pl.col("split").is_in(["train", "holdout"]) & ~pl.col("category").is_in(list(has_given)))
    capped = []
    for (category,), group in train.group_by(["category"], maintain_order=True):
        n = group.height
        if fraction > 0 and n >= 2 and _asked(n, fraction, min_count) > n - 1:
            capped.append((str(category), n, holdout_count(n, fraction, min_count)))
    return sorted(capped)


def assign_holdout(manifest: pl.DataFrame, fraction: float, min_count: int, seed: int) -> pl.DataFrame:
    """Mark a deterministic subset of each category's train rows as split "holdout".

    The subset is the ``holdout_count`` rows with the smallest hash of (seed, category,
    image_id), so it depends on neither row order nor RNG state. Rows already marked "holdout"
    are first returned to "train", so calling this twice gives the same result; except the
    dataset's own held-out images (ids under ``GIVEN_HOLDOUT_PREFIX``): they stay, and their
    category draws nothing (also with ``fraction`` 0, where the fit does not read them).
    """
    given = _GIVEN_HOLDOUT
    has_given = set(manifest.filter(given)["category"].to_list())
    df = manifest.with_columns(
        pl.when((pl.col("split") == "holdout") & ~given).then(pl.lit("train")).otherwise(pl.col("split")).alias("split")
    )
    chosen: set[tuple[str, str]] = set()
    train = df.filter(pl.col("split") == "train")
    for (category,), group in train.group_by(["category"], maintain_order=True):
        if category in has_given:
            continue
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
