"""How far apart two implementations' tensors are: one :class:`StageDiff` per compared stage.

A *stage* is one intermediate quantity both sides compute for the same images (the noised
input, one reconstruction step, a raw map, the final map, the image scores). For every stage:

- ``max_abs`` = max |a - b|; ``max_rel`` = max |a - b| / max(max |b|, tiny): the largest error
  relative to the reference's scale (a per-element relative error blows up where b ≈ 0, e.g.
  at a map's zero pixels, and says nothing there);
- ``pearson``: correlation of the flattened tensors (maps: do they point at the same pixels?);
- ``spearman``: rank agreement (image scores: would they rank the images alike?);
- for image scores with labels, both sides' I-AUROC; for maps with masks, both P-AUROCs
  (``raydiff.metrics``, exact).

A stage *passes* when ``max_rel`` ≤ its tolerance (float32 arithmetic through the same model:
1e-4 by default, the issue's target). A stage expected to differ because raydiff chose
differently is marked ``deviation`` with the docs/methods.md section saying why; its numbers
are still reported, so the size of the deviation is measured, not asserted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from raydiff.metrics import image_auroc, pixel_auroc

#: Float32 through the same network: the issue's target for deterministic paths.
TOLERANCE = 1e-4

Kind = Literal["tensor", "map", "score"]


@dataclass(frozen=True)
class Stage:
    """One quantity computed by both sides: raydiff's ``ours`` and the reference's ``theirs``."""

    method: str
    stage: str
    ours: torch.Tensor
    theirs: torch.Tensor
    kind: Kind = "tensor"
    #: None: must agree to ``tolerance``; else the docs/methods.md section of a deliberate
    #: deviation (the numbers are still reported).
    deviation: str | None = None
    tolerance: float = TOLERANCE
    #: Which side's pre/post-processing this stage uses, or what it feeds both sides.
    note: str = ""


@dataclass
class StageDiff:
    method: str
    stage: str
    kind: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    pearson: float
    spearman: float
    tolerance: float
    status: Literal["equal", "DIFFERS", "deviation"]
    deviation: str | None = None
    note: str = ""
    auroc_ours: float | None = None
    auroc_theirs: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = "x".join(str(s) for s in self.shape)
        return out


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    # average ranks for ties (Spearman's definition)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2:
        return float("nan")
    sa, sb = a.std(), b.std()
    if sa == 0 or sb == 0:
        return 1.0 if np.array_equal(a, b) else float("nan")
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb))


def diff(stage: Stage, labels: np.ndarray | None = None, masks: np.ndarray | None = None) -> StageDiff:
    """Compare one stage. ``labels`` (B,) 0/1 give score stages an I-AUROC; ``masks`` (B,H,W)
    0/1 give map stages a P-AUROC. Raises ValueError when the shapes differ (an adapter bug)."""
    a = stage.ours.detach().to("cpu", torch.float64)
    b = stage.theirs.detach().to("cpu", torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"{stage.method}/{stage.stage}: shapes differ, raydiff {tuple(a.shape)} vs reference {tuple(b.shape)}")
    an, bn = a.numpy().ravel(), b.numpy().ravel()
    err = np.abs(an - bn)
    scale = max(float(np.abs(bn).max(initial=0.0)), 1e-12)
    max_abs = float(err.max(initial=0.0))
    max_rel = max_abs / scale
    if not (np.isfinite(an).all() and np.isfinite(bn).all()):
        max_abs = max_rel = float("inf")
    ok = max_rel <= stage.tolerance
    status = "deviation" if stage.deviation and not ok else ("equal" if ok else "DIFFERS")
    out = StageDiff(
        method=stage.method, stage=stage.stage, kind=stage.kind, shape=tuple(a.shape), max_abs=max_abs,
        max_rel=max_rel, pearson=_corr(an, bn), spearman=_corr(_ranks(an), _ranks(bn)),
        tolerance=stage.tolerance, status=status, deviation=stage.deviation, note=stage.note,
    )
    if stage.kind == "score" and labels is not None and len(set(labels.tolist())) == 2:
        out.auroc_ours, out.auroc_theirs = image_auroc(an, labels), image_auroc(bn, labels)
    if stage.kind == "map" and masks is not None and a.dim() == 3 and masks.shape == tuple(a.shape):
        if masks.min() != masks.max():
            out.auroc_ours = pixel_auroc(a.numpy().astype(np.float32), masks)
            out.auroc_theirs = pixel_auroc(b.numpy().astype(np.float32), masks)
    return out


def markdown(rows: list[StageDiff]) -> str:
    """The parity table (GitHub markdown), one row per stage."""
    head = ("| method | stage | shape | max abs Δ | max rel Δ | Pearson | Spearman | AUROC raydiff / ref "
            "| status | note |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        au = "" if r.auroc_ours is None else f"{r.auroc_ours:.3f} / {r.auroc_theirs:.3f}"
        status = r.status if r.status != "deviation" else f"deviation ({r.deviation})"
        lines.append(
            f"| {r.method} | {r.stage} | {'x'.join(map(str, r.shape))} | {r.max_abs:.2e} | {r.max_rel:.2e} "
            f"| {r.pearson:.6f} | {r.spearman:.6f} | {au} | {status} | {r.note} |"
        )
    return head + "\n".join(lines) + "\n"
