"""``kl`` on RAN's reference chain (issue 16): ``chain_steps``, ``clip_x0``, ``fresh_noise``.

Independent reference: the respaced chain, q's posterior, p_θ's mean (clipped x̂0) and learned
log-variance, and the Gaussian KL in bits, written here in numpy float64 from the closed forms
(DDPM eqs. 4, 6-7, 15; iDDPM eq. 15; guided/improved-diffusion ``space_timesteps`` and
``SpacedDiffusion``), around a tiny random diffusers UNet with learned variance. Also: the
reference's steps 5/50/100 of 250 are 20/201/401 of 1000; clipping changes exactly the pixels
whose x̂0 leaves [-1, 1]; fresh noise gives a different x_t per t and the same map for an image
in any batch; ``chain_steps = 0`` is the earlier single-step behaviour.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raydiff import diffusion as D
from raydiff.config import KLConfig, config_from_dict
from raydiff.models.checkpoint import DiffusionModel
from raydiff.models.presets import build_unet
from raydiff.scoring import ran_kl
from raydiff.scoring.context import BatchCache, CategoryContext

SIZE, T = 16, 1000
REFERENCE = KLConfig(timesteps=(5, 50, 100), chain_steps=250, clip_x0=True, fresh_noise=True)


def _phi(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A stand-in for the ResNet blocks (the KL maps do not use φ; the feature term does)."""
    return {"layer2": F.avg_pool2d(x, 2), "layer3": F.avg_pool2d(x.tanh(), 4)}


@pytest.fixture(scope="module")
def model() -> DiffusionModel:
    torch.manual_seed(0)
    unet = build_unet("tiny", 3, 6, SIZE, base_channels=8)  # ε and v (learned variance)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape))  # away from the init, so v is not ~0
    return DiffusionModel(unet=unet.eval().requires_grad_(False), kind="pixel", channels=3, learned_variance=True,
                          noise_kind="gaussian", schedule=D.Schedule.build("linear", T))


def _images(seed: int, n: int) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _cache(model: DiffusionModel, x0: torch.Tensor, ids: list[str]) -> BatchCache:
    cfg = config_from_dict({"dataset": {"image_size": SIZE}, "seed": 0})
    ctx = CategoryContext(cfg=cfg, category="c", models={}, features=_phi)
    cache = BatchCache(ctx, x0, ids)
    ctx.models[cache.model_of("kl")] = model
    return cache


def _level(cache: BatchCache, params: KLConfig, k: int) -> dict[str, torch.Tensor]:
    """What ``components`` used at the model's step k (memoised in the cache)."""
    kind = cache.model_of("kl")
    if params.fresh_noise:
        return ran_kl.fresh_level(cache, kind, k)
    return cache.forward_eps(kind, k, "gaussian")


def _reference_kl(model: DiffusionModel, x0: torch.Tensor, noise: torch.Tensor, steps: int, i: int,
                  clip: bool) -> tuple[np.ndarray, np.ndarray]:
    """KL map (B,H,W) in bits of step i → i-1 on the chain respaced to ``steps``, and x̂0 (B,C,H,W),
    in float64 from the closed forms; the UNet is called at the original step k_i."""
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)  # linear schedule (DDPM)
    ac = np.cumprod(1.0 - betas)
    frac_stride = (T - 1) / (steps - 1)  # space_timesteps(T, [steps]), one section
    kept = sorted({round(j * frac_stride) for j in range(steps)})
    ac_kept = ac[kept]  # ᾱ'_j = ᾱ_{k_j}; β'_j = 1 - ᾱ'_j / ᾱ'_{j-1} (SpacedDiffusion)
    b = 1.0 - ac_kept[i] / ac_kept[i - 1]
    a_bar, a_bar_prev = ac_kept[i], ac_kept[i - 1]
    k = kept[i]
    x0_, eps_in = x0.double().numpy(), noise.double().numpy()
    x_t = np.sqrt(ac[k]) * x0_ + np.sqrt(1 - ac[k]) * eps_in  # DDPM eq. 4 at the original step
    with torch.no_grad():
        out = model.unet(torch.from_numpy(x_t).float(), torch.full((x0.shape[0],), k)).sample.double().numpy()
    eps, v = out[:, :3], out[:, 3:]
    x0_hat = (x_t - np.sqrt(1 - a_bar) * eps) / np.sqrt(a_bar)  # DDPM eq. 15
    if clip:
        x0_hat = np.clip(x0_hat, -1.0, 1.0)
    post_var = b * (1 - a_bar_prev) / (1 - a_bar)  # β̃'_i (DDPM eq. 7)
    c1 = b * np.sqrt(a_bar_prev) / (1 - a_bar)
    c2 = (1 - a_bar_prev) * np.sqrt(1 - b) / (1 - a_bar)
    mean_q, mean_p = c1 * x0_ + c2 * x_t, c1 * x0_hat + c2 * x_t
    f = (v + 1) / 2  # iDDPM eq. 15 on the respaced β', β̃'
    log_var_p = f * np.log(b) + (1 - f) * np.log(post_var)
    log_var_q = np.log(post_var)
    kl = 0.5 * (-1 + log_var_p - log_var_q + np.exp(log_var_q - log_var_p) + (mean_q - mean_p) ** 2 * np.exp(-log_var_p))
    return (kl / np.log(2.0)).mean(axis=1), x0_hat


