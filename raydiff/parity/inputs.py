"""What both implementations are given: one trained model, one φ, the same images.

:func:`build_inputs` takes a config's category: it trains the config's Gaussian pixel model and
its simplex model with raydiff's own training code (``raydiff.train.loop.train_one``, no Ray;
a model folder that is already complete, e.g. from a sweep of the same config, is reused), loads
their EMA weights, builds φ as the pipeline does (ImageNet weights from the configured file, else
a seeded random ResNet-34 with batch-norm statistics calibrated on the training images), and
loads ``n_good`` normal and ``n_defect`` defective test images with their masks.

:func:`random_inputs` builds the same from untrained models and random images (the tests: the
adapters' arithmetic does not need a trained model, and parity is a statement about the
algorithm, not the model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from raydiff.config import Config
from raydiff.data.images import load_mask
from raydiff.errors import ConfigError
from raydiff.features import ResNetFeatures, build_features, calibrate_batchnorm
from raydiff.models.checkpoint import DiffusionModel, load_model, random_models
from raydiff.train.loop import train_one
from raydiff.workflow import load_images, prepare

#: The model roles a parity check asks for → what the config's model must be.
ROLES: dict[str, dict[str, str]] = {
    "gaussian": {"arch": "pixel", "noise": "gaussian", "variance": "learned"},
    "simplex": {"arch": "pixel", "noise": "simplex"},
}


@dataclass
class ParityInputs:
    """Images (B,C,H,W) float32 in [-1, 1], labels (B,) 0/1, masks (B,H,W) 0/1, the category's
    training images (N,C,H,W) (DynAD's KNN prior), models by role, φ, the config."""

    cfg: Config
    category: str
    images: torch.Tensor
    labels: np.ndarray
    masks: np.ndarray
    image_ids: list[str]
    train_images: torch.Tensor
    models: dict[str, DiffusionModel]
    features: ResNetFeatures
    #: φ's weights: ``sha256:<the file's digest>`` or ``none`` (seeded random init, calibrated).
    features_tag: str
    seed: int

    def model(self, role: str) -> DiffusionModel:
        if role not in self.models:
            raise ConfigError(
                "parity", f"the config has no {role} model ({ROLES[role]}), which this check needs.",
                "add one to models: (configs/textures.yaml has both), or skip the check with --method.",
            )
        return self.models[role]


def model_roles(cfg: Config) -> dict[str, str]:
    """{role: the config's first model name matching :data:`ROLES`}."""
    out: dict[str, str] = {}
    for name in cfg.models.names:
        spec = cfg.model_spec(name)
        for role, want in ROLES.items():
            if role not in out and all(str(getattr(spec, k)) == v for k, v in want.items()):
                out[role] = name
    return out


def _pick(rows: pl.DataFrame, label: int, n: int) -> pl.DataFrame:
    return rows.filter((pl.col("split") == "test") & (pl.col("label") == label)).sort("image_id").head(n)


def build_inputs(
    cfg: Config, category: str | None = None, n_good: int = 4, n_defect: int = 4,
    device: str = "cpu", progress: Callable[[str], None] | None = None,
) -> ParityInputs:
    """Train (or reuse) the config's models for ``category`` (default: the first) and load the images."""
    say = progress or (lambda _m: None)
    prepared = prepare(cfg)
    cats = prepared.categories
    category = category or cats[0]
    if category not in cats:
        raise ConfigError("--category", f"{category!r} is not a category of {cfg.dataset.root}.", f"use one of {cats}.")
    rows = prepared.rows(category)
    channels = prepared.channels[category]
    dev = torch.device(device)
    models: dict[str, DiffusionModel] = {}
    for role, name in model_roles(cfg).items():
        say(f"[parity] model {name} ({role}) for {category}: training or reusing")
        folder = train_one(prepared, category, name, device=dev, progress=say)
        models[role] = load_model(folder, dev)
    train = rows.filter(pl.col("split").is_in(["train", "holdout"])).sort("image_id")
    train_images = load_images(cfg, train, channels)
    test = pl.concat([_pick(rows, 0, n_good), _pick(rows, 1, n_defect)])
    size = cfg.dataset.image_size
    masks = np.stack([
        load_mask(p, size, cfg.dataset.resize) if p else np.zeros((size, size), np.uint8)
        for p in test["mask_path"].to_list()
    ]).astype(np.uint8)
    phi, tag = build_features(cfg.features, seed=cfg.seed, device=dev)
    if tag == "none":
        phi = calibrate_batchnorm(phi, train_images.to(dev))
    return ParityInputs(
        cfg=cfg, category=category, images=load_images(cfg, test, channels).to(dev),
        labels=test["label"].to_numpy().astype(np.int64), masks=(masks > 0).astype(np.uint8),
        image_ids=test["image_id"].to_list(), train_images=train_images.to(dev), models=models,
        features=phi, features_tag=tag, seed=cfg.seed,
    )


def random_inputs(cfg: Config, batch: int = 4, n_train: int = 24, channels: int = 3, seed: int = 0) -> ParityInputs:
    """Untrained models of ``cfg`` (its Gaussian and simplex pixel models), random images with a
    square 'defect' in the second half of the batch, a seeded random φ. For the tests."""
    g = torch.Generator().manual_seed(seed)
    size = cfg.dataset.image_size
    roles = model_roles(cfg)
    built = random_models(cfg, channels, torch.device("cpu"), list(roles.values()))
    models: dict[str, Any] = {role: built[name] for role, name in roles.items()}
    images = torch.rand(batch, channels, size, size, generator=g) * 2 - 1
    masks = np.zeros((batch, size, size), np.uint8)
    for i in range(batch // 2, batch):
        masks[i, size // 4 : size // 2, size // 4 : size // 2] = 1
        images[i, :, size // 4 : size // 2, size // 4 : size // 2] = 0.9
    train_images = torch.rand(n_train, channels, size, size, generator=g) * 2 - 1
    phi, tag = build_features(cfg.features, seed=seed)
    phi = calibrate_batchnorm(phi, train_images)
    labels = np.array([0] * (batch - batch // 2) + [1] * (batch // 2), np.int64)
    return ParityInputs(
        cfg=cfg, category="random", images=images, labels=labels, masks=masks,
        image_ids=[f"img{i:03d}" for i in range(batch)], train_images=train_images, models=models,
        features=phi, features_tag=tag, seed=seed,
    )
