"""MVTec AD 2's private test sets, scored by a finished run, in the folder MVTec's evaluation
server takes.

    raydiff export-mvtec-ad2 OUT/<run_id> --variant trend --output ad2/

    ad2/
      submission/                                  the folder to check and upload (nothing else in it)
        anomaly_images/<object>/<split>/<stem>.tiff               float16, 2-D, the image's own size
        anomaly_images_thresholded/<object>/<split>/<stem>.png    uint8, 2-D, 0 normal / 255 anomalous
      scores.csv, scores.parquet                   one row per image: image score, max pixel score, threshold
      meta.json, _SUCCESS                          what produced it; the marker is written last

``<split>`` is ``test_private`` and ``test_private_mixed`` (``raydiff.data.manifest.AD2_PRIVATE_SPLITS``),
``<stem>`` the image's (``000_regular``, ``000_mixed``). The format is MVTec's own, from the
utilities shipped with the dataset (MVTecAD2_public_code_utils, MVTec Software GmbH 2025; read in the
copies at github.com/TonyLinX/MediCLIP and github.com/jiin117/KKCC_AnomalyDetection, folder
``MVTecAD2_public_code_utils/``):

- ``check_and_prepare_data_for_upload.py`` / ``utils.py``: ``anomaly_images/`` holds exactly the
  eight objects, each exactly the two private test folders, each exactly ``OFFICIAL_PRIVATE_IMAGES``
  files named ``{index:03d}_regular.tiff`` (test_private) / ``{index:03d}_mixed.tiff``
  (test_private_mixed); each read with ``tifffile.imread`` must be 2-D float16.
  ``anomaly_images_thresholded/`` is optional (without it the threshold-dependent metrics are not
  computed); when there, the same names with ``.png``, 2-D, values in {0, 255}. Any other file or
  folder in the submission folder fails the check.
- ``mvtec_ad_2_public_offline.py``: an image's output is ``<base>/<object>/<split>/<stem>.<suffix>``.

The checker does not check a map's size; raydiff writes each at its image's own size (the map at
``image_size`` resized back bilinearly as ``raydiff predict`` draws its overlays: over the whole
image for ``resize``; for ``center-crop`` over the central square, the rest set to the map's
minimum, i.e. not anomalous). float16 keeps ~3 significant digits (scores beyond ±65504 are
clipped). Scores and seeds are ``raydiff predict``'s: an image's noise is seeded from its id (the
path relative to its object folder), so the export and ``raydiff predict`` of the same file agree.

Threshold of the binary maps, per object: the pixel score that a fraction ``fpr`` of the run's
normal test_public pixels exceed (``raydiff.predict.thresholds``, the overlays' threshold). A run
without scored test images has none: the export then leaves ``anomaly_images_thresholded`` out
whole (a partial one fails the server's check) and says so.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import tifffile
import torch
from PIL import Image

from raydiff.data.images import load_image, read_header
from raydiff.data.manifest import AD2_PRIVATE_SPLITS, scan_dataset
from raydiff.errors import CheckpointError, OutputError, RaydiffError
from raydiff.io import MARKER, atomic_dir
from raydiff.predict import _map_to_image, check_trained, open_run, run_categories, thresholds
from raydiff.runs import PARQUET_OPTIONS, versions
from raydiff.scoring import score_batch
from raydiff.scoring.fit import load_category_context

Progress = Callable[[str], None]

#: Images per private test folder (test_private and test_private_mixed alike) of each object:
#: ``OBJECT_FILE_COUNTER`` of MVTec's ``utils.py``. Its keys are MVTec AD 2's eight objects.
OFFICIAL_PRIVATE_IMAGES: dict[str, int] = {
    "can": 321, "fabric": 314, "fruit_jelly": 255, "rice": 277,
    "sheet_metal": 142, "vial": 276, "wallplugs": 232, "walnuts": 228,
}
SUBMISSION = "submission"
MAPS_DIR = "anomaly_images"
BINARY_DIR = "anomaly_images_thresholded"
SCORE_SCHEMA = {"category": pl.String, "split": pl.String, "image_id": pl.String, "image_path": pl.String,
                "variant": pl.String, "score": pl.Float64, "max_pixel_score": pl.Float64,
                "pixel_threshold": pl.Float64}
_WHAT = "raydiff export-mvtec-ad2"
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def full_size_map(score_map: np.ndarray, width: int, height: int, fit: str) -> np.ndarray:
    """The (S,S) map of an image at its own (height, width), float32: resized back as the
    overlays are; where the model saw nothing (``center-crop``), the map's minimum."""
    full, valid = _map_to_image(score_map, width, height, fit)
    return np.where(valid, full, full[valid].min()).astype(np.float32)


