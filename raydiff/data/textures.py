"""The embedded default benchmark: an MVTec-layout dataset cut from scikit-image's texture photos.

``make_textures(out)`` writes, for each category (``brick``, ``grass``, ``gravel``; the 512×512
grayscale photos ``skimage.data.brick()`` etc. that ship inside scikit-image, no download)::

    out/textures.json                      parameters, versions, regions, and per image its crop box
                                           and the defect's drawn parameters (size, contrast)
    out/_SUCCESS                           written last (raydiff.io.atomic_dir)
    out/CAT/train/good/NNN.png             defect-free crops from the TRAIN region
    out/CAT/test/good/NNN.png              defect-free crops from the TEST region
    out/CAT/test/<defect>/NNN.png          crops from the TEST region with one synthetic defect
    out/CAT/ground_truth/<defect>/NNN_mask.png   uint8 {0, 255}, same size as the image

Regions. The photo's rows are cut into three bands: train = rows [0, 176) and [336, 512), test =
rows [176, 336). A crop lies wholly inside one band and is cut from the photo *before* it is
resized, so no source pixel is shared by a train and a test image. The test band is in the
middle because the brick photo is a perspective view: bricks are ~1.6× taller at the bottom than
at the top, so a top/bottom split would make every test crop out of distribution by scale.
Each crop has a random side of 112·2^u source pixels, u ~ U(-0.35, 0.35) (88 to 143 px), resized
to ``size`` with PIL's bilinear filter (antialiased when shrinking). The same crops are used at
every ``size``: 64 px shrinks them, 256 px enlarges them.

Defects (drawn at the output resolution; pixel lengths below are for 64 px, scaled by size/64;
each draws its size and contrast from a wide range, so some are subtle and some obvious):

- ``patch``:  an irregular region replaced by a crop of a *different* photo, half of the time
  re-normalised to the clean crop's mean/std (texture-only difference); radius 4.5–14 px.
- ``scratch``: a tapered cubic Bézier curve, 13–45 px long, width 1–3 px, brighter or darker by
  20–110 levels.
- ``blob``:   a smooth irregular bump of brightness change, ±10–70 levels at its peak, radius
  6–19 px.
- ``hole``:   missing material: an irregular region replaced by a dark, flat, slightly grainy
  background, 15–110 levels below the crop's mean, with a 1–2.5 px soft inner edge; radius
  3–11.5 px.
- ``spot``:   1–5 small antialiased dots (radius 0.7–2.5 px) in a cluster, ±20–120 levels.

Zoom and visibility floors (``TextureParams``; the defaults keep everything above as it is,
byte for byte; the demo's values are ``textures:`` in configs/textures.yaml):

- ``crop``: the source side at u = 0 instead of 112 px (smaller: coarser texture per pixel);
- ``min_stroke_px``: no scratch narrower, and no spot dot smaller in diameter, than this many
  output pixels (at 32 px the widths above are sub-pixel);
- ``min_contrast_sd``: no scratch, blob or spot contrast and no hole depth below this many
  standard deviations of the clean crop;
- ``patch_match``: the probability that a patch is matched to the crop's mean/std (0.5 above);
- ``patch_tone_sd``: no unmatched patch whose mean differs from the crop's by less than this many
  standard deviations of the clean crop (its shade is shifted to the floor: foreign material of
  another tone, not only another grain);
- ``defect_scale``: every defect's linear size (radii, a scratch's length and width, a spot's dots
  and their spread) times this: the defects' size relative to the image.

The floors clamp, and the scale multiplies, the drawn value after it is drawn: the random stream,
hence every other draw and every defect already above the floors, is unchanged.

Mask rule (guaranteed and tested): every defect is an opacity map ``alpha`` in [0, 1] and a
target image; the mask is the support ``alpha > 0`` and the defective image equals the clean
crop outside it, byte for byte. Inside, the image is ``round(clean + alpha·(target - clean))``,
and any mask pixel that this leaves unchanged (rounding, clipping at 0/255, or a pasted value
that happens to equal the clean one) is moved by one grey level, so that

    mask == (defective_image != clean_crop)      exactly, for every pixel.

Generators cut their faint antialiasing tails (alpha < 0.05, or a blob's change < 0.5 level)
so that only a thin rim of the mask relies on that one-level move.

Determinism: each image is drawn from its own generator seeded with
``derive_seed(seed, "textures", category, image_id)``, so the bytes depend only on the
arguments, categories are independent of each other, and changing a count only adds or removes
images of that folder. Re-running with the same arguments returns at once.

Example::

    make_textures(Path("raydiff-out/data/textures"), size=32)    # the CPU demo (configs/textures.yaml)
    make_textures(Path("raydiff-out/data/textures-256"), size=256)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import operator
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import skimage
import skimage.data
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from raydiff.errors import ConfigError, DatasetError
from raydiff.io import atomic_dir, is_complete
from raydiff.seeding import derive_seed

#: Bumped whenever the same arguments would give different bytes.
GENERATOR_VERSION = 1
PHOTOS: tuple[str, ...] = ("brick", "grass", "gravel")
DEFECT_TYPES: tuple[str, ...] = ("patch", "scratch", "blob", "hole", "spot")
META_FILE = "textures.json"

#: Row bands of the 512-px photos, as fractions of the height (see module docstring).
TRAIN_BANDS: tuple[tuple[float, float], ...] = ((0.0, 0.34375), (0.65625, 1.0))
TEST_BANDS: tuple[tuple[float, float], ...] = ((0.34375, 0.65625),)
CROP_BASE = 112  # source pixels of a crop at u = 0
CROP_OCTAVES = 0.35  # crop side = CROP_BASE * 2**U(-CROP_OCTAVES, CROP_OCTAVES)
ALPHA_MIN = 0.05  # antialiasing tails below this opacity are cut
#: rgb=True: per-category tint; the largest channel is 1 so that channel equals the grey image.
TINTS: dict[str, tuple[float, float, float]] = {
    "brick": (1.0, 0.74, 0.60),
    "grass": (0.72, 1.0, 0.58),
    "gravel": (1.0, 0.96, 0.88),
}

Box = tuple[int, int, int]  # (row, column, side) of a square crop in photo pixels
#: What a defect generator returns: target grey levels (H,W) float, opacity (H,W) in [0, 1], JSON info.
DefectDraw = tuple[np.ndarray, np.ndarray, dict[str, Any]]


@dataclass(frozen=True)
class TextureParams:
    """Everything that determines the bytes written (stored in ``textures.json``)."""

    size: int
    n_train: int
    n_test_good: int
    n_test_defect: int
    seed: int
    categories: tuple[str, ...]
    defects: tuple[str, ...]
    rgb: bool
    #: Source pixels of a crop's side at u = 0 (the zoom: smaller shows coarser texture).
    crop: int = CROP_BASE
    #: Floor, in output pixels, of a scratch's width and a spot's diameter (0: none), so that at
    #: small ``size`` no thin defect is drawn narrower than this.
    min_stroke_px: float = 0.0
    #: Floor of a scratch's, blob's and spot's contrast and a hole's depth, in standard deviations
    #: of the clean crop (0: none): no brightness change is drawn fainter than the texture varies.
    min_contrast_sd: float = 0.0
    #: Probability that a pasted patch is matched to the clean crop's mean and std (a
    #: texture-only difference); otherwise it keeps the foreign photo's own brightness.
    patch_match: float = 0.5
    #: Every defect's drawn linear size (radii, a scratch's length and width, a spot cluster's dots
    #: and spread) times this, after it is drawn: the defects' size relative to the image.
    defect_scale: float = 1.0
    #: Floor of an unmatched patch's tone difference (its mean minus the clean crop's), in standard
    #: deviations of the clean crop (0: none): foreign material of another shade, not just grain.
    patch_tone_sd: float = 0.0

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {**d, "categories": list(self.categories), "defects": list(self.defects)}


# ---------------------------------------------------------------- photos, regions, crops


def load_photo(name: str) -> np.ndarray:
    """scikit-image's texture photo ``name``: uint8 (512, 512), shipped with the package."""
    photo = np.asarray(getattr(skimage.data, name)())
    if photo.dtype != np.uint8 or photo.ndim != 2:
        raise DatasetError(f"skimage.data.{name}()", f"expected a uint8 grey image, got {photo.dtype} {photo.shape}.",
                           "install a scikit-image release that ships the grey texture photos (>= 0.19).")
    return photo


