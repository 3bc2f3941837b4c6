"""The per-category "fit" step, run once after training and saved beside the scores.

- DynAD's KNN prior over φ features of all training images (raydiff.knn_prior), one per φ
  instance the dynamic variants use (the base φ, DynAD's domain-adapted copy).
- Optional DynAD domain adaptation of DynAD's own copy of φ (weights saved as safetensors); the
  base φ, which RAN's feature term uses, is never adapted.
- Normalisation statistics: mean and standard deviation of every raw component map of every
  variant over all pixels of the held-out normal training images. Scoring standardises with
  them instead of the reference code's test-set min-max, so a score is a function of its image
  alone (docs/methods.md, Normalisation, "dynamic" and "kl").

Nothing here is pickled: JSON, safetensors and faiss index files only.

Entry points: ``fit_category`` (the fit step of one category, in process) → ``FittedState.save``
into ``raydiff.paths.fitted_dir``; ``load_category_context`` (what a scoring actor loads once
per category: models, fitted state, φ). Both apply ``cfg.scoring`` (precision: bf16 autocast on
CUDA by default; channels_last; torch.compile) through ``scoring.context.engine_context``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from raydiff.config import Config, DynamicConfig
from raydiff.errors import CheckpointError, ConfigError, DatasetError
from raydiff.features import PHI_ADAPTED, PHI_BASE, build_features, calibrate_batchnorm, domain_adapt, knn_features
from raydiff.io import atomic_dir, is_complete
from raydiff.knn_prior import KNNPrior, noise_level
from raydiff.models.checkpoint import DiffusionModel, expected_meta, load_model
from raydiff.paths import fitted_dir, model_dir
from raydiff.scoring import dynad, raw_components, score_batch
from raydiff.scoring.context import CategoryContext, engine_context
from raydiff.scoring.postprocess import RINGS, ring_index
from raydiff.seeding import derive_seed, generator

STATS_FILE = "stats.json"
KNN_DIR = "knn"
FEATURES_FILE = "features.safetensors"
#: DynAD's domain-adapted φ and the KNN prior over it (``raydiff.features.PHI_ADAPTED``).
KNN_ADAPTED_DIR = "knn-adapted"
ADAPTED_FILE = "features-adapted.safetensors"


@dataclass
class FittedState:
    #: family → component → (means, stds) over held-out normal pixels, one per edge-distance ring
    #: (``postprocess.RINGS``; a fitted state written before rings holds one (mean, std)).
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: family → component → one (mean, std) over all held-out normal pixels: what variants with
    #: ``border_rings: false`` standardise with. Empty in fitted states written before it existed.
    global_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: variant → (means, q99 - means) per edge-distance ring of its final (combined, smoothed) map
    #: over the held-out images (``final_map_stats``): ``postprocess.finish`` standardises with it
    #: before the image score. Variants with ``border_rings: false`` have none.
    #: Empty in fitted states written before it existed (then maps are used as they come).
    final: dict[str, Any] = field(default_factory=dict)
    #: raydiff.knn_prior.KNNPrior over the base φ, or None when no dynamic variant uses that φ.
    knn: Any = None
    #: ``raydiff.features.build_features``'s tag: "sha256:<the weights file's digest>" or "none"
    #: (random φ); ``info["weights_file"]`` names the file. (Earlier states: "imagenet:<file>".)
    features_weights: str = "none"
    #: The base φ's state dict when it is not the file's (the random init with its BatchNorm
    #: statistics calibrated); None: rebuilt from ``features.weights``.
    features_state: dict[str, torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: The KNN prior over DynAD's domain-adapted φ (None when no dynamic variant adapts).
    knn_adapted: Any = None
    #: DynAD's domain-adapted φ state dict (None when adaptation is off or no variant uses it).
    adapted_state: dict[str, torch.Tensor] | None = None

    def knn_for(self, phi: str) -> Any:
        """The KNN prior fitted over φ instance ``phi`` (``raydiff.features.PHI_BASE`` / ``PHI_ADAPTED``)."""
        return self.knn_adapted if phi == PHI_ADAPTED else self.knn

    def stats_for(self, family: str, rings: bool = True) -> dict[str, Any] | None:
        """The component statistics of variant family ``family`` (``cfg.variants.family``): per
        edge-distance ring, or one global (mean, std) per component (``rings=False``)."""
        return (self.stats if rings else self.global_stats).get(family) or None

    def save(self, folder: Path) -> None:
        """Write atomically: a complete folder has its success marker."""
        with atomic_dir(Path(folder), info={"what": "fitted state"}) as tmp:
            doc = {
                "stats": {f: {c: list(v) for c, v in comps.items()} for f, comps in self.stats.items()},
                "global_stats": {f: {c: list(v) for c, v in comps.items()} for f, comps in self.global_stats.items()},
                "final": {v: list(st) for v, st in self.final.items()},
                "features_weights": self.features_weights,
                "info": self.info,
            }
            (tmp / STATS_FILE).write_text(json.dumps(doc, indent=2))
            for knn, name in ((self.knn, KNN_DIR), (self.knn_adapted, KNN_ADAPTED_DIR)):
                if knn is not None:
                    knn.save(tmp / name)
            for state, name in ((self.features_state, FEATURES_FILE), (self.adapted_state, ADAPTED_FILE)):
                if state is not None:
                    save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(tmp / name))

    @classmethod
    def load(cls, folder: Path) -> FittedState:
        folder = Path(folder)
        if not is_complete(folder):
            raise CheckpointError(
                folder, "fitted state is missing or incomplete (no success marker).", "run `raydiff fit` again."
            )
        try:
            doc = json.loads((folder / STATS_FILE).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(folder / STATS_FILE, f"unreadable ({err}).", "delete the folder and run `raydiff fit`.") from None
        stats = {f: {c: _stats_from_json(v) for c, v in comps.items()} for f, comps in doc["stats"].items()}
        knn, knn_adapted = (KNNPrior.load(folder / d) if (folder / d).exists() else None
                            for d in (KNN_DIR, KNN_ADAPTED_DIR))
        state, adapted = (load_file(str(folder / f)) if (folder / f).exists() else None
                          for f in (FEATURES_FILE, ADAPTED_FILE))
        final = {v: _stats_from_json(st) for v, st in doc.get("final", {}).items()}
        global_stats = {f: {c: _stats_from_json(v) for c, v in comps.items()}
                        for f, comps in doc.get("global_stats", {}).items()}
        return cls(stats=stats, global_stats=global_stats, final=final, knn=knn, features_weights=doc["features_weights"], features_state=state,
                   info=doc.get("info", {}), knn_adapted=knn_adapted, adapted_state=adapted)


def _stats_from_json(v: Any) -> Any:
    """[mean, std] (floats, or lists per ring) → the tuple ``postprocess.normalise`` takes."""
    if isinstance(v[0], list):
        return tuple(float(x) for x in v[0]), tuple(float(x) for x in v[1])
    return float(v[0]), float(v[1])


class RunningMoments:
    """Exact mean / std over many batches (float64 sums, Chan's parallel update)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().double().flatten()
        n_b = x.numel()
        if n_b == 0:
            return
        mean_b = float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        delta = mean_b - self.mean
        total = self.n + n_b
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta * delta * self.n * n_b / total
        self.n = total

    def result(self) -> tuple[float, float]:
        std = math.sqrt(self.m2 / self.n) if self.n else 1.0
        return self.mean, std if std > 0 else 1.0


def normalisation_stats(
    ctx: CategoryContext,
    images: torch.Tensor,
    image_ids: Sequence[str],
    variants: Sequence[str],
    batch_size: int,
) -> dict[str, dict[str, tuple[float, float]]]:
    """Per family and component: (means, stds) of the raw maps over every held-out normal pixel,
    one pair per ring of distance to the edge (``postprocess.ring_index``; see ``normalise``)."""
    return component_stats(ctx, images, image_ids, variants, batch_size)[0]


def component_stats(
    ctx: CategoryContext, images: torch.Tensor, image_ids: Sequence[str], variants: Sequence[str], batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, tuple[float, float]]]]:
    """Both statistics of every family's raw component maps from one pass over the held-out
    images: (per edge-distance ring as ``normalisation_stats``, one global (mean, std) for
    ``border_rings: false``, the pooled moments of the rings). ``on_batch(images done)`` after each batch."""
    moments: dict[str, dict[str, list[RunningMoments]]] = {}
    for start in range(0, images.shape[0], batch_size):
        comps, _, _ = raw_components(ctx, images[start : start + batch_size], image_ids[start : start + batch_size], variants)
        if on_batch is not None:
            on_batch(min(start + batch_size, images.shape[0]))
        for family, maps in comps.items():
            for name, m in maps.items():
                _ring_moments(moments.setdefault(family, {}).setdefault(name, [RunningMoments() for _ in range(RINGS)]), m)
    per_ring = {f: {c: _ring_result(rings) for c, rings in comps_.items()} for f, comps_ in moments.items()}
    pooled = {f: {c: _pooled(rings).result() for c, rings in comps_.items()} for f, comps_ in moments.items()}
    return per_ring, pooled