def write_maps(submission: Path, relative: Path, full: np.ndarray, threshold: float | None) -> None:
    """One image's files: ``submission/anomaly_images/<relative>.tiff`` (float16) and, with a
    threshold, ``submission/anomaly_images_thresholded/<relative>.png`` (255 where ``full`` >
    threshold). ``relative`` is ``<object>/<split>/<stem>``."""
    tiff = submission / MAPS_DIR / relative.with_suffix(".tiff")
    tiff.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(tiff, np.clip(full, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16))
    if threshold is not None:
        png = submission / BINARY_DIR / relative.with_suffix(".png")
        png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(full > threshold, 255, 0).astype(np.uint8), mode="L").save(png)


def private_rows(cfg: Any, root: Path, categories: Sequence[str], splits: Sequence[str]) -> pl.DataFrame:
    """The manifest rows of the private test images (``splits``) of ``categories`` under ``root``."""
    manifest = scan_dataset("mvtec-ad2", root, categories, cfg.dataset.dataset_name)
    return manifest.filter(pl.col("split").is_in(list(splits))).sort("category", "split", "image_id")


def submission_problems(rows: pl.DataFrame, splits: Sequence[str], binary: bool) -> list[str]:
    """What MVTec's checker would refuse in a submission of ``rows``: objects missing or not
    MVTec AD 2's, a private test set left out, image counts other than the official ones, no
    binary maps (a warning there)."""
    counts = {(c, s): n for c, s, n in rows.group_by("category", "split").len().iter_rows()}
    present = sorted({c for c, _ in counts})
    problems = []
    missing = [o for o in OFFICIAL_PRIVATE_IMAGES if o not in present]
    if missing:
        problems.append(f"objects missing (the server needs all eight): {', '.join(missing)}")
    foreign = [c for c in present if c not in OFFICIAL_PRIVATE_IMAGES]
    if foreign:
        problems.append(f"not MVTec AD 2 objects (the server refuses them): {', '.join(foreign)}")
    left_out = [s for s in AD2_PRIVATE_SPLITS if s not in splits]
    if left_out:
        problems.append(f"{', '.join(left_out)} not exported (the server needs both private test sets)")
    for obj in (c for c in present if c in OFFICIAL_PRIVATE_IMAGES):
        for split in splits:
            n, want = counts.get((obj, split), 0), OFFICIAL_PRIVATE_IMAGES[obj]
            if n != want:
                problems.append(f"{obj}/{split}: {n} images, the server expects {want}")
    if not binary:
        problems.append(f"no {BINARY_DIR}/ (the run has no scored normal test images for a threshold: run "
                        "`raydiff sweep` first): the server computes only the threshold-free metrics")
    return problems


