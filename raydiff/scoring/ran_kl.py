"""RAN (Lu et al., ICCV 2023): per-pixel KL between the true and the learned reverse step.

Variant ``kl`` (model kind ``pixel``: ε-prediction with learned variance). Reference code
VandyLu/anomaly_diff (guided-diffusion based); docs/methods.md, "kl".

For each t in ``params.timesteps``:

1. x_t = √ᾱ_k x0 + √(1-ᾱ_k) ε at the model's step k (see "Two chains" for k).
2. Pixel-level score (RAN eq. 9, improved-diffusion ``_vb_terms_bpd``):
       s_t = KL(q(x_{t-1} | x_t, x0) ‖ p_θ(x_{t-1} | x_t))  in bits, averaged over channels,
   q = N(μ̃_t(x0, x_t), β̃_t) (DDPM eq. 7), p_θ = N(μ̃_t(x̂0(x_t, ε_θ), x_t), σ²_θ) with the learned
   σ²_θ (iDDPM eq. 15; β̃_t for a model without one), all tables of the chain being scored on.
   Component ``kl_t{t}`` (B,H,W) ≥ 0, higher = the model explains the pixel worse.
3. Feature-level score: f_t = mean_j upsample(mean_c (φ_j(x0) - φ_j(x̂0(x_t)))²) over the
   ResNet blocks j ∈ {layer2, layer3} (``features.arch``), x̂0 clipped to [-1, 1]. RAN trains an
   extra head that predicts EfficientNet-b4 features; ours compares φ of the one-step
   reconstruction instead (a documented simplification). φ is the base instance (:data:`PHI`):
   DynAD's domain adaptation never changes this term. Component ``feature`` = mean_t f_t
   (B,H,W) ≥ 0.

Two chains, three switches (``KLConfig``; the defaults are ours, the reference's in brackets):

- ``chain_steps = 0`` [250]: t is a step of the model's own T-step schedule (k = t; our default
  timesteps 20, 200, 400). ``chain_steps = N > 0``: the schedule is respaced to N steps as
  guided/improved-diffusion do (``space_timesteps(T, [N])``: kept steps k_i = round(i·(T-1)/(N-1));
  ``SpacedDiffusion``: β'_i = 1 - ᾱ_{k_i}/ᾱ_{k_{i-1}}, so ᾱ'_i = ᾱ_{k_i}), t is an index i on that
  chain (the reference's 5, 50, 100 of 250 are k = 20, 201, 401 of 1000) and the UNet is called
  at the ORIGINAL step k_i (``_WrappedModel`` with ``rescale_timesteps=False``, the reference's
  setting). x_t and x̂0 are the same as at step k_i of the full chain; what changes is the step
  being scored: q and p_θ go from i to i-1 on the respaced chain (k_i → k_{i-1}, ~4 original
  steps), with its β'_i and β̃'_i — also in the learned-variance interpolation.
- ``clip_x0`` [True]: x̂0 is clipped to [-1, 1] in p_θ's mean (the reference's
  ``clip_denoised=True``, scripts/image_anomaly.py); unclipped by default, as in L_vlb training.
- ``fresh_noise`` [True]: one independent noise draw per t (the reference draws
  ``th.randn_like`` inside its loop over t), seeded from (run seed, image id, model, t) so a
  score still depends only on its image. Default: ONE draw shared by every t and with
  ``static-gaussian`` and ``trend`` (``cache.forward_eps``: ε_θ at a level another variant also
  uses is computed once). Fresh draws are shared between ``kl`` instances on the same model.

Reference code read for this (VandyLu/anomaly_diff): guided_diffusion/gaussian_diffusion.py
``calc_bpd_loop`` (t in [5, 50, 100], fresh ``randn_like`` per t), ``_vb_terms_bpd_anom`` and
``p_mean_variance`` (learned range on the spaced β, β̃; clip before the posterior mean);
guided_diffusion/respace.py ``space_timesteps``, ``SpacedDiffusion``, ``_WrappedModel`` (the same
code as openai/improved-diffusion improved_diffusion/respace.py); test.sh / sample.sh
(``--timestep_respacing 250``; ``rescale_timesteps`` keeps its default False,
guided_diffusion/script_util.py).

``combine`` (``normalise: held-out``, the default): each ``kl_t`` and ``feature`` is
standardised with held-out normal statistics, the KL maps are averaged over t, and map = (1 - w)·KL + w·feature with w = ``feature_weight`` (RAN: 1:1, w = 0.5).
Image score: mean of the top-64 pixels (config default, ``postprocess.finish``).
``normalise: per-image`` is the reference's combination (``calc_bpd_loop``, which its script
runs one image at a time): each ``kl_t``'s per-channel map z-scored over the image's channels
and pixels (unbiased std) before the channel mean, the feature term raw, weights as above. It
is a function of the image alone too, but it rescales every image's KL map to unit variance, so
an image's score says how peaked its map is rather than how large (``raydiff parity``: on MPDD
metal_plate the KL part's I-AUROC falls from 0.75 to 0.09 with it; docs/parity.md).

UNet forward passes per image: len(timesteps) (with shared noise, fewer when another variant has
already evaluated ε_θ at one of the steps k). φ: once per t on x̂0 (φ(x0) is shared through the
cache).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from raydiff import diffusion as D
from raydiff.config import KLConfig
from raydiff.features import PHI_BASE
from raydiff.scoring.context import BatchCache
from raydiff.scoring.postprocess import normalise, upsample
from raydiff.scoring.sampling import respaced_on_device

#: The ResNet blocks of the feature-level score.
FEATURE_LAYERS: tuple[str, ...] = ("layer2", "layer3")
#: RAN's φ instance: the base one, never domain-adapted (that is DynAD's own copy; issue 29).
PHI = PHI_BASE
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


def kl_map_channels(
    sched: D.Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
    v: torch.Tensor | None, clip_x0: bool = False, fixed_large: bool = False,
) -> torch.Tensor:
    """RAN eq. 9 per pixel and channel: KL(q(x_{t-1}|x_t,x0) ‖ p_θ(x_{t-1}|x_t)) in bits.

    ``sched`` is the chain being scored (the model's schedule, or a respaced one with ``t`` an
    index on it); ``x0``, ``x_t``, ``eps``, ``v`` (B,C,H,W); ``t`` LongTensor (B,) with t ≥ 1;
    ``v`` None for a model with fixed variance: β̃_t, or β_t with ``fixed_large`` (a model whose
    spec says ``variance: fixed-large``); ``clip_x0`` clips x̂0 to [-1, 1] in p_θ's mean.
    → (B,C,H,W) float32 ≥ 0.
    """
    mean_q, _, log_var_q = D.q_posterior(sched, x0, x_t, t)  # DDPM eq. 7
    model_out = eps if v is None else torch.cat([eps, v], dim=1)
    p = D.p_mean_variance(sched, model_out, x_t, t, learned_variance=v is not None, clip_x0=clip_x0,
                          fixed_large=fixed_large and v is None)
    return gaussian_kl_bits(mean_q, log_var_q, p.mean, p.log_var)


def kl_map(
    sched: D.Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
    v: torch.Tensor | None, clip_x0: bool = False, fixed_large: bool = False,
) -> torch.Tensor:
    """:func:`kl_map_channels` averaged over channels: (B,H,W) float32 ≥ 0."""
    return kl_map_channels(sched, x0, x_t, t, eps, v, clip_x0, fixed_large).mean(dim=1)


def per_image_zscore(kl_c: torch.Tensor) -> torch.Tensor:
    """The reference's standardisation (VandyLu/anomaly_diff ``calc_bpd_loop``, run at batch 1):
    each image's per-channel map (B,C,H,W) minus its mean over channels and pixels, divided by
    their unbiased standard deviation, then averaged over channels → (B,H,W)."""
    flat = kl_c.flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    std = flat.std(dim=1, unbiased=True).clamp_min(1e-12).view(-1, 1, 1, 1)
    return ((kl_c - mean) / std).mean(dim=1)


def space_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """The original steps a chain respaced to ``steps`` keeps, ascending (guided/improved-diffusion
    respace.py ``space_timesteps(num_timesteps, [steps])``): k_i = round(i·(T-1)/(N-1)), the
    stride accumulated in floating point as there. ``space_timesteps(1000, 250)[[5, 50, 100]]``
    = 20, 201, 401.

    Raises ValueError unless 1 ≤ steps ≤ num_timesteps.
    """
    if not 1 <= steps <= num_timesteps:
        raise ValueError(
            f"cannot respace a {num_timesteps}-step schedule to {steps} steps; "
            f"use 1 <= chain_steps <= {num_timesteps} (or 0 for the model's own schedule)"
        )
    stride = 1.0 if steps <= 1 else (num_timesteps - 1) / (steps - 1)
    kept, cur = [], 0.0
    for _ in range(steps):
        kept.append(round(cur))
        cur += stride
    return kept


def scoring_chain(
    sched: D.Schedule, params: KLConfig, device: torch.device
) -> tuple[D.Schedule, dict[int, int]]:
    """The chain the KL is scored on and {t of ``params.timesteps``: the model's step k}.

    ``chain_steps = 0``: the model's schedule, k = t. ``chain_steps = N``: the schedule respaced
    to N steps (:func:`space_timesteps`, ``raydiff.scoring.sampling.respaced_schedule``: the
    ``SpacedDiffusion`` betas), tables on ``device``, k = k_t. Raises ValueError for a t outside
    1 … (chain length - 1) (t = 0 has no previous step to score).
    """
    n = params.chain_steps
    length = n if n > 0 else sched.timesteps
    bad = [t for t in params.timesteps if not 1 <= t < length]
    if bad:
        what = f"the {n}-step respaced chain (chain_steps = {n})" if n > 0 else f"the model's {length}-step schedule"
        raise ValueError(
            f"kl: timesteps {bad} are not steps 1 … {length - 1} of {what}; "
            + ("with chain_steps > 0 the timesteps index the respaced chain (RAN: 5, 50, 100 of 250)."
               if n > 0 else f"use timesteps in 1 … {length - 1} (RAN: 20, 200, 400 of 1000).")
        )
    if n == 0:
        return sched, {t: t for t in params.timesteps}
    kept = space_timesteps(sched.timesteps, n)
    return respaced_on_device(sched, tuple(kept), device), {t: kept[t] for t in params.timesteps}


def fresh_level(cache: BatchCache, kind: str, k: int) -> dict[str, torch.Tensor]:
    """ε_θ(x_k, k) at x_k = q_sample(x0, k, ε_k) with ε_k a noise draw of its own for step k of
    model ``kind``: {"x_t", "eps", "v" (or absent), "noise"}, memoised in the batch cache (kl
    instances on the same model share it). ε_k is seeded from (run seed, image id, "kl-fresh",
    kind, noise kind, k): independent per t, and of the batch the image is in."""
    model = cache.model(kind)
    x0 = cache.x0

    def compute() -> dict[str, torch.Tensor]:
        seeds = cache.seeds("kl-fresh", kind, model.noise_kind, k)
        noise = cache.draw_noise(model.noise_kind, tuple(x0.shape), seeds, kind)
        kk = torch.full((x0.shape[0],), k, dtype=torch.long, device=x0.device)
        xt = D.q_sample(model.schedule, x0, kk, noise)  # DDPM eq. 4
        with torch.no_grad():
            eps, v = cache.unet(kind, xt, kk)
        out = {"x_t": xt, "eps": eps, "noise": noise}
        if v is not None:
            out["v"] = v
        return out

    return cache.memo(("kl-fresh", kind, k, model.noise_kind), compute)


def feature_mse_map(
    feats_x0: Mapping[str, torch.Tensor], feats_rec: Mapping[str, torch.Tensor], size: int,
    layers: Sequence[str] = FEATURE_LAYERS,
) -> torch.Tensor:
    """mean_j upsample(mean_c (φ_j(x0) - φ_j(x̂0))²): {layer: (B,C_j,h_j,w_j)} pair → (B,size,size) ≥ 0."""
    maps = [upsample((feats_x0[j] - feats_rec[j]).pow(2).mean(dim=1), size) for j in layers]
    return torch.stack(maps).mean(dim=0)


def components(cache: BatchCache, variant_id: str, params: KLConfig) -> dict[str, torch.Tensor]:
    """{"kl_t{t}": (B,H,W) for each t, "feature": (B,H,W)} (raw, unnormalised; float32 ≥ 0)."""
    kind = cache.model_of(variant_id)
    model = cache.model(kind)
    x0 = cache.x0
    size = x0.shape[-1]
    chain, model_step = scoring_chain(model.schedule, params, x0.device)
    phi_x0 = cache.features_x0(PHI)
    out: dict[str, torch.Tensor] = {}
    feature_sum = torch.zeros(x0.shape[0], size, size, device=x0.device)
    fixed_large = cache.reverse_variance(kind, "model") == "fixed-large"
    for t in params.timesteps:
        k = model_step[t]  # the model's step: the UNet is conditioned on k (``_WrappedModel``)
        # 1. x_t and ε_θ(x_t, k): the shared draw, or one of its own for this t.
        if params.fresh_noise:
            level = fresh_level(cache, kind, k)
        else:
            level = cache.forward_eps(kind, k, model.noise_kind)
        # 2. KL of the step t → t-1 of the chain (DDPM eq. 7, iDDPM eq. 15 on its β, β̃).
        tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
        kl_c = kl_map_channels(chain, x0, level["x_t"], tt, level["eps"], level.get("v"), params.clip_x0, fixed_large)
        out[kl_component(t)] = per_image_zscore(kl_c) if params.normalise == "per-image" else kl_c.mean(dim=1)
        # 3. φ of the clipped one-step reconstruction (ᾱ of the chain at t = ᾱ_k).
        x0_hat = D.predict_x0(chain, level["x_t"], tt, level["eps"]).clamp(-1.0, 1.0)  # DDPM eq. 15
        with torch.no_grad():
            phi_rec = cache.ctx.phi(PHI)(x0_hat)
        feature_sum += feature_mse_map(phi_x0, phi_rec, size)
    out[FEATURE] = feature_sum / len(params.timesteps)
    return out


def combine(
    variant_id: str, comps: dict[str, torch.Tensor], stats: Mapping[str, tuple[float, float]] | None,
    params: KLConfig,
) -> torch.Tensor:
    """(1 - w)·mean_t norm(kl_t) + w·norm(feature), (B,H,W), higher = more anomalous."""

    def norm(name: str) -> torch.Tensor:
        if params.normalise == "per-image":  # the reference's: KL z-scored per image, feature term raw
            return comps[name]
        return normalise(comps[name], stats[name] if stats else None)

    kl = torch.stack([norm(kl_component(t)) for t in params.timesteps]).mean(dim=0)
    w = params.feature_weight
    return (1.0 - w) * kl + w * norm(FEATURE)
