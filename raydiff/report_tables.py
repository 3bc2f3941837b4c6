"""The tables a run's metrics become: exact metrics joined with their cost columns, and means
over category groups (all; textures / objects for MVTec AD). Used by ``raydiff.workflow.evaluate``
(metrics.csv / .parquet) and the report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from raydiff.metrics import KEYS, METRIC_COLUMNS, compute_metrics
from raydiff.config.published import published_dataset
from raydiff.paths import fitted_dir, model_dir

#: MVTec AD texture categories; every other MVTec category is an object.
MVTEC_TEXTURES: tuple[str, ...] = ("carpet", "grid", "leather", "tile", "wood")
#: Cost columns of the metric tables (names as in raydiff.workflow.evaluate), means over the
#: images table's ``forwards_per_image`` / ``seconds_per_image``.
COST_COLUMNS: tuple[str, ...] = ("unet_forwards_per_image", "seconds_per_image")

def key_filter(key: Sequence[str]) -> pl.Expr:
    """Rows of one (dataset, category, variant) group."""
    return pl.all_horizontal([pl.col(k) == v for k, v in zip(KEYS, key, strict=True)])


def cost_table(images: pl.LazyFrame) -> pl.DataFrame:
    """Mean UNet forwards and seconds per image per (dataset, category, variant)."""
    return (
        images.group_by(*KEYS)
        .agg(
            unet_forwards_per_image=pl.col("forwards_per_image").cast(pl.Float64).mean(),
            seconds_per_image=pl.col("seconds_per_image").cast(pl.Float64).mean(),
        )
        .sort(*KEYS)
        .collect()
    )


#: Which variant's UNet pass a row's ``unet_forwards_per_image`` counts (itself unless shared).
PASS_COLUMN = "unet_pass_of"


def with_shared_passes(metrics: pl.DataFrame, passes: pl.DataFrame) -> pl.DataFrame:
    """A metrics table with ``unet_pass_of`` beside ``unet_forwards_per_image``: the variant whose
    UNet pass a variant's forwards count (``raydiff.runs.passes_of``). A variant whose pass is
    another's (``kim-single-level``'s t = 100 reconstruction is ``kim-trend``'s) is charged the
    forwards it needs, as ``raydiff plan`` counts them, and names whose pass it rides on, instead
    of the 0 its batch cache measured."""
    if PASS_COLUMN in metrics.columns:
        return metrics
    keys = [k for k in KEYS if k in passes.columns]
    return metrics.join(passes.select(*keys, PASS_COLUMN), on=keys, how="left")


def with_cost(metrics: pl.DataFrame, images: pl.LazyFrame) -> pl.DataFrame:
    """A metrics table with the cost columns (joined from the images table unless present)."""
    order = [c for c in (*KEYS, "defect_type") if c in metrics.columns]
    if all(c in metrics.columns for c in COST_COLUMNS):
        return metrics.sort(order)
    bare = metrics.drop(*(c for c in COST_COLUMNS if c in metrics.columns))
    return bare.join(cost_table(images), on=list(KEYS), how="left").sort(order)


#: Per (dataset, category, variant): how often a normal test image's maximum-score pixel lies on
#: the image border, and the share of pixels that border holds (what chance would give).
BORDER_COLUMNS: tuple[str, ...] = ("argmax_on_border", "border_share")


def border_width(side: int) -> int:
    """The border the ``argmax_on_border`` column counts: 1 px per 32 px of side (at least 1)."""
    return max(1, round(side / 32))


def border_table(pixels: pl.LazyFrame) -> pl.DataFrame:
    """``argmax_on_border``: the fraction of normal test images (label 0) whose highest pixel score
    lies within ``border_width`` px of the edge; ``border_share``: that border's share of the
    pixels. Image scores are mostly maxima, so a variant far above its share loses I-AUROC to its
    border (ties: the first pixel in (y, x) order)."""
    argmax = (
        pixels.filter(pl.col("label") == 0)
        .select(*KEYS, "image_id", "y", "x", "score")
        .sort("y", "x")
        .group_by(*KEYS, "image_id")
        .agg(pl.col("y").get(pl.col("score").arg_max()).alias("ay"), pl.col("x").get(pl.col("score").arg_max()).alias("ax"))
    )
    size = pixels.group_by(*KEYS).agg((pl.col("y").max() + 1).alias("h"), (pl.col("x").max() + 1).alias("w"))
    joined = argmax.join(size, on=list(KEYS)).collect()
    if joined.height == 0:
        return pl.DataFrame(schema={**{k: pl.String for k in KEYS}, "argmax_on_border": pl.Float64, "border_share": pl.Float64})
    b = (pl.min_horizontal("h", "w") / 32).round().clip(1).cast(pl.Int64)  # = border_width
    d = pl.min_horizontal(pl.col("ay"), pl.col("ax"), pl.col("h") - 1 - pl.col("ay"), pl.col("w") - 1 - pl.col("ax"))
    inner = (pl.col("h") - 2 * pl.col("b")).clip(0) * (pl.col("w") - 2 * pl.col("b")).clip(0)
    return (
        joined.with_columns(b.alias("b"))
        .with_columns((d < pl.col("b")).alias("on_border"), (1 - inner / (pl.col("h") * pl.col("w"))).alias("share"))
        .group_by(*KEYS)
        .agg(pl.col("on_border").mean().cast(pl.Float64).alias("argmax_on_border"),
             pl.col("share").first().cast(pl.Float64).alias("border_share"))
        .sort(*KEYS)
    )


def with_border(metrics: pl.DataFrame, pixels: pl.LazyFrame) -> pl.DataFrame:
    """A per-variant metrics table with the ``BORDER_COLUMNS`` (computed unless present)."""
    if all(c in metrics.columns for c in BORDER_COLUMNS):
        return metrics
    return metrics.join(border_table(pixels), on=list(KEYS), how="left").sort(*KEYS)


#: Where a variant's inputs came from: φ's weights for the variants that use φ, the VAE for
#: those scoring with the latent model (both as :func:`weights_label` says), and the initial
#: weights (pretrained | scratch) for those whose model names an init (``models.NAME.init``: a
#: checkpoint, or the paper's ``expected`` one); null elsewhere.
PROVENANCE_COLUMNS: tuple[str, ...] = ("feature_weights", "vae", "init")


def weights_label(name: str, sha256: str | None, expected: str | None, verified_as: str) -> str:
    """What a weights file (or folder) is, as far as it can be checked: ``<verified_as>-verified:
    <name>@<sha12>`` when its digest is the ``expected`` (published) one the config gives,
    otherwise ``file:<name>@<sha12>``; a name alone claims nothing (a random init saved as
    ``resnet34.pth`` reads ``file:resnet34.pth@…``). No digest known (a state written before
    digests were recorded): ``file:<name>``."""
    if sha256 is None:
        return f"file:{name}"
    kind = f"{verified_as}-verified" if expected is not None and sha256 == expected else "file"
    return f"{kind}:{name}@{sha256[:12]}"


def _phi_label(doc: dict[str, Any], expected: str | None) -> str | None:
    """feature_weights of a fitted state's stats.json (``raydiff.scoring.fit``): ``random-init``
    for tag ``none``, :func:`weights_label` of the recorded file otherwise."""
    tag = doc.get("features_weights")
    if tag is None:
        return None
    if tag == "none":
        return "random-init"
    file = (doc.get("info") or {}).get("weights_file") or {}
    if tag.startswith("sha256:"):
        return weights_label(file.get("name", "?"), tag.removeprefix("sha256:"), expected, "imagenet")
    return weights_label(tag.split(":", 1)[-1], None, None, "imagenet")  # "imagenet:<file>": a claim by name


def _vae_label(vae: dict[str, Any], expected: str | None) -> str | None:
    """vae of a latent model's meta.json: ``trained`` (here, per category), or the pretrained
    folder's :func:`weights_label`."""
    if vae.get("source") == "trained":
        return "trained"
    if vae.get("source") != "pretrained":
        return None
    return weights_label(vae.get("folder") or Path(str(vae.get("path", "?"))).name, vae.get("sha256"), expected,
                         "pretrained")


