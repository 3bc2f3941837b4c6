"""Matplotlib (Agg) figures of the run report: curves, accuracy vs cost, example images.

Every function draws from data it is given and saves one PNG; none computes a metric. Curves
are resampled onto a fixed FPR grid **for drawing only** (the numbers in legends come from the
exact metrics table).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.figure  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from raydiff.config import BUILTIN_VARIANTS  # noqa: E402

#: Points per curve drawn (linear interpolation between the exact curve's points).
PLOT_POINTS = 1001
DPI = 90


def _fmt_pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def variant_color(variant: str, variants: Sequence[str] = ()) -> str:
    """The same colour for a variant in every figure: its position in ``variants`` (the run's
    variant instances, config order; else the built-in variants), on a palette as long as the
    list (tab10, then tab20, then evenly spaced hues), so no two of them share a colour."""
    names = list(variants) or list(BUILTIN_VARIANTS)
    n = len(names)
    index = names.index(variant) if variant in names else sum(map(ord, variant)) % n
    if n <= 20:
        palette = plt.get_cmap("tab10" if n <= 10 else "tab20").colors
        return matplotlib.colors.to_hex(palette[index % len(palette)])
    return matplotlib.colors.to_hex(plt.get_cmap("hsv")(index / n))


def _resample(x: np.ndarray, y: np.ndarray, x_max: float) -> tuple[np.ndarray, np.ndarray]:
    """A curve through (0, 0) and its points (x non-decreasing), on PLOT_POINTS x values in [0, x_max].

    For plotting only: ROC and PRO curves are piecewise linear between thresholds, so linear
    interpolation draws the same line with a bounded number of points.
    """
    xs = np.concatenate([[0.0], x])
    ys = np.concatenate([[0.0], y])
    grid = np.linspace(0.0, x_max, PLOT_POINTS)
    return grid, np.interp(grid, xs, ys)


@dataclass(frozen=True)
class CurveSet:
    """One variant's exact pixel curves (``raydiff.metrics.pixel_curves``) and its exact metrics."""

    variant: str
    curves: pl.DataFrame  # score, fpr, tpr, precision, recall, pro; highest score first
    p_auroc: float | None
    aupro: float | None


