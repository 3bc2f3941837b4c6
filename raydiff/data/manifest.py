"""Dataset folders → a manifest table: one row per image, the same columns for every layout.

Columns, in order (``MANIFEST_SCHEMA``)::

    dataset      str    value of config ``dataset.name`` (defaults to the layout kind)
    category     str    e.g. "bottle", "candle", "01"
    split        str    "train" | "test" | "holdout" (``raydiff.data.splits.assign_holdout``, or a layout's
                        own held-out normal images) | "test_private" | "test_private_mixed" (mvtec-ad2:
                        unlabelled test sets; only ``raydiff export-mvtec-ad2`` reads them)
    image_path   str    absolute path of the image
    mask_path    str?   absolute path of the ground-truth mask, null for normal and unlabelled images
    label        Int8?  0 normal, 1 defective, null unknown (the unlabelled test sets)
    defect_type  str?   "good" for normal images, else the defect folder / layout's name; null unknown
    image_id     str    path relative to the category folder, e.g. "test/crack/000.png"

Rows are sorted by (category, split, image_id). The scanners are lenient about single files
(a defective image without a mask gets a null ``mask_path``, stray non-image files are skipped):
``raydiff.data.validate.validate_dataset`` reports those, one clear error each. Problems that
leave nothing to scan (missing root, a requested category that does not exist, a category with
no images at all) raise ``DatasetError`` here.

Layouts (``CAT`` = one category folder under ``ROOT``):

- ``mvtec`` (MVTec AD, MPDD, the embedded textures)::

      CAT/train/good/*.png                 normal training images
      CAT/test/good/*.png                  normal test images
      CAT/test/<defect>/NNN.png            defective test images (defect_type = <defect>)
      CAT/ground_truth/<defect>/NNN_mask.png

- ``visa`` (VisA, raw layout): ``ROOT/split_csv/1cls.csv`` with columns object, split, label,
  image, mask; paths relative to ROOT (``candle/Data/Images/Anomaly/000.JPG``); label
  "normal" → defect_type "good", "anomaly" → defect_type "anomaly". Masks are label maps
  (values 0, 1, 2, ...) and are binarised (!= 0) on loading.
- ``btad`` (BTAD, categories 01/02/03)::

      CAT/train/ok/*.bmp|png               normal training images
      CAT/test/ok/*                        normal test images (defect_type "good")
      CAT/test/ko/NNNN.bmp|png             defective test images (defect_type "ko")
      CAT/ground_truth/ko/NNNN.png         mask with the image's stem (any image extension)

- ``generic`` (your own data)::

      CAT/good/*.png                       normal images, split deterministically into
                                           train/test (``test_fraction`` of them in test)
      CAT/defect/*.png                     defective images (defect_type "defect"), or
      CAT/defect/<type>/*.png              defective images (defect_type <type>)
      CAT/masks/[<type>/]<stem>.png        their masks: same relative path and stem as the
                                           image (``<stem>_mask.png`` also accepted)

  Every defective image is a test image. Images: .png .jpg .jpeg .bmp .tif .tiff .webp.

- ``mvtec-ad2`` (MVTec AD 2: Heckler-Kram et al., "The MVTec AD 2 Dataset: Advanced Scenarios for
  Unsupervised Anomaly Detection", arXiv:2503.21622; the structure MVTec's own loader reads,
  ``mvtec_ad_2_public_offline.py`` of MVTecAD2_public_code_utils, and anomalib's
  ``src/anomalib/data/datasets/image/mvtecad2.py``)::

      CAT/train/good/NNN_regular.png       normal training images               split "train"
      CAT/validation/good/NNN_regular.png  normal images for validation         split "holdout"
      CAT/test_public/good/NNN_<light>.png normal test images                   split "test"
      CAT/test_public/bad/NNN_<light>.png  defective test images ("bad")        split "test"
      CAT/test_public/ground_truth/bad/NNN_<light>_mask.png   their masks (0 / 255)
      CAT/test_private/NNN_regular.png     no ground truth (MVTec's server)     split "test_private"
      CAT/test_private_mixed/NNN_mixed.png no ground truth, mixed lighting      split "test_private_mixed"

  ``validation/good`` is the dataset's own set of normal images kept out of training: raydiff's
  held-out set (normalisation statistics), so ``assign_holdout`` draws nothing from train/good of
  a category that has one. The private test sets' rows have null label, mask and defect_type;
  training, fitting, scoring and metrics never read them (they select train / holdout / test).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from raydiff.config import DATASET_LAYOUTS, check_plain_name
from raydiff.errors import ConfigError, DatasetError
from raydiff.seeding import derive_seed

#: The layouts (one home: ``raydiff.config.DATASET_LAYOUTS``; SCANNERS has one scanner each).
LAYOUTS: tuple[str, ...] = DATASET_LAYOUTS

MANIFEST_SCHEMA: dict[str, pl.DataType] = {
    "dataset": pl.String(),
    "category": pl.String(),
    "split": pl.String(),
    "image_path": pl.String(),
    "mask_path": pl.String(),
    "label": pl.Int8(),
    "defect_type": pl.String(),
    "image_id": pl.String(),
}

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
#: Names every folder walk ignores besides hidden ones: OS metadata and raydiff's marker.
_IGNORED_NAMES = frozenset({"Thumbs.db", "desktop.ini", "__MACOSX", "_SUCCESS"})

#: MVTec AD 2's test sets without public ground truth, scored only by MVTec's evaluation server
#: (split = the folder name; images directly in the folder).
AD2_PRIVATE_SPLITS: tuple[str, ...] = ("test_private", "test_private_mixed")
#: Image-id prefix of the normal images a layout ships as its held-out set (MVTec AD 2's
#: ``validation/good``): scanned as split "holdout", kept by ``assign_holdout``.
GIVEN_HOLDOUT_PREFIX = "validation/"

VISA_CSV = Path("split_csv") / "1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
_VISA_LABELS = {"normal": 0, "anomaly": 1}


# --------------------------------------------------------------------------------------------
# Folder helpers shared by the scanners and by validate.py
# --------------------------------------------------------------------------------------------


def is_ignored(path: Path) -> bool:
    """Hidden files/folders (``.*``, e.g. ``.tmp-*``), OS metadata and ``_SUCCESS`` are skipped."""
    return path.name.startswith(".") or path.name in _IGNORED_NAMES


def is_image_file(path: Path) -> bool:
    """True for a file with an image suffix (case-insensitive); the content is not checked."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_files(folder: Path) -> list[Path]:
    """Non-ignored files directly in ``folder`` (sorted; empty when the folder is missing)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not is_ignored(p))


def list_dirs(folder: Path) -> list[Path]:
    """Non-ignored sub-folders of ``folder`` (sorted; empty when the folder is missing)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_ignored(p))


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted by name)."""
    return [p for p in list_files(folder) if is_image_file(p)]


def find_mask(folder: Path, stem: str, suffixes: Sequence[str] = ("",)) -> Path | None:
    """The mask ``folder/<stem><suffix>.<ext>`` for the first suffix that exists (.png first)."""
    exts = [".png", *sorted(IMAGE_SUFFIXES - {".png"})]
    for suffix in suffixes:
        for ext in exts:
            for candidate in (folder / f"{stem}{suffix}{ext}", folder / f"{stem}{suffix}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def layout_dirs(kind: str, category_dir: Path) -> tuple[list[Path], list[Path]]:
    """(image folders, mask folders) of one category that exist, for the structure checks."""
    c = category_dir
    if kind == "mvtec":
        images = [c / "train" / "good", *list_dirs(c / "test")]
        masks = [d for d in list_dirs(c / "ground_truth") if d.name != "good"]
    elif kind == "btad":
        images = [c / "train" / "ok", c / "test" / "ok", c / "test" / "ko"]
        masks = [c / "ground_truth" / "ko"]
    elif kind == "generic":
        images = [c / "good", c / "defect", *list_dirs(c / "defect")]
        masks = [c / "masks", *(p for p in sorted((c / "masks").rglob("*")) if p.is_dir() and not is_ignored(p))]
    elif kind == "visa":
        images = [c / "Data" / "Images" / "Normal", c / "Data" / "Images" / "Anomaly"]
        masks = [c / "Data" / "Masks" / "Anomaly"]
    elif kind == "mvtec-ad2":
        images = [c / "train" / "good", c / "validation" / "good", c / "test_public" / "good",
                  c / "test_public" / "bad", *(c / s for s in AD2_PRIVATE_SPLITS)]
        masks = [c / "test_public" / "ground_truth" / "bad"]
    else:
        raise ValueError(f"unknown layout {kind!r}")
    return [d for d in images if d.is_dir()], [d for d in masks if d.is_dir()]


def expected_mask(kind: str, category_dir: Path, image_id: str) -> str:
    """Where the layout looks for the mask of a defective image (for error messages)."""
    rel = Path(image_id)
    if kind == "mvtec":
        return str(category_dir / "ground_truth" / rel.parent.name / f"{rel.stem}_mask.png")
    if kind == "btad":
        return str(category_dir / "ground_truth" / "ko" / f"{rel.stem}.png")
    if kind == "mvtec-ad2":
        return str(category_dir / "test_public" / "ground_truth" / "bad" / f"{rel.stem}_mask.png")
    if kind == "generic":
        sub = Path(*rel.parts[1:-1]) if len(rel.parts) > 2 else Path()
        return str(category_dir / "masks" / sub / f"{rel.stem}.png")
    return f"the 'mask' column of {VISA_CSV} for this image"


# --------------------------------------------------------------------------------------------
# Scanners
# --------------------------------------------------------------------------------------------


def _row(
    dataset: str, category: str, split: str, image: Path, mask: Path | None, label: int | None, defect: str | None,
    cat_dir: Path,
) -> dict[str, object]:
    return {
        "dataset": dataset,
        "category": category,
        "split": split,
        "image_path": str(image.absolute()),
        "mask_path": None if mask is None else str(mask.absolute()),
        "label": label,
        "defect_type": defect,
        "image_id": image.relative_to(cat_dir).as_posix(),
    }


def _frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=MANIFEST_SCHEMA, orient="row").sort(["category", "split", "image_id"])


def _check_root(root: Path, kind: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(
            root,
            "dataset folder does not exist." if not root.exists() else "dataset root is not a folder.",
            f"point dataset.root (or the DIR argument) at the folder that holds the {kind} categories.",
        )
    return root.absolute()


#: Longest category name: it becomes ``category=<name>`` folders under the output root (255 bytes a name).
MAX_CATEGORY_CHARS = 128


def check_category_name(name: str, where: Path | str, what: str = "category folder") -> str:
    """``name`` if it may name a category: the config's plain-name rule (letters, digits, ``_ . + -``
    and spaces, no leading dot, no ``/`` or ``..``), ASCII only, at most MAX_CATEGORY_CHARS.

    A category name becomes the folders ``fitted/<dataset>/<name>`` and ``category=<name>`` (a hive
    key, so ``=`` and ``%`` would be read back wrong), and is what ``--categories`` selects.
    """
    try:
        check_plain_name(name, "category", str(where))
        ok = name.isascii() and len(name) <= MAX_CATEGORY_CHARS
    except ConfigError:
        ok = False
    if not ok:
        shown = name if len(name) <= 40 else f"{name[:40]}... ({len(name)} characters)"
        raise DatasetError(
            where,
            f"{what} name {shown!r} is not a plain category name: it may hold only ASCII letters, digits, "
            f"'_', '.', '+', '-' and spaces, not start with '.', and have at most {MAX_CATEGORY_CHARS} characters "
            "(it names folders under the output root).",
            "rename it (e.g. 'brick_2'), or move it out of the dataset root.",
        )
    return name


def _categories(root: Path, categories: Sequence[str], kind: str) -> list[str]:
    """The requested categories (each must be a folder under root), or every sub-folder."""
    if categories:
        for cat in categories:
            if not (root / cat).is_dir():
                found = ", ".join(p.name for p in list_dirs(root)) or "none"
                raise DatasetError(
                    root / cat,
                    f"category folder does not exist (folders found under the root: {found}).",
                    "fix the name in dataset.categories or point dataset.root at the right folder.",
                )
        return list(categories)
    found = [check_category_name(p.name, p) for p in list_dirs(root)]
    if not found:
        raise DatasetError(root, f"no category folders found for layout '{kind}'.", _layout_fix(kind))
    return found


def _layout_fix(kind: str) -> str:
    return {
        "mvtec": "use the MVTec layout CAT/train/good, CAT/test/<defect>, CAT/ground_truth/<defect>/NNN_mask.png.",
        "btad": "use the BTAD layout CAT/train/ok, CAT/test/ok|ko, CAT/ground_truth/ko.",
        "generic": "use the generic layout CAT/good/, CAT/defect/[<type>/], CAT/masks/[<type>/] "
        "(see raydiff.data.manifest).",
        "visa": f"use the raw VisA layout with ROOT/{VISA_CSV} (columns {', '.join(VISA_COLUMNS)}).",
        "mvtec-ad2": "use the MVTec AD 2 layout CAT/train/good, CAT/validation/good, CAT/test_public/good|bad, "
        "CAT/test_public/ground_truth/bad/<stem>_mask.png, CAT/test_private/, CAT/test_private_mixed/.",
    }[kind]


def _check_not_empty(rows: list[dict[str, object]], cat_dir: Path, kind: str) -> None:
    if not rows:
        raise DatasetError(
            cat_dir,
            "category has no images.",
            f"add images or remove the category from dataset.categories; {_layout_fix(kind)}",
        )


def scan_mvtec(root: Path, categories: Sequence[str] = (), dataset_name: str | None = None) -> pl.DataFrame:
    """Manifest of an MVTec-AD-layout folder (masks ``ground_truth/<defect>/<stem>_mask.png``)."""
    root = _check_root(root, "mvtec")
    name = dataset_name or "mvtec"
    rows: list[dict[str, object]] = []
    for cat in _categories(root, categories, "mvtec"):
        c = root / cat
        cat_rows = [_row(name, cat, "train", p, None, 0, "good", c) for p in list_images(c / "train" / "good")]
        for defect_dir in list_dirs(c / "test"):
            defect = defect_dir.name
            for p in list_images(defect_dir):
                if defect == "good":
                    cat_rows.append(_row(name, cat, "test", p, None, 0, "good", c))
                else:
                    mask = find_mask(c / "ground_truth" / defect, p.stem, ("_mask",))
                    cat_rows.append(_row(name, cat, "test", p, mask, 1, defect, c))
        _check_not_empty(cat_rows, c, "mvtec")
        rows += cat_rows
    return _frame(rows)


def scan_btad(root: Path, categories: Sequence[str] = (), dataset_name: str | None = None) -> pl.DataFrame:
    """Manifest of a BTAD folder (``train/ok``, ``test/ok|ko``, masks ``ground_truth/ko/<stem>.png``)."""
    root = _check_root(root, "btad")
    name = dataset_name or "btad"
    rows: list[dict[str, object]] = []
    for cat in _categories(root, categories, "btad"):
        c = root / cat
        cat_rows = [_row(name, cat, "train", p, None, 0, "good", c) for p in list_images(c / "train" / "ok")]
        cat_rows += [_row(name, cat, "test", p, None, 0, "good", c) for p in list_images(c / "test" / "ok")]
        for p in list_images(c / "test" / "ko"):
            cat_rows.append(_row(name, cat, "test", p, find_mask(c / "ground_truth" / "ko", p.stem), 1, "ko", c))
        _check_not_empty(cat_rows, c, "btad")
        rows += cat_rows
    return _frame(rows)


def scan_mvtec_ad2(root: Path, categories: Sequence[str] = (), dataset_name: str | None = None) -> pl.DataFrame:
    """Manifest of an MVTec AD 2 folder (module docstring): train/good → "train",
    validation/good → "holdout", test_public → "test" (masks ``ground_truth/bad/<stem>_mask.png``),
    test_private / test_private_mixed → their own split with null label, mask and defect_type."""
    root = _check_root(root, "mvtec-ad2")
    name = dataset_name or "mvtec-ad2"
    rows: list[dict[str, object]] = []
    for cat in _categories(root, categories, "mvtec-ad2"):
        c = root / cat
        cat_rows = [_row(name, cat, "train", p, None, 0, "good", c) for p in list_images(c / "train" / "good")]
        cat_rows += [_row(name, cat, "holdout", p, None, 0, "good", c) for p in list_images(c / "validation" / "good")]
        cat_rows += [_row(name, cat, "test", p, None, 0, "good", c) for p in list_images(c / "test_public" / "good")]
        for p in list_images(c / "test_public" / "bad"):
            mask = find_mask(c / "test_public" / "ground_truth" / "bad", p.stem, ("_mask",))
            cat_rows.append(_row(name, cat, "test", p, mask, 1, "bad", c))
        for split in AD2_PRIVATE_SPLITS:
            cat_rows += [_row(name, cat, split, p, None, None, None, c) for p in list_images(c / split)]
        _check_not_empty(cat_rows, c, "mvtec-ad2")
        rows += cat_rows
    return _frame(rows)


def _read_visa_csv(root: Path) -> list[dict[str, str]]:
    path = root / VISA_CSV
    if not path.is_file():
        raise DatasetError(path, "VisA split file not found.", _layout_fix("visa"))
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in VISA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(
                path,
                f"missing column(s) {', '.join(missing)} (found: {', '.join(reader.fieldnames or [])}).",
                f"use VisA's split_csv/1cls.csv with columns {', '.join(VISA_COLUMNS)}.",
            )
        return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]


def scan_visa(root: Path, categories: Sequence[str] = (), dataset_name: str | None = None) -> pl.DataFrame:
    """Manifest of the raw VisA layout, from ``ROOT/split_csv/1cls.csv``.

    ``image_id`` is the image path relative to the category folder
    (``Data/Images/Anomaly/000.JPG``); defect_type is "anomaly" or "good".
    """
    root = _check_root(root, "visa")
    name = dataset_name or "visa"
    csv_path = root / VISA_CSV
    table = _read_visa_csv(root)
    for line_no, r in enumerate(table, start=2):
        check_category_name(r["object"], f"{csv_path} line {line_no}", "object")
    objects = sorted({r["object"] for r in table})
    wanted = list(categories) or objects
    for cat in wanted:
        if cat not in objects:
            raise DatasetError(
                csv_path,
                f"category '{cat}' has no rows (objects listed: {', '.join(objects) or 'none'}).",
                "fix the name in dataset.categories or use the complete VisA split_csv/1cls.csv.",
            )
    rows: list[dict[str, object]] = []
    listed: dict[Path, tuple[int, str]] = {}
    for line_no, r in enumerate(table, start=2):
        cat = r["object"]
        if cat not in wanted:
            continue
        where = f"{csv_path} line {line_no}"
        if r["split"] not in ("train", "test"):
            raise DatasetError(where, f"split '{r['split']}' is not 'train' or 'test'.", "fix the csv row.")
        if r["label"] not in _VISA_LABELS:
            raise DatasetError(where, f"label '{r['label']}' is not 'normal' or 'anomaly'.", "fix the csv row.")
        c = root / cat
        image = inside_folder(root, c, r["image"], where, "image")
        if image in listed:
            first, split = listed[image]
            problem = (f"image '{r['image']}' is listed twice (lines {first} and {line_no})" if split == r["split"] else
                       f"image '{r['image']}' is in both {split} (line {first}) and {r['split']} (line {line_no}): "
                       "a test image the model was trained on")
            raise DatasetError(csv_path, problem + ".", "keep one row per image.")
        listed[image] = (line_no, r["split"])
        label = _VISA_LABELS[r["label"]]
        mask = inside_folder(root, c, r["mask"], where, "mask") if r["mask"] and label == 1 else None
        rows.append(_row(name, cat, r["split"], image, mask, label, "anomaly" if label else "good", c))
    return _frame(rows)


def inside_folder(root: Path, folder: Path, relative: str, where: str, what: str) -> Path:
    """``root / relative`` with ``..`` resolved, which must lie inside ``folder`` (a listed path
    may not reach outside its object's folder, e.g. ``candle/../../etc/passwd``)."""
    path = Path(os.path.normpath(root / relative))
    if Path(relative).is_absolute() or not path.is_relative_to(Path(os.path.normpath(folder))):
        raise DatasetError(
            where,
            f"{what} '{relative}' is not inside the object folder '{folder.name}/' (paths are relative to the "
            "dataset root and may not leave their object's folder).",
            "fix the csv row.",
        )
    return path


def split_good(image_ids: Sequence[str], test_fraction: float, seed: int = 0) -> set[str]:
    """The ids of normal images that go to the test split: a deterministic hash-ranked subset.

    ``round(test_fraction * n)`` images, at least 1 when ``test_fraction > 0`` and n >= 2, and
    never all of them (one normal image always stays for training).
    """
    n = len(image_ids)
    k = 0 if test_fraction <= 0 or n < 2 else min(max(round(test_fraction * n), 1), n - 1)
    ranked = sorted(image_ids, key=lambda i: (derive_seed(seed, "generic-test", i), i))
    return set(ranked[:k])


def scan_generic(
    root: Path,
    categories: Sequence[str] = (),
    dataset_name: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> pl.DataFrame:
    """Manifest of the generic layout (``good/``, ``defect/[<type>/]``, ``masks/``).

    ``test_fraction`` of each category's normal images (hash of ``seed`` and image id, so the
    split does not change when images are added elsewhere) go to the test split.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise DatasetError("test_fraction", f"{test_fraction} is outside [0, 1).", "use e.g. 0.2.")
    root = _check_root(root, "generic")
    name = dataset_name or "generic"
    rows: list[dict[str, object]] = []
    for cat in _categories(root, categories, "generic"):
        c = root / cat
        good = list_images(c / "good")
        test_ids = split_good([p.relative_to(c).as_posix() for p in good], test_fraction, seed)
        cat_rows = [
            _row(name, cat, "test" if p.relative_to(c).as_posix() in test_ids else "train", p, None, 0, "good", c)
            for p in good
        ]
        groups = [(c / "defect", c / "masks", "defect")]
        groups += [(d, c / "masks" / d.name, d.name) for d in list_dirs(c / "defect")]
        for image_dir, mask_dir, defect in groups:
            for p in list_images(image_dir):
                mask = find_mask(mask_dir, p.stem, ("", "_mask"))
                cat_rows.append(_row(name, cat, "test", p, mask, 1, defect, c))
        _check_not_empty(cat_rows, c, "generic")
        rows += cat_rows
    return _frame(rows)


SCANNERS = {"mvtec": scan_mvtec, "visa": scan_visa, "btad": scan_btad, "generic": scan_generic,
            "mvtec-ad2": scan_mvtec_ad2}


def scan_dataset(
    kind: str,
    root: Path,
    categories: Sequence[str] = (),
    dataset_name: str | None = None,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> pl.DataFrame:
    """Manifest of ``root`` read with the layout ``kind`` (see the module docstring).

    ``test_fraction`` and ``seed`` only apply to the generic layout (its good/test split).
    """
    if kind not in SCANNERS:
        raise DatasetError("dataset.layout", f"unknown layout '{kind}'.", f"use one of: {', '.join(LAYOUTS)}.")
    if kind == "generic":
        return scan_generic(Path(root), categories, dataset_name, test_fraction=test_fraction, seed=seed)
    return SCANNERS[kind](Path(root), categories, dataset_name)


def detect_layout(root: Path) -> str:
    """The layout of a dataset folder from what it holds: ``split_csv/1cls.csv`` → visa; category
    folders with ``test_public/`` → mvtec-ad2; with ``train/ok/`` → btad; with ``good/`` and no
    ``train/`` → generic; else mvtec."""
    root = Path(root).expanduser()
    if (root / VISA_CSV).is_file():
        return "visa"
    cats = list_dirs(root)
    if any((c / "test_public").is_dir() for c in cats):
        return "mvtec-ad2"
    if any((c / "train" / "ok").is_dir() for c in cats):
        return "btad"
    if cats and all((c / "good").is_dir() and not (c / "train").is_dir() for c in cats):
        return "generic"
    return "mvtec"


def infer_kind(manifest: pl.DataFrame) -> str:
    """The layout a manifest was scanned with, from its ``dataset`` column or its image ids."""
    names = set(manifest["dataset"].unique().to_list())
    if len(names) == 1 and (name := next(iter(names))) in LAYOUTS:
        return str(name)
    heads = {i.split("/", 1)[0] for i in manifest["image_id"].to_list()}
    if "Data" in heads:
        return "visa"
    if "test_public" in heads or GIVEN_HOLDOUT_PREFIX.rstrip("/") in heads:
        return "mvtec-ad2"
    if heads and heads <= {"good", "defect"}:
        return "generic"
    if manifest.filter(pl.col("image_id").str.starts_with("train/ok/")).height:
        return "btad"
    return "mvtec"


# --------------------------------------------------------------------------------------------
# Hold-out of normal training images
# --------------------------------------------------------------------------------------------


def scan_config(cfg: Any, root: Path | None = None, kind: str | None = None) -> pl.DataFrame:
    """The manifest of the config's dataset, or of ``root`` read with layout ``kind``."""
    if root is not None:  # a folder named on the command line: its own layout and name
        return scan_dataset(kind or "mvtec", Path(root), seed=cfg.seed)
    root = Path(cfg.dataset.root)
    if not root.is_dir():
        raise DatasetError(root, "dataset folder does not exist.", "check dataset.root / --dataset-root.")
    return scan_dataset(
        kind or cfg.dataset.layout, root, categories=cfg.dataset.categories, dataset_name=cfg.dataset.name, seed=cfg.seed
    )


__all__ = [
    "LAYOUTS",
    "detect_layout",
    "MANIFEST_SCHEMA",
    "infer_kind",
    "scan_btad",
    "scan_config",
    "scan_dataset",
    "scan_generic",
    "scan_mvtec",
    "scan_mvtec_ad2",
    "scan_visa",
    "split_good",
]
