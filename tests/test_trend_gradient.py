"""Trend's uncertainty term (Kim et al.): the input gradient raydiff takes, checked against central
finite differences of the same function on a tiny model (issue 17: is trend-uncertainty's chance
level the method or a defect?)."""

from __future__ import annotations

import copy

import pytest
import torch

from raydiff import diffusion as D
from raydiff.config import BUILTIN_VARIANTS, config_from_dict
from raydiff.models.checkpoint import DiffusionModel
from raydiff.models.presets import build_unet
from raydiff.scoring.context import BatchCache, CategoryContext
from raydiff.scoring.kim_trend import probe_direction, x0_probe_gradient

SIZE = 16
#: The built-in variant instances in the named form (each names its method and model).
BUILTINS = {name: {"method": b.method, "model": b.model} for name, b in BUILTIN_VARIANTS.items()}


def tiny_model(seed: int = 0) -> DiffusionModel:
    torch.manual_seed(seed)
    unet = build_unet("tiny", 3, 3, SIZE, base_channels=8)
    with torch.no_grad():  # random init leaves some convs at zero: make the output depend on x
        g = torch.Generator().manual_seed(seed + 1)
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    cfg = config_from_dict({})
    return DiffusionModel(unet=unet.eval().requires_grad_(False), kind="pixel", channels=3, learned_variance=False,
                          noise_kind="gaussian", schedule=D.Schedule.from_config(cfg.model_spec("pixel")))


@pytest.mark.parametrize("t", [25, 200, 400])
def test_uncertainty_gradient_equals_finite_differences(t: int) -> None:
    """∂(Σ x̂0·r)/∂x_t as scoring computes it (one backward pass of Σ ε_θ·r, turned into the x̂0
    form) equals the central difference of f(x) = Σ x̂0(x)·r along random directions and along
    single pixels (f evaluated in float64 on a copy of the network)."""
    model = tiny_model()
    cfg = config_from_dict({"variants": {"enabled": ["trend"]}})
    ctx = CategoryContext(cfg=cfg, category="c", models={"pixel": model}, features=None)
    x0 = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    cache = BatchCache(ctx, x0, ["a", "b"])
    probe = probe_direction(cache.seeds("trend", "probe"), tuple(x0.shape), x0.device)
    shared, eps_grad = cache.eps_and_input_grad("pixel", t, "gaussian", probe)
    alpha_bar = model.schedule.alphas_cumprod[t]
    grad = x0_probe_gradient(eps_grad, probe, alpha_bar).double()

    unet64 = copy.deepcopy(model.unet).double()
    tt = torch.full((2,), t, dtype=torch.long)

    def f(x: torch.Tensor) -> torch.Tensor:  # per image: Σ x̂0(x)·r
        eps = unet64(x, tt).sample
        x0_hat = (x - (1 - alpha_bar.double()).sqrt() * eps) / alpha_bar.double().sqrt()
        return (x0_hat * probe.double()).flatten(1).sum(1)

    x = shared["x_t"].double()
    h = 1e-4
    g = torch.Generator().manual_seed(7)
    for _ in range(3):  # random directions: v·∇f
        v = torch.randn(x.shape, generator=g, dtype=torch.float64)
        fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
        torch.testing.assert_close((grad * v).flatten(1).sum(1), fd, rtol=2e-3, atol=2e-3)
    for b, c, yy, xx in ((0, 0, 0, 0), (1, 2, 7, 9), (0, 1, SIZE - 1, 3)):  # single pixels, border included
        e = torch.zeros_like(x)
        e[b, c, yy, xx] = 1.0
        fd = (f(x + h * e) - f(x - h * e))[b] / (2 * h)
        torch.testing.assert_close(grad[b, c, yy, xx], fd, rtol=2e-3, atol=2e-3)


