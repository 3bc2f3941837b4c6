"""Every scoring variant, as pure library code, computed in one shared pass per batch.

A config's variants are named instances (``cfg.variants``): a method, the model it scores
with, parameters. ``METHODS`` maps a method's module (``raydiff.config.METHOD_TABLE``) to its
file here, one per paper:

=========================  ==============  =====================================
module (file)              method          paper
=========================  ==============  =====================================
kashihara_static.py        static          Kashihara et al.; Fučka et al. (noise)
kashihara_no_diffusion.py  no-diffusion    Kashihara et al.
dynad.py                   dynamic         DynAD
ran_kl.py                  kl              RAN
kim_trend.py               trend           Kim et al.
=========================  ==============  =====================================

Each module defines ``components(cache, variant, params) -> {name: (B,H,W) raw map}`` and
``combine(variant, components, stats, params) -> (B,H,W)``; ``stats`` maps a component name to
(mean, std) of that component over held-out normal images (None while fitting). Instances
of one *family* (``cfg.variants.family``: same method, model and parameters apart from
post-processing and combine-only ones) share one ``components`` call, made with the family's
first instance's name (which seeds its noise). The configured smoothing and image-score rule
are applied last (``postprocess.finish``).

Adding a method: its maths in a new file here (``components`` + ``combine``) added to
``METHODS``, its params dataclass in ``raydiff/config/methods.py`` and one row in
``METHOD_TABLE``. Config parsing, the timestep check, fitting, scoring, ``raydiff plan`` and
the report derive from the row; ``tests/test_variant_table.py`` walks every method.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raydiff.scoring import dynad, kashihara_no_diffusion, kashihara_static, kim_trend, ran_kl
from raydiff.scoring.context import BatchCache, CategoryContext
from raydiff.scoring.postprocess import finish

Stats = Mapping[str, tuple[float, float]]


#: A ``METHOD_TABLE`` row's ``module`` → the module with its maths.
METHODS: dict[str, Any] = {
    "kashihara_static": kashihara_static,
    "kashihara_no_diffusion": kashihara_no_diffusion,
    "dynad": dynad,
    "ran_kl": ran_kl,
    "kim_trend": kim_trend,
}


def method_module(cfg: Any, variant: str) -> Any:
    """The module computing instance ``variant`` of ``cfg``."""
    return METHODS[cfg.variants.method(variant).module]


@dataclass
class VariantResult:
    """One variant's output for a batch: maps (B,H,W) float32, scores (B,) float32 (numpy)."""

    maps: np.ndarray
    scores: np.ndarray
    #: UNet forward passes per image this variant's family needs, as ``raydiff plan`` counts
    #: them: its own passes plus those of another family's it reuses (``pass_of``).
    forwards_per_image: float
    #: Wall seconds per image for this variant's family in this batch.
    seconds_per_image: float
    #: The family whose UNet pass this one rides on (the batch cache counts a pass for the family
    #: that asked first); None when it made its own.
    pass_of: str | None = None


def raw_components(
    ctx: CategoryContext, images: torch.Tensor, image_ids: Sequence[str], variants: Sequence[str]
) -> tuple[dict[str, dict[str, torch.Tensor]], BatchCache, dict[str, float]]:
    """Compute every requested family's raw component maps in one shared pass.

    Returns ({family: {component: (B,H,W)}}, the cache, {family: seconds}).
    """
    cfg = ctx.cfg
    unknown = [v for v in variants if v not in cfg.variants.instances]
    if unknown:
        raise KeyError(f"unknown variants {unknown}; this config's: {list(cfg.variants.instances)}")
    cache = BatchCache(ctx, images, list(image_ids))
    out: dict[str, dict[str, torch.Tensor]] = {}
    seconds: dict[str, float] = {}
    for vid in variants:
        family = cfg.variants.family(vid, ctx.category)
        if family in out:
            continue
        cache.current = family
        start = time.perf_counter()
        out[family] = method_module(cfg, family).components(cache, family, cfg.variants.params(family, ctx.category))
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        seconds[family] = time.perf_counter() - start
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
        family = ctx.cfg.variants.family(vid, ctx.category)
        params = ctx.cfg.variants.params(vid, ctx.category)
        # border_rings: per-ring statistics and the final per-ring rescaling, or one global
        # (mean, std) per component and no final rescaling (docs/methods.md, Normalisation).
        rings = params.border_rings
        stats = ctx.fitted.stats_for(family, rings) if ctx.fitted is not None else None
        final = ctx.fitted.final.get(vid) if ctx.fitted is not None and rings else None
        combined = method_module(ctx.cfg, vid).combine(vid, comps[family], stats, params)
        maps, scores = finish(combined, params, final)
        results[vid] = VariantResult(
            maps=maps.float().cpu().numpy(),
            scores=scores.float().cpu().numpy(),
            forwards_per_image=float(cache.forwards[family] + cache.shared_forwards[family]),
            seconds_per_image=seconds[family] / batch,
            pass_of=cache.rides_on.get(family),
        )
    return results
