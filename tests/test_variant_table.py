"""Every method of ``METHOD_TABLE`` and every built-in variant is wired end to end: its config
parses (params class, timestep check), it fits (normalisation statistics of its family), it
scores (finite maps and scores on tiny random models), and the report gives it a colour of its
own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from raydiff.config import BUILTIN_MODELS, BUILTIN_VARIANTS, METHOD_TABLE, LegacyVariants, config_from_dict
from raydiff.errors import ConfigError

VARIANT_IDS = tuple(BUILTIN_VARIANTS)

SIZE = 32
#: Small settings per params field, so that a row's fit and score take a second.
SMALL = {
    "static-gaussian": {"method": "static", "model": "pixel", "t0": 20, "steps": 2, "sampler": "ddim", "smoothing_size": 3},
    "static-simplex": {"method": "static", "model": "pixel-simplex", "t0": 20, "steps": 2, "sampler": "ddim",
                       "smoothing_size": 3},
    "static-gmm": {"method": "static", "model": "pixel-gmm", "t0": 20, "steps": 2, "sampler": "ddim", "smoothing_size": 3},
    "no-diffusion": {"method": "no-diffusion", "model": "pixel", "t0": 20, "steps": 2},
    "dynamic": {"method": "dynamic", "model": "latent", "t_max": 20, "ddim_steps": 2, "knn_k": 2, "bins": 2},
    "dynamic-pixel": {"method": "dynamic", "model": "pixel", "t_max": 20, "ddim_steps": 2, "knn_k": 2, "bins": 2},
    "kl": {"method": "kl", "model": "pixel", "timesteps": [5, 10], "top_k": 4},
    "trend": {"method": "trend", "model": "pixel", "levels": [5, 10, 20], "output": "both"},
    "trend-intensity": {"method": "trend", "model": "pixel", "levels": [5, 10, 20], "output": "intensity"},
    "trend-uncertainty": {"method": "trend", "model": "pixel", "levels": [5, 10, 20], "output": "uncertainty"},
}


def _cfg(variant: str) -> object:
    return config_from_dict({
        "dataset": {"image_size": SIZE},
        "models": {"preset": "tiny", "base_channels": 8, "timesteps": 100,
                   "vae": {"latent_channels": 2, "vae_downsample": 1}},
        "variants": {"enabled": [variant], **SMALL},
    })


def test_every_builtin_names_a_real_method_model_and_legacy_field() -> None:
    from raydiff.scoring import METHODS

    fields = {f.name for f in dataclasses.fields(LegacyVariants) if f.name != "enabled"}
    used = set()
    for vid, row in BUILTIN_VARIANTS.items():
        assert row.method in METHOD_TABLE and row.model in BUILTIN_MODELS, vid
        assert METHOD_TABLE[row.method].module in METHODS, vid
        assert isinstance(getattr(LegacyVariants(), row.legacy_field), METHOD_TABLE[row.method].params), vid
        used.add(row.legacy_field)
        cfg = _cfg(vid)
        assert cfg.variants.model(vid) == row.model  # type: ignore[attr-defined]
        assert isinstance(cfg.variants.params(vid), METHOD_TABLE[row.method].params)  # type: ignore[attr-defined]
        assert METHOD_TABLE[row.method].timesteps(cfg.variants.params(vid))  # type: ignore[attr-defined]
        assert METHOD_TABLE[row.method].archs.count(cfg.model_spec(row.model).arch)  # type: ignore[attr-defined]
    assert used == fields, f"LegacyVariants fields no variant reads: {fields - used}"


def test_the_timestep_check_reads_the_table() -> None:
    too_late = {  # per params class: settings that use timestep 150 of 100
        "StaticConfig": {"t0": 150, "steps": 2}, "NoDiffusionConfig": {"t0": 150, "steps": 2},
        "DynamicConfig": {"t_max": 150}, "KLConfig": {"timesteps": [5, 150]}, "TrendConfig": {"levels": [5, 10, 150]},
    }
    for method, row in METHOD_TABLE.items():
        model = "latent" if row.archs == ("latent",) else "pixel"
        with pytest.raises(ConfigError, match="timestep 150"):
            config_from_dict({"models": {"timesteps": 100, model: {}},
                              "variants": {"v": {"method": method, "model": model, **too_late[row.params.__name__]}}})


@pytest.mark.parametrize("variant", VARIANT_IDS)
def test_each_variant_fits_and_scores(variant: str) -> None:
    from raydiff.features import build_features
    from raydiff.scoring import score_batch
    from raydiff.bench.engine import random_models
    from raydiff.scoring.context import CategoryContext
    from raydiff.scoring.fit import fit_category

    cfg = _cfg(variant)
    kind = BUILTIN_VARIANTS[variant].model
    models = random_models(cfg, 1, torch.device("cpu"), [kind])  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(0)
    train = torch.rand(6, 1, SIZE, SIZE, generator=g) * 2 - 1
    holdout = torch.rand(3, 1, SIZE, SIZE, generator=g) * 2 - 1
    fitted = fit_category(cfg, "c", models, train, holdout, ["h0", "h1", "h2"], [variant], batch_size=4)
    assert cfg.variants.family(variant) in fitted.stats  # type: ignore[attr-defined]
    features, _ = build_features(cfg.features, seed=0)  # type: ignore[attr-defined]
    if fitted.features_state is not None:
        features.load_state_dict(fitted.features_state)
    ctx = CategoryContext(cfg=cfg, category="c", models=models, features=features.eval(), fitted=fitted)  # type: ignore[arg-type]
    test = torch.rand(2, 1, SIZE, SIZE, generator=g) * 2 - 1
    result = score_batch(ctx, test, ["t0", "t1"], [variant])[variant]
    assert result.maps.shape == (2, SIZE, SIZE) and np.isfinite(result.maps).all()
    assert result.scores.shape == (2,) and np.isfinite(result.scores).all() and result.forwards_per_image > 0
    # uses_features is true exactly for the variants that need φ: the others score without one.
    if not METHOD_TABLE[BUILTIN_VARIANTS[variant].method].uses_features:
        bare = CategoryContext(cfg=cfg, category="c", models=models, features=None, fitted=fitted)  # type: ignore[arg-type]
        again = score_batch(bare, test, ["t0", "t1"], [variant])[variant]
        np.testing.assert_array_equal(again.maps, result.maps)
    else:
        bare = CategoryContext(cfg=cfg, category="c", models=models, features=None, fitted=fitted)  # type: ignore[arg-type]
        with pytest.raises((TypeError, AttributeError)):
            score_batch(bare, test, ["t0", "t1"], [variant])


def test_every_variant_has_its_own_report_colour() -> None:
    from raydiff.report_figures import variant_color

    colours = [variant_color(v) for v in VARIANT_IDS]
    assert len(set(colours)) == len(colours)