def test_the_probe_dominates_the_uncertainty_map_of_an_untrained_denoiser() -> None:
    """Why trend-uncertainty can sit at chance: J^T r = (r - √(1-ᾱ) J_ε^T r)/√ᾱ keeps the probe r
    itself unless the model's ε-Jacobian cancels it (a well-trained denoiser's does where the
    image is predictable). For a network whose ε barely depends on its input, |J^T r| ≈ |r|/√ᾱ_t:
    a map of the random probe that grows smoothly with t, so its DFT trend is ∝ |r| per pixel."""
    model = tiny_model()
    with torch.no_grad():
        for p in model.unet.parameters():
            p.mul_(1e-3)  # ε ≈ constant: no cancellation
    cfg = config_from_dict({"variants": {"enabled": ["trend"]}})
    ctx = CategoryContext(cfg=cfg, category="c", models={"pixel": model}, features=None)
    x0 = torch.zeros(1, 3, SIZE, SIZE)
    cache = BatchCache(ctx, x0, ["a"])
    probe = probe_direction(cache.seeds("trend", "probe"), tuple(x0.shape), x0.device)
    for t in (25, 400):
        _, eps_grad = cache.eps_and_input_grad("pixel", t, "gaussian", probe)
        alpha_bar = model.schedule.alphas_cumprod[t]
        grad = x0_probe_gradient(eps_grad, probe, alpha_bar)
        torch.testing.assert_close(grad, probe / alpha_bar.sqrt(), rtol=1e-3, atol=1e-3)


def test_hutchinson_estimates_the_jacobian_diagonal() -> None:
    """r ⊙ Jᵀr averaged over Rademacher probes is unbiased for diag(J): exact for a diagonal J
    (r_i² = 1), and within Monte-Carlo error for a dense one."""
    from raydiff.scoring.kim_trend import hutchinson_diagonal

    g = torch.Generator().manual_seed(0)
    n = 12
    diag = torch.rand(n, generator=g) + 0.5
    dense = torch.diag(diag) + 0.1 * torch.randn(n, n, generator=g)

    def probes(k: int) -> list[torch.Tensor]:
        return [torch.randint(0, 2, (n,), generator=g).float() * 2 - 1 for _ in range(k)]

    est = hutchinson_diagonal([(r, torch.diag(diag).T @ r) for r in probes(1)])
    torch.testing.assert_close(est, diag)
    est = hutchinson_diagonal([(r, dense.T @ r) for r in probes(20000)])
    torch.testing.assert_close(est, torch.diagonal(dense), atol=0.02, rtol=0)


def test_trend_probes_take_k_gradient_passes_per_level() -> None:
    """`probes: K` runs K forward+backward passes per level and gives a finite, non-negative map;
    `probes: 0` keeps the one-probe map (the default before 2026-12-06; Kim's reproducing instances)."""
    from raydiff.scoring import kim_trend

    model = tiny_model()
    x0 = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    out = {}
    for k in (0, 3):
        trend = {"method": "trend", "model": "pixel", "levels": [25, 50, 100], "probes": k}
        cfg = config_from_dict({"variants": {
            "enabled": ["trend"], **BUILTINS, "trend": {**trend, "output": "both"},
            "trend-intensity": {**trend, "output": "intensity"}, "trend-uncertainty": {**trend, "output": "uncertainty"}}})
        ctx = CategoryContext(cfg=cfg, category="c", models={"pixel": model}, features=None)
        cache = BatchCache(ctx, x0, ["a", "b"])
        cache.current = "trend"
        out[k] = kim_trend.components(cache, "trend", cfg.variants.params("trend", "c"))
        assert cache.backwards["trend"] == 3 * max(k, 1)
    u = out[3]["uncertainty"]
    assert u.shape == (2, SIZE, SIZE) and torch.isfinite(u).all() and (u >= 0).all()
    assert not torch.allclose(u, out[0]["uncertainty"])
    torch.testing.assert_close(out[3]["intensity"], out[0]["intensity"])  # the intensity trend is unchanged
