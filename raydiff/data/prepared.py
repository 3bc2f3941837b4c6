"""A config's dataset, scanned and checked once (``raydiff.workflow.prepare``): what training,
fitting and scoring work from, on the driver and in Ray's workers alike.

It carries the config with it, so a step takes one argument where it took a config and a manifest
that had to belong together, and the channel count of each category is read once (validation
reads every image header anyway) instead of again in every training worker and scoring pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import polars as pl

from raydiff.config import Config
from raydiff.data.images import dataset_channels
from raydiff.data.validate import ValidationSummary


def categories_of(manifest: pl.DataFrame) -> list[str]:
    return sorted(manifest["category"].unique().to_list())


@dataclass(frozen=True)
class Prepared:
    """``manifest``: one row per image (``raydiff.data.manifest``), the held-out normal images
    marked ``split == "holdout"``. ``channels``: category → 1 or 3, the count its models are built
    for (``dataset.channels``, else the files' own). ``summary``: what validation found (None for
    a manifest made elsewhere, :meth:`of`)."""

    cfg: Config
    manifest: pl.DataFrame
    channels: dict[str, int]
    summary: ValidationSummary | None = None

    @classmethod
    def of(cls, cfg: Config, manifest: pl.DataFrame) -> Prepared:
        """A manifest built elsewhere (a test's, a hand-made hold-out), unchecked; the channel
        counts read from its files' headers (``data.images.dataset_channels``)."""
        channels = {c: dataset_channels(manifest.filter(pl.col("category") == c), cfg.dataset.channels)
                    for c in categories_of(manifest)}
        return cls(cfg, manifest, channels)

    @property
    def categories(self) -> list[str]:
        return categories_of(self.manifest)

    def channels_of(self, category: str) -> Literal[1, 3]:
        return cast(Literal[1, 3], self.channels[category])

    def rows(self, category: str, *splits: str) -> pl.DataFrame:
        """The category's rows (of ``splits`` when given), sorted by image id."""
        rows = self.manifest.filter(pl.col("category") == category)
        if splits:
            rows = rows.filter(pl.col("split").is_in(list(splits)))
        return rows.sort("image_id")

    def only(self, categories: Sequence[str], cfg: Config | None = None) -> Prepared:
        """The rows of ``categories`` alone (what is shipped to a Ray worker); ``cfg``: another
        form of the same config (e.g. its output root made absolute)."""
        keep = list(categories)
        return Prepared(cfg or self.cfg, self.manifest.filter(pl.col("category").is_in(keep)),
                        {c: n for c, n in self.channels.items() if c in keep}, self.summary)
