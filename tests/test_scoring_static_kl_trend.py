"""Scoring variants static-*, no-diffusion, kl, trend(-intensity/-uncertainty).

Independent references: float64 closed forms and torch.distributions (KL), numpy.fft (DFT),
diffusers' DDPMScheduler with custom timesteps (respaced DDPM chain); behaviour on a tiny model
trained on the texture data (pasted foreign patch scores higher inside than outside), forward-pass
counts against the closed forms in the module docstrings, batch-size/composition invariance.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from raydiff import diffusion as D
from raydiff.scoring import kim_trend, ran_kl, sampling



# --------------------------------------------------------------------------------------------
# Pure maths
# --------------------------------------------------------------------------------------------


def test_gaussian_kl_bits_closed_form_and_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    mq, mp = torch.randn(500, generator=g), torch.randn(500, generator=g)
    lq, lp = torch.randn(500, generator=g) - 3, torch.randn(500, generator=g) - 3
    got = ran_kl.gaussian_kl_bits(mq, lq, mp, lp).double()
    # float64 closed form, written independently: KL = log(σp/σq) + (σq² + Δμ²)/(2σp²) - 1/2 (nats)
    mq64, mp64, lq64, lp64 = (np.asarray(a, dtype=np.float64) for a in (mq, mp, lq, lp))
    sq, sp = np.exp(0.5 * lq64), np.exp(0.5 * lp64)
    ref = (np.log(sp / sq) + (sq**2 + (mq64 - mp64) ** 2) / (2 * sp**2) - 0.5) / np.log(2.0)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-6)
    dist = torch.distributions.kl_divergence(
        torch.distributions.Normal(mq.double(), lq.double().mul(0.5).exp()),
        torch.distributions.Normal(mp.double(), lp.double().mul(0.5).exp()),
    ) / math.log(2.0)
    torch.testing.assert_close(got, dist, rtol=1e-4, atol=1e-6)
    assert (got >= -1e-6).all()
    assert ran_kl.gaussian_kl_bits(mq, lq, mq, lq).abs().max() < 1e-6


def test_kl_map_is_zero_at_the_posterior_and_grows_with_the_mean_error() -> None:
    sched = D.Schedule.build("linear", 1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(2, 3, 8, 8, generator=g)
    for t_ in (1, 20, 200, 400, 999):
        t = torch.full((2,), t_, dtype=torch.long)
        x_t = D.q_sample(sched, x0, t, noise)
        eps = D.predict_eps(sched, x_t, t, x0)  # the model that knows x0: μ_θ = μ̃
        v = -torch.ones_like(eps)  # frac = 0: log σ² = log β̃ (iDDPM eq. 15)
        m = ran_kl.kl_map(sched, x0, x_t, t, eps, v)
        assert m.shape == (2, 8, 8)
        assert m.abs().max() < 1e-3, (t_, m.abs().max())
        worse = ran_kl.kl_map(sched, x0, x_t, t, eps + 0.1, v)
        assert (worse > m).all()


def test_dft_magnitude_against_numpy_ramp_vs_noise() -> None:
    n = 8
    ramp = torch.linspace(0, 1, n).view(n, 1, 1, 1).expand(n, 2, 4, 4).contiguous()
    noise = torch.randn(n, 2, 4, 4, generator=torch.Generator().manual_seed(2)) * 0.05 + 0.5
    for seq in (ramp, noise):
        ref = np.abs(np.fft.fft(seq.double().numpy(), axis=0)[1])
        np.testing.assert_allclose(kim_trend.dft_magnitude(seq).numpy(), ref, rtol=1e-5, atol=1e-6)
    # A slow monotone trend has a large second coefficient; noise around a mean a small one.
    assert kim_trend.dft_magnitude(ramp).min() > 5 * kim_trend.dft_magnitude(noise).max()
    # It ignores the mean (index 0).
    torch.testing.assert_close(kim_trend.dft_magnitude(ramp + 3.0), kim_trend.dft_magnitude(ramp))


def test_reverse_timesteps() -> None:
    assert sampling.reverse_timesteps(200, 200) == list(range(200, 0, -1))
    assert sampling.reverse_timesteps(50, 5) == [50, 40, 30, 20, 10]
    assert sampling.reverse_timesteps(7, 1) == [7]
    for t0 in (1, 7, 50, 199):
        for s in range(1, t0 + 1):
            taus = sampling.reverse_timesteps(t0, s)
            assert len(taus) == s and taus[0] == t0 and min(taus) >= 1
            assert all(a > b for a, b in zip(taus, taus[1:], strict=False))
    with pytest.raises(ValueError):
        sampling.reverse_timesteps(5, 6)


class _AnalyticModel:
    """ε_θ and v as fixed smooth functions of (x_t, t) — a stand-in UNet for sampler tests."""

    def __init__(self, sched: D.Schedule, learned: bool, noise_kind: str = "gaussian") -> None:
        self.schedule, self.learned_variance, self.noise_kind = sched, learned, noise_kind
        self.channels = 3

    def model_output(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = (t.float() / 1000).view(-1, 1, 1, 1)
        eps = torch.tanh(0.7 * x_t + s) + 0.1 * x_t.roll(1, dims=-1)
        v = torch.tanh(x_t - s) * 0.9 if self.learned_variance else None
        return eps, v


class _FakeCache:
    """The slice of BatchCache that ``sampling.reverse_to_clean`` uses."""

    def __init__(self, model: _AnalyticModel) -> None:
        from types import SimpleNamespace

        self._model, self.calls = model, 0
        self.ctx = SimpleNamespace(cfg=SimpleNamespace(models=None))

    def model(self, kind: str) -> _AnalyticModel:
        return self._model

    def unet(self, kind: str, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.calls += 1
        return self._model.model_output(x, t)

    def seeds(self, *purpose: object) -> list[int]:
        return [0]

    def reverse_variance(self, kind: str, requested: str) -> str:
        return requested


@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("t0,steps", [(12, 12), (30, 4), (9, 1)])
def test_respaced_ddpm_matches_diffusers_custom_timesteps(
    monkeypatch: pytest.MonkeyPatch, learned: bool, t0: int, steps: int
) -> None:
    sched = D.Schedule.build("linear", 1000)
    model = _AnalyticModel(sched, learned)
    x_start = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(3)) * 2 - 1
    gen_ours = torch.Generator().manual_seed(4)
    monkeypatch.setattr(
        sampling, "step_noise", lambda cache, model, kind, shape, seeds: torch.randn(shape, generator=gen_ours)
    )
    cache = _FakeCache(model)
    ours = sampling.reverse_to_clean(cache, "pixel", x_start, t0, steps, "ddpm", purpose=("test",))
    assert cache.calls == steps

    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True,
                        variance_type="learned_range" if learned else "fixed_small")
    taus = sampling.reverse_timesteps(t0, steps)
    ref.set_timesteps(timesteps=taus)
    gen_ref = torch.Generator().manual_seed(4)
    x = x_start
    for tau in ref.timesteps:
        eps, v = model.model_output(x, torch.tensor([int(tau)]))
        out = eps if v is None else torch.cat([eps, v], dim=1)
        step = ref.step(out, tau, x, generator=gen_ref)
        x, x0_pred = step.prev_sample, step.pred_original_sample
    # diffusers also adds noise at the last step (var β̃' = 0 clamped to 1e-20; learned: a mix of
    # that and β'): the clean estimate of the last step is the reference for the final image.
    torch.testing.assert_close(ours, x0_pred, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_unclipped_chain_matches_diffusers_without_clip_sample(monkeypatch: pytest.MonkeyPatch, sampler: str) -> None:
    """``clip_x0=False`` (Kashihara eq. 5): the chain follows the closed forms without clipping x̂0;
    the references are diffusers' DDPMScheduler with ``clip_sample=False`` and DDIM's eq. 12."""
    sched = D.Schedule.build("linear", 1000)
    model = _AnalyticModel(sched, learned=False)
    x_start = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(3)) * 2.4 - 1.2  # x̂0 leaves [-1, 1]
    t0, steps = 30, 6
    gen = torch.Generator().manual_seed(4)
    monkeypatch.setattr(sampling, "step_noise", lambda cache, model, kind, shape, seeds: torch.randn(shape, generator=gen))
    ours = sampling.reverse_to_clean(_FakeCache(model), "pixel", x_start, t0, steps, sampler, purpose=("t",),
                                     clip_x0=False)
    gen.manual_seed(4)
    clipped = sampling.reverse_to_clean(_FakeCache(model), "pixel", x_start, t0, steps, sampler, purpose=("t",))
    assert ours.abs().max() > 1.0 and clipped.abs().max() <= 1.0

    taus = sampling.reverse_timesteps(t0, steps)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    ref.set_timesteps(timesteps=taus)
    gen_ref = torch.Generator().manual_seed(4)
    x = x_start
    for i, tau in enumerate(taus):
        eps, _ = model.model_output(x, torch.tensor([tau]))
        if sampler == "ddpm":
            step = ref.step(eps, tau, x, generator=gen_ref)
            x, x0_pred = step.prev_sample, step.pred_original_sample
        else:  # DDIM eq. 12 (η = 0) in float64, unclipped, to the next τ or the clean image (ᾱ = 1)
            ac = ref.alphas_cumprod.double()
            a_t = ac[tau]
            a_prev = ac[taus[i + 1]] if i + 1 < len(taus) else torch.tensor(1.0, dtype=torch.float64)
            x0_pred = (x.double() - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()
            x = (a_prev.sqrt() * x0_pred + (1 - a_prev).sqrt() * eps.double()).float()
    torch.testing.assert_close(ours, x0_pred.float() if sampler == "ddpm" else x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("t0,steps", [(20, 20), (50, 5)])
def test_ddim_chain_is_deterministic_and_counts_steps(t0: int, steps: int) -> None:
    sched = D.Schedule.build("linear", 1000)
    cache = _FakeCache(_AnalyticModel(sched, learned=False))
    x_start = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(5)) * 2 - 1
    a = sampling.reverse_to_clean(cache, "pixel", x_start, t0, steps, "ddim", purpose=("x",))
    b = sampling.reverse_to_clean(cache, "pixel", x_start, t0, steps, "ddim", purpose=("y",))
    assert cache.calls == 2 * steps
    assert torch.equal(a, b) and a.abs().max() <= 1.0
    # Reference: the same walk with the diffusion module's DDIM step (tested against diffusers).
    x = x_start
    taus = sampling.reverse_timesteps(t0, steps) + [-1]
    for tau, prev in zip(taus[:-1], taus[1:], strict=True):
        tt = torch.full((2,), tau)
        eps, _ = cache._model.model_output(x, tt)
        x = D.ddim_step(sched, x, tt, torch.full((2,), prev), eps, clip_x0=True).prev_sample
    torch.testing.assert_close(a, x)


def test_x0_probe_gradient_matches_autograd_of_x0_hat() -> None:
    sched = D.Schedule.build("linear", 1000)
    model = _AnalyticModel(sched, learned=False)
    g = torch.Generator().manual_seed(6)
    x_t, r = torch.randn(2, 3, 5, 5, generator=g), torch.randn(2, 3, 5, 5, generator=g)
    for t_ in (10, 200, 700):
        t = torch.full((2,), t_)
        xe = x_t.clone().requires_grad_(True)
        (g_eps,) = torch.autograd.grad((model.model_output(xe, t)[0] * r).sum(), xe)
        xx = x_t.clone().requires_grad_(True)
        x0_hat = D.predict_x0(sched, xx, t, model.model_output(xx, t)[0])
        (g_x0,) = torch.autograd.grad((x0_hat * r).sum(), xx)
        got = kim_trend.x0_probe_gradient(g_eps, r, sched.alphas_cumprod[t_])
        torch.testing.assert_close(got, g_x0, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# The variants through score_batch, on models trained on the texture data (tests/conftest.py)
# --------------------------------------------------------------------------------------------

OURS = ("static-gaussian", "static-simplex", "static-gmm", "no-diffusion", "kl",
        "trend", "trend-intensity", "trend-uncertainty")
SIZE = 32
PATCH = (slice(10, 22), slice(10, 22))


def _trend(**params: object) -> dict[str, dict[str, object]]:
    """trend, trend-intensity and trend-uncertainty with ``params`` (one computation, three maps)."""
    outputs = {"trend": "both", "trend-intensity": "intensity", "trend-uncertainty": "uncertainty"}
    return {name: {"method": "trend", "model": "pixel", **params, "output": output} for name, output in outputs.items()}


#: Paper settings scaled to 32 px (post-processing), a briefly trained model (t0 = 100 instead of
#: 200 for static: at 32 px level 200 already wipes out most of the texture) and a CPU test
#: (10 reverse steps).
VARIANTS_32PX = {
    "static-gaussian": {"method": "static", "model": "pixel", "t0": 100, "steps": 10, "sampler": "ddpm", "smoothing_size": 3},
    "static-simplex": {"method": "static", "model": "pixel-simplex", "t0": 100, "steps": 10, "sampler": "ddpm",
                       "smoothing_size": 3},
    "static-gmm": {"method": "static", "model": "pixel-gmm", "t0": 100, "steps": 10, "sampler": "ddim", "smoothing_size": 3},
    "no-diffusion": {"method": "no-diffusion", "model": "pixel", "t0": 50, "steps": 5, "sampler": "ddim"},
    "dynamic": {"method": "dynamic", "model": "latent"},
    "dynamic-pixel": {"method": "dynamic", "model": "pixel"},
    "kl": {"method": "kl", "model": "pixel", "timesteps": [20, 200, 400]},
    **_trend(levels=[25, 50, 75, 100, 150, 200, 300, 400], sigma=1.0),
}


def _scoring_cfg(base_cfg, **variants):  # noqa: ANN001, ANN202
    from raydiff.config import config_from_dict, config_to_dict

    data = config_to_dict(base_cfg)
    data["variants"] = {**VARIANTS_32PX, **variants, "enabled": list(OURS)}
    return config_from_dict(data)


def _images(texture_models, category: str, split: str) -> tuple[torch.Tensor, list[str]]:  # noqa: ANN001
    import polars as pl

    from raydiff.data.images import load_image

    rows = texture_models.manifest.filter(
        (pl.col("category") == category) & (pl.col("split") == split) & (pl.col("label") == 0)
    ).sort("image_id")
    arrays = [load_image(p, SIZE, 1, "resize") for p in rows["image_path"]]
    return torch.from_numpy(np.stack(arrays)), [f"{category}/{i}" for i in rows["image_id"]]


class Scoring:
    """A category context with the three pixel kinds, φ (random init) and fitted statistics."""

    def __init__(self, texture_models) -> None:  # noqa: ANN001
        from raydiff.features import build_features
        from raydiff.scoring.context import CategoryContext
        from raydiff.scoring.fit import FittedState, normalisation_stats

        self.cfg = _scoring_cfg(texture_models.cfg)
        models = {k: texture_models.model(k) for k in ("pixel", "pixel-simplex", "pixel-gmm")}
        phi, _ = build_features(self.cfg.features, seed=0)
        self.ctx = CategoryContext(cfg=self.cfg, category="brick", models=models, features=phi)
        normal, normal_ids = _images(texture_models, "brick", "train")
        stats = normalisation_stats(self.ctx, normal[:2], normal_ids[:2], OURS, batch_size=2)
        self.ctx.fitted = FittedState(stats=stats)
        good, self.good_ids = _images(texture_models, "brick", "test")
        grass, _ = _images(texture_models, "grass", "train")
        self.good = good[:2]
        self.patched = self.good.clone()
        self.patched[(slice(None), slice(None), *PATCH)] = grass[0][(slice(None), *PATCH)]
        self.mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        self.mask[PATCH] = True


@pytest.fixture(scope="module")
def scoring(texture_models) -> Scoring:  # noqa: ANN001
    return Scoring(texture_models)


@pytest.fixture(scope="module")
def patched_results(scoring: Scoring) -> dict:
    from raydiff.scoring import score_batch

    return score_batch(scoring.ctx, scoring.patched, ["patched/0", "patched/1"], OURS)


@pytest.mark.slow
@pytest.mark.trains
@pytest.mark.parametrize("variant", OURS)
def test_pasted_foreign_patch_scores_higher_inside(scoring: Scoring, patched_results: dict, variant: str) -> None:
    res = patched_results[variant]
    maps = torch.from_numpy(res.maps)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == torch.float32 and torch.isfinite(maps).all()
    inside, outside = maps[:, scoring.mask].mean(dim=1), maps[:, ~scoring.mask].mean(dim=1)
    assert (inside > outside).all(), (variant, inside.tolist(), outside.tolist())


def _expected_forwards(cfg) -> dict[str, int]:  # noqa: ANN001
    """Closed-form UNet forward passes per image of each variant scored alone (module docstrings)."""
    p = cfg.variants.params
    trend = p("trend")
    return {
        "static-gaussian": p("static-gaussian").steps,
        "static-simplex": p("static-simplex").steps,
        "static-gmm": p("static-gmm").steps,
        "no-diffusion": p("no-diffusion").steps,
        "kl": len(p("kl").timesteps),
        "trend": len(trend.levels) if trend.reconstruction == "one-step"
        else sum(min(trend.ddim_steps, t) for t in trend.levels),
    }


@pytest.mark.slow
@pytest.mark.trains
def test_forward_passes_per_variant_and_shared(scoring: Scoring) -> None:
    from raydiff.scoring import raw_components, score_batch

    x, ids = scoring.good[:1], scoring.good_ids[:1]
    ddim_trend = _scoring_cfg(scoring.cfg, **_trend(levels=[3, 25, 50], reconstruction="ddim", ddim_steps=4))
    for cfg in (scoring.cfg, ddim_trend):
        ctx = replace(scoring.ctx, cfg=cfg)
        expected = _expected_forwards(cfg)
        for vid in OURS:
            family = "trend" if vid.startswith("trend") else vid
            got = score_batch(ctx, x, ids, [vid])[vid].forwards_per_image
            assert got == expected[family], (vid, got, expected[family])
    assert _expected_forwards(ddim_trend)["trend"] == 3 + 4 + 4
    # All together: static-gaussian (t0 = 100) goes first and evaluates ε_θ at t = 100, which
    # trend reuses for its reconstruction but still needs its own gradient pass; kl (20, 200, 400)
    # shares nothing with static; trend's 8 gradient passes are its own.
    _, cache, _ = raw_components(scoring.ctx, x, ids, OURS)
    expected = _expected_forwards(scoring.cfg)
    assert dict(cache.forwards) == expected
    # With t0 = 200, one of kl's timesteps, kl reuses static's pass at t = 200.
    t0_200 = _scoring_cfg(scoring.cfg, **{"static-gaussian": {"method": "static", "model": "pixel", "t0": 200, "steps": 10}})
    _, cache, _ = raw_components(replace(scoring.ctx, cfg=t0_200), x, ids, OURS)
    assert cache.forwards["kl"] == expected["kl"] - 1
    assert sum(cache.forwards.values()) == sum(expected.values()) - 1


@pytest.mark.slow
@pytest.mark.trains
def test_same_seed_same_maps_across_batch_size_and_composition(scoring: Scoring) -> None:
    from raydiff.scoring import score_batch

    x = torch.cat([scoring.good, scoring.patched])
    ids = [*scoring.good_ids[:2], "patched/0", "patched/1"]
    together = score_batch(scoring.ctx, x, ids, OURS)
    alone = [score_batch(scoring.ctx, x[i : i + 1], ids[i : i + 1], OURS) for i in (0, 3)]
    mixed = score_batch(scoring.ctx, x[[3, 1, 0]], [ids[3], ids[1], ids[0]], OURS)
    for vid in OURS:
        ref = together[vid].maps
        # The UNet's CPU kernels differ by ~1e-6 between batch sizes: equal up to float noise.
        tol = dict(rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
        np.testing.assert_allclose(alone[0][vid].maps[0], ref[0], **tol, err_msg=vid)
        np.testing.assert_allclose(alone[1][vid].maps[0], ref[3], **tol, err_msg=vid)
        np.testing.assert_allclose(mixed[vid].maps, ref[[3, 1, 0]], **tol, err_msg=vid)
        np.testing.assert_allclose(mixed[vid].scores, together[vid].scores[[3, 1, 0]], **tol, err_msg=vid)
    # A different seed changes the stochastic variants.
    other = score_batch(_with_seed(scoring, 1), x[:1], ids[:1], ["static-gaussian"])
    assert not np.allclose(other["static-gaussian"].maps[0], together["static-gaussian"].maps[0])


def _with_seed(scoring: Scoring, seed: int):  # noqa: ANN202
    return replace(scoring.ctx, cfg=replace(scoring.cfg, seed=seed))


class _OracleModel:
    """Knows x0: ε_θ(x_t, t) = the ε that produced x_t and v = -1 (σ² = β̃_t), i.e. p_θ = q."""

    def __init__(self, sched: D.Schedule, x0: torch.Tensor) -> None:
        self.schedule, self.x0 = sched, x0
        self.learned_variance, self.noise_kind, self.channels = True, "gaussian", x0.shape[1]

    def model_output(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return D.predict_eps(self.schedule, x_t, t, self.x0), -torch.ones_like(x_t)


def test_kl_components_vanish_for_a_model_equal_to_the_posterior() -> None:
    from raydiff.config import BUILTIN_VARIANTS, config_from_dict
    from raydiff.features import build_features
    from raydiff.scoring.context import BatchCache, CategoryContext

    builtins = {name: {"method": b.method, "model": b.model} for name, b in BUILTIN_VARIANTS.items()}
    kl = {"method": "kl", "model": "pixel", "timesteps": [1, 20, 200, 400]}
    cfg = config_from_dict({"dataset": {"image_size": 32}, "variants": {**builtins, "kl": kl}})
    x0 = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(7)) * 2 - 1
    sched = D.Schedule.from_config(cfg.model_spec("pixel"))
    phi, _ = build_features(cfg.features)
    ctx = CategoryContext(cfg=cfg, category="c", models={"pixel": _OracleModel(sched, x0)}, features=phi)
    comps = ran_kl.components(BatchCache(ctx, x0, ["a", "b"]), "kl", cfg.variants.params("kl"))
    assert set(comps) == {"kl_t1", "kl_t20", "kl_t200", "kl_t400", "feature"}
    for name, m in comps.items():
        assert m.shape == (2, 32, 32)
        assert m.abs().max() < 1e-3, (name, float(m.abs().max()))
    # ε_θ off by δ: μ_θ - μ̃ = -β_t δ / (√α_t √(1-ᾱ_t)) (DDPM eq. 11), same variance, so the KL is
    # (μ_θ - μ̃)² / (2 β̃_t) / ln 2 per pixel (float64 closed form).
    delta = 0.2

    class _Off(_OracleModel):
        def model_output(self, x_t, t):  # noqa: ANN001, ANN202
            eps, v = super().model_output(x_t, t)
            return eps + delta, v

    ctx.models["pixel"] = _Off(sched, x0)
    off = ran_kl.components(BatchCache(ctx, x0, ["a", "b"]), "kl", cfg.variants.params("kl"))
    betas = sched.betas.double()
    ac = torch.cumprod(1 - betas, 0)
    for t in (1, 20, 200, 400):
        post_var = betas[t] * (1 - ac[t - 1]) / (1 - ac[t])
        dmu = betas[t] * delta / ((1 - betas[t]).sqrt() * (1 - ac[t]).sqrt())
        expected = float(dmu**2 / (2 * post_var) / math.log(2.0))
        np.testing.assert_allclose(off[f"kl_t{t}"].numpy(), expected, rtol=2e-3, err_msg=f"t={t}")
    assert off["feature"].mean() > 10 * comps["feature"].abs().max()


@pytest.mark.slow
@pytest.mark.trains
def test_bf16_autocast_scores_match_fp32(scoring: Scoring, patched_results: dict) -> None:
    """The GPU path (bf16 autocast of the UNet calls) against the fp32 path, on the CPU.

    Documented tolerance: bf16 keeps 8 mantissa bits (~0.4 % per value) and the reverse chains
    compound it, so maps are compared by shape, not bits: per variant the Pearson correlation of
    the maps ≥ 0.95, image scores within 5 % of the fp32 map's spread, and the patch still
    scores higher inside than outside in every image.
    """
    import dataclasses

    from raydiff.scoring import score_batch

    ctx = dataclasses.replace(scoring.ctx, autocast_dtype=torch.bfloat16)
    bf16 = score_batch(ctx, scoring.patched, ["patched/0", "patched/1"], OURS)
    for v in OURS:
        ref, got = patched_results[v], bf16[v]
        assert got.maps.shape == ref.maps.shape and got.maps.dtype == np.float32, v
        corr = np.corrcoef(ref.maps.ravel(), got.maps.ravel())[0, 1]
        assert corr >= 0.95, (v, corr)
        spread = float(ref.maps.max() - ref.maps.min())
        np.testing.assert_allclose(got.scores, ref.scores, atol=0.05 * spread, rtol=0, err_msg=v)
        inside = got.maps[:, scoring.mask.numpy()].mean(axis=1)
        outside = got.maps[:, ~scoring.mask.numpy()].mean(axis=1)
        assert (inside > outside).all(), v
