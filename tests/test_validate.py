"""Validation: every error names the file and the fix; warnings for non-binary masks; counts table."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from datatrees import make_btad, make_generic, make_mvtec, make_visa, save_image, save_mask, truncate, write_visa_csv

from raydiff.data import load_mask, scan_dataset, validate_dataset
from raydiff.errors import DatasetError


def validate(kind: str, root: Path, **kw: object):  # noqa: ANN201
    return validate_dataset(scan_dataset(kind, root), root, **kw)


def fails(kind: str, root: Path, path: Path | str, needle: str) -> str:
    """Validation raises one DatasetError naming ``path``, containing ``needle`` and a fix."""
    with pytest.raises(DatasetError) as err:
        validate(kind, root)
    msg = str(err.value)
    assert msg.startswith(f"{path}: "), msg
    assert needle in msg, msg
    assert " Fix: " in msg, msg
    return msg


# --------------------------------------------------------------------------------------------
# Valid trees of every layout
# --------------------------------------------------------------------------------------------


def test_valid_mvtec_summary(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv", categories=("bottle", "grid"))
    s = validate("mvtec", root)
    table = s.table()
    assert table.columns == ["category", "split", "defect_type", "images", "masks", "nonbinary_masks", "channels"]
    assert table.filter(pl.col("category") == "bottle").select("split", "defect_type", "images", "masks").rows() == [
        ("test", "crack", 2, 2), ("test", "good", 2, 0), ("test", "scratch", 1, 1), ("train", "good", 3, 0),
    ]  # fmt: skip
    assert table["channels"].unique().to_list() == [3]
    assert int(table["images"].sum()) == 16 and s.binarised_masks == () and s.kind == "mvtec"
    assert "2 categories, 16 images" in s.describe()


@pytest.mark.parametrize(
    ("kind", "make", "images"),
    [("btad", make_btad, 12), ("visa", make_visa, 6), ("generic", make_generic, 13)],
)
def test_valid_other_layouts(tmp_path: Path, kind: str, make, images: int) -> None:  # noqa: ANN001
    root = make(tmp_path / kind)
    if kind == "visa":
        with pytest.warns(UserWarning, match="not binary"):  # VisA masks are label maps
            s = validate(kind, root)
    else:
        s = validate(kind, root)
    assert int(s.table()["images"].sum()) == images and s.kind == kind


def test_header_only_mode_is_faster_path(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv")
    truncate(root / "bottle" / "train" / "good" / "000.png", 0.9)
    validate("mvtec", root, decode=False)  # headers are intact, so this passes...
    fails("mvtec", root, root / "bottle" / "train" / "good" / "000.png", "cannot read the image")  # ...decoding does not


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_missing_root_and_category(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv", categories=("bottle", "grid"))
    manifest = scan_dataset("mvtec", root)
    with pytest.raises(DatasetError, match=f"{tmp_path / 'elsewhere'}: dataset folder does not exist.*Fix:"):
        validate_dataset(manifest, tmp_path / "elsewhere")
    shutil.rmtree(root / "grid")
    with pytest.raises(DatasetError, match=f"{root / 'grid'}: category folder does not exist.*Fix:"):
        validate_dataset(manifest, root)


def test_missing_train_good(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv")
    shutil.rmtree(root / "bottle" / "train")
    fails("mvtec", root, root / "bottle" / "train" / "good", "folder is missing")
    (root / "bottle" / "train" / "good").mkdir(parents=True)
    fails("mvtec", root, root / "bottle" / "train" / "good", "has no images")


def test_missing_train_ok_btad_and_generic(tmp_path: Path) -> None:
    root = make_btad(tmp_path / "btad", categories=("01",))
    shutil.rmtree(root / "01" / "train" / "ok")
    fails("btad", root, root / "01" / "train" / "ok", "no normal training images")
    gen = make_generic(tmp_path / "gen", n_good=1)  # the only normal image cannot be both train and test
    assert validate("generic", gen)
    shutil.rmtree(gen / "widget" / "good")
    fails("generic", gen, gen / "widget" / "good", "folder is missing")


def test_defective_image_without_mask(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv")
    (root / "bottle" / "ground_truth" / "crack" / "001_mask.png").unlink()
    msg = fails("mvtec", root, root / "bottle" / "test" / "crack" / "001.png", "defective image without a mask")
    assert str(root / "bottle" / "ground_truth" / "crack" / "001_mask.png") in msg


def test_mask_without_image(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv")
    extra = save_mask(root / "bottle" / "ground_truth" / "crack" / "007_mask.png")
    fails("mvtec", root, extra, "mask without an image: expected the image test/crack/007.<ext>")
    extra.unlink()
    misnamed = root / "bottle" / "ground_truth" / "crack" / "000.png"  # MVTec masks are <stem>_mask.png
    save_mask(misnamed)
    fails("mvtec", root, misnamed, "mask without an image")


def test_mask_without_image_other_layouts(tmp_path: Path) -> None:
    gen = make_generic(tmp_path / "gen")
    extra = save_mask(gen / "widget" / "masks" / "dent" / "zz.png")
    fails("generic", gen, extra, "mask without an image")
    btad = make_btad(tmp_path / "btad", categories=("01",))
    extra = save_mask(btad / "01" / "ground_truth" / "ko" / "0099.png")
    fails("btad", btad, extra, "expected the image test/ko/0099.<ext>")
    visa = make_visa(tmp_path / "visa")
    extra = save_mask(visa / "candle" / "Data" / "Masks" / "Anomaly" / "077.png", (24, 16))
    fails("visa", visa, extra, "no row of split_csv/1cls.csv lists it")


def test_visa_listed_files_missing(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa")
    mask = root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png"
    mask.unlink()
    fails("visa", root, mask, "mask file does not exist (listed in split_csv/1cls.csv)")
    root = make_visa(tmp_path / "visa2")
    image = root / "candle" / "Data" / "Images" / "Normal" / "0003.JPG"
    image.unlink()
    fails("visa", root, image, "image file does not exist (listed in split_csv/1cls.csv)")


def test_visa_anomaly_without_mask_and_no_train_rows(tmp_path: Path) -> None:
    root = make_visa(tmp_path / "visa")
    (root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    rows = [
        ["candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", ""],
        ["candle", "test", "anomaly", "candle/Data/Images/Anomaly/000.JPG", "candle/Data/Masks/Anomaly/000.png"],
        ["candle", "test", "anomaly", "candle/Data/Images/Anomaly/001.JPG", ""],
    ]
    csv_path = write_visa_csv(root, rows)
    fails("visa", root, root / "candle" / "Data" / "Images" / "Anomaly" / "001.JPG", "defective image without a mask")
    write_visa_csv(root, [["candle", "test", *r[2:]] for r in rows[:2]])
    fails("visa", root, csv_path, "no rows with split 'train' for object 'candle'")


def test_size_mismatch(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv", size=(16, 16))
    mask = save_mask(root / "bottle" / "ground_truth" / "scratch" / "000_mask.png", (16, 12))
    msg = fails("mvtec", root, mask, "mask is 16x12 but its image")
    assert "is 16x16" in msg


@pytest.mark.parametrize("target", ["train/good/001.png", "test/crack/000.png", "ground_truth/crack/001_mask.png"])
def test_truncated_file(tmp_path: Path, target: str) -> None:
    root = make_mvtec(tmp_path / "mv", size=(48, 48))
    path = truncate(root / "bottle" / target, 0.6)
    fails("mvtec", root, path, "cannot read the image")


def test_corrupt_and_non_image_files(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv")
    fake = root / "bottle" / "test" / "good" / "005.png"
    fake.write_bytes(b"\x89PNG not really")
    fails("mvtec", root, fake, "cannot read the image")
    fake.unlink()
    notes = root / "bottle" / "test" / "crack" / "notes.txt"
    notes.write_text("annotator comments")
    fails("mvtec", root, notes, "is not an image file (suffix '.txt')")
    notes.unlink()
    (root / "bottle" / "train" / "good" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored
    validate("mvtec", root)


def test_empty_category(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv")
    (root / "capsule" / "test").mkdir(parents=True)
    with pytest.raises(DatasetError, match=f"{root / 'capsule'}: category has no images.*Fix:"):
        validate("mvtec", root)


def test_mixed_channels(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv", mode="RGB")
    gray = save_image(root / "bottle" / "train" / "good" / "009.png", mode="L")
    msg = fails("mvtec", root, root / "bottle" / "test" / "crack" / "000.png", "mixes channel counts")
    assert str(gray) in msg


def test_manifest_without_columns(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="manifest: missing column.*Fix:"):
        validate_dataset(pl.DataFrame({"image_path": ["x"]}), tmp_path)


# --------------------------------------------------------------------------------------------
# Warnings: non-binary and empty masks
# --------------------------------------------------------------------------------------------


def test_non_binary_mask_warns_and_binarises(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv")
    soft = root / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    arr = np.zeros((16, 16), np.uint8)
    arr[2:6, 2:6], arr[6:8, 2:6] = 255, 128  # anti-aliased edge
    from PIL import Image

    Image.fromarray(arr).save(soft)
    save_mask(root / "bottle" / "ground_truth" / "crack" / "001_mask.png", value=1)  # 0/1 is binary
    with pytest.warns(UserWarning, match=f"{soft}: mask is not binary.*1 such mask"):
        s = validate("mvtec", root)
    assert s.binarised_masks == (str(soft),)
    row = s.table().filter((pl.col("category") == "bottle") & (pl.col("defect_type") == "crack"))
    assert row["nonbinary_masks"].to_list() == [1]
    np.testing.assert_array_equal(load_mask(soft, 16), (arr != 0).astype(np.uint8))


def test_empty_mask_warns(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mv")
    empty = save_mask(root / "bottle" / "ground_truth" / "scratch" / "000_mask.png", value=0)
    with pytest.warns(UserWarning, match=f"{empty}: mask of a defective image is empty"):
        s = validate("mvtec", root)
    assert s.empty_masks == (str(empty),)
