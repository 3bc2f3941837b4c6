"""Kim et al. (arXiv 2407.09578): trends of reconstruction error and model uncertainty over levels.

Variants ``trend`` (both trends), ``trend-intensity`` and ``trend-uncertainty`` (the ablations),
one family: a single ``components`` call per batch serves all three. Model kind ``pixel``.
docs/methods.md, "trend".

For the N levels t_1 < … < t_N of ``params.levels`` (default 25 … 400):

1. x_{t_k} = √ᾱ_{t_k} x0 + √(1-ᾱ_{t_k}) ε with the SAME ε for every level (common random numbers;
   the batch cache's shared draw, so a level equal to ``kl``'s or ``static``'s t shares ε_θ).
2. Reconstruction x̂0^(k): one step, x̂0(x_{t_k}) = (x_t - √(1-ᾱ_t) ε_θ)/√ᾱ_t clipped to [-1, 1]
   (DDPM eq. 15), or deterministic DDIM from t_k with min(S, t_k) steps
   (``params.reconstruction``, ``params.ddim_steps``; :mod:`raydiff.scoring.sampling`).
3. Intensity sequence s_k = Σ_c (x̂0^(k) - x0)² (B,H,W).
4. Uncertainty sequence u_k = Σ_c |∂(Σ x̂0(x_{t_k}) · r) / ∂x_{t_k}| (B,H,W): the input gradient
   of the model output, read as x̂0, along a fixed random direction r ~ N(0, I) seeded per image
   (the same r at every level); one backward pass per level of Σ ε_θ·r, through the same forward
   pass that gives ε_θ for step 2, turned into the x̂0 form exactly by
       ∂(Σ x̂0·r)/∂x_t = (r - √(1-ᾱ_t) ∂(Σ ε_θ·r)/∂x_t) / √ᾱ_t          (x̂0 = DDPM eq. 15).
   Why x̂0 and not ε: by Tweedie's formula ∂x̂0/∂x_t = √ᾱ_t/(1-ᾱ_t) · Cov[x0 | x_t], the model's
   posterior uncertainty, whereas ∂ε_θ/∂x_t = (I - √ᾱ_t ∂x̂0/∂x_t)/√(1-ᾱ_t) adds an identity
   term that is the same for every pixel, so |∂(Σ ε_θ·r)/∂x_t| ≈ |r|/√(1-ᾱ_t) per pixel — a
   map of the probe, not of the image (measured on the texture model: the ε form does not
   separate a pasted patch, the x̂0 form does). The paper's summary leaves the output open
   (docs/methods.md, "trend").
   With ``params.probes = K > 0`` u_k is instead |Σ_c diag(∂x̂0/∂x_t)| estimated by Hutchinson's
   method, mean over K Rademacher probes r of r ⊙ ∂(Σ x̂0·r)/∂x_t (unbiased; K forward and
   backward passes per level): by Tweedie, the per-pixel posterior variance Var[x0 | x_t] up to
   the level's factor √ᾱ_t/(1-ᾱ_t), i.e. what "uncertainty per pixel" means; the one-probe map
   above is a random, non-local projection of the same Jacobian (docs/methods.md, trend).
5. trend_I = |F_1(s)|, trend_U = |F_1(u)|: magnitude of the second DFT coefficient over k
   (index 1; index 0 is the mean) — the slow, directional change across levels.

Components: ``intensity`` (trend_I), ``uncertainty`` (trend_U), (B,H,W) ≥ 0.
``combine``: each standardised with held-out normal statistics; ``trend`` = sum of both,
``trend-intensity`` / ``trend-uncertainty`` = one of them. Image score: max after Gaussian σ = 4
(config default, ``postprocess.finish``). Higher = more anomalous.

UNet passes per image (the whole family): N forward passes with autograd + N backward passes for
one-step reconstruction; with DDIM, Σ_k min(S, t_k) forward passes (the first of each chain is the
gradient pass) + N backward passes. Levels already evaluated by another variant still need their
gradient pass (counted here).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from raydiff import diffusion as D
from raydiff.config import TrendConfig
from raydiff.scoring.context import BatchCache
from raydiff.scoring.kashihara_static import squared_error_map
from raydiff.scoring.postprocess import normalise
from raydiff.scoring.sampling import reverse_to_clean
from raydiff.seeding import generator

INTENSITY = "intensity"
UNCERTAINTY = "uncertainty"
#: Which components a variant adds up, by its ``output`` parameter (Kim et al. and their ablations).
USES: dict[str, tuple[str, ...]] = {
    "both": (INTENSITY, UNCERTAINTY),
    "intensity": (INTENSITY,),
    "uncertainty": (UNCERTAINTY,),
}


def dft_magnitude(seq: torch.Tensor, index: int = 1) -> torch.Tensor:
    """|F_index(seq)| = |Σ_k seq_k e^{-2πi·index·k/N}| over dim 0: (N, ...) → (...), float32 ≥ 0.

    Kim et al.: the magnitude of the second Fourier coefficient (index 1) of a per-pixel
    sequence over noise levels; large for a slow monotone trend, small for noise around a mean.
    """
    return torch.fft.fft(seq.double(), dim=0)[index].abs().float()


def x0_probe_gradient(eps_grad: torch.Tensor, probe: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """∂(Σ x̂0·r)/∂x_t = (r - √(1-ᾱ_t) ∂(Σ ε_θ·r)/∂x_t) / √ᾱ_t (differentiating DDPM eq. 15).

    ``eps_grad`` = ∂(Σ ε_θ·r)/∂x_t and ``probe`` = r, (B,C,H,W); ``alpha_bar_t`` ᾱ_t, a scalar or
    broadcastable tensor. → (B,C,H,W) float32 (Tweedie: √ᾱ_t/(1-ᾱ_t) · Cov[x0|x_t] r).
    """
    return (probe - (1.0 - alpha_bar_t).sqrt() * eps_grad) / alpha_bar_t.sqrt()


def uncertainty_map(x0_grad: torch.Tensor) -> torch.Tensor:
    """u = Σ_c |∂(Σ x̂0·r)/∂x_t|: (B,C,H,W) gradient → (B,H,W) float32 ≥ 0, higher = less certain."""
    return x0_grad.abs().sum(dim=1).float()


def probe_direction(seeds: list[int], shape: tuple[int, ...], device: torch.device, rademacher: bool = False) -> torch.Tensor:
    """r ~ N(0, I) (B,C,H,W), or ±1 with equal probability (``rademacher``, Hutchinson's probe):
    one seed per image, so r depends on the image id (and the device) alone; drawn on ``device``
    by a generator per image (no host round trip)."""
    out = torch.empty(shape, device=device)
    for b, s in enumerate(seeds):
        if rademacher:
            out[b].bernoulli_(0.5, generator=generator(s, device)).mul_(2).sub_(1)
        else:
            out[b].normal_(generator=generator(s, device))
    return out


def hutchinson_diagonal(products: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """diag(J) ≈ mean_k r_k ⊙ (Jᵀ r_k) from K Rademacher probes r_k and their vector-Jacobian
    products Jᵀ r_k (B,C,H,W) each: unbiased, since E[r rᵀ] = I gives E[r ⊙ Jᵀr]_i = J_ii.
    For J = ∂x̂0/∂x_t, Tweedie's formula makes diag(J) = √ᾱ_t/(1-ᾱ_t) · Var[x0_i | x_t]: the
    per-pixel posterior uncertainty. → (B,C,H,W) float32."""
    return torch.stack([r * jtr for r, jtr in products]).mean(dim=0)


def components(cache: BatchCache, variant_id: str, params: TrendConfig) -> dict[str, torch.Tensor]:
    """{"intensity": trend_I, "uncertainty": trend_U}, each (B,H,W) (raw, unnormalised)."""
    kind = cache.model_of(variant_id)
    model = cache.model(kind)
    x0 = cache.x0
    if params.probes:  # K Rademacher probes: Hutchinson's estimate of diag(∂x̂0/∂x_t)
        probes = [probe_direction(cache.seeds("trend", "probe", k), tuple(x0.shape), x0.device, rademacher=True)
                  for k in range(params.probes)]
    else:  # one fixed Gaussian direction: |Jᵀ r|
        probes = [probe_direction(cache.seeds("trend", "probe"), tuple(x0.shape), x0.device)]
    intensity, uncertainty = [], []
    for t in params.levels:
        alpha_bar_t = model.schedule.alphas_cumprod[t].to(x0.device)
        products = []
        for probe in probes:
            shared, grad = cache.eps_and_input_grad(kind, t, model.noise_kind, probe)
            products.append((probe, x0_probe_gradient(grad, probe, alpha_bar_t)))
        if params.reconstruction == "one-step":
            tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
            x0_hat = D.predict_x0(model.schedule, shared["x_t"], tt, shared["eps"]).clamp(-1.0, 1.0)
        else:
            x0_hat = reverse_to_clean(
                cache, kind, shared["x_t"], t, min(params.ddim_steps, t), "ddim",
                purpose=("trend",), first=(shared["eps"], shared.get("v")),
            )
        intensity.append(squared_error_map(x0, x0_hat))
        if params.probes:
            uncertainty.append(hutchinson_diagonal(products).sum(dim=1).abs().float())
        else:
            uncertainty.append(uncertainty_map(products[0][1]))
    return {INTENSITY: dft_magnitude(torch.stack(intensity)), UNCERTAINTY: dft_magnitude(torch.stack(uncertainty))}


def combine(
    variant_id: str, comps: dict[str, torch.Tensor], stats: Mapping[str, tuple[float, float]] | None,
    params: TrendConfig,
) -> torch.Tensor:
    """Sum of the standardised trends this variant uses (B,H,W), higher = more anomalous."""
    return torch.stack([normalise(comps[c], stats[c] if stats else None) for c in USES[params.output]]).sum(dim=0)
