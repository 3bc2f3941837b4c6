"""raydiff.metrics against sklearn and an independent, deliberately naive numpy AUPRO.

The reference AUPRO below follows the MVTec AD evaluation steps literally: for every distinct
score (highest first) binarise the maps, measure each GT component's covered fraction and the
FPR over all normal pixels, then integrate PRO d(FPR) from 0 to the limit with trapezoids,
interpolating linearly at the limit, and divide by the limit. No sorting or cumulative sums.
"""

from __future__ import annotations

from bisect import bisect_right
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import ndimage
from skimage.measure import label as sk_label
from sklearn.metrics import average_precision_score, roc_auc_score

from raydiff.errors import RaydiffError
from raydiff.metrics import (
    aupro,
    compute_metrics,
    image_auroc,
    label_regions,
    pixel_ap,
    pixel_auroc,
    pixel_curves,
    pixel_metrics,
)

TOL = 1e-6
EXACT = 1e-9  # issue 18: values equal to sklearn / the numpy AUPRO reference to 1e-9


# --------------------------------------------------------------------------------------------
# Independent reference
# --------------------------------------------------------------------------------------------


def naive_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    comp_id = np.zeros(maps.shape, np.int64)  # 0 normal, 1..K over the whole batch
    k = 0
    for i, mask in enumerate(masks):
        lab, n = ndimage.label(mask != 0, structure=np.ones((3, 3), int))
        comp_id[i][lab > 0] = lab[lab > 0] + k
        k += n
    assert k > 0
    sizes = np.bincount(comp_id.ravel(), minlength=k + 1)[1:]
    normal = masks == 0
    fprs, pros = [0.0], [0.0]
    for thr in np.unique(maps)[::-1]:
        pred = maps >= thr
        fprs.append((pred & normal).sum() / normal.sum())
        covered = np.bincount(comp_id[pred], minlength=k + 1)[1:]
        pros.append(float(np.mean(covered / sizes)))
    fprs.append(1.0)
    pros.append(1.0)
    x, y = np.array(fprs), np.array(pros)
    ins = bisect_right(list(x), limit)  # x[ins-1] <= limit < x[ins]
    xs, ys = list(x[:ins]), list(y[:ins])
    if ins < len(x) and xs[-1] < limit:
        xs.append(limit)
        ys.append(y[ins - 1] + (y[ins] - y[ins - 1]) * (limit - x[ins - 1]) / (x[ins] - x[ins - 1]))
    area = sum(0.5 * (ys[j] + ys[j - 1]) * (xs[j] - xs[j - 1]) for j in range(1, len(xs)))
    return area / limit


def check_all(maps: np.ndarray, masks: np.ndarray) -> None:
    y, s = (masks != 0).ravel(), maps.ravel()
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert pixel_ap(maps, masks) == pytest.approx(average_precision_score(y, s), abs=TOL)
    for limit in (0.3, 0.05, 1.0):
        assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(naive_aupro(maps, masks, limit), abs=TOL)