def region_bands(split: str, height: int) -> list[tuple[int, int]]:
    """Row intervals [start, stop) of the photo that ``split`` ("train"/"test") crops come from."""
    bands = TRAIN_BANDS if split == "train" else TEST_BANDS
    return [(round(a * height), round(b * height)) for a, b in bands]


def draw_box(rng: np.random.Generator, bands: Sequence[tuple[int, int]], width: int, base: int = CROP_BASE) -> Box:
    """A random square crop (row, col, side ``base``·2^U(±CROP_OCTAVES)) wholly inside one of ``bands``."""
    side = int(round(base * 2.0 ** rng.uniform(-CROP_OCTAVES, CROP_OCTAVES)))
    fitting = [(a, b) for a, b in bands if b - a >= side]
    a, b = fitting[int(rng.integers(len(fitting)))]
    return int(rng.integers(a, b - side + 1)), int(rng.integers(0, width - side + 1)), side


def cut_crop(photo: np.ndarray, box: Box, size: int) -> np.ndarray:
    """The crop ``box`` of ``photo`` resized to uint8 (size, size): PIL bilinear, antialiased.

    The crop is cut before resizing, so no pixel outside the box contributes.
    """
    y, x, s = box
    return np.asarray(Image.fromarray(photo[y : y + s, x : x + s]).resize((size, size), Image.Resampling.BILINEAR))


