"""DynAD's KNN prior ("Dynamic Implicit Conditioning", section 4.1, Alg. 2): the noise level T̂ per image.

Reference: JustinTebbe/Dynamic-noise-AD:test.py (class ``KNN``, ``get_bins_and_mappings``, ``roundup``).

1. Features y = φ_layer2(x) pooled to 16×16 and flattened (``raydiff.features.knn_features``).
2. Fit: every training image's mean L1 distance ȳ to its K nearest OTHER training images
   (faiss ``IndexFlat`` with ``METRIC_L1``, exact). The reference searches the training set for
   the training image itself, so its own distance 0 is one of the K; **we exclude it** (a test
   image is never in the index, so excluding self makes the training means comparable to test
   means). K is clamped to N-1.
3. |B| equal-width bins over the training means, edges from their min to their max
   (``numpy.histogram`` edges, as the reference).
4. A test image's ȳ (K nearest training images) goes to bin b ∈ 1..|B| with right-closed
   intervals edges[b-1] < ȳ ≤ edges[b] (the reference's ``np.digitize(right=True)``); values
   outside the training range clip to the first / last bin (the reference gives bin 0 below the
   minimum, which max(b, 2) maps to the same T̂).
5. :func:`noise_level`: T̂ = max(b, 2) / |B| · T_max rounded half-up to a multiple of 10.

Saved as a faiss index file + JSON (no pickle).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from raydiff.errors import CheckpointError
from raydiff.features import knn_features, pooled_layer2

if TYPE_CHECKING:  # faiss is imported where an index is built or read: noise_level and dynad's
    # scoring need none, and raydiff.bench.gpu_check runs them where faiss is not installed.
    import faiss

__all__ = ["KNNPrior", "noise_level", "knn_features", "pooled_layer2"]

INDEX_FILE = "index.faiss"
META_FILE = "knn.json"


def _as_matrix(feats: Any, dim: int | None = None) -> np.ndarray:
    """(N,D) float32 C-contiguous numpy array from a numpy array or a torch tensor."""
    if hasattr(feats, "detach"):
        feats = feats.detach().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(feats), dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"KNN features must be (N, D), got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"KNN features have D = {arr.shape[1]}, the fitted index has D = {dim}")
    if not np.isfinite(arr).all():
        raise ValueError("KNN features contain NaN or inf")
    return arr


def noise_level(b: int, t_max: int = 80, bins: int = 10) -> int:
    """T̂ = max(b, 2) / |B| · T_max, rounded to the nearest multiple of 10 (ties up).

    DynAD Alg. 2 line 8 and section 5 ("minimum bin 2", "rounded to the nearest multiple of 10"),
    computed exactly as the reference (``np.maximum(b, 2) / 10 * T_max`` then ``roundup``, whose
    ties go up: 25 → 30), with |B| in place of the reference's literal 10. The paper's floor before
    rounding changes nothing (⌊x⌋ and x round to the same multiple of 10). With T_max = 80, |B| = 10:
    b ≤ 2 → 20, 3 → 20, 4 → 30, 5 → 40, 6 → 50, 7 → 60, 8 → 60, 9 → 70, 10 → 80. T̂ can be 0 when
    T_max < 25 (no denoising step).
    """
    if bins < 1 or t_max < 0:
        raise ValueError(f"need bins >= 1 and t_max >= 0, got bins={bins}, t_max={t_max}")
    exact = Fraction(max(int(b), 2) * int(t_max), int(bins))
    return math.floor(exact / 10 + Fraction(1, 2)) * 10


def _search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    distances, labels = index.search(queries, k)
    return distances.astype(np.float64), labels


@dataclass(frozen=True)
class KNNPrior:
    """A fitted KNN prior: exact L1 index of the training features, K and the bin edges.

    ``edges`` (bins+1,) float64 ascending; ``train_mean_distances`` (N,) float64 = ȳ of each
    training image (kept for histograms, DynAD Fig. 5).
    """

    index: faiss.Index
    k: int
    edges: np.ndarray
    n_train: int
    train_mean_distances: np.ndarray
    exclude_self: bool = True

    @property
    def bins(self) -> int:
        return len(self.edges) - 1

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @classmethod
    def fit(cls, train_feats: Any, k: int = 20, bins: int = 10, exclude_self: bool = True) -> KNNPrior:
        """Index ``train_feats`` (N,D) float32 and bin the training images' mean K-NN distances."""
        feats = _as_matrix(train_feats)
        n = feats.shape[0]
        if k < 1 or bins < 1:
            raise ValueError(f"need k >= 1 and bins >= 1, got k={k}, bins={bins}")
        if n < (2 if exclude_self else 1):
            raise ValueError(f"the KNN prior needs at least 2 training images, got {n}")
        k_eff = min(k, n - 1) if exclude_self else min(k, n)
        import faiss  # here, not at the top: the GPU check's image has no faiss (see TYPE_CHECKING above)

        index = faiss.IndexFlat(feats.shape[1], faiss.METRIC_L1)
        index.add(feats)
        if exclude_self:
            dist, labels = _search(index, feats, k_eff + 1)
            keep = labels != np.arange(n)[:, None]
            # Self is normally one of the k+1 hits; when exact duplicates push it out, drop the last.
            keep[keep.all(axis=1), -1] = False
            dist = dist[keep].reshape(n, k_eff)
        else:
            dist, _ = _search(index, feats, k_eff)
        means = dist.mean(axis=1)
        _, edges = np.histogram(means, bins=bins)
        return cls(index=index, k=k_eff, edges=edges, n_train=n, train_mean_distances=means, exclude_self=exclude_self)

    def mean_distance(self, feats: Any) -> np.ndarray:
        """ȳ: mean L1 distance of each query (B,D) to its K nearest training images → (B,) float64."""
        queries = _as_matrix(feats, self.dim)
        dist, _ = _search(self.index, queries, self.k)
        return dist.mean(axis=1)

    def bin(self, feats: Any) -> np.ndarray:
        """Bin b ∈ 1..bins of each query (B,D) → (B,) int64; edges[b-1] < ȳ ≤ edges[b], clipped."""
        means = self.mean_distance(feats)
        return np.clip(np.searchsorted(self.edges, means, side="left"), 1, self.bins).astype(np.int64)

    def level(self, feats: Any) -> np.ndarray:
        """Same as :meth:`bin` (the name CONTRACT.md and ``scoring.dynad`` use)."""
        return self.bin(feats)

    # -- persistence ---------------------------------------------------------------------------

    def save(self, folder: str | Path) -> None:
        """Write ``index.faiss`` (faiss.write_index) and ``knn.json`` into ``folder``."""
        import faiss  # here, not at the top: the GPU check's image has no faiss (see TYPE_CHECKING above)

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        meta = {
            "metric": "L1",
            "k": self.k,
            "n_train": self.n_train,
            "dim": self.dim,
            "exclude_self": self.exclude_self,
            "edges": [float(e) for e in self.edges],
            "train_mean_distances": [float(d) for d in self.train_mean_distances],
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> KNNPrior:
        """Read a folder written by :meth:`save`; :class:`CheckpointError` when files are missing or inconsistent."""
        import faiss  # here, not at the top: the GPU check's image has no faiss (see TYPE_CHECKING above)

        folder = Path(folder)
        fix = "run `raydiff fit` for this category again (it rebuilds the KNN prior)."
        for name in (INDEX_FILE, META_FILE):
            if not (folder / name).is_file():
                raise CheckpointError(folder / name, "KNN prior file is missing.", fix)
        try:
            meta = json.loads((folder / META_FILE).read_text())
            k, n, dim = int(meta["k"]), int(meta["n_train"]), int(meta["dim"])
            edges = np.asarray(meta["edges"], dtype=np.float64)
            means = np.asarray(meta["train_mean_distances"], dtype=np.float64)
            exclude_self = bool(meta["exclude_self"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(folder / META_FILE, f"unreadable KNN prior metadata ({err!r}).", fix) from None
        try:
            index = faiss.read_index(str(folder / INDEX_FILE))
        except RuntimeError as err:
            problem = f"unreadable faiss index ({str(err).splitlines()[0]})."
            raise CheckpointError(folder / INDEX_FILE, problem, fix) from None
        if index.ntotal != n or index.d != dim or index.metric_type != faiss.METRIC_L1 or len(edges) < 2:
            raise CheckpointError(
                folder,
                f"index ({index.ntotal} vectors, d={index.d}, metric {index.metric_type}) does not match "
                f"{META_FILE} ({n} vectors, d={dim}, L1, {len(edges) - 1} bins).",
                fix,
            )
        return cls(index=index, k=k, edges=edges, n_train=n, train_mean_distances=means, exclude_self=exclude_self)
