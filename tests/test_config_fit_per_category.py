"""Domain adaptation reads a category's ``per_category`` overrides, as the KNN prior of the same
fit does (issue 27: it used the instance's base parameters for every category)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from raydiff.config import config_from_dict


def test_domain_adaptation_uses_the_categorys_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    import raydiff.scoring.dynad as dynad
    from raydiff.scoring.fit import adaptation_reconstructor

    cfg = config_from_dict({
        "dataset": {"categories": ["brick", "grass"]},
        "variants": {"d": {"method": "dynamic", "model": "pixel", "t_max": 80, "ddim_steps": 10, "guidance_w": 4.0,
                           "per_category": {"brick": {"t_max": 30, "ddim_steps": 2, "guidance_w": 1.0}}}},
    })
    seen: list[tuple[Any, ...]] = []

    def fake_reconstruct(eps_fn: Any, schedule: Any, z0: torch.Tensor, t_hat: torch.Tensor, steps: int,
                         w: float) -> torch.Tensor:
        seen.append((int(t_hat.max()), steps, w))
        return z0

    monkeypatch.setattr(dynad, "reconstruct", fake_reconstruct)
    x = torch.zeros(16, 3, 8, 8)
    for category, (t_max, steps, w) in (("brick", (30, 2, 1.0)), ("grass", (80, 10, 4.0)), (None, (80, 10, 4.0))):
        model = SimpleNamespace(schedule=None, model_output=lambda z, t: (z,))
        _kind, run = adaptation_reconstructor(cfg, {"pixel": model}, seed=0, category=category)
        run(x)
        top, got_steps, got_w = seen[-1]
        assert (got_steps, got_w) == (steps, w) and top <= t_max, category
    assert seen[0][0] <= 30 < seen[1][0]  # brick's levels come from its own t_max


def test_an_override_for_a_category_not_found_on_disk_is_an_error(tmp_path) -> None:
    """Categories discovered on disk (no dataset.categories): a per_category override naming none
    of them would silently never apply, so validation refuses it, naming it."""
    from datatrees import make_mvtec

    from raydiff.config import DEFAULT_CONFIG, load_config
    from raydiff.errors import ConfigError
    from raydiff.workflow import validate_dataset_for

    root = make_mvtec(tmp_path / "data", categories=("brick",))
    base = {"dataset.root": str(root), "dataset.image_size": 16, "dataset.holdout_min": 1}
    cfg = load_config(DEFAULT_CONFIG, {**base, "variants.kl.per_category": {"brik": {"top_k": 4}}})
    with pytest.raises(ConfigError, match="brik"):
        validate_dataset_for(cfg)
    validate_dataset_for(load_config(DEFAULT_CONFIG, {**base, "variants.kl.per_category": {"brick": {"top_k": 4}}}))