def blob_masks(rng: np.random.Generator, n: int, h: int, w: int, blobs: int) -> np.ndarray:
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(1, n):  # image 0 stays normal
        for _ in range(blobs):
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            ry, rx = rng.integers(1, 5, size=2)
            yy, xx = np.ogrid[:h, :w]
            masks[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    return masks


def scored(rng: np.random.Generator, masks: np.ndarray, shift: float = 0.8) -> np.ndarray:
    maps = rng.normal(size=masks.shape) + shift * (masks != 0)
    return ndimage.uniform_filter(maps, size=(1, 3, 3)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Array conveniences vs references
# --------------------------------------------------------------------------------------------


def test_random_maps() -> None:
    rng = np.random.default_rng(0)
    masks = blob_masks(rng, 4, 24, 24, 3)
    check_all(scored(rng, masks), masks)


def test_many_ties() -> None:
    rng = np.random.default_rng(1)
    masks = blob_masks(rng, 4, 24, 24, 2)
    maps = np.round(scored(rng, masks, 0.5) * 3) / 3  # ~10 distinct values shared by both classes
    assert len(np.unique(maps)) < 20
    check_all(maps, masks)


def test_constant_maps() -> None:
    rng = np.random.default_rng(2)
    masks = blob_masks(rng, 3, 16, 16, 2)
    maps = np.full(masks.shape, 0.25, np.float32)
    check_all(maps, masks)
    # closed forms: the curve is the diagonal
    assert pixel_auroc(maps, masks) == pytest.approx(0.5)
    assert pixel_ap(maps, masks) == pytest.approx((masks != 0).mean())
    assert aupro(maps, masks) == pytest.approx(0.15)  # ∫_0^0.3 x dx / 0.3


def test_single_region() -> None:
    rng = np.random.default_rng(3)
    masks = np.zeros((2, 20, 20), np.uint8)
    masks[1, 5:12, 8:15] = 1
    check_all(scored(rng, masks, 1.0), masks)


def test_many_tiny_regions_and_8_connectivity() -> None:
    rng = np.random.default_rng(4)
    masks = np.zeros((3, 20, 20), np.uint8)
    masks[1, ::3, ::3] = 1  # 49 isolated pixels
    masks[2, 2, 2] = masks[2, 3, 3] = masks[2, 4, 4] = 1  # one diagonal component
    masks[2, 10:12, 10] = 1
    assert label_regions(masks[1]).max() == 49
    assert label_regions(masks[2]).max() == 2
    check_all(scored(rng, masks, 0.7), masks)


def test_label_regions_matches_skimage() -> None:
    rng = np.random.default_rng(5)
    mask = rng.random((40, 40)) > 0.6
    ours = label_regions(mask)
    assert ours.dtype == np.int32 and ours.shape == mask.shape
    ref = sk_label(mask, connectivity=2)
    assert ours.max() == ref.max()
    assert ((ours > 0) == mask).all()
    # same partition (ids may be permuted)
    pairs = set(zip(ours[mask].tolist(), ref[mask].tolist(), strict=True))
    assert len(pairs) == ref.max()


def test_perfect_and_inverted_maps() -> None:
    masks = np.zeros((2, 10, 10), np.uint8)
    masks[1, 2:5, 2:5] = 1
    masks[1, 7:9, 6:9] = 1
    perfect = masks.astype(np.float64)
    assert pixel_auroc(perfect, masks) == 1.0 and pixel_ap(perfect, masks) == 1.0 and aupro(perfect, masks) == 1.0
    assert pixel_auroc(-perfect, masks) == 0.0 and aupro(-perfect, masks) == pytest.approx(0.0)


def test_undefined_metrics_are_none() -> None:
    rng = np.random.default_rng(6)
    maps = rng.random((2, 8, 8))
    no_anomaly = np.zeros((2, 8, 8), np.uint8)
    assert pixel_auroc(maps, no_anomaly) is None
    assert pixel_ap(maps, no_anomaly) is None
    assert aupro(maps, no_anomaly) is None
    all_anomalous = np.ones((2, 8, 8), np.uint8)
    assert pixel_auroc(maps, all_anomalous) is None and aupro(maps, all_anomalous) is None
    assert pixel_ap(maps, all_anomalous) == pytest.approx(average_precision_score(all_anomalous.ravel(), maps.ravel()))
    assert image_auroc(np.array([0.1, 0.2]), np.array([0, 0])) is None


def test_image_auroc_with_ties() -> None:
    rng = np.random.default_rng(7)
    labels = rng.random(200) > 0.6
    scores = np.round(rng.normal(size=200) + labels, 1)
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=TOL)
    assert image_auroc(scores.astype(np.float32), labels.astype(np.int8)) == pytest.approx(
        roc_auc_score(labels, scores.astype(np.float32)), abs=TOL
    )


def test_pixel_curves_end_points() -> None:
    rng = np.random.default_rng(8)
    masks = blob_masks(rng, 3, 16, 16, 2)
    maps = scored(rng, masks)
    from raydiff.metrics import _pixel_frame

    curve = pixel_curves(_pixel_frame(maps, masks))
    assert curve.height == len(np.unique(maps))
    last = curve.row(-1, named=True)
    assert last["fpr"] == 1.0 and last["tpr"] == 1.0 and last["pro"] == pytest.approx(1.0)
    assert curve["score"].is_sorted(descending=True)


def test_bench_reference_agrees_with_naive() -> None:
    from raydiff.bench.metrics_data import reference_aupro

    rng = np.random.default_rng(9)
    masks = blob_masks(rng, 3, 20, 20, 3)
    maps = np.round(scored(rng, masks) * 4) / 4
    regions = np.stack([label_regions(m) for m in masks])
    assert reference_aupro(maps, regions) == pytest.approx(naive_aupro(maps, masks), abs=TOL)


# --------------------------------------------------------------------------------------------
# Bad input fails loudly
# --------------------------------------------------------------------------------------------


def test_nan_scores_raise() -> None:
    maps = np.zeros((1, 4, 4))
    maps[0, 0, 0] = np.nan
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, 1, 1] = 1
    with pytest.raises(RaydiffError, match="NaN"):
        pixel_auroc(maps, masks)


