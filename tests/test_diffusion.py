"""raydiff.diffusion against diffusers' schedulers (independent implementation) and closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from raydiff import diffusion as D
from raydiff.config import ModelSpec

KINDS = ["linear", "cosine", "dynad"]



def _cfg(kind: str, T: int = 1000) -> ModelSpec:
    return ModelSpec(schedule=kind, timesteps=T)  # type: ignore[arg-type]


def _ref(s: D.Schedule, **kw: object) -> DDPMScheduler:
    return DDPMScheduler(**s.diffusers_kwargs(), **kw)


@pytest.fixture(params=KINDS)
def sched(request: pytest.FixtureRequest) -> D.Schedule:
    return D.Schedule.from_config(_cfg(request.param))


def test_tables_match_diffusers(sched: D.Schedule) -> None:
    ref = _ref(sched)
    assert sched.betas.dtype == torch.float32 and sched.betas.shape == (1000,)
    torch.testing.assert_close(sched.betas, ref.betas, rtol=0, atol=0)
    torch.testing.assert_close(sched.alphas_cumprod, ref.alphas_cumprod, rtol=2e-5, atol=1e-7)
    # ᾱ_{t-1}, β̃_t as diffusers' _get_variance computes them (clamped at 1e-20 for t = 0).
    prev = torch.cat([torch.ones(1), ref.alphas_cumprod[:-1]])
    torch.testing.assert_close(sched.alphas_cumprod_prev, prev, rtol=2e-5, atol=1e-7)
    # diffusers recomputes β_t = 1 - ᾱ_t/ᾱ_{t-1} in float32 (cancellation at small t: ~4e-4 relative);
    # ours is float64 and is checked tightly against the closed form below.
    var = torch.stack([ref._get_variance(t, variance_type="fixed_small") for t in range(1000)])
    torch.testing.assert_close(sched.posterior_variance[1:], var[1:], rtol=1e-3, atol=1e-9)
    assert sched.posterior_variance[0] == 0
    assert sched.posterior_log_variance_clipped[0] == sched.posterior_log_variance_clipped[1]
    # Float64 closed forms of the schedule definitions (independent of diffusers).
    T = 1000
    if sched.kind == "cosine":
        f = lambda u: math.cos((u / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas64 = torch.tensor([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)], dtype=torch.float64)
    else:
        lo, hi = (0.0015, 0.0195) if sched.kind == "dynad" else (1e-4, 0.02)
        betas64 = torch.linspace(lo, hi, T, dtype=torch.float64)
    torch.testing.assert_close(sched.betas.double(), betas64, rtol=1e-6, atol=1e-9)
    ac = torch.cumprod(1 - betas64, 0)
    torch.testing.assert_close(sched.alphas_cumprod.double(), ac, rtol=2e-5, atol=1e-8)
    acp = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    c1 = betas64 * acp.sqrt() / (1 - ac)
    c2 = (1 - acp) * (1 - betas64).sqrt() / (1 - ac)
    torch.testing.assert_close(sched.posterior_mean_coef1.double(), c1, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(sched.posterior_mean_coef2.double(), c2, rtol=1e-4, atol=1e-9)
    pv = betas64 * (1 - acp) / (1 - ac)
    torch.testing.assert_close(sched.posterior_variance.double(), pv, rtol=1e-5, atol=1e-12)


def test_unknown_schedule_rejected() -> None:
    with pytest.raises(ValueError, match="unknown schedule"):
        D.Schedule.build("sigmoid", 100)  # type: ignore[arg-type]


def test_q_sample_matches_add_noise(sched: D.Schedule) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(5, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(5, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 998, 999])
    ours = D.q_sample(sched, x0, t, noise)
    ref = _ref(sched).add_noise(x0, noise, t)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # predict_x0 / predict_eps invert q_sample.
    torch.testing.assert_close(D.predict_eps(sched, ours, t, x0), noise, rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(D.predict_x0(sched, ours, t, noise), x0, rtol=1e-3, atol=5e-3)


@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range", "fixed_large"])
@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_step_matches_diffusers(sched: D.Schedule, variance_type: str, clip: bool) -> None:
    """x̂0, μ_θ, log σ² and the ancestral sample against DDPMScheduler.step for the same inputs
    (``fixed_large``: σ² = β_t, Fučka eq. 5)."""
    learned = variance_type == "learned_range"
    large = variance_type == "fixed_large"
    ref = _ref(sched, variance_type=variance_type, clip_sample=clip, prediction_type="epsilon")
    C = 2
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(1, C, 6, 6, generator=g)
    for t_int in (0, 1, 17, 500, 999):
        model_out = torch.randn(1, 2 * C if learned else C, 6, 6, generator=g)
        if learned:
            model_out[:, C:] = torch.tanh(model_out[:, C:])
        t = torch.tensor([t_int])
        out_ref = ref.step(model_out, t_int, x_t, generator=torch.Generator().manual_seed(7))
        noise = torch.randn(1, C, 6, 6, generator=torch.Generator().manual_seed(7))
        ours = D.ddpm_step(sched, model_out, x_t, t, noise, learned_variance=learned, clip_x0=clip, fixed_large=large)
        pm = D.p_mean_variance(sched, model_out, x_t, t, learned_variance=learned, clip_x0=clip, fixed_large=large)
        torch.testing.assert_close(pm.x0, out_ref.pred_original_sample, rtol=2e-4, atol=2e-4)
        torch.testing.assert_close(ours.pred_x0, out_ref.pred_original_sample, rtol=2e-4, atol=2e-4)
        if t_int > 0:
            v = model_out[:, C:] if learned else None
            ref_var = ref._get_variance(t_int, predicted_variance=v)
            ref_log_var = ref_var if learned else torch.log(ref_var)
            torch.testing.assert_close(pm.log_var.expand_as(x_t), torch.as_tensor(ref_log_var).expand_as(x_t),
                                       rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.prev_sample, out_ref.prev_sample, rtol=2e-4, atol=2e-4)


def test_q_posterior_is_the_gaussian_conditional() -> None:
    """μ̃, β̃ equal the conditional of the joint Gaussian (x_{t-1}, x_t) | x0 (float64 closed form)."""
    s = D.Schedule.from_config(_cfg("linear"))
    x0 = torch.tensor([[[[0.3]]], [[[-0.7]]]])
    x_t = torch.tensor([[[[1.1]]], [[[0.2]]]])
    t = torch.tensor([5, 400])
    mean, var, _ = D.q_posterior(s, x0, x_t, t)
    for i, ti in enumerate(t.tolist()):
        b = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32).double()
        ac = torch.cumprod(1 - b, 0)
        a_prev, a_t = ac[ti - 1], ac[ti]
        # x_{t-1} = √ᾱ_{t-1} x0 + √(1-ᾱ_{t-1}) e1 ; x_t = √α_t x_{t-1} + √β_t e2.
        var_prev, cov = 1 - a_prev, (1 - b[ti]).sqrt() * (1 - a_prev)
        var_t = 1 - a_t
        m = a_prev.sqrt() * x0[i].double() + cov / var_t * (x_t[i].double() - a_t.sqrt() * x0[i].double())
        v = var_prev - cov**2 / var_t
        torch.testing.assert_close(mean[i].double(), m, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(var[i].double().reshape(()), v.reshape(()), rtol=1e-3, atol=1e-9)


def test_ddim_step_and_loop_match_diffusers() -> None:
    """Deterministic DDIM (η = 0) with a tiny random-weight UNet, 10 steps, vs DDIMScheduler."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       layers_per_block=1, norm_num_groups=4).eval()
    s = D.Schedule.from_config(_cfg("linear"))
    ref = DDIMScheduler(**s.diffusers_kwargs(), clip_sample=False, set_alpha_to_one=True)
    ref.set_timesteps(10)
    x_ref = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    x = x_ref.clone()
    step = 1000 // 10
    with torch.no_grad():
        for ts in ref.timesteps.tolist():
            eps_ref = unet(x_ref, ts).sample
            x_ref = ref.step(eps_ref, ts, x_ref, eta=0.0).prev_sample
            t = torch.full((2,), ts, dtype=torch.long)
            eps = unet(x, t).sample
            x = D.ddim_step(s, x, t, t - step, eps).prev_sample
            torch.testing.assert_close(x, x_ref, rtol=1e-4, atol=1e-4)
    assert ref.timesteps[-1] - step < 0  # the last step went to ᾱ = 1 (t_prev = -1)
    # Stochastic DDIM with explicit noise equals diffusers with the same variance_noise.
    x_t = torch.randn(2, 1, 8, 8)
    eps = torch.randn(2, 1, 8, 8)
    z = torch.randn(2, 1, 8, 8)
    out_ref = ref.step(eps, 500, x_t, eta=0.7, variance_noise=z).prev_sample
    ours = D.ddim_step(s, x_t, torch.tensor([500, 500]), torch.tensor([400, 400]), eps, eta=0.7, noise=z)
    torch.testing.assert_close(ours.prev_sample, out_ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="noise"):
        D.ddim_step(s, x_t, torch.tensor([500, 500]), torch.tensor([400, 400]), eps, eta=0.7)


