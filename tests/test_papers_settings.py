"""The papers' settings of issue 29 on tiny models (CPU): ``dataset.holdout_fraction: 0`` (train and
fit on all of train/good), ``train_epochs`` (steps resolved per category), ``clip_x0`` on the
static and no-diffusion chains. ``border_rings`` is tested in tests/test_border.py, the unclipped
chain against diffusers in tests/test_scoring_static_kl_trend.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from datatrees import make_mvtec
from raydiff.config import config_from_dict, config_to_dict, load_config, model_id, run_id
from raydiff.data.prepared import Prepared
from raydiff.errors import ConfigError, DatasetError

REPO = Path(__file__).resolve().parents[1]


def _data(root: Path, out: Path, **models: object) -> dict:
    return {"dataset": {"layout": "mvtec", "root": str(root), "image_size": 16, "holdout_fraction": 0,
                        "categories": ["bottle"]},
            "models": {"preset": "tiny", "base_channels": 8, "timesteps": 100, "batch_size": 2,
                       "checkpoint_every": 1000, **models},
            "variants": {"enabled": ["nd", "dyn"],
                         "nd": {"method": "no-diffusion", "model": "pixel", "t0": 10, "steps": 2},
                         "dyn": {"method": "dynamic", "model": "pixel", "t_max": 20, "ddim_steps": 2, "knn_k": 2,
                                 "bins": 2}},
            "output": {"root": str(out)}}


# --------------------------------------------------------------------------------------------
# train_epochs
# --------------------------------------------------------------------------------------------


def test_train_epochs_resolve_per_category_and_set_the_model_id() -> None:
    base = {"models": {"preset": "tiny", "pixel": {"arch": "pixel", "batch_size": 6}},
            "variants": {"v": {"method": "static", "model": "pixel"}}}
    steps = config_from_dict(base)
    epochs = config_from_dict({**base, "models": {"preset": "tiny", "pixel": {"arch": "pixel", "batch_size": 6,
                                                                              "train_epochs": 2000}}})
    spec = epochs.model_spec("pixel")
    assert spec.steps_for(209) == math.ceil(2000 * 209 / 6) == 69667  # Fučka on MVTec bottle
    assert spec.steps_for(1) == 334 and steps.model_spec("pixel").steps_for(209) == 10_000
    assert model_id(epochs, "pixel", "bottle") != model_id(steps, "pixel", "bottle")
    # The (unused) train_steps is not hashed once the budget is in epochs; a shared train_steps
    # gives way to a model's own train_epochs.
    shared = config_from_dict({**base, "models": {"preset": "tiny", "train_steps": 7,
                                                  "pixel": {"arch": "pixel", "batch_size": 6, "train_epochs": 2000}}})
    assert shared.model_spec("pixel").train_epochs == 2000
    assert model_id(shared, "pixel", "bottle") == model_id(epochs, "pixel", "bottle")
    assert config_from_dict(config_to_dict(epochs)) == epochs  # a dumped config (one budget key) loads again
    with pytest.raises(ConfigError, match="both train_steps and train_epochs"):
        config_from_dict({**base, "models": {"pixel": {"arch": "pixel", "train_steps": 5, "train_epochs": 3}}})
    with pytest.raises(ConfigError, match="both train_steps and train_epochs"):
        config_from_dict({**base, "models": {"train_steps": 5, "train-epochs": 3, "pixel": {"arch": "pixel"}}})


def test_plan_shows_the_steps_per_category_from_epochs() -> None:
    from raydiff.plan import MVTEC_SIZES, build_plan

    cfg = load_config(REPO / "configs" / "mvtec-papers.yaml", {"dataset.root": "/x",
                                                               "dataset.categories": ["bottle", "toothbrush"]})
    models = {m["name"]: m for m in build_plan(cfg)["models"]}
    for name, epochs, batch in (("fucka-gaussian", 2000, 6), ("dynad", 300, 30)):  # Fučka §5.3, DynAD App. 7.1
        m = models[name]
        assert (m["train_epochs"], m["train_steps"]) == (epochs, None)
        # holdout_fraction 0: every published train/good image is trained on.
        assert m["train_steps_by_category"] == {c: math.ceil(epochs * MVTEC_SIZES[c][0] / batch)
                                                for c in ("bottle", "toothbrush")}
    assert models["kashihara"]["train_steps_by_category"] == {"bottle": 300_000, "toothbrush": 300_000}


# --------------------------------------------------------------------------------------------
# holdout_fraction 0, with a model trained for train_epochs
# --------------------------------------------------------------------------------------------


def test_holdout_count_zero_fraction_holds_nothing_out() -> None:
    from raydiff.data.splits import holdout_count

    assert holdout_count(100, 0.0, 4) == 0  # holdout_min applies only with a fraction > 0
    assert holdout_count(100, 0.1, 4) == 10 and holdout_count(20, 0.1, 4) == 4


@pytest.mark.slow
@pytest.mark.trains
def test_holdout_fraction_zero_trains_and_fits_on_all_of_train_good(tmp_path: Path) -> None:
    from raydiff.data.manifest import scan_dataset
    from raydiff.data.splits import assign_holdout
    from raydiff.data.validate import check_training_split
    from raydiff.paths import fitted_dir
    from raydiff.scoring.fit import FittedState
    from raydiff.train.loop import train_one
    from raydiff.workflow import fit_one

    root = make_mvtec(tmp_path / "data", n_train=5)
    cfg = config_from_dict(_data(root, tmp_path / "out", train_epochs=2))
    manifest = assign_holdout(scan_dataset("mvtec", root), 0.0, 4, 0)
    assert "holdout" not in manifest["split"].to_list()
    check_training_split(manifest, root, "mvtec", holdout=False)
    with pytest.raises(DatasetError, match="held out"):
        check_training_split(manifest, root, "mvtec")  # a fraction > 0 still needs held-out images

    folder = train_one(Prepared.of(cfg, manifest), "bottle", "pixel", device="cpu")
    meta = json.loads((folder / "meta.json").read_text())
    # All 5 training images, 2 epochs at batch 2: ceil(2 * 5 / 2) = 5 steps.
    assert (meta["n_train_images"], meta["train_epochs"], meta["train_steps"]) == (5, 2, 5)
    assert len((folder / "loss.csv").read_text().strip().splitlines()) == 1 + 5

    fit_one(Prepared.of(cfg, manifest), "bottle", "cpu")
    fitted = FittedState.load(fitted_dir(cfg, "bottle"))
    assert fitted.info["holdout_images"] == 5 and fitted.info["statistics_on"] == "training images"
    assert fitted.knn.n_train == 5  # DynAD's KNN index holds all of train/good
    assert set(fitted.stats) == {"nd", "dyn"} and set(fitted.global_stats) == {"nd", "dyn"}


# --------------------------------------------------------------------------------------------
# clip_x0
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["static", "no-diffusion"])
def test_clip_x0_is_a_computation_of_its_own_hashed_only_when_off(method: str) -> None:
    from raydiff.bench.engine import random_models
    from raydiff.scoring import score_batch
    from raydiff.scoring.context import CategoryContext
    from raydiff.scoring.fit import FittedState

    body = {"method": method, "model": "pixel", "t0": 30, "steps": 3, "sampler": "ddpm"}
    data = {"dataset": {"image_size": 16}, "models": {"preset": "tiny", "base_channels": 8, "timesteps": 100},
            "variants": {"on": body, "off": {**body, "clip_x0": False}, "enabled": ["on", "off"]}}
    cfg = config_from_dict(data)
    assert cfg.variants.family("off") == "off"  # not post-processing: its own chain
    default = config_from_dict({**data, "variants": {"on": body, "off": body, "enabled": ["on", "off"]}})
    explicit = config_from_dict({**data, "variants": {"on": body, "off": {**body, "clip_x0": True},
                                                      "enabled": ["on", "off"]}})
    assert run_id(explicit) == run_id(default) != run_id(cfg)
    models = random_models(cfg, 1, torch.device("cpu"), ["pixel"])
    ctx = CategoryContext(cfg=cfg, category="c", models=models, features=None, fitted=FittedState())
    x = torch.sign(torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)))  # at the range's ends
    out = score_batch(ctx, x, ["a", "b"], ["on", "off"])
    assert not torch.allclose(torch.from_numpy(out["on"].maps), torch.from_numpy(out["off"].maps))
