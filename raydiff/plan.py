"""``raydiff plan``: what a config trains and scores, and what it costs, without data or a GPU.

For every model of the config (the ones its enabled variants use): architecture, preset,
schedule with its betas, noise, variance, training budget. For every variant instance: method,
model, parameters, per-category overrides (only the keys that differ), the UNet forward and
backward passes per test image, and which instance's computation it shares. Then an estimate of
the GPU-hours at a given model-FLOP utilisation:

- training: ``raydiff.models.flops.training_flops`` per (category, model), at the model's step
  count for that category (``train_epochs`` resolved from the images it trains on);
- fitting: each category's held-out normal images (its training images with
  ``dataset.holdout_fraction: 0``) go through every enabled variant twice
  (component statistics, then the final per-ring scaling: ``raydiff.scoring.fit``);
- scoring: per test image, every family's passes once (a pass shared by several instances is
  paid once), each priced at its model's forward FLOPs at the config's preset and image size;
  a backward pass (trend's input gradient) costs two forwards.

Pass counts come from the real engine run on tiny random models of the same schedules
(``forward_counts``): counts depend on the variants' settings, not on the network's size. The
image counts are the published ones for ``layout: mvtec``, ``visa`` and ``btad`` (``PUBLISHED_SIZES``),
else ``test_images``
/ ``train_images`` per category as given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from raydiff.config import ModelsConfig, config_to_dict
from raydiff.data.splits import holdout_count
from raydiff.diffusion import DYNAD_BETAS
from raydiff.features import build_features, knn_features
from raydiff.io import atomic_write_text
from raydiff.knn_prior import KNNPrior
from raydiff.models.checkpoint import random_models
from raydiff.models.flops import model_forward_flops, training_flops
from raydiff.scoring import raw_components
from raydiff.scoring.context import CategoryContext
from raydiff.scoring.fit import FittedState, dynamic_params, dynamic_variants

#: MVTec AD (Bergmann et al., CVPR 2019, Table 1): (train good, test) images per category.
MVTEC_SIZES: dict[str, tuple[int, int]] = {
    "bottle": (209, 83), "cable": (224, 150), "capsule": (219, 132), "carpet": (280, 117), "grid": (264, 78),
    "hazelnut": (391, 110), "leather": (245, 124), "metal_nut": (220, 115), "pill": (267, 167),
    "screw": (320, 160), "tile": (230, 117), "toothbrush": (60, 42), "transistor": (213, 100),
    "wood": (247, 79), "zipper": (240, 151),
}
#: VisA (Zou et al., ECCV 2022), its 1cls split (split_csv/1cls.csv): (train normal, test) images.
VISA_SIZES: dict[str, tuple[int, int]] = {
    "candle": (900, 200), "capsules": (542, 160), "cashew": (450, 150), "chewinggum": (453, 150),
    "fryum": (450, 150), "macaroni1": (900, 200), "macaroni2": (900, 200), "pcb1": (904, 200),
    "pcb2": (901, 200), "pcb3": (905, 201), "pcb4": (904, 201), "pipe_fryum": (450, 150),
}
#: BTAD (Mishra et al., ISIE 2021, Table 1): (train good, test) images per product.
BTAD_SIZES: dict[str, tuple[int, int]] = {"01": (400, 70), "02": (399, 230), "03": (1000, 441)}
#: A layout → its published image counts (a category not listed uses the plan's given sizes).
PUBLISHED_SIZES: dict[str, tuple[str, dict[str, tuple[int, int]]]] = {
    "mvtec": ("MVTec AD Table 1", MVTEC_SIZES),
    "visa": ("VisA's 1cls split", VISA_SIZES),
    "btad": ("BTAD Table 1", BTAD_SIZES),
}
#: Dense bf16 peak of one H100/H200 SXM (NVIDIA's data sheet: 989 TFLOP/s without sparsity).
DEFAULT_GPU_TFLOPS = 989.0
DEFAULT_MFU = 0.35
#: Image size the pass counts are measured at (counts do not depend on it).
_COUNT_SIZE = 32


def _tiny(cfg: Any) -> Any:
    """``cfg`` with tiny models, no weight files, a resnet34 φ without domain adaptation and Gaussian
    noise (the pass counts depend on none of them; simplex noise is slow to draw on a CPU): for
    counting passes."""
    specs = {name: dataclasses.replace(spec, preset="tiny", base_channels=8, noise="gaussian",
                                       vae=dataclasses.replace(spec.vae, vae_downsample=1, vae_path=None))
             for name, spec in cfg.models.specs.items()}
    return dataclasses.replace(
        cfg, dataset=dataclasses.replace(cfg.dataset, image_size=_COUNT_SIZE), models=ModelsConfig(specs=specs),
        features=dataclasses.replace(cfg.features, weights=None, arch="resnet34", domain_adaptation_epochs=0),
    )


#: Where counted passes are kept (``$RAYDIFF_CACHE``, else ``~/.cache/raydiff``), per counting key.
CACHE_ENV = "RAYDIFF_CACHE"
#: The sources whose code decides the pass counts: a change to any of them counts again.
_ENGINE_SOURCES = ("scoring", "noise", "diffusion.py", "features.py", "knn_prior.py", "models")


def _counts_key(cfg: Any, variants: Sequence[str], category: str | None) -> str:
    """Digest of everything the counts depend on: the tiny config's variants and models sections
    (what ``_tiny`` keeps of them), the variants asked for, the category, the engine's source."""
    data = config_to_dict(_tiny(cfg))
    h = hashlib.sha256(json.dumps({"variants": data.get("variants"), "models": data.get("models"),
                                   "features": data.get("features"), "seed": data.get("seed"),
                                   "asked": list(variants), "category": category}, sort_keys=True, default=str).encode())
    root = Path(__file__).resolve().parent
    for name in _ENGINE_SOURCES:
        for f in sorted((root / name).rglob("*.py")) if (root / name).is_dir() else [root / name]:
            h.update(f.read_bytes())
    return h.hexdigest()[:24]