def test_gt_region_mismatch_raises() -> None:
    frame = pl.LazyFrame(
        {
            "image_id": ["a"] * 4,
            "defect_type": ["crack"] * 4,
            "label": pl.Series([1] * 4, dtype=pl.Int8),
            "score": [0.1, 0.2, 0.3, 0.4],
            "gt": pl.Series([0, 1, 1, 0], dtype=pl.Int8),
            "region": pl.Series([0, 1, 0, 0], dtype=pl.Int32),
        }
    )
    with pytest.raises(RaydiffError, match="region"):
        pixel_curves(frame)


# --------------------------------------------------------------------------------------------
# compute_metrics on hive-partitioned Parquet
# --------------------------------------------------------------------------------------------

DEFECTS = ("crack", "hole")


def write_partitions(root: Path, seed: int = 0) -> dict[tuple[str, str, str], dict[str, np.ndarray]]:
    """2 categories x 2 variants of pixel and image tables; returns the arrays per group."""
    rng = np.random.default_rng(seed)
    truth = {}
    n, h, w = 7, 12, 12
    defect_of = np.array(["good", "good", "crack", "crack", "hole", "hole", "hole"])
    image_ids = np.array([f"test/{d}/{i:03d}.png" for i, d in enumerate(defect_of)])
    for category in ("carpet", "01"):
        masks = blob_masks(rng, n, h, w, 2)
        masks[:2] = 0
        masks[6] = 0  # a defective image whose mask is empty after resizing: still label 1
        regions = np.stack([label_regions(m) for m in masks])
        labels = (defect_of != "good").astype(np.int8)
        for variant, quant in (("kl", 0.0), ("static-gaussian", 4.0)):
            maps = scored(rng, masks, 0.6)
            if quant:
                maps = np.round(maps * quant) / quant
            scores = maps.reshape(n, -1).max(axis=1) + rng.normal(0, 0.3, n).astype(np.float32)
            yy, xx = np.indices((h, w))
            pix = pa.table(
                {
                    "image_id": pa.array(np.repeat(image_ids, h * w)),
                    "defect_type": pa.array(np.repeat(defect_of, h * w)),
                    "label": pa.array(np.repeat(labels, h * w), pa.int8()),
                    "y": pa.array(np.tile(yy.ravel(), n), pa.int16()),
                    "x": pa.array(np.tile(xx.ravel(), n), pa.int16()),
                    "score": pa.array(maps.reshape(-1), pa.float32()),
                    "gt": pa.array(masks.reshape(-1), pa.int8()),
                    "region": pa.array(regions.reshape(-1), pa.int32()),
                }
            )
            img = pa.table(
                {
                    "image_id": pa.array(image_ids),
                    "defect_type": pa.array(defect_of),
                    "label": pa.array(labels, pa.int8()),
                    "score": pa.array(scores, pa.float32()),
                    "seconds_per_image": pa.array(np.ones(n), pa.float32()),  # extra columns are ignored
                }
            )
            for table, data in (("pixels", pix), ("images", img)):
                part = root / table / "dataset=tex" / f"category={category}" / f"variant={variant}"
                part.mkdir(parents=True)
                half = data.num_rows // 2  # two files per partition
                pq.write_table(data.slice(0, half), part / "part-0.parquet", compression="zstd")
                pq.write_table(data.slice(half), part / "part-1.parquet", compression="zstd")
            truth[("tex", category, variant)] = {
                "maps": maps,
                "masks": masks,
                "scores": scores,
                "labels": labels,
                "defect": defect_of,
            }
    return truth


