"""Static run report: ``report.html`` + PNGs + metric tables, from a run folder's Parquet.

    write_report(RUN_DIR)  →  RUN_DIR/metrics.{csv,parquet}            one row per dataset × category × variant
                              RUN_DIR/metrics_by_defect.{csv,parquet}  ... × defect type
                              RUN_DIR/report/*.png                     curves, accuracy vs cost, examples
                              RUN_DIR/report.html                      written last: its presence = done

Numbers come only from ``raydiff.metrics`` (exact) and the images table (cost); a metric that is
undefined or missing for a variant is shown as "n/a". Curves are drawn from the exact
``raydiff.metrics.pixel_curves`` (resampled for drawing only). Published numbers
(docs/methods.md, Published numbers) are shown beside ours only for a dataset named mvtec / visa,
labelled as published, with the caveats that make them not strictly comparable.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image

from raydiff.config import Config, load_config
from raydiff.data.images import load_image
from raydiff.data.manifest import scan_config
from raydiff.errors import OutputError, RaydiffError
from raydiff.inspect_run import pixel_thresholds
from raydiff.io import atomic_write_text
from raydiff.metrics import KEYS, METRIC_COLUMNS, pixel_curves
from raydiff.runs import passes_of, read_manifest, require_complete, scan_images, scan_pixels, write_parquet_atomic
from raydiff.report_figures import (
    CurveSet,
    Example,
    SideBySide,
    plot_cost,
    plot_curves,
    plot_examples,
    plot_side_by_side,
)
from raydiff.config.published import CAVEATS, PUBLISHED, published_dataset
from raydiff.report_tables import (
    COST_COLUMNS,
    category_means,
    key_filter,
    metrics_table,
    with_border,
    with_cost,
    with_provenance,
    with_shared_passes,
)

METRIC_NAMES: dict[str, str] = {"i_auroc": "I-AUROC", "p_auroc": "P-AUROC", "p_ap": "P-AP", "aupro": "AUPRO@0.3"}
FIG_DIR = "report"


# --------------------------------------------------------------------------------------------
# HTML helpers
# --------------------------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value))


def fmt_metric(value: float | None) -> str:
    """A metric in [0, 1] as a percentage with one decimal; "n/a" when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}"


def fmt_number(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], bold: Sequence[set[int]] | None = None) -> str:
    """Cells are already formatted (escaped here); ``bold[i]`` = column indices to bold in row i."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            text = _esc(cell)
            cells.append(f"<td><b>{text}</b></td>" if bold and j in bold[i] else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


GROUP_ORDER: tuple[str, ...] = ("all", "textures", "objects")


def pivot_html(metrics: pl.DataFrame, means: pl.DataFrame, metric: str) -> str:
    """One dataset's metric: rows = categories then mean rows, columns = variants; best in bold."""
    variants = sorted(metrics["variant"].unique())
    cells = {(r["category"], r["variant"]): r[metric] for r in metrics.iter_rows(named=True)}
    cells |= {(f"mean ({r['group']})", r["variant"]): r[metric] for r in means.iter_rows(named=True)}
    labels = sorted(metrics["category"].unique())
    labels += [f"mean ({g})" for g in GROUP_ORDER if g in set(means["group"])]
    rows, bold = [], []
    for label in labels:
        values = [cells.get((label, v)) for v in variants]
        best = max((x for x in values if x is not None), default=None)
        rows.append([label, *(fmt_metric(x) for x in values)])
        bold.append({j + 1 for j, x in enumerate(values) if best is not None and x == best})
    return html_table(["category", *variants], rows, bold)


def long_html(frame: pl.DataFrame, columns: Sequence[str]) -> str:
    rows = []
    for r in frame.iter_rows(named=True):
        rows.append([fmt_metric(r[c]) if c in METRIC_COLUMNS else fmt_number(r[c]) for c in columns])
    return html_table([METRIC_NAMES.get(c, c) for c in columns], rows)


# --------------------------------------------------------------------------------------------
# Examples: best / worst images per variant
# --------------------------------------------------------------------------------------------

ROLES: tuple[tuple[str, int, bool], ...] = (
    ("best: highest-scored anomalous", 1, True),
    ("worst: lowest-scored anomalous", 1, False),
    ("worst: highest-scored normal", 0, True),
)


