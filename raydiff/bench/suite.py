"""``raydiff bench`` with no subcommand (= ``python -m raydiff.bench.suite``): the engine, naive,
training and metrics benchmarks in one run, at CPU sizes unless told otherwise.

Example::

    raydiff bench --json bench.json                                   # CPU sizes (tiny, 32 px)
    python -m raydiff.bench.suite engine naive --device cuda --size 256 --preset ddad --batch 64
    python -m raydiff.bench.suite metrics --rows 1e8

Sub-benchmarks (each prints a table; ``--json FILE`` writes all results):

- ``engine``: the all-variants shared pass (raydiff.bench.engine) on random images: images/s,
  UNet forwards per image, model FLOP/s (``torch.utils.flop_counter``) and MFU against a matmul
  peak measured in the same run (bf16 on CUDA, fp32 on the CPU; see :func:`matmul_peak`).
- ``naive``: the same variants the reference scripts' way: one variant at a time, fp32, batch 1,
  nothing shared; and the engine's speed-up over it.

``--config configs/mvtec.yaml`` reads only the variant and model settings (no ``MVTEC_ROOT``).
- ``train``: training images/s and MFU of the preset (raydiff.bench.train).
- ``metrics``: exact polars metrics vs sklearn + a numpy MVTec-style AUPRO on the same synthetic
  pixel table: seconds, peak memory, largest difference (raydiff.bench.metrics).

Numbers are printed, never asserted; BENCHMARKS.md records measured ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from raydiff.bench.peak import matmul_peak

SUBS = ("engine", "naive", "train", "metrics")


def _cfg(args: argparse.Namespace) -> Any:
    from raydiff.bench.engine import bench_config  # lazy: as in run

    overrides: dict[str, Any] = {"dataset.image_size": args.size} if args.size else {}
    if args.preset:
        overrides["models.preset"] = args.preset
    cfg = bench_config(args.config, overrides)  # variant settings only: the dataset is never read
    if args.variants:
        enabled = tuple(v.strip() for v in args.variants.split(","))
        cfg = dataclasses.replace(cfg, variants=dataclasses.replace(cfg.variants, enabled=enabled))
    return cfg


def run(args: argparse.Namespace) -> dict[str, Any]:
    # lazy: `raydiff bench SUB --help` imports this module (instant without torch), and a run loads only its parts
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"torch": torch.__version__, "device": args.device, "subs": args.subs}
    peak = matmul_peak(args.device)
    out["matmul_peak"] = peak
    print(f"measured matmul peak: {peak['tflops']:.3f} TFLOP/s ({peak['dtype']}, {peak['n']}^3)")
    cfg = _cfg(args) if {"engine", "naive"} & set(args.subs) else None
    if "engine" in args.subs or "naive" in args.subs:
        from raydiff.bench.engine import bench_scoring, scoring_from_args  # lazy: as above

        print("\n== engine: every variant in one shared, batched pass ==")
        engine = bench_scoring(cfg, args.device, args.batch, args.n_images, channels=args.channels,
                               peak_tflops=peak["tflops"], repeats=args.repeats, scoring=scoring_from_args(cfg, args))
        out["engine"] = engine
        if "naive" in args.subs:
            print("\n== naive: one variant at a time, fp32, batch 1, nothing shared ==")
            naive = bench_scoring(cfg, args.device, 1, max(1, args.n_images // 4), channels=args.channels,
                                  peak_tflops=peak["tflops"], repeats=args.repeats,
                                  scoring=dataclasses.replace(cfg.scoring, precision="fp32", channels_last=False,
                                                              compile=False))
            naive_s = sum(r["seconds_per_image"] for r in naive["rows"] if r["variant"] != "all")
            all_s = next(r["seconds_per_image"] for r in engine["rows"] if r["variant"] == "all")
            naive["seconds_per_image_all_variants"] = naive_s
            naive["engine_speedup"] = naive_s / all_s
            out["naive"] = naive
            print(f"naive, all variants one after another: {naive_s:.4f} s/img; engine {all_s:.4f} s/img "
                  f"-> speed-up {naive_s / all_s:.1f}x")
    if "train" in args.subs:
        from raydiff.bench.train import bench_train  # lazy: as above

        print("\n== train ==")
        res = bench_train(args.preset or "tiny", args.size or 32, args.train_batch, args.train_steps, args.device,
                          channels=args.channels, peak=peak["tflops"] * 1e12, fused_adamw=not args.no_fused_adamw,
                          foreach_ema=not args.no_foreach_ema, channels_last=args.channels_last)
        out["train"] = res
        print(f"train: {res['images_per_s']:.1f} images/s, {res['flop_per_step'] / 1e9:.2f} GFLOP/step, "
              f"MFU {res['mfu']:.2%}" if res.get("mfu") is not None else f"train: {res['images_per_s']:.1f} images/s")
    if "metrics" in args.subs:
        # lazy: as above
        from raydiff.bench.metrics import bench_metrics, bench_metrics_arrays, bench_metrics_mvtec_folder

        print("\n== metrics ==")
        if args.metrics_arrays:
            out["metrics"] = bench_metrics_arrays(int(args.rows))
        elif args.metrics_mvtec_folder:
            out["metrics"] = bench_metrics_mvtec_folder(args.metrics_workdir)
        else:
            out["metrics"] = bench_metrics(int(args.rows), args.metrics_workdir, one_group=args.metrics_one_group)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2, default=str)
        print(f"\nwrote {args.json}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raydiff bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("subs", nargs="*", default=list(SUBS), choices=[*SUBS, []], metavar="SUB",
                   help=f"which benchmarks ({', '.join(SUBS)}; default: all)")
    p.add_argument("--config", default=None, help="YAML config (default: configs/textures.yaml)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", type=int, default=None,
                   help="image size (default: the config's, e.g. 32 for textures.yaml, 256 for mvtec.yaml; train: 32)")
    p.add_argument("--preset", default=None, help="UNet preset (default: the config's)")
    p.add_argument("--variants", default=None, help="comma-separated (default: the config's enabled ones)")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=8, help="engine batch size (honoured: --n-images is raised to fit)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=None,
                   help="engine: scoring.precision (default: the config's, auto = bf16 on CUDA)")
    p.add_argument("--channels-last", action="store_true", help="engine and train: channels_last")
    p.add_argument("--compile", action="store_true", help="engine: torch.compile the UNets")
    p.add_argument("--no-fused-adamw", action="store_true", help="train: torch's default AdamW kernels")
    p.add_argument("--no-foreach-ema", action="store_true", help="train: the EMA update tensor by tensor")
    p.add_argument("--n-images", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--rows", type=float, default=1e7, help="pixel rows for the metrics benchmark")
    cases = p.add_mutually_exclusive_group()
    cases.add_argument("--metrics-one-group", action="store_true", help="metrics: every image in one group")
    cases.add_argument("--metrics-arrays", action="store_true", help="metrics: in-memory arrays (pixel_metrics)")
    cases.add_argument("--metrics-mvtec-folder", action="store_true",
                       help="metrics: a generated full-MVTec-sized run folder (1.13 G rows; raydiff only)")
    p.add_argument("--metrics-workdir", default=None, help="metrics: where to write the temporary Parquet")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    p.add_argument("--json", default=None, help="write every result to this JSON file")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