def scan(root: Path, table: str) -> pl.LazyFrame:
    hive = {"dataset": pl.String, "category": pl.String, "variant": pl.String}
    return pl.scan_parquet(root / table, hive_partitioning=True, hive_schema=hive)


def test_compute_metrics_on_hive_parquet(tmp_path: Path) -> None:
    truth = write_partitions(tmp_path)
    table = compute_metrics(scan(tmp_path, "pixels"), scan(tmp_path, "images"))
    assert table.height == 4
    assert set(table.select("dataset", "category", "variant").iter_rows()) == set(truth)
    for row in table.iter_rows(named=True):
        t = truth[(row["dataset"], row["category"], row["variant"])]
        y, s = (t["masks"] != 0).ravel(), t["maps"].ravel()
        assert row["i_auroc"] == pytest.approx(roc_auc_score(t["labels"], t["scores"]), abs=TOL)
        assert row["p_auroc"] == pytest.approx(roc_auc_score(y, s), abs=TOL)
        assert row["p_ap"] == pytest.approx(average_precision_score(y, s), abs=TOL)
        assert row["aupro"] == pytest.approx(naive_aupro(t["maps"], t["masks"]), abs=TOL)
        assert row["n_images"] == 7 and row["n_anomalous_images"] == 5
        assert row["n_pixels"] == t["maps"].size and row["n_anomalous_pixels"] == y.sum()
        assert row["n_regions"] == sum(label_regions(m).max() for m in t["masks"])


def test_compute_metrics_by_defect(tmp_path: Path) -> None:
    truth = write_partitions(tmp_path, seed=1)
    table = compute_metrics(scan(tmp_path, "pixels"), scan(tmp_path, "images"), by_defect=True)
    assert table.height == 4 * len(DEFECTS)
    for row in table.iter_rows(named=True):
        t = truth[(row["dataset"], row["category"], row["variant"])]
        keep = (t["defect"] == "good") | (t["defect"] == row["defect_type"])  # defect's images + all good ones
        maps, masks = t["maps"][keep], t["masks"][keep]
        assert row["n_images"] == keep.sum() and row["n_anomalous_images"] == keep.sum() - 2
        assert row["i_auroc"] == pytest.approx(roc_auc_score(t["labels"][keep], t["scores"][keep]), abs=TOL)
        assert row["p_auroc"] == pytest.approx(roc_auc_score(masks.ravel() != 0, maps.ravel()), abs=TOL)
        assert row["p_ap"] == pytest.approx(average_precision_score(masks.ravel() != 0, maps.ravel()), abs=TOL)
        assert row["aupro"] == pytest.approx(naive_aupro(maps, masks), abs=TOL)
        assert row["n_pixels"] == maps.size


