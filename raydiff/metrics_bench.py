"""Benchmark: exact polars metrics on Parquet vs sklearn + a numpy AUPRO on the same data.

    python -m raydiff.metrics_bench --rows 10_000_000

Writes a synthetic hive-partitioned pixel table (256×256 images, ~117 test images per
variant like one MVTec category, anomalous blobs with higher scores, float32 scores) in chunks
to a temporary folder, then measures each method in a fresh subprocess: wall seconds and peak
resident memory (VmHWM from /proc/self/status — tracemalloc does not see polars' Rust
allocations).

- ``polars``: :func:`raydiff.metrics.compute_metrics` on ``pl.scan_parquet`` (streaming engine).
- ``sklearn+numpy``: per (dataset, category, variant) group, read score/gt/region into numpy,
  ``roc_auc_score`` + ``average_precision_score`` and :func:`reference_aupro` (the MVTec AD
  reference ``compute_pro`` steps: sort, cumulative sums, trapezoid with interpolation at 0.3).
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
import pyarrow as pa
import pyarrow.parquet as pq

SIZE = 256
IMAGES_PER_VARIANT = 117  # MVTec carpet's test set; 117 × 256² ≈ 7.7 M pixel rows per variant
CHUNK_IMAGES = 16


# --------------------------------------------------------------------------------------------
# numpy reference (MVTec AD evaluation code steps)
# --------------------------------------------------------------------------------------------


def reference_aupro(maps: np.ndarray, regions: np.ndarray, fpr_limit: float = 0.3) -> float:
    """AUPRO as the MVTec AD reference computes it (compute_pro + trapezoid(x_max)).

    maps: (N,H,W) float, higher = more anomalous; regions: (N,H,W) int, 0 normal, component ids
    unique within each image. Returns the normalised area in [0, 1].
    """
    n_img = regions.shape[0]
    flat = regions.reshape(n_img, -1).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(flat.max(axis=1))[:-1]])
    comp = np.where(flat > 0, flat + offsets[:, None], 0).ravel()
    sizes = np.bincount(comp)
    n_comp = int((sizes[1:] > 0).sum())
    pro_change = np.where(comp > 0, 1.0 / sizes[comp], 0.0)
    fp_change = (comp == 0).astype(np.float64)
    n_ok = fp_change.sum()
    scores = maps.ravel()
    order = np.argsort(scores, kind="stable")[::-1]
    scores = scores[order]
    fprs = np.cumsum(fp_change[order]) / n_ok
    pros = np.cumsum(pro_change[order]) / n_comp
    keep = np.append(np.diff(scores) != 0, True)
    x = np.concatenate([[0.0], np.clip(fprs[keep], None, 1.0), [1.0]])
    y = np.concatenate([[0.0], np.clip(pros[keep], None, 1.0), [1.0]])
    correction = 0.0
    if fpr_limit not in x:
        ins = int(np.searchsorted(x, fpr_limit, side="right"))
        y_at = y[ins - 1] + (y[ins] - y[ins - 1]) * (fpr_limit - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_at + y[ins - 1]) * (fpr_limit - x[ins - 1])
    m = x <= fpr_limit
    x, y = x[m], y[m]
    return float((np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction) / fpr_limit)


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------


def _chunk(rng: np.random.Generator, first: int, n: int) -> tuple[pa.Table, pa.Table]:
    from scipy import ndimage

    from raydiff.metrics import label_regions

    hw = SIZE * SIZE
    idx = np.arange(first, first + n)
    defect = np.where(idx % 3 == 0, "good", np.where(idx % 3 == 1, "crack", "hole"))
    label = (defect != "good").astype(np.int8)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    yy, xx = np.ogrid[:SIZE, :SIZE]
    for i in np.flatnonzero(label):
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.integers(0, SIZE, 2)
            ry, rx = rng.integers(2, 30, 2)
            masks[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    noise = ndimage.uniform_filter(rng.normal(size=(n, SIZE // 4, SIZE // 4)).astype(np.float32), (1, 3, 3))
    maps = np.repeat(np.repeat(noise, 4, 1), 4, 2) + rng.normal(0, 0.3, (n, SIZE, SIZE)).astype(np.float32)
    maps = (maps + 1.2 * masks).astype(np.float32)
    regions = np.stack([label_regions(m) for m in masks])
    names = pa.array([f"test/{d}/{i:03d}.png" for d, i in zip(defect, idx, strict=True)], pa.string())
    y_idx, x_idx = np.indices((SIZE, SIZE), dtype=np.int16)
    pixels = pa.table(
        {
            "image_id": names.take(pa.array(np.repeat(np.arange(n), hw))),
            "defect_type": pa.array(defect, pa.string()).take(pa.array(np.repeat(np.arange(n), hw))),
            "label": pa.array(np.repeat(label, hw)),
            "y": pa.array(np.tile(y_idx.ravel(), n)),
            "x": pa.array(np.tile(x_idx.ravel(), n)),
            "score": pa.array(maps.ravel()),
            "gt": pa.array(masks.ravel().astype(np.int8)),
            "region": pa.array(regions.ravel()),
        }
    )
    images = pa.table(
        {
            "image_id": names,
            "defect_type": pa.array(defect, pa.string()),
            "label": pa.array(label),
            "score": pa.array(maps.reshape(n, -1).max(axis=1)),
        }
    )
    return pixels, images


def write_synthetic(root: Path, n_rows: int, seed: int = 0) -> dict[str, int]:
    """Hive-partitioned pixels/ and images/ under ``root`` with about ``n_rows`` pixel rows."""
    rng = np.random.default_rng(seed)
    n_images = max(1, round(n_rows / (SIZE * SIZE)))
    n_variants = max(1, -(-n_images // IMAGES_PER_VARIANT))
    per_variant = -(-n_images // n_variants)
    rows = 0
    for v in range(n_variants):
        count = min(per_variant, n_images - v * per_variant)
        parts = {}
        for table in ("pixels", "images"):
            d = root / table / "dataset=bench" / "category=carpet" / f"variant=v{v:02d}"
            d.mkdir(parents=True)
            parts[table] = d
        pix_writer = img_writer = None
        for first in range(0, count, CHUNK_IMAGES):
            pixels, images = _chunk(rng, first, min(CHUNK_IMAGES, count - first))
            if pix_writer is None:
                pix_writer = pq.ParquetWriter(parts["pixels"] / "part-0.parquet", pixels.schema, compression="zstd")
                img_writer = pq.ParquetWriter(parts["images"] / "part-0.parquet", images.schema, compression="zstd")
            pix_writer.write_table(pixels)
            img_writer.write_table(images)
            rows += pixels.num_rows
        assert pix_writer is not None and img_writer is not None
        pix_writer.close()
        img_writer.close()
    return {"rows": rows, "images": n_images, "variants": n_variants}


# --------------------------------------------------------------------------------------------
# Measured runs (each in a fresh interpreter)
# --------------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _run_polars(root: Path, by_defect: bool = False) -> dict[str, Any]:
    import polars as pl

    from raydiff.metrics import compute_metrics

    hive = {"dataset": pl.String, "category": pl.String, "variant": pl.String}
    t0 = time.perf_counter()
    table = compute_metrics(
        pl.scan_parquet(root / "pixels", hive_partitioning=True, hive_schema=hive),
        pl.scan_parquet(root / "images", hive_partitioning=True, hive_schema=hive),
        by_defect=by_defect,
    )
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "results": table.select("variant", "p_auroc", "p_ap", "aupro").rows()}


def _run_polars_by_defect(root: Path) -> dict[str, Any]:
    return _run_polars(root, by_defect=True)


def _run_sklearn(root: Path) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, roc_auc_score

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
                part.name.split("=", 1)[1],
                roc_auc_score(gt, score),
                average_precision_score(gt, score),
                reference_aupro(score.reshape(-1, SIZE, SIZE), region),
            )
        )
    return {"seconds": time.perf_counter() - t0, "results": results}


def _measure(method: str, root: Path) -> dict[str, Any]:
    """Run one method in a fresh subprocess; return its wall and CPU seconds, peak RSS and results."""
    code = (
        "import json, sys; from pathlib import Path; import raydiff.metrics_bench as b; "
        "import time; c0 = time.process_time(); "
        f"r = b._run_{method}(Path(sys.argv[1])); r['cpu_seconds'] = time.process_time() - c0; "
        "r['peak_mb'] = b._peak_rss_mb(); print(json.dumps(r))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"metrics_bench: the {method} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_metrics(n_rows: int, workdir: str | Path | None = None, keep: bool = False) -> dict[str, Any]:
    """Time compute_metrics vs sklearn + numpy AUPRO on ``n_rows`` synthetic pixel rows.

    Returns {"rows", "variants", "write_seconds", "polars": {seconds, cpu_seconds, peak_mb}, "polars by_defect":
    {...}, "sklearn+numpy": {...}, "max_abs_diff"} (P-AUROC, AP, AUPRO of polars vs reference)
    and prints a small table. Peak memory includes the interpreter and imports (~150-300 MB).
    """
    tmp = Path(tempfile.mkdtemp(prefix="raydiff-metrics-bench-", dir=workdir))
    try:
        t0 = time.perf_counter()
        info = write_synthetic(tmp, n_rows)
        write_seconds = time.perf_counter() - t0
        ours = _measure("polars", tmp)
        per_defect = _measure("polars_by_defect", tmp)
        ref = _measure("sklearn", tmp)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    diffs = [
        abs(a - b)
        for o, r in zip(sorted(ours["results"]), sorted(ref["results"]), strict=True)
        for a, b in zip(o[1:], r[1:], strict=True)
    ]
    result = {
        "rows": info["rows"],
        "variants": info["variants"],
        "write_seconds": round(write_seconds, 1),
        "polars": {
            "seconds": round(ours["seconds"], 2),
            "cpu_seconds": round(ours["cpu_seconds"], 2),
            "peak_mb": round(ours["peak_mb"]),
        },
        "polars by_defect": {
            "seconds": round(per_defect["seconds"], 2),
            "cpu_seconds": round(per_defect["cpu_seconds"], 2),
            "peak_mb": round(per_defect["peak_mb"]),
        },
        "sklearn+numpy": {
            "seconds": round(ref["seconds"], 2),
            "cpu_seconds": round(ref["cpu_seconds"], 2),
            "peak_mb": round(ref["peak_mb"]),
        },
        "max_abs_diff": max(diffs),
    }
    print(f"metrics benchmark: {result['rows']:,} pixel rows, {result['variants']} variant(s), {os.cpu_count()} CPUs")
    print(f"{'method':<18}{'seconds':>10}{'CPU s':>10}{'peak MB':>10}")
    for name in ("polars", "polars by_defect", "sklearn+numpy"):
        r = result[name]
        print(f"{name:<18}{r['seconds']:>10.2f}{r['cpu_seconds']:>10.2f}{r['peak_mb']:>10}")
    print(f"max |polars - reference| over P-AUROC, AP, AUPRO: {result['max_abs_diff']:.2e}")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=float, default=10e6, help="pixel rows (default 1e7)")
    parser.add_argument("--workdir", default=None, help="where to write the temporary Parquet")
    args = parser.parse_args(argv)
    return bench_metrics(int(args.rows), args.workdir)


if __name__ == "__main__":
    main()