def test_space_timesteps_is_the_reference_respacing() -> None:
    kept = ran_kl.space_timesteps(T, 250)
    assert len(kept) == 250 and kept[0] == 0 and kept[-1] == T - 1
    assert [kept[t] for t in (5, 50, 100)] == [20, 201, 401]  # docs/methods.md, kl: ≈ 20/201/401 of 1000
    assert ran_kl.space_timesteps(T, T) == list(range(T))
    with pytest.raises(ValueError):
        ran_kl.space_timesteps(T, T + 1)


@pytest.mark.parametrize("fresh", [True, False])
@pytest.mark.parametrize("clip", [True, False])
def test_respaced_kl_matches_a_float64_closed_form(model: DiffusionModel, clip: bool, fresh: bool) -> None:
    x0 = _images(1, 2)
    params = replace(REFERENCE, clip_x0=clip, fresh_noise=fresh)
    cache = _cache(model, x0, ["a", "b"])
    comps = ran_kl.components(cache, "kl", params)
    assert set(comps) == {"kl_t5", "kl_t50", "kl_t100", "feature"}
    feature = torch.zeros(2, SIZE, SIZE, dtype=torch.float64)
    for i, k in zip((5, 50, 100), (20, 201, 401), strict=True):
        noise = _level(cache, params, k)["noise"]
        ref, x0_hat = _reference_kl(model, x0, noise, 250, i, clip)
        got = comps[f"kl_t{i}"]
        assert got.shape == (2, SIZE, SIZE) and got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), ref, rtol=2e-3, atol=1e-5, err_msg=f"t={i}")
        # The feature term compares φ(x0) with φ of the clipped x̂0 at that chain step.
        rec = torch.from_numpy(np.clip(x0_hat, -1, 1)).float()
        feature += ran_kl.feature_mse_map(_phi(x0), _phi(rec), SIZE).double()
    np.testing.assert_allclose(comps["feature"].numpy(), (feature / 3).numpy(), rtol=1e-3, atol=1e-6)


def test_clip_x0_changes_exactly_the_pixels_whose_x0_leaves_the_range(model: DiffusionModel) -> None:
    x0 = _images(2, 2)
    cache = _cache(model, x0, ["a", "b"])
    clipped = ran_kl.components(cache, "kl", REFERENCE)
    raw = ran_kl.components(cache, "kl", replace(REFERENCE, clip_x0=False))  # same draws (memoised)
    level = _level(cache, REFERENCE, 401)
    resp = ran_kl.scoring_chain(model.schedule, REFERENCE, x0.device)[0]
    x0_hat = D.predict_x0(resp, level["x_t"], torch.full((2,), 100), level["eps"])
    outside = (x0_hat.abs() > 1).any(dim=1)  # (B,H,W): some channel is clipped
    assert 0 < outside.float().mean() < 1, "the test needs pixels on both sides"
    diff = (clipped["kl_t100"] - raw["kl_t100"]).abs()
    assert (diff[outside] > 1e-6).all()
    assert diff[~outside].max() < 1e-6
    torch.testing.assert_close(clipped["feature"], raw["feature"])  # φ always sees the clipped x̂0


def test_fresh_noise_differs_per_t_and_does_not_depend_on_the_batch(model: DiffusionModel) -> None:
    x = _images(3, 3)
    one = _cache(model, x[:2], ["a", "b"])
    comps_one = ran_kl.components(one, "kl", REFERENCE)
    # One UNet pass and one noise draw per t (plus φ's, which are not counted here).
    assert one.forwards["shared"] == 3 and one.noise_draws[("gaussian", (2, 3, SIZE, SIZE))] == 3
    noises = [_level(one, REFERENCE, k)["noise"] for k in (20, 201, 401)]
    shared = one.forward_eps(one.model_of("kl"), 20, "gaussian")["noise"]
    for m, a in enumerate(noises):
        assert abs(np.corrcoef(a.flatten().numpy(), shared.flatten().numpy())[0, 1]) < 0.1
        for b in noises[m + 1 :]:
            assert abs(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]) < 0.1
    # Image "b" first in a batch of two other images: the same draws, the same maps.
    other = _cache(model, torch.stack([x[2], x[1]]), ["c", "b"])
    comps_other = ran_kl.components(other, "kl", REFERENCE)
    for name in comps_one:
        np.testing.assert_allclose(comps_other[name][1].numpy(), comps_one[name][1].numpy(),
                                   rtol=1e-4, atol=1e-6, err_msg=name)
    for k, a in zip((20, 201, 401), noises, strict=True):
        torch.testing.assert_close(_level(other, REFERENCE, k)["noise"][1], a[1])