def pick_examples(images: pl.DataFrame) -> list[tuple[str, dict[str, Any]]]:
    """(role, image row) for one group's images table; roles without images are left out."""
    picks = []
    for role, label, highest in ROLES:
        sub = images.filter(pl.col("label") == label).sort(["score", "image_id"], descending=[highest, False])
        if sub.height:
            picks.append((role, sub.row(0, named=True)))
    return picks


def manifest_paths(cfg: Config | None, categories: Sequence[str],
                   run_dir: Path | None = None) -> tuple[dict[tuple[str, str], str], str | None]:
    """(category, image_id) → image path: from the manifest the run recorded (``runs.MANIFEST``)
    when it has the categories, else from a scan of the run's dataset; or ({}, why not)."""
    recorded = None if run_dir is None else read_manifest(run_dir)
    if recorded is not None and set(categories) <= set(recorded["category"].to_list()):
        rows = recorded.filter(pl.col("category").is_in(list(categories)))
        return {(r["category"], r["image_id"]): r["image_path"] for r in rows.iter_rows(named=True)}, None
    if cfg is None:
        return {}, "config.yaml is missing from the run folder"

    sub = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, categories=tuple(categories)))
    try:
        manifest = scan_config(sub)
    except (RaydiffError, OSError, ValueError) as err:
        return {}, f"the dataset could not be read ({err})"
    return {(r["category"], r["image_id"]): r["image_path"] for r in manifest.iter_rows(named=True)}, None


def load_display_image(path: str | None, h: int, w: int, fit: str) -> np.ndarray | None:
    """The input as the scorer saw it (raydiff.data.images.load_image), (H, W, 3) in [0, 1].

    None when the file is missing or unreadable (the figure then says so; the report goes on).
    """
    if path is None or not Path(path).is_file():
        return None

    try:
        if h == w:
            arr = load_image(path, h, 3, fit)  # type: ignore[arg-type]
            return np.clip((arr.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR), np.float32) / 255.0
    except (OSError, ValueError, RaydiffError):
        return None


def group_examples(
    pixels: pl.LazyFrame, images: pl.DataFrame, key: tuple[str, str, str], paths: dict[tuple[str, str], str], fit: str
) -> list[Example]:
    """Score maps, GT and inputs of one group's picked images (one scan of its partition)."""
    picks = pick_examples(images)
    ids = [row["image_id"] for _, row in picks]
    if not ids:
        return []
    rows = (
        pixels.filter(key_filter(key))
        .filter(pl.col("image_id").is_in(ids))
        .select("image_id", "y", "x", "score", "gt")
        .collect()
    )
    h, w = int(rows["y"].max()) + 1, int(rows["x"].max()) + 1  # type: ignore[operator]
    out = []
    for role, row in picks:
        px = rows.filter(pl.col("image_id") == row["image_id"])
        score, gt = np.full((h, w), np.nan, np.float32), np.zeros((h, w), np.uint8)
        y, x = px["y"].to_numpy(), px["x"].to_numpy()
        score[y, x] = px["score"].to_numpy()
        gt[y, x] = px["gt"].to_numpy()
        image = load_display_image(paths.get((key[1], row["image_id"])), h, w, fit)
        out.append(Example(role, row["image_id"], row["defect_type"], float(row["score"]), score, gt, image))
    return out


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60]


def _write_frame(frame: pl.DataFrame, path: Path) -> None:
    """CSV or Parquet under a temporary name, renamed into place."""
    if path.suffix == ".csv":
        atomic_write_text(path, frame.write_csv())
    else:
        write_parquet_atomic(frame.to_arrow(), path)


def _load_run_config(run_dir: Path) -> Config | None:
    path = run_dir / "config.yaml"
    return load_config(path, upgrade=True) if path.is_file() else None


