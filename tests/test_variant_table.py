"""Every row of ``VARIANT_TABLE`` is wired end to end: its config parses (params class, field,
timestep check), it fits (normalisation statistics of its family), it scores (finite maps and
scores on tiny random models), and the report gives it a colour of its own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from raydiff.config import MODEL_KIND_TABLE, VARIANT_IDS, VARIANT_TABLE, VariantsConfig, config_from_dict
from raydiff.errors import ConfigError

SIZE = 32
#: Small settings per params field, so that a row's fit and score take a second.
SMALL = {
    "static-gaussian": {"t0": 20, "steps": 2, "sampler": "ddim", "smoothing_size": 3},
    "static-simplex": {"t0": 20, "steps": 2, "sampler": "ddim", "smoothing_size": 3},
    "static-gmm": {"t0": 20, "steps": 2, "sampler": "ddim", "smoothing_size": 3},
    "no-diffusion": {"t0": 20, "steps": 2},
    "dynamic": {"t_max": 20, "ddim_steps": 2, "knn_k": 2, "bins": 2},
    "dynamic-pixel": {"t_max": 20, "ddim_steps": 2, "knn_k": 2, "bins": 2},
    "kl": {"timesteps": [5, 10], "top_k": 4},
    "trend": {"levels": [5, 10, 20]},
}


def _cfg(variant: str) -> object:
    return config_from_dict({
        "dataset": {"image_size": SIZE},
        "models": {"preset": "tiny", "base_channels": 8, "timesteps": 100,
                   "latent": {"latent_channels": 2, "vae_downsample": 1}},
        "variants": {"enabled": [variant], **SMALL},
    })


def test_every_row_names_a_real_config_field_method_and_model_kind() -> None:
    from raydiff.scoring import METHODS

    fields = {f.name: f for f in dataclasses.fields(VariantsConfig) if f.name != "enabled"}
    used = set()
    for vid, row in VARIANT_TABLE.items():
        assert row.id == vid and row.method in METHODS and row.model_kind in MODEL_KIND_TABLE, vid
        assert isinstance(getattr(VariantsConfig(), row.field), row.params), vid
        used.add(row.field)
        cfg = _cfg(vid)
        assert isinstance(cfg.variants.params(vid), row.params)  # type: ignore[attr-defined]
        assert row.timesteps(cfg.variants.params(vid))  # type: ignore[attr-defined]
    assert used == set(fields), f"VariantsConfig fields no variant reads: {set(fields) - used}"


def test_the_timestep_check_reads_the_table() -> None:
    too_late = {  # per params class: settings that use timestep 150 of 100
        "StaticConfig": {"t0": 150, "steps": 2}, "NoDiffusionConfig": {"t0": 150, "steps": 2},
        "DynamicConfig": {"t_max": 150}, "KLConfig": {"timesteps": [5, 150]}, "TrendConfig": {"levels": [5, 10, 150]},
    }
    for vid, row in VARIANT_TABLE.items():
        key = row.field.replace("_", "-")
        with pytest.raises(ConfigError, match="timestep 150"):
            config_from_dict({"models": {"timesteps": 100},
                              "variants": {"enabled": [vid], key: too_late[row.params.__name__]}})


@pytest.mark.parametrize("variant", VARIANT_IDS)
def test_each_variant_fits_and_scores(variant: str) -> None:
    from raydiff.features import build_features
    from raydiff.scoring import VARIANTS, score_batch
    from raydiff.bench.engine import random_models
    from raydiff.scoring.context import CategoryContext
    from raydiff.scoring.fit import fit_category

    cfg = _cfg(variant)
    kind = VARIANT_TABLE[variant].model_kind
    models = random_models(cfg, 1, torch.device("cpu"), [kind])  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(0)
    train = torch.rand(6, 1, SIZE, SIZE, generator=g) * 2 - 1
    holdout = torch.rand(3, 1, SIZE, SIZE, generator=g) * 2 - 1
    fitted = fit_category(cfg, "c", models, train, holdout, ["h0", "h1", "h2"], [variant], batch_size=4)
    assert VARIANTS[variant].family in fitted.stats
    features, _ = build_features(cfg.features, seed=0)  # type: ignore[attr-defined]
    if fitted.features_state is not None:
        features.load_state_dict(fitted.features_state)
    ctx = CategoryContext(cfg=cfg, category="c", models=models, features=features.eval(), fitted=fitted)  # type: ignore[arg-type]
    test = torch.rand(2, 1, SIZE, SIZE, generator=g) * 2 - 1
    result = score_batch(ctx, test, ["t0", "t1"], [variant])[variant]
    assert result.maps.shape == (2, SIZE, SIZE) and np.isfinite(result.maps).all()
    assert result.scores.shape == (2,) and np.isfinite(result.scores).all() and result.forwards_per_image > 0
    # uses_features is true exactly for the variants that need φ: the others score without one.
    if not VARIANT_TABLE[variant].uses_features:
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
