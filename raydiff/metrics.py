"""Exact anomaly-detection metrics in polars: I-AUROC, P-AUROC, pixel AP and AUPRO@0.3.

Everything is computed from per-score counts, never from binned thresholds:

1. Group the rows of one evaluation group by their exact score (ties share one threshold):
   ``n_pos`` / ``n_neg`` = anomalous / normal rows at that score, ``pro`` = Σ 1/|component| over
   the anomalous pixels at that score (each GT component then contributes exactly 1 in total).
2. Sort the distinct scores in descending order and take cumulative sums: at threshold s,
   TP(s) = #anomalous with score >= s, FP(s) = #normal with score >= s, PRO(s) = Σ pro / #components
   = mean over components of the fraction of their pixels with score >= s.
3. Integrate:
   - AUROC = Σ_i (FP_i - FP_{i-1}) (TP_i + TP_{i-1}) / (2 P N)  (trapezoid; ties handled as in
     sklearn ``roc_auc_score``),
   - AP = Σ_i (R_i - R_{i-1}) P_i with R = TP/P, P_i = TP_i/(TP_i+FP_i)  (step-wise, as sklearn
     ``average_precision_score``),
   - AUPRO = ∫_0^L PRO d(FPR) / L with FPR = FP/N over *all* normal pixels, trapezoids from (0, 0)
     and linear interpolation at L = ``fpr_limit`` (the MVTec AD reference ``compute_pro`` +
     ``trapezoid(x_max=0.3)``; anomalib's older AUPRO divides by the curve's own end instead).

Undefined metrics are null, never a made-up number: AUROC needs both classes; AP needs at least
one anomalous row (with no normal rows it is 1, as in sklearn); AUPRO needs a GT component and at
least one normal pixel.

Out-of-core: the pixel table is processed one (dataset, category, variant) group at a time with
polars' streaming engine, reading only the six columns needed; only the per-score counts of one
group (at most one row per distinct score) are held in memory.

Per defect type (``by_defect=True``), as in MVTec AD's per-defect tables: the group of defect d is
the images of defect d plus **all normal images** (label 0) of the category; normal pixels inside
defect-d images count as normal, normal pixels of other defect types' images are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from scipy import ndimage

from raydiff.errors import RaydiffError

KEYS: tuple[str, ...] = ("dataset", "category", "variant")
PIXEL_COLUMNS: tuple[str, ...] = ("image_id", "defect_type", "label", "score", "gt", "region")
IMAGE_COLUMNS: tuple[str, ...] = ("image_id", "defect_type", "label", "score")
METRIC_COLUMNS: tuple[str, ...] = ("i_auroc", "p_auroc", "p_ap", "aupro")
COUNT_COLUMNS: tuple[str, ...] = ("n_images", "n_anomalous_images", "n_pixels", "n_anomalous_pixels", "n_regions")
DEFAULT_FPR_LIMIT = 0.3
STREAMING = "streaming"

_CLS = "cls"  # defect type of the row's image, null for normal images (label 0)


# --------------------------------------------------------------------------------------------
# Core: per-score counts → cumulative curve → integrals (shared by every public function)
# --------------------------------------------------------------------------------------------


def _image_class() -> pl.Expr:
    """Defect type of an anomalous image, null for a normal image (label 0)."""
    return (
        pl.when(pl.col("label") == 0).then(pl.lit(None, pl.String)).otherwise(pl.col("defect_type").cast(pl.String))
    )


def _curve(counts: pl.LazyFrame) -> pl.LazyFrame:
    """Cumulative counts over distinct thresholds, highest score first.

    ``counts``: columns score, n_pos, n_neg (integers), pro (float, Σ 1/|component|), any number of
    rows per score. Returns score, tp, fp (Int64, rows with score >= threshold), pro (Float64,
    cumulative Σ 1/|component|), one row per distinct score in descending order: after sorting
    and summing, the last row of each run of equal scores is the curve point of that threshold
    (the MVTec reference's ``keep_mask``), so ties never split a threshold.
    """
    return (
        counts.sort("score", descending=True)
        .select(
            "score",
            tp=pl.col("n_pos").cast(pl.Int64).cum_sum(),
            fp=pl.col("n_neg").cast(pl.Int64).cum_sum(),
            pro=pl.col("pro").cum_sum(),
        )
        .filter(pl.col("score").ne_missing(pl.col("score").shift(-1)))
    )


def _check_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


def _integrals(curve: pl.LazyFrame, n_regions: int, fpr_limit: float) -> dict[str, Any]:
    """AUROC, AP and AUPRO from a ``_curve`` table; None where the metric is undefined."""
    _check_limit(fpr_limit)
    p, n = pl.col("tp").last(), pl.col("fp").last()
    tp, fp = pl.col("tp"), pl.col("fp")
    tp_prev, fp_prev = tp.shift(1, fill_value=0), fp.shift(1, fill_value=0)
    # PRO(FPR) curve starting at (0, 0); clipping as the MVTec reference does against round-off.
    x = (fp / n).clip(upper_bound=1.0)
    y = (pl.col("pro") / max(n_regions, 1)).clip(upper_bound=1.0)
    x_prev, y_prev = x.shift(1, fill_value=0.0), y.shift(1, fill_value=0.0)
    inside = pl.when(x <= fpr_limit).then(0.5 * (y + y_prev) * (x - x_prev)).otherwise(0.0)
    # The one segment crossing the limit: interpolate y linearly at x = limit.
    y_at = y_prev + (y - y_prev) * (fpr_limit - x_prev) / (x - x_prev)
    crossing = pl.when((x_prev <= fpr_limit) & (x > fpr_limit)).then(0.5 * (y_at + y_prev) * (fpr_limit - x_prev))
    row = curve.select(
        n_pos=p,
        n_neg=n,
        # Integer numerator (exact: Σ ≤ 2PN), one division at the end.
        auroc=((fp - fp_prev) * (tp + tp_prev)).sum() / (2.0 * p.cast(pl.Float64) * n.cast(pl.Float64)),
        ap=((tp - tp_prev) * (tp / (tp + fp))).sum() / p,
        aupro=(inside.sum() + crossing.fill_null(0.0).sum()) / fpr_limit,
    ).collect()
    out = row.row(0, named=True)
    if out["n_pos"] is None:  # empty group
        return {"n_pos": 0, "n_neg": 0, "auroc": None, "ap": None, "aupro": None}
    both = out["n_pos"] > 0 and out["n_neg"] > 0
    return {
        "n_pos": out["n_pos"],
        "n_neg": out["n_neg"],
        "auroc": out["auroc"] if both else None,
        "ap": out["ap"] if out["n_pos"] > 0 else None,
        "aupro": out["aupro"] if n_regions > 0 and out["n_neg"] > 0 else None,
    }


def _check_scores(counts: pl.DataFrame, where: str) -> None:
    bad = counts.select(pl.col("score").is_null().sum() + pl.col("score").is_nan().sum()).item()
    if bad:
        raise RaydiffError(
            where,
            "the score column holds NaN or null values; no threshold can rank them.",
            "fix the scoring variant that produced them (or drop those rows explicitly before computing metrics).",
        )


# --------------------------------------------------------------------------------------------
# Pixel metrics for one evaluation group
# --------------------------------------------------------------------------------------------


def _pixel_counts(pixels: pl.LazyFrame, by_class: bool, where: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-score counts and GT components of ONE group, streaming over its rows.

    Returns ``(counts, regions)``: counts has [cls,] score, n_pos, n_neg, pro (Σ 1/|component|
    over anomalous pixels at that score), sorted by score descending; regions has image_id,
    region, size, cls — one row per GT component (ids unique within an image, 0 = normal).
    """
    regions = (
        pixels.filter(pl.col("region") > 0)
        .group_by("image_id", "region")
        .agg(size=pl.len(), cls=_image_class().first())
        .collect(engine=STREAMING)
    )
    inv_size = regions.lazy().select("image_id", "region", inv_size=1.0 / pl.col("size").cast(pl.Float64))
    cls = [_image_class().alias(_CLS)] if by_class else []
    group = [_CLS, "score"] if by_class else ["score"]
    score = pl.col("score")  # polars groups -0.0 with 0.0 and NaN with NaN (rejected below)
    anomalous = (
        pixels.filter(pl.col("gt") != 0)
        .select("image_id", "region", score, *cls)
        .join(inv_size, on=["image_id", "region"], how="left")
        .select(
            *group,
            n_pos=pl.lit(1, pl.UInt32),
            n_neg=pl.lit(0, pl.UInt32),
            pro=pl.col("inv_size").fill_null(0.0),
            unlabelled=pl.col("inv_size").is_null().cast(pl.UInt32),
        )
    )
    normal = pixels.filter(pl.col("gt") == 0).select(
        score,
        *cls,
        n_pos=pl.lit(0, pl.UInt32),
        n_neg=pl.lit(1, pl.UInt32),
        pro=pl.lit(0.0, pl.Float64),
        unlabelled=pl.lit(0, pl.UInt32),
    )
    counts = (
        pl.concat([anomalous, normal.select(anomalous.collect_schema().names())])
        .group_by(*group)
        .agg(pl.col("n_pos", "n_neg", "unlabelled").sum(), pl.col("pro").sum())
        .sort("score", descending=True)  # once; later sorts of (filtered) counts see the sorted flag
        .collect(engine=STREAMING)
    )
    _check_scores(counts, where)
    n_pos = int(counts["n_pos"].sum())
    unlabelled = int(counts["unlabelled"].sum())
    in_regions = int(regions["size"].sum())
    if unlabelled or in_regions != n_pos:
        raise RaydiffError(
            where,
            f"gt and region disagree: {unlabelled} anomalous pixels (gt=1) have region 0 and "
            f"{in_regions - (n_pos - unlabelled)} pixels with a region id have gt=0.",
            "derive region from the same mask as gt with raydiff.metrics.label_regions(gt).",
        )
    return counts.drop("unlabelled"), regions


def _pixel_metrics(counts: pl.DataFrame, regions: pl.DataFrame, fpr_limit: float) -> dict[str, Any]:
    """P-AUROC, pixel AP, AUPRO and pixel counts from one group's counts and components."""
    res = _integrals(_curve(counts.lazy()), regions.height, fpr_limit)
    return {
        "p_auroc": res["auroc"],
        "p_ap": res["ap"],
        "aupro": res["aupro"],
        "n_pixels": res["n_pos"] + res["n_neg"],
        "n_anomalous_pixels": res["n_pos"],
        "n_regions": regions.height,
    }


def _image_metrics(images: pl.LazyFrame, where: str) -> dict[str, Any]:
    """I-AUROC and image counts of ONE group (image score vs label, higher = more anomalous)."""
    counts = (
        images.select("score", anomalous=pl.col("label") != 0)
        .group_by("score")
        .agg(
            n_pos=pl.col("anomalous").sum().cast(pl.UInt32),
            n_neg=(~pl.col("anomalous")).sum().cast(pl.UInt32),
            pro=pl.lit(0.0, pl.Float64),
        )
        .collect()
    )
    _check_scores(counts, where)
    res = _integrals(_curve(counts.lazy()), 0, DEFAULT_FPR_LIMIT)
    return {"i_auroc": res["auroc"], "n_images": res["n_pos"] + res["n_neg"], "n_anomalous_images": res["n_pos"]}


def _defect_subset(frame: pl.LazyFrame | pl.DataFrame, defect: str) -> Any:
    """Rows of the per-defect group: images of ``defect`` plus every normal image."""
    return frame.filter(pl.col(_CLS).is_null() | (pl.col(_CLS) == defect))


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _require_columns(frame: pl.LazyFrame, needed: Sequence[str], what: str) -> None:
    names = frame.collect_schema().names()
    missing = [c for c in needed if c not in names]
    if missing:
        raise RaydiffError(
            f"{what} table",
            f"missing columns {missing} (has {names}).",
            f"pass a LazyFrame with {list(needed)}, e.g. raydiff.pipeline.scan_{what}(run_dir).",
        )


def _group_filter(key: tuple[Any, ...]) -> pl.Expr:
    return pl.all_horizontal([pl.col(k) == v for k, v in zip(KEYS, key, strict=True)])


def _group_rows(
    pixels: pl.LazyFrame,
    img: pl.DataFrame,
    key: tuple[Any, ...],
    by_defect: bool,
    fpr_limit: float,
    out: list[dict[str, Any]],
) -> int:
    """Append the metric row(s) of one (dataset, category, variant) group; return its pixel rows."""
    where = "pixels " + "/".join(f"{k}={v}" for k, v in zip(KEYS, key, strict=True))
    base = dict(zip(KEYS, key, strict=True))
    group_images = img.filter(_group_filter(key))
    counts, regions = _pixel_counts(pixels.filter(_group_filter(key)), by_defect, where)
    if not by_defect:
        out.append({**base, **_image_metrics(group_images.lazy(), where), **_pixel_metrics(counts, regions, fpr_limit)})
    else:
        defects = set(counts[_CLS].drop_nulls()) | set(group_images[_CLS].drop_nulls())
        for defect in sorted(defects):
            out.append(
                {
                    **base,
                    "defect_type": defect,
                    **_image_metrics(_defect_subset(group_images.lazy(), defect), f"{where}/defect_type={defect}"),
                    **_pixel_metrics(
                        _defect_subset(counts, defect).drop(_CLS), _defect_subset(regions, defect), fpr_limit
                    ),
                }
            )
    return int(counts["n_pos"].sum() + counts["n_neg"].sum())


def compute_metrics(
    pixels: pl.LazyFrame,
    images: pl.LazyFrame,
    by_defect: bool = False,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
) -> pl.DataFrame:
    """Exact metrics per (dataset, category, variant) [, defect_type] from the run's tables.

    pixels: LazyFrame with dataset, category, variant, image_id, defect_type, label (0 normal
        image, 1 defective), score (float, higher = more anomalous), gt (0/1), region (int, GT
        component id unique within the image, 0 for normal pixels) — typically
        ``pl.scan_parquet(run/"pixels", hive_partitioning=True)``; scanned lazily, one group at a
        time, with the streaming engine.
    images: LazyFrame with dataset, category, variant, image_id, defect_type, label, score.
    by_defect: one row per defect type instead: that defect's images plus all normal images.

    Returns one row per group, sorted by the keys: i_auroc, p_auroc, p_ap, aupro (Float64 in
    [0, 1], null when undefined), n_images, n_anomalous_images, n_pixels, n_anomalous_pixels,
    n_regions (Int64).
    """
    _check_limit(fpr_limit)
    _require_columns(pixels, (*KEYS, *PIXEL_COLUMNS), "pixels")
    _require_columns(images, (*KEYS, *IMAGE_COLUMNS), "images")
    img = images.select(*KEYS, *IMAGE_COLUMNS[:-1], _image_class().alias(_CLS), "score").collect(engine=STREAMING)
    rows: list[dict[str, Any]] = []
    # Groups come from the small image table. Scanning the pixel table for its distinct keys
    # costs a pass over every row, so it is done only when the rows seen in those groups fall
    # short of the table's row count (Parquet metadata): pixels of a group without images.
    keys = sorted(set(img.select(KEYS).unique().iter_rows()))
    seen = sum(_group_rows(pixels, img, key, by_defect, fpr_limit, rows) for key in keys)
    if seen != pixels.select(pl.len()).collect(engine=STREAMING).item():
        pixel_keys = set(pixels.select(KEYS).unique().collect(engine=STREAMING).iter_rows())
        for key in sorted(pixel_keys - set(keys)):
            _group_rows(pixels, img, key, by_defect, fpr_limit, rows)
        rows.sort(key=lambda r: tuple(r[k] for k in (*KEYS, "defect_type") if k in r))
    schema: dict[str, Any] = {k: img.schema[k] for k in KEYS}  # String for pipeline.scan_*
    if by_defect:
        schema["defect_type"] = pl.String
    schema |= {c: pl.Float64 for c in METRIC_COLUMNS} | {c: pl.Int64 for c in COUNT_COLUMNS}
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


def pixel_curves(pixels: pl.LazyFrame) -> pl.DataFrame:
    """ROC, precision-recall and PRO curves of ONE group's pixels (filter to one group first).

    Returns one row per distinct score, highest first: score, fpr, tpr, precision, recall,
    pro (PRO at threshold ``score >= s``, mean over GT components). fpr/tpr/recall are NaN
    when the class they divide by is empty.
    """
    counts, regions = _pixel_counts(pixels, False, "pixel_curves")
    curve = _curve(counts.lazy())
    p, n = pl.col("tp").last(), pl.col("fp").last()
    return curve.select(
        "score",
        fpr=pl.col("fp") / n,
        tpr=pl.col("tp") / p,
        precision=pl.col("tp") / (pl.col("tp") + pl.col("fp")),
        recall=pl.col("tp") / p,
        pro=pl.col("pro") / regions.height if regions.height else pl.lit(None, pl.Float64),
    ).collect()


# --------------------------------------------------------------------------------------------
# Array conveniences (the same code path, from numpy)
# --------------------------------------------------------------------------------------------


def label_regions(mask: np.ndarray) -> np.ndarray:
    """8-connected components of a GT mask.

    mask: (H, W), any dtype, nonzero = anomalous. Returns int32 (H, W): 0 for normal pixels,
    1..K for the K components (ids unique within this mask).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"label_regions: expected a (H, W) mask, got shape {mask.shape}")
    labels, _ = ndimage.label(mask != 0, structure=np.ones((3, 3), dtype=int))
    return labels.astype(np.int32, copy=False)


def _as_polars_float(a: np.ndarray) -> np.ndarray:
    """float32/float64 as given (ties stay ties); other dtypes exactly widened to float64."""
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


def _pixel_frame(maps: np.ndarray, masks: np.ndarray) -> pl.LazyFrame:
    """One row per pixel in the pipeline's schema (image_id = index in the batch)."""
    maps, masks = np.asarray(maps), np.asarray(masks)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(f"maps and masks must both be (N, H, W); got {maps.shape} and {masks.shape}")
    maps = _as_polars_float(maps)
    n, h, w = maps.shape
    gt = masks != 0
    regions = np.stack([label_regions(m) for m in gt]) if n else np.zeros(maps.shape, np.int32)
    label = gt.reshape(n, -1).any(axis=1)
    return pl.LazyFrame(
        {
            "image_id": np.repeat(np.arange(n, dtype=np.int64), h * w),
            "defect_type": np.repeat(np.where(label, "anomalous", "good"), h * w),
            "label": np.repeat(label.astype(np.int8), h * w),
            "score": maps.reshape(-1),
            "gt": gt.reshape(-1).astype(np.int8),
            "region": regions.reshape(-1),
        }
    )


def _pixel_result(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = DEFAULT_FPR_LIMIT) -> dict[str, Any]:
    _check_limit(fpr_limit)
    counts, regions = _pixel_counts(_pixel_frame(maps, masks), False, "arrays")
    return _pixel_metrics(counts, regions, fpr_limit)


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """I-AUROC: scores (N,) float, higher = more anomalous; labels (N,) {0, 1}. None if one class."""
    scores, labels = np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels must have the same length; got {scores.shape} and {labels.shape}")
    scores = _as_polars_float(scores)
    frame = pl.LazyFrame({"score": scores, "label": (labels != 0).astype(np.int8)})
    return _image_metrics(frame, "arrays")["i_auroc"]


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float | None:
    """P-AUROC over all pixels: maps (N,H,W) float, higher = more anomalous; masks (N,H,W) nonzero = anomalous."""
    return _pixel_result(maps, masks)["p_auroc"]


def pixel_ap(maps: np.ndarray, masks: np.ndarray) -> float | None:
    """Pixel average precision (step-wise, as sklearn ``average_precision_score``); None without anomalies."""
    return _pixel_result(maps, masks)["p_ap"]


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = DEFAULT_FPR_LIMIT) -> float | None:
    """AUPRO up to ``fpr_limit``, normalised to [0, 1] (MVTec AD reference definition).

    Components are the 8-connected components of each mask. None without components or without
    normal pixels.
    """
    return _pixel_result(maps, masks, fpr_limit)["aupro"]
