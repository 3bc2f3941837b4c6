"""Error analysis of a run folder: polars queries over the per-pixel and per-image Parquet.

Questions answered (``inspect_run`` returns all of them as a dict of DataFrames):

- ``thresholds``: the pixel threshold of each (dataset, category, variant) at a target pixel FPR:
  thr = the ``1 - fpr`` quantile of the scores of all normal pixels (gt = 0, in normal and
  defective images alike, as the metrics' FPR), taken with ``interpolation="higher"`` so that a
  pixel is flagged when ``score > thr`` and the realised FPR is at most ``fpr``.
- ``false_positives``: the worst normal images (label 0) per variant: pixels above the threshold.
- ``missed_regions``: GT components (8-connected, ``region`` id) whose covered fraction (pixels
  above the threshold / component size) is below ``coverage_below``, with their size and defect.
- ``missed_summary``: missed / all components by defect type and relative size bin.
- ``score_distributions``: quantiles of the scores of normal vs anomalous pixels per variant.

Scores are "higher = more anomalous". Every query reads only the columns it needs from the lazily
scanned Parquet and runs on polars' streaming engine; quantiles are taken one (dataset, category,
variant) group at a time, so memory stays at one group's scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from raydiff.runs import require_complete, scan_images, scan_pixels

KEYS: tuple[str, ...] = ("dataset", "category", "variant")
STREAMING = "streaming"
DEFAULT_QUANTILES: tuple[float, ...] = (0.01, 0.1, 0.5, 0.9, 0.99, 0.999)
#: Relative GT-component size bins (component pixels / image pixels), upper edges exclusive.
SIZE_BINS: tuple[tuple[str, float], ...] = (("<0.1%", 0.001), ("0.1-1%", 0.01), ("1-10%", 0.1), (">=10%", float("inf")))


def _groups(pixels: pl.LazyFrame) -> list[tuple[str, str, str]]:
    """The (dataset, category, variant) keys present, sorted."""
    keys = pixels.select(KEYS).unique().collect(engine=STREAMING)
    return sorted(keys.iter_rows())


def _group_filter(key: Sequence[str]) -> pl.Expr:
    return pl.all_horizontal([pl.col(k) == v for k, v in zip(KEYS, key, strict=True)])


def _check_fpr(fpr: float) -> None:
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")


def pixel_thresholds(pixels: pl.LazyFrame, fpr: float = 0.01) -> pl.DataFrame:
    """Per-group pixel threshold at a target FPR over the normal pixels.

    Returns dataset, category, variant, threshold (Float64, null without normal pixels),
    n_normal_pixels, n_normal_above (normal pixels with score > threshold), realised_fpr
    (= n_normal_above / n_normal_pixels <= fpr), height, width (map size).
    """
    _check_fpr(fpr)
    rows: list[dict[str, Any]] = []
    for key in _groups(pixels):
        group = pixels.filter(_group_filter(key)).select("score", "gt", "y", "x")
        stats = group.select(
            threshold=pl.col("score").filter(pl.col("gt") == 0).quantile(1.0 - fpr, interpolation="higher").cast(pl.Float64),
            n_normal_pixels=(pl.col("gt") == 0).sum().cast(pl.Int64),
            height=(pl.col("y").max().cast(pl.Int64) + 1),
            width=(pl.col("x").max().cast(pl.Int64) + 1),
        ).collect(engine=STREAMING).row(0, named=True)
        thr = stats["threshold"]
        above = 0
        if thr is not None:
            flagged = group.filter((pl.col("gt") == 0) & (pl.col("score") > thr))
            above = flagged.select(pl.len()).collect(engine=STREAMING).item()
        n = stats["n_normal_pixels"]
        rows.append(
            {
                **dict(zip(KEYS, key, strict=True)),
                **stats,
                "n_normal_above": int(above),
                "realised_fpr": above / n if n else None,
            }
        )
    schema = {k: pl.String for k in KEYS} | {
        "threshold": pl.Float64,
        "n_normal_pixels": pl.Int64,
        "height": pl.Int64,
        "width": pl.Int64,
        "n_normal_above": pl.Int64,
        "realised_fpr": pl.Float64,
    }
    cols = [*KEYS, "threshold", "n_normal_pixels", "n_normal_above", "realised_fpr", "height", "width"]
    return pl.DataFrame(rows, schema=schema).select(cols)


def false_positives(
    pixels: pl.LazyFrame, thresholds: pl.DataFrame, images: pl.LazyFrame | None = None, top: int = 10
) -> pl.DataFrame:
    """Worst normal images per (dataset, variant): pixels above the group's threshold.

    Returns dataset, category, variant, image_id, fp_pixels (score > threshold), n_pixels,
    fp_fraction, max_score (highest pixel score), [image_score from ``images``], rank (1 = worst
    within dataset × variant), at most ``top`` rows per dataset × variant, sorted by rank.
    Ties in fp_pixels are broken by max_score, then image_id.
    """
    thr = thresholds.lazy().select(*KEYS, "threshold")
    per_image = (
        pixels.filter(pl.col("label") == 0)
        .select(*KEYS, "image_id", "score")
        .join(thr, on=list(KEYS), how="inner")
        .group_by(*KEYS, "image_id")
        .agg(
            fp_pixels=(pl.col("score") > pl.col("threshold")).sum().cast(pl.Int64),
            n_pixels=pl.len().cast(pl.Int64),
            max_score=pl.col("score").max().cast(pl.Float64),
        )
        .with_columns(fp_fraction=pl.col("fp_pixels") / pl.col("n_pixels"))
    )
    if images is not None:
        per_image = per_image.join(
            images.select(*KEYS, "image_id", image_score=pl.col("score").cast(pl.Float64)),
            on=[*KEYS, "image_id"],
            how="left",
        )
    ranked = (
        per_image.sort(["fp_pixels", "max_score", "image_id"], descending=[True, True, False])
        .with_columns(rank=pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("dataset", "variant"))
        .filter(pl.col("rank") <= top)
        .sort("dataset", "variant", "rank")
    )
    cols = [*KEYS, "image_id", "fp_pixels", "n_pixels", "fp_fraction", "max_score"]
    cols += ["image_score"] if images is not None else []
    return ranked.select(*cols, "rank").collect(engine=STREAMING)


def _size_bin(rel: pl.Expr) -> pl.Expr:
    expr = pl.when(rel < SIZE_BINS[0][1]).then(pl.lit(SIZE_BINS[0][0]))
    for name, upper in SIZE_BINS[1:]:
        expr = expr.when(rel < upper).then(pl.lit(name))
    return expr.otherwise(pl.lit(SIZE_BINS[-1][0]))


def region_coverage(pixels: pl.LazyFrame, thresholds: pl.DataFrame) -> pl.DataFrame:
    """Every GT component with its coverage at the group's threshold.

    Returns dataset, category, variant, image_id, defect_type, region, size (pixels),
    relative_size (size / map pixels), size_bin, covered (pixels with score > threshold),
    coverage (covered / size, null when the group has no threshold), max_score.
    """
    thr = thresholds.lazy().select(*KEYS, "threshold", area=(pl.col("height") * pl.col("width")).cast(pl.Float64))
    return (
        pixels.filter(pl.col("region") > 0)
        .select(*KEYS, "image_id", "defect_type", "region", "score")
        .join(thr, on=list(KEYS), how="inner")
        .group_by(*KEYS, "image_id", "region")
        .agg(
            defect_type=pl.col("defect_type").first(),
            size=pl.len().cast(pl.Int64),
            covered=(pl.col("score") > pl.col("threshold")).sum().cast(pl.Int64),
            has_threshold=pl.col("threshold").is_not_null().all(),
            area=pl.col("area").first(),
            max_score=pl.col("score").max().cast(pl.Float64),
        )
        .with_columns(
            relative_size=pl.col("size") / pl.col("area"),
            coverage=pl.when(pl.col("has_threshold")).then(pl.col("covered") / pl.col("size")),
        )
        .with_columns(size_bin=_size_bin(pl.col("relative_size")))
        .select(
            *KEYS, "image_id", "defect_type", "region", "size", "relative_size", "size_bin", "covered", "coverage",
            "max_score",
        )
        .sort(*KEYS, "image_id", "region")
        .collect(engine=STREAMING)
    )


def missed_regions(coverage: pl.DataFrame, coverage_below: float = 0.1) -> pl.DataFrame:
    """Components of ``region_coverage`` with coverage < ``coverage_below``: least covered first,
    then largest first, per dataset × category × variant."""
    return coverage.filter(pl.col("coverage") < coverage_below).sort(
        [*KEYS, "coverage", "size", "image_id", "region"], descending=[False, False, False, False, True, False, False]
    )


def missed_summary(coverage: pl.DataFrame, coverage_below: float = 0.1) -> pl.DataFrame:
    """Missed / all components by dataset, category, variant, defect_type and size_bin.

    Returns ..., n_regions, n_missed, missed_fraction, mean_coverage.
    """
    order = {name: i for i, (name, _) in enumerate(SIZE_BINS)}
    return (
        coverage.group_by(*KEYS, "defect_type", "size_bin")
        .agg(
            n_regions=pl.len().cast(pl.Int64),
            n_missed=(pl.col("coverage") < coverage_below).sum().cast(pl.Int64),
            mean_coverage=pl.col("coverage").mean(),
        )
        .with_columns(missed_fraction=pl.col("n_missed") / pl.col("n_regions"))
        .with_columns(_bin=pl.col("size_bin").replace_strict(order, return_dtype=pl.Int32))
        .sort(*KEYS, "defect_type", "_bin")
        .select(*KEYS, "defect_type", "size_bin", "n_regions", "n_missed", "missed_fraction", "mean_coverage")
    )


def score_distributions(pixels: pl.LazyFrame, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> pl.DataFrame:
    """Score quantiles of normal (gt = 0) and anomalous (gt = 1) pixels per group.

    Returns dataset, category, variant, pixels ("normal" | "anomalous"), n, mean, std, min,
    q<quantile> for each quantile (linear interpolation), max; one group in memory at a time.
    """
    qcols = {f"q{q:g}": pl.col("score").quantile(q, interpolation="linear") for q in quantiles}
    frames = []
    for key in _groups(pixels):
        frame = (
            pixels.filter(_group_filter(key))
            .select("score", "gt")
            .group_by(pixels=pl.when(pl.col("gt") != 0).then(pl.lit("anomalous")).otherwise(pl.lit("normal")))
            .agg(
                n=pl.len().cast(pl.Int64),
                mean=pl.col("score").mean().cast(pl.Float64),
                std=pl.col("score").std().cast(pl.Float64),
                min=pl.col("score").min().cast(pl.Float64),
                **{k: v.cast(pl.Float64) for k, v in qcols.items()},
                max=pl.col("score").max().cast(pl.Float64),
            )
            .collect(engine=STREAMING)
            .with_columns(*(pl.lit(v, pl.String).alias(k) for k, v in zip(KEYS, key, strict=True)))
        )
        frames.append(frame.select(*KEYS, pl.exclude(KEYS)))
    if not frames:
        return pl.DataFrame()
    return pl.concat(frames).sort(*KEYS, pl.col("pixels") == "anomalous")


def inspect_run(run_dir: Path, fpr: float = 0.01, top: int = 10, coverage_below: float = 0.1) -> dict[str, pl.DataFrame]:
    """All error-analysis tables of a run folder (see the module docstring).

    Keys: thresholds, false_positives, missed_regions, missed_summary, score_distributions.
    ``fpr``: target pixel false-positive rate defining the threshold (e.g. 0.01);
    ``top``: worst normal images kept per dataset × variant; ``coverage_below``: a component is
    missed when less than this fraction of its pixels is above the threshold.
    """
    if not 0.0 < coverage_below <= 1.0:  # also NaN
        raise ValueError(f"coverage_below must be in (0, 1], got {coverage_below}")
    pixels = scan_pixels(Path(run_dir))
    images = scan_images(Path(run_dir))
    require_complete(Path(run_dir), command="`raydiff inspect`")
    thr = pixel_thresholds(pixels, fpr)
    cov = region_coverage(pixels, thr)
    return {
        "thresholds": thr,
        "false_positives": false_positives(pixels, thr, images, top),
        "missed_regions": missed_regions(cov, coverage_below),
        "missed_summary": missed_summary(cov, coverage_below),
        "score_distributions": score_distributions(pixels),
    }
