"""The one preprocessing path (training and evaluation): file → square array.

Images: decode with PIL → convert to the channel count (1 = "L", 3 = "RGB"; 16-bit grayscale is
scaled to 8 bit) → optional centre crop to a square → bilinear resize with antialiasing (PIL's
filter support widens with the downscale factor) → float32 (C, size, size) in [-1, 1]
(x / 127.5 - 1). Masks: decode → binarise (!= 0 on any colour channel) → the same crop →
NEAREST resize → uint8 (size, size) in {0, 1} (1 = defective pixel).

EXIF orientation is not applied: images and masks are used in stored pixel order so that
they stay aligned. Truncated files raise: ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` must stay
False (Pillow's default), and every file is fully decoded inside the ``try``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from PIL import Image, ImageFile, UnidentifiedImageError

from raydiff.errors import DatasetError

Fit = Literal["resize", "center-crop"]
ChannelSetting = Literal["auto", "gray", "rgb"]

#: PIL modes holding one intensity channel (everything else is treated as colour).
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_REPLACE = "re-export or replace the file (it is truncated, corrupt or not an image), or remove it."


def mode_channels(mode: str) -> int:
    """Channel count raydiff gives an image of PIL ``mode``: 1 for grayscale modes, else 3."""
    return 1 if mode in GRAY_MODES else 3


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode ``path``; ``DatasetError`` naming the file for any read problem."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise DatasetError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES",
            "is True, so truncated images would load silently as partly grey.",
            "do not set it (raydiff needs Pillow's default, False).",
        )
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "file does not exist.", "check the dataset folder (was it moved after scanning?).")
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except _READ_ERRORS as err:
        raise DatasetError(path, f"cannot read the image ({type(err).__name__}: {err}).", _REPLACE) from err


def read_header(path: str | Path) -> tuple[str, tuple[int, int]]:
    """(PIL mode, (width, height)) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.mode, img.size
    except FileNotFoundError as err:
        raise DatasetError(path, "file does not exist.", "check the dataset folder.") from err
    except _READ_ERRORS as err:
        raise DatasetError(path, f"cannot read the image header ({type(err).__name__}: {err}).", _REPLACE) from err


def to_channels(img: Image.Image, channels: Literal[1, 3]) -> Image.Image:
    """Convert to "L" (channels=1) or "RGB" (channels=3); 16-bit grayscale → 8 bit by /257."""
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        raise DatasetError(
            getattr(img, "filename", "image") or "image",
            "floating-point images are not supported (value range unknown).",
            "convert the dataset to 8- or 16-bit PNG.",
        )
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def center_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the central min(w, h) square (offsets rounded down)."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def _fit(img: Image.Image, size: int, fit: Fit, resample: Image.Resampling) -> Image.Image:
    if fit == "center-crop":
        if img.width != img.height:
            img = img.crop(center_crop_box(img.width, img.height))
    elif fit != "resize":
        raise ValueError(f"fit must be 'resize' or 'center-crop', got {fit!r}")
    if img.size != (size, size):
        img = img.resize((size, size), resample)
    return img


def load_image(path: str | Path, size: int, channels: Literal[1, 3] = 3, fit: Fit = "resize") -> np.ndarray:
    """Image file → float32 array (channels, size, size) in [-1, 1].

    Non-square images are squashed (``fit="resize"``) or centre-cropped then resized
    (``fit="center-crop"``); resizing is bilinear with antialiasing.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    img = _fit(to_channels(open_image(path), channels), size, fit, Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32).reshape(size, size, channels)
    return np.ascontiguousarray(arr.transpose(2, 0, 1) / np.float32(127.5) - np.float32(1.0))


def mask_array(img: Image.Image) -> np.ndarray:
    """A decoded mask as bool (H, W): True where any colour channel is != 0 (alpha ignored)."""
    if img.mode in ("LA", "La", "PA", "RGBA", "RGBa", "P", "CMYK", "YCbCr", "HSV", "LAB"):
        img = img.convert("L" if img.mode in ("LA", "La") else "RGB")
    arr = np.asarray(img)
    return arr.any(axis=2) if arr.ndim == 3 else arr != 0


def load_mask(path: str | Path, size: int, fit: Fit = "resize") -> np.ndarray:
    """Mask file → uint8 array (size, size) in {0, 1}: binarised (!= 0), NEAREST-resized.

    Binarising before the nearest resize equals resizing then binarising (nearest only picks
    source pixels) and makes label maps (VisA: 0, 1, 2, ...) and 0/255 masks alike.
    """
    binary = Image.fromarray(mask_array(open_image(path)).astype(np.uint8) * np.uint8(255), mode="L")
    return (np.asarray(_fit(binary, size, fit, Image.Resampling.NEAREST)) != 0).astype(np.uint8)


def dataset_channels(manifest: pl.DataFrame, setting: ChannelSetting = "auto") -> int:
    """Channel count for a manifest's images: 1 ("gray"), 3 ("rgb"), or the files' ("auto").

    "auto" reads every image header (fast, no decoding) and raises ``DatasetError`` when the
    rows mix grayscale and colour images; pass one category's rows, or set dataset.channels.
    """
    if setting == "gray":
        return 1
    if setting == "rgb":
        return 3
    if setting != "auto":
        raise ValueError(f"setting must be 'auto', 'gray' or 'rgb', got {setting!r}")
    if manifest.height == 0:
        raise DatasetError("manifest", "has no images to take the channel count from.", "check the dataset folder.")
    seen: dict[int, str] = {}
    for path in manifest.sort(["category", "split", "image_id"])["image_path"].to_list():
        seen.setdefault(mode_channels(read_header(path)[0]), path)
        if len(seen) > 1:
            raise DatasetError(
                seen[3],
                f"is RGB while {seen[1]} is grayscale: the images mix channel counts.",
                "convert the category's images to one mode, or set dataset.channels to 'gray' or 'rgb'.",
            )
    return next(iter(seen))


__all__ = ["center_crop_box", "dataset_channels", "load_image", "load_mask", "mode_channels", "open_image"]
