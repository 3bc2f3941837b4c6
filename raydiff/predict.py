"""Score new images with a finished run: its config, trained models and fitted states.

    raydiff predict OUT/<run_id> new-parts/ --output predictions/

    predictions/
      scores.csv, scores.parquet                one row per (image, variant): score, threshold, ...
      pixels/category=<c>/variant=<v>/          one row per pixel: image_id, y, x, score
        part-<first>.parquet                    (the run's pixel columns that apply: no gt, region)
      overlays/<variant>/<image>.png            the image at its own size, the variant's heat map,
                                                the threshold's contour
      meta.json, _SUCCESS                       what produced it; the marker is written last

Images of any size are loaded as the run loaded its test images (``raydiff.data.images.load_image``
with the run's ``dataset.image_size`` / ``resize`` and the models' channel count) and scored with
the run's scoring library (``raydiff.scoring.score_batch``), so a score depends on the image, the
models and the config alone. The noise of each image is seeded from its id (``raydiff.seeding``):
an image inside the run's category folder gets the run's id for it (its path relative to that
folder), so predicting the run's own test images reproduces the run's stored scores.

Threshold: per variant, the score that a fraction ``fpr`` of the run's *normal test images'*
pixels exceed (``raydiff.inspect_run.pixel_thresholds`` on the run's pixel rows of label-0
images of the category). None when the run holds no scores for that variant (no contour drawn).

Overlays are drawn at the original resolution: the map (at ``image_size``) is resized back
bilinearly (``resize``: over the whole image; ``center-crop``: over the central square it was
computed on, the rest is left without heat). Colour scale per variant, the same for every image:
from the run's median normal-pixel score (transparent) to twice the threshold's distance from it,
so the threshold sits mid-scale; without a threshold, the min/max of this prediction's maps.

Three steps, so that Ray can do the middle one (``raydiff.predict_ray``, ``raydiff predict
--ray``): ``prepare_prediction`` checks every input before anything is scored;
``score_in_process`` (or Ray's actors) yields scored batches in order; ``write_prediction``
writes the folder from them on the driver, whoever scored.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib
import numpy as np
import polars as pl
import pyarrow as pa
import torch
from PIL import Image
from scipy import ndimage

from raydiff.config import Config, load_config, run_id
from raydiff.data.images import center_crop_box, load_image, open_image
from raydiff.errors import CheckpointError, DatasetError, OutputError, RaydiffError
from raydiff.inspect_run import pixel_thresholds
from raydiff.io import MARKER, atomic_dir, is_complete
from raydiff.models.checkpoint import read_meta
from raydiff.paths import fitted_dir, model_dir
from raydiff.runs import PARQUET_OPTIONS, scan_pixels, versions, write_parquet_atomic
from raydiff.scoring import score_batch
from raydiff.scoring.fit import load_category_context

Progress = Callable[[str], None]

#: Files taken from a folder argument (case-insensitive suffixes).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
#: Columns of the per-pixel files (the run's PIXEL_SCHEMA columns that apply to unlabelled images).
PIXEL_COLUMNS = pa.schema([("image_id", pa.string()), ("y", pa.int16()), ("x", pa.int16()), ("score", pa.float32())])
#: Contour colour (RGB) of the thresholded region on the overlays.
CONTOUR_RGB = (0, 255, 128)
#: scores.csv / scores.parquet: one row per (image, variant); ``pixel_threshold`` and
#: ``pixels_above`` (map pixels > threshold) are null without a threshold.
SCORE_SCHEMA = {"image_id": pl.String, "image_path": pl.String, "category": pl.String, "variant": pl.String,
                "score": pl.Float64, "max_pixel_score": pl.Float64, "pixel_threshold": pl.Float64,
                "pixels_above": pl.Int64, "seconds_per_image": pl.Float64}
HEAT_ALPHA = 0.55
_SWEEP_FIRST = "run `raydiff sweep --config {config}` first (predict uses the run's trained models and fitted states)."


# --------------------------------------------------------------------------------------------
# The run folder
# --------------------------------------------------------------------------------------------


def open_run(run_dir: Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """The config of run folder ``run_dir`` (its config.yaml), with the output root set to the
    folder's parent (where its ``models/`` are), so a moved output root still resolves.

    ``overrides``: dotted ``ray.*`` keys (where and on what the scoring runs); any other key
    would score otherwise than the run did and is refused."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        runs = sorted(p.parent.name for p in run_dir.glob("*/config.yaml"))
        fix = (f"pass a run folder, e.g. {run_dir / runs[0]}." if runs
               else "pass OUT/<run_id>, the folder `raydiff sweep` prints as 'run folder'.")
        raise OutputError(run_dir, "is not a raydiff run folder (no config.yaml).", fix)
    for key in overrides or {}:
        if not key.startswith("ray."):
            raise RaydiffError(f"--set {key}", "predict scores with the run's own settings; only ray.* keys "
                               "(where and on what it runs) can be changed.", "drop it, or run a sweep with that setting.")
    cfg = load_config(path, overrides, upgrade=True)
    cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, root=str(run_dir.resolve().parent)))
    if run_id(cfg) != run_dir.name:
        raise OutputError(path, f"describes run {run_id(cfg)}, but the folder is named {run_dir.name}.",
                          "pass the run folder unrenamed (its name is the config's run id).")
    return cfg


