"""Every scoring variant, as pure library code, computed in one shared pass per batch.

The variants are the rows of ``raydiff.config.VARIANT_TABLE`` (id, method module, params class,
model kind, family, timesteps); ``METHODS`` maps a row's ``method`` to its module here, one file
per paper:

=========================  ==========================  =====================================
method (file)              variant ids                 paper
=========================  ==========================  =====================================
kashihara_static.py        static-gaussian / -simplex  Kashihara et al.; Fučka et al. (noise)
                           / -gmm
kashihara_no_diffusion.py  no-diffusion                Kashihara et al.
dynad.py                   dynamic, dynamic-pixel      DynAD
ran_kl.py                  kl                          RAN
kim_trend.py               trend (+2 ablations)        Kim et al.
=========================  ==========================  =====================================

Each module defines ``components(cache, variant_id, params) -> {name: (B,H,W) raw map}`` and
``combine(variant_id, components, stats, params) -> (B,H,W)``; ``stats`` maps a component name to
(mean, std) of that component over held-out normal images (None while fitting). Variants with the
same ``family`` share one ``components`` call (the trend ablations). The configured smoothing and
image-score rule are applied last (``postprocess.finish``).

Adding a variant:

1. its maths in a new file here (``components`` + ``combine``), added to ``METHODS``; or reuse a
   method module;
2. its params dataclass in ``raydiff/config/schema.py`` (or reuse one) and a field of
   ``VariantsConfig`` holding its defaults;
3. one row in ``VARIANT_TABLE``: id, method, params class, field, model kind, family, timesteps.

Everything else (config parsing and the timestep check, fitting statistics, scoring, the
report's colours) derives from the row; ``tests/test_variant_table.py`` walks every row through
parsing, fitting, scoring and the report, so a half-wired row fails there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raydiff.config import VARIANT_TABLE
from raydiff.scoring import dynad, kashihara_no_diffusion, kashihara_static, kim_trend, ran_kl
from raydiff.scoring.context import BatchCache, CategoryContext
from raydiff.scoring.postprocess import finish

Stats = Mapping[str, tuple[float, float]]


@dataclass(frozen=True)
class Variant:
    id: str
    #: Variants of one family share a single ``components`` call per batch.
    family: str
    components: Callable[[BatchCache, str, Any], dict[str, torch.Tensor]]
    combine: Callable[[str, dict[str, torch.Tensor], Stats | None, Any], torch.Tensor]

    @property
    def model_kind(self) -> str:
        return VARIANT_TABLE[self.id].model_kind


#: A ``VARIANT_TABLE`` row's ``method`` → the module with its maths.
METHODS: dict[str, Any] = {
    "kashihara_static": kashihara_static,
    "kashihara_no_diffusion": kashihara_no_diffusion,
    "dynad": dynad,
    "ran_kl": ran_kl,
    "kim_trend": kim_trend,
}

VARIANTS: dict[str, Variant] = {
    row.id: Variant(row.id, row.family, METHODS[row.method].components, METHODS[row.method].combine)
    for row in VARIANT_TABLE.values()
}


@dataclass
class VariantResult:
    """One variant's output for a batch: maps (B,H,W) float32, scores (B,) float32 (numpy)."""

    maps: np.ndarray
    scores: np.ndarray
    #: UNet forward passes per image spent by this variant's family (shared passes count once,
    #: for the family that asked first).
    forwards_per_image: float
    #: Wall seconds per image for this variant's family in this batch.
    seconds_per_image: float


def raw_components(
    ctx: CategoryContext, images: torch.Tensor, image_ids: Sequence[str], variants: Sequence[str]
) -> tuple[dict[str, dict[str, torch.Tensor]], BatchCache, dict[str, float]]:
    """Compute every requested family's raw component maps in one shared pass.

    Returns ({family: {component: (B,H,W)}}, the cache, {family: seconds}).
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise KeyError(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    cache = BatchCache(ctx, images, list(image_ids))
    out: dict[str, dict[str, torch.Tensor]] = {}
    seconds: dict[str, float] = {}
    for vid in variants:
        var = VARIANTS[vid]
        if var.family in out:
            continue
        cache.current = var.family
        start = time.perf_counter()
        out[var.family] = var.components(cache, vid, ctx.cfg.variants.params(vid))
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        seconds[var.family] = time.perf_counter() - start
    return out, cache, seconds


def score_batch(
    ctx: CategoryContext, images: torch.Tensor, image_ids: Sequence[str], variants: Sequence[str]
) -> dict[str, VariantResult]:
    """Score a batch (B,C,H,W in [-1,1]) with every variant in ``variants``.

    Maps are at the input resolution, higher = more anomalous; normalised with the category's
    fitted statistics (``ctx.fitted``), so a score depends on its image alone.
    """
    comps, cache, seconds = raw_components(ctx, images, image_ids, variants)
    batch = images.shape[0]
    results: dict[str, VariantResult] = {}
    for vid in variants:
        var = VARIANTS[vid]
        params = ctx.cfg.variants.params(vid)
        stats = ctx.fitted.stats_for(vid) if ctx.fitted is not None else None
        final = ctx.fitted.final.get(vid) if ctx.fitted is not None else None
        maps, scores = finish(var.combine(vid, comps[var.family], stats, params), params, final)
        results[vid] = VariantResult(
            maps=maps.float().cpu().numpy(),
            scores=scores.float().cpu().numpy(),
            forwards_per_image=float(cache.forwards[var.family]),
            seconds_per_image=seconds[var.family] / batch,
        )
    return results
