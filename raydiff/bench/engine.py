"""Scoring benchmark: UNet passes, FLOP/s, noise time and peak memory per image, per variant and all together.

    .venv/bin/python -m raydiff.bench.engine                       # CPU, textures.yaml's variants
    .venv/bin/python -m raydiff.bench.engine --config configs/mvtec.yaml --size 32 --preset tiny   # CPU, mvtec's
    .venv/bin/python -m raydiff.bench.engine --config configs/mvtec.yaml --device cuda --batch 64 \\
        --n-images 128                     # the real workload: ddad at 256 px, bf16

Models are freshly initialised (random weights: the cost of a pass does not depend on the
weights); φ is the random-init ResNet-34; the KNN prior is fitted on random images and no
normalisation statistics are used (the maps are raw). A config is read for its variant and
model settings only: its dataset root is never opened (``${MVTEC_ROOT}`` need not be set).
Each variant is timed alone (its own pass, nothing shared), then every enabled variant in the
one shared pass the pipeline runs.

Per row: UNet forward and backward passes per image (trend's input gradients are backward
passes, each priced at 2 forwards), achieved UNet FLOP/s and MFU against ``peak_tflops`` (the
suite passes the matmul peak it measured in the same run: bf16 on CUDA), the seconds per image
spent generating noise (the draws the pass makes, counted in an untimed pass by the batch cache
and re-timed alone on the device), and peak memory: CUDA ``max_memory_allocated`` over the row,
or on the CPU the process's peak resident set (``ru_maxrss``: it only grows, so it is the peak
so far, not the row's own).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from raydiff.bench.peak import matmul_peak
from raydiff.config import DEFAULT_CONFIG, Config, ModelSpec, load_config
from raydiff.features import PHI_ADAPTED, build_features, knn_features
from raydiff.models.checkpoint import random_models  # noqa: F401 - the benchmarks' (and tests') random models
from raydiff.config.schema import ScoringConfig
from raydiff.noise import sample_noise
from raydiff.scoring import raw_components, score_batch
from raydiff.scoring.context import engine_context
from raydiff.scoring.fit import FittedState, dynamic_params, dynamic_variants, phi_keys

#: Overrides that let a config be read without its dataset (the bench never opens it) and with
#: the random-init φ the benchmark documents.
NO_DATASET: dict[str, Any] = {"dataset.root": "bench-never-reads-the-dataset", "features.weights": None}


def bench_config(path: Any, overrides: dict[str, Any] | None = None) -> Config:
    """A config for benchmarking: ``path`` with ``overrides``, never needing its dataset folder.
    An override of a model setting (``models.preset``) applies to every model of the config, also
    to named models that set it themselves."""
    fields = {f.name for f in dataclasses.fields(ModelSpec)}
    every = {k: v for k, v in (overrides or {}).items() if k.startswith("models.") and k[7:] in fields}
    rest = {k: v for k, v in (overrides or {}).items() if k not in every}
    cfg = load_config(path or DEFAULT_CONFIG, {**NO_DATASET, **rest})
    return cfg.with_models(**{k[7:]: v for k, v in every.items()}) if every else cfg


def unet_gflops(model: Any, device: torch.device) -> float:
    """GFLOP of one UNet forward pass for one image (torch's FLOP counter, 2 FLOP per MAC)."""
    c, s = model.sample_channels, int(model.unet.config.sample_size)
    x = torch.zeros(1, c, s, s, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.unet(x, torch.zeros(1, dtype=torch.long, device=device))
    return counter.get_total_flops() / 1e9


class ExactL1Prior:
    """DynAD's KNN prior by brute force in numpy: what ``raydiff.knn_prior.KNNPrior`` computes
    (exact L1 K-NN, each training image's own entry excluded, equal-width bins over the
    training images' mean distances), for images without faiss (the device check's)."""

    def __init__(self, train: np.ndarray, k: int, bins: int) -> None:
        self.train = train.astype(np.float64)
        dist = np.abs(self.train[:, None] - self.train[None]).sum(-1)
        np.fill_diagonal(dist, np.inf)
        self.k = min(k, len(train) - 1)
        means = np.sort(dist, axis=1)[:, : self.k].mean(axis=1)
        _, self.edges = np.histogram(means, bins=bins)

    def level(self, feats: np.ndarray) -> np.ndarray:
        dist = np.abs(feats.astype(np.float64)[:, None] - self.train[None]).sum(-1)
        means = np.sort(dist, axis=1)[:, : self.k].mean(axis=1)
        return np.clip(np.searchsorted(self.edges, means, side="left"), 1, len(self.edges) - 1).astype(np.int64)


def fit_random_prior(cfg: Config, features: Any, variants: Sequence[str], channels: int, g: torch.Generator) -> Any:
    """The KNN prior on random training images (faiss when installed, else :class:`ExactL1Prior`)."""
    if not dynamic_variants(cfg, variants):
        return None
    params = dynamic_params(cfg, variants)
    size = cfg.dataset.image_size
    device = next(features.parameters()).device
    train = (torch.rand(params.knn_k + 4, channels, size, size, generator=g) * 2 - 1).to(device)
    feats = knn_features(features, train).numpy()
    try:
        from raydiff.knn_prior import KNNPrior  # lazy, in the try: without faiss (the GPU check), ExactL1Prior

        return KNNPrior.fit(feats, k=params.knn_k, bins=params.bins, exclude_self=True)
    except ImportError:
        return ExactL1Prior(feats, params.knn_k, params.bins)


def bench_context(
    cfg: Config, device: torch.device, channels: int, variants: Sequence[str], scoring: ScoringConfig
) -> Any:
    """A scoring context on random models with the engine settings ``scoring``. DynAD's
    domain-adapted φ, where its instances use one, is a copy of the random φ (adapting it would
    change its weights, not what scoring costs) with its own KNN prior, as in a fitted run."""
    kinds = sorted({cfg.variants.model(v) for v in variants})
    models = random_models(cfg, channels, device, kinds)
    features, _ = build_features(cfg.features, seed=cfg.seed, device=device)
    knn = fit_random_prior(cfg, features, variants, channels, torch.Generator().manual_seed(cfg.seed + 1))
    adapted = copy.deepcopy(features) if PHI_ADAPTED in phi_keys(cfg, variants) else None
    knn_adapted = (fit_random_prior(cfg, adapted, variants, channels, torch.Generator().manual_seed(cfg.seed + 1))
                   if adapted is not None else None)
    ctx = engine_context(cfg, "bench", models, features, FittedState(knn=knn, knn_adapted=knn_adapted), device,
                         scoring=scoring)
    if adapted is not None:
        ctx.phis[PHI_ADAPTED] = adapted
    return ctx


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> tuple[float | None, str]:
    """(MB, what it is): CUDA max_memory_allocated since the last reset, or the CPU process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    try:
        import resource  # lazy, inside the try: Unix only

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu process peak RSS (not per row)"
    except ImportError:
        return None, "n/a"


def noise_seconds(ctx: Any, draws: dict[tuple[str, tuple[int, ...]], int], repeats: int = 2) -> float:
    """Seconds the noise ``draws`` ({(kind, shape): count}) take when re-timed alone on the device."""
    total = 0.0
    spec_of = {ctx.cfg.model_spec(m).noise: ctx.cfg.model_spec(m) for m in ctx.models}
    for (kind, shape), count in draws.items():
        seeds = list(range(shape[0]))
        spec = spec_of[kind]
        sample_noise(kind, shape, seeds, spec, device=ctx.device)  # type: ignore[arg-type]
        best = float("inf")
        for _ in range(repeats):
            _sync(ctx.device)
            start = time.perf_counter()
            sample_noise(kind, shape, seeds, spec, device=ctx.device)  # type: ignore[arg-type]
            _sync(ctx.device)
            best = min(best, time.perf_counter() - start)
        total += best * count
    return total


def measure(
    ctx: Any, images: torch.Tensor, ids: list[str], variants: list[str], batch: int,
    gflops: dict[str, float], peak_tflops: float | None, repeats: int = 1,
) -> dict[str, Any]:
    """One row: ``variants`` in one shared pass over ``images`` in batches of ``batch``."""
    # Untimed pass: warm-up (allocator, cuDNN autotuning, compilation) and the counts.
    _, cache, _ = raw_components(ctx, images[:batch], ids[:batch], variants)
    family_kind = {ctx.cfg.variants.family(v): ctx.cfg.variants.model(v) for v in variants}
    fwd = dict(cache.forwards)
    bwd = dict(cache.backwards)
    flops_per_image = sum(n * gflops[family_kind[f]] for f, n in fwd.items())
    flops_per_image += sum(2 * n * gflops[family_kind[f]] for f, n in bwd.items())
    noise_s = noise_seconds(ctx, dict(cache.noise_draws)) / batch
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    times, family_s = [], {}
    n_images = images.shape[0]
    for _ in range(max(1, repeats)):
        _sync(ctx.device)
        start = time.perf_counter()
        family_s = {}
        for i in range(0, n_images, batch):
            res = score_batch(ctx, images[i : i + batch], ids[i : i + batch], variants)
            for v, r in res.items():
                fam = ctx.cfg.variants.family(v)
                family_s[fam] = family_s.get(fam, 0.0) + r.seconds_per_image * len(r.scores)
        _sync(ctx.device)
        times.append((time.perf_counter() - start) / n_images)
    seconds = min(times)
    mem, mem_what = peak_memory_mb(ctx.device)
    row: dict[str, Any] = {
        "unet_forwards_per_image": float(sum(fwd.values())),
        "unet_backwards_per_image": float(sum(bwd.values())),
        "forwards_by_family": fwd,
        "ms_per_image_by_family": {f: s / n_images * 1e3 for f, s in family_s.items()},
        "seconds_per_image": seconds,
        "images_per_s": 1.0 / seconds,
        "unet_tflops_per_s": flops_per_image * 1e9 / seconds / 1e12,
        "noise_seconds_per_image": noise_s,
        "noise_draws_per_batch": {f"{k}{list(s)}": c for (k, s), c in cache.noise_draws.items()},
        "peak_memory_mb": mem,
        "peak_memory_what": mem_what,
    }
    if peak_tflops:
        row["mfu"] = row["unet_tflops_per_s"] / peak_tflops
    return row


def bench_scoring(
    cfg: Config,
    device: str | torch.device = "cpu",
    batch: int = 4,
    n_images: int = 8,
    variants: Sequence[str] | None = None,
    channels: int = 3,
    peak_tflops: float | None = None,
    autocast: bool | None = None,
    repeats: int = 1,
    scoring: ScoringConfig | None = None,
    say: Any = print,
) -> dict[str, Any]:
    """Time every variant alone and all of them in one shared pass; print and return a dict.

    Returns {"device", "image_size", "batch", "n_images", "rows": [{"variant" ("all" for the
    shared pass), see :func:`measure`}]}. ``scoring``: engine settings (default ``cfg.scoring``:
    precision auto = bf16 on CUDA, fp32 on the CPU); ``autocast`` False/True forces fp32/bf16.
    ``batch`` is honoured: ``n_images`` is raised to a multiple of it (printed) when smaller.
    ``repeats``: time each pass that many times and keep the fastest (shared machines).
    """
    device = torch.device(device)
    variants = list(variants or cfg.variants.enabled)
    sc = scoring or cfg.scoring
    if autocast is not None:
        sc = dataclasses.replace(sc, precision="bf16" if autocast else "fp32")
    if n_images < batch or n_images % batch:
        new = max(batch, -(-n_images // batch) * batch)
        say(f"n_images {n_images} -> {new}: a whole number of batches of {batch} (the batch is not capped)")
        n_images = new
    ctx = bench_context(cfg, device, channels, variants, sc)
    gflops = {k: unet_gflops(m, device) for k, m in ctx.models.items()}
    size = cfg.dataset.image_size
    g = torch.Generator().manual_seed(cfg.seed)
    images = (torch.rand(n_images, channels, size, size, generator=g) * 2 - 1).to(device)
    ids = [f"bench/{i:04d}.png" for i in range(n_images)]
    rows = []
    for v in variants:
        fam = cfg.variants.family(v)
        if any(cfg.variants.family(u) == fam for u in variants[: variants.index(v)]):
            continue  # shares its pass with an earlier variant (e.g. the trend ablations with trend)
        rows.append({"variant": v, **measure(ctx, images, ids, [v], batch, gflops, peak_tflops, repeats)})
    rows.append({"variant": "all", **measure(ctx, images, ids, variants, batch, gflops, peak_tflops, repeats)})
    result = {
        "device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        "threads": torch.get_num_threads(),
        "image_size": size,
        "preset": ",".join(sorted({cfg.model_spec(k).preset for k in ctx.models})),
        "batch": batch,
        "n_images": n_images,
        "precision": "bf16" if ctx.autocast_dtype is torch.bfloat16 else "fp32",
        "channels_last": sc.channels_last,
        "compile": sc.compile,
        "repeats": repeats,
        "unet_gflops_per_forward": gflops,
        "peak_tflops": peak_tflops,
        "rows": rows,
    }
    say(format_table(result))
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"scoring benchmark: {result['device']} ({result['threads']} threads), preset {result['preset']}, "
        f"{result['image_size']} px, batch {result['batch']}, {result['n_images']} images, {result['precision']}"
        f"{', channels_last' if result['channels_last'] else ''}{', compiled' if result['compile'] else ''}",
        "UNet GFLOP per forward and image: " + ", ".join(f"{k} {v:.3f}" for k, v in result["unet_gflops_per_forward"].items()),
    ]
    has_mfu = any("mfu" in r for r in result["rows"])
    lines.append(f"{'variant':<18} {'fwd/img':>8} {'bwd/img':>8} {'s/img':>9} {'img/s':>8} {'TFLOP/s':>9}"
                 + (f" {'MFU':>7}" if has_mfu else "") + f" {'noise s/img':>11} {'peak MB':>9}")
    for r in result["rows"]:
        mem = f"{r['peak_memory_mb']:>9.0f}" if r["peak_memory_mb"] is not None else f"{'n/a':>9}"
        lines.append(
            f"{r['variant']:<18} {r['unet_forwards_per_image']:>8.1f} {r['unet_backwards_per_image']:>8.1f} "
            f"{r['seconds_per_image']:>9.4f} {r['images_per_s']:>8.2f} {r['unet_tflops_per_s']:>9.4f}"
            + (f" {r['mfu']:>7.2%}" if "mfu" in r else "") + f" {r['noise_seconds_per_image']:>11.4f} {mem}"
        )
    if result["rows"]:
        lines.append(f"peak memory: {result['rows'][-1]['peak_memory_what']}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (default: configs/textures.yaml); its dataset is not read.")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", type=int, default=None, help="Image size (default: the config's).")
    p.add_argument("--preset", default=None, help="UNet preset (default: the config's).")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--n-images", type=int, default=8)
    p.add_argument("--variants", default=None, help="Comma-separated (default: the config's enabled ones).")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="Keep the fastest of this many timings.")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=None, help="Default: the config's scoring.precision.")
    p.add_argument("--channels-last", action="store_true", help="scoring.channels_last")
    p.add_argument("--compile", action="store_true", help="scoring.compile")
    p.add_argument("--peak-tflops", type=float, default=None, help="MFU reference (default: a matmul measured now).")
    p.add_argument("--json", default=None, help="Also write the result here.")
    return p.parse_args(argv)


def scoring_from_args(cfg: Config, args: argparse.Namespace) -> ScoringConfig:
    sc = cfg.scoring
    return dataclasses.replace(
        sc, precision=args.precision or sc.precision, channels_last=args.channels_last or sc.channels_last,
        compile=args.compile or sc.compile,
    )


def config_from_args(args: argparse.Namespace) -> Config:
    overrides: dict[str, Any] = {}
    if args.size:
        overrides["dataset.image_size"] = args.size
    if args.preset:
        overrides["models.preset"] = args.preset
    cfg = bench_config(args.config, overrides)
    if args.variants:
        cfg = dataclasses.replace(
            cfg, variants=dataclasses.replace(cfg.variants, enabled=tuple(v.strip() for v in args.variants.split(",")))
        )
    return cfg


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg = config_from_args(args)
    peak = args.peak_tflops
    if peak is None:
        measured = matmul_peak(args.device)
        peak = measured["tflops"]
        print(f"measured matmul peak: {peak:.3f} TFLOP/s ({measured['dtype']}, {measured['n']}^3)")
    result = bench_scoring(cfg, args.device, args.batch, args.n_images, channels=args.channels,
                           peak_tflops=peak, repeats=args.repeats, scoring=scoring_from_args(cfg, args))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