def export_mvtec_ad2(
    run_dir: Path,
    output: Path,
    variant: str,
    splits: Sequence[str] = (),
    fpr: float = 0.01,
    dataset_root: Path | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score every private test image of the run's objects with ``variant``; write ``output``
    (module docstring). Returns {"scores": DataFrame, "thresholds": DataFrame (category,
    threshold), "submission": Path, "problems": [str] (what MVTec's checker would refuse:
    missing objects, image counts, no binary maps), "output": Path}.

    Scores: higher = more anomalous (the variant's scores, normalised as in the run).
    ``dataset_root``: where the run's dataset is now (default: the run's ``dataset.root``).
    ``output`` must be new, empty or an earlier export (it is replaced whole).
    """
    say = progress or (lambda _msg: None)
    run_dir, output = Path(run_dir), Path(output)
    splits = list(splits) or list(AD2_PRIVATE_SPLITS)
    unknown = [s for s in splits if s not in AD2_PRIVATE_SPLITS]
    if unknown:
        raise RaydiffError("--split", f"{unknown[0]!r} is not a private test set of MVTec AD 2.",
                           f"use {' or '.join(AD2_PRIVATE_SPLITS)}.")
    if not 0.0 < fpr < 1.0:
        raise RaydiffError("--fpr", f"must be in (0, 1), got {fpr}.", "pass e.g. --fpr 0.01.")
    cfg = open_run(run_dir)
    if cfg.dataset.layout != "mvtec-ad2":
        raise RaydiffError(run_dir / "config.yaml", f"the run read layout '{cfg.dataset.layout}', not 'mvtec-ad2': it "
                           "has no MVTec AD 2 models.", "export a run of configs/mvtec-ad2.yaml (layout: mvtec-ad2).")
    if variant not in cfg.variants.instances:
        raise RaydiffError("--variant", f"{variant!r} is not a variant of this run; its variants: "
                           f"{', '.join(cfg.variants.instances)}.", "pick one of them.")
    cfg = dataclasses.replace(cfg, variants=dataclasses.replace(cfg.variants, enabled=(variant,)))
    if output.exists() and any(output.iterdir()) and not _is_export(output):
        raise OutputError(output, "exists and is not a `raydiff export-mvtec-ad2` output.",
                          "pick a new --output folder.")
    categories = run_categories(cfg, run_dir)
    if not categories:
        raise CheckpointError(run_dir / "fitted", "the run has no fitted object.", "run `raydiff sweep` on it first.")
    rows = private_rows(cfg, Path(dataset_root or cfg.dataset.root), categories, splits)
    for category in categories:
        check_trained(cfg, run_dir, category)
    thr = pl.concat([thresholds(run_dir, c, [variant], fpr).select(category=pl.lit(c), threshold="threshold")
                     for c in categories])
    by_category = dict(thr.iter_rows())
    binary = all(t is not None for t in by_category.values())
    size, fit, batch_size = cfg.dataset.image_size, cfg.dataset.resize, cfg.ray.scoring_batch_size

    records: list[dict[str, Any]] = []
    with atomic_dir(output, {"what": _WHAT, "variant": variant}) as tmp:
        submission = tmp / SUBMISSION
        submission.mkdir()
        for category in categories:
            todo = rows.filter(pl.col("category") == category)
            if todo.height == 0:
                continue
            ctx = load_category_context(cfg, category, torch.device(device))
            channels = next(iter(ctx.models.values())).channels
            threshold = by_category[category] if binary else None
            for first in range(0, todo.height, batch_size):
                part = todo.slice(first, batch_size)
                paths, ids = part["image_path"].to_list(), part["image_id"].to_list()
                x = torch.from_numpy(np.stack([load_image(p, size, channels, fit) for p in paths]))
                res = score_batch(ctx, x, ids, [variant])[variant]
                for path, iid, split, score, small in zip(paths, ids, part["split"], res.scores, res.maps, strict=True):
                    width, height = read_header(path)[1]
                    full = full_size_map(small, width, height, fit)
                    write_maps(submission, Path(category) / split / Path(iid).stem, full, threshold)
                    records.append({"category": category, "split": split, "image_id": iid, "image_path": path,
                                    "variant": variant, "score": float(score), "max_pixel_score": float(small.max()),
                                    "pixel_threshold": by_category[category]})
                say(f"export-mvtec-ad2 {category}: {min(first + batch_size, todo.height)}/{todo.height} images")
        scores = pl.DataFrame(records, schema=SCORE_SCHEMA)
        scores.write_csv(tmp / "scores.csv")
        scores.write_parquet(tmp / "scores.parquet", **PARQUET_OPTIONS)
        problems = submission_problems(rows, splits, binary)
        info = {"run_dir": str(run_dir.resolve()), "run_id": run_dir.name, "variant": variant, "splits": splits,
                "fpr": fpr, "thresholds": thr.to_dicts(), "binary_maps": binary, "images": rows.height,
                "image_size": size, "resize": fit, "problems": problems, "versions": versions()}
        (tmp / "meta.json").write_text(json.dumps(info, indent=2, default=str))
    say(f"export-mvtec-ad2: {rows.height} images of {len(categories)} object(s) -> {output / SUBMISSION}")
    return {"scores": scores, "thresholds": thr, "submission": output / SUBMISSION, "problems": problems,
            "output": output}


def _is_export(folder: Path) -> bool:
    try:
        return json.loads((folder / MARKER).read_text()).get("what") == _WHAT
    except (OSError, ValueError):
        return False
