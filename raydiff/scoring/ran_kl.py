"""RAN (Lu et al., ICCV 2023): per-pixel KL between the true and the learned reverse step.

Variant ``kl`` (model kind ``pixel``: ε-prediction with learned variance). Reference code
VandyLu/anomaly_diff; METHODS.md "kl".

For each t in ``params.timesteps`` (reference: 20, 200, 400 of T = 1000):

1. x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε, ONE noise draw shared by every t and with ``static-gaussian`` and
   ``trend`` (``cache.forward_eps``: ε_θ at a level another variant also uses is computed once).
2. Pixel-level score (RAN eq. 9, improved-diffusion ``_vb_terms_bpd``):
       s_t = KL(q(x_{t-1} | x_t, x0) ‖ p_θ(x_{t-1} | x_t))  in bits, averaged over channels,
   q = N(μ̃_t(x0, x_t), β̃_t) (DDPM eq. 7), p_θ = N(μ̃_t(x̂0(x_t, ε_θ), x_t), σ²_θ) with the learned
   σ²_θ (iDDPM eq. 15; β̃_t for a model without one). x̂0 is not clipped (as in L_vlb training).
   Component ``kl_t{t}`` (B,H,W) ≥ 0, higher = the model explains the pixel worse.
3. Feature-level score: f_t = mean_j upsample(mean_c (φ_j(x0) - φ_j(x̂0(x_t)))²) over the
   ResNet-34 blocks j ∈ {layer2, layer3}, x̂0 clipped to [-1, 1]. RAN trains an extra head that
   predicts EfficientNet features; ours compares φ of the one-step reconstruction instead (a
   documented simplification). Component ``feature`` = mean_t f_t (B,H,W) ≥ 0.

``combine``: each ``kl_t`` and ``feature`` is standardised with held-out normal statistics (the
reference standardises per batch, which makes a score depend on the batch), the KL maps are
averaged over t, and map = (1 - w)·KL + w·feature with w = ``feature_weight`` (RAN: 1:1, w = 0.5).
Image score: mean of the top-64 pixels (config default, ``postprocess.finish``).

UNet forward passes per image: len(timesteps) (fewer when another variant has already evaluated
ε_θ at one of the levels). φ: once per t on x̂0 (φ(x0) is shared through the cache).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from raydiff import diffusion as D
from raydiff.config import KLConfig
from raydiff.scoring.postprocess import normalise, upsample

#: The ResNet-34 blocks of the feature-level score.
FEATURE_LAYERS: tuple[str, ...] = ("layer2", "layer3")
FEATURE = "feature"


def kl_component(t: int) -> str:
    """Name of the KL component at timestep t (a key of the fitted statistics)."""
    return f"kl_t{t}"


def gaussian_kl_bits(
    mean_q: torch.Tensor, log_var_q: torch.Tensor, mean_p: torch.Tensor, log_var_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean_q, e^log_var_q) ‖ N(mean_p, e^log_var_p)) per element, in bits (≥ 0; broadcasts).

    KL = ½ (log σ_p² - log σ_q² + (σ_q² + (μ_q - μ_p)²) / σ_p² - 1) / ln 2  (improved-diffusion
    ``normal_kl`` divided by ln 2).
    """
    return D.normal_kl(mean_q, log_var_q, mean_p, log_var_p) / math.log(2.0)


def kl_map(
    sched: D.Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
    v: torch.Tensor | None,
) -> torch.Tensor:
    """RAN eq. 9 per pixel: KL(q(x_{t-1}|x_t,x0) ‖ p_θ(x_{t-1}|x_t)) in bits, mean over channels.

    ``x0``, ``x_t``, ``eps``, ``v`` (B,C,H,W); ``t`` LongTensor (B,) with t ≥ 1; ``v`` None for a
    model with fixed variance β̃_t. → (B,H,W) float32 ≥ 0.
    """
    mean_q, _, log_var_q = D.q_posterior(sched, x0, x_t, t)
    model_out = eps if v is None else torch.cat([eps, v], dim=1)
    p = D.p_mean_variance(sched, model_out, x_t, t, learned_variance=v is not None, clip_x0=False)
    return gaussian_kl_bits(mean_q, log_var_q, p.mean, p.log_var).mean(dim=1)


def feature_mse_map(
    feats_x0: Mapping[str, torch.Tensor], feats_rec: Mapping[str, torch.Tensor], size: int,
    layers: Sequence[str] = FEATURE_LAYERS,
) -> torch.Tensor:
    """mean_j upsample(mean_c (φ_j(x0) - φ_j(x̂0))²): {layer: (B,C_j,h_j,w_j)} pair → (B,size,size) ≥ 0."""
    maps = [upsample((feats_x0[j] - feats_rec[j]).pow(2).mean(dim=1), size) for j in layers]
    return torch.stack(maps).mean(dim=0)


def components(cache: object, variant_id: str, params: KLConfig) -> dict[str, torch.Tensor]:
    """{"kl_t{t}": (B,H,W) for each t, "feature": (B,H,W)} (raw, unnormalised)."""
    kind = cache.model_of(variant_id)  # type: ignore[attr-defined]
    model = cache.model(kind)  # type: ignore[attr-defined]
    x0 = cache.x0  # type: ignore[attr-defined]
    size = x0.shape[-1]
    phi_x0 = cache.features_x0()  # type: ignore[attr-defined]
    out: dict[str, torch.Tensor] = {}
    feature_sum = torch.zeros(x0.shape[0], size, size, device=x0.device)
    for t in params.timesteps:
        shared = cache.forward_eps(kind, t, model.noise_kind)  # type: ignore[attr-defined]
        tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
        out[kl_component(t)] = kl_map(model.schedule, x0, shared["x_t"], tt, shared["eps"], shared.get("v"))
        x0_hat = D.predict_x0(model.schedule, shared["x_t"], tt, shared["eps"]).clamp(-1.0, 1.0)
        with torch.no_grad():
            phi_rec = cache.ctx.features(x0_hat)  # type: ignore[attr-defined]
        feature_sum += feature_mse_map(phi_x0, phi_rec, size)
    out[FEATURE] = feature_sum / len(params.timesteps)
    return out


def combine(
    variant_id: str, comps: dict[str, torch.Tensor], stats: Mapping[str, tuple[float, float]] | None,
    params: KLConfig,
) -> torch.Tensor:
    """(1 - w)·mean_t norm(kl_t) + w·norm(feature), (B,H,W), higher = more anomalous."""

    def norm(name: str) -> torch.Tensor:
        return normalise(comps[name], stats[name] if stats else None)

    kl = torch.stack([norm(kl_component(t)) for t in params.timesteps]).mean(dim=0)
    w = params.feature_weight
    return (1.0 - w) * kl + w * norm(FEATURE)