def forward_counts(cfg: Any, variants: Sequence[str], category: str | None = None) -> dict[str, Any]:
    """``engine_forward_counts``, kept on disk per counting key (``_counts_key``): a plan of the
    same variants on the same engine reads them back instead of running the engine again."""
    cache = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "raydiff") / "plan-counts"
    path = cache / f"{_counts_key(cfg, variants, category)}.json"
    try:
        stored = json.loads(path.read_text())
        return {"alone": {v: tuple(n) for v, n in stored["alone"].items()}, "shared": stored["shared"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    counts = engine_forward_counts(cfg, variants, category)
    try:
        atomic_write_text(path, json.dumps(counts))
    except OSError:  # a read-only home: counted again next time
        pass
    return counts


def engine_forward_counts(cfg: Any, variants: Sequence[str], category: str | None = None) -> dict[str, Any]:
    """UNet passes per test image, counted by the real engine on tiny random models.

    → {"alone": {variant: (forwards, backwards)} (each variant scored by itself), "shared":
    {model: forwards + 2·backwards} (one pass of all ``variants`` together, shared work once)}.
    ``category`` applies its per-category overrides.
    """
    tiny = _tiny(cfg)
    channels, size = 3, _COUNT_SIZE
    models = random_models(tiny, channels, torch.device("cpu"), sorted({tiny.variants.model(v) for v in variants}))
    features, _ = build_features(tiny.features, seed=0)
    knn = None
    if dynamic_variants(tiny, variants):
        params = dynamic_params(tiny, variants, category)
        train = torch.rand(params.knn_k + 4, channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        knn = KNNPrior.fit(knn_features(features, train).numpy(), k=params.knn_k, bins=params.bins, exclude_self=True)
    ctx = CategoryContext(cfg=tiny, category=category or "plan", models=models, features=features.eval(),
                          fitted=FittedState(knn=knn))
    image = torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    alone: dict[str, tuple[float, float]] = {}
    by_family: dict[str, tuple[float, float]] = {}
    for v in variants:  # instances of one family make the same passes: counted once
        family = tiny.variants.family(v, category)
        if family not in by_family:
            _c, cache, _s = raw_components(ctx, image, ["plan/0.png"], [v])
            by_family[family] = (float(sum(cache.forwards.values())), float(sum(cache.backwards.values())))
        alone[v] = by_family[family]
    _c, cache, _s = raw_components(ctx, image, ["plan/0.png"], list(variants))
    shared: dict[str, float] = {}
    for family, n in cache.forwards.items():
        model = tiny.variants.model(family)
        shared[model] = shared.get(model, 0.0) + float(n)
    for family, n in cache.backwards.items():
        model = tiny.variants.model(family)
        shared[model] = shared.get(model, 0.0) + 2.0 * float(n)
    return {"alone": alone, "shared": shared}


def _schedule(spec: Any) -> dict[str, Any]:
    if spec.schedule == "cosine":
        return {"schedule": "cosine", "beta_start": None, "beta_end": None}
    start, end = DYNAD_BETAS if spec.schedule == "dynad" else (spec.beta_start, spec.beta_end)
    return {"schedule": "linear", "beta_start": start, "beta_end": end}


def _holdout(cfg: Any, n_train: int) -> int:
    """Normal training images held out of a category with ``n_train`` of them (as ``prepare``)."""
    return holdout_count(n_train, cfg.dataset.holdout_fraction, cfg.dataset.holdout_min)


def _changed(base: Any, other: Any) -> dict[str, Any]:
    a, b = config_to_dict(base), config_to_dict(other)
    return {k: v for k, v in b.items() if a.get(k) != v}


def build_plan(
    cfg: Any, mfu: float = DEFAULT_MFU, gpu_tflops: float = DEFAULT_GPU_TFLOPS,
    test_images: int = 100, train_images: int = 200, categories: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The plan of ``cfg`` as plain data: ``models``, ``variants``, ``cost`` (module docstring)."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    variants = list(cfg.variants.enabled)
    cats = list(categories or cfg.dataset.categories)
    source, published = PUBLISHED_SIZES.get(cfg.dataset.layout, ("", {}))
    sizes: Mapping[str, tuple[int, int]] = {c: published.get(c, (train_images, test_images)) for c in cats}
    if not sizes:  # no category list: one category of the given size
        sizes = {"(each category)": (train_images, test_images)}
    used = cfg.models_needed()
    trained_on = {c: n_train - _holdout(cfg, n_train) for c, (n_train, _) in sizes.items()}
    models = []
    for name in used:
        spec = cfg.model_spec(name)
        steps = {c: spec.steps_for(n) for c, n in trained_on.items()}
        tflop = {c: training_flops(cfg, name, steps=n) / 1e12 for c, n in steps.items()}
        models.append({
            "name": name, "arch": spec.arch, "preset": spec.preset, **_schedule(spec), "timesteps": spec.timesteps,
            "noise": spec.noise, "variance": spec.variance,
            # train_steps: the one step count, or None when the budget is in epochs (then per category).
            "train_steps": spec.train_steps if spec.train_epochs is None else None, "train_epochs": spec.train_epochs,
            "train_steps_by_category": steps,
            "batch_size": spec.batch_size, "lr": spec.lr, "lr_schedule": spec.lr_schedule,
            "weight_decay": spec.weight_decay,
            # Where the weights start: "from scratch" (saying so when the paper's init is not given) or the checkpoint.
            "init": spec.init.describe(),
            "ema_decay": spec.ema_decay, "base_channels": spec.base_channels,
            "used_by": [v for v in variants if cfg.variants.model(v) == name],
            # Over the plan's categories (each its own model, of its own step count).
            "train_tflop": sum(tflop.values()),
            "forward_gflop": model_forward_flops(cfg, name) / 1e9,
        })
    # Pass counts per distinct set of per-category parameters (most configs: one).
    override_cats = sorted({c for v in variants for c in cfg.variants.instance(v).per_category})

    def signature(category: str | None) -> tuple[Any, ...]:
        return tuple(cfg.variants.params(v, category) for v in variants)

    counts = {None: forward_counts(cfg, variants)}
    measured = {signature(None): counts[None]}
    for c in override_cats:
        if signature(c) not in measured:
            measured[signature(c)] = forward_counts(cfg, variants, c)
        counts[c] = measured[signature(c)]
    rows = []
    for v in variants:
        inst = cfg.variants.instance(v)
        fwd, bwd = counts[None]["alone"][v]
        rows.append({
            "name": v, "method": inst.method, "model": inst.model, "params": config_to_dict(inst.params),
            "per_category": {c: _changed(inst.params, p) for c, p in inst.per_category.items()},
            "reproduces": inst.reproduces, "shares_computation_with": cfg.variants.family(v),
            "unet_forwards_per_image": fwd, "unet_backwards_per_image": bwd,
            "unet_passes_per_image_by_category": {c: counts[c]["alone"][v] for c in override_cats
                                                  if counts[c]["alone"][v] != (fwd, bwd)},
        })
    rate = gpu_tflops * 1e12 * mfu
    fwd_flops = {m["name"]: m["forward_gflop"] * 1e9 for m in models}

    def image_flops(category: str) -> float:
        shared = counts.get(category, counts[None])["shared"]
        return sum(n * fwd_flops[m] for m, n in shared.items())

    train_s = sum(m["train_tflop"] * 1e12 for m in models) / rate
    fit_s = score_s = 0.0
    for c, (n_train, n_test) in sizes.items():
        # The statistics' images: the held-out ones, or every training image with holdout_fraction 0.
        stats_images = _holdout(cfg, n_train) or n_train
        fit_s += 2 * stats_images * image_flops(c) / rate
        score_s += n_test * image_flops(c) / rate
    cost = {
        "mfu": mfu, "gpu_tflops": gpu_tflops, "categories": list(sizes),
        "images": {c: {"train": n_train, "test": n_test} for c, (n_train, n_test) in sizes.items()},
        "image_counts": (f"{source} for its categories, else as given" if published else "as given"),
        "training_gpu_hours": train_s / 3600, "fit_gpu_hours": fit_s / 3600, "scoring_gpu_hours": score_s / 3600,
        "total_gpu_hours": (train_s + fit_s + score_s) / 3600,
        "training_gpu_hours_per_model": {m["name"]: m["train_tflop"] * 1e12 / rate / 3600 for m in models},
    }
    return {"config": cfg.source, "models": models, "variants": rows, "cost": cost}
