"""Benchmark: exact raydiff metrics vs sklearn + a numpy AUPRO on the same data.

    python -m raydiff.bench.metrics --rows 1e7                  # Parquet, ~117 images per group
    python -m raydiff.bench.metrics --rows 1e8 --one-group      # Parquet, every image in one group
    python -m raydiff.bench.metrics --rows 1e8 --arrays         # numpy arrays, one group
    python -m raydiff.bench.metrics --mvtec-folder              # 1.13 G rows, 150 groups, raydiff only

Writes a synthetic hive-partitioned pixel table (256×256 images, ~117 test images per
variant like one MVTec category, anomalous blobs with higher scores, float32 scores) in chunks
to a temporary folder, then measures each method in a fresh subprocess: wall seconds and peak
resident memory (VmHWM from /proc/self/status — tracemalloc does not see polars' Rust
allocations).

- ``polars``: :func:`raydiff.metrics.compute_metrics` on ``pl.scan_parquet`` (streaming engine,
  one sort per group in numpy).
- ``sklearn+numpy``: per (dataset, category, variant) group, read score/gt/region into numpy,
  ``roc_auc_score`` + ``average_precision_score`` and :func:`reference_aupro` (the MVTec AD
  reference ``compute_pro`` steps: sort, cumulative sums, trapezoid with interpolation at 0.3).
- ``--arrays``: :func:`raydiff.metrics.pixel_metrics` (one call) and the three single-metric
  functions one after another vs sklearn + :func:`reference_aupro` (+ its component labelling)
  on the same in-memory (N, 256, 256) arrays: three square regions on every other image,
  continuous float32 scores. Generating the arrays is not timed.
- ``--mvtec-folder``: a run folder the size of full MVTec AD at 256² (15 categories with their
  test-set sizes × 10 variants = 1.13 G pixel rows, ~4-5 GB of Parquet written group by group)
  and :func:`raydiff.metrics.compute_metrics` on it. The reference is not run there: at its
  measured ~1 µs per row it would take ~20 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from raydiff.bench.metrics_data import (
    SIZE,
    one_group_arrays,
    reference_aupro,
    write_mvtec_sized,
    write_synthetic,
)


# --------------------------------------------------------------------------------------------
# Measured runs (each in a fresh interpreter)
# --------------------------------------------------------------------------------------------


def _rss_mb(field: str = "VmHWM") -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return _rss_mb("VmHWM")


def _run_polars(root: str | Path, by_defect: bool = False) -> dict[str, Any]:
    # lazy: each method is measured in its own subprocess, peak RSS included: it imports only its libraries
    import polars as pl

    from raydiff.metrics import compute_metrics

    root = Path(root)
    hive = {"dataset": pl.String, "category": pl.String, "variant": pl.String}
    t0 = time.perf_counter()
    table = compute_metrics(
        pl.scan_parquet(root / "pixels", hive_partitioning=True, hive_schema=hive),
        pl.scan_parquet(root / "images", hive_partitioning=True, hive_schema=hive),
        by_defect=by_defect,
    )
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "groups": table.height,
        "results": table.select("category", "variant", "p_auroc", "p_ap", "aupro").rows()[:1000],
    }


def _run_polars_by_defect(root: str | Path) -> dict[str, Any]:
    return _run_polars(root, by_defect=True)


def _run_sklearn(root: str | Path) -> dict[str, Any]:
    # lazy: scikit-learn is optional (raydiff[dev]); and only the reference's subprocess loads it (peak RSS)
    from sklearn.metrics import average_precision_score, roc_auc_score

    root = Path(root)
    t0 = time.perf_counter()
    results = []
    for part in sorted((root / "pixels" / "dataset=bench" / "category=carpet").iterdir()):
        table = pq.read_table(part, columns=["score", "gt", "region"])
        score = table["score"].to_numpy()
        gt = table["gt"].to_numpy()
        region = table["region"].to_numpy().reshape(-1, SIZE, SIZE)
        del table
        results.append(
            (
                "carpet",
                part.name.split("=", 1)[1],
                roc_auc_score(gt, score),
                average_precision_score(gt, score),
                reference_aupro(score.reshape(-1, SIZE, SIZE), region),
            )
        )
    return {"seconds": time.perf_counter() - t0, "results": results}


def _timed_arrays(n_rows: str | int, fn: Any) -> dict[str, Any]:
    maps, masks = one_group_arrays(int(n_rows))
    base = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    values = fn(maps, masks)
    return {
        "seconds": time.perf_counter() - t0,
        "inputs_mb": base,
        "results": [("arrays", "one", *values)],
    }


def _run_arrays_raydiff(n_rows: str | int) -> dict[str, Any]:
    # lazy: each method is measured in its own subprocess, peak RSS included: it imports only its libraries
    from raydiff.metrics import pixel_metrics

    def fn(maps: np.ndarray, masks: np.ndarray) -> tuple[float, ...]:
        r = pixel_metrics(maps, masks)
        return r["p_auroc"], r["p_ap"], r["aupro"]

    return _timed_arrays(n_rows, fn)


def _run_arrays_raydiff_single(n_rows: str | int) -> dict[str, Any]:
    # lazy: each method is measured in its own subprocess, peak RSS included: it imports only its libraries
    from raydiff.metrics import aupro, pixel_ap, pixel_auroc

    return _timed_arrays(n_rows, lambda m, k: (pixel_auroc(m, k), pixel_ap(m, k), aupro(m, k)))


def _run_arrays_sklearn(n_rows: str | int) -> dict[str, Any]:
    # lazy: scikit-learn is optional (raydiff[dev]); and only the reference's subprocess loads it (peak RSS)
    from sklearn.metrics import average_precision_score, roc_auc_score

    from raydiff.metrics import label_regions

    def fn(maps: np.ndarray, masks: np.ndarray) -> tuple[float, ...]:
        y, s = masks.ravel() != 0, maps.ravel()
        regions = np.stack([label_regions(m) for m in masks])  # the reference needs components too
        return (
            roc_auc_score(y, s),
            average_precision_score(y, s),
            reference_aupro(maps, regions),
        )

    return _timed_arrays(n_rows, fn)


def _measure(method: str, *args: Any) -> dict[str, Any]:
    """Run one method in a fresh subprocess; return its wall and CPU seconds, peak RSS and results."""
    code = (
        "import json, sys; import raydiff.bench.metrics as b; "
        "import time; c0 = time.process_time(); "
        f"r = b._run_{method}(*sys.argv[1:]); r['cpu_seconds'] = time.process_time() - c0; "
        "r['peak_mb'] = b._peak_rss_mb(); print(json.dumps(r))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"raydiff.bench.metrics: the {method} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    keep = {
        "seconds": round(r["seconds"], 3),
        "cpu_seconds": round(r["cpu_seconds"], 2),
        "peak_mb": round(r["peak_mb"]),
    }
    if "inputs_mb" in r:
        keep["inputs_mb"] = round(r["inputs_mb"])
    return keep


def _max_diff(ours: dict[str, Any], ref: dict[str, Any]) -> float:
    pairs = zip(
        sorted(map(tuple, ours["results"])),
        sorted(map(tuple, ref["results"])),
        strict=True,
    )
    return max(abs(a - b) for o, r in pairs for a, b in zip(o[2:], r[2:], strict=True))


def _print(title: str, result: dict[str, Any], methods: tuple[str, ...]) -> None:
    print(title)
    print(f"{'method':<28}{'seconds':>10}{'CPU s':>10}{'peak MB':>10}")
    for name in methods:
        r = result[name]
        print(f"{name:<28}{r['seconds']:>10.2f}{r['cpu_seconds']:>10.2f}{r['peak_mb']:>10}")
    print(f"speed-up of {methods[0]} over sklearn+numpy: {result['speedup']}x")
    print(f"max |raydiff - reference| over P-AUROC, AP, AUPRO: {result['max_abs_diff']:.2e}")


def bench_metrics(
    n_rows: int,
    workdir: str | Path | None = None,
    keep: bool = False,
    one_group: bool = False,
) -> dict[str, Any]:
    """Time compute_metrics vs sklearn + numpy AUPRO on ``n_rows`` synthetic pixel rows (Parquet).

    one_group: all images in one (category, variant) group instead of ~117 images per group.
    Returns {"rows", "variants", "write_seconds", "polars": {seconds, cpu_seconds, peak_mb}, "polars by_defect":
    {...}, "sklearn+numpy": {...}, "speedup", "max_abs_diff"} (P-AUROC, AP, AUPRO of raydiff vs
    reference) and prints a small table. Peak memory includes the interpreter and imports (~150-300 MB).
    """
    tmp = Path(tempfile.mkdtemp(prefix="raydiff-metrics-bench-", dir=workdir))
    try:
        t0 = time.perf_counter()
        info = write_synthetic(tmp, n_rows, one_group=one_group)
        write_seconds = time.perf_counter() - t0
        ours = _measure("polars", tmp)
        per_defect = _measure("polars_by_defect", tmp)
        ref = _measure("sklearn", tmp)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "rows": info["rows"],
        "variants": info["variants"],
        "write_seconds": round(write_seconds, 1),
        "polars": _summary(ours),
        "polars by_defect": _summary(per_defect),
        "sklearn+numpy": _summary(ref),
        "speedup": round(ref["seconds"] / max(ours["seconds"], 1e-9), 1),
        "max_abs_diff": _max_diff(ours, ref),
    }
    title = f"metrics benchmark (Parquet): {result['rows']:,} pixel rows, {result['variants']} group(s), {os.cpu_count()} CPUs"
    _print(title, result, ("polars", "polars by_defect", "sklearn+numpy"))
    return result


def bench_metrics_arrays(n_rows: int) -> dict[str, Any]:
    """pixel_metrics (one call) and pixel_auroc + pixel_ap + aupro vs sklearn + numpy AUPRO on arrays.

    One group of ~``n_rows`` pixels (:func:`one_group_arrays`), each method in its own process;
    ``inputs_mb`` is the process's RSS once the arrays exist (the same for every method).
    """
    ours = _measure("arrays_raydiff", n_rows)
    single = _measure("arrays_raydiff_single", n_rows)
    ref = _measure("arrays_sklearn", n_rows)
    maps_shape = (max(2, round(n_rows / (SIZE * SIZE))), SIZE, SIZE)
    result = {
        "rows": int(np.prod(maps_shape)),
        "images": maps_shape[0],
        "pixel_metrics": _summary(ours),
        "pixel_auroc+pixel_ap+aupro": _summary(single),
        "sklearn+numpy": _summary(ref),
        "speedup": round(ref["seconds"] / max(ours["seconds"], 1e-9), 1),
        "speedup_single": round(ref["seconds"] / max(single["seconds"], 1e-9), 1),
        "max_abs_diff": max(_max_diff(ours, ref), _max_diff(single, ref)),
    }
    title = f"metrics benchmark (arrays, one group): {result['rows']:,} pixels, {os.cpu_count()} CPUs"
    _print(title, result, ("pixel_metrics", "pixel_auroc+pixel_ap+aupro", "sklearn+numpy"))
    return result


def bench_metrics_mvtec_folder(workdir: str | Path | None = None, keep: bool = False) -> dict[str, Any]:
    """compute_metrics on a full-MVTec-sized run folder (1.13 G rows, 150 groups); raydiff only.

    Check the free space first (~4-5 GB are written). sklearn + numpy is not run: at the
    ~1 µs per row measured on 100 M rows it would need ~20 minutes (plus ~1 µs/row of reading).
    """
    tmp = Path(tempfile.mkdtemp(prefix="raydiff-metrics-mvtec-", dir=workdir))
    try:
        t0 = time.perf_counter()
        info = write_mvtec_sized(tmp)
        write_seconds = time.perf_counter() - t0
        ours = _measure("polars", tmp)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "rows": info["rows"],
        "groups": info["groups"],
        "parquet_gb": round(info["bytes"] / 1e9, 2),
        "write_seconds": round(write_seconds, 1),
        "polars": _summary(ours),
    }
    r = result["polars"]
    print(
        f"metrics benchmark (full-MVTec-sized folder): {result['rows']:,} pixel rows, {result['groups']} groups, "
        f"{result['parquet_gb']} GB Parquet, {os.cpu_count()} CPUs"
    )
    print(f"compute_metrics: {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} CPU s), peak {r['peak_mb']} MB")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=10e6, help="pixel rows (default 1e7)")
    parser.add_argument("--workdir", default=None, help="where to write the temporary Parquet")
    case = parser.add_mutually_exclusive_group()
    case.add_argument("--one-group", action="store_true", help="Parquet with every image in one group")
    case.add_argument("--arrays", action="store_true", help="in-memory arrays, one group (array API)")
    case.add_argument(
        "--mvtec-folder",
        action="store_true",
        help="1.13 G rows over 150 groups, raydiff only",
    )
    args = parser.parse_args(argv)
    if args.arrays:
        return bench_metrics_arrays(int(args.rows))
    if args.mvtec_folder:
        return bench_metrics_mvtec_folder(args.workdir)
    return bench_metrics(int(args.rows), args.workdir, one_group=args.one_group)


if __name__ == "__main__":
    main()