# ---------------------------------------------------------------- the mask rule


def compose(clean: np.ndarray, target: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend a defect into a clean crop; returns (image uint8 (H,W), mask bool (H,W)).

    clean: uint8 (H,W); target: float (H,W) grey levels (any range, clipped); alpha: float (H,W)
    in [0, 1]. mask = alpha > 0, and image != clean exactly where mask is True (module docstring).
    """
    c = clean.astype(np.int16)
    mask = alpha > 0
    blended = np.clip(np.rint(c + alpha * (target - c)), 0, 255).astype(np.int16)
    out = np.where(mask, blended, c)
    # Mask pixels left unchanged move one level toward the target, or away from a 0/255 bound.
    step = np.where(target >= c, 1, -1).astype(np.int16)
    step = np.where((c + step < 0) | (c + step > 255), -step, step)
    out = np.where(mask & (out == c), c + step, out)
    return out.astype(np.uint8), mask


# ---------------------------------------------------------------- shapes and defects


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _signed(rng: np.random.Generator, lo: float, hi: float) -> float:
    return _log_uniform(rng, lo, hi) * (1.0 if rng.random() < 0.5 else -1.0)


def _floored(level: float, clean: np.ndarray, floor_sd: float) -> float:
    """``level`` (signed grey levels) raised in magnitude to ``floor_sd`` times the clean crop's
    standard deviation: the visibility floor of a brightness change."""
    floor = floor_sd * float(clean.std())
    return float(np.copysign(max(abs(level), floor), level))


def _star_radius(rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """A smooth random radius function r(theta) around 1 (harmonics 2..4) for irregular shapes."""
    amp = rng.uniform(0.0, 0.25, size=3) / np.arange(2, 5)
    phase = rng.uniform(0.0, 2 * np.pi, size=3)
    return lambda t: 1.0 + sum(a * np.cos(k * t + p) for k, a, p in zip(range(2, 5), amp, phase))


def _ellipse_coords(rng: np.random.Generator, size: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel (normalised distance, angle) in a random rotated ellipse of mean ``radius``."""
    cy, cx = rng.uniform(0.15 * size, 0.85 * size, size=2)
    aspect, rot = _log_uniform(rng, 1.0, 2.5), rng.uniform(0.0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(rot) + dy * np.sin(rot)) / (radius * np.sqrt(aspect))
    v = (-dx * np.sin(rot) + dy * np.cos(rot)) * np.sqrt(aspect) / radius
    return np.hypot(u, v), np.arctan2(v, u)


def _irregular_region(rng: np.random.Generator, size: int, radius: float) -> np.ndarray:
    """Normalised radius rho (H,W) of an irregular star-shaped region: inside where rho < 1."""
    dist, angle = _ellipse_coords(rng, size, radius)
    return dist / _star_radius(rng)(angle)


def _soft_fill(region: np.ndarray, feather: float) -> np.ndarray:
    """Opacity 1 inside ``region`` (bool) with a soft inner edge of ``feather`` px; > 0 on all of it."""
    return np.clip(ndimage.distance_transform_edt(region) / max(feather, 1.0), 0.0, 1.0)


def patch(rng: np.random.Generator, clean: np.ndarray, category: str, photos: dict[str, np.ndarray],
        params: TextureParams) -> DefectDraw:
    """A region pasted from another texture photo (optionally matched to the crop's mean/std)."""
    size = clean.shape[0]
    foreign = [p for p in PHOTOS if p != category][int(rng.integers(len(PHOTOS) - 1))]
    fphoto = photos[foreign]
    box = draw_box(rng, [(0, fphoto.shape[0])], fphoto.shape[1], params.crop)
    tex = cut_crop(fphoto, box, size).astype(np.float64)
    matched = bool(rng.random() < params.patch_match)
    if matched:
        tex = (tex - tex.mean()) / (tex.std() + 1e-6) * clean.std() + clean.mean()
    else:
        tone = float(tex.mean() - clean.mean())
        tex = tex + (_floored(tone, clean, params.patch_tone_sd) - tone)
    radius = size * _log_uniform(rng, 0.07, 0.22) * params.defect_scale
    alpha = _soft_fill(_irregular_region(rng, size, radius) < 1.0, rng.uniform(1.0, 2.0) * size / 64)
    tone = float(tex.mean() - clean.mean())  # the pasted texture's shade against the crop's
    return tex, alpha, {"foreign": foreign, "foreign_box": list(box), "matched": matched, "radius_px": radius,
                        "tone": tone}


def scratch(rng: np.random.Generator, clean: np.ndarray, category: str, photos: dict[str, np.ndarray],
        params: TextureParams) -> DefectDraw:
    """A thin tapered curve, brighter or darker, antialiased by the distance to the curve."""
    size = clean.shape[0]
    k = size / 64
    length = size * rng.uniform(0.2, 0.7) * params.defect_scale
    p0 = rng.uniform(0.1 * size, 0.9 * size, size=2)
    phi = rng.uniform(0.0, 2 * np.pi)
    along = np.array([np.cos(phi), np.sin(phi)])
    normal = np.array([-along[1], along[0]])
    p1 = p0 + along * length / 3 + normal * rng.normal(0.0, 0.25 * length)
    p2 = p0 + along * 2 * length / 3 + normal * rng.normal(0.0, 0.25 * length)
    p3 = p0 + along * length
    t = np.linspace(0.0, 1.0, int(np.ceil(length * 4)) + 2)[:, None]
    curve = (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3  # (N, 2) (x, y)
    width = max(rng.uniform(1.0, 3.0) * k * params.defect_scale, params.min_stroke_px)
    taper = width * (0.35 + 0.65 * np.sin(np.pi * t[:, 0]))
    yy, xx = np.mgrid[0:size, 0:size]
    dist, idx = cKDTree(curve).query(np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64))
    alpha = np.clip(taper[idx] / 2 + 0.5 - dist, 0.0, 1.0).reshape(size, size)
    alpha[alpha < ALPHA_MIN] = 0.0
    contrast = _floored(_signed(rng, 20.0, 110.0), clean, params.min_contrast_sd)
    return clean + contrast, alpha, {"width_px": width, "length_px": length, "contrast": contrast}


def blob(rng: np.random.Generator, clean: np.ndarray, category: str, photos: dict[str, np.ndarray],
        params: TextureParams) -> DefectDraw:
    """A smooth bump of brightness change, alpha = (1 - rho^2)^2 inside an irregular region."""
    size = clean.shape[0]
    radius = size * _log_uniform(rng, 0.1, 0.3) * params.defect_scale
    rho = _irregular_region(rng, size, radius)
    contrast = _floored(_signed(rng, 10.0, 70.0), clean, params.min_contrast_sd)
    alpha = np.where(rho < 1.0, (1.0 - np.minimum(rho, 1.0) ** 2) ** 2, 0.0)
    alpha[np.abs(alpha * contrast) < 0.5] = 0.0  # a change that rounds to nothing is not part of it
    return clean + contrast, alpha, {"radius_px": radius, "contrast": contrast}


def hole(rng: np.random.Generator, clean: np.ndarray, category: str, photos: dict[str, np.ndarray],
        params: TextureParams) -> DefectDraw:
    """Missing material: a dark, flat, slightly grainy background with a soft inner edge."""
    size = clean.shape[0]
    radius = size * _log_uniform(rng, 0.05, 0.18) * params.defect_scale
    alpha = _soft_fill(_irregular_region(rng, size, radius) < 1.0, rng.uniform(1.0, 2.5) * size / 64)
    depth = _floored(_log_uniform(rng, 15.0, 110.0), clean, params.min_contrast_sd)
    background = max(float(clean.mean()) - depth, 0.0) + rng.normal(0.0, 2.0, size=clean.shape)
    return background, alpha, {"radius_px": radius, "depth": depth}


def spot(rng: np.random.Generator, clean: np.ndarray, category: str, photos: dict[str, np.ndarray],
        params: TextureParams) -> DefectDraw:
    """A cluster of 1-5 small antialiased dots, all brighter or all darker."""
    size = clean.shape[0]
    k = size / 64
    n = int(rng.integers(1, 6))
    centre = rng.uniform(0.15 * size, 0.85 * size, size=2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    alpha = np.zeros((size, size))
    radii = []
    for _ in range(n):
        cy, cx = centre + rng.normal(0.0, 0.08 * size * params.defect_scale, size=2)
        r = max(rng.uniform(0.7, 2.5) * k * params.defect_scale, params.min_stroke_px / 2)
        radii.append(r)
        alpha = np.maximum(alpha, np.clip(r + 0.5 - np.hypot(yy - cy, xx - cx), 0.0, 1.0))
    alpha[alpha < ALPHA_MIN] = 0.0
    contrast = _floored(_signed(rng, 20.0, 120.0), clean, params.min_contrast_sd)
    return clean + contrast, alpha, {"dots": n, "radii_px": radii, "contrast": contrast}


#: defect type -> generator(rng, clean uint8 (H,W), category, photos, params) -> (target, alpha, info).
DEFECTS: dict[str, Callable[..., DefectDraw]] = {
    "patch": patch, "scratch": scratch, "blob": blob, "hole": hole, "spot": spot,
}


# ---------------------------------------------------------------- one image


def render_image(
    params: TextureParams, category: str, split: str, defect: str, index: int, photos: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """One image of the benchmark: (image uint8 (H,W) or (H,W,3), mask bool (H,W) or None, record).

    ``record`` (JSON) holds the crop box and the defect's drawn parameters.
    """
    image_id = f"{split}/{defect}/{index:03d}.png"
    rng = np.random.default_rng(derive_seed(params.seed, "textures", category, image_id))
    photo = photos[category]
    box = draw_box(rng, region_bands(split, photo.shape[0]), photo.shape[1], params.crop)
    clean = cut_crop(photo, box, params.size)
    record: dict[str, Any] = {"photo": category, "box": list(box)}
    image, mask = clean, None
    if defect != "good":
        for _ in range(20):  # a shape drawn wholly outside the crop is drawn again
            target, alpha, info = DEFECTS[defect](rng, clean, category, photos, params)
            image, mask = compose(clean, target, alpha)
            if mask.any():
                break
        else:
            raise RuntimeError(f"textures: {category}/{image_id}: no visible {defect} in 20 draws")
        record["defect"] = {"type": defect, **_jsonable(info)}
    if params.rgb:
        image = np.rint(image[..., None] * np.asarray(TINTS[category])).astype(np.uint8)
    return image, mask, record


def _jsonable(info: dict[str, Any]) -> dict[str, Any]:
    """Round floats (and lists of them) so the provenance JSON stays short."""
    def conv(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, (float, np.floating)):
            return round(float(v), 3)
        if isinstance(v, np.integer):
            return int(v)
        return v

    return {k: conv(v) for k, v in info.items()}


def image_plan(params: TextureParams) -> list[tuple[str, str, int]]:
    """(split, defect, index) of every image of one category; defects dealt round-robin."""
    plan = [("train", "good", i) for i in range(params.n_train)]
    plan += [("test", "good", i) for i in range(params.n_test_good)]
    per_defect = {d: 0 for d in params.defects}
    for j in range(params.n_test_defect):
        d = params.defects[j % len(params.defects)]
        plan.append(("test", d, per_defect[d]))
        per_defect[d] += 1
    return plan


# ---------------------------------------------------------------- the dataset


def check_params(params: TextureParams) -> None:
    """Raise ConfigError naming the first argument out of range."""
    where = "make_textures"
    if not 16 <= params.size <= 1024:
        raise ConfigError(where, f"size={params.size} is out of range.", "use 16..1024 (64 for CPU, 256 for GPU runs).")
    for name in ("n_train", "n_test_good"):
        if not 1 <= getattr(params, name) <= 9999:
            raise ConfigError(where, f"{name}={getattr(params, name)} is out of range.", "use 1..9999.")
    if not 0 <= params.n_test_defect <= 9999:
        raise ConfigError(where, f"n_test_defect={params.n_test_defect} is out of range.", "use 0..9999.")
    biggest = round(params.crop * 2.0**CROP_OCTAVES)
    if not 8 <= params.crop or biggest > min(b - a for a, b in region_bands("test", 512)):
        raise ConfigError(where, f"crop={params.crop} is out of range (its largest crops, {biggest} px, must fit the "
                                 "photo's test band).", "use 8..124.")
    if not 0.0 <= params.min_stroke_px <= params.size / 4:
        raise ConfigError(where, f"min_stroke_px={params.min_stroke_px} is out of range.", f"use 0..{params.size / 4:g}.")
    if not 0.0 <= params.min_contrast_sd <= 5.0:
        raise ConfigError(where, f"min_contrast_sd={params.min_contrast_sd} is out of range.", "use 0..5.")
    if not 0.0 <= params.patch_match <= 1.0:
        raise ConfigError(where, f"patch_match={params.patch_match} is out of range.", "use a probability, 0..1.")
    if not 0.0 <= params.patch_tone_sd <= 5.0:
        raise ConfigError(where, f"patch_tone_sd={params.patch_tone_sd} is out of range.", "use 0..5.")
    if not 0.25 <= params.defect_scale <= 2.5:
        raise ConfigError(where, f"defect_scale={params.defect_scale} is out of range.", "use 0.25..2.5.")
    for name, given, valid in (("categories", params.categories, PHOTOS), ("defects", params.defects, DEFECT_TYPES)):
        bad = [c for c in given if c not in valid]
        if bad or not given or len(set(given)) != len(given):
            raise ConfigError(where, f"{name}={list(given)} must be distinct names, at least one.",
                              f"choose from {list(valid)}.")


def _read_meta(out: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((out / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("generator") == "raydiff.data.textures" else None


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def make_textures(
    out: Path,
    size: int = 64,
    n_train: int = 60,
    n_test_good: int = 15,
    n_test_defect: int = 15,
    seed: int = 0,
    categories: Sequence[str] = PHOTOS,
    defects: Sequence[str] = DEFECT_TYPES,
    rgb: bool = False,
    crop: int = CROP_BASE,
    min_stroke_px: float = 0.0,
    min_contrast_sd: float = 0.0,
    patch_match: float = 0.5,
    defect_scale: float = 1.0,
    patch_tone_sd: float = 0.0,
) -> Path:
    """Write the texture benchmark (MVTec layout, module docstring) to ``out`` and return ``out``.

    size: image side in px. n_train / n_test_good / n_test_defect: images per category
    (defective ones dealt round-robin over ``defects``). rgb: tint to 3 channels per category.
    crop: source pixels of a crop's side at u = 0 (module docstring). min_stroke_px: the thinnest
    scratch width and spot diameter, in output pixels. min_contrast_sd: the faintest brightness
    change, in standard deviations of the clean crop. patch_match: probability that a patch is
    matched to the crop's mean and std. defect_scale: every defect's linear size times this.
    patch_tone_sd: the faintest shade difference of an unmatched patch, in standard deviations.
    Written into a temporary sibling folder that is renamed to ``out`` when complete, then the
    ``_SUCCESS`` marker; a complete ``out`` with the same parameters is returned at once.

    Raises DatasetError when ``out`` holds a dataset made with other parameters or other files,
    ConfigError for an argument out of range.
    """
    out = Path(out)
    categories = (categories,) if isinstance(categories, str) else tuple(categories)
    defects = (defects,) if isinstance(defects, str) else tuple(defects)
    try:
        ints = [operator.index(v) for v in (size, n_train, n_test_good, n_test_defect, seed)]
    except TypeError as err:
        raise ConfigError("make_textures", f"size, counts and seed must be integers ({err}).", "pass ints.") from None
    try:
        crop = operator.index(crop)
        floors = (float(min_stroke_px), float(min_contrast_sd), float(patch_match), float(defect_scale),
                  float(patch_tone_sd))
    except (TypeError, ValueError) as err:
        raise ConfigError("make_textures", f"crop must be an integer; min_stroke_px, min_contrast_sd, patch_match, "
                                           f"defect_scale and patch_tone_sd numbers ({err}).",
                          "pass e.g. crop=56, min_stroke_px=1.5, min_contrast_sd=1.0, patch_match=0.5, "
                          "defect_scale=1.5, patch_tone_sd=2.0.") from None
    params = TextureParams(*ints, categories, defects, bool(rgb), crop, *floors)
    check_params(params)
    wanted = {"version": GENERATOR_VERSION, **params.to_json()}
    if out.exists():
        if not out.is_dir():
            raise DatasetError(out, "exists and is not a folder.", "choose another output path.")
        meta = _read_meta(out)
        if meta is not None and is_complete(out):
            # Parameters added later are absent from older datasets: there they had their default.
            defaults = {f.name: f.default for f in dataclasses.fields(TextureParams)
                        if f.default is not dataclasses.MISSING}
            found = {"version": meta.get("version"), **defaults, **meta.get("params", {})}
            if found == wanted:
                return out
            diff = ", ".join(f"{k}={found.get(k)!r} (asked {v!r})" for k, v in wanted.items() if found.get(k) != v)
            raise DatasetError(out, f"holds a texture dataset made with other parameters: {diff}.",
                               "choose another folder, or delete this one to regenerate it.")
        if meta is None and any(out.iterdir()):
            raise DatasetError(out, f"exists and is not a texture dataset (no {META_FILE}); it is left untouched.",
                               "choose a new or empty folder.")
        # An empty folder or an unfinished texture dataset (no marker) is rewritten below.
    for stale in out.parent.glob(f".tmp-{out.name}-*"):  # left by a killed run into this same folder
        shutil.rmtree(stale, ignore_errors=True)

    photos = {name: load_photo(name) for name in PHOTOS}
    meta = {
        "generator": "raydiff.data.textures",
        "version": GENERATOR_VERSION,
        "params": params.to_json(),
        "skimage_version": skimage.__version__,
        "photo_sha256": {n: hashlib.sha256(p.tobytes()).hexdigest() for n, p in photos.items()},
        "regions": {f"{s}_rows": region_bands(s, photos[PHOTOS[0]].shape[0]) for s in ("train", "test")},
        "images": {},
    }
    with atomic_dir(out, {k: meta[k] for k in ("generator", "version", "params")}) as tmp:
        for category in params.categories:
            for split, defect, index in image_plan(params):
                image, mask, record = render_image(params, category, split, defect, index, photos)
                image_id = f"{split}/{defect}/{index:03d}.png"
                _write_png(tmp / category / image_id, image)
                if mask is not None:
                    record["mask"] = f"ground_truth/{defect}/{index:03d}_mask.png"
                    _write_png(tmp / category / record["mask"], mask.astype(np.uint8) * 255)
                meta["images"][f"{category}/{image_id}"] = record
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    return out
