"""Dataset validation before any work starts: the first problem raises one clear error.

``validate_dataset(manifest, root)`` checks, in this order, and raises ``DatasetError``
("<file>: <what is wrong> Fix: <what to do>") on the first problem found:

1. the root and every category folder exist; every category has normal training images
   (``train/good``, ``train/ok``, ``good/`` or VisA train rows);
2. the layout's class folders hold only image files, every mask file belongs to an image,
   every defective image has a mask, every listed file exists;
3. every image and mask decodes completely (truncated/corrupt files fail here; ``decode=False``
   reads headers only), each mask has its image's size;
4. a category does not mix grayscale and colour images.

Non-binary masks (values other than {0, 1} or {0, 255}, e.g. VisA's label maps) and empty
masks of defective images are not errors: one ``warnings.warn`` per category names the first
file and the count, the summary lists them all, and ``load_mask`` binarises (!= 0).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from raydiff.data.images import mask_array, mode_channels, open_image, read_header
from raydiff.data.manifest import (
    LAYOUTS,
    MANIFEST_SCHEMA,
    VISA_CSV,
    expected_mask,
    infer_kind,
    is_ignored,
    is_image_file,
    layout_dirs,
    list_files,
)
from raydiff.errors import DatasetError

_BINARY_SETS = (frozenset({0, 1}), frozenset({0, 255}))
_TRAIN_DIR = {"mvtec": "train/good", "btad": "train/ok", "generic": "good", "mvtec-ad2": "train/good"}
#: Lossy formats: compression ringing around a defect survives binarising (!= 0) as false defect pixels.
LOSSY_MASK_SUFFIXES = frozenset({".jpg", ".jpeg"})
#: ``dataset.image_size`` this many times the largest side of a category's images is warned about.
UPSCALE_WARNING = 8
#: Per layout, the folders under a category whose only content may be the named class folders.
_CLASS_PARENTS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "mvtec": {"train": ("good",), "test": None, "ground_truth": None},
    "btad": {"train": ("ok",), "test": ("ok", "ko"), "ground_truth": ("ko",)},
    "mvtec-ad2": {"train": ("good",), "validation": ("good",), "test_public": ("good", "bad", "ground_truth"),
                  "test_public/ground_truth": ("bad",)},
}


@dataclass(frozen=True)
class FileInfo:
    """What validation learned about one manifest row (an image and its optional mask)."""

    channels: int
    size: tuple[int, int]  # (width, height)
    mask_binary: bool = True
    mask_empty: bool = False


@dataclass(frozen=True)
class ValidationSummary:
    """Result of a successful validation.

    ``counts``: one row per (category, split, defect_type) with columns ``images``, ``masks``
    (rows with a mask) and ``nonbinary_masks``. ``channels``: (category, 1 or 3) pairs.
    ``binarised_masks`` / ``empty_masks``: absolute paths of masks that were warned about.
    """

    root: str
    kind: str
    counts: pl.DataFrame
    channels: tuple[tuple[str, int], ...]
    sizes: tuple[tuple[str, str], ...]
    binarised_masks: tuple[str, ...] = ()
    empty_masks: tuple[str, ...] = ()

    def table(self) -> pl.DataFrame:
        """Counts per category / split / defect_type (polars), sorted, with the channel count."""
        ch = pl.DataFrame(list(self.channels), schema={"category": pl.String, "channels": pl.Int8}, orient="row")
        return self.counts.join(ch, on="category", how="left").sort(["category", "split", "defect_type"])

    def describe(self) -> str:
        """One line: categories, images per split, channels, binarised masks."""
        c = self.counts
        per_split = c.group_by("split").agg(pl.col("images").sum()).sort("split")
        splits = ", ".join(f"{s} {n}" for s, n in per_split.iter_rows())
        defective = int(c.filter(pl.col("defect_type") != "good")["images"].sum())
        modes = ", ".join(
            f"{cat} {'gray' if n == 1 else 'RGB'} {size}" for (cat, n), (_, size) in zip(self.channels, self.sizes)
        )
        n_cat = len(self.channels)
        return (
            f"{self.kind} layout, {n_cat} categor{'y' if n_cat == 1 else 'ies'}, {int(c['images'].sum())} images "
            f"({splits}; {defective} defective); {modes}; {len(self.binarised_masks)} non-binary masks binarised"
        )


# --------------------------------------------------------------------------------------------
# 1-2. Folders and files
# --------------------------------------------------------------------------------------------


def _check_columns(manifest: pl.DataFrame) -> None:
    missing = [c for c in MANIFEST_SCHEMA if c not in manifest.columns]
    if missing:
        raise DatasetError("manifest", f"missing column(s) {', '.join(missing)}.", "build it with scan_dataset().")


def _check_training_images(rows: pl.DataFrame, kind: str, cat_dir: Path, category: str) -> None:
    if rows.filter(pl.col("split").is_in(["train", "holdout"])).height:
        return
    if kind == "visa":
        raise DatasetError(
            cat_dir.parent / VISA_CSV,
            f"no rows with split 'train' for object '{category}'.",
            "use the complete VisA split_csv/1cls.csv.",
        )
    train_dir = cat_dir / _TRAIN_DIR[kind]
    what = "has no images" if train_dir.is_dir() else "folder is missing"
    raise DatasetError(
        train_dir,
        f"{what}: category '{category}' has no normal training images.",
        f"put the normal training images in {_TRAIN_DIR[kind]}/ (or remove the category).",
    )


def _image_owner_hint(kind: str, mask: Path) -> str:
    stem = mask.stem.removesuffix("_mask") if kind in ("mvtec", "generic", "mvtec-ad2") else mask.stem
    if kind == "mvtec":
        return f"expected the image test/{mask.parent.name}/{stem}.<ext>"
    if kind == "mvtec-ad2":
        return f"expected the image test_public/bad/{stem}.<ext>"
    if kind == "btad":
        return f"expected the image test/ko/{stem}.<ext>"
    if kind == "generic":
        return f"expected the image defect/.../{stem}.<ext> with the same sub-folder"
    return f"no row of {VISA_CSV} lists it as a mask"


def _refuse_broken_link(p: Path) -> None:
    if p.is_symlink() and not p.exists():
        raise DatasetError(p, f"is a broken symbolic link (to {os.readlink(p)}): it would be skipped.",
                           "fix the link or remove it.")


def _check_inside_root(manifest: pl.DataFrame, root: Path) -> list[str]:
    """Every image and mask, links followed, lies under ``root`` (nothing outside the dataset
    root is read); returns the images' resolved paths (for the leakage check)."""
    real_root = root.resolve()
    resolved = []
    for image, mask in zip(manifest["image_path"].to_list(), manifest["mask_path"].to_list(), strict=True):
        for path in (image, mask):
            if path is None:
                continue
            real = Path(path).resolve()
            if not real.is_relative_to(real_root):
                raise DatasetError(path, f"is a symbolic link to {real}, outside the dataset root {real_root}: "
                                   "nothing outside the root is read.",
                                   "copy the file into the dataset folder instead of linking it.")
        resolved.append(str(Path(image).resolve()))
    return resolved