def test_per_image_timesteps() -> None:
    s = D.Schedule.from_config(_cfg("cosine"))
    x0 = torch.randn(3, 2, 4, 4)
    n = torch.randn(3, 2, 4, 4)
    t = torch.tensor([3, 300, 900])
    batch = D.q_sample(s, x0, t, n)
    for i in range(3):
        torch.testing.assert_close(batch[i : i + 1], D.q_sample(s, x0[i : i + 1], t[i : i + 1], n[i : i + 1]))
    with pytest.raises(ValueError, match="LongTensor"):
        D.q_sample(s, x0, torch.tensor(3), n)


def test_normal_kl_closed_form_and_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    ours = D.normal_kl(m1, lv1, m2, lv2)
    s1, s2 = (0.5 * lv1).exp(), (0.5 * lv2).exp()
    closed = torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    torch.testing.assert_close(ours, closed, rtol=1e-12, atol=1e-12)
    kl_td = torch.distributions.kl_divergence(torch.distributions.Normal(m1, s1), torch.distributions.Normal(m2, s2))
    torch.testing.assert_close(ours, kl_td, rtol=1e-10, atol=1e-12)
    assert (ours >= 0).all() and D.normal_kl(m1, lv1, m1, lv1).abs().max() < 1e-12


def test_discretized_likelihood_is_a_distribution() -> None:
    """Summed over the 256 bins the probabilities are 1; a bin's mass matches Φ differences."""
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in [(0.1, math.log(0.05)), (-0.9, math.log(0.3)), (0.999, math.log(0.01))]:
        lp = D.discretized_gaussian_log_likelihood(bins, torch.full_like(bins, mean), torch.full_like(bins, log_scale))
        assert abs(lp.exp().sum().item() - 1.0) < 1e-6
        normal = torch.distributions.Normal(mean, math.exp(log_scale))
        inner = normal.cdf(bins[100] + 1 / 255) - normal.cdf(bins[100] - 1 / 255)
        assert abs(lp[100].exp().item() - inner.item()) < 2e-3  # tanh approximation of Φ


