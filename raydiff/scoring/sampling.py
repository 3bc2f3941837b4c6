"""Partial reverse processes shared by ``static-*``, ``no-diffusion`` and ``trend`` (DDIM option).

Kashihara's two tricks and Fučka's reconstruction all run the reverse chain from a level t0 down
to the clean image in S UNet evaluations; Kim et al.'s trend may reconstruct each level the
same way with DDIM. The maths lives in :mod:`raydiff.diffusion`; this module only chooses the
timesteps and walks them.

Timesteps (diffusers indexing, ᾱ_t = ``alphas_cumprod[t]``, as every raydiff variant): the
UNet is evaluated at τ_i = t0 - ⌊i·t0 / S⌋, i = 0 … S-1 (so τ_0 = t0, where x_t0 lives, and
τ_{S-1} = t0 - ⌊(S-1)·t0/S⌋ ≥ 1), and the last step goes to the clean image (ᾱ = 1). S = 1 is
the one-step estimate x̂0(x_t0); S = t0 walks every level t0, t0-1, …, 1 (its last step, from
τ = 1 to the clean image, merges levels 1 and 0).

- ``ddim``: deterministic DDIM (Song et al. eq. 12, η = 0) between consecutive τ.
- ``ddpm``: ancestral sampling (DDPM Alg. 2) on the chain *respaced* to the τ (improved-diffusion
  ``respace.py``: β'_j = 1 - ᾱ_{τ_j}/ᾱ_{τ_{j-1}}), so a learned variance interpolates between
  the respaced β' and β̃' (iDDPM eq. 15) and a fixed one is β̃' ("fixed small", diffusers'
  default; Fučka's eq. 5 writes σ² = β, "fixed large"). Between consecutive levels β' = β, so the
  respaced chain is the original one; diffusers' ``DDPMScheduler`` with custom timesteps τ takes
  the same steps (tested).
  The random term z of every step is drawn from the model's noise kind, seeded per
  (run seed, image id, purpose, τ) — independent of the batch — on the compute device.

No host syncs inside the loop: the respaced tables live on the device (built once per chain
shape), timesteps are filled on the device, noise is generated there.

x̂0 is clipped to [-1, 1] in every step (guided-diffusion's ``clip_denoised``, diffusers'
``clip_sample``) unless ``clip_x0=False`` (Kashihara eq. 5 does not clip); the result is the
clean image estimate (B,C,H,W), in [-1, 1] when clipped.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import torch

from raydiff import diffusion as D
from raydiff.scoring.context import BatchCache

Sampler = Literal["ddpm", "ddim"]


def reverse_timesteps(t0: int, steps: int) -> list[int]:
    """The S = ``steps`` UNet timesteps τ_i = t0 - ⌊i·t0/S⌋, strictly decreasing, all ≥ 1.

    Raises ValueError unless 1 ≤ steps ≤ t0 (config enforces it for the variants).
    """
    if not 1 <= steps <= t0:
        raise ValueError(f"need 1 <= steps <= t0, got steps={steps}, t0={t0}")
    return [t0 - (i * t0) // steps for i in range(steps)]


def respaced_schedule(sched: D.Schedule, taus: Sequence[int]) -> D.Schedule:
    """The chain restricted to ``taus`` (improved-diffusion respace): index j ↔ sorted(taus)[j].

    β'_0 = 1 - ᾱ_{k_0}, β'_j = 1 - ᾱ_{k_j} / ᾱ_{k_{j-1}} for k = sorted(taus); computed in float64
    from the betas, so ᾱ'_j = ᾱ_{k_j} and a full chain reproduces the original betas. The
    tables are on the CPU (see :func:`respaced_on_device`).
    """
    kept = sorted(taus)
    ac = torch.cumprod(1.0 - sched.betas.detach().to("cpu", torch.float64), 0)
    ac_kept = ac[kept]
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac_kept[:-1]])
    return D.Schedule.from_betas(1.0 - ac_kept / ac_prev, kind=f"respaced-{sched.kind}")


@functools.lru_cache(maxsize=64)
def respaced_on_device(sched: D.Schedule, taus: tuple[int, ...], device: torch.device) -> D.Schedule:
    """:func:`respaced_schedule` with its tables on ``device``, built and copied once per
    (schedule, timesteps, device): a chain's steps then index device tables, with no copy (and
    no host sync) per step. ``sched`` is keyed by identity (a model's schedule lives as long as
    the model)."""
    return respaced_schedule(sched, taus).to(device)


def step_noise(cache: BatchCache, kind: str, noise_kind: str, shape: tuple[int, ...], seeds: list[int]) -> torch.Tensor:
    """z for one ancestral step: unit-variance noise of model ``kind``'s noise, one seed per
    image, drawn on the compute device by the batch cache (counted there; no host round trip)."""
    return cache.draw_noise(noise_kind, shape, seeds, kind)


def reverse_to_clean(
    cache: BatchCache,
    kind: str,
    x_start: torch.Tensor,
    t0: int,
    steps: int,
    sampler: Sampler,
    purpose: tuple[object, ...],
    first: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    variance: str = "model",
    clip_x0: bool = True,
) -> torch.Tensor:
    """Walk model ``kind``'s reverse chain from x_start (taken as x_t0) to a clean image.

    ``cache`` is the :class:`~raydiff.scoring.context.BatchCache` (counted UNet calls, seeds);
    ``first`` = (ε, v) already computed at (x_start, t0), e.g. shared through
    ``cache.forward_eps``: then the chain costs S - 1 new UNet passes, else S.
    ``purpose`` names the random stream of the ddpm terms (e.g. the variant id). ``variance``: the
    ddpm steps' σ² — ``model`` (the model's: learned, β̃ for fixed-small, β for fixed-large) or
    ``fixed-large`` (β). ``clip_x0``: clip x̂0 to [-1, 1] in every step (guided-diffusion's
    ``clip_denoised``); off, the steps follow the closed forms unclipped (Kashihara eq. 5).
    Returns x̂0 (B,C,H,W) float32 (in [-1, 1] when clipped).
    """
    model = cache.model(kind)
    variance = cache.reverse_variance(kind, variance)
    sched: D.Schedule = model.schedule
    taus = reverse_timesteps(t0, steps)
    resp = respaced_on_device(sched, tuple(taus), x_start.device) if sampler == "ddpm" else None
    batch = x_start.shape[0]
    x = x_start
    for i, tau in enumerate(taus):
        tt = torch.full((batch,), tau, dtype=torch.long, device=x.device)
        if i == 0 and first is not None:
            eps, v = first
        else:
            with torch.no_grad():
                eps, v = cache.unet(kind, x, tt)
        if sampler == "ddim":
            t_prev = taus[i + 1] if i + 1 < len(taus) else -1  # -1: the clean image, ᾱ = 1
            x = D.ddim_step(sched, x, tt, torch.full_like(tt, t_prev), eps, clip_x0=clip_x0).prev_sample
            continue
        j = len(taus) - 1 - i  # respaced index of τ_i
        if j > 0:
            seeds = cache.seeds("reverse", *purpose, tau)
            z = step_noise(cache, kind, model.noise_kind, tuple(x.shape), seeds)
        else:
            z = torch.zeros_like(x)  # the last step adds no noise
        out = eps if v is None else torch.cat([eps, v], dim=1)
        jj = torch.full_like(tt, j)
        assert resp is not None  # built above for sampler == "ddpm"
        x = D.ddpm_step(resp, out, x, jj, z, model.learned_variance, clip_x0=clip_x0,
                        fixed_large=variance == "fixed-large").prev_sample
    return x