def fmt_published(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


PUBLISHED_HEADERS: tuple[str, ...] = (
    "method", "source", "published I-AUROC", "published P-AUROC", "published PRO", "published P-AP",
    "published s/img", "read with", "ours: variant reproducing it", "ours I-AUROC", "ours P-AUROC",
    "ours AUPRO@0.3", "ours P-AP", "ours s/img",
)


def published_html(means: pl.DataFrame, dataset: str, cfg: Config | None = None) -> str:
    """Published numbers (docs/methods.md, Published numbers) beside this run's means of the
    variants that reproduce each paper setting (``reproduces:`` in the config); "" when the
    dataset does not match."""
    key = published_dataset(dataset)
    if key is None:
        return ""
    ours = {r["variant"]: r for r in means.filter(pl.col("group") == "all").iter_rows(named=True)}
    instances = cfg.variants.instances if cfg is not None else {}
    rows = []
    for p in (p for p in PUBLISHED if p.dataset == key):
        published = [fmt_published(x) for x in (p.i_auroc, p.p_auroc, p.pro, p.p_ap)] + [fmt_number(p.seconds_per_image)]
        matches = [v for v, inst in instances.items() if inst.reproduces == p.key and v in ours]
        if not matches:
            rows.append([p.method, p.source, *published, p.caveat,
                         f"none (no variant of this run has reproduces: {p.key})", *(["–"] * 5)])
        for v in matches:
            o = ours[v]
            which = f"{v} (mean over {o['n_categories']} of {o['of_categories']} categories in this run)"
            mine = [fmt_metric(o[m]) for m in ("i_auroc", "p_auroc", "aupro", "p_ap")] + [fmt_number(o["seconds_per_image"])]
            rows.append([p.method, p.source, *published, p.caveat, which, *mine])
    caveats = "".join(f"<li>{_esc(c)}</li>" for c in CAVEATS)
    return (
        f"<h3>Published numbers ({_esc(key)}) beside ours</h3>"
        "<p><b>Published</b> columns are copied from the papers / READMEs named (via docs/methods.md), not "
        "reproduced by this run; all in %. Read them with these caveats:</p>"
        f"<ul>{caveats}</ul>" + html_table(PUBLISHED_HEADERS, rows)
    )


def tables_html(metrics: pl.DataFrame, by_defect: pl.DataFrame, means: pl.DataFrame) -> str:
    """One dataset's metric tables: means, one pivot per metric, the long tables."""
    parts = [
        "<h3>Mean over categories</h3><p class=small>A mean is n/a unless the metric is defined in every "
        "category of the group (n_categories of of_categories).</p>",
        long_html(means, ["group", "variant", "n_categories", "of_categories", *METRIC_COLUMNS, *COST_COLUMNS]),
    ]
    for m in METRIC_COLUMNS:
        parts.append(f"<h3>{_esc(METRIC_NAMES[m])} per category (%)</h3>" + pivot_html(metrics, means, m))
    parts.append("<details><summary>All numbers per category × variant (with counts)</summary>")
    parts.append(long_html(metrics, metrics.columns) + "</details>")
    parts.append("<details><summary>Per defect type (that defect's images + all normal images)</summary>")
    parts.append(long_html(by_defect, by_defect.columns) + "</details>")
    return "\n".join(parts)


def _img(name: str, alt: str) -> str:
    return f"<img src='{FIG_DIR}/{_esc(name)}' alt='{_esc(alt)}'>"


def provenance_html(metrics: pl.DataFrame) -> str:
    """One line: where φ's weights and the VAE came from (``raydiff.report_tables.weights_label``).
    A random φ or a VAE trained from scratch is not the papers' setting, so their numbers are not
    comparable to such a run's; an unverified weights file may not be either."""
    found = {}
    for col in ("feature_weights", "vae", "init"):
        if col in metrics.columns:
            found[col] = sorted(v for v in metrics[col].unique().to_list() if v is not None)
    said = [f"{what}: <b>{_esc(', '.join(found[col]))}</b>"
            for col, what in (("feature_weights", "feature extractor φ"), ("vae", "VAE of the latent model"),
                              ("init", "initial weights of the models that name a pretrained init"))
            if found.get(col)]
    if not said:
        return ""
    notes = []
    if "random-init" in found.get("feature_weights", []):
        notes.append("φ is randomly initialised (set <code>features.weights</code> to ImageNet weights "
                     "for the papers' setting)")
    if any(v.startswith("file:") for v in found.get("feature_weights", [])):
        notes.append("φ's weights file is not verified as ImageNet weights (give its published digest as "
                     "<code>features.expected_sha256</code>)")
    if "trained" in found.get("vae", []):
        notes.append("the VAE was trained from scratch (the papers use a pretrained one: "
                     "<code>models.latent.vae_path</code>)")
    if "scratch" in found.get("init", []):
        notes.append("a model whose paper fine-tunes a pretrained checkpoint was trained from scratch "
                     "(<code>models.NAME.init.checkpoint</code> unset: <code>raydiff plan</code> names the file)")
    tail = (" Not the papers' setting: " + "; ".join(notes) + ".") if notes else ""
    return f"<p class=small>Provenance: {'; '.join(said)}.{tail}</p>"


def _anchor(*parts: str) -> str:
    return "-".join(_safe(p).lower() for p in parts)


def curves_html(pixels: pl.LazyFrame, metrics: pl.DataFrame, dataset: str, cat: str, index: int, figs: Path) -> str:
    """Pixel ROC + PRO of one category (one line per variant), from the exact curves."""
    sets = []
    for r in metrics.filter(pl.col("category") == cat).iter_rows(named=True):
        key = (dataset, cat, r["variant"])
        sets.append(CurveSet(r["variant"], pixel_curves(pixels.filter(key_filter(key))), r["p_auroc"], r["aupro"]))
    name = f"curves-{_safe(dataset)}-{index:03d}-{_safe(cat)}.png"
    plot_curves(sets, f"{dataset} / {cat}", figs / name)
    return "<h4>Pixel ROC and PRO curves</h4>" + _img(name, f"curves {cat}")


#: Images of the side-by-side view: (role, label, highest mean rank first).
SIDE_ROLES: tuple[tuple[str, int, bool], ...] = (
    ("anomalous, top-ranked", 1, True),
    ("anomalous, lowest-ranked", 1, False),
    ("normal, top-ranked", 0, True),
)


def side_by_side_picks(images: pl.DataFrame) -> list[tuple[str, dict[str, Any]]]:
    """(role, image row) of one category's images table, by the mean over variants of each image's
    score rank within its variant (so every variant's view is of the same image): the anomalous
    image most variants find, the one they miss, and the normal image they flag most."""
    ranked = images.with_columns(
        (pl.col("score").rank("average").over("variant") / pl.len().over("variant")).alias("rank")
    )
    per_image = ranked.group_by("image_id", "label", "defect_type").agg(pl.col("rank").mean())
    picks, seen = [], set()
    for role, label, highest in SIDE_ROLES:
        sub = per_image.filter((pl.col("label") == label) & ~pl.col("image_id").is_in(list(seen)))
        sub = sub.sort(["rank", "image_id"], descending=[highest, False])
        if sub.height:
            row = sub.row(0, named=True)
            picks.append((role, row))
            seen.add(row["image_id"])
    return picks


def side_by_side_html(pixels: pl.LazyFrame, images: pl.DataFrame, dataset: str, cat: str, index: int,
                      paths: dict[tuple[str, str], str], fit: str, fpr: float, figs: Path) -> str:
    """Every variant's score map of the same few images, with each variant's threshold at ``fpr``."""
    picks = side_by_side_picks(images)
    if not picks:
        return ""
    cat_pixels = pixels.filter((pl.col("dataset") == dataset) & (pl.col("category") == cat))
    thresholds = {r["variant"]: r["threshold"] for r in pixel_thresholds(cat_pixels, fpr).iter_rows(named=True)}
    ids = [row["image_id"] for _, row in picks]
    px = cat_pixels.filter(pl.col("image_id").is_in(ids)).select("variant", "image_id", "y", "x", "score", "gt").collect()
    h, w = int(px["y"].max()) + 1, int(px["x"].max()) + 1  # type: ignore[operator]
    rows = []
    for role, row in picks:
        mine = px.filter(pl.col("image_id") == row["image_id"])
        gt = np.zeros((h, w), np.uint8)
        maps = {}
        for (variant,), part in mine.group_by(["variant"]):
            m = np.full((h, w), np.nan, np.float32)
            y, x = part["y"].to_numpy(), part["x"].to_numpy()
            m[y, x] = part["score"].to_numpy()
            gt[y, x] = part["gt"].to_numpy()
            maps[str(variant)] = m
        image = load_display_image(paths.get((cat, row["image_id"])), h, w, fit)
        rows.append(SideBySide(row["image_id"], row["defect_type"], role, image, gt, maps))
    name = f"side-{_safe(dataset)}-{index:03d}-{_safe(cat)}.png"
    plot_side_by_side(rows, thresholds, f"{dataset} / {cat}: every variant on the same images", figs / name)
    return (f"<h4>Every variant on the same images</h4><p class=small>Cyan: each variant's pixel threshold at "
            f"pixel FPR {fpr:g} (what <code>raydiff inspect --fpr {fpr:g}</code> flags); green: the GT outline. "
            "Each variant's column has its own colour scale.</p>" + _img(name, f"side by side {cat}"))


def examples_html(pixels: pl.LazyFrame, image_rows: pl.DataFrame, metrics: pl.DataFrame, dataset: str, cat: str,
                  index: int, paths: dict[tuple[str, str], str], fit: str, figs: Path) -> str:
    """Best / worst images of one category per variant: input and score map with the GT outline."""
    parts = []
    for j, variant in enumerate(sorted(metrics.filter(pl.col("category") == cat)["variant"])):
        key = (dataset, cat, variant)
        examples = group_examples(pixels, image_rows.filter(key_filter(key)), key, paths, fit)
        if examples:
            name = f"examples-{_safe(dataset)}-{index:03d}-{j:02d}-{_safe(cat)}-{_safe(variant)}.png"
            plot_examples(examples, f"{dataset} / {cat} / {variant}", figs / name)
            parts.append(f"<h5>{_esc(variant)}</h5>" + _img(name, f"examples {cat} {variant}"))
    if not parts:
        return ""
    return ("<details><summary>Best and worst images per variant (the highest- and lowest-scored anomalous image, "
            "the highest-scored normal image)</summary>" + "\n".join(parts) + "</details>")


def category_html(pixels: pl.LazyFrame, image_rows: pl.DataFrame, metrics: pl.DataFrame, dataset: str,
                  cfg: Config | None, figs: Path, fpr: float, run_dir: Path | None = None) -> tuple[list[str], str]:
    """Per category: the side-by-side view, the curves, the examples. → (TOC entries, HTML)."""
    cats = sorted(metrics["category"].unique())
    if cfg is not None and cfg.dataset.dataset_name != dataset:
        paths, why = {}, f"the run's config.yaml names dataset {cfg.dataset.dataset_name!r}"
    else:
        paths, why = manifest_paths(cfg, cats, run_dir)
    fit = cfg.dataset.resize if cfg else "resize"
    parts = [f"<p class=small>Input images not shown: {_esc(why)}.</p>"] if why else []
    toc = []
    for i, cat in enumerate(cats):
        anchor = _anchor(dataset, cat)
        toc.append(f"<a href='#{anchor}'>{_esc(cat)}</a>")
        cat_images = image_rows.filter((pl.col("dataset") == dataset) & (pl.col("category") == cat))
        parts.append(f"<h3 id='{anchor}'>{_esc(dataset)} / {_esc(cat)}</h3>")
        parts.append(side_by_side_html(pixels, cat_images, dataset, cat, i, paths, fit, fpr, figs))
        parts.append(curves_html(pixels, metrics, dataset, cat, i, figs))
        parts.append(examples_html(pixels, image_rows, metrics, dataset, cat, i, paths, fit, figs))
    return toc, "\n".join(parts)


INTRO = (
    "<p>All metrics are exact (no threshold binning) and in %: I-AUROC (image score vs label), P-AUROC "
    "and P-AP (step-wise average precision) over all pixels of a category's test set, AUPRO@0.3 "
    "(MVTec reference: 8-connected GT components, FPR over all normal pixels, normalised by 0.3). "
    "n/a = undefined (e.g. no anomalous images) or not computed for that variant. Cost: UNet forward "
    "passes and seconds per image measured in this run. Machine-readable: metrics.csv / metrics.parquet, "
    "metrics_by_defect.csv / metrics_by_defect.parquet.</p>"
)
SCORE_UNITS = (
    "<p><b>Score units.</b> A pixel score is higher for more anomalous pixels. Each variant's raw "
    "components (reconstruction error, KL in nats, DFT trend magnitude, feature distance, ...) are "
    "standardised with the mean and standard deviation of the category's held-out normal images, "
    "combined and smoothed; the final map is then scaled per distance to the image edge so that "
    "<b>0 is a typical normal pixel and 1 the 99th percentile of the held-out normal pixels</b> at "
    "that distance (a score of 3 is three of those spreads above normal). A variant with "
    "<code>border_rings: false</code> (the papers' settings) has no per-edge-distance statistics and no "
    "final scaling: its map is the combination of components standardised with one mean and standard "
    "deviation each. With <code>dataset.holdout_fraction: 0</code> the normal images are the training "
    "images themselves (scores of new normal images then run higher). Scores compare images within "
    "one (category, variant); across variants compare ranks and the metrics. The image score is the "
    "variant's pooling of its map (max, avg-pool max, top-k mean). <code>argmax_on_border</code>: how "
    "often a normal image's highest pixel lies on the border, beside <code>border_share</code>, the "
    "border's share of the pixels (what chance gives). Reconstructions are not stored in the run "
    "folder (only score maps are), so they are not shown.</p>"
)
#: Pixel FPR of the thresholds drawn in the report (inspect's default).
REPORT_FPR = 0.01
STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
    "table{border-collapse:collapse;font-size:12px;margin:0.5em 0}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}"
    "img{max-width:100%}.small{font-size:12px;color:#555}"
)


