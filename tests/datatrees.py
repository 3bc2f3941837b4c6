"""Tiny dataset trees of every layout, written with PIL into a test's tmp_path (no shared data)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def save_image(path: Path, size: tuple[int, int] = (16, 16), mode: str = "RGB", seed: int = 0) -> Path:
    """A random-noise image of ``size`` (width, height) in ``mode``; format from the suffix."""
    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w) if mode == "L" else (h, w, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)
    return path


def save_mask(path: Path, size: tuple[int, int] = (16, 16), value: int = 255, box: tuple[int, int, int, int] | None = None) -> Path:
    """A grayscale mask of ``size`` with ``value`` inside ``box`` (x0, y0, x1, y1), 0 elsewhere."""
    w, h = size
    x0, y0, x1, y1 = box or (w // 4, h // 4, w // 2, h // 2)
    arr = np.zeros((h, w), np.uint8)
    arr[y0:y1, x0:x1] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="L").save(path)
    return path


def make_mvtec(
    root: Path,
    categories: tuple[str, ...] = ("bottle",),
    n_train: int = 3,
    n_good: int = 2,
    defects: dict[str, int] | None = None,
    size: tuple[int, int] = (16, 16),
    mode: str = "RGB",
) -> Path:
    """CAT/train/good, CAT/test/good, CAT/test/<defect>, CAT/ground_truth/<defect>/NNN_mask.png."""
    defects = {"crack": 2, "scratch": 1} if defects is None else defects
    for c, cat in enumerate(categories):
        for i in range(n_train):
            save_image(root / cat / "train" / "good" / f"{i:03d}.png", size, mode, seed=100 * c + i)
        for i in range(n_good):
            save_image(root / cat / "test" / "good" / f"{i:03d}.png", size, mode, seed=100 * c + 50 + i)
        for defect, n in defects.items():
            for i in range(n):
                save_image(root / cat / "test" / defect / f"{i:03d}.png", size, mode, seed=100 * c + 70 + i)
                save_mask(root / cat / "ground_truth" / defect / f"{i:03d}_mask.png", size)
    return root


def make_btad(root: Path, categories: tuple[str, ...] = ("01", "02"), n: int = 2, size: tuple[int, int] = (16, 16)) -> Path:
    """CAT/train/ok, CAT/test/ok|ko, CAT/ground_truth/ko (images .bmp for 01, .png otherwise)."""
    for c, cat in enumerate(categories):
        ext = ".bmp" if cat == "01" else ".png"
        for i in range(n):
            save_image(root / cat / "train" / "ok" / f"{i:04d}{ext}", size, seed=10 * c + i)
            save_image(root / cat / "test" / "ok" / f"{i:04d}{ext}", size, seed=10 * c + 5 + i)
            save_image(root / cat / "test" / "ko" / f"{i:04d}{ext}", size, seed=10 * c + 7 + i)
            save_mask(root / cat / "ground_truth" / "ko" / f"{i:04d}.png", size)
    return root


def make_visa(root: Path, categories: tuple[str, ...] = ("candle",), size: tuple[int, int] = (24, 16)) -> Path:
    """ROOT/split_csv/1cls.csv + CAT/Data/Images/{Normal,Anomaly}/*.JPG + CAT/Data/Masks/Anomaly/*.png.

    Per category: 3 normal train, 1 normal test, 2 anomaly test; masks are label maps (0, 1, 2).
    """
    rows = []
    for c, cat in enumerate(categories):
        for i in range(4):
            rel = f"{cat}/Data/Images/Normal/{i:04d}.JPG"
            save_image(root / rel, size, seed=10 * c + i)
            rows.append([cat, "train" if i < 3 else "test", "normal", rel, ""])
        for i in range(2):
            rel = f"{cat}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{cat}/Data/Masks/Anomaly/{i:03d}.png"
            save_image(root / rel, size, seed=10 * c + 5 + i)
            save_mask(root / mrel, size, value=i + 1)  # VisA masks are label maps
            rows.append([cat, "test", "anomaly", rel, mrel])
    write_visa_csv(root, rows)
    return root


def write_visa_csv(root: Path, rows: list[list[str]], header: tuple[str, ...] = ("object", "split", "label", "image", "mask")) -> Path:
    path = root / "split_csv" / "1cls.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_generic(root: Path, categories: tuple[str, ...] = ("widget",), n_good: int = 10, size: tuple[int, int] = (16, 16)) -> Path:
    """CAT/good/*, CAT/defect/*.png (+ masks/<stem>.png), CAT/defect/dent/* (+ masks/dent/<stem>_mask.png)."""
    for c, cat in enumerate(categories):
        for i in range(n_good):
            save_image(root / cat / "good" / f"g{i:02d}.png", size, seed=100 * c + i)
        for i in range(2):
            save_image(root / cat / "defect" / f"d{i}.png", size, seed=100 * c + 50 + i)
            save_mask(root / cat / "masks" / f"d{i}.png", size)
        save_image(root / cat / "defect" / "dent" / "x0.jpg", size, seed=100 * c + 60)
        save_mask(root / cat / "masks" / "dent" / "x0_mask.png", size)
    return root


def make_mvtec_ad2(
    root: Path,
    categories: tuple[str, ...] = ("can",),
    n_train: int = 3,
    n_val: int = 2,
    n_private: int = 2,
    size: tuple[int, int] = (24, 16),
    mode: str = "RGB",
) -> Path:
    """MVTec AD 2's folders and file names (raydiff.data.manifest, layout ``mvtec-ad2``):
    CAT/train/good/NNN_regular.png, CAT/validation/good/NNN_regular.png,
    CAT/test_public/good|bad/NNN_<lighting>.png (lighting ``regular`` and ``overexposed`` /
    ``shift_1``), CAT/test_public/ground_truth/bad/NNN_<lighting>_mask.png (0 / 255),
    CAT/test_private/NNN_regular.png and CAT/test_private_mixed/NNN_mixed.png."""
    for c, cat in enumerate(categories):
        d = root / cat
        for i in range(n_train):
            save_image(d / "train" / "good" / f"{i:03d}_regular.png", size, mode, seed=100 * c + i)
        for i in range(n_val):
            save_image(d / "validation" / "good" / f"{i:03d}_regular.png", size, mode, seed=100 * c + 20 + i)
        for j, light in enumerate(("regular", "overexposed")):
            save_image(d / "test_public" / "good" / f"000_{light}.png", size, mode, seed=100 * c + 40 + j)
        for j, light in enumerate(("regular", "shift_1")):
            save_image(d / "test_public" / "bad" / f"000_{light}.png", size, mode, seed=100 * c + 50 + j)
            save_mask(d / "test_public" / "ground_truth" / "bad" / f"000_{light}_mask.png", size)
        for i in range(n_private):
            save_image(d / "test_private" / f"{i:03d}_regular.png", size, mode, seed=100 * c + 60 + i)
            save_image(d / "test_private_mixed" / f"{i:03d}_mixed.png", size, mode, seed=100 * c + 80 + i)
    return root


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its bytes (a download that stopped half-way)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