def provenance(cfg: Any, category: str, model: str | None = None) -> dict[str, str | None]:
    """{feature_weights, vae, init} of one category's fitted state and model ``model`` (None when
    unknown, or with no model)."""
    # lazy: two file names from modules that import torch; `raydiff report` imports this module and runs without it
    from raydiff.models.checkpoint import META
    from raydiff.scoring.fit import STATS_FILE

    out: dict[str, str | None] = {"feature_weights": None, "vae": None, "init": None}
    try:
        doc = json.loads((fitted_dir(cfg, category) / STATS_FILE).read_text())
        out["feature_weights"] = _phi_label(doc, cfg.features.expected_sha256)
    except (OSError, ValueError, AttributeError):
        pass
    if model is None:
        return out
    try:
        meta = json.loads((model_dir(cfg, category, model) / META).read_text())
        out["vae"] = _vae_label(meta.get("vae") or {}, cfg.model_spec(model).vae.vae_expected_sha256)
        out["init"] = {"checkpoint": "pretrained", "scratch": "scratch"}.get((meta.get("init") or {}).get("source"))
    except (OSError, ValueError, AttributeError):
        pass
    return out


def with_provenance(metrics: pl.DataFrame, cfg: Any) -> pl.DataFrame:
    """A per-variant metrics table with the ``PROVENANCE_COLUMNS`` (unless present)."""
    if cfg is None or all(c in metrics.columns for c in PROVENANCE_COLUMNS):
        return metrics
    seen: dict[tuple[str, str], dict[str, str | None]] = {}
    rows = []
    for cat, variant in metrics.select("category", "variant").iter_rows():
        inst = cfg.variants.instances.get(variant)
        if inst is None:
            rows.append({"feature_weights": None, "vae": None, "init": None})
            continue
        spec = cfg.model_spec(inst.model)
        latent = spec.is_latent
        named_init = spec.init.checkpoint is not None or spec.init.expected is not None
        key = (cat, inst.model if latent or named_init else "")
        if key not in seen:
            seen[key] = provenance(cfg, cat, inst.model) if key[1] else provenance(cfg, cat)
        p = seen[key]
        rows.append({"feature_weights": p["feature_weights"] if cfg.variants.method(variant).uses_features else None,
                     "vae": p["vae"] if latent else None, "init": p["init"] if named_init else None})
    extra = pl.DataFrame(rows, schema={c: pl.String for c in PROVENANCE_COLUMNS}, orient="row")
    return pl.concat([metrics.drop(*(c for c in PROVENANCE_COLUMNS if c in metrics.columns)), extra], how="horizontal")