def test_vlb_term() -> None:
    s = D.Schedule.from_config(_cfg("linear"))
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 1, 100, 999])
    x_t = D.q_sample(s, x0, t, noise)
    # The true posterior gives KL = 0 at t > 0.
    mean, _, log_var = D.q_posterior(s, x0, x_t, t)
    vlb = D.vlb_term(s, x0, x_t, t, mean, log_var.expand_as(mean))
    assert vlb.shape == (4,) and torch.isfinite(vlb).all()
    assert vlb[1:].abs().max() < 1e-5
    assert vlb[0] > 0  # decoder NLL in bits per dim
    # A wrong model mean costs bits, as (Δμ)² / (2σ² ln 2).
    off = D.vlb_term(s, x0, x_t, t, mean + 0.01, log_var.expand_as(mean), reduce=False)
    expect = 0.01**2 / (2 * log_var[2].exp()) / math.log(2)
    torch.testing.assert_close(off[2], expect.expand_as(off[2]), rtol=1e-3, atol=1e-6)
    # Learned variance from a model output is finite everywhere (v in [-1, 1]).
    v = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    lv = D.model_log_variance(s, v, t)
    assert torch.isfinite(D.vlb_term(s, x0, x_t, t, mean, lv)).all()
    # v = ±1 are the DDPM fixed choices.
    torch.testing.assert_close(D.model_log_variance(s, torch.ones_like(v), t), s.log_betas[t].reshape(4, 1, 1, 1).expand_as(v))