def _check_entries(folder: Path, allow_dirs: bool) -> None:
    """No entry of a folder is skipped silently: broken links and (unless allowed) sub-folders fail."""
    for p in sorted(folder.iterdir()):
        if is_ignored(p):
            continue
        _refuse_broken_link(p)
        if p.is_dir() and not allow_dirs:
            n = sum(1 for q in p.rglob("*") if q.is_file() and is_image_file(q))
            raise DatasetError(
                p,
                f"is a sub-folder of {folder.name}/ with {n} image(s): only the files directly in "
                f"{folder.name}/ are read, so they would be skipped.",
                f"move its images up into {folder.name}/, or move the folder out of the dataset.",
            )


def _check_class_parents(kind: str, cat_dir: Path) -> None:
    """Nothing beside the class folders (``train/`` holds only ``good/`` in MVTec, ...)."""
    for parent, allowed in _CLASS_PARENTS.get(kind, {}).items():
        folder = cat_dir / parent
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if is_ignored(p):
                continue
            _refuse_broken_link(p)
            if p.is_file():
                raise DatasetError(p, f"is a file directly in {parent}/, outside any class folder: it would be skipped.",
                                   f"move it into a class folder of {parent}/ ({_TRAIN_DIR.get(kind, '')} for normal "
                                   "training images), or remove it.")
            if allowed is not None and p.name not in allowed:
                raise DatasetError(p, f"is not read: the {kind} layout has only {', '.join(a + '/' for a in allowed)} "
                                   f"in {parent}/.", f"move its images into {parent}/{allowed[0]}/ or remove it.")


