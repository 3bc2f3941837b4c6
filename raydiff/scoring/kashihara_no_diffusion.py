"""Kashihara & Matsubara "no diffusion" trick: the input itself is taken as x_t0 and reversed.

Variant ``no-diffusion`` (model kind ``pixel``). Kashihara §3, second trick: "We treat the input
image x0 as x_t, assuming an anomalous image that contains noise" — no forward noise and no
rescaling by √ᾱ_t0 (unlike DynAD's noiseless start): x_t0 := x0.

Per image:

1. Reverse from x_t0 = x0 to a clean image with S = ``params.steps`` UNet evaluations, DDIM
   (default, deterministic) or DDPM ancestral with Gaussian random terms seeded per image
   (:mod:`raydiff.scoring.sampling`; Kashihara: 5 steps for textures, 10 for objects).
2. Map: Σ_c (x0 - x̂0)² (Kashihara §3 and Fig. 3: "squared error ... summed in the channel
   direction"), (B,H,W) float32 ≥ 0, higher = more anomalous; standardised in ``combine`` with
   held-out normal statistics; image score = max of an average pooling with kernel
   round(size/25) (config default, ``postprocess.finish``).

Component: ``sq_error``.

UNet forward passes per image: S = ``steps`` (never shared: no other variant evaluates ε_θ at
the un-noised input).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from raydiff.config import NoDiffusionConfig
from raydiff.scoring.context import BatchCache
from raydiff.scoring.kashihara_static import COMPONENT, squared_error_map
from raydiff.scoring.postprocess import normalise
from raydiff.scoring.sampling import reverse_to_clean


def components(cache: BatchCache, variant_id: str, params: NoDiffusionConfig) -> dict[str, torch.Tensor]:
    """{"sq_error": (B,H,W)}: squared error between x0 and the reverse chain started at x0 itself."""
    kind = cache.model_of(variant_id)
    x0 = cache.x0
    x0_hat = reverse_to_clean(cache, kind, x0, params.t0, params.steps, params.sampler, purpose=(variant_id,),
                              variance=params.variance, clip_x0=params.clip_x0)
    return {COMPONENT: squared_error_map(x0, x0_hat)}


def combine(
    variant_id: str, comps: dict[str, torch.Tensor], stats: Mapping[str, tuple[float, float]] | None,
    params: NoDiffusionConfig,
) -> torch.Tensor:
    """The standardised squared-error map (B,H,W) (raw while fitting, ``stats`` None)."""
    return normalise(comps[COMPONENT], stats[COMPONENT] if stats else None)