def run_categories(cfg: Config, run_dir: Path) -> list[str]:
    """The config's categories, else (discovered categories) those with a complete fitted state."""
    if cfg.dataset.categories:
        return list(cfg.dataset.categories)
    base = Path(run_dir) / "fitted" / cfg.dataset.dataset_name
    return sorted(p.name for p in base.glob("*") if is_complete(p)) if base.is_dir() else []


def pick_category(cfg: Config, run_dir: Path, category: str | None) -> str:
    found = run_categories(cfg, run_dir)
    if category is not None:
        if found and category not in found:
            raise RaydiffError("--category", f"{category!r} is not a category of this run; its categories: "
                               f"{', '.join(found)}.", "pick one of them.")
        return category
    if len(found) == 1:
        return found[0]
    if not found:
        raise CheckpointError(Path(run_dir) / "fitted", "the run has no fitted category.",
                              _SWEEP_FIRST.format(config=Path(run_dir) / "config.yaml"))
    raise RaydiffError("--category", f"the run has {len(found)} categories: {', '.join(found)}.", "pick one with --category.")


def check_trained(cfg: Config, run_dir: Path, category: str) -> None:
    """One line naming the missing model or fitted state, with the command that makes it."""
    fix = _SWEEP_FIRST.format(config=Path(run_dir) / "config.yaml")
    for name in cfg.models_needed():
        folder = model_dir(cfg, category, name)
        if not is_complete(folder):
            raise CheckpointError(folder, f"no trained model {name!r} for category {category!r}.", fix)
    if not is_complete(fitted_dir(cfg, category)):
        raise CheckpointError(fitted_dir(cfg, category), f"no fitted state for category {category!r}.", fix)


def thresholds(run_dir: Path, category: str, variants: Sequence[str], fpr: float) -> pl.DataFrame:
    """variant, threshold (score at pixel FPR ``fpr`` over the run's normal test images), median
    (their median pixel score; the overlays' transparent end). Nulls for a variant without scores."""
    rows = pl.DataFrame({"variant": list(variants)}, schema={"variant": pl.String})
    try:
        normal = scan_pixels(Path(run_dir)).filter(
            (pl.col("category") == category) & (pl.col("label") == 0) & pl.col("variant").is_in(list(variants)))
    except OutputError:  # no complete scores in the run: no thresholds
        return rows.with_columns(threshold=pl.lit(None, pl.Float64), median=pl.lit(None, pl.Float64))
    thr = pixel_thresholds(normal, fpr).select("variant", "threshold")
    med = normal.group_by("variant").agg(median=pl.col("score").median().cast(pl.Float64)).collect()
    return rows.join(thr, on="variant", how="left").join(med, on="variant", how="left")


# --------------------------------------------------------------------------------------------
# The images
# --------------------------------------------------------------------------------------------


def collect_images(inputs: Sequence[Path]) -> list[tuple[Path, Path | None]]:
    """(image file, the folder argument it came from or None), in argument order, each folder's
    image files sorted (recursively, by IMAGE_SUFFIXES)."""
    out: list[tuple[Path, Path | None]] = []
    for given in map(Path, inputs):
        if given.is_dir():
            files = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DatasetError(given, f"holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}).",
                                   "pass a folder of images or image files.")
            out.extend((f, given) for f in files)
        elif given.is_file():
            out.append((given, None))
        else:
            raise DatasetError(given, "does not exist.", "pass image files or folders of images.")
    if not out:
        raise DatasetError("IMAGES", "no images given.", "pass image files or folders of images.")
    return out


