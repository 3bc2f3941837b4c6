"""Scoring benchmark: UNet forward passes and wall time per image, per variant and all together.

    .venv/bin/python -m raydiff.bench.engine                       # CPU, tiny preset, 64 px
    .venv/bin/python -m raydiff.bench.engine --device cuda --size 256 --preset ddad --batch 32 \\
        --n-images 128 --peak-tflops 989     # H100 bf16 dense: images/s and model-FLOP utilisation

Models are freshly initialised (random weights: the cost of a forward pass does not depend on
the weights); φ is the random-init ResNet-34; the KNN prior is fitted on random images and no
normalisation statistics are used (the maps are raw). Each variant is timed alone (its own
pass, nothing shared), then every enabled variant in the one shared pass the pipeline runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any

import torch

from raydiff.config import MODEL_KIND_TABLE, VARIANT_MODEL_KIND, Config, load_config


def random_models(cfg: Config, channels: int, device: torch.device, kinds: Sequence[str]) -> dict[str, Any]:
    """One freshly initialised DiffusionModel per kind, shaped as training would build it."""
    from raydiff import diffusion as D
    from raydiff.models.checkpoint import DiffusionModel
    from raydiff.models.latent import build_vae
    from raydiff.models.presets import build_unet

    mc, size = cfg.models, cfg.dataset.image_size
    schedule = D.Schedule.from_config(mc).to(device)
    out: dict[str, Any] = {}
    for i, kind in enumerate(kinds):
        torch.manual_seed(cfg.seed + i)
        vae, scale, sample_channels, sample_size = None, None, channels, size
        spec = MODEL_KIND_TABLE[kind]
        if spec.latent:
            lat = mc.latent
            vae = build_vae(mc.preset, channels, size, lat.latent_channels, lat.vae_downsample).to(device).eval()
            scale, sample_channels, sample_size = 1.0, lat.latent_channels, size >> lat.vae_downsample
        learned = spec.learned_variance
        unet = build_unet(mc.preset, sample_channels, sample_channels * (2 if learned else 1), sample_size, mc.base_channels)
        out[kind] = DiffusionModel(
            unet=unet.to(device).eval().requires_grad_(False), kind=kind, channels=channels, learned_variance=learned,
            noise_kind=spec.noise, schedule=schedule, vae=vae, latent_scale=scale,
        )
    return out


def unet_gflops(model: Any, device: torch.device) -> float:
    """GFLOP of one UNet forward pass for one image (torch's FLOP counter, 2 FLOP per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    c, s = model.sample_channels, int(model.unet.config.sample_size)
    x = torch.zeros(1, c, s, s, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.unet(x, torch.zeros(1, dtype=torch.long, device=device))
    return counter.get_total_flops() / 1e9


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
) -> dict[str, Any]:
    """Time every variant alone and all of them in one shared pass; print and return a dict.

    Returns {"device", "image_size", "batch", "n_images", "rows": [{"variant" ("all" for the
    shared pass), "unet_forwards_per_image", "seconds_per_image", "images_per_s", "unet_tflops_per_s",
    "mfu" (when ``peak_tflops``)}]}. ``autocast``: bf16 on CUDA by default, fp32 on the CPU.
    ``repeats``: time each pass that many times and keep the fastest (shared machines).
    """
    from raydiff.features import build_features, knn_features
    from raydiff.knn_prior import KNNPrior
    from raydiff.scoring import VARIANTS, score_batch
    from raydiff.scoring.context import CategoryContext
    from raydiff.scoring.fit import DYNAMIC_VARIANTS, FittedState, dynamic_params

    device = torch.device(device)
    variants = list(variants or cfg.variants.enabled)
    kinds = sorted({VARIANT_MODEL_KIND[v] for v in variants})
    models = random_models(cfg, channels, device, kinds)
    gflops = {k: unet_gflops(m, device) for k, m in models.items()}
    features, _ = build_features(cfg.features, seed=cfg.seed, device=device)
    size = cfg.dataset.image_size
    g = torch.Generator().manual_seed(cfg.seed)
    images = (torch.rand(n_images, channels, size, size, generator=g) * 2 - 1).to(device)
    ids = [f"bench/{i:04d}.png" for i in range(n_images)]
    knn = None
    if any(v in DYNAMIC_VARIANTS for v in variants):
        params = dynamic_params(cfg, variants)
        train = torch.rand(params.knn_k + 4, channels, size, size, generator=g) * 2 - 1
        knn = KNNPrior.fit(knn_features(features, train).numpy(), k=params.knn_k, bins=params.bins, exclude_self=True)
    use_autocast = device.type == "cuda" if autocast is None else autocast
    ctx = CategoryContext(
        cfg=cfg, category="bench", models=models, features=features, fitted=FittedState(knn=knn), device=device,
        autocast_dtype=torch.bfloat16 if use_autocast else None,
    )

    def run(vs: list[str]) -> dict[str, Any]:
        score_batch(ctx, images[:batch], ids[:batch], vs)  # warm-up (allocations, cuDNN autotune)
        forwards: dict[str, float] = {}
        times = []
        for _ in range(max(1, repeats)):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for i in range(0, n_images, batch):
                res = score_batch(ctx, images[i : i + batch], ids[i : i + batch], vs)
                for v, r in res.items():
                    forwards[VARIANTS[v].family] = r.forwards_per_image
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - start) / n_images)
        seconds = min(times)
        unet_flops = 0.0
        for family, f in forwards.items():
            unet_flops += f * gflops[VARIANT_MODEL_KIND[family]] * 1e9
        row: dict[str, Any] = {
            "unet_forwards_per_image": sum(forwards.values()),
            "seconds_per_image": seconds,
            "images_per_s": 1.0 / seconds,
            "unet_tflops_per_s": unet_flops / seconds / 1e12,
        }
        if peak_tflops:
            row["mfu"] = row["unet_tflops_per_s"] / peak_tflops
        return row

    for _ in range(2):  # warm-up of everything (allocator, thread pools, JIT-compiled noise) before any timing
        run_once = score_batch(ctx, images[:batch], ids[:batch], variants)
    del run_once
    rows = []
    for v in variants:
        if VARIANTS[v].family != v and any(VARIANTS[u].family == VARIANTS[v].family for u in variants[: variants.index(v)]):
            continue  # the trend ablations share one pass with "trend"
        rows.append({"variant": v, **run([v])})
    rows.append({"variant": "all", **run(variants)})
    result = {
        "device": str(torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        "threads": torch.get_num_threads(),
        "image_size": size,
        "preset": cfg.models.preset,
        "batch": batch,
        "n_images": n_images,
        "autocast": "bf16" if use_autocast else "fp32",
        "repeats": repeats,
        "unet_gflops_per_forward": gflops,
        "rows": rows,
    }
    print_table(result)
    return result


def print_table(result: dict[str, Any]) -> None:
    print(
        f"scoring benchmark: {result['device']} ({result['threads']} threads), preset {result['preset']}, "
        f"{result['image_size']} px, batch {result['batch']}, {result['n_images']} images, {result['autocast']}"
    )
    print("UNet GFLOP per forward and image: " + ", ".join(f"{k} {v:.3f}" for k, v in result["unet_gflops_per_forward"].items()))
    head = f"{'variant':<18} {'UNet fwd/img':>12} {'s/img':>9} {'img/s':>9} {'UNet TFLOP/s':>13}"
    has_mfu = any("mfu" in r for r in result["rows"])
    print(head + (f" {'MFU':>7}" if has_mfu else ""))
    for r in result["rows"]:
        line = (f"{r['variant']:<18} {r['unet_forwards_per_image']:>12.1f} {r['seconds_per_image']:>9.4f} "
                f"{r['images_per_s']:>9.2f} {r['unet_tflops_per_s']:>13.4f}")
        print(line + (f" {r['mfu']:>7.2%}" if "mfu" in r else ""))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (default: configs/textures.yaml).")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=None, help="Image size (default: the config's).")
    p.add_argument("--preset", default=None, help="UNet preset (default: the config's).")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--n-images", type=int, default=8)
    p.add_argument("--variants", default=None, help="Comma-separated (default: the config's enabled ones).")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="Keep the fastest of this many timings.")
    p.add_argument("--peak-tflops", type=float, default=None, help="Peak TFLOP/s of the device, for MFU.")
    p.add_argument("--json", default=None, help="Also write the result here.")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from raydiff.config import DEFAULT_CONFIG

    args = parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.size:
        overrides["dataset.image_size"] = args.size
    if args.preset:
        overrides["models.preset"] = args.preset
    cfg = load_config(args.config or DEFAULT_CONFIG, overrides)
    if args.variants:
        cfg = dataclasses.replace(
            cfg, variants=dataclasses.replace(cfg.variants, enabled=tuple(v.strip() for v in args.variants.split(",")))
        )
    result = bench_scoring(cfg, args.device, args.batch, args.n_images, channels=args.channels,
                           peak_tflops=args.peak_tflops, repeats=args.repeats)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
