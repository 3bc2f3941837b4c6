"""Every scoring variant, as pure library code, computed in one shared pass per batch.

One file per paper:

==================  ==========================  ==============================================
variant id          file                        model kind
==================  ==========================  ==============================================
static-gaussian     kashihara_static.py         pixel
static-simplex      kashihara_static.py         pixel-simplex
static-gmm          kashihara_static.py         pixel-gmm
no-diffusion        kashihara_no_diffusion.py   pixel
dynamic             dynad.py                    latent
dynamic-pixel       dynad.py                    pixel
kl                  ran_kl.py                   pixel
trend (+ablations)  kim_trend.py                pixel
==================  ==========================  ==============================================

Each module defines ``components(cache, variant_id, params) -> {name: (B,H,W) raw map}`` and
``combine(variant_id, components, stats, params) -> (B,H,W)``; ``stats`` maps a component name to
(mean, std) of that component over held-out normal images (None while fitting). Variants with the
same ``family`` share one ``components`` call (the trend ablations). The configured smoothing and
image-score rule are applied last (``postprocess.finish``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raydiff.config import VARIANT_MODEL_KIND
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
        return VARIANT_MODEL_KIND[self.id]


def _variant(vid: str, module: Any, family: str | None = None) -> Variant:
    return Variant(vid, family or vid, module.components, module.combine)


VARIANTS: dict[str, Variant] = {
    "static-gaussian": _variant("static-gaussian", kashihara_static),
    "static-simplex": _variant("static-simplex", kashihara_static),
    "static-gmm": _variant("static-gmm", kashihara_static),
    "no-diffusion": _variant("no-diffusion", kashihara_no_diffusion),
    "dynamic": _variant("dynamic", dynad),
    "dynamic-pixel": _variant("dynamic-pixel", dynad),
    "kl": _variant("kl", ran_kl),
    "trend": _variant("trend", kim_trend, family="trend"),
    "trend-intensity": _variant("trend-intensity", kim_trend, family="trend"),
    "trend-uncertainty": _variant("trend-uncertainty", kim_trend, family="trend"),
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
        maps, scores = finish(var.combine(vid, comps[var.family], stats, params), params)
        results[vid] = VariantResult(
            maps=maps.float().cpu().numpy(),
            scores=scores.float().cpu().numpy(),
            forwards_per_image=float(cache.forwards[var.family]),
            seconds_per_image=seconds[var.family] / batch,
        )
    return results