def report_html(
    run_dir: Path,
    cfg: Config | None,
    pixels: pl.LazyFrame,
    image_rows: pl.DataFrame,
    tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
    figs: Path,
) -> str:
    """The whole page; writes its PNGs into ``figs``. ``tables`` = (metrics, by_defect, means)."""
    metrics, by_defect, means = tables
    parts = [f"<h1>raydiff run {_esc(run_dir.name)}</h1>", INTRO, SCORE_UNITS]
    versions = run_dir / "versions.json"
    if versions.is_file():
        info = json.loads(versions.read_text()).get("versions", {})
        parts.append(f"<p class=small>versions: {_esc(json.dumps(info))}</p>")
    toc = []
    for dataset in sorted(metrics["dataset"].unique()):
        m, d, mm = (t.filter(pl.col("dataset") == dataset) for t in (metrics, by_defect, means))
        cats, variants = sorted(m["category"].unique()), sorted(m["variant"].unique())
        anchor = _anchor(dataset)
        parts.append(
            f"<h2 id='{anchor}'>Dataset {_esc(dataset)}: {len(cats)} categories ({_esc(', '.join(cats))}), "
            f"variants {_esc(', '.join(variants))}</h2>"
        )
        parts.append(provenance_html(m))
        parts.append(f"<span id='{anchor}-tables'></span>" + tables_html(m, d, mm))
        parts.append(published_html(mm, dataset, cfg))
        name = f"cost-{_safe(dataset)}.png"
        plot_cost(mm.filter(pl.col("group") == "all"), f"{dataset}: mean over categories, per variant", figs / name)
        parts.append(f"<h3 id='{anchor}-cost'>Accuracy vs cost</h3>" + _img(name, "accuracy vs cost"))
        cat_toc, cat_html = category_html(pixels, image_rows, m, dataset, cfg, figs, REPORT_FPR, run_dir)
        parts.append(cat_html)
        toc.append(f"<li><a href='#{anchor}'>{_esc(dataset)}</a>: <a href='#{anchor}-tables'>tables</a> · "
                   f"<a href='#{anchor}-cost'>accuracy vs cost</a> · categories: {' · '.join(cat_toc)}</li>")
    parts.insert(1, f"<nav><b>Contents</b><ul>{''.join(toc)}</ul></nav>")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>raydiff report {_esc(run_dir.name)}</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


