"""Diffusion maths as small pure functions (DDPM, improved DDPM, DDIM).

Names follow lucidrains/denoising-diffusion-pytorch and diffusers; equations cite
Ho et al. 2020 (DDPM, "eq."), Nichol & Dhariwal 2021 (improved DDPM, "iDDPM") and Song et al.
2021 (DDIM). Notation:

==============================  =============================================
code                            paper
==============================  =============================================
``betas[t]``                    β_t
``alphas[t]``                   α_t = 1 - β_t
``alphas_cumprod[t]``           ᾱ_t = Π_{s≤t} α_s
``alphas_cumprod_prev[t]``      ᾱ_{t-1} (ᾱ_{-1} = 1)
``posterior_variance[t]``       β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)         (DDPM eq. 7)
``posterior_log_variance_clipped``  log β̃_t with β̃_0 replaced by β̃_1 (β̃_0 = 0)
``posterior_mean_coef1/2``      μ̃_t = coef1·x0 + coef2·x_t                     (DDPM eq. 7)
``eps``                         ε (the noise; its distribution is the model's noise kind)
``v``                           iDDPM variance interpolation in [-1, 1] (model output)
==============================  =============================================

Timesteps are 0-based as in diffusers: t ∈ {0, …, T-1}, t = 0 is the least noisy level, and
``t`` is always a LongTensor (B,) so every image of a batch may sit at its own level. Images
and latents are (B, C, H, W) float tensors; images live in [-1, 1].

Tables are computed in float64 from the betas diffusers' ``DDPMScheduler`` builds, and stored
as float32 (tests compare them with the scheduler's own float32 tables).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal, NamedTuple

import torch
from diffusers import DDPMScheduler
from torch import Tensor

ScheduleKind = Literal["linear", "cosine", "dynad"]

#: DynAD's linear schedule (JustinTebbe/Dynamic-noise-AD config: beta_start/end).
DYNAD_BETAS = (0.0015, 0.0195)


# --------------------------------------------------------------------------------------------
# Schedule tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Schedule:
    """The β schedule and every table derived from it; all tables (T,) float32.

    Build with :meth:`from_config`; move with :meth:`to` (the functions below also move a
    table to the device of their input on the fly).
    """

    kind: str
    timesteps: int
    beta_start: float
    beta_end: float
    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor
    log_betas: Tensor

    @classmethod
    def from_config(cls, models_cfg: Any) -> Schedule:
        """From ``cfg.models``: ``schedule`` (linear | cosine | dynad), ``beta_start/end``, ``timesteps``."""
        return cls.build(models_cfg.schedule, models_cfg.timesteps, models_cfg.beta_start, models_cfg.beta_end)

    @classmethod
    def build(cls, kind: ScheduleKind, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
        """``linear``: β linear beta_start→beta_end; ``cosine``: diffusers ``squaredcos_cap_v2``
        (Nichol & Dhariwal eq. 17, β capped at 0.999); ``dynad``: linear 0.0015→0.0195."""
        if kind == "dynad":
            beta_start, beta_end = DYNAD_BETAS
        elif kind not in ("linear", "cosine"):
            raise ValueError(f"unknown schedule {kind!r}; valid: linear, cosine, dynad")
        sched = _ddpm_scheduler(kind, timesteps, beta_start, beta_end)
        return cls.from_betas(sched.betas, kind=kind, beta_start=beta_start, beta_end=beta_end)

    @classmethod
    def from_betas(cls, betas: Tensor, kind: str = "custom", beta_start: float = float("nan"),
                   beta_end: float = float("nan")) -> Schedule:
        b = betas.detach().to("cpu", torch.float64)
        a = 1.0 - b
        ac = torch.cumprod(a, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        post_var = b * (1.0 - ac_prev) / (1.0 - ac)  # DDPM eq. 7 (β̃_t)
        # β̃_0 = 0: its log is clipped to β̃_1 as in improved-diffusion (the t = 0 decoder ignores it).
        post_log = torch.log(torch.cat([post_var[1:2], post_var[1:]])) if len(b) > 1 else torch.log(b)
        coef1 = b * torch.sqrt(ac_prev) / (1.0 - ac)
        coef2 = (1.0 - ac_prev) * torch.sqrt(a) / (1.0 - ac)
        f = lambda x: x.to(torch.float32).contiguous()  # noqa: E731
        return cls(
            kind=kind, timesteps=len(b), beta_start=float(beta_start), beta_end=float(beta_end),
            betas=f(b), alphas=f(a), alphas_cumprod=f(ac), alphas_cumprod_prev=f(ac_prev),
            sqrt_alphas_cumprod=f(ac.sqrt()), sqrt_one_minus_alphas_cumprod=f((1.0 - ac).sqrt()),
            posterior_variance=f(post_var), posterior_log_variance_clipped=f(post_log),
            posterior_mean_coef1=f(coef1), posterior_mean_coef2=f(coef2), log_betas=f(torch.log(b)),
        )

    def to(self, device: torch.device | str) -> Schedule:
        kw = {fl.name: getattr(self, fl.name) for fl in fields(self)}
        for k, v in kw.items():
            if isinstance(v, Tensor):
                kw[k] = v.to(device)
        return Schedule(**kw)

    def describe(self) -> dict[str, Any]:
        """JSON-able description (written to a checkpoint's meta.json)."""
        return {"kind": self.kind, "timesteps": self.timesteps, "beta_start": self.beta_start, "beta_end": self.beta_end}

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of a diffusers DDPM/DDIM scheduler with the same betas."""
        name = "squaredcos_cap_v2" if self.kind == "cosine" else "linear"
        if self.kind not in ("linear", "cosine", "dynad"):
            return {"num_train_timesteps": self.timesteps, "trained_betas": self.betas.tolist()}
        return {"num_train_timesteps": self.timesteps, "beta_schedule": name,
                "beta_start": self.beta_start, "beta_end": self.beta_end}


def _ddpm_scheduler(kind: str, timesteps: int, beta_start: float, beta_end: float) -> Any:
    name = "squaredcos_cap_v2" if kind == "cosine" else "linear"
    return DDPMScheduler(num_train_timesteps=timesteps, beta_schedule=name, beta_start=beta_start, beta_end=beta_end)


def extract(table: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``table[t]`` shaped (B, 1, 1, 1) to broadcast against ``like`` (B, C, H, W); float32."""
    if t.dim() != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must be a LongTensor (B,) with B = {like.shape[0]}, got shape {tuple(t.shape)}")
    out = table.to(like.device)[t.to(like.device).long()]
    return out.reshape(-1, *([1] * (like.dim() - 1)))


# --------------------------------------------------------------------------------------------
# Forward process and its posterior
# --------------------------------------------------------------------------------------------


def q_sample(s: Schedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε (DDPM eq. 4). ``noise`` of any kind, unit variance per pixel."""
    return extract(s.sqrt_alphas_cumprod, t, x0) * x0 + extract(s.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def predict_x0(s: Schedule, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """x̂0 = (x_t - √(1-ᾱ_t) ε) / √ᾱ_t (DDPM eq. 15; ``predict_start_from_noise``)."""
    return (x_t - extract(s.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / extract(s.sqrt_alphas_cumprod, t, x_t)


def predict_eps(s: Schedule, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
    """ε = (x_t - √ᾱ_t x0) / √(1-ᾱ_t) (eq. 4 solved for ε; ``predict_noise_from_start``)."""
    return (x_t - extract(s.sqrt_alphas_cumprod, t, x_t) * x0) / extract(s.sqrt_one_minus_alphas_cumprod, t, x_t)


def q_posterior(s: Schedule, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q(x_{t-1} | x_t, x0) = N(μ̃_t, β̃_t I) (DDPM eqs. 6-7) → (mean, var, log_var (clipped)).

    ``var`` and ``log_var`` are (B,1,1,1); at t = 0 ``var`` is 0 and ``log_var`` is log β̃_1.
    """
    mean = extract(s.posterior_mean_coef1, t, x_t) * x0 + extract(s.posterior_mean_coef2, t, x_t) * x_t
    return mean, extract(s.posterior_variance, t, x_t), extract(s.posterior_log_variance_clipped, t, x_t)


# --------------------------------------------------------------------------------------------
# Reverse process p_θ(x_{t-1} | x_t)
# --------------------------------------------------------------------------------------------


def model_log_variance(s: Schedule, v: Tensor, t: Tensor) -> Tensor:
    """Learned log σ² (iDDPM eq. 15): frac·log β_t + (1 - frac)·log β̃_t, frac = (v + 1)/2.

    ``v`` (B,C,H,W) is the model's raw variance output, nominally in [-1, 1] (as in
    improved-diffusion's LEARNED_RANGE and diffusers' ``learned_range``); not clamped.
    """
    frac = (v + 1.0) / 2.0
    max_log = extract(s.log_betas, t, v)
    min_log = extract(s.posterior_log_variance_clipped, t, v)
    return frac * max_log + (1.0 - frac) * min_log


def split_model_output(model_out: Tensor, channels: int, learned_variance: bool) -> tuple[Tensor, Tensor | None]:
    """(B, 2C, H, W) → (ε, v) when the variance is learned; (B, C, H, W) → (ε, None) otherwise."""
    expected = 2 * channels if learned_variance else channels
    if model_out.shape[1] != expected:
        raise ValueError(
            f"model output has {model_out.shape[1]} channels; expected {expected} "
            f"({'ε and v' if learned_variance else 'ε'} for {channels}-channel inputs)"
        )
    if learned_variance:
        eps, v = model_out.split(channels, dim=1)
        return eps, v
    return model_out, None


class MeanVariance(NamedTuple):
    mean: Tensor  # (B,C,H,W) μ_θ(x_t, t)
    var: Tensor  # (B,C,H,W) or (B,1,1,1) σ²
    log_var: Tensor  # same shape as var
    eps: Tensor  # (B,C,H,W) ε_θ (raw model output)
    x0: Tensor  # (B,C,H,W) x̂0 (clipped to [-1, 1] when asked)


def p_mean_variance(
    s: Schedule, model_out: Tensor, x_t: Tensor, t: Tensor, learned_variance: bool, clip_x0: bool = False,
    fixed_large: bool = False,
) -> MeanVariance:
    """Mean and variance of p_θ(x_{t-1} | x_t) for an ε-prediction model.

    μ_θ = μ̃_t(x̂0(x_t, ε_θ), x_t) (DDPM eqs. 7, 15); σ² learned (iDDPM eq. 15) when
    ``learned_variance`` (``model_out`` is (B, 2C, H, W): ε then v), else β̃_t (DDPM "fixed small");
    ``fixed_large``: σ² = β_t (DDPM "fixed large", Fučka eq. 5, Kashihara), also for a model that
    learned its variance (v is then ignored; diffusers' ``variance_type="fixed_large"``).
    ``clip_x0`` clamps x̂0 to [-1, 1] before computing the mean (pixel space only).
    """
    eps, v = split_model_output(model_out, x_t.shape[1], learned_variance)
    x0 = predict_x0(s, x_t, t, eps)
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    mean, post_var, post_log_var = q_posterior(s, x0, x_t, t)
    if fixed_large:
        var, log_var = extract(s.betas, t, x_t), extract(s.log_betas, t, x_t)
    elif v is not None:
        log_var = model_log_variance(s, v, t)
        var = log_var.exp()
    else:
        var, log_var = post_var, post_log_var
    return MeanVariance(mean, var, log_var, eps, x0)


class StepOutput(NamedTuple):
    prev_sample: Tensor  # x_{t_prev} (B,C,H,W)
    pred_x0: Tensor  # x̂0 used by the step (B,C,H,W)


def ddpm_step(
    s: Schedule, model_out: Tensor, x_t: Tensor, t: Tensor, noise: Tensor, learned_variance: bool,
    clip_x0: bool = False, fixed_large: bool = False,
) -> StepOutput:
    """Ancestral step x_{t-1} = μ_θ + σ_t·z (DDPM Algorithm 2), no noise where t = 0.

    ``noise`` z (B,C,H,W) is drawn by the caller from the model's noise kind (unit variance);
    σ² as in :func:`p_mean_variance` (``fixed_large``: β_t).
    """
    pm = p_mean_variance(s, model_out, x_t, t, learned_variance, clip_x0, fixed_large)
    nonzero = (t != 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.dim() - 1))).to(x_t.device)
    return StepOutput(pm.mean + nonzero * torch.exp(0.5 * pm.log_var) * noise, pm.x0)