def _check_structure(rows: pl.DataFrame, kind: str, cat_dir: Path) -> None:
    """Class folders hold only images; every mask has its image; every image has its mask."""
    image_dirs, mask_dirs = layout_dirs(kind, cat_dir)
    if kind != "visa":  # VisA's files are listed in its csv; folders are not walked
        _check_class_parents(kind, cat_dir)
        for folder in image_dirs:
            _check_entries(folder, allow_dirs=kind == "generic" and folder == cat_dir / "defect")
        for folder in mask_dirs:
            _check_entries(folder, allow_dirs=kind == "generic")
    for folder in image_dirs:
        for p in list_files(folder):
            if not is_image_file(p):
                raise DatasetError(
                    p, f"is not an image file (suffix '{p.suffix}') in the image folder {folder.name}/.",
                    "remove it or move it out of the dataset folder.",
                )
    masks = set(rows["mask_path"].drop_nulls().to_list())
    for folder in mask_dirs:
        for p in list_files(folder):
            if not is_image_file(p):
                raise DatasetError(
                    p, f"is not an image file (suffix '{p.suffix}') in the mask folder {folder.name}/.",
                    "remove it or move it out of the dataset folder.",
                )
            if str(p.absolute()) not in masks:
                raise DatasetError(
                    p,
                    f"mask without an image: {_image_owner_hint(kind, p)}.",
                    "add the missing image, fix the mask's name, or delete the mask.",
                )
    for mask in rows["mask_path"].drop_nulls().to_list():
        if Path(mask).suffix.lower() in LOSSY_MASK_SUFFIXES:
            raise DatasetError(
                mask,
                "is a JPEG mask: lossy compression rings around the defect, and binarising (!= 0) turns the "
                "ringing into false defect pixels (one MVTec-sized defect grew from 629 to 1,707 px).",
                "export the masks losslessly (PNG, BMP or TIFF) from the original annotations.",
            )
    for image, iid in rows.filter((pl.col("label") == 1) & pl.col("mask_path").is_null()).select(
        "image_path", "image_id"
    ).iter_rows():
        raise DatasetError(
            image,
            f"defective image without a mask (expected {expected_mask(kind, cat_dir, iid)}).",
            "add the mask (same size as the image, defect pixels != 0) or remove the image.",
        )
    for image, mask in rows.select("image_path", "mask_path").iter_rows():
        for path, what in ((image, "image"), (mask, "mask")):
            if path is not None and not Path(path).is_file():
                listed = f" (listed in {VISA_CSV})" if kind == "visa" else ""
                raise DatasetError(
                    path, f"{what} file does not exist{listed}.", f"restore the {what} or remove its row."
                )


# --------------------------------------------------------------------------------------------
# 3. Pixels
# --------------------------------------------------------------------------------------------


def inspect_row(image_path: str, mask_path: str | None, decode: bool = True) -> FileInfo:
    """Read one image (and mask): channel count, size, mask binary/empty; raises on bad files."""
    if decode:
        img = open_image(image_path)
        mode, size = img.mode, img.size
    else:
        mode, size = read_header(image_path)
    if mode == "F":
        raise DatasetError(image_path, "is a floating-point image (PIL mode F): its value range is unknown.",
                           "convert the dataset to 8- or 16-bit PNG or TIFF.")
    info = FileInfo(channels=mode_channels(mode), size=size)
    if mask_path is None:
        return info
    mask = open_image(mask_path)
    if mask.size != size:
        raise DatasetError(
            mask_path,
            f"mask is {mask.size[0]}x{mask.size[1]} but its image {image_path} is {size[0]}x{size[1]}.",
            "re-export the mask at the image's size (or re-check which image it belongs to).",
        )
    raw = np.asarray(mask.convert("L") if mask.mode in ("P", "PA") else mask)
    values = frozenset(np.unique(raw).tolist())
    binary = any(values <= s for s in _BINARY_SETS)
    return FileInfo(info.channels, size, mask_binary=binary, mask_empty=not mask_array(mask).any())


