"""Named models and variant instances: per-category and group overrides, the errors for bad
names, a model shared by several variants trained once, families, ``raydiff plan`` on both MVTec
configs (its schedules and steps are the cited paper values), and the earlier form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from raydiff.config import config_from_dict, config_to_dict, load_config
from raydiff.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def named(variants: dict, models: dict | None = None, **top: object) -> dict:
    return {"models": models or {"preset": "tiny", "px": {"arch": "pixel"}, "lat": {"arch": "latent"}},
            "variants": variants, **top}


# ------------------------------------------------------------------ overrides


def test_group_then_category_overrides_resolve_per_category() -> None:
    cfg = config_from_dict(named(
        {"k": {"method": "static", "model": "px", "t0": 20, "steps": 20,
               "per_category": {"textures": {"t0": 5, "steps": 5}, "grid": {"steps": 2},
                                "objects": {"t0": 10, "steps": 10}}}},
        groups={"textures": ["carpet", "grid"], "objects": ["bottle"]},
    ))
    p = cfg.variants.params
    assert (p("k", "carpet").t0, p("k", "carpet").steps) == (5, 5)
    assert (p("k", "grid").t0, p("k", "grid").steps) == (5, 2)  # the category's own entry wins
    assert (p("k", "bottle").t0, p("k", "bottle").steps) == (10, 10)
    assert (p("k", "zipper").t0, p("k", "zipper").steps) == (20, 20)  # no override: the instance's
    assert (p("k").t0, p("k").steps) == (20, 20)
    again = config_from_dict(config_to_dict(cfg))
    assert again.variants == cfg.variants


def test_two_groups_giving_one_category_different_values_is_an_error() -> None:
    with pytest.raises(ConfigError, match="groups 'a' and 'b' both contain 'grid'.*'t0'"):
        config_from_dict(named(
            {"k": {"method": "static", "model": "px", "per_category": {"a": {"t0": 5, "steps": 5},
                                                                        "b": {"t0": 6, "steps": 5}}}},
            groups={"a": ["grid"], "b": ["grid"]},
        ))


@pytest.mark.parametrize("variants, models, top, message", [
    ({"k": {"method": "statik", "model": "px"}}, None, {}, r"variant 'k' has method 'statik'; valid methods: static, no-diffusion"),
    ({"k": {"model": "px"}}, None, {}, r"variant 'k' names no method and is not a built-in variant"),
    ({"static-gausian": {"t0": 9}, "x": {"method": "kl", "model": "px"}}, None, {}, r"did you mean the built-in variant 'static-gaussian'"),
    ({"k": {"method": "static", "model": "pxx"}}, None, {}, r"scores with model 'pxx', which 'models' does not define; this config's models: px, lat"),
    ({"k": {"method": "static", "model": "px", "tzero": 3}}, None, {}, r"unknown key 'variants.k.tzero'"),
    ({"k": {"method": "static", "model": "px", "per_category": {"bottle": {"tzero": 3}}}}, None, {},
     r"unknown key 'variants.k.per_category.bottle.tzero'"),
    ({"k": {"method": "static", "model": "px", "per_category": {"zipper": {"t0": 3, "steps": 3}}}}, None,
     {"dataset": {"categories": ["bottle"]}}, r"'zipper' is neither one of dataset.categories \(bottle\) nor a group"),
    ({"k": {"method": "static", "model": "px", "reproduces": "fucka-gausian"}}, None, {},
     r"'variants.k.reproduces' is 'fucka-gausian', not a published setting.*fucka-gaussian"),
    ({"k": {"method": "static", "model": "lat"}}, None, {}, r"method static scores pixel models, but 'lat' is a latent model"),
    ({"k": {"method": "static", "model": "px"}, "enabled": ["k", "q"]}, None, {}, r"'variants.enabled' lists q"),
    ({"kl": {}}, {"kinds": ["pixel", "nope"]}, {}, r"'models.kinds' lists 'nope', which is neither defined"),
    ({"k": {"method": "kl", "model": "extra"}}, {"kinds": ["px"], "px": {"arch": "pixel"}, "extra": {"arch": "pixel"}}, {},
     r"scores with model 'extra', which 'models' does not define; this config's models: px"),
    ({"k": {"method": "static", "model": "px"}}, {"px": {"arch": "pixle"}}, {}, r"'models.px.arch' is 'pixle'"),
    ({"k": {"method": "static", "model": "px", "t0": 150, "steps": 2}}, {"px": {"arch": "pixel", "timesteps": 100}}, {},
     r"variant 'k' uses timestep 150 >= the timesteps of its model 'px' \(100\)"),
    ({"k": {"method": "kl", "model": "px", "chain_steps": 50, "timesteps": [5, 60]}}, None, {},
     r"timesteps \[5, 60\] are steps of the 50-step chain"),
])
def test_bad_names_are_one_error_naming_the_key_the_file_and_the_choices(
    tmp_path: Path, variants: dict, models: dict | None, top: dict, message: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(named(variants, models, **top), sort_keys=False))
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value) and "Fix:" in str(err.value)


def test_models_kinds_selects_among_named_models() -> None:
    cfg = load_config(CONFIGS / "textures.yaml", {"dataset.root": "/x", "models.kinds": ["pixel"],
                                                   "variants.enabled": ["no-diffusion", "kl"]})
    assert cfg.models.names == ("pixel",) and cfg.models_needed() == ("pixel",)
    assert set(cfg.variants.instances) == {"static-gaussian", "no-diffusion", "dynamic-pixel", "kl", "trend",
                                           "trend-intensity", "trend-uncertainty"}


def test_dynamic_variants_must_agree_on_the_shared_knn_prior() -> None:
    with pytest.raises(ConfigError, match="differ in knn_k/bins"):
        config_from_dict(named({"a": {"method": "dynamic", "model": "px", "knn_k": 5},
                                "b": {"method": "dynamic", "model": "lat", "knn_k": 7}}))


# ------------------------------------------------------------------ models and families


def test_a_model_shared_by_two_variants_is_trained_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datatrees import make_mvtec

    from raydiff.cli import main
    from raydiff.train import loop

    root = make_mvtec(tmp_path / "data", n_train=6)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({
        "dataset": {"layout": "mvtec", "root": str(root), "image_size": 16, "holdout_min": 1},
        "models": {"preset": "tiny", "shared": {"arch": "pixel", "variance": "learned"},
                   "other": {"arch": "pixel", "noise": "gmm"}, "unused": {"arch": "pixel"}},
        "variants": {"a": {"method": "static", "model": "shared", "t0": 5, "steps": 5},
                     "b": {"method": "kl", "model": "shared", "timesteps": [2, 4]},
                     "c": {"method": "static", "model": "other", "t0": 5, "steps": 5}},
        "output": {"root": str(tmp_path / "out")},
    }, sort_keys=False))
    calls: list[str] = []
    monkeypatch.setattr(loop, "train_one", lambda _cfg, _cat, kind, *_a, **_k: calls.append(kind) or tmp_path)
    result = CliRunner().invoke(main, ["train", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert calls == ["shared", "other"]  # config order; "unused" is used by no variant
    loaded = load_config(cfg)
    assert loaded.models_needed() == ("shared", "other")


def test_model_ids_cover_what_sets_weights_per_model() -> None:
    from raydiff.config import model_id

    base = config_from_dict(named({"k": {"method": "static", "model": "px"}}))
    other = config_from_dict(named({"k": {"method": "static", "model": "px"}, "z": {"method": "kl", "model": "px"}}))
    assert model_id(base, "px", "c") == model_id(other, "px", "c")  # adding a variant retrains nothing
    lr = config_from_dict(named({"k": {"method": "static", "model": "px"}},
                                {"preset": "tiny", "px": {"arch": "pixel", "lr": 3e-4}, "lat": {"arch": "latent"}}))
    assert model_id(lr, "px", "c") != model_id(base, "px", "c") and model_id(lr, "lat", "c") == model_id(base, "lat", "c")
    # The VAE settings of a pixel model set none of its weights.
    vae = config_from_dict(named({"k": {"method": "static", "model": "px"}},
                                 {"preset": "tiny", "px": {"arch": "pixel", "vae": {"vae_lr": 0.5}}, "lat": {"arch": "latent"}}))
    assert model_id(vae, "px", "c") == model_id(base, "px", "c")


def test_families_share_one_computation_only_when_the_components_agree() -> None:
    cfg = load_config(CONFIGS / "mvtec-papers.yaml", {"dataset.root": "/x"})
    fam = cfg.variants.family
    assert fam("fucka-gaussian-filter5") == fam("fucka-gaussian-filter17") == "fucka-gaussian"
    assert fam("ran-pixel-only") == "ran" and fam("kim-uncertainty") == "kim-trend"
    assert fam("fucka-simplex") == "fucka-simplex" and fam("dynad-fixed-40") == "dynad-fixed-40"
    assert fam("kashihara-diffusion", "carpet") == "kashihara-diffusion"


def test_the_earlier_models_kinds_form_loads_to_the_same_config_as_the_named_form() -> None:
    named_form = load_config(REPO / "tests" / "data" / "textures-named-v1.yaml", {"dataset.root": "/x"})
    earlier = load_config(REPO / "tests" / "data" / "textures-kinds-form.yaml", {"dataset.root": "/x"})
    assert earlier.variants == named_form.variants
    for name in named_form.models.names:  # equal up to settings the model never reads
        from raydiff.config.loader import _model_settings

        assert _model_settings(earlier.model_spec(name)) == _model_settings(named_form.model_spec(name)), name


def test_shipped_named_configs_round_trip() -> None:
    for name in ("mvtec.yaml", "mvtec-papers.yaml", "textures.yaml"):
        cfg = load_config(CONFIGS / name, {"dataset.root": "/x"})
        again = config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))))
        assert again.models == cfg.models and again.variants == cfg.variants, name


# ------------------------------------------------------------------ maths the paper settings added


def test_dynad_fixed_level_and_noised_start() -> None:
    from types import SimpleNamespace

    from raydiff import diffusion as D
    from raydiff.config import DynamicConfig
    from raydiff.scoring import dynad

    levels = dynad.noise_levels(SimpleNamespace(batch=3), DynamicConfig(fixed_level=40))
    assert levels.tolist() == [40, 40, 40]
    sched = D.Schedule.build("linear", 1000)
    g = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    t_hat = torch.tensor([40, 40])
    calls = []

    def eps_fn(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(z.clone())
        return torch.zeros_like(z)

    dynad.reconstruct(eps_fn, sched, z0, t_hat, 2, 0.0, noise)
    a = sched.alphas_cumprod[40]
    torch.testing.assert_close(calls[0], a.sqrt() * z0 + (1 - a).sqrt() * noise)  # the noised start
    calls.clear()
    dynad.reconstruct(eps_fn, sched, z0, t_hat, 2, 0.0)
    torch.testing.assert_close(calls[0], a.sqrt() * z0)  # DynAD's noiseless start


def test_kl_of_a_fixed_large_model_uses_beta_as_p_variance() -> None:
    import math

    import numpy as np

    from raydiff import diffusion as D
    from raydiff.scoring import ran_kl

    sched = D.Schedule.build("linear", 1000, 1e-4, 1e-2)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(1, 1, 4, 4, generator=g) * 2 - 1
    noise, eps = torch.randn(1, 1, 4, 4, generator=g), torch.randn(1, 1, 4, 4, generator=g)
    t = torch.tensor([200])
    x_t = D.q_sample(sched, x0, t, noise)
    small = ran_kl.kl_map(sched, x0, x_t, t, eps, None)
    large = ran_kl.kl_map(sched, x0, x_t, t, eps, None, fixed_large=True)
    assert not torch.allclose(small, large)
    # Closed form in float64: both means equal μ̃(x̂0(ε)), q's variance β̃_t, p's variance β_t.
    b = sched.betas.double()
    ac = torch.cumprod(1 - b, 0)
    a_t, a_prev, beta = ac[200], ac[199], b[200]
    x0_hat = (x_t.double() - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()
    coef1, coef2 = beta * a_prev.sqrt() / (1 - a_t), (1 - a_prev) * (1 - beta).sqrt() / (1 - a_t)
    mq, mp = coef1 * x0.double() + coef2 * x_t.double(), coef1 * x0_hat + coef2 * x_t.double()
    vq = beta * (1 - a_prev) / (1 - a_t)
    ref = (0.5 * torch.log(beta / vq) + (vq + (mq - mp) ** 2) / (2 * beta) - 0.5) / math.log(2.0)
    np.testing.assert_allclose(large.double().numpy(), ref.mean(dim=1).numpy(), rtol=1e-3, atol=1e-5)


def test_l1_loss_is_the_mean_absolute_epsilon_error() -> None:
    from raydiff import diffusion as D
    from raydiff.train.loop import diffusion_loss

    g = torch.Generator().manual_seed(0)
    out, noise, x0 = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
    sched, t = D.Schedule.build("cosine", 1000), torch.tensor([5, 10])
    l1, simple, _ = diffusion_loss(sched, out, x0, x0, t, noise, False, 0.0, "l1")
    assert torch.isclose(l1, (out - noise).abs().mean()) and torch.isclose(simple, l1)
    l2, _, _ = diffusion_loss(sched, out, x0, x0, t, noise, False, 0.0)
    assert torch.isclose(l2, (out - noise).square().mean())


# ------------------------------------------------------------------ raydiff plan


@pytest.fixture(scope="module")
def papers_plan() -> dict:
    from raydiff.plan import build_plan

    return build_plan(load_config(CONFIGS / "mvtec-papers.yaml", {"dataset.root": "/x"}))


def test_plan_of_the_papers_config_has_the_cited_settings(papers_plan: dict) -> None:
    models = {m["name"]: m for m in papers_plan["models"]}
    assert set(models) == {"fucka-gaussian", "fucka-simplex", "fucka-gmm", "kashihara", "dynad", "ran"}
    for noise in ("gaussian", "simplex", "gmm"):  # Fučka §5.3, eq. 5
        m = models[f"fucka-{noise}"]
        assert (m["schedule"], m["beta_start"], m["beta_end"], m["noise"], m["variance"]) == (
            "linear", 1e-4, 1e-2, noise, "fixed-large")
        assert (m["batch_size"], m["lr"]) == (6, 1e-4)
    k = models["kashihara"]  # Kashihara §4.2, eq. 4
    assert (k["schedule"], k["beta_start"], k["variance"], k["train_steps"], k["batch_size"]) == (
        "cosine", None, "fixed-large", 300000, 32)
    d = models["dynad"]  # DynAD App. 7.1 and its config.yaml
    assert (d["arch"], d["preset"], d["schedule"], d["beta_start"], d["beta_end"], d["weight_decay"]) == (
        "latent", "dynad", "linear", 0.0015, 0.0195, 0.01)
    assert models["ran"]["variance"] == "learned"
    v = {r["name"]: r for r in papers_plan["variants"]}
    f = v["fucka-gaussian"]
    assert (f["params"]["t0"], f["params"]["steps"], f["params"]["sampler"], f["params"]["smoothing_size"]) == (200, 200, "ddpm", 11)
    assert f["unet_forwards_per_image"] == 200 and v["fucka-gmm"]["params"]["smoothing_size"] == 5
    kd = v["kashihara-diffusion"]
    # The paper's t = 5 / 10 counts from 1: raydiff's levels 4 / 9 (docs/methods.md, static).
    assert kd["per_category"]["carpet"] == {"t0": 4, "steps": 4} and kd["params"]["t0"] == 9
    assert tuple(kd["unet_passes_per_image_by_category"]["carpet"]) == (4.0, 0.0)
    assert kd["params"]["clip_x0"] is False and kd["params"]["border_rings"] is False
    assert kd["params"]["image_score"] == "avgpool-max" and kd["reproduces"] == "kashihara-diffusion"
    r = v["ran"]["params"]
    assert (r["chain_steps"], r["timesteps"], r["clip_x0"], r["fresh_noise"]) == (250, [5, 50, 100], True, True)
    assert v["dynad"]["params"]["ddim_steps"] == 10 and v["dynad-noised-start"]["params"]["start"] == "noised"
    assert v["fucka-gaussian-filter5"]["shares_computation_with"] == "fucka-gaussian"
    cost = papers_plan["cost"]
    assert len(cost["categories"]) == 15 and cost["images"]["bottle"] == {"train": 209, "test": 83}
    assert cost["total_gpu_hours"] == pytest.approx(cost["training_gpu_hours"] + cost["fit_gpu_hours"]
                                                    + cost["scoring_gpu_hours"])
    # Kashihara's 300k x 32 steps dominate: more than Fučka's 80k x 6.
    per_model = cost["training_gpu_hours_per_model"]
    assert per_model["kashihara"] > per_model["fucka-gaussian"] > 0


def test_plan_of_the_same_model_config_puts_every_gaussian_method_on_one_model(tmp_path: Path) -> None:
    from raydiff.cli import main

    out = tmp_path / "plan.json"
    result = CliRunner().invoke(main, ["plan", "--config", str(CONFIGS / "mvtec.yaml"), "--json", str(out),
                                       "--mfu", "0.5"])
    assert result.exit_code == 0, result.output
    plan = json.loads(out.read_text())
    assert set(plan) >= {"models", "variants", "cost"} and plan["cost"]["mfu"] == 0.5
    for m in plan["models"]:
        assert set(m) >= {"name", "arch", "preset", "schedule", "beta_start", "beta_end", "noise", "variance", "train_steps"}
    for v in plan["variants"]:
        assert set(v) >= {"name", "method", "model", "params", "per_category"}
    on = {v["name"]: v["model"] for v in plan["variants"]}
    assert {m for n, m in on.items() if n not in ("static-simplex", "static-gmm")} == {"pixel"}
    assert (on["static-simplex"], on["static-gmm"]) == ("pixel-simplex", "pixel-gmm")
    assert "GPU-h" in result.output and "models (trained once per category, 3)" in result.output