def ddim_step(
    s: Schedule, x_t: Tensor, t: Tensor, t_prev: Tensor, eps: Tensor, eta: float = 0.0,
    noise: Tensor | None = None, clip_x0: bool = False,
) -> StepOutput:
    """DDIM update from t to t_prev < t (Song et al. eq. 12; σ_t(η) eq. 16).

    x_prev = √ᾱ_prev x̂0 + √(1 - ᾱ_prev - σ²) ε + σ z,  σ = η √((1-ᾱ_prev)/(1-ᾱ_t)) √(1 - ᾱ_t/ᾱ_prev).
    ``t_prev`` < 0 means "to x0" (ᾱ_prev = 1, diffusers' ``set_alpha_to_one``). ``eta = 0`` is
    deterministic; ``eta > 0`` needs ``noise`` (the model's noise kind).
    """
    ac_t = extract(s.alphas_cumprod, t, x_t)
    ac_full = torch.cat([s.alphas_cumprod.to(x_t.device), torch.ones(1, device=x_t.device)])
    tp = t_prev.to(x_t.device).long()
    ac_prev = ac_full[torch.where(tp < 0, s.timesteps, tp)].reshape_as(ac_t)  # t_prev < 0 → the appended 1
    x0 = (x_t - (1.0 - ac_t).sqrt() * eps) / ac_t.sqrt()  # eq. 12 "predicted x0"
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    sigma = eta * ((1.0 - ac_prev) / (1.0 - ac_t) * (1.0 - ac_t / ac_prev)).sqrt()  # eq. 16
    prev = ac_prev.sqrt() * x0 + (1.0 - ac_prev - sigma**2).clamp(min=0.0).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs `noise` (draw it from the model's noise kind)")
        prev = prev + sigma * noise
    return StepOutput(prev, x0)


# --------------------------------------------------------------------------------------------
# Likelihood terms (improved-diffusion losses.py / gaussian_diffusion.py)
# --------------------------------------------------------------------------------------------


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) per element, in nats (broadcasting)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Φ(x) by the tanh approximation used in improved-diffusion (max abs error ~3e-4)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """log p(x) per element for 8-bit data in [-1, 1] under a Gaussian discretised into 256 bins
    of width 2/255 (DDPM §3.3, eq. 13); the outer bins extend to ±∞. Nats, shape of ``x``."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999, log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )


def vlb_term(
    s: Schedule, x0: Tensor, x_t: Tensor, t: Tensor, model_mean: Tensor, model_log_var: Tensor,
    reduce: bool = True,
) -> Tensor:
    """The variational bound term L_t in bits (iDDPM eqs. 4-6; improved-diffusion ``_vb_terms_bpd``).

    t > 0: KL(q(x_{t-1}|x_t,x0) ‖ p_θ(x_{t-1}|x_t)); t = 0: -log p_θ(x0|x1) with the discretised
    Gaussian decoder (DDPM eq. 13). ``reduce``: mean over (C,H,W) → (B,) bits per dimension;
    else per element (B,C,H,W). Higher = the model explains x_{t-1} worse.
    """
    true_mean, _, true_log_var = q_posterior(s, x0, x_t, t)
    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var.expand_as(model_mean)) / math.log(2.0)
    is_zero = (t == 0).reshape(-1, *([1] * (x0.dim() - 1))).to(x0.device)
    out = torch.where(is_zero, nll, kl.expand_as(nll))
    return out.mean(dim=tuple(range(1, out.dim()))) if reduce else out
