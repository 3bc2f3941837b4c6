"""Exact anomaly-detection metrics: I-AUROC, P-AUROC, pixel AP and AUPRO@0.3, one sort per group.

Everything is computed from exact counts at every distinct score, never from binned thresholds.
For one evaluation group (P anomalous and N normal pixels, K ground-truth components):

1. Sort the N normal scores once (ascending) and the P anomalous scores once (descending, each
   with its weight 1/|component|, so that each component contributes exactly 1 in total).
2. At every distinct anomalous score u_k (descending): TP_k = #anomalous with score >= u_k and
   PRO_k = Σ weights / K (cumulative sums at the ends of runs of equal scores), and from the sorted
   normal scores (binary search) FP>=_k = #normal with score >= u_k, FP>_k = #normal > u_k.
   Only thresholds where TP changes matter: between them the ROC/PRO curves are horizontal.
3. Integrate:
   - AUROC = Σ_k ΔTP_k (2 #normal < u_k + #normal == u_k) / (2 P N) — the Mann-Whitney form of
     sklearn ``roc_auc_score``'s trapezoids (ties count one half), in exact integers;
   - AP = Σ_k (ΔTP_k / P) TP_k / (TP_k + FP>=_k)  (step-wise, as sklearn ``average_precision_score``);
   - AUPRO = ∫_0^L PRO d(FPR) / L with FPR = FP/N over *all* normal pixels: the PRO curve has the
     points (FP>_k/N, PRO_{k-1}) → (FP>=_k/N, PRO_k) — exactly the MVTec AD reference curve over
     all distinct scores, whose other points lie on its horizontal segments — trapezoids from (0, 0)
     and linear interpolation at L = ``fpr_limit`` (reference ``compute_pro`` +
     ``trapezoid(x_max=0.3)``; anomalib's older AUPRO divides by the curve's own end instead).

Undefined metrics are null, never a made-up number: AUROC needs both classes; AP needs at least
one anomalous row (with no normal rows it is 1, as in sklearn); AUPRO needs a GT component and at
least one normal pixel.

Out-of-core: :func:`compute_metrics` processes the pixel table one (dataset, category, variant)
group at a time with polars' streaming engine: the normal pixels' scores (4 bytes each for
float32) plus the few anomalous rows are all that one group holds in memory, so a run folder of
any size needs only its largest group.

Per defect type (``by_defect=True``), as in MVTec AD's per-defect tables: the group of defect d is
the images of defect d plus **all normal images** (label 0) of the category; normal pixels inside
defect-d images count as normal, normal pixels of other defect types' images are left out. The
normal scores are sorted once per image class, so every defect row reuses the same sorted parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from scipy import ndimage

from raydiff.errors import RaydiffError

KEYS: tuple[str, ...] = ("dataset", "category", "variant")
PIXEL_COLUMNS: tuple[str, ...] = (
    "image_id",
    "defect_type",
    "label",
    "score",
    "gt",
    "region",
)
IMAGE_COLUMNS: tuple[str, ...] = ("image_id", "defect_type", "label", "score")
METRIC_COLUMNS: tuple[str, ...] = ("i_auroc", "p_auroc", "p_ap", "aupro")
COUNT_COLUMNS: tuple[str, ...] = (
    "n_images",
    "n_anomalous_images",
    "n_pixels",
    "n_anomalous_pixels",
    "n_regions",
)
DEFAULT_FPR_LIMIT = 0.3
STREAMING = "streaming"

_CLS = "cls"  # defect type of the row's image, null for normal images (label 0)
_NORMAL = -1  # class code of normal images (label 0): part of every per-defect group
_ALL = 0  # the one class code when rows are not split by defect type
_STRUCTURE_2D_IN_3D = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_2D_IN_3D[1] = True  # 8-connected within an image, never across images of a batch


# --------------------------------------------------------------------------------------------
# Core (numpy): sorted scores → counts at distinct anomalous scores → integrals
# --------------------------------------------------------------------------------------------


def _check_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


def _nan_error(where: str) -> RaydiffError:
    return RaydiffError(
        where,
        "the score column holds NaN or null values; no threshold can rank them.",
        "fix the scoring variant that produced them (or drop those rows explicitly before computing metrics).",
    )


def _has_nan(scores: np.ndarray) -> bool:
    return scores.dtype.kind == "f" and bool(np.isnan(scores).any())


def _sorted_scores(scores: np.ndarray, where: str) -> np.ndarray:
    """Ascending copy-free sort of a writable 1-D score array (in place); rejects NaN.

    NaN sorts last, so one look at the end replaces a pass over the array.
    """
    scores.sort()
    if scores.size and scores.dtype.kind == "f" and np.isnan(scores[-1]):
        raise _nan_error(where)
    return scores


@dataclass(frozen=True)
class _Ranked:
    """Anomalous scores reduced to their distinct values, highest first (K distinct values).

    score: (K,) distinct anomalous scores, descending, dtype of the input.
    tp: (K,) int64, #anomalous rows with score >= score[k].
    pro: (K,) float64, Σ 1/|component| over those rows (zeros when no weights were given).
    """

    score: np.ndarray
    tp: np.ndarray
    pro: np.ndarray

    @property
    def n_pos(self) -> int:
        return int(self.tp[-1]) if self.tp.size else 0


def _rank_descending(score: np.ndarray, weight: np.ndarray | None) -> _Ranked:
    """Run ends of scores already sorted descending (weights in the same order, or None).

    Ties need no particular order: only the cumulative sums at the end of each run of equal
    scores are kept (the MVTec reference's ``keep_mask``), so ties never split a threshold.
    """
    if score.size == 0:
        return _Ranked(score, np.zeros(0, np.int64), np.zeros(0, np.float64))
    ends = np.flatnonzero(score[1:] != score[:-1])  # -0.0 == 0.0: one threshold, as in sklearn
    ends = np.append(ends, score.size - 1)
    pro = np.cumsum(weight, dtype=np.float64)[ends] if weight is not None else np.zeros(ends.size)
    return _Ranked(score[ends], (ends + 1).astype(np.int64), pro)


def _sort_descending(score: np.ndarray, *aligned: np.ndarray) -> tuple[np.ndarray, ...]:
    """``score`` and its aligned arrays ordered by score, highest first (any order within ties)."""
    order = np.argsort(score)[::-1]
    return (score[order], *(a[order] for a in aligned))


def _normal_counts(neg: Sequence[np.ndarray], u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(#normal >= u, #normal > u) as int64 (K,) over several ascending-sorted parts."""
    ge = np.zeros(u.size, np.int64)
    gt = np.zeros(u.size, np.int64)
    for part in neg:
        if part.size:
            ge += part.size - np.searchsorted(part, u, side="left")
            gt += part.size - np.searchsorted(part, u, side="right")
    return ge, gt


def _trapezoid_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """∫_0^limit of the polyline (x, y) (x nondecreasing, from x[0] = 0), interpolating at limit."""
    dx, mid = np.diff(x), 0.5 * (y[1:] + y[:-1])
    inside = x[1:] <= limit
    area = float(np.sum(mid[inside] * dx[inside]))
    cross = np.flatnonzero((x[:-1] <= limit) & (x[1:] > limit))  # at most one: x is sorted
    if cross.size:
        i = int(cross[0])
        y_at = y[i] + (y[i + 1] - y[i]) * (limit - x[i]) / (x[i + 1] - x[i])
        area += 0.5 * (y_at + y[i]) * (limit - x[i])
    return float(area)


def _integrals(
    ranked: _Ranked,
    neg: Sequence[np.ndarray],
    n_regions: int,
    fpr_limit: float,
    want: frozenset[str],
) -> dict[str, Any]:
    """AUROC, AP and AUPRO (those in ``want``) from one group's ranked positives and sorted normals.

    Returns n_pos, n_neg and auroc / ap / aupro (float, or None where undefined or not wanted).
    """
    _check_limit(fpr_limit)
    n_pos, n_neg = ranked.n_pos, sum(int(p.size) for p in neg)
    out: dict[str, Any] = {
        "n_pos": n_pos,
        "n_neg": n_neg,
        "auroc": None,
        "ap": None,
        "aupro": None,
    }
    if n_pos == 0:
        return out
    ge, gt = _normal_counts(neg, ranked.score)
    tp = ranked.tp
    step = np.diff(tp, prepend=0)  # anomalous rows at each distinct score
    if "auroc" in want and n_neg > 0:
        # Integer numerator (exact: Σ ≤ 2PN < 2^63 for any realistic group), one division.
        twice = int(np.dot(step, 2 * (n_neg - ge) + (ge - gt)))
        out["auroc"] = twice / (2.0 * n_pos * n_neg)
    if "ap" in want:
        out["ap"] = float(np.sum(step * (tp / (tp + ge)))) / n_pos
    if "aupro" in want and n_regions > 0 and n_neg > 0:
        k = tp.size
        y = np.minimum(ranked.pro / n_regions, 1.0)  # clipped as the MVTec reference (round-off)
        x = np.empty(2 * k + 2)
        x[0], x[1:-1:2], x[2:-1:2], x[-1] = 0.0, gt / n_neg, ge / n_neg, 1.0
        ys = np.empty(2 * k + 2)
        ys[0], ys[1], ys[3:-1:2], ys[2:-1:2], ys[-1] = 0.0, 0.0, y[:-1], y, y[-1]
        out["aupro"] = _trapezoid_to(np.minimum(x, 1.0), ys, fpr_limit) / fpr_limit
    return out


# --------------------------------------------------------------------------------------------
# One evaluation group's pixels, ready for every metric
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    """The pixels of one group, reduced once, split by image class.

    neg: class code → ascending-sorted scores of its normal pixels (1-D, score dtype).
    pos_score / pos_weight / pos_cls: anomalous pixels sorted by score, highest first: score,
        float64 1/|component|, integer class code.
    n_regions: class code → number of GT components in its images.
    names: class code → defect type (codes other than _NORMAL / _ALL).
    """

    neg: dict[int, np.ndarray]
    pos_score: np.ndarray
    pos_weight: np.ndarray
    pos_cls: np.ndarray
    n_regions: dict[int, int]
    names: dict[int, str]

    @property
    def n_rows(self) -> int:
        return int(sum(p.size for p in self.neg.values()) + self.pos_score.size)

    def metrics(
        self,
        classes: Sequence[int] | None,
        fpr_limit: float,
        want: frozenset[str] = frozenset(("auroc", "ap", "aupro")),
    ) -> dict[str, Any]:
        """Pixel metrics and counts over the given class codes (None: every class)."""
        if classes is None:
            score, weight = self.pos_score, self.pos_weight
            neg, n_regions = list(self.neg.values()), sum(self.n_regions.values())
        else:  # boolean selection keeps the descending order: no second sort
            keep = np.isin(self.pos_cls, list(classes))
            score, weight = self.pos_score[keep], self.pos_weight[keep]
            neg = [self.neg[c] for c in classes if c in self.neg]
            n_regions = sum(self.n_regions.get(c, 0) for c in classes)
        res = _integrals(_rank_descending(score, weight), neg, n_regions, fpr_limit, want)
        return {
            "p_auroc": res["auroc"],
            "p_ap": res["ap"],
            "aupro": res["aupro"],
            "n_pixels": res["n_pos"] + res["n_neg"],
            "n_anomalous_pixels": res["n_pos"],
            "n_regions": n_regions,
        }


def _image_class() -> pl.Expr:
    """Defect type of an anomalous image, null for a normal image (label 0)."""
    return pl.when(pl.col("label") == 0).then(pl.lit(None, pl.String)).otherwise(pl.col("defect_type").cast(pl.String))


def _class_codes(frame: pl.DataFrame, names: dict[str, int]) -> tuple[np.ndarray, list[int]]:
    """int16 class code per row of ``frame[_CLS]`` (Categorical, null = normal) and the codes present.

    Maps the Categorical's physical ids through a small lookup table: no per-row hashing and
    2 bytes per row (a 100 M-row group needs 200 MB for its codes). Extends ``names``.
    """
    cls = frame[_CLS]
    distinct = cls.unique()  # on the integer ids: cheap even for 100 M rows
    physical = distinct.to_physical()
    null_id = int(physical.max() or 0) + 1  # type: ignore[arg-type]
    lookup = np.full(null_id + 1, _NORMAL, np.int16)
    present = []
    for pid, name in zip(physical.to_list(), distinct.cast(pl.String).to_list(), strict=True):
        if pid is not None:
            lookup[pid] = names.setdefault(name, len(names) + 1)
        present.append(int(lookup[null_id if pid is None else pid]))
    return lookup[cls.to_physical().fill_null(null_id).to_numpy()], sorted(present)


def _load_group(pixels: pl.LazyFrame, by_class: bool, where: str) -> _Group:
    """Read ONE group's pixels (filter to the group first) and reduce them to a :class:`_Group`.

    Two streaming queries: the normal pixels' scores [+ class], and the rows with gt != 0 or a
    region id (few) with score, gt, image_id, region [+ class]. Components are keyed by
    (image_id, region) as the pipeline writes them; sizes come from the second query alone,
    whose row order therefore does not matter.
    """
    cls = [_image_class().cast(pl.Categorical).alias(_CLS)] if by_class else []
    normal_q = pixels.filter(pl.col("gt") == 0).select("score", *cls)
    anomalous_q = pixels.filter((pl.col("gt") != 0) | (pl.col("region") > 0)).select(
        "score", (pl.col("gt") != 0).alias("pos"), "image_id", "region", *cls
    )
    normal, anomalous = pl.collect_all([normal_q, anomalous_q], engine=STREAMING)
    names: dict[str, int] = {}
    # Normal scores: one ascending sort per class (one class unless by_class).
    neg_score = normal["score"].to_numpy(writable=True)
    if by_class:
        codes, present = _class_codes(normal, names)
        del normal
        neg = {c: _sorted_scores(neg_score[codes == c], where) for c in present}
    else:
        del normal
        neg = {_ALL: _sorted_scores(neg_score, where)} if neg_score.size else {}
    del neg_score
    # Anomalous rows: consistency of gt and region, component sizes, weights.
    pos = anomalous["pos"].to_numpy()
    region = anomalous["region"].fill_null(0).to_numpy()
    n_pos = int(pos.sum())
    unlabelled = int((pos & (region <= 0)).sum())
    in_regions = int((region > 0).sum())
    if unlabelled or in_regions != n_pos:
        raise RaydiffError(
            where,
            f"gt and region disagree: {unlabelled} anomalous pixels (gt=1) have region 0 and "
            f"{in_regions - (n_pos - unlabelled)} pixels with a region id have gt=0.",
            "derive region from the same mask as gt with raydiff.metrics.label_regions(gt).",
        )
    score = anomalous["score"].to_numpy()
    if _has_nan(score):
        raise _nan_error(where)
    pos_cls = _class_codes(anomalous, names)[0] if by_class else np.full(score.size, _ALL, np.int64)
    comp = anomalous.select(pl.struct("image_id", "region").rank("dense").cast(pl.Int64)).to_series().to_numpy() - 1
    sizes = np.bincount(comp) if comp.size else np.zeros(0, np.int64)
    comp_cls = np.full(sizes.size, _ALL, np.int64)
    comp_cls[comp] = pos_cls  # a component lies in one image, hence one class
    n_regions = {int(c): int(n) for c, n in zip(*np.unique(comp_cls, return_counts=True), strict=True)}
    pos_score, pos_weight, pos_cls = _sort_descending(score, 1.0 / sizes[comp], pos_cls)
    return _Group(neg, pos_score, pos_weight, pos_cls, n_regions, {v: k for k, v in names.items()})


def _image_metrics(scores: np.ndarray, labels: np.ndarray, where: str) -> dict[str, Any]:
    """I-AUROC and image counts (image score vs label != 0, higher = more anomalous)."""
    anomalous = labels != 0
    pos = scores[anomalous]
    if _has_nan(pos):
        raise _nan_error(where)
    neg = _sorted_scores(scores[~anomalous], where)
    res = _integrals(
        _rank_descending(*_sort_descending(pos), None),
        [neg],
        0,
        DEFAULT_FPR_LIMIT,
        frozenset({"auroc"}),
    )
    return {
        "i_auroc": res["auroc"],
        "n_images": res["n_pos"] + res["n_neg"],
        "n_anomalous_images": res["n_pos"],
    }


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


def _group_images(img: pl.DataFrame, where: str) -> dict[str, Any]:
    return _image_metrics(img["score"].to_numpy(), img["label"].to_numpy(), where)


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
    group = _load_group(pixels.filter(_group_filter(key)), by_defect, where)
    if not by_defect:
        out.append(
            {
                **base,
                **_group_images(group_images, where),
                **group.metrics(None, fpr_limit),
            }
        )
    else:
        codes = {name: code for code, name in group.names.items()}
        for defect in sorted(set(codes) | set(group_images[_CLS].drop_nulls())):
            subset = group_images.filter(pl.col(_CLS).is_null() | (pl.col(_CLS) == defect))
            classes = [_NORMAL, codes[defect]] if defect in codes else [_NORMAL]
            out.append(
                {
                    **base,
                    "defect_type": defect,
                    **_group_images(subset, f"{where}/defect_type={defect}"),
                    **group.metrics(classes, fpr_limit),
                }
            )
    return group.n_rows


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
    group = _load_group(pixels, False, "pixel_curves")
    neg = group.neg.get(_ALL, np.zeros(0, group.pos_score.dtype))
    pos_ascending = group.pos_score[::-1]
    score = np.unique(np.concatenate([neg, group.pos_score]))[::-1]  # every distinct score, highest first
    n_neg, n_pos = neg.size, group.pos_score.size
    fp = n_neg - np.searchsorted(neg, score, side="left")
    tp = n_pos - np.searchsorted(pos_ascending, score, side="left")
    cum = np.concatenate([[0.0], np.cumsum(group.pos_weight)])
    n_regions = sum(group.n_regions.values())
    with np.errstate(divide="ignore", invalid="ignore"):
        return pl.DataFrame(
            {
                "score": score,
                "fpr": fp / n_neg,
                "tpr": tp / n_pos,
                "precision": tp / (tp + fp),
                "recall": tp / n_pos,
                "pro": cum[tp] / n_regions if n_regions else pl.Series([None] * score.size, dtype=pl.Float64),
            }
        )


# --------------------------------------------------------------------------------------------
# Arrays: the same core, straight from numpy
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


def _check_maps(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    maps, masks = np.asarray(maps), np.asarray(masks)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ValueError(f"maps and masks must both be (N, H, W); got {maps.shape} and {masks.shape}")
    return _as_polars_float(maps), masks


def _pixel_frame(maps: np.ndarray, masks: np.ndarray) -> pl.LazyFrame:
    """One row per pixel in the pipeline's schema (image_id = index in the batch)."""
    maps, masks = _check_maps(maps, masks)
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


def _array_group(maps: np.ndarray, masks: np.ndarray, regions: bool) -> _Group:
    """A :class:`_Group` straight from (N, H, W) maps and masks; components only if ``regions``.

    One ``ndimage.label`` call over the whole batch with an in-plane structure gives component
    ids unique across the batch (8-connected within each image, never across images).
    """
    maps, masks = _check_maps(maps, masks)
    gt = masks != 0
    neg = _sorted_scores(maps[~gt], "arrays")  # boolean indexing copies: sorting it is safe
    score = maps[gt]
    if _has_nan(score):
        raise _nan_error("arrays")
    if regions and score.size:
        labels, n_regions = ndimage.label(gt, structure=_STRUCTURE_2D_IN_3D, output=np.int32)
        comp = labels[gt]
        del labels
        weight = 1.0 / np.bincount(comp)[comp]
    else:
        n_regions, weight = 0, np.zeros(score.size)
    pos_score, pos_weight = _sort_descending(score, weight)
    return _Group(
        {_ALL: neg} if neg.size else {},
        pos_score,
        pos_weight,
        np.full(score.size, _ALL, np.int64),
        {_ALL: int(n_regions)} if n_regions else {},
        {},
    )


def pixel_metrics(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = DEFAULT_FPR_LIMIT) -> dict[str, Any]:
    """Every pixel metric of one group in one pass (one sort of the scores).

    maps: (N, H, W) float (other dtypes are widened exactly to float64), higher = more anomalous;
    masks: (N, H, W), nonzero = anomalous; components are the 8-connected components of each mask.
    Returns {"p_auroc", "p_ap", "aupro"} (float, None where undefined, as in
    :func:`compute_metrics`) and {"n_pixels", "n_anomalous_pixels", "n_regions"} (int).
    """
    _check_limit(fpr_limit)
    return _array_group(maps, masks, regions=True).metrics(None, fpr_limit)


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """I-AUROC: scores (N,) float, higher = more anomalous; labels (N,) {0, 1}. None if one class."""
    scores, labels = np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores and labels must have the same length; got {scores.shape} and {labels.shape}")
    return _image_metrics(_as_polars_float(scores), labels, "arrays")["i_auroc"]


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float | None:
    """P-AUROC over all pixels: maps (N,H,W) float, higher = more anomalous; masks (N,H,W) nonzero = anomalous.

    Does only what AUROC needs (no component labelling); for several metrics call
    :func:`pixel_metrics` once instead.
    """
    return _array_group(maps, masks, regions=False).metrics(None, DEFAULT_FPR_LIMIT, frozenset({"auroc"}))["p_auroc"]


def pixel_ap(maps: np.ndarray, masks: np.ndarray) -> float | None:
    """Pixel average precision (step-wise, as sklearn ``average_precision_score``); None without anomalies.

    Does only what AP needs (no component labelling); see :func:`pixel_metrics` for all at once.
    """
    return _array_group(maps, masks, regions=False).metrics(None, DEFAULT_FPR_LIMIT, frozenset({"ap"}))["p_ap"]


def aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = DEFAULT_FPR_LIMIT) -> float | None:
    """AUPRO up to ``fpr_limit``, normalised to [0, 1] (MVTec AD reference definition).

    Components are the 8-connected components of each mask. None without components or without
    normal pixels.
    """
    _check_limit(fpr_limit)
    return _array_group(maps, masks, regions=True).metrics(None, fpr_limit, frozenset({"aupro"}))["aupro"]