def plot_curves(sets: Sequence[CurveSet], title: str, path: Path, fpr_limit: float = 0.3) -> Path:
    """Pixel ROC (left) and PRO up to ``fpr_limit`` (right), one line per variant."""
    fig, (roc_ax, pro_ax) = plt.subplots(1, 2, figsize=(10, 4.2))
    for s in sets:
        fpr = s.curves["fpr"].to_numpy()
        tpr = s.curves["tpr"].to_numpy()
        if len(fpr) and np.isfinite(fpr).all() and np.isfinite(tpr).all():
            x, y = _resample(fpr, tpr, 1.0)
            roc_ax.plot(x, y, lw=1.3, color=variant_color(s.variant), label=f"{s.variant} (P-AUROC {_fmt_pct(s.p_auroc)})")
        pro = s.curves["pro"].to_numpy() if s.curves["pro"].null_count() == 0 else None
        if pro is not None and len(fpr) and np.isfinite(fpr).all():
            x, y = _resample(fpr, pro.astype(float), fpr_limit)
            pro_ax.plot(x, y, lw=1.3, color=variant_color(s.variant), label=f"{s.variant} (AUPRO {_fmt_pct(s.aupro)})")
    roc_ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    roc_ax.set(xlabel="pixel FPR", ylabel="pixel TPR", title="pixel ROC", xlim=(0, 1), ylim=(0, 1.01))
    pro_ax.set(xlabel="pixel FPR", ylabel="PRO", title=f"PRO (FPR <= {fpr_limit:g})", xlim=(0, fpr_limit), ylim=(0, 1.01))
    for ax in (roc_ax, pro_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.text(0.5, 0.5, "undefined (a class or GT regions missing)", ha="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def cost_figure(points: pl.DataFrame, title: str) -> matplotlib.figure.Figure:
    """Accuracy vs cost: AUPRO and I-AUROC (mean over categories) against seconds per image.

    ``points``: variant, seconds_per_image, unet_forwards_per_image, aupro, i_auroc (null = not drawn).
    Points carry no text (labels beside nearby points overlap): each variant's colour and marker
    is named once in a legend below the plots, with its UNet forwards per image.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    handles: dict[str, object] = {}
    markers = "o^sDvP*Xh<>"
    for ax, metric, name in ((axes[0], "aupro", "AUPRO"), (axes[1], "i_auroc", "I-AUROC")):
        drawn = points.filter(pl.col(metric).is_not_null() & pl.col("seconds_per_image").is_not_null())
        for i, row in enumerate(points.sort("variant").iter_rows(named=True)):
            if row["variant"] not in set(drawn["variant"]):
                continue
            fw = row["unet_forwards_per_image"]
            label = row["variant"] + (f" ({fw:g} forwards/image)" if fw is not None else "")
            handles[label] = ax.scatter(row["seconds_per_image"], 100 * row[metric], s=36, alpha=0.85,
                                        marker=markers[i % len(markers)], color=variant_color(row["variant"]))
        missing = sorted(set(points["variant"]) - set(drawn["variant"]))
        if missing:
            ax.set_title(f"{name} vs cost\n(n/a, not drawn: {', '.join(missing)})", fontsize=8)
        else:
            ax.set_title(f"{name} vs cost")
        secs = drawn["seconds_per_image"].to_numpy()
        if len(secs) and secs.min() > 0 and secs.max() / secs.min() > 20:
            ax.set_xscale("log")
        ax.margins(0.15)
        ax.set(xlabel="seconds per image (this run)", ylabel=f"{name} (%)")
        ax.grid(alpha=0.3)
    if handles:
        ncol = min(3, len(handles))
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=ncol, fontsize=7, frameon=False)
        rows = math.ceil(len(handles) / ncol)
        fig.subplots_adjust(bottom=0.16 + 0.045 * rows, top=0.86, wspace=0.25)
    fig.suptitle(title)
    return fig


def plot_cost(points: pl.DataFrame, title: str, path: Path) -> Path:
    """``cost_figure`` saved as a PNG."""
    fig = cost_figure(points, title)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class SideBySide:
    """One test image under every variant: the input, its GT and one score map per variant."""

    image_id: str
    defect_type: str
    role: str
    image: np.ndarray | None  # (H, W, 3) in [0, 1]
    gt: np.ndarray  # (H, W) {0, 1}
    maps: dict[str, np.ndarray]  # variant → (H, W) score map


def plot_side_by_side(rows: Sequence[SideBySide], thresholds: dict[str, float | None], title: str, path: Path) -> Path:
    """Rows = images, columns = input, GT, then every variant's score map (same image, same row).

    A variant's column shares one colour scale (its min .. max over the rows shown: variants have
    different units). Green: the GT outline; cyan: the variant's pixel threshold at the report's
    FPR (``thresholds``; the region above it is what ``raydiff inspect`` flags).
    """
    variants = sorted({v for r in rows for v in r.maps})
    ncols = 2 + len(variants)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.7 * ncols, 1.9 * len(rows) + 0.6), squeeze=False)
    scale = {}
    for v in variants:
        values = [r.maps[v] for r in rows if v in r.maps]
        lo, hi = float(min(np.nanmin(m) for m in values)), float(max(np.nanmax(m) for m in values))
        scale[v] = (lo, hi if hi > lo else lo + 1e-12)
    for ax_row, r in zip(axes, rows, strict=True):
        if r.image is not None:
            ax_row[0].imshow(r.image, interpolation="nearest")
        else:
            ax_row[0].text(0.5, 0.5, "input not available", ha="center", va="center", fontsize=6, transform=ax_row[0].transAxes)
        ax_row[0].set_title(f"{r.role}\n{r.image_id}", fontsize=6)
        ax_row[1].imshow(r.gt, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax_row[1].set_title(f"ground truth\n({r.defect_type})", fontsize=6)
        for ax, v in zip(ax_row[2:], variants, strict=True):
            m = r.maps.get(v)
            if m is None:
                ax.text(0.5, 0.5, "not scored", ha="center", va="center", fontsize=6, transform=ax.transAxes)
            else:
                ax.imshow(m, cmap="inferno", vmin=scale[v][0], vmax=scale[v][1], interpolation="nearest")
                thr = thresholds.get(v)
                if thr is not None and np.nanmax(m) > thr > np.nanmin(m):
                    ax.contour(m, levels=[thr], colors="cyan", linewidths=0.8)
                if r.gt.any():
                    ax.contour(r.gt.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
            ax.set_title(v, fontsize=6, color=variant_color(v))
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title + "  (green: GT outline; cyan: pixel threshold)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class Example:
    """One image of the examples figure."""

    role: str  # e.g. "best: highest-scored anomalous"
    image_id: str
    defect_type: str
    image_score: float
    score_map: np.ndarray  # (H, W) float, higher = more anomalous
    gt: np.ndarray  # (H, W) {0, 1}
    image: np.ndarray | None  # (H, W, 3) float in [0, 1], None when the file is not available


def plot_examples(examples: Sequence[Example], title: str, path: Path) -> Path:
    """Rows = examples; columns = input with GT outline, score map with GT outline.

    The score maps of one figure share one colour scale (min .. max over the maps shown).
    """
    n = len(examples)
    fig, axes = plt.subplots(n, 2, figsize=(6.4, 3.0 * n), squeeze=False)
    vmin = float(min(e.score_map.min() for e in examples))
    vmax = float(max(e.score_map.max() for e in examples))
    if vmax <= vmin:
        vmax = vmin + 1e-12
    for row, e in zip(axes, examples, strict=True):
        if e.image is not None:
            row[0].imshow(e.image, interpolation="nearest")
        else:
            row[0].text(0.5, 0.5, "input image not available", ha="center", va="center", transform=row[0].transAxes)
            row[0].set_xlim(0, e.gt.shape[1])
            row[0].set_ylim(e.gt.shape[0], 0)
        im = row[1].imshow(e.score_map, cmap="inferno", vmin=vmin, vmax=vmax, interpolation="nearest")
        for ax in row:
            if e.gt.any():
                ax.contour(e.gt.astype(float), levels=[0.5], colors="lime", linewidths=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_title(f"{e.role}\n{e.image_id} ({e.defect_type})", fontsize=7)
        row[1].set_title(f"score map, image score {e.image_score:.4g}", fontsize=7)
        fig.colorbar(im, ax=row[1], fraction=0.046, pad=0.04)
    fig.suptitle(title + "  (green: GT outline)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
