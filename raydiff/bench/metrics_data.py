"""Data of the metrics benchmark: the numpy MVTec-style AUPRO reference and synthetic pixel
tables (hive-partitioned Parquet like a run folder, or in-memory arrays)."""

from __future__ import annotations

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
    # lazy: bench.metrics' measured subprocesses import this module; peak RSS counts what they import
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


def write_synthetic(root: Path, n_rows: int, seed: int = 0, one_group: bool = False) -> dict[str, int]:
    """Hive-partitioned pixels/ and images/ under ``root`` with about ``n_rows`` pixel rows.

    ``one_group``: every image in one variant (one evaluation group) instead of ~117 per variant.
    """
    rng = np.random.default_rng(seed)
    n_images = max(1, round(n_rows / (SIZE * SIZE)))
    n_variants = 1 if one_group else max(1, -(-n_images // IMAGES_PER_VARIANT))
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
                pix_writer = pq.ParquetWriter(
                    parts["pixels"] / "part-0.parquet",
                    pixels.schema,
                    compression="zstd",
                )
                img_writer = pq.ParquetWriter(
                    parts["images"] / "part-0.parquet",
                    images.schema,
                    compression="zstd",
                )
            pix_writer.write_table(pixels)
            img_writer.write_table(images)
            rows += pixels.num_rows
        assert pix_writer is not None and img_writer is not None
        pix_writer.close()
        img_writer.close()
    return {"rows": rows, "images": n_images, "variants": n_variants}


# Full-MVTec-sized run folder: per category its GT once (shared by the variants, as in a real run),
# per variant fresh float32 scores; written one group at a time.
MVTEC_TEST_IMAGES: dict[str, int] = {
    "bottle": 83, "cable": 150, "capsule": 132, "carpet": 117, "grid": 78, "hazelnut": 110, "leather": 124,
    "metal_nut": 115, "pill": 167, "screw": 160, "tile": 117, "toothbrush": 42, "transistor": 100, "wood": 79,
    "zipper": 151,
}  # fmt: skip
MVTEC_VARIANTS = 10


def _category_gt(rng: np.random.Generator, n: int) -> dict[str, Any]:
    """Per-row GT columns of one category's n test images (every third image normal)."""
    from raydiff.metrics import label_regions  # lazy: as in _chunk

    hw = SIZE * SIZE
    defect = np.where(np.arange(n) % 3 == 0, "good", np.where(np.arange(n) % 3 == 1, "crack", "hole"))
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    yy, xx = np.ogrid[:SIZE, :SIZE]
    for i in np.flatnonzero(defect != "good"):
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.integers(0, SIZE, 2)
            ry, rx = rng.integers(2, 30, 2)
            masks[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    regions = np.stack([label_regions(m) for m in masks])
    names = pa.array([f"test/{d}/{i:03d}.png" for i, d in enumerate(defect)], pa.string())
    rows = pa.array(np.repeat(np.arange(n, dtype=np.int32), hw))
    y_idx, x_idx = np.indices((SIZE, SIZE), dtype=np.int16)
    # Dictionary arrays (written with store_schema=False, so readers see plain strings, stored
    # dictionary-encoded as any Parquet writer stores them) spare re-hashing 11 M strings per group.
    return {
        "names": names,
        "defect": pa.array(defect, pa.string()),
        "label": pa.array((defect != "good").astype(np.int8)),
        "gt": masks.reshape(-1).astype(np.int8),
        "pixels": {
            "image_id": pa.DictionaryArray.from_arrays(rows, names),
            "defect_type": pa.DictionaryArray.from_arrays(rows, pa.array(defect, pa.string())),
            "label": pa.array(np.repeat((defect != "good").astype(np.int8), hw)),
            "y": pa.array(np.tile(y_idx.ravel(), n)),
            "x": pa.array(np.tile(x_idx.ravel(), n)),
        },
        "region": pa.array(regions.reshape(-1)),
    }


def write_mvtec_sized(
    root: Path,
    seed: int = 0,
    categories: dict[str, int] | None = None,
    variants: int = MVTEC_VARIANTS,
) -> dict[str, int]:
    """A run folder the size of full MVTec AD at 256²: 15 categories × ``variants`` groups.

    Written one (category, variant) group at a time (peak memory ~ one category's GT columns);
    returns {"rows", "groups", "bytes"}.
    """
    rng = np.random.default_rng(seed)
    rows = groups = 0
    for category, n in (categories or MVTEC_TEST_IMAGES).items():
        gt = _category_gt(rng, n)
        shift = 1.2 * gt["gt"].astype(np.float32)
        for v in range(variants):
            score = rng.standard_normal(shift.size, dtype=np.float32)
            score *= 0.5
            score += shift
            pixels = pa.table(
                {
                    **gt["pixels"],
                    "score": pa.array(score),
                    "gt": pa.array(gt["gt"]),
                    "region": gt["region"],
                }
            )
            images = pa.table(
                {
                    "image_id": gt["names"],
                    "defect_type": gt["defect"],
                    "label": gt["label"],
                    "score": pa.array(score.reshape(n, -1).max(axis=1)),
                }
            )
            for name, table in (("pixels", pixels), ("images", images)):
                d = root / name / "dataset=mvtec" / f"category={category}" / f"variant=v{v:02d}"
                d.mkdir(parents=True)
                pq.write_table(table, d / "part-0.parquet", compression="zstd", store_schema=False)
            rows += pixels.num_rows
            groups += 1
            del pixels, score
    size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
    return {"rows": rows, "groups": groups, "bytes": size}


def one_group_arrays(n_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(maps float32 (N, 256, 256), masks uint8 (N, 256, 256)) with N ≈ n_rows / 256².

    Three square regions (side 8-47) on every other image; scores N(0, 1) + 1 inside them:
    continuous, so almost every score is distinct.
    """
    rng = np.random.default_rng(seed)
    n = max(2, round(n_rows / (SIZE * SIZE)))
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(0, n, 2):
        for _ in range(3):
            side = int(rng.integers(8, 48))
            y, x = rng.integers(0, SIZE - side, 2)
            masks[i, y : y + side, x : x + side] = 1
    maps = rng.standard_normal(masks.shape, dtype=np.float32)
    maps += masks
    return maps, masks
