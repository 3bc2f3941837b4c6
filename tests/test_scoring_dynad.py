"""DynAD scoring (``dynamic``, ``dynamic-pixel``) and the per-category fit step.

Independent references: diffusers' DDIMScheduler.step (guidance w = 0 is plain DDIM), a literal
transcription of the reference code's guided loop (JustinTebbe/Dynamic-noise-AD sample.py,
``my_generalized_steps`` with η = 0) for w > 0, an oracle model that reconstructs perfectly
(l_map = 0), seeds that cannot matter (noiseless start), batch-size invariance, a save/load
round trip of the fitted state, and a tiny model trained on the texture data that must score a
pasted foreign patch higher inside than outside.
"""

from __future__ import annotations

import json

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from raydiff import diffusion as D
from raydiff.config import Config, config_from_dict
from raydiff.scoring import dynad


T = 1000


# --------------------------------------------------------------------------------------------
# Tiny pieces shared by the tests
# --------------------------------------------------------------------------------------------


def tiny_unet(channels: int, size: int, seed: int, learned: bool = False) -> torch.nn.Module:
    from raydiff.models.presets import build_unet

    torch.manual_seed(seed)
    unet = build_unet("tiny", channels, channels * (2 if learned else 1), size, base_channels=8)
    # Random init leaves the last conv at zero in some diffusers versions: perturb every
    # parameter so the network's output really depends on its input.
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return unet.eval().requires_grad_(False)


def unet_eps(unet: torch.nn.Module) -> dynad.EpsFn:
    return lambda z, t: unet(z, t).sample[:, : z.shape[1]]


# --------------------------------------------------------------------------------------------
# Timesteps and the guided DDIM loop
# --------------------------------------------------------------------------------------------


def test_ddim_timesteps_per_image() -> None:
    t_hat = torch.tensor([20, 40, 30, 7, 3, 0, 80])
    ts = dynad.ddim_timesteps(t_hat, 5)
    assert ts.shape == (5, 7)
    expected = {
        20: [20, 16, 12, 8, 4],
        40: [40, 32, 24, 16, 8],
        30: [30, 24, 18, 12, 6],
        7: [7, 6, 5, 3, 2],  # τ_k = 7 - ⌊7k/5⌋
        3: [3, 2, 1, -1, -1],  # fewer steps than S: n = T̂
        0: [-1, -1, -1, -1, -1],
        80: [80, 64, 48, 32, 16],
    }
    for i, t in enumerate(t_hat.tolist()):
        assert ts[:, i].tolist() == expected[t]
    # 10 steps at the DynAD levels: strides of T̂/10, the paper's "for t = T̂, ..., 1".
    assert dynad.ddim_timesteps(torch.tensor([20]), 10)[:, 0].tolist() == list(range(20, 0, -2))


def _diffusers_ddim(sched: D.Schedule, eps_fn: dynad.EpsFn, z0: torch.Tensor, taus: list[int], t_hat: int) -> torch.Tensor:
    """diffusers' DDIMScheduler.step over ``taus`` then to the clean sample, from √ᾱ_T̂ z0."""
    ref = DDIMScheduler(**sched.diffusers_kwargs(), clip_sample=False, set_alpha_to_one=True, prediction_type="epsilon")
    torch.testing.assert_close(ref.alphas_cumprod.float(), sched.alphas_cumprod)
    z = ref.alphas_cumprod[t_hat].float().sqrt() * z0
    for tau, prev in zip(taus, taus[1:] + [-1], strict=True):
        stride = tau - prev  # diffusers steps from t to t - T // num_inference_steps
        ref.num_inference_steps = T // stride
        assert tau - T // ref.num_inference_steps == prev
        eps = eps_fn(z, torch.tensor([tau]))
        z = ref.step(eps, tau, z, eta=0.0).prev_sample
    return z


