"""Trend's input-gradient pass in chunks (``ray.gradient_chunk``) gives the same maps, scores and
forward counts as the whole batch at once (the UNet has no cross-image operation)."""

from __future__ import annotations

import numpy as np
import torch

from raydiff.config import config_from_dict


def _score(chunk: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    from raydiff.features import build_features
    from raydiff.scoring import score_batch
    from raydiff.bench.engine import random_models
    from raydiff.scoring.context import CategoryContext
    from raydiff.scoring.fit import FittedState

    trend = {"method": "trend", "model": "pixel", "levels": [25, 50, 100]}
    cfg = config_from_dict({
        "dataset": {"image_size": 16}, "models": {"preset": "tiny", "base_channels": 8, "pixel": {}},
        "variants": {"enabled": ["trend", "trend-uncertainty"],
                     "static-gaussian": {"method": "static", "model": "pixel"},
                     "no-diffusion": {"method": "no-diffusion", "model": "pixel"},
                     "dynamic-pixel": {"method": "dynamic", "model": "pixel"},
                     "kl": {"method": "kl", "model": "pixel"},
                     "trend": {**trend, "output": "both"},
                     "trend-intensity": {**trend, "output": "intensity"},
                     "trend-uncertainty": {**trend, "output": "uncertainty"}},
        "ray": {"gradient_chunk": chunk},
    })
    models = random_models(cfg, 1, torch.device("cpu"), ["pixel"])
    features, _ = build_features(cfg.features, seed=0)
    ctx = CategoryContext(cfg=cfg, category="c", models=models, features=features, fitted=FittedState())
    images = torch.rand(5, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    results = score_batch(ctx, images, [f"i{k}" for k in range(5)], list(cfg.variants.enabled))
    return ({v: r.maps for v, r in results.items()}, {v: r.forwards_per_image for v, r in results.items()})


def test_chunked_gradient_pass_equals_the_whole_batch() -> None:
    whole, forwards = _score(0)
    for chunk in (1, 2):
        maps, f = _score(chunk)
        assert f == forwards
        for v in whole:
            np.testing.assert_allclose(maps[v], whole[v], rtol=1e-5, atol=1e-6, err_msg=f"{v}, chunk {chunk}")