def test_chain_steps_0_is_the_single_step_behaviour(model: DiffusionModel) -> None:
    x0 = _images(4, 2)
    params = KLConfig(timesteps=(20, 200, 400))
    assert (params.chain_steps, params.clip_x0, params.fresh_noise) == (0, False, False)
    cache = _cache(model, x0, ["a", "b"])
    got = ran_kl.components(cache, "kl", params)
    # The earlier components(), line for line: one shared draw, the model's own schedule, no clip.
    sched = model.schedule
    for t in params.timesteps:
        shared = cache.forward_eps(cache.model_of("kl"), t, "gaussian")
        tt = torch.full((2,), t, dtype=torch.long)
        expected = ran_kl.kl_map(sched, x0, shared["x_t"], tt, shared["eps"], shared.get("v"))
        torch.testing.assert_close(got[f"kl_t{t}"], expected, rtol=0, atol=0)
    assert cache.forwards["shared"] == 3  # the three shared levels, nothing else
    # Respacing to all 1000 steps keeps the chain: the same maps up to rounding.
    full = ran_kl.components(_cache(model, x0, ["a", "b"]), "kl", replace(params, chain_steps=T))
    for name in got:
        np.testing.assert_allclose(full[name].numpy(), got[name].numpy(), rtol=1e-3, atol=1e-6, err_msg=name)
    # ... while the 250-step chain scores a longer step (k_i → k_{i-1}) at the same x_t.
    resp = ran_kl.components(_cache(model, x0, ["a", "b"]), "kl", replace(params, timesteps=(5, 50, 100), chain_steps=250))
    assert not np.allclose(resp["kl_t50"].numpy(), got["kl_t200"].numpy(), rtol=1e-2)


def test_timesteps_outside_the_chain_fail_loudly(model: DiffusionModel) -> None:
    cache = _cache(model, _images(5, 1), ["a"])
    with pytest.raises(ValueError, match="respaced chain"):
        ran_kl.components(cache, "kl", KLConfig(timesteps=(5, 250), chain_steps=250))
    with pytest.raises(ValueError, match="timesteps"):
        ran_kl.components(cache, "kl", KLConfig(timesteps=(0, 20)))
    with pytest.raises(ValueError, match="chain_steps"):
        ran_kl.components(cache, "kl", KLConfig(timesteps=(5,), chain_steps=T + 1))


def test_components_of_a_fixed_large_model_use_beta_for_p() -> None:
    """``kl`` on an ε-only model whose spec says ``variance: fixed-large`` scores with σ² = β_t
    (``BatchCache.reverse_variance``), on a fixed-small one with β̃_t."""
    torch.manual_seed(1)
    unet = build_unet("tiny", 3, 3, SIZE, base_channels=8).eval().requires_grad_(False)
    eps_only = DiffusionModel(unet=unet, kind="m", channels=3, learned_variance=False, noise_kind="gaussian",
                              schedule=D.Schedule.build("linear", T))
    x0 = _images(5, 2)
    maps = {}
    for variance in ("fixed-small", "fixed-large"):
        cfg = config_from_dict({"dataset": {"image_size": SIZE}, "models": {"m": {"arch": "pixel", "variance": variance}},
                                "variants": {"k": {"method": "kl", "model": "m", "timesteps": [20, 200]}}})
        cache = BatchCache(CategoryContext(cfg=cfg, category="c", models={"m": eps_only}, features=_phi), x0, ["a", "b"])
        with torch.no_grad():
            maps[variance] = ran_kl.components(cache, "k", cfg.variants.params("k"))
        for t in (20, 200):
            level = cache.forward_eps("m", t, "gaussian")
            tt = torch.full((2,), t, dtype=torch.long)
            expected = ran_kl.kl_map(eps_only.schedule, x0, level["x_t"], tt, level["eps"], None,
                                     fixed_large=variance == "fixed-large")
            torch.testing.assert_close(maps[variance][ran_kl.kl_component(t)], expected)
    assert not torch.allclose(maps["fixed-small"]["kl_t200"], maps["fixed-large"]["kl_t200"])