def metrics_table(pixels: pl.LazyFrame, images: pl.LazyFrame, by_defect: bool = False) -> pl.DataFrame:
    """``compute_metrics`` (exact, unchanged) joined with the cost columns of the images table
    (and, per variant, the ``BORDER_COLUMNS``)."""
    table = with_cost(compute_metrics(pixels, images, by_defect=by_defect), images)
    return table if by_defect else with_border(table, pixels)


def category_groups(dataset: str, categories: Sequence[str]) -> dict[str, list[str]]:
    """Category groups for the mean rows: all, plus textures / objects for MVTec AD."""
    groups = {"all": sorted(categories)}
    if published_dataset(dataset) == "mvtec":
        groups["textures"] = [c for c in groups["all"] if c in MVTEC_TEXTURES]
        groups["objects"] = [c for c in groups["all"] if c not in MVTEC_TEXTURES]
    return {k: v for k, v in groups.items() if v}


def category_means(metrics: pl.DataFrame) -> pl.DataFrame:
    """Mean over categories per dataset × group × variant.

    A metric's mean is null (n/a) unless the metric is defined for the variant in EVERY
    category of the group present in the run (a mean over fewer categories is not comparable);
    cost columns are averaged over the categories where the variant ran. Columns: dataset, group,
    variant, n_categories (where the variant ran), of_categories (in the group), the four metrics,
    unet_forwards_per_image, seconds_per_image.
    """
    rows: list[dict[str, Any]] = []
    for dataset in sorted(metrics["dataset"].unique()):
        ds = metrics.filter(pl.col("dataset") == dataset)
        for group, cats in category_groups(dataset, ds["category"].unique().to_list()).items():
            sub = ds.filter(pl.col("category").is_in(cats))
            for variant in sorted(sub["variant"].unique()):
                v = sub.filter(pl.col("variant") == variant)
                row: dict[str, Any] = {"dataset": dataset, "group": group, "variant": variant}
                row |= {"n_categories": v.height, "of_categories": len(cats)}
                for m in METRIC_COLUMNS:
                    complete = v.height == len(cats) and v[m].null_count() == 0
                    row[m] = float(v[m].mean()) if complete else None  # type: ignore[arg-type]
                for c in COST_COLUMNS:
                    row[c] = v[c].mean() if v[c].null_count() < v.height else None
                rows.append(row)
    schema = {"dataset": pl.String, "group": pl.String, "variant": pl.String, "n_categories": pl.Int64}
    schema |= {"of_categories": pl.Int64} | {m: pl.Float64 for m in METRIC_COLUMNS} | {c: pl.Float64 for c in COST_COLUMNS}
    return pl.DataFrame(rows, schema=schema, orient="row")