#: Written into an ``--output`` folder other than the run folder: which run its report is of, so a
#: re-run may replace it and nothing else.
REPORT_MARKER = ".raydiff-report.json"
#: What ``write_report`` replaces in its output folder.
REPORT_FILES: tuple[str, ...] = (FIG_DIR, "report.html", "metrics.csv", "metrics.parquet",
                                 "metrics_by_defect.csv", "metrics_by_defect.parquet")


def check_report_target(run_dir: Path, out: Path, overwrite: bool = False) -> None:
    """Refuse an output folder whose report files raydiff did not write for this run (a user's
    own ``report/`` or ``metrics.csv`` would be replaced), unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise OutputError(out, "is a file, not a folder.", "pass a folder to --output.")
    if overwrite or out.resolve() == run_dir.resolve():
        return
    try:
        mine = json.loads((out / REPORT_MARKER).read_text()).get("run") == str(run_dir.resolve())
    except (OSError, ValueError, AttributeError):
        mine = False
    existing = [out / name for name in REPORT_FILES if (out / name).exists()]
    if existing and not mine:
        raise OutputError(existing[0], "exists and was not written by `raydiff report` for this run; the report "
                          "would replace it.", "pick an empty --output folder, or pass --overwrite to replace it.")


def write_report(
    run_dir: Path,
    out: Path | None = None,
    *,
    metrics: pl.DataFrame | None = None,
    by_defect: pl.DataFrame | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the metric tables, PNGs and ``report.html`` of a run folder; returns report.html.

    run_dir: a run folder (``OUT/<run_id>``) with complete ``pixels/`` and ``images/`` partitions.
    out: folder for the outputs (default: ``run_dir``): metrics.{csv,parquet},
    metrics_by_defect.{csv,parquet}, report/*.png, then report.html (written last). Another folder
    than the run folder gets ``REPORT_MARKER``; report files there that raydiff did not write for
    this run are refused unless ``overwrite``. Raises OutputError when the run folder holds no
    complete partitions, or some (category, variant) pair is incomplete.
    metrics / by_defect: ``compute_metrics(pixels, images[, by_defect=True])`` of this run when the
    caller already has them (each is a full pass over the pixels); cost columns are added if absent.
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir
    pixels, images = scan_pixels(run_dir), scan_images(run_dir)  # OutputError naming the right folder
    cfg = _load_run_config(run_dir)
    require_complete(run_dir, command="`raydiff report`")
    check_report_target(run_dir, out, overwrite)
    try:
        return _write_report(run_dir, out, cfg, pixels, images, metrics, by_defect)
    except OSError as err:
        raise OutputError(out, f"cannot write the report ({err.strerror or err}).",
                          "check free space and permissions, or pick another --output.") from None


def _write_report(run_dir: Path, out: Path, cfg: Config | None, pixels: pl.LazyFrame, images: pl.LazyFrame,
                  metrics: pl.DataFrame | None, by_defect: pl.DataFrame | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != run_dir.resolve():
        atomic_write_text(out / REPORT_MARKER, json.dumps({"run": str(run_dir.resolve())}) + "\n")
    given = metrics if metrics is not None and by_defect is not None else None
    metrics = with_border(with_cost(metrics, images), pixels) if metrics is not None else metrics_table(pixels, images)
    passes = passes_of(run_dir)
    metrics = with_shared_passes(with_provenance(metrics, cfg), passes)
    by_defect = with_shared_passes(with_cost(by_defect, images) if by_defect is not None
                                   else metrics_table(pixels, images, by_defect=True), passes)
    image_rows = images.select(*KEYS, "image_id", "defect_type", "label", "score").collect()

    figs = out / f".tmp-{FIG_DIR}-{uuid.uuid4().hex[:8]}"
    figs.mkdir()
    try:
        page = report_html(run_dir, cfg, pixels, image_rows, (metrics, by_defect, category_means(metrics)), figs)
    except BaseException:
        shutil.rmtree(figs, ignore_errors=True)
        raise
    if given is None or out != run_dir:  # else the caller (raydiff.workflow.evaluate) wrote them
        for frame, name in ((metrics, "metrics"), (by_defect, "metrics_by_defect")):
            _write_frame(frame, out / f"{name}.csv")
            _write_frame(frame, out / f"{name}.parquet")
    if (out / FIG_DIR).exists():
        shutil.rmtree(out / FIG_DIR)
    os.replace(figs, out / FIG_DIR)
    report = out / "report.html"
    atomic_write_text(report, page)
    return report