def image_ids(images: Sequence[tuple[Path, Path | None]], category_dir: Path) -> list[str]:
    """Each image's id (it seeds the image's noise): its path relative to the run's category folder
    when inside it (the run's own id), else relative to its folder argument, else its file name."""
    base = category_dir.resolve()
    ids: list[str] = []
    for path, folder in images:
        p = path.resolve()
        if p.is_relative_to(base):
            ids.append(p.relative_to(base).as_posix())
        elif folder is not None:
            ids.append(p.relative_to(folder.resolve()).as_posix())
        else:
            ids.append(path.name)
    seen: dict[str, Path] = {}
    for (path, _), i in zip(images, ids, strict=True):
        if i in seen and seen[i].resolve() != path.resolve():
            raise DatasetError(path, f"gets the same image id {i!r} as {seen[i]}.", "rename one, or predict them separately.")
        seen.setdefault(i, path)
    return ids


# --------------------------------------------------------------------------------------------
# Overlays
# --------------------------------------------------------------------------------------------


def _map_to_image(score_map: np.ndarray, width: int, height: int, fit: str) -> tuple[np.ndarray, np.ndarray]:
    """The (S,S) map at the original (height, width) → (map (H,W) float32, where it is defined (H,W) bool)."""
    left, top, right, bottom = (0, 0, width, height) if fit == "resize" else center_crop_box(width, height)
    small = Image.fromarray(score_map.astype(np.float32), mode="F").resize((right - left, bottom - top), Image.Resampling.BILINEAR)
    full = np.zeros((height, width), np.float32)
    valid = np.zeros((height, width), bool)
    full[top:bottom, left:right] = np.asarray(small)
    valid[top:bottom, left:right] = True
    return full, valid


