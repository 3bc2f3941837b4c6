"""Kashihara & Matsubara "diffusion" trick / Fučka et al.: partial diffusion, reverse, squared error.

Variants ``static-gaussian``, ``static-simplex``, ``static-gmm``: model kinds ``pixel``,
``pixel-simplex``, ``pixel-gmm``; each uses its model's noise kind for the forward noise and for
every random term of the reverse chain (Fučka §4; docs/methods.md, "static").

Per image:

1. x_t0 = √ᾱ_t0 x0 + √(1-ᾱ_t0) n  (Kashihara eq. 3, Fučka eq. 3), n = the batch cache's shared
   draw of the model's noise kind (``cache.forward_eps``, draw 0): the same x_t0 as ``kl`` and
   ``trend`` use when t0 is one of their levels, so ε_θ(x_t0, t0) is computed once.
2. Reverse from t0 to the clean image with S = ``params.steps`` UNet evaluations, DDPM ancestral
   (Fučka eq. 5, Kashihara eq. 4-5) or deterministic DDIM (``params.sampler``); timesteps and the
   respaced DDPM chain in :mod:`raydiff.scoring.sampling`.
3. Map (Fučka eq. 6; Kashihara §3): M = Σ_c (x0 - x̂0)², (B,H,W) float32 ≥ 0, higher = more
   anomalous. ``combine`` standardises it with the held-out normal statistics (an affine map:
   rankings unchanged); the mean filter (11×11, 5×5 for GMM) and the image score (max; Kashihara:
   max of an average pooling) are applied by ``postprocess.finish`` from the config.

Component: ``sq_error``.

UNet forward passes per image: S (= ``steps`` for either sampler); S - 1 when another variant has
already evaluated ε_θ at (x_t0, t0) with the same model (e.g. ``trend`` with a level = t0).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from raydiff.config import StaticConfig
from raydiff.scoring.context import BatchCache
from raydiff.scoring.postprocess import normalise
from raydiff.scoring.sampling import reverse_to_clean

COMPONENT = "sq_error"


def squared_error_map(x0: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
    """Σ_c (x0 - x̂0)² (Fučka eq. 6): (B,C,H,W) pair → (B,H,W) float32, higher = more anomalous."""
    return (x0.float() - x0_hat.float()).pow(2).sum(dim=1)


def components(cache: BatchCache, variant_id: str, params: StaticConfig) -> dict[str, torch.Tensor]:
    """{"sq_error": (B,H,W)} for one ``static-*`` variant (its model from the config)."""
    kind = cache.model_of(variant_id)
    model = cache.model(kind)
    shared = cache.forward_eps(kind, params.t0, model.noise_kind)
    x0_hat = reverse_to_clean(
        cache, kind, shared["x_t"], params.t0, params.steps, params.sampler,
        purpose=(variant_id,), first=(shared["eps"], shared.get("v")), variance=params.variance,
        clip_x0=params.clip_x0,
    )
    return {COMPONENT: squared_error_map(cache.x0, x0_hat)}


def combine(
    variant_id: str, comps: dict[str, torch.Tensor], stats: Mapping[str, tuple[float, float]] | None,
    params: StaticConfig,
) -> torch.Tensor:
    """The standardised squared-error map (B,H,W) (raw while fitting, ``stats`` None)."""
    return normalise(comps[COMPONENT], stats[COMPONENT] if stats else None)
