"""The one preprocessing path: range, size, channels, antialiasing, nearest masks, non-square fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from datatrees import make_mvtec, save_image, truncate
from PIL import Image, ImageFile

from raydiff.data import dataset_channels, load_image, load_mask, scan_dataset
from raydiff.errors import DatasetError


def save(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode=mode).save(path)
    return path


def test_range_shape_dtype(tmp_path: Path) -> None:
    p = save_image(tmp_path / "x.png", (20, 12), "RGB")
    for channels in (1, 3):
        x = load_image(p, 8, channels)
        assert x.shape == (channels, 8, 8) and x.dtype == np.float32 and x.flags.c_contiguous
        assert -1.0 <= x.min() and x.max() <= 1.0
    # exact scaling: 0 → -1, 255 → 1, 51 → 51/127.5 - 1
    arr = np.zeros((4, 4, 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = 0, 255, 51
    x = load_image(save(tmp_path / "c.png", arr), 4, 3)
    np.testing.assert_allclose(x[:, 0, 0], [-1.0, 1.0, 51 / 127.5 - 1], atol=1e-6)


def test_channel_conversion(tmp_path: Path) -> None:
    gray = save_image(tmp_path / "g.png", (8, 8), "L")
    x = load_image(gray, 8, 3)
    np.testing.assert_array_equal(x[0], x[1])
    np.testing.assert_array_equal(x[0], x[2])
    np.testing.assert_allclose(x[0], np.asarray(Image.open(gray), np.float32) / 127.5 - 1)
    rgb = save_image(tmp_path / "c.png", (8, 8), "RGB")
    arr = np.asarray(Image.open(rgb)).astype(np.float64)
    luma = arr[..., 0] * 299 / 1000 + arr[..., 1] * 587 / 1000 + arr[..., 2] * 114 / 1000  # ITU-R 601-2
    np.testing.assert_allclose((load_image(rgb, 8, 1)[0] + 1) * 127.5, luma, atol=0.51)


def test_sixteen_bit_gray(tmp_path: Path) -> None:
    arr = np.array([[0, 65535], [257 * 100, 257 * 200]], dtype=np.uint16)
    p = tmp_path / "d.png"
    Image.fromarray(arr).save(p)
    x = load_image(p, 2, 1)
    np.testing.assert_allclose(x[0], np.array([[0, 255], [100, 200]]) / 127.5 - 1, atol=1e-6)


def test_bilinear_antialias_matches_torch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    x = load_image(save(tmp_path / "n.png", arr), 16, 3)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(arr).permute(2, 0, 1)[None].double(), size=(16, 16), mode="bilinear", antialias=True, align_corners=False
    )[0].numpy()
    np.testing.assert_allclose((x + 1) * 127.5, ref, atol=1.01)  # PIL rounds to uint8
    # a 1-px checkerboard averages to mid-grey when antialiased (plain bilinear would alias)
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    y = load_image(save(tmp_path / "b.png", board), 8, 1)
    assert np.abs(y).max() < 0.02


def three_bands(width: int = 40, height: int = 20) -> np.ndarray:
    """Red left quarter, green central half, blue right quarter."""
    arr = np.zeros((height, width, 3), np.uint8)
    q = width // 4
    arr[:, :q, 0] = 255
    arr[:, q : width - q, 1] = 255
    arr[:, width - q :, 2] = 255
    return arr


def test_non_square_resize_vs_center_crop(tmp_path: Path) -> None:
    p = save(tmp_path / "w.png", three_bands())
    squashed = load_image(p, 8, 3, "resize")
    assert squashed[0, :, 0].min() > 0.9 and squashed[2, :, -1].min() > 0.9  # all three bands kept
    assert squashed[1, :, 4].min() > 0.9
    cropped = load_image(p, 8, 3, "center-crop")  # the central 20x20 is the green band
    np.testing.assert_allclose(cropped[1], 1.0)
    np.testing.assert_allclose(cropped[[0, 2]], -1.0)
    tall = save(tmp_path / "t.png", np.ascontiguousarray(three_bands().transpose(1, 0, 2)))
    np.testing.assert_allclose(load_image(tall, 8, 3, "center-crop")[1], 1.0)


def test_mask_nearest_binary(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    raw = (rng.random((32, 32)) < 0.3).astype(np.uint8) * rng.choice([1, 2, 128, 255], (32, 32)).astype(np.uint8)
    p = save(tmp_path / "m.png", raw)
    for size in (7, 13, 32, 64):
        m = load_mask(p, size)
        assert m.shape == (size, size) and m.dtype == np.uint8
        assert set(np.unique(m).tolist()) <= {0, 1}
    # nearest 2x upsampling repeats pixels exactly; binarisation is != 0
    np.testing.assert_array_equal(load_mask(p, 64), np.repeat(np.repeat(raw != 0, 2, 0), 2, 1).astype(np.uint8))
    np.testing.assert_array_equal(load_mask(p, 32), (raw != 0).astype(np.uint8))
    # nearest 2x downsampling picks one source pixel per 2x2 block (no blur)
    down = load_mask(p, 16)
    assert any(np.array_equal(down, (raw[i::2, j::2] != 0).astype(np.uint8)) for i in (0, 1) for j in (0, 1))


def test_mask_modes(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 255  # opaque everywhere: alpha must not count as defect
    rgba[1, 2, 0] = 200
    m = load_mask(save(tmp_path / "a.png", rgba, "RGBA"), 4)
    assert m.sum() == 1 and m[1, 2] == 1
    one = Image.new("1", (4, 4))
    one.putpixel((3, 0), 1)
    one.save(tmp_path / "b.png")
    assert load_mask(tmp_path / "b.png", 4)[0, 3] == 1 and load_mask(tmp_path / "b.png", 4).sum() == 1


def test_mask_center_crop_aligned_with_image(tmp_path: Path) -> None:
    arr = np.zeros((20, 40), np.uint8)
    arr[:, 10:30] = 255  # the part that survives the centre crop
    img = save(tmp_path / "i.png", arr)
    mask = save(tmp_path / "m.png", arr)
    np.testing.assert_array_equal(load_mask(mask, 8, "center-crop"), 1)
    np.testing.assert_allclose(load_image(img, 8, 1, "center-crop"), 1.0)
    squashed = load_mask(mask, 8, "resize")
    assert squashed[:, 0].sum() == 0 and squashed[:, 4].all()


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_truncated_file_raises(tmp_path: Path, fmt: str) -> None:
    p = truncate(save_image(tmp_path / f"t.{fmt}", (64, 64)), 0.5)
    for load in (lambda: load_image(p, 8, 3), lambda: load_mask(p, 8)):
        with pytest.raises(DatasetError, match="cannot read the image.*Fix: re-export or replace") as err:
            load()
        assert str(p) in str(err.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_unreadable_and_missing(tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(DatasetError, match=f"{bad}: cannot read the image.*Fix:"):
        load_image(bad, 8)
    with pytest.raises(DatasetError, match="gone.png: file does not exist.*Fix:"):
        load_mask(tmp_path / "gone.png", 8)


def test_truncated_images_setting_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = save_image(tmp_path / "ok.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DatasetError, match="LOAD_TRUNCATED_IMAGES.*Fix:"):
        load_image(p, 8)


def test_dataset_channels(tmp_path: Path) -> None:
    rgb = scan_dataset("mvtec", make_mvtec(tmp_path / "rgb", mode="RGB"))
    gray = scan_dataset("mvtec", make_mvtec(tmp_path / "gray", mode="L"))
    assert dataset_channels(rgb, "auto") == 3 and dataset_channels(gray, "auto") == 1
    assert dataset_channels(rgb, "gray") == 1 and dataset_channels(gray, "rgb") == 3
    both = pl.concat([rgb, gray.with_columns(pl.lit("grid").alias("category"))])
    with pytest.raises(DatasetError, match="is RGB while .* is grayscale.*Fix:.*dataset.channels"):
        dataset_channels(both, "auto")
    assert dataset_channels(both, "rgb") == 3
