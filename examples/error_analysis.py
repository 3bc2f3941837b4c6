"""Error analysis of a run folder with polars: the questions `raydiff inspect` answers, in a few lines.

    .venv/bin/python examples/error_analysis.py raydiff-out/<run_id>
    .venv/bin/python examples/error_analysis.py raydiff-out/<run_id> --fpr 0.05 --top 3

A run folder (the "run folder:" line `raydiff demo` / `raydiff sweep` print) holds every score as
Parquet: one row per pixel (`pixels/`) and one per image (`images/`), hive-partitioned by
dataset / category / variant. `raydiff.runs.scan_pixels` / `scan_images` return lazy polars frames
over the complete partitions only; `.collect(engine="streaming")` keeps memory low even for a
whole MVTec category. Pixel columns: dataset, category, variant, image_id, defect_type, label, y,
x, score (higher = more anomalous), gt (0/1), region (ground-truth component id, 0 for normal
pixels). Image columns: dataset, category, variant, image_id, defect_type, label, score, ...

Prints four tables:
1. score distributions: quantiles of normal vs anomalous pixels, per category and variant;
2. worst false positives: the pixel threshold at a false-positive rate of ``--fpr`` (the
   (1 - fpr) quantile of the normal pixels' scores), then the normal images with the most pixels
   above it;
3. missed defects: ground-truth regions with less than 10 % of their pixels above that
   threshold, counted per defect type with their mean size in pixels;
4. worst images per variant: the normal image with the highest image score and the defective
   image with the lowest.

The packaged version, with realised FPRs, size bins and image scores, is `raydiff inspect RUN_DIR`
(or ``raydiff.inspect_run.inspect_run(run, fpr=0.01, top=10)`` in Python).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a checkout without `pip install -e .`
from raydiff.errors import RaydiffError  # noqa: E402
from raydiff.runs import scan_images, scan_pixels  # noqa: E402

KEYS = ["dataset", "category", "variant"]


def error_tables(run: Path, fpr: float = 0.01, top: int = 10, coverage_below: float = 0.1) -> dict[str, pl.DataFrame]:
    """The four tables of this script for run folder ``run``, keyed by name."""
    px = scan_pixels(run)
    images = scan_images(run)

    # 1. Score distributions: quantiles of normal vs anomalous pixels, per category and variant.
    dist = (
        px.group_by(*KEYS, "gt")
        .agg(n=pl.len(), *[pl.col("score").quantile(q).alias(f"q{q}") for q in (0.5, 0.9, 0.99)])
        .sort(*KEYS, "gt")
        .collect(engine="streaming")
    )

    # 2. Worst false positives: the threshold at a pixel FPR of `fpr` (the (1 - fpr) quantile of the
    #    normal pixels' scores), then the normal images with the most pixels above it.
    thr = (
        px.filter(pl.col("gt") == 0)
        .group_by(KEYS)
        .agg(thr=pl.col("score").quantile(1.0 - fpr, interpolation="higher"))
    )
    worst_fp = (
        px.filter(pl.col("label") == 0)
        .join(thr, on=KEYS)
        .group_by(*KEYS, "image_id")
        .agg(fp_pixels=(pl.col("score") > pl.col("thr")).sum())
        .sort("fp_pixels", *KEYS, "image_id", descending=[True, False, False, False, False])
        .head(top)
        .collect(engine="streaming")
    )

    # 3. Missed defects: GT components with less than `coverage_below` of their pixels above that
    #    threshold, counted by defect type (with their mean size in pixels).
    missed = (
        px.filter(pl.col("region") > 0)
        .join(thr, on=KEYS)
        .group_by(*KEYS, "defect_type", "image_id", "region")
        .agg(size=pl.len(), coverage=(pl.col("score") > pl.col("thr")).mean())
        .filter(pl.col("coverage") < coverage_below)
        .group_by(*KEYS, "defect_type")
        .agg(missed=pl.len(), mean_size=pl.col("size").mean())
        .sort(*KEYS, "defect_type")
        .collect(engine="streaming")
    )

    # 4. Worst images per variant: the most anomalous-looking normal image and the least
    #    anomalous-looking defective one (image scores).
    highest_normal = (
        images.filter(pl.col("label") == 0)
        .sort("score", "image_id", descending=[True, False])
        .group_by(KEYS, maintain_order=True)
        .agg(worst_normal=pl.col("image_id").first(), worst_normal_score=pl.col("score").first())
    )
    lowest_defective = (
        images.filter(pl.col("label") == 1)
        .sort("score", "image_id")
        .group_by(KEYS, maintain_order=True)
        .agg(
            worst_defective=pl.col("image_id").first(),
            defect_type=pl.col("defect_type").first(),
            worst_defective_score=pl.col("score").first(),
        )
    )
    worst_images = (
        highest_normal.join(lowest_defective, on=KEYS, how="full", coalesce=True)
        .sort(KEYS)
        .collect()
    )
    return {"distributions": dist, "worst_false_positives": worst_fp, "missed": missed, "worst_images": worst_images}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a run folder, OUT/<run_id> (holds config.yaml, pixels/, images/)")
    p.add_argument("--fpr", type=float, default=0.01, help="pixel false-positive rate of the threshold (default 0.01)")
    p.add_argument("--top", type=int, default=10, help="worst normal images listed (default 10)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not 0.0 < args.fpr < 1.0:
        print(f"error: --fpr must be in (0, 1), got {args.fpr}", file=sys.stderr)
        return 2
    try:
        tables = error_tables(args.run_dir, fpr=args.fpr, top=args.top)
    except RaydiffError as err:  # e.g. not a run folder: one line naming the folder and the fix
        print(f"error: {err}", file=sys.stderr)
        return 1
    with pl.Config(tbl_rows=50, tbl_cols=-1, tbl_width_chars=160):
        for name, table in tables.items():
            print(f"## {name}")
            print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