@pytest.mark.parametrize("schedule", ["linear", "dynad"])
def test_guidance_w0_equals_diffusers_ddim(schedule: str) -> None:
    sched = D.Schedule.build(schedule, T)
    unet = tiny_unet(4, 16, seed=0)
    z0 = torch.randn(6, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    t_hat = torch.tensor([20, 40, 30, 7, 3, 0])  # one batch, a level per image (3: fewer steps; 0: none)
    ours = dynad.reconstruct(unet_eps(unet), sched, z0, t_hat, steps=5, w=0.0)
    ts = dynad.ddim_timesteps(t_hat, 5)
    assert torch.equal(ours[5], z0[5])  # T̂ = 0: nothing to denoise
    for i in range(5):
        taus = [t for t in ts[:, i].tolist() if t >= 0]
        ref = _diffusers_ddim(sched, unet_eps(unet), z0[i : i + 1], taus, int(t_hat[i]))
        torch.testing.assert_close(ours[i : i + 1], ref, rtol=1e-4, atol=1e-5)
    # The model matters (the test could fail): a different network gives a different ẑ0.
    other = dynad.reconstruct(unet_eps(tiny_unet(4, 16, seed=5)), sched, z0, t_hat, steps=5, w=0.0)
    assert (other - ours).abs().max() > 1e-3


def _reference_guided_loop(y: torch.Tensor, x: torch.Tensor, seq: list[int], eps_fn: dynad.EpsFn,
                           betas: torch.Tensor, eta2: float) -> torch.Tensor:
    """JustinTebbe/Dynamic-noise-AD sample.py ``my_generalized_steps`` (η = 0), transcribed."""

    def compute_alpha(b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = torch.cat([torch.zeros(1), b], dim=0)
        return (1 - b).cumprod(dim=0).index_select(0, t + 1).view(-1, 1, 1, 1)

    xt = x
    for idx in reversed(range(len(seq))):
        t = torch.tensor([seq[idx]])
        next_t = torch.tensor([seq[idx - 1]]) if idx > 0 else torch.tensor([-1])
        at, at_next = compute_alpha(betas, t), compute_alpha(betas, next_t)
        et = eps_fn(xt, t)
        yt = at.sqrt() * y + (1 - at).sqrt() * et
        et_hat = et - (1 - at).sqrt() * eta2 * (yt - xt)
        x0_t = (xt - et_hat * (1 - at).sqrt()) / at.sqrt()
        xt = at_next.sqrt() * x0_t + (1 - at_next).sqrt() * et_hat
    return xt


@pytest.mark.parametrize("w", [0.0, 4.0, 9.0])
def test_guided_loop_matches_the_reference_code(w: float) -> None:
    sched = D.Schedule.build("dynad", T)
    unet = tiny_unet(4, 16, seed=2)
    z0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    t_hat = torch.tensor([40, 40])
    ours = dynad.reconstruct(unet_eps(unet), sched, z0, t_hat, steps=10, w=w)
    # Ascending, as the reference's seq, walked backwards; ours evaluates at T̂ first (the paper's
    # Alg. 1), the reference at T̂ - T̂/10, so its seq is ours: 4, 8, ..., 40.
    seq = list(range(4, 41, 4))
    start = sched.alphas_cumprod[40].sqrt() * z0
    ref = _reference_guided_loop(z0, start, seq, unet_eps(unet), sched.betas, w)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_guidance_pulls_towards_the_input() -> None:
    sched = D.Schedule.build("linear", T)
    unet = tiny_unet(4, 16, seed=4)
    z0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    t_hat = torch.tensor([80, 80])
    errs = [(dynad.reconstruct(unet_eps(unet), sched, z0, t_hat, 10, w) - z0).abs().mean() for w in (0.0, 2.0, 8.0)]
    assert errs[0] > errs[1] > errs[2]


def test_oracle_model_reconstructs_exactly_from_the_noiseless_start() -> None:
    sched = D.Schedule.build("linear", T)
    z0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(6))

    def oracle(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # knows every image
        return D.predict_eps(sched, z_t, t, z0[: z_t.shape[0]])

    for w in (0.0, 4.0):
        z_hat = dynad.reconstruct(oracle, sched, z0, torch.tensor([20, 20, 20]), 10, w)
        torch.testing.assert_close(z_hat, z0, rtol=0, atol=1e-5)
        assert dynad.latent_map(z_hat, z0, 32).abs().max() < 1e-5


# --------------------------------------------------------------------------------------------
# The variant on tiny random-weight models (fast)
# --------------------------------------------------------------------------------------------

SIZE = 32
DYN = {"t_max": 80, "ddim_steps": 4, "guidance_w": 4.0, "knn_k": 3, "bins": 10, "sigma": 1.0}


def small_cfg(seed: int = 0, **features: object) -> Config:
    return config_from_dict({
        "dataset": {"image_size": SIZE},
        "models": {"preset": "tiny", "base_channels": 8, "vae": {"latent_channels": 2, "vae_downsample": 1},
                   "pixel": {}, "latent": {}},
        "variants": {"enabled": ["dynamic", "dynamic-pixel"],
                     "static-gaussian": {"method": "static", "model": "pixel"},
                     "no-diffusion": {"method": "no-diffusion", "model": "pixel"},
                     "dynamic": {"method": "dynamic", "model": "latent", **DYN},
                     "dynamic-pixel": {"method": "dynamic", "model": "pixel", **DYN},
                     "kl": {"method": "kl", "model": "pixel"},
                     "trend": {"method": "trend", "model": "pixel", "output": "both"},
                     "trend-intensity": {"method": "trend", "model": "pixel", "output": "intensity"},
                     "trend-uncertainty": {"method": "trend", "model": "pixel", "output": "uncertainty"}},
        "features": dict(features),
        "seed": seed,
    })


def random_models(cfg: Config) -> dict[str, object]:
    from raydiff.bench.engine import random_models as build

    return build(cfg, 3, torch.device("cpu"), ["latent", "pixel"])


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Smooth random RGB fields in [-1, 1] (normal-looking material for the KNN prior)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    base = torch.nn.functional.interpolate(low, size=SIZE, mode="bilinear", align_corners=False)
    return (0.8 * base + 0.05 * torch.randn(n, 3, SIZE, SIZE, generator=g)).clamp(-1, 1)


def make_ctx(cfg: Config, models: dict[str, object], train: torch.Tensor, fitted_stats: dict | None = None):  # type: ignore[no-untyped-def]
    from raydiff.features import build_features, knn_features
    from raydiff.knn_prior import KNNPrior
    from raydiff.scoring.context import CategoryContext
    from raydiff.scoring.fit import FittedState

    features, tag = build_features(cfg.features, seed=cfg.seed)
    knn = KNNPrior.fit(knn_features(features, train).numpy(), k=DYN["knn_k"], bins=DYN["bins"])
    fitted = FittedState(stats=fitted_stats or {}, knn=knn, features_weights=tag)
    return CategoryContext(cfg=cfg, category="c", models=models, features=features, fitted=fitted)


@pytest.fixture(scope="module")
def small() -> SimpleNamespace:
    cfg = small_cfg()
    models = random_models(cfg)
    train = smooth_images(10, seed=10)
    noise = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(12)) * 2 - 1  # far from normal
    test = torch.cat([smooth_images(3, seed=11), noise])
    return SimpleNamespace(cfg=cfg, models=models, train=train, test=test, ctx=make_ctx(cfg, models, train))


def test_components_shapes_levels_and_forward_counts(small: SimpleNamespace) -> None:
    from raydiff.scoring import raw_components, score_batch

    ids = [f"test/x/{i}.png" for i in range(4)]
    comps, cache, _ = raw_components(small.ctx, small.test, ids, ["dynamic", "dynamic-pixel"])
    for fam in ("dynamic", "dynamic-pixel"):
        assert set(comps[fam]) == {"l_map", "f_map"}
        for m in comps[fam].values():
            assert m.shape == (4, SIZE, SIZE) and m.dtype == torch.float32 and torch.isfinite(m).all()
            assert (m >= 0).all()
        assert cache.forwards[fam] == DYN["ddim_steps"]  # UNet passes per image
    levels = dynad.noise_levels(cache, small.cfg.variants.params("dynamic")).tolist()
    assert all(t % 10 == 0 and 20 <= t <= 80 for t in levels)
    assert levels[3] > min(levels[:3]), levels  # the white-noise image sits in a higher bin
    res = score_batch(small.ctx, small.test, ids, ["dynamic", "dynamic-pixel"])
    assert res["dynamic"].forwards_per_image == DYN["ddim_steps"]
    assert res["dynamic"].maps.shape == (4, SIZE, SIZE) and res["dynamic"].scores.shape == (4,)
    np.testing.assert_allclose(res["dynamic"].scores, res["dynamic"].maps.reshape(4, -1).max(axis=1), rtol=1e-6)


def test_noiseless_start_has_no_random_term(small: SimpleNamespace) -> None:
    from raydiff.scoring import raw_components
    from raydiff.scoring.context import CategoryContext

    ids = [f"test/x/{i}.png" for i in range(4)]
    out = []
    for seed in (0, 12345):
        # Another run seed (every noise draw of the cache changes) and another global RNG state;
        # φ and the models are the same objects, so only randomness could differ.
        cfg = dataclasses.replace(small.cfg, seed=seed)
        ctx = CategoryContext(cfg=cfg, category="c", models=small.models, features=small.ctx.features, fitted=small.ctx.fitted)
        torch.manual_seed(seed)
        out.append(raw_components(ctx, small.test, ids, ["dynamic", "dynamic-pixel"])[0])
    for fam in ("dynamic", "dynamic-pixel"):
        for name in ("l_map", "f_map"):
            assert torch.equal(out[0][fam][name], out[1][fam][name])


def test_same_maps_for_batch_sizes_1_and_4_and_any_composition(small: SimpleNamespace) -> None:
    from raydiff.scoring import score_batch

    ids = [f"test/x/{i}.png" for i in range(4)]
    whole = score_batch(small.ctx, small.test, ids, ["dynamic", "dynamic-pixel"])
    order = [2, 0, 3, 1]
    shuffled = score_batch(small.ctx, small.test[order], [ids[i] for i in order], ["dynamic-pixel", "dynamic"])
    for i in range(4):
        single = score_batch(small.ctx, small.test[i : i + 1], ids[i : i + 1], ["dynamic", "dynamic-pixel"])
        for v in ("dynamic", "dynamic-pixel"):
            np.testing.assert_allclose(single[v].maps[0], whole[v].maps[i], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(single[v].scores[0], whole[v].scores[i], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(shuffled[v].maps[order.index(i)], whole[v].maps[i], rtol=1e-4, atol=1e-5)


class OracleModel:
    """A "perfectly trained" model of one clean image: ε = (z_t - √ᾱ_t z_clean) / √(1-ᾱ_t)."""

    def __init__(self, sched: D.Schedule, clean: torch.Tensor, vae: object = None, scale: float | None = None) -> None:
        self.schedule, self.vae, self.latent_scale, self.channels = sched, vae, scale, 3
        self.kind, self.learned_variance, self.noise_kind = ("latent" if vae else "pixel"), False, "gaussian"
        self.clean = self.encode(clean) if vae is not None else clean

    def model_output(self, z_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, None]:
        return D.predict_eps(self.schedule, z_t, t, self.clean.expand_as(z_t)), None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        from raydiff.models.latent import encode

        return encode(self.vae, x, self.latent_scale)  # type: ignore[arg-type]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        from raydiff.models.latent import decode

        return decode(self.vae, z, self.latent_scale, 3)  # type: ignore[arg-type]


def test_l_map_is_zero_when_the_model_reconstructs_perfectly(small: SimpleNamespace) -> None:
    from raydiff.scoring import raw_components
    from raydiff.scoring.context import CategoryContext

    sched = D.Schedule.from_config(small.cfg.model_spec("pixel"))
    clean = small.test[:1]
    patched = clean.clone()
    patched[:, :, 8:16, 8:16] = torch.tensor([1.0, -1.0, 1.0]).view(1, 3, 1, 1)  # a foreign square
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[8:16, 8:16] = True
    vae = small.models["latent"].vae
    models = {"pixel": OracleModel(sched, clean), "latent": OracleModel(sched, clean, vae, 0.7)}
    ctx = CategoryContext(cfg=small.cfg, category="c", models=models, features=small.ctx.features, fitted=small.ctx.fitted)
    comps = raw_components(ctx, torch.cat([clean, patched]), ["a", "b"], ["dynamic", "dynamic-pixel"])[0]
    for fam in ("dynamic", "dynamic-pixel"):
        assert comps[fam]["l_map"][0].abs().max() < 1e-5, fam  # the clean image: nothing to find
    assert comps["dynamic-pixel"]["f_map"][0].abs().max() < 1e-4  # x̂0 = x0 exactly in pixel space
    # The patched image: the oracle repairs the patch, and only the patch (pixel space is local).
    pix = comps["dynamic-pixel"]["l_map"][1]
    assert pix[inside].min() > 0.05 and pix[~inside].abs().max() < 1e-5
    lat = comps["dynamic"]["l_map"][1]
    assert lat[inside].mean() > 2 * lat[~inside].mean()  # a random VAE spreads it (receptive field)


# --------------------------------------------------------------------------------------------
# Fit step: statistics, KNN prior, save/load
# --------------------------------------------------------------------------------------------


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("adapt_epochs", [0, 1])
def test_fit_category_statistics_and_round_trip(small: SimpleNamespace, tmp_path: Path, adapt_epochs: int) -> None:
    import copy

    from raydiff.features import PHI_ADAPTED, build_features, knn_features
    from raydiff.scoring import raw_components
    from raydiff.scoring.context import CategoryContext
    from raydiff.scoring.fit import FittedState, fit_category

    cfg = small_cfg(domain_adaptation_epochs=adapt_epochs, domain_adaptation_lr=1e-3)
    holdout, hids = small.test[:3], ["train/good/h0.png", "train/good/h1.png", "train/good/h2.png"]
    fitted = fit_category(cfg, "c", small.models, small.train[:6], holdout, hids, ["dynamic", "dynamic-pixel"],
                          batch_size=2)
    assert fitted.features_weights == "none" and fitted.info["weights"] == "none"
    # One KNN prior per φ the dynamic variants use: the adapted one when adaptation is on.
    knn = fitted.knn_adapted if adapt_epochs else fitted.knn
    assert knn is not None and knn.n_train == 6 and knn.exclude_self
    assert (fitted.knn is None) == bool(adapt_epochs) and (fitted.adapted_state is None) == (not adapt_epochs)
    # Random φ: BatchNorm statistics measured on the training images, always; plus adaptation if asked.
    assert fitted.features_state is not None and fitted.info["batchnorm_calibrated_on"] == 6

    # Independent recomputation of the statistics: raw maps of all held-out images at once
    # (another batch split than the fit's), numpy mean/std over the pixels of each edge-distance
    # ring (0, 1, 2 px from the edge, the rest).
    features, _ = build_features(cfg.features, seed=cfg.seed)
    features.load_state_dict(fitted.features_state)
    base, _ = build_features(cfg.features, seed=cfg.seed)
    assert any(not torch.equal(a, b) for a, b in zip(features.state_dict().values(), base.state_dict().values(), strict=True))
    ctx = CategoryContext(cfg=cfg, category="c", models=small.models, features=features,
                          fitted=FittedState(knn=fitted.knn, knn_adapted=fitted.knn_adapted))
    phi = features
    if adapt_epochs:
        phi = copy.deepcopy(features)
        phi.load_state_dict(fitted.adapted_state)
        ctx.phis[PHI_ADAPTED] = phi
    comps = raw_components(ctx, holdout, hids, ["dynamic", "dynamic-pixel"])[0]
    for fam in ("dynamic", "dynamic-pixel"):
        for name in ("l_map", "f_map"):
            x = comps[fam][name].double().numpy()
            means, stds = fitted.stats[fam][name]
            h, w = x.shape[-2:]
            yy, xx = np.mgrid[:h, :w]
            ring = np.minimum(np.minimum(yy, h - 1 - yy), np.minimum(xx, w - 1 - xx)).clip(max=3)
            for r in range(4):
                sel = x[..., ring == r]
                np.testing.assert_allclose([means[r], stds[r]], [sel.mean(), sel.std()], rtol=1e-4, atol=1e-7)  # float noise

    fitted.save(tmp_path / "fitted")
    files = _files(tmp_path / "fitted")
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pt", ".pth"))], files
    loaded = FittedState.load(tmp_path / "fitted")
    assert loaded.stats == fitted.stats
    assert loaded.features_weights == "none" and loaded.info["weights"] == "none"
    loaded_knn = loaded.knn_adapted if adapt_epochs else loaded.knn
    np.testing.assert_array_equal(loaded_knn.edges, knn.edges)
    queries = knn_features(phi, small.test).numpy()
    np.testing.assert_array_equal(loaded_knn.level(queries), knn.level(queries))
    np.testing.assert_allclose(loaded_knn.mean_distance(queries), knn.mean_distance(queries), rtol=1e-6)
    for saved, state in ((loaded.features_state, fitted.features_state), (loaded.adapted_state, fitted.adapted_state)):
        assert (saved is None) == (state is None)
        if state is not None:
            assert set(saved) == set(state) and all(torch.equal(saved[k], v) for k, v in state.items())


def test_fit_category_needs_holdout_images(small: SimpleNamespace) -> None:
    from raydiff.errors import DatasetError
    from raydiff.scoring.fit import fit_category

    with pytest.raises(DatasetError, match="holdout"):
        fit_category(small.cfg, "c", small.models, small.train, small.train[:0], [], ["dynamic"])


# --------------------------------------------------------------------------------------------
# Trained tiny models on the texture data (slow, runs in CI)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.trains
def test_pasted_foreign_patch_scores_higher_inside(texture_models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Fit → save → load_category_context → score, as the pipeline does, on trained tiny models."""
    import shutil

    import polars as pl

    from raydiff.data.images import dataset_channels, load_image
    from raydiff.config import model_id
    from raydiff.paths import fitted_dir, model_dir
    from raydiff.scoring import score_batch
    from raydiff.scoring.fit import fit_category, load_category_context

    tm = texture_models
    dyn = {"t_max": 80, "ddim_steps": 5, "guidance_w": 4.0, "knn_k": 5, "sigma": 1.0}
    cfg = dataclasses.replace(
        tm.cfg,
        variants=dataclasses.replace(
            tm.cfg.variants.with_params("dynamic", **dyn).with_params("dynamic-pixel", **dyn),
            enabled=("dynamic", "dynamic-pixel"),
        ),
        output=dataclasses.replace(tm.cfg.output, root=str(tmp_path / "out")),
    )
    for kind in ("pixel", "latent"):
        folder = model_dir(cfg, tm.category, kind)
        shutil.copytree(tm.path(kind), folder)
        # The fixture trains each kind with its own step count (another model id); this test
        # scores them under one config, so the copies are re-labelled as that config's models
        # (load_model refuses a meta.json whose model id is not the config's).
        meta = json.loads((folder / "meta.json").read_text())
        meta["model_id"] = model_id(cfg, kind, tm.category)
        (folder / "meta.json").write_text(json.dumps(meta))

    channels = dataset_channels(tm.manifest.filter(pl.col("category") == tm.category), "auto")

    def images(category: str, split: str) -> tuple[torch.Tensor, list[str]]:
        rows = tm.manifest.filter((pl.col("category") == category) & (pl.col("split") == split)).sort("image_id")
        arr = [load_image(p, 32, channels, "resize") for p in rows["image_path"]]
        return torch.from_numpy(np.stack(arr)), rows["image_id"].to_list()

    train, train_ids = images("brick", "train")
    models = {k: tm.model(k) for k in ("pixel", "latent")}
    # The fixture trained on every train image; the last four stand in for held-out images.
    fitted = fit_category(cfg, tm.category, models, train, train[-4:], train_ids[-4:], ["dynamic", "dynamic-pixel"])
    fitted.save(fitted_dir(cfg, tm.category))
    ctx = load_category_context(cfg, tm.category)
    assert set(ctx.models) == {"pixel", "latent"} and ctx.fitted.info["weights"] == "none"

    test, _ = images("brick", "test")
    grass, _ = images("grass", "train")
    clean = test[:1]
    patched = clean.clone()
    patched[:, :, 10:22, 10:22] = grass[0, :, 4:16, 4:16]
    inside = np.zeros((32, 32), bool)
    inside[10:22, 10:22] = True
    res = score_batch(ctx, torch.cat([clean, patched]), ["test/good/clean.png", "test/patch/000.png"],
                      ["dynamic", "dynamic-pixel"])
    for v in ("dynamic", "dynamic-pixel"):
        m = res[v].maps[1]
        assert m[inside].mean() > m[~inside].mean() + m[~inside].std(), (v, m[inside].mean(), m[~inside].mean())
        assert res[v].scores[1] > res[v].scores[0], v
        assert res[v].forwards_per_image == dyn["ddim_steps"]


def test_load_category_context_names_the_fix(small: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from raydiff.errors import CheckpointError
    from raydiff.paths import fitted_dir
    from raydiff.scoring import fit as fit_module
    from raydiff.scoring.fit import FittedState, load_category_context

    cfg = dataclasses.replace(small.cfg, output=dataclasses.replace(small.cfg.output, root=str(tmp_path)))
    monkeypatch.setattr(fit_module, "load_model", lambda folder, device, **kw: small.models[Path(folder).name])
    with pytest.raises(CheckpointError, match="raydiff fit"):
        load_category_context(cfg, "c")
    stats = {"dynamic": {"l_map": (0.0, 1.0), "f_map": (0.0, 1.0)}}
    FittedState(stats=stats, knn=small.ctx.fitted.knn, features_weights="none").save(fitted_dir(cfg, "c"))
    with pytest.raises(CheckpointError, match="dynamic-pixel"):  # fitted without dynamic-pixel
        load_category_context(cfg, "c")
    stats["dynamic-pixel"] = stats["dynamic"]
    FittedState(stats=stats, knn=small.ctx.fitted.knn, features_weights="imagenet:x.pth").save(fitted_dir(cfg, "c"))
    with pytest.raises(CheckpointError, match="imagenet:x.pth"):  # fitted with other φ weights
        load_category_context(cfg, "c")
    FittedState(stats=stats, knn=small.ctx.fitted.knn, features_weights="none").save(fitted_dir(cfg, "c"))
    ctx = load_category_context(cfg, "c")
    assert set(ctx.models) == {"pixel", "latent"} and ctx.fitted.stats == stats
    for a, b in zip(ctx.features.state_dict().values(), small.ctx.features.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the same seeded random φ as the fit used