def _inspect_all(rows: pl.DataFrame, decode: bool, workers: int) -> Iterator[FileInfo]:
    """``inspect_row`` over the rows, in row order (decoding runs in threads; PIL frees the GIL)."""
    pairs = rows.select("image_path", "mask_path").iter_rows()
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        yield from pool.map(lambda r: inspect_row(r[0], r[1], decode), pairs)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_channels(rows: pl.DataFrame, infos: list[FileInfo], category: str, setting: str = "auto") -> int:
    """The category's channel count: the configured one (``gray`` 1, ``rgb`` 3: every image is
    converted), else the files' own, which must not mix grayscale and colour."""
    if setting in ("gray", "rgb"):
        return 1 if setting == "gray" else 3
    first: dict[int, str] = {}
    for path, info in zip(rows["image_path"].to_list(), infos, strict=True):
        first.setdefault(info.channels, path)
    if len(first) > 1:
        raise DatasetError(
            first[3],
            f"is RGB while {first[1]} is grayscale: category '{category}' mixes channel counts.",
            "convert the category's images to one mode, or set dataset.channels to 'gray' or 'rgb' "
            "(e.g. --set dataset.channels=rgb) to convert them on loading.",
        )
    return next(iter(first))


def _size_text(infos: list[FileInfo]) -> str:
    sizes = {i.size for i in infos}
    if len(sizes) == 1:
        w, h = next(iter(sizes))
        return f"{w}x{h}"
    sides = [s for size in sizes for s in size]
    return f"{min(sides)}-{max(sides)} px, {len(sizes)} sizes"


def _warn_upscale(category: str, paths: list[str], infos: list[FileInfo], image_size: int) -> None:
    """Warn when ``image_size`` blows a category's images up ``UPSCALE_WARNING``× or more (a
    wrong ``--set dataset.image_size`` or a folder of thumbnails: the model would see blocks)."""
    longest = max(range(len(infos)), key=lambda i: max(infos[i].size))
    side = max(infos[longest].size)
    if side > 0 and image_size >= UPSCALE_WARNING * side:
        warnings.warn(
            f"{paths[longest]}: dataset.image_size {image_size} is {image_size / side:.0f}x the largest side of "
            f"category '{category}''s images ({side} px): every image pixel becomes a block of model pixels. "
            f"Fix: lower dataset.image_size to about {side}, or check the images.", stacklevel=3)


