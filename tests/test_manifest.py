"""Layout parsers (MVTec, VisA, BTAD, generic) on tiny generated trees; deterministic hold-out."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from datatrees import make_btad, make_generic, make_mvtec, make_visa, save_image, write_visa_csv

from raydiff.data import MANIFEST_SCHEMA, assign_holdout, scan_dataset
from raydiff.data.manifest import infer_kind, split_good
from raydiff.data.splits import holdout_count
from raydiff.errors import DatasetError

COLUMNS = ["dataset", "category", "split", "image_path", "mask_path", "label", "defect_type", "image_id"]


def check_frame(df: pl.DataFrame) -> None:
    """Schema, order, sorting and path invariants every layout shares."""
    assert df.columns == COLUMNS
    assert df.schema == pl.Schema(MANIFEST_SCHEMA)
    assert df["label"].dtype == pl.Int8 and df["mask_path"].dtype == pl.String
    assert df.equals(df.sort(["category", "split", "image_id"]))
    for row in df.iter_rows(named=True):
        assert Path(row["image_path"]).is_absolute() and Path(row["image_path"]).is_file()
        assert (row["mask_path"] is None) == (row["label"] == 0)
        if row["mask_path"] is not None:
            assert Path(row["mask_path"]).is_absolute() and Path(row["mask_path"]).is_file()
        assert (row["defect_type"] == "good") == (row["label"] == 0)
        # image_id is the path relative to the category folder
        assert row["image_path"].endswith("/" + row["category"] + "/" + row["image_id"])


def test_mvtec(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv", categories=("bottle", "grid"))
    df = scan_dataset("mvtec", root)
    check_frame(df)
    assert df["dataset"].unique().to_list() == ["mvtec"]
    assert df["category"].unique().sort().to_list() == ["bottle", "grid"]
    bottle = df.filter(pl.col("category") == "bottle")
    assert bottle["image_id"].to_list() == [
        "test/crack/000.png", "test/crack/001.png", "test/good/000.png", "test/good/001.png",
        "test/scratch/000.png", "train/good/000.png", "train/good/001.png", "train/good/002.png",
    ]  # fmt: skip
    assert bottle["split"].to_list() == ["test"] * 5 + ["train"] * 3
    assert bottle["label"].to_list() == [1, 1, 0, 0, 1, 0, 0, 0]
    assert bottle["defect_type"].to_list() == ["crack", "crack", "good", "good", "scratch", "good", "good", "good"]
    crack = bottle.row(0, named=True)
    assert crack["mask_path"] == str(root / "bottle" / "ground_truth" / "crack" / "000_mask.png")


def test_mvtec_category_filter_and_name(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv", categories=("bottle", "grid"))
    df = scan_dataset("mvtec", root, categories=("grid",), dataset_name="textures")
    assert df["category"].unique().to_list() == ["grid"]
    assert df["dataset"].unique().to_list() == ["textures"]
    (root / "_SUCCESS").write_text("{}")  # marker files and hidden folders are not categories
    (root / ".tmp-x").mkdir()
    assert scan_dataset("mvtec", root)["category"].unique().sort().to_list() == ["bottle", "grid"]


def test_mvtec_missing_mask_gives_null(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv")
    (root / "bottle" / "ground_truth" / "crack" / "001_mask.png").unlink()
    df = scan_dataset("mvtec", root)
    row = df.filter(pl.col("image_id") == "test/crack/001.png").row(0, named=True)
    assert row["label"] == 1 and row["mask_path"] is None


def test_visa(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa", categories=("candle", "pcb1"))
    df = scan_dataset("visa", root)
    check_frame(df)
    candle = df.filter(pl.col("category") == "candle")
    assert candle["image_id"].to_list() == [
        "Data/Images/Anomaly/000.JPG", "Data/Images/Anomaly/001.JPG", "Data/Images/Normal/0003.JPG",
        "Data/Images/Normal/0000.JPG", "Data/Images/Normal/0001.JPG", "Data/Images/Normal/0002.JPG",
    ]  # fmt: skip
    assert candle["split"].to_list() == ["test"] * 3 + ["train"] * 3
    assert candle["defect_type"].to_list() == ["anomaly", "anomaly"] + ["good"] * 4
    assert candle["label"].to_list() == [1, 1, 0, 0, 0, 0]
    assert candle["mask_path"][0] == str(root / "candle" / "Data" / "Masks" / "Anomaly" / "000.png")
    assert scan_dataset("visa", root, categories=("pcb1",))["category"].unique().to_list() == ["pcb1"]


@pytest.mark.parametrize(
    ("rows", "header", "needle"),
    [
        ([], ("object", "split", "label", "image"), "missing column(s) mask"),
        ([["candle", "train", "weird", "candle/a.JPG", ""]], None, "label 'weird'"),
        ([["candle", "val", "normal", "candle/a.JPG", ""]], None, "split 'val'"),
        ([["candle", "train", "normal", "pcb1/a.JPG", ""]], None, "not inside the object folder"),
    ],
)
def test_visa_csv_errors(tmp_path: Path, rows: list[list[str]], header: tuple[str, ...] | None, needle: str) -> None:
    csv_path = write_visa_csv(tmp_path, rows, *([header] if header else []))
    with pytest.raises(DatasetError, match="Fix:") as err:
        scan_dataset("visa", tmp_path)
    assert str(csv_path) in str(err.value) and needle in str(err.value)


def test_visa_missing_csv_and_unknown_category(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"1cls\.csv: VisA split file not found\. Fix:"):
        scan_dataset("visa", tmp_path)
    root = make_visa(tmp_path / "visa")
    with pytest.raises(DatasetError, match="category 'pcb9' has no rows.*Fix:"):
        scan_dataset("visa", root, categories=("pcb9",))


def test_btad(tmp_path: Path) -> None:
    root = make_btad(tmp_path / "btad", categories=("01", "02"))
    (root / "02" / "ground_truth" / "ko" / "0001.png").unlink()  # a .bmp mask is accepted too
    save_image(root / "02" / "ground_truth" / "ko" / "0001.bmp", mode="L")
    df = scan_dataset("btad", root)
    check_frame(df)
    one = df.filter(pl.col("category") == "01")
    assert one["image_id"].to_list() == [
        "test/ko/0000.bmp", "test/ko/0001.bmp", "test/ok/0000.bmp", "test/ok/0001.bmp",
        "train/ok/0000.bmp", "train/ok/0001.bmp",
    ]  # fmt: skip
    assert one["defect_type"].to_list() == ["ko", "ko", "good", "good", "good", "good"]
    assert one["mask_path"][0] == str(root / "01" / "ground_truth" / "ko" / "0000.png")
    two = df.filter((pl.col("category") == "02") & (pl.col("label") == 1))
    assert two["mask_path"].to_list()[1].endswith("02/ground_truth/ko/0001.bmp")


def test_generic(tmp_path: Path) -> None:
    root = make_generic(tmp_path / "gen", n_good=10)
    df = scan_dataset("generic", root, test_fraction=0.2, seed=3)
    check_frame(df)
    good = df.filter(pl.col("label") == 0)
    assert good.group_by("split").len().sort("split").rows() == [("test", 2), ("train", 8)]
    bad = df.filter(pl.col("label") == 1).sort("image_id")
    assert bad["image_id"].to_list() == ["defect/d0.png", "defect/d1.png", "defect/dent/x0.jpg"]
    assert bad["defect_type"].to_list() == ["defect", "defect", "dent"]
    assert bad["split"].unique().to_list() == ["test"]
    assert bad["mask_path"].to_list() == [
        str(root / "widget" / "masks" / "d0.png"), str(root / "widget" / "masks" / "d1.png"),
        str(root / "widget" / "masks" / "dent" / "x0_mask.png"),
    ]  # fmt: skip
    # deterministic, and a function of the seed
    assert scan_dataset("generic", root, test_fraction=0.2, seed=3).equals(df)
    test_sets = {
        tuple(scan_dataset("generic", root, seed=s).filter((pl.col("split") == "test") & (pl.col("label") == 0))["image_id"])
        for s in range(6)
    }
    assert len(test_sets) > 1
    assert scan_dataset("generic", root, test_fraction=0.0).filter(pl.col("label") == 0)["split"].unique().to_list() == ["train"]


def test_split_good_counts() -> None:
    ids = [f"good/{i}.png" for i in range(10)]
    assert len(split_good(ids, 0.2)) == 2
    assert len(split_good(ids, 0.01)) == 1  # at least one normal test image
    assert len(split_good(ids, 0.99)) == 9  # at least one normal training image
    assert split_good(ids[:1], 0.5) == set()
    # adding images elsewhere does not move the already-chosen ones out of the order
    assert split_good(ids, 0.3, seed=1) == split_good(list(reversed(ids)), 0.3, seed=1)


@pytest.mark.parametrize("kind", ["mvtec", "btad", "generic", "visa"])
def test_missing_root(tmp_path: Path, kind: str) -> None:
    with pytest.raises(DatasetError, match=r"nope: dataset folder does not exist\. Fix:"):
        scan_dataset(kind, tmp_path / "nope")


def test_missing_and_empty_category(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv")
    with pytest.raises(DatasetError, match="capsule: category folder does not exist.*found under the root: bottle.*Fix:"):
        scan_dataset("mvtec", root, categories=("capsule",))
    (root / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"empty: category has no images\. Fix:"):
        scan_dataset("mvtec", root)
    with pytest.raises(DatasetError, match="no category folders found.*Fix:"):
        scan_dataset("btad", tmp_path / "mv" / "bottle" / "train" / "good")


def test_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown layout 'coco'.*Fix: use one of: mvtec, visa, btad, generic"):
        scan_dataset("coco", tmp_path)


def test_infer_kind(tmp_path: Path) -> None:
    assert infer_kind(scan_dataset("mvtec", make_mvtec(tmp_path / "a"), dataset_name="x")) == "mvtec"
    assert infer_kind(scan_dataset("btad", make_btad(tmp_path / "b"), dataset_name="x")) == "btad"
    assert infer_kind(scan_dataset("visa", make_visa(tmp_path / "c"), dataset_name="x")) == "visa"
    assert infer_kind(scan_dataset("generic", make_generic(tmp_path / "d"), dataset_name="x")) == "generic"


# --------------------------------------------------------------------------------------------
# Hold-out
# --------------------------------------------------------------------------------------------


def manifest_with_train(tmp_path: Path, n_train: int, categories: tuple[str, ...] = ("a", "b")) -> pl.DataFrame:
    root = make_mvtec(tmp_path / f"mv{n_train}", categories=categories, n_train=n_train, n_good=1, defects={"crack": 1}, size=(4, 4))
    return scan_dataset("mvtec", root)


@pytest.mark.parametrize(
    ("n", "fraction", "min_count", "expected"),
    [(40, 0.1, 2, 4), (40, 0.1, 6, 6), (5, 0.1, 4, 4), (3, 0.1, 4, 2), (1, 0.5, 4, 0), (0, 0.5, 4, 0), (40, 0.0, 4, 0)],
)
def test_holdout_count(n: int, fraction: float, min_count: int, expected: int) -> None:
    assert holdout_count(n, fraction, min_count) == expected


def test_assign_holdout(tmp_path: Path) -> None:
    df = manifest_with_train(tmp_path, 20)
    out = assign_holdout(df, fraction=0.2, min_count=2, seed=7)
    check_frame(out)
    assert out.height == df.height
    per = out.group_by("category", "split").len().sort("category", "split").rows()
    assert per == [("a", "holdout", 4), ("a", "test", 2), ("a", "train", 16), ("b", "holdout", 4), ("b", "test", 2), ("b", "train", 16)]
    # only normal training rows move; test rows are untouched
    hold = out.filter(pl.col("split") == "holdout")
    assert hold["label"].unique().to_list() == [0] and hold["image_id"].str.starts_with("train/good/").all()
    assert out.filter(pl.col("split") == "test").equals(df.filter(pl.col("split") == "test"))
    # deterministic: same seed → same rows, whatever the row order; idempotent; seed matters
    again = assign_holdout(df.sample(fraction=1.0, shuffle=True, seed=1), 0.2, 2, 7)
    assert again.equals(out)
    assert assign_holdout(out, 0.2, 2, 7).equals(out)
    picks = {tuple(assign_holdout(df, 0.2, 2, s).filter(pl.col("split") == "holdout")["image_id"]) for s in range(5)}
    assert len(picks) > 1
    # the choice within a category does not depend on the other categories being present
    only_a = assign_holdout(df.filter(pl.col("category") == "a"), 0.2, 2, 7)
    assert only_a.equals(out.filter(pl.col("category") == "a"))


def test_assign_holdout_keeps_one_training_image(tmp_path: Path) -> None:
    out = assign_holdout(manifest_with_train(tmp_path, 3, categories=("a",)), fraction=0.1, min_count=10, seed=0)
    assert out.group_by("split").len().sort("split").rows() == [("holdout", 2), ("test", 2), ("train", 1)]
    single = assign_holdout(manifest_with_train(tmp_path, 1, categories=("a",)), fraction=0.5, min_count=4, seed=0)
    assert "holdout" not in single["split"].to_list()