def test_compute_metrics_group_without_anomalous_pixels(tmp_path: Path) -> None:
    truth = write_partitions(tmp_path, seed=2)
    pixels = scan(tmp_path, "pixels").with_columns(
        gt=pl.when(pl.col("category") == "01").then(pl.lit(0, pl.Int8)).otherwise("gt"),
        region=pl.when(pl.col("category") == "01").then(pl.lit(0, pl.Int32)).otherwise("region"),
    )
    table = compute_metrics(pixels, scan(tmp_path, "images")).filter(pl.col("category") == "01")
    assert table.height == 2
    assert table["p_auroc"].is_null().all() and table["p_ap"].is_null().all() and table["aupro"].is_null().all()
    assert (table["n_regions"] == 0).all() and (table["n_anomalous_pixels"] == 0).all()
    assert table["i_auroc"].is_not_null().all() and len(truth) == 4


def test_missing_column_is_named(tmp_path: Path) -> None:
    write_partitions(tmp_path)
    with pytest.raises(RaydiffError, match="region"):
        compute_metrics(scan(tmp_path, "pixels").drop("region"), scan(tmp_path, "images"))


def test_groups_missing_from_one_table_are_still_reported(tmp_path: Path) -> None:
    import shutil

    truth = write_partitions(tmp_path, seed=3)
    shutil.rmtree(tmp_path / "images" / "dataset=tex" / "category=01" / "variant=kl")
    shutil.rmtree(tmp_path / "pixels" / "dataset=tex" / "category=carpet" / "variant=kl")
    table = compute_metrics(scan(tmp_path, "pixels"), scan(tmp_path, "images"))
    assert table.select("dataset", "category", "variant").rows() == sorted(truth)
    no_pixels = table.filter((pl.col("category") == "carpet") & (pl.col("variant") == "kl")).row(0, named=True)
    assert no_pixels["p_auroc"] is None and no_pixels["aupro"] is None and no_pixels["n_pixels"] == 0
    assert no_pixels["i_auroc"] is not None
    lonely = table.filter((pl.col("category") == "01") & (pl.col("variant") == "kl")).row(0, named=True)
    assert lonely["i_auroc"] is None and lonely["n_images"] == 0
    t = truth[("tex", "01", "kl")]
    assert lonely["p_auroc"] == pytest.approx(roc_auc_score(t["masks"].ravel() != 0, t["maps"].ravel()), abs=TOL)


def test_other_dtypes_are_exact() -> None:
    rng = np.random.default_rng(10)
    masks = blob_masks(rng, 3, 12, 12, 2).astype(bool)
    maps = (scored(rng, masks) * 20).astype(np.int16)  # integer maps: many ties
    y = masks.ravel()
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(y, maps.ravel()), abs=TOL)
    half = scored(rng, masks).astype(np.float16)
    assert pixel_ap(half, masks) == pytest.approx(average_precision_score(y, half.ravel()), abs=TOL)


def test_bench_metrics_smoke(tmp_path: Path) -> None:
    from raydiff.bench.metrics import bench_metrics

    result = bench_metrics(3 * 256 * 256, workdir=tmp_path)
    assert result["rows"] == 3 * 256 * 256
    assert result["max_abs_diff"] < 1e-9
    assert result["polars"]["peak_mb"] > 0 and result["sklearn+numpy"]["seconds"] > 0
    assert list(tmp_path.iterdir()) == []  # the temporary Parquet is removed


