"""The device check: one run on a GPU machine that measures the scoring engine and training.

    scripts/gpu_check.sh                                   # on the GPU machine (see the script)
    python -m raydiff.bench.gpu_check --device cuda --json gpu_check.json
    python -m raydiff.bench.gpu_check --device cpu --preset tiny --size 32 --batches 2 \\
        --modes eager channels_last --quick --json /tmp/check.json        # CPU smoke run (CI)

Imports torch, diffusers, safetensors, numpy, scipy and PyYAML only (no ray, polars, faiss,
click or pyarrow: tests/test_gpu_check.py runs it with those blocked). Each item below runs
inside the time budget (``--budget-s``, default 450 s): an item that would start after the
budget is recorded as skipped, and the JSON is rewritten after every item, so a run cut short
still leaves what it measured. Items, in this order:

1. ``env``: device, torch / CUDA / diffusers versions.
2. ``peak``: the bf16 matmul peak (8192³; fp32 1024³ on the CPU), the MFU reference.
3. ``noise``: ms per draw of gaussian / simplex / GMM noise at ``--noise-shape`` (default
   32×3×256×256) on the device, and the opensimplex reference (CPU, per map, scaled to the draw)
   when the package is installed: the simplex port stays only if it is ≥ 50× faster.
4. ``agreement``: bf16 vs fp32 maps of every variant on 4 images (same random models): the
   Pearson correlation of the maps and the largest image-score difference / map range;
   ``syncs``: host syncs CUDA reports (sync debug mode) in the static chains + DynAD and in
   training steps at two lengths, i.e. per step (CUDA only).
5. ``naive``: every variant alone, fp32, batch 1, one image (the reference scripts' way).
6. ``engine``: every variant in one shared pass at each of ``--batches`` (default 32, 64) and
   each of ``--modes`` (eager, channels_last, compiled): s/image, UNet forwards and backwards per
   image, FLOP/s, MFU, noise s/image, peak memory, ms/image and forwards per variant family.
7. ``train``: images/s, MFU and peak memory of a training step per model kind (batch
   ``--train-batch``), bf16 autocast on CUDA, fused AdamW, foreach EMA.

The workload is ``--config`` (default configs/mvtec.yaml: its variant settings; its dataset is
never read) with the ``ddad`` preset at 256 px unless ``--preset`` / ``--size`` say otherwise.
``--quick`` shortens the chains (static steps 3, trend 3 levels, one training step) for smoke
runs; it changes the workload, so never use it for numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import diffusers
import torch
import yaml

from raydiff.bench.engine import bench_config, bench_context, measure, unet_gflops
from raydiff.bench.peak import matmul_peak
from raydiff.bench.train import bench_train
from raydiff.config import Config, ModelsConfig, ModelSpec
from raydiff.config.schema import ScoringConfig
from raydiff.noise import sample_noise
from raydiff.scoring import raw_components, score_batch

MODES: dict[str, dict[str, bool]] = {
    "eager": {"channels_last": False, "compile": False},
    "channels_last": {"channels_last": True, "compile": False},
    "compiled": {"channels_last": False, "compile": True},
}
#: Overrides of ``--quick``: short chains, for a smoke run only.
#: ``--quick``: short chains, per method (applied to every variant of that method).
QUICK: dict[str, dict[str, Any]] = {
    "static": {"steps": 3}, "no-diffusion": {"steps": 2}, "trend": {"levels": (25, 100, 200)},
    "dynamic": {"ddim_steps": 2},
}


def quick(cfg: Config) -> Config:
    """``cfg`` with the ``QUICK`` settings for every variant of each method."""
    variants = cfg.variants
    for name, inst in cfg.variants.instances.items():
        changes = dict(QUICK.get(inst.method, {}))
        if "steps" in changes:
            changes["steps"] = min(changes["steps"], inst.params.t0)
        if changes:
            variants = variants.with_params(name, **changes)
    return dataclasses.replace(cfg, variants=variants)


def _images(cfg: Config, n: int, channels: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    size = cfg.dataset.image_size
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, channels, size, size, generator=g) * 2 - 1).to(device)


def check_env(device: torch.device) -> dict[str, Any]:
    out = {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
           "device": str(device), "cuda": torch.version.cuda, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(name=props.name, memory_gb=props.total_memory / 2**30, multiprocessors=props.multi_processor_count)
    else:
        out["name"] = platform.processor() or "cpu"
    return out


def check_noise(cfg: Config, device: torch.device, shape: tuple[int, int, int, int], repeats: int = 3) -> dict[str, Any]:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    out: dict[str, Any] = {"shape": list(shape)}
    seeds = list(range(shape[0]))
    # The noise settings of the config's model with that noise (the defaults when it has none).
    spec_of = {s.noise: s for s in reversed(list(cfg.models.specs.values()))}
    for kind in ("gaussian", "simplex", "gmm"):
        spec = spec_of.get(kind, ModelSpec(noise=kind))  # type: ignore[arg-type]
        sample_noise(kind, shape, seeds, spec, device=device)  # type: ignore[arg-type]
        best = math.inf
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            sample_noise(kind, shape, seeds, spec, device=device)  # type: ignore[arg-type]
            sync()
            best = min(best, time.perf_counter() - start)
        out[f"{kind}_ms_per_draw"] = best * 1e3
    try:  # lazy, in the try: opensimplex is optional, not on the GPU machine
        import opensimplex  # noqa: F401
    except ImportError:
        out["opensimplex"] = "not installed: the ≥ 50x rule could not be checked"
        return out
    maps = 2
    small = (maps, 1, shape[2], shape[3])
    simplex = spec_of.get("simplex", ModelSpec(noise="simplex"))
    sample_noise("simplex", small, [0, 1], simplex, backend="opensimplex")  # numba compiles on first use
    start = time.perf_counter()
    sample_noise("simplex", small, [0, 1], simplex, backend="opensimplex")
    per_map = (time.perf_counter() - start) / maps
    n_maps = shape[0] * shape[1]
    out["opensimplex_ms_per_draw"] = per_map * n_maps * 1e3
    out["opensimplex_ms_per_map"] = per_map * 1e3
    out["simplex_speedup_vs_opensimplex"] = out["opensimplex_ms_per_draw"] / out["simplex_ms_per_draw"]
    out["simplex_port_stays"] = out["simplex_speedup_vs_opensimplex"] >= 50
    return out


def check_agreement(cfg: Config, device: torch.device, channels: int, n: int = 4) -> dict[str, Any]:
    """bf16 vs fp32 maps of every variant on ``n`` images, the same random models."""
    variants = list(cfg.variants.enabled)
    images = _images(cfg, n, channels, device, seed=7)
    ids = [f"agree/{i}" for i in range(n)]
    results = {}
    for precision in ("fp32", "bf16"):
        ctx = bench_context(cfg, device, channels, variants, ScoringConfig(precision=precision))
        results[precision] = score_batch(ctx, images, ids, variants)
    out = {}
    for v in variants:
        a, b = results["fp32"][v], results["bf16"][v]
        x, y = a.maps.reshape(-1).astype("float64"), b.maps.reshape(-1).astype("float64")
        corr = float(((x - x.mean()) * (y - y.mean())).mean() / (x.std() * y.std() + 1e-30))
        span = float(x.max() - x.min()) or 1.0
        out[v] = {"map_correlation": corr, "max_score_diff_over_map_range": float(abs(a.scores - b.scores).max() / span)}
    return out


def check_syncs(cfg: Config, device: torch.device, channels: int) -> dict[str, Any]:
    """Host syncs that CUDA reports (``torch.cuda.set_sync_debug_mode("warn")``) during the
    static chains + DynAD and during training steps, at two lengths: the difference is the
    syncs per step (the aim: 0)."""
    if device.type != "cuda":
        return {"not_applicable": "CUDA only (torch.cuda.set_sync_debug_mode)"}

    def count(fn: Callable[[], Any]) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
                torch.cuda.synchronize(device)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in caught)

    variants = [v for v in ("static-gaussian", "static-simplex", "static-gmm", "dynamic-pixel") if v in cfg.variants.enabled]
    out: dict[str, Any] = {"variants": variants}
    for steps in (4, 8):
        over = {f"variants.{v}.steps": steps for v in variants if v.startswith("static")}
        c = bench_config(cfg.source, {**{"dataset.image_size": cfg.dataset.image_size,
                                         "models.preset": cfg.model_spec(cfg.models_needed()[0]).preset},
                                      **over, **{f"variants.{v}.t0": 20 for v in variants if v.startswith("static")}})
        c = dataclasses.replace(c, variants=dataclasses.replace(c.variants, enabled=tuple(variants)))
        ctx = bench_context(c, device, channels, variants, ScoringConfig())
        x = _images(c, 2, channels, device)
        raw_components(ctx, x, ["s/0", "s/1"], variants)  # warm-up
        out[f"scoring_syncs_{steps}_steps"] = count(lambda ctx=ctx, x=x: raw_components(ctx, x, ["s/0", "s/1"], variants))
    for steps in (2, 4):
        spec = cfg.models.specs.get("pixel-simplex")
        out[f"train_syncs_{steps}_steps"] = count(lambda n=steps, spec=spec: bench_train(
            cfg.model_spec(cfg.models_needed()[0]).preset, cfg.dataset.image_size, 2, n, device, channels, warmup=1,
            kind="pixel-simplex", models_cfg=spec))
    out["scoring_syncs_per_step"] = (out["scoring_syncs_8_steps"] - out["scoring_syncs_4_steps"]) / 4
    out["train_syncs_per_step"] = (out["train_syncs_4_steps"] - out["train_syncs_2_steps"]) / 2
    return out


def check_naive(cfg: Config, device: torch.device, channels: int, peak: float | None) -> dict[str, Any]:
    """Every variant family alone, fp32, batch 1, one image."""
    variants = list(cfg.variants.enabled)
    ctx = bench_context(cfg, device, channels, variants, ScoringConfig(precision="fp32"))
    gflops = {k: unet_gflops(m, device) for k, m in ctx.models.items()}
    images, ids = _images(cfg, 1, channels, device), ["naive/0"]
    rows, seen = {}, set()
    for v in variants:
        if cfg.variants.family(v) in seen:
            continue
        seen.add(cfg.variants.family(v))
        rows[v] = measure(ctx, images, ids, [v], 1, gflops, peak)
    total = sum(r["seconds_per_image"] for r in rows.values())
    return {"rows": rows, "seconds_per_image_all_variants": total}


def check_engine(cfg: Config, device: torch.device, channels: int, batch: int, mode: str,
                 peak: float | None) -> dict[str, Any]:
    variants = list(cfg.variants.enabled)
    sc = ScoringConfig(precision="auto", **MODES[mode])
    start = time.perf_counter()
    ctx = bench_context(cfg, device, channels, variants, sc)
    gflops = {k: unet_gflops(m, device) for k, m in ctx.models.items()}
    images = _images(cfg, batch, channels, device)
    row = measure(ctx, images, [f"engine/{i}" for i in range(batch)], variants, batch, gflops, peak)
    row.update(mode=mode, batch=batch, precision="bf16" if ctx.autocast_dtype is torch.bfloat16 else "fp32",
               wall_s_with_warmup=time.perf_counter() - start, unet_gflops_per_forward=gflops)
    return row


def check_train(cfg: Config, device: torch.device, channels: int, batch: int, steps: int, peak: float | None,
                warmup: int) -> dict[str, Any]:
    out = {}
    for kind in cfg.models.names:
        mc = cfg.model_spec(kind)
        out[kind] = bench_train(mc.preset, cfg.dataset.image_size, batch, steps, device, channels, warmup=warmup,
                                peak=peak * 1e12 if peak else None, kind=kind, models_cfg=mc)
    return out


def run_items(items: Sequence[tuple[str, Callable[[], Any]]], budget_s: float, result: dict[str, Any],
              write: Callable[[], None], say: Callable[[str], None]) -> None:
    """Run each (name, fn) while the budget lasts; record its result, error or skip; write after each."""
    start = time.perf_counter()
    for name, fn in items:
        used = time.perf_counter() - start
        if used > budget_s:
            result[name] = {"skipped": f"time budget of {budget_s:.0f} s used up ({used:.0f} s)"}
            say(f"[{used:6.1f} s] {name}: skipped (budget)")
            write()
            continue
        say(f"[{used:6.1f} s] {name} ...")
        t0 = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as err:  # one failed item must not lose the others' numbers
            result[name] = {"error": f"{type(err).__name__}: {err}"}
        result.setdefault("item_seconds", {})[name] = time.perf_counter() - t0
        write()
    result["total_seconds"] = time.perf_counter() - start
    write()


def format_report(r: dict[str, Any]) -> str:
    """The printed table of a check's result."""
    lines = []
    env = r.get("env", {})
    lines.append(f"device: {env.get('name', '?')} ({r.get('device')}), torch {env.get('torch')}, "
                 f"CUDA {env.get('cuda')}, diffusers {env.get('diffusers')}")
    peak = r.get("peak", {})
    if "tflops" in peak:
        lines.append(f"matmul peak: {peak['tflops']:.1f} TFLOP/s ({peak['dtype']}, {peak['n']}^3)")
    noise = r.get("noise", {})
    if "gaussian_ms_per_draw" in noise:
        lines.append(f"noise per draw {noise['shape']}: gaussian {noise['gaussian_ms_per_draw']:.2f} ms, "
                     f"simplex {noise['simplex_ms_per_draw']:.2f} ms, gmm {noise['gmm_ms_per_draw']:.2f} ms")
        if "simplex_speedup_vs_opensimplex" in noise:
            lines.append(f"  opensimplex (CPU) {noise['opensimplex_ms_per_draw']:.0f} ms per draw: port "
                         f"{noise['simplex_speedup_vs_opensimplex']:.0f}x faster -> "
                         f"{'stays' if noise['simplex_port_stays'] else 'REMOVE (< 50x)'}")
        else:
            lines.append(f"  {noise.get('opensimplex')}")
    naive = r.get("naive", {})
    if "seconds_per_image_all_variants" in naive:
        lines.append(f"naive (fp32, batch 1, each variant alone): {naive['seconds_per_image_all_variants']:.3f} s/image")
    head = f"{'engine':<26} {'s/img':>8} {'fwd/img':>8} {'bwd/img':>8} {'TFLOP/s':>8} {'MFU':>7} {'noise s':>8} {'peak GB':>8}"
    engine_rows = [(k, v) for k, v in r.items() if k.startswith("engine ")]
    if engine_rows:
        lines.append(head)
    for name, row in engine_rows:
        if "seconds_per_image" not in row:
            lines.append(f"{name[7:]:<26} {row.get('skipped') or row.get('error')}")
            continue
        mem = row["peak_memory_mb"] / 1024 if row.get("peak_memory_mb") is not None else float("nan")
        speed = (f" ({naive['seconds_per_image_all_variants'] / row['seconds_per_image']:.1f}x naive)"
                 if "seconds_per_image_all_variants" in naive else "")
        lines.append(f"{name[7:]:<26} {row['seconds_per_image']:>8.3f} {row['unet_forwards_per_image']:>8.0f} "
                     f"{row['unet_backwards_per_image']:>8.0f} {row['unet_tflops_per_s']:>8.1f} "
                     f"{row.get('mfu', float('nan')):>7.1%} {row['noise_seconds_per_image']:>8.4f} {mem:>8.1f}{speed}")
    best = next((row for name, row in engine_rows if "forwards_by_family" in row), None)
    if best is not None:
        lines.append("per variant family (first engine row): " + ", ".join(
            f"{f} {best['forwards_by_family'].get(f, 0):.0f} fwd {ms:.1f} ms/img"
            for f, ms in best["ms_per_image_by_family"].items()))
    for kind, row in (r.get("train") or {}).items():
        if isinstance(row, dict) and "images_per_s" in row:
            mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "n/a"
            mem = f"{row['peak_memory_mb'] / 1024:.1f} GB" if row.get("peak_memory_mb") else "n/a"
            lines.append(f"train {kind:<14} {row['images_per_s']:>8.1f} img/s  MFU {mfu}  peak {mem}")
    syncs = r.get("syncs") or {}
    if "scoring_syncs_per_step" in syncs:
        lines.append(f"host syncs per step (CUDA sync debug mode): scoring {syncs['scoring_syncs_per_step']:g}, "
                     f"training {syncs['train_syncs_per_step']:g}")
    for v, a in (r.get("agreement") or {}).items():
        if isinstance(a, dict) and "map_correlation" in a:
            lines.append(f"bf16 vs fp32 {v:<18} corr {a['map_correlation']:.4f}  "
                         f"max score diff / map range {a['max_score_diff_over_map_range']:.4f}")
    if "item_seconds" in r:
        lines.append("seconds per item: " + ", ".join(f"{k} {v:.0f}" for k, v in r["item_seconds"].items()))
    for name, row in r.items():
        if isinstance(row, dict) and ("error" in row or "skipped" in row) and not name.startswith("engine "):
            lines.append(f"{name}: {row.get('error') or row.get('skipped')}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m raydiff.bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(Path(__file__).resolve().parents[2] / "configs" / "mvtec.yaml"))
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--preset", default="ddad")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batches", type=int, nargs="+", default=[32, 64])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--noise-shape", type=int, nargs=4, default=[32, 3, 256, 256])
    p.add_argument("--budget-s", type=float, default=450.0, help="start no item after this many seconds")
    p.add_argument("--quick", action="store_true", help="short chains (smoke runs only: not the real workload)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (YAML value)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", default="gpu_check.json")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    overrides: dict[str, Any] = {"dataset.image_size": args.size, "models.preset": args.preset}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    cfg = bench_config(args.config, overrides)
    if args.quick:
        cfg = quick(cfg)
    cfg = dataclasses.replace(cfg, models=ModelsConfig(specs={k: cfg.model_spec(k) for k in cfg.models_needed()}))
    result: dict[str, Any] = {"argv": list(sys.argv[1:] if argv is None else argv), "device": str(device),
                              "config": args.config, "preset": args.preset, "image_size": args.size,
                              "quick": args.quick, "variants": list(cfg.variants.enabled)}
    out = Path(args.json)

    def write() -> None:
        out.write_text(json.dumps(result, indent=2, default=str))

    peak_box: dict[str, float | None] = {"tflops": None}

    def peak() -> dict[str, Any]:
        res = matmul_peak(args.device)
        peak_box["tflops"] = res["tflops"]
        return res

    items: list[tuple[str, Callable[[], Any]]] = [
        ("env", lambda: check_env(device)),
        ("peak", peak),
        ("noise", lambda: check_noise(cfg, device, tuple(args.noise_shape))),  # type: ignore[arg-type]
        ("agreement", lambda: check_agreement(cfg, device, args.channels)),
        ("syncs", lambda: check_syncs(cfg, device, args.channels)),
        ("naive", lambda: check_naive(cfg, device, args.channels, peak_box["tflops"])),
    ]
    later: list[tuple[str, Callable[[], Any]]] = []
    for mode in args.modes:
        for batch in args.batches:
            item = (f"engine {mode} b{batch}",
                    lambda m=mode, b=batch: check_engine(cfg, device, args.channels, b, m, peak_box["tflops"]))
            (later if mode == "compiled" else items).append(item)  # compilation last: it may take minutes
    steps, warmup = (1, 1) if args.quick else (args.train_steps, 3)
    items.append(("train", lambda: check_train(cfg, device, args.channels, args.train_batch, steps,
                                               peak_box["tflops"], warmup)))
    items.extend(later)
    run_items(items, args.budget_s, result, write, lambda msg: print(msg, flush=True))
    report = format_report(result)
    result["report"] = report
    write()
    print(report)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