def overlay(path: Path, score_map: np.ndarray, threshold: float | None, scale: tuple[float, float], fit: str) -> Any:
    """A PIL RGB image of ``path``'s size: the image, the map as an inferno heat map (transparent
    at ``scale[0]``, opaque from ``scale[1]``), and the contour of ``map > threshold``."""
    img = open_image(path)
    rgb = np.asarray(img.convert("RGB"), np.float32) / 255.0
    height, width = rgb.shape[:2]
    full, valid = _map_to_image(score_map, width, height, fit)
    lo, hi = scale
    level = np.clip((full - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    heat = matplotlib.colormaps["inferno"](level)[..., :3]
    alpha = (HEAT_ALPHA * np.clip(level * 2.0, 0.0, 1.0) * valid)[..., None]
    out = rgb * (1 - alpha) + heat * alpha
    if threshold is not None:
        mask = (full > threshold) & valid
        width_px = max(1, round(min(width, height) / 128))
        edge = mask & ~ndimage.binary_erosion(mask, iterations=width_px, border_value=0)
        out[edge] = np.asarray(CONTOUR_RGB, np.float32) / 255.0
    return Image.fromarray(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8), mode="RGB")


def _scale(row: dict[str, Any], maps: Sequence[np.ndarray]) -> tuple[float, float]:
    if row["threshold"] is not None and row["median"] is not None and row["threshold"] > row["median"]:
        return row["median"], 2.0 * row["threshold"] - row["median"]
    lo = float(min(m.min() for m in maps))
    return lo, float(max(m.max() for m in maps))


def overlay_name(image_id: str) -> str:
    """A flat PNG file name for an image id (``test/crack/000.png`` → ``test__crack__000.png``)."""
    return Path(image_id.replace("/", "__")).with_suffix(".png").name


# --------------------------------------------------------------------------------------------
# Predict
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Prediction:
    """What one predict call scores and where it writes, checked before any scoring starts:
    the run's config (``variants.enabled`` = the chosen variants), the images and their ids, the
    variants' thresholds, and the models' image channels."""

    cfg: Config
    run_dir: Path
    output: Path
    category: str
    variants: list[str]
    images: list[tuple[Path, Path | None]]
    ids: list[str]
    thresholds: pl.DataFrame
    fpr: float
    channels: int

    def load(self, first: int, last: int) -> np.ndarray:
        """Images ``first .. last - 1`` as the run loaded its test images: (B,C,S,S) float32 in [-1, 1]."""
        d = self.cfg.dataset
        return np.stack([load_image(p, d.image_size, self.channels, d.resize)  # type: ignore[arg-type]
                         for p, _ in self.images[first:last]])


class BatchScores(NamedTuple):
    """One variant's results on a batch of B images: image scores (B,) (higher = more
    anomalous), maps (B,S,S) float32, seconds of scoring per image (B,)."""

    scores: np.ndarray
    maps: np.ndarray
    seconds_per_image: np.ndarray


#: A scored batch: the index of its first image, and its results per variant. Batches come in
#: order, ``ray.scoring_batch_size`` images each (the last one fewer), whoever computed them.
Scored = tuple[int, dict[str, BatchScores]]


def prepare_prediction(
    run_dir: Path,
    inputs: Sequence[Path],
    output: Path,
    variants: Sequence[str] = (),
    category: str | None = None,
    fpr: float = 0.01,
    overrides: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> Prediction:
    """Open the run, check every input and the trained models (one line naming what is wrong),
    compute the thresholds. ``overrides``: ``ray.*`` keys (``open_run``)."""
    say = progress or (lambda _msg: None)
    if not 0.0 < fpr < 1.0:
        raise RaydiffError("--fpr", f"must be in (0, 1), got {fpr}.", "pass e.g. --fpr 0.01.")
    run_dir, output = Path(run_dir), Path(output)
    cfg = open_run(run_dir, overrides)
    category = pick_category(cfg, run_dir, category)
    known = list(cfg.variants.instances)
    chosen = list(variants) or list(cfg.variants.enabled)
    unknown = [v for v in chosen if v not in known]
    if unknown:
        raise RaydiffError("--variant", f"{unknown[0]!r} is not a variant of this run; its variants: {', '.join(known)}.",
                           "pick one of them.")
    cfg = dataclasses.replace(cfg, variants=dataclasses.replace(cfg.variants, enabled=tuple(chosen)))
    if output.exists() and any(output.iterdir()) and not _is_predict_output(output):
        raise OutputError(output, "exists and is not a `raydiff predict` output.", "pick a new --output folder.")
    images = collect_images(inputs)
    ids = image_ids(images, Path(cfg.dataset.root) / category)
    check_trained(cfg, run_dir, category)
    thr = thresholds(run_dir, category, chosen, fpr)
    for row in thr.filter(pl.col("threshold").is_null()).iter_rows(named=True):
        say(f"{row['variant']}: the run has no pixel scores of normal test images of {category}: no threshold, no contour")
    channels = int(read_meta(model_dir(cfg, category, cfg.models_needed()[0]))["channels"])
    return Prediction(cfg, run_dir, output, category, chosen, images, ids, thr, fpr, channels)


def score_in_process(job: Prediction, device: str = "cpu") -> Iterator[Scored]:
    """Score ``job``'s images batch by batch in this process, on torch device ``device``."""
    ctx = load_category_context(job.cfg, job.category, torch.device(device))
    batch_size = job.cfg.ray.scoring_batch_size
    for first in range(0, len(job.images), batch_size):
        last = min(first + batch_size, len(job.images))
        x = torch.from_numpy(job.load(first, last))
        results = score_batch(ctx, x, job.ids[first:last], job.variants)
        yield first, {vid: BatchScores(res.scores, res.maps, np.full(last - first, res.seconds_per_image))
                      for vid, res in results.items()}


def write_prediction(job: Prediction, batches: Iterable[Scored], ran: Mapping[str, Any] | None = None,
                     progress: Progress | None = None) -> dict[str, Any]:
    """Write ``job.output`` (see the module docstring) from ``batches`` (in order, every image
    once) as they come; the folder is renamed into place with its marker once all is written.
    ``ran``: where the scoring ran, recorded in meta.json. Returns {"scores": DataFrame,
    "thresholds": DataFrame, "output": Path}."""
    say = progress or (lambda _msg: None)
    category, chosen, images, ids, output = job.category, job.variants, job.images, job.ids, job.output
    size, fit = job.cfg.dataset.image_size, job.cfg.dataset.resize
    rows: list[dict[str, Any]] = []
    maps: dict[str, list[np.ndarray]] = {v: [] for v in chosen}
    by_variant = {r["variant"]: r for r in job.thresholds.iter_rows(named=True)}
    done = 0
    with atomic_dir(output, {"what": "raydiff predict", "images": len(images)}) as tmp:
        yy, xx = np.indices((size, size), dtype=np.int16)
        for first, results in batches:
            if first != done:
                raise RuntimeError(f"predict: batch at image {first} arrived, image {done} expected")
            for vid, res in results.items():
                b = len(res.scores)
                part_ids = ids[first:first + b]
                table = pa.Table.from_arrays(
                    [pa.array(np.repeat(part_ids, size * size)), pa.array(np.tile(yy.ravel(), b)),
                     pa.array(np.tile(xx.ravel(), b)), pa.array(res.maps.reshape(-1).astype(np.float32))],
                    schema=PIXEL_COLUMNS)
                folder = tmp / "pixels" / f"category={category}" / f"variant={vid}"
                folder.mkdir(parents=True, exist_ok=True)
                write_parquet_atomic(table, folder / f"part-{first:06d}.parquet")
                maps[vid].extend(res.maps)
                t = by_variant[vid]["threshold"]
                for (path, _), iid, score, m, sec in zip(images[first:first + b], part_ids, res.scores, res.maps,
                                                         res.seconds_per_image, strict=True):
                    rows.append({"image_id": iid, "image_path": str(path), "category": category, "variant": vid,
                                 "score": float(score), "max_pixel_score": float(m.max()), "pixel_threshold": t,
                                 "pixels_above": None if t is None else int((m > t).sum()),
                                 "seconds_per_image": float(sec)})
            done = first + len(next(iter(results.values())).scores)
            say(f"predict {category}: {done}/{len(images)} images")
        if done != len(images):
            raise RuntimeError(f"predict: {done} of {len(images)} images scored")
        scores = pl.DataFrame(rows, schema=SCORE_SCHEMA)
        scores = scores.sort("variant", "image_id")
        scores.write_csv(tmp / "scores.csv")
        scores.write_parquet(tmp / "scores.parquet", **PARQUET_OPTIONS)
        for vid in chosen:
            folder = tmp / "overlays" / vid
            folder.mkdir(parents=True)
            scale = _scale(by_variant[vid], maps[vid])
            for (path, _), iid, m in zip(images, ids, maps[vid], strict=True):
                overlay(path, m, by_variant[vid]["threshold"], scale, fit).save(folder / overlay_name(iid))
        info = {"run_dir": str(job.run_dir.resolve()), "run_id": job.run_dir.name, "category": category,
                "variants": chosen, "fpr": job.fpr, "images": len(images), "image_size": size, "resize": fit,
                "channels": job.channels, "thresholds": job.thresholds.to_dicts(), "versions": versions(),
                "ran": dict(ran or {"on": "in-process"})}
        (tmp / "meta.json").write_text(json.dumps(info, indent=2, default=str))
    say(f"predict {category}: {len(images)} images x {len(chosen)} variants -> {output}")
    return {"scores": scores, "thresholds": job.thresholds, "output": output}


def predict(
    run_dir: Path,
    inputs: Sequence[Path],
    output: Path,
    variants: Sequence[str] = (),
    category: str | None = None,
    fpr: float = 0.01,
    device: str = "cpu",
    progress: Progress | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``inputs`` (image files / folders) with run ``run_dir`` in this process; write
    ``output`` (see the module docstring). Returns {"scores": DataFrame, "thresholds": DataFrame,
    "output": Path}. ``overrides``: ``ray.*`` keys (``open_run``; ``ray.scoring_batch_size``
    applies here too). On Ray: ``raydiff.predict_ray.predict_on_ray``.

    Scores: higher = more anomalous (the variant's image score, normalised as in the run).
    ``output`` must be new, empty or an earlier predict output (it is replaced whole).
    """
    job = prepare_prediction(run_dir, inputs, output, variants, category, fpr, overrides, progress)
    return write_prediction(job, score_in_process(job, device), {"on": "in-process", "device": device}, progress)


def _is_predict_output(folder: Path) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()).get("what") == "raydiff predict"
    except (OSError, ValueError):
        return False