# --------------------------------------------------------------------------------------------
# One pass: pixel_metrics and the single-metric views, to 1e-9
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quant", [0.0, 2.0, 16.0])
def test_pixel_metrics_equals_references_to_1e9(quant: float) -> None:
    from raydiff.bench.metrics_data import reference_aupro

    rng = np.random.default_rng(11)
    masks = blob_masks(rng, 6, 40, 40, 3)
    maps = scored(rng, masks, 0.7)
    if quant:  # heavy ties shared by both classes
        maps = (np.round(maps * quant) / quant).astype(np.float32)
    y, s = (masks != 0).ravel(), maps.ravel()
    regions = np.stack([label_regions(m) for m in masks])
    res = pixel_metrics(maps, masks)
    assert res["p_auroc"] == pytest.approx(roc_auc_score(y, s), abs=EXACT)
    assert res["p_ap"] == pytest.approx(average_precision_score(y, s), abs=EXACT)
    assert res["aupro"] == pytest.approx(reference_aupro(maps, regions), abs=EXACT)
    assert res["aupro"] == pytest.approx(naive_aupro(maps, masks), abs=EXACT)
    assert res["n_pixels"] == maps.size and res["n_anomalous_pixels"] == y.sum()
    assert res["n_regions"] == regions.reshape(len(masks), -1).max(axis=1).sum()
    # the single-metric functions are views of the same computation
    assert pixel_auroc(maps, masks) == res["p_auroc"]
    assert pixel_ap(maps, masks) == res["p_ap"]
    assert aupro(maps, masks) == res["aupro"]
    for limit in (0.01, 0.05, 0.5, 1.0):
        assert pixel_metrics(maps, masks, fpr_limit=limit)["aupro"] == pytest.approx(
            reference_aupro(maps, regions, limit), abs=EXACT
        )


def test_fpr_limit_exactly_on_a_curve_point() -> None:
    masks = np.zeros((1, 1, 20), np.uint8)
    masks[0, 0, 10:] = 1
    maps = np.arange(20, dtype=np.float64)[None, None, ::-1].copy()  # normal pixels ranked first
    maps[0, 0, 12:15] = 30.0  # some anomalous pixels above everything
    x_at = 3 / 10  # the third normal pixel lands exactly on FPR 0.3
    assert x_at == 0.3
    assert aupro(maps, masks) == pytest.approx(naive_aupro(maps, masks), abs=EXACT)


def test_signed_zero_is_one_threshold() -> None:
    masks = np.zeros((1, 2, 4), np.uint8)
    masks[0, 0, :2] = 1
    maps = np.array([[[0.0, -0.0, -0.0, 0.0], [1.0, -1.0, 0.0, -0.0]]])
    y, s = masks.ravel() != 0, maps.ravel()
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(y, s), abs=EXACT)
    assert pixel_ap(maps, masks) == pytest.approx(average_precision_score(y, s), abs=EXACT)
    assert aupro(maps, masks) == pytest.approx(naive_aupro(maps, masks), abs=EXACT)


def test_parquet_path_equals_array_path(tmp_path: Path) -> None:
    truth = write_partitions(tmp_path, seed=4)
    table = compute_metrics(scan(tmp_path, "pixels"), scan(tmp_path, "images"))
    for row in table.iter_rows(named=True):
        t = truth[(row["dataset"], row["category"], row["variant"])]
        res = pixel_metrics(t["maps"], t["masks"])
        for ours, theirs in (
            ("p_auroc", "p_auroc"),
            ("p_ap", "p_ap"),
            ("aupro", "aupro"),
        ):
            assert row[ours] == pytest.approx(res[theirs], abs=1e-12)
        assert row["n_regions"] == res["n_regions"] and row["n_pixels"] == res["n_pixels"]


def test_pixel_curves_integrate_to_the_metrics() -> None:
    rng = np.random.default_rng(12)
    masks = blob_masks(rng, 3, 16, 16, 2)
    maps = np.round(scored(rng, masks) * 3) / 3
    from raydiff.metrics import _pixel_frame

    curve = pixel_curves(_pixel_frame(maps, masks))
    fpr = np.concatenate([[0.0], curve["fpr"].to_numpy()])
    tpr = np.concatenate([[0.0], curve["tpr"].to_numpy()])
    assert np.sum(np.diff(fpr) * 0.5 * (tpr[1:] + tpr[:-1])) == pytest.approx(pixel_auroc(maps, masks), abs=EXACT)
    recall = np.concatenate([[0.0], curve["recall"].to_numpy()])
    ap = np.sum(np.diff(recall) * curve["precision"].to_numpy())
    assert ap == pytest.approx(pixel_ap(maps, masks), abs=EXACT)
