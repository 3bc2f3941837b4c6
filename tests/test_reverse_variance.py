"""``variance: fixed-large`` of the static / no-diffusion variants reaches the ddpm steps (σ² = β,
Fučka eq. 5); the ddpm step itself is checked against diffusers in test_diffusion.py."""

from __future__ import annotations

import dataclasses

import torch

from raydiff import diffusion as D
from raydiff.config import StaticConfig, config_from_dict
from raydiff.models.checkpoint import DiffusionModel
from raydiff.models.presets import build_unet
from raydiff.scoring import kashihara_static
from raydiff.scoring.context import BatchCache, CategoryContext


def _cache() -> BatchCache:
    torch.manual_seed(0)
    unet = build_unet("tiny", 1, 2, 16, base_channels=8)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    cfg = config_from_dict({"variants": {"enabled": ["static-gaussian"]}})
    model = DiffusionModel(unet=unet.eval().requires_grad_(False), kind="pixel", channels=1, learned_variance=True,
                           noise_kind="gaussian", schedule=D.Schedule.from_config(cfg.model_spec("pixel")))
    ctx = CategoryContext(cfg=cfg, category="c", models={"pixel": model}, features=None)
    x0 = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return BatchCache(ctx, x0, ["a", "b"])


def test_fixed_large_changes_a_ddpm_chain_and_not_a_ddim_one() -> None:
    base = StaticConfig(t0=100, steps=10, sampler="ddpm")
    with torch.no_grad():
        model_var = kashihara_static.components(_cache(), "static-gaussian", base)["sq_error"]
        again = kashihara_static.components(_cache(), "static-gaussian", base)["sq_error"]
        large = kashihara_static.components(_cache(), "static-gaussian", dataclasses.replace(base, variance="fixed-large"))["sq_error"]
        ddim = StaticConfig(t0=100, steps=10, sampler="ddim")
        d1 = kashihara_static.components(_cache(), "static-gaussian", ddim)["sq_error"]
        d2 = kashihara_static.components(_cache(), "static-gaussian", dataclasses.replace(ddim, variance="fixed-large"))["sq_error"]
    torch.testing.assert_close(model_var, again)  # seeded: the difference below is the variance
    assert not torch.allclose(model_var, large)
    torch.testing.assert_close(d1, d2)  # ddim has no σ²


def test_fixed_large_is_beta_and_wider_than_the_posterior_variance() -> None:
    s = D.Schedule.build("linear", 1000, 1e-4, 1e-2)  # Fučka's schedule
    t = torch.tensor([1, 200, 999])
    x = torch.zeros(3, 1, 2, 2)
    out = torch.zeros(3, 1, 2, 2)
    large = D.p_mean_variance(s, out, x, t, learned_variance=False, fixed_large=True)
    small = D.p_mean_variance(s, out, x, t, learned_variance=False)
    torch.testing.assert_close(large.var[:, 0, 0, 0], s.betas[t])
    assert (large.var > small.var).all()