def _pooled(rings: list[RunningMoments]) -> RunningMoments:
    """The moments of the union of the rings (Chan's parallel update)."""
    out = RunningMoments()
    for rm in rings:
        if rm.n:
            total = out.n + rm.n
            delta = rm.mean - out.mean
            out.m2 += rm.m2 + delta * delta * out.n * rm.n / total
            out.mean += delta * rm.n / total
            out.n = total
    return out



def _ring_moments(moments: list[RunningMoments], maps: torch.Tensor) -> None:
    index = ring_index(maps.shape[-2], maps.shape[-1], maps.device)
    for r, rm in enumerate(moments):
        rm.update(maps[..., index == r])


def _ring_result(rings: list[RunningMoments]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    inner = next((rm.result() for rm in reversed(rings) if rm.n), (0.0, 1.0))
    pairs = [rm.result() if rm.n else inner for rm in rings]  # a ring a small map lacks: never used
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


#: The quantile of normal held-out pixels that a final map's unit is set to (per ring).
FINAL_QUANTILE = 0.99


def final_map_stats(
    ctx: CategoryContext, images: torch.Tensor, image_ids: Sequence[str], variants: Sequence[str], batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Per variant and edge-distance ring of its final map (components normalised, combined,
    smoothed) over the held-out images: (mean, q99 - mean), so that after ``normalise`` 0 is a
    typical normal pixel and 1 the 99th percentile of normal pixels at that distance from the edge.

    Why a quantile and not the std: an image score is a maximum, decided by the upper tail, and
    smoothing next to the edge averages fewer (or mirrored) pixels, so normal border pixels have
    heavier upper tails than inner ones even after their components were standardised per ring.
    Matching each ring's 99th percentile makes the maxima of normal images land on the border about
    as often as its share of pixels (``argmax_on_border`` in the metrics)."""
    values: dict[str, list[list[np.ndarray]]] = {}
    ringed = [v for v in variants if ctx.cfg.variants.params(v, ctx.category).border_rings]
    for start in range(0, images.shape[0], batch_size) if ringed else ():
        results = score_batch(ctx, images[start : start + batch_size], image_ids[start : start + batch_size], ringed)
        if on_batch is not None:
            on_batch(min(start + batch_size, images.shape[0]))
        for v, res in results.items():
            index = ring_index(res.maps.shape[-2], res.maps.shape[-1]).numpy()
            rings = values.setdefault(v, [[] for _ in range(RINGS)])
            for r in range(RINGS):
                rings[r].append(res.maps[..., index == r].astype(np.float64).ravel())
    out: dict[str, Any] = {}
    for v, rings in values.items():
        pairs = []
        for parts in rings:
            x = np.concatenate(parts) if parts else np.zeros(0)
            if x.size:
                mean = float(x.mean())
                pairs.append((mean, max(float(np.quantile(x, FINAL_QUANTILE)) - mean, 1e-12)))
            else:
                pairs.append(None)
        inner = next((p for p in reversed(pairs) if p is not None), (0.0, 1.0))
        pairs = [p if p is not None else inner for p in pairs]  # a ring a small map lacks: never used
        out[v] = (tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))
    return out


# --------------------------------------------------------------------------------------------
# Orchestration: fit one category, load what scoring needs
# --------------------------------------------------------------------------------------------

def dynamic_variants(cfg: Config, variants: Sequence[str]) -> list[str]:
    """The variants of ``variants`` that need DynAD's KNN prior (method ``dynamic``)."""
    return [v for v in variants if cfg.variants.instance(v).method == "dynamic"]


def phi_keys(cfg: Config, variants: Sequence[str], category: str | None = None) -> list[str]:
    """The φ instances the dynamic variants of ``variants`` use in ``category`` (``dynad.phi_key``),
    base first: one KNN prior each."""
    used = {dynad.phi_key(cfg.features, cfg.variants.params(v, category)) for v in dynamic_variants(cfg, variants)}
    return [k for k in (PHI_BASE, PHI_ADAPTED) if k in used]


def dynamic_params(cfg: Config, variants: Sequence[str], category: str | None = None) -> Any:
    """The DynamicConfig that sets the shared KNN prior (k, bins) and the adaptation levels:
    the first dynamic variant's (the loader checks that every dynamic variant agrees on
    ``knn_k`` and ``bins``, which set the one KNN prior per category), or the defaults when
    no dynamic variant is enabled."""
    dynamic = dynamic_variants(cfg, variants)
    return cfg.variants.params(dynamic[0], category) if dynamic else DynamicConfig()


def adaptation_reconstructor(cfg: Config, models: dict[str, DiffusionModel], seed: int,
                             category: str | None = None) -> tuple[str, Any]:
    """(model kind, reconstruct(x (B,C,H,W) in [-1,1]) -> x̂ (B,C,H,W)) for DynAD's domain
    adaptation: a noiseless, guided DDIM reconstruction (``dynad.reconstruct``) at a random level
    per image, T̂ = noise_level(b) with b uniform in {1, …, bins} (the reference's ``DA_rnd_step``);
    the levels of the k-th call are drawn from a generator seeded with (seed, k), so a fit is
    reproducible.

    Uses the model of the first enabled dynamic variant that adapts (``domain_adaptation`` on) on
    a pixel model when there is one (DynAD's reference uses the latent one; a pixel model is the
    cheaper choice here and is the one most variants share), else the first adapting dynamic
    variant's model, else the first loaded model; the levels and guidance are that variant's (or
    the dynamic defaults), with ``category``'s ``per_category`` overrides, as the KNN prior of the
    same fit reads them.
    """
    dynamic = [v for v in dynamic_variants(cfg, cfg.variants.enabled) if cfg.variants.model(v) in models
               and cfg.variants.params(v, category).domain_adaptation]
    on_pixels = [v for v in dynamic if not cfg.model_spec(cfg.variants.model(v)).is_latent]
    chosen = (on_pixels or dynamic or [None])[0]
    kind = cfg.variants.model(chosen) if chosen else next(iter(models), None)
    if kind is None:
        raise ConfigError(
            cfg.source or "<config>",
            "features.domain_adaptation_epochs > 0 needs a trained model to reconstruct with.",
            "enable a variant, or set features.domain_adaptation_epochs: 0.",
        )
    model = models[kind]
    params = cfg.variants.params(chosen, category) if chosen else dynamic_params(cfg, [], category)
    latent = cfg.model_spec(kind).is_latent

    calls = [0]

    @torch.no_grad()
    def run(x: torch.Tensor) -> torch.Tensor:
        g = generator(derive_seed(seed, "domain-adaptation", calls[0]))
        calls[0] += 1
        bins = torch.randint(1, params.bins + 1, (x.shape[0],), generator=g).tolist()
        t_hat = torch.tensor([int(noise_level(b, params.t_max, params.bins)) for b in bins])  # CPU: see reconstruct
        z0 = model.encode(x).float() if latent else x
        # fp32: φ is trained against these reconstructions (see scoring.context on φ's precision).
        eps_fn = lambda z, t: model.model_output(z, t)[0].float()  # noqa: E731
        z_hat = dynad.reconstruct(eps_fn, model.schedule, z0, t_hat, params.ddim_steps, params.guidance_w)
        return model.decode(z_hat).float() if latent else z_hat

    return kind, run


def fit_category(
    cfg: Config,
    category: str,
    models: dict[str, DiffusionModel],
    train_images: torch.Tensor,
    holdout_images: torch.Tensor,
    holdout_ids: Sequence[str],
    variants: Sequence[str],
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    progress: Callable[[str], None] | None = None,
) -> FittedState:
    """The fit step of one category: φ (+ optional domain adaptation), KNN prior, normalisation stats.

    ``progress``: told one line per stage and, during the two passes over the held-out images
    (steps 4 and 5), the images done / total with an ETA.

    ``models``: model kind → DiffusionModel for every kind the ``variants`` use.
    ``train_images`` (N,C,H,W) and ``holdout_images`` (M,C,H,W) float32 in [-1,1]: the category's
    training images (KNN prior, adaptation) and its held-out normal images (statistics). With
    ``dataset.holdout_fraction: 0`` the caller passes the training images again as the hold-out
    (optimistic statistics: docs/methods.md, Normalisation).
    1. The base φ = ``features.arch`` (``features.weights`` or random with its BatchNorm
       calibrated on the training images; recorded as ``weights``): RAN's feature term and the
       dynamic variants with ``domain_adaptation: false``.
    2. ``features.domain_adaptation_epochs`` > 0 and a dynamic variant adapts: DynAD's own copy of
       φ fine-tuned on the training images (DynAD eq. 11) against reconstructions from
       :func:`adaptation_reconstructor`; the base φ is left as it is.
    3. For each φ the dynamic variants use (:func:`phi_keys`): the KNN prior over its layer2
       pooled 16×16 of every training image (L1, K = knn_k, ``bins`` equal-width bins over the
       mean KNN distances, each training image's own entry excluded from its neighbours).
    4. Mean/std of every raw component map over the held-out pixels of each edge-distance ring
       (scoring with the KNN but no statistics yet, exactly as the test images will be).
    5. Per ring, the mean and the 99th percentile of each variant's final (normalised, combined,
       smoothed) map over the held-out images (``final_map_stats``).
    """
    device = torch.device(device)
    variants = list(variants)
    if holdout_images.shape[0] == 0:
        raise DatasetError(
            f"category {category}",
            "no held-out normal training images to compute normalisation statistics on.",
            "raise dataset.holdout_fraction / dataset.holdout_min (the category needs at least one), or set "
            "dataset.holdout_fraction: 0 to measure them on the training images.",
        )
    if train_images.shape[0] == 0:
        raise DatasetError(f"category {category}", "no training images.", "check the dataset's train/good folder.")
    features, weights = build_features(cfg.features, seed=cfg.seed, device=device)
    info: dict[str, Any] = {
        "category": category,
        "arch": cfg.features.arch,
        "weights": weights,
        # The file φ's weights came from, by name and content (the tag holds the digest only).
        "weights_file": None if not cfg.features.weights else {"name": Path(cfg.features.weights).name,
                                                               "sha256": weights.removeprefix("sha256:")},
        "features_init_seed": cfg.seed,
        "variants": variants,
        "train_images": int(train_images.shape[0]),
        "holdout_images": int(holdout_images.shape[0]),
        "statistics_on": "training images" if cfg.dataset.holdout_fraction == 0 else "held-out images",
    }

    features_state = None
    if weights == "none":  # random φ: measure its BatchNorm statistics on the normal training images
        features = calibrate_batchnorm(features, train_images, batch_size)
        features_state = {k: v.detach().cpu().clone() for k, v in features.state_dict().items()}
        info["batchnorm_calibrated_on"] = int(train_images.shape[0])
    keys = phi_keys(cfg, variants, category)
    phis = {PHI_BASE: features}
    if PHI_ADAPTED in keys:  # DynAD's own copy; ``features`` (the base φ) stays as it is
        seed = derive_seed(cfg.seed, "domain-adaptation", category)
        kind, recon = adaptation_reconstructor(cfg, models, seed, category)
        losses: list[float] = []
        phis[PHI_ADAPTED] = domain_adapt(
            features, train_images.to(device, torch.float32), recon, epochs=cfg.features.domain_adaptation_epochs,
            lr=cfg.features.domain_adaptation_lr, batch_size=batch_size, seed=seed, losses=losses,
        )
        info["domain_adaptation"] = {"epochs": cfg.features.domain_adaptation_epochs, "model_kind": kind,
                                     "steps": len(losses), "first_loss": losses[0] if losses else None,
                                     "last_loss": losses[-1] if losses else None}

    knns: dict[str, Any] = {}
    params = dynamic_params(cfg, variants, category)
    for key in keys:
        feats = knn_features(phis[key], train_images, batch_size)  # = dynad's pooled_layer2 of φ(x0)
        knns[key] = KNNPrior.fit(feats.numpy(), k=params.knn_k, bins=params.bins, exclude_self=True)
    if keys:
        info["knn"] = {"k": params.knn_k, "bins": params.bins, "exclude_self": True,
                       "train_vectors": int(train_images.shape[0]), "phi": keys}

    adapted = phis.get(PHI_ADAPTED)
    fitted = FittedState(knn=knns.get(PHI_BASE), knn_adapted=knns.get(PHI_ADAPTED), features_weights=weights,
                         features_state=features_state, info=info,
                         adapted_state=None if adapted is None else
                         {k: v.detach().cpu().clone() for k, v in adapted.state_dict().items()})
    # The statistics are measured with the engine settings scoring will use (cfg.scoring:
    # precision, channels_last, compile), so test maps are standardised like for like.
    ctx = engine_context(cfg, category, models, features, fitted, device)
    if adapted is not None:
        ctx.phis[PHI_ADAPTED] = adapted
    n = int(holdout_images.shape[0])
    fitted.stats, fitted.global_stats = component_stats(
        ctx, holdout_images, list(holdout_ids), variants, batch_size,
        on_batch=_images_done(progress, f"{category}: component statistics (pass 1 of 2)", n))
    fitted.final = final_map_stats(ctx, holdout_images, list(holdout_ids), variants, batch_size,
                                   on_batch=_images_done(progress, f"{category}: final-map statistics (pass 2 of 2)", n))
    info["final_standardisation"] = ("per ring (0, 1, 2, 3+ px from the edge) of each variant's final map; none for "
                                     "variants with border_rings: false")
    return fitted


#: Seconds between two progress lines of one fit pass (the first batch and the last always report).
PROGRESS_EVERY_S = 10.0


def _images_done(progress: Callable[[str], None] | None, stage: str, total: int) -> Callable[[int], None] | None:
    """A per-batch callback that tells ``progress`` the images done / total of ``stage`` with an
    ETA: after the first batch, at most every ``PROGRESS_EVERY_S`` seconds, and at the end."""
    if progress is None:
        return None
    start = time.perf_counter()
    last = [-math.inf]

    def done(n: int) -> None:
        now = time.perf_counter()
        if n < total and now - last[0] < PROGRESS_EVERY_S:
            return
        last[0] = now
        eta = (now - start) / n * (total - n) if n else 0.0
        progress(f"{stage}: {n}/{total} images, ETA {eta:.0f} s")

    return done


def load_category_context(cfg: Config, category: str, device: torch.device | str = "cpu") -> CategoryContext:
    """Everything a scoring actor needs for one category (called once per actor and category).

    Models of the kinds the enabled variants use (``raydiff.paths.model_dir`` + EMA weights),
    the fitted state (``raydiff.paths.fitted_dir``), the base φ and, when the fit step adapted
    one, DynAD's adapted φ as a separate module (``ctx.phis``). Raises CheckpointError with the
    command that fixes a missing piece.
    """
    device = torch.device(device)
    models = {name: load_model(model_dir(cfg, category, name), device, expect=expected_meta(cfg, name, category),
                               vae_path=cfg.models.spec(name).vae.vae_path)
              for name in cfg.models_needed()}
    folder = fitted_dir(cfg, category)
    fix = f"run `raydiff fit` with this config for category {category} (after `raydiff train`)."
    if not is_complete(folder):
        raise CheckpointError(folder, "the fitted state (KNN prior, normalisation statistics) is missing or incomplete.", fix)
    fitted = FittedState.load(folder)
    missing = sorted({cfg.variants.family(v, category) for v in cfg.variants.enabled} - set(fitted.stats))
    missing += sorted({cfg.variants.family(v, category) for v in cfg.variants.enabled
                       if not cfg.variants.params(v, category).border_rings} - set(fitted.global_stats))
    if missing:
        raise CheckpointError(folder, f"no normalisation statistics for {', '.join(missing)}.", fix)
    keys = phi_keys(cfg, cfg.variants.enabled, category)
    for key in keys:
        if fitted.knn_for(key) is None:
            raise CheckpointError(folder, f"no KNN prior over the {key} φ, which the dynamic variants need.", fix)
    if PHI_ADAPTED in keys and fitted.adapted_state is None:
        raise CheckpointError(folder, "no domain-adapted φ, which the dynamic variants with domain_adaptation need.", fix)
    features, weights = build_features(cfg.features, seed=cfg.seed)
    if weights != fitted.features_weights:
        raise CheckpointError(
            folder, f"fitted with φ weights '{fitted.features_weights}', but the config gives '{weights}'.", fix
        )
    if fitted.features_state is not None:
        features.load_state_dict(fitted.features_state, strict=True)
    adapted = None
    if fitted.adapted_state is not None:
        adapted = copy.deepcopy(features)
        adapted.load_state_dict(fitted.adapted_state, strict=True)
        adapted = adapted.to(device).eval().requires_grad_(False)
    features = features.to(device).eval().requires_grad_(False)
    ctx = engine_context(cfg, category, models, features, fitted, device)
    if adapted is not None:
        ctx.phis[PHI_ADAPTED] = adapted
    return ctx