def _warn_masks(category: str, paths: list[str], problem: str) -> None:
    if paths:
        warnings.warn(f"{paths[0]}: {problem} ({len(paths)} such mask(s) in category '{category}').", stacklevel=3)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def validate_dataset(
    manifest: pl.DataFrame,
    root: Path,
    kind: str | None = None,
    *,
    decode: bool = True,
    workers: int | None = None,
    channels: str = "auto",
    image_size: int | None = None,
) -> ValidationSummary:
    """Validate a manifest (from ``scan_dataset``) against the files under ``root``.

    ``kind`` is the layout (default: inferred from the manifest). ``decode=False`` reads only
    headers (faster; cannot detect truncated files). ``workers``: decoding threads
    (default min(8, CPUs)). ``channels``: the config's ``dataset.channels`` (``gray``/``rgb``
    convert every image, so a category may mix modes). ``image_size``: the config's
    ``dataset.image_size``; a category whose images are ``UPSCALE_WARNING``× or more smaller is
    warned about (each image pixel would become a block of model pixels). Raises
    ``DatasetError`` on the first problem (see module doc).
    """
    _check_columns(manifest)
    channels_setting = channels
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DatasetError(root, "dataset folder does not exist.", "point dataset.root (or DIR) at the dataset.")
    if manifest.height == 0:
        raise DatasetError(root, "no images found.", "check the dataset folder and dataset.layout.")
    kind = kind or infer_kind(manifest)
    if kind not in LAYOUTS:
        raise DatasetError("dataset.layout", f"unknown layout '{kind}'.", f"use one of: {', '.join(LAYOUTS)}.")
    manifest = manifest.sort(["category", "split", "image_id"])
    categories = manifest["category"].unique().sort().to_list()
    resolved = _check_inside_root(manifest, root)
    twice = manifest.with_columns(pl.Series("_real", resolved)).filter(pl.col("_real").is_duplicated())
    if twice.height:  # compared by resolved path: a test/good link to a train/good image is the same image
        path = twice["image_path"][0]
        real = twice["_real"][0]
        splits = sorted(set(twice.filter(pl.col("_real") == real)["split"].to_list()))
        problem = ("is in both the train and the test split: a test image the model was trained on." if len(splits) > 1
                   else "is listed twice: every score of it would count twice.")
        raise DatasetError(path, problem, "list each image once.")

    for cat in categories:
        cat_dir = root / cat
        if not cat_dir.is_dir():
            raise DatasetError(cat_dir, "category folder does not exist.", "fix dataset.categories or dataset.root.")
        rows = manifest.filter(pl.col("category") == cat)
        _check_training_images(rows, kind, cat_dir, cat)
        _check_structure(rows, kind, cat_dir)

    infos_all = list(_inspect_all(manifest, decode, workers or min(8, os.cpu_count() or 1)))
    channels, sizes, binarised, empty = [], [], [], []
    row_categories = manifest["category"].to_list()
    for cat in categories:
        index = [i for i, c in enumerate(row_categories) if c == cat]
        rows, infos = manifest[index], [infos_all[i] for i in index]
        channels.append((cat, _check_channels(rows, infos, cat, channels_setting)))
        sizes.append((cat, _size_text(infos)))
        if image_size is not None:
            _warn_upscale(cat, rows["image_path"].to_list(), infos, image_size)
        masks = rows["mask_path"].to_list()
        cat_nonbinary = [m for m, i in zip(masks, infos) if m is not None and not i.mask_binary]
        cat_empty = [m for m, i in zip(masks, infos) if m is not None and i.mask_empty]
        _warn_masks(cat, cat_nonbinary, "mask is not binary (values other than 0/1 or 0/255); binarised as != 0")
        _warn_masks(cat, cat_empty, "mask of a defective image is empty (no defect pixels)")
        binarised += cat_nonbinary
        empty += cat_empty

    nonbinary = set(binarised)
    counts = (
        manifest.with_columns(pl.col("mask_path").is_in(list(nonbinary)).alias("_nonbinary"))
        .group_by(["category", "split", "defect_type"])
        .agg(
            pl.len().cast(pl.Int64).alias("images"),
            pl.col("mask_path").is_not_null().sum().cast(pl.Int64).alias("masks"),
            pl.col("_nonbinary").sum().cast(pl.Int64).alias("nonbinary_masks"),
        )
        .sort(["category", "split", "defect_type"])
    )
    return ValidationSummary(
        root=str(root),
        kind=kind,
        counts=counts,
        channels=tuple(channels),
        sizes=tuple(sizes),
        binarised_masks=tuple(binarised),
        empty_masks=tuple(empty),
    )


def check_training_split(manifest: pl.DataFrame, root: Path, kind: str, holdout: bool = True) -> None:
    """After ``assign_holdout``: every category keeps normal images to train on and, with
    ``holdout`` (``dataset.holdout_fraction`` > 0), holds some out for the normalisation
    statistics (fitting needs both; fails after training otherwise). Without ``holdout`` the
    statistics come from the training images."""
    for cat in manifest["category"].unique().sort().to_list():
        rows = manifest.filter(pl.col("category") == cat)
        n_train = rows.filter(pl.col("split") == "train").height
        n_holdout = rows.filter(pl.col("split") == "holdout").height
        if n_train and (n_holdout or not holdout):
            continue
        train_dir = (Path(root) / VISA_CSV) if kind == "visa" else Path(root) / cat / _TRAIN_DIR[kind]
        total = n_train + n_holdout
        raise DatasetError(
            train_dir,
            f"category '{cat}' has {total} normal training image(s), of which {n_holdout} held out: training needs "
            "at least one and the normalisation statistics at least one held-out image.",
            "add normal training images (2 or more), or set dataset.holdout_fraction > 0 and holdout_min >= 1.",
        )


__all__ = ["FileInfo", "ValidationSummary", "check_training_split", "inspect_row", "validate_dataset"]
