"""raydiff.knn_prior against a brute-force numpy L1 KNN, the reference's binning and T̂ rounding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from raydiff.errors import CheckpointError
from raydiff.knn_prior import KNNPrior, knn_features, noise_level



def _feats(n: int, d: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Different spreads per row so that the mean distances fill several bins.
    return (rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=(n, 1))).astype(np.float32)


def _l1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a[:, None, :].astype(np.float64) - b[None, :, :].astype(np.float64)).sum(-1)


def brute_train_means(x: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    d = _l1(x, x)
    if exclude_self:
        d[np.arange(len(x)), np.arange(len(x))] = np.inf
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


def brute_bin(mean: float, edges: np.ndarray) -> int:
    """Reference test.py: digitize(right=True) - 1, capped at the last bin, + 1; then ≥ 1."""
    b = 0
    while b < len(edges) and mean > edges[b]:
        b += 1
    return int(min(max(b, 1), len(edges) - 1))


@pytest.mark.parametrize("exclude_self", [True, False])
def test_fit_against_brute_force(exclude_self: bool) -> None:
    x = _feats(40)
    prior = KNNPrior.fit(x, k=5, bins=10, exclude_self=exclude_self)
    expect = brute_train_means(x, 5, exclude_self)
    np.testing.assert_allclose(prior.train_mean_distances, expect, rtol=1e-5)
    assert prior.k == 5 and prior.n_train == 40 and prior.bins == 10 and prior.dim == 48
    np.testing.assert_allclose(prior.edges, np.linspace(expect.min(), expect.max(), 11), rtol=1e-5)
    if not exclude_self:
        assert prior.train_mean_distances.min() < expect.max()  # self (distance 0) is counted


def test_queries_against_brute_force() -> None:
    x, q = _feats(40), _feats(12, seed=1) * 1.5
    prior = KNNPrior.fit(x, k=7, bins=10)
    expect = np.sort(_l1(q, x), axis=1)[:, :7].mean(axis=1)
    np.testing.assert_allclose(prior.mean_distance(q), expect, rtol=1e-5)
    bins = prior.bin(torch.from_numpy(q))  # torch tensors are accepted as well
    assert bins.dtype == np.int64 and bins.shape == (12,)
    assert bins.tolist() == [brute_bin(m, prior.edges) for m in prior.mean_distance(q)]
    assert prior.level(q).tolist() == bins.tolist()


def test_bins_edges_and_clipping() -> None:
    # 1-D points 0, 1, 3, 7, 15: nearest other at L1 distance 1, 1, 2, 4, 8 (k = 1).
    x = np.array([[0.0], [1.0], [3.0], [7.0], [15.0]], dtype=np.float32)
    prior = KNNPrior.fit(x, k=1, bins=7)
    np.testing.assert_array_equal(prior.train_mean_distances, [1, 1, 2, 4, 8])
    np.testing.assert_allclose(prior.edges, np.arange(1.0, 9.0))  # width 1 from 1 to 8
    # Queries at distance 0.5 (below the min), 1.0 (= min), 1.5, 2.0 (right-closed), 5, 8 (= max), 100.
    q = np.array([[0.5], [2.0], [4.5], [5.0], [20.0], [23.0], [115.0]], dtype=np.float32)
    np.testing.assert_allclose(prior.mean_distance(q), [0.5, 1.0, 1.5, 2.0, 5.0, 8.0, 100.0])
    assert prior.bin(q).tolist() == [1, 1, 1, 1, 4, 7, 7]
    assert prior.bin(x).tolist() == [1] * 5  # a training image queried as a test image finds itself


def test_k_is_clamped_and_duplicates_handled() -> None:
    x = np.repeat(_feats(3), 2, axis=0)  # every row twice
    prior = KNNPrior.fit(x, k=20, bins=4)
    assert prior.k == 5
    np.testing.assert_allclose(prior.train_mean_distances, brute_train_means(x, 5, True), rtol=1e-5)
    one = KNNPrior.fit(x, k=1, bins=4)  # nearest OTHER image is the duplicate: distance 0
    np.testing.assert_array_equal(one.train_mean_distances, np.zeros(6))
    with pytest.raises(ValueError, match="at least 2"):
        KNNPrior.fit(x[:1])
    with pytest.raises(ValueError, match="D = 3"):
        prior.bin(np.zeros((1, 3), np.float32))


def test_save_load_round_trip(tmp_path) -> None:
    x, q = _feats(30), _feats(5, seed=2)
    prior = KNNPrior.fit(x, k=4, bins=10)
    prior.save(tmp_path / "knn")
    loaded = KNNPrior.load(tmp_path / "knn")
    assert (loaded.k, loaded.n_train, loaded.dim, loaded.exclude_self) == (4, 30, 48, True)
    np.testing.assert_array_equal(loaded.edges, prior.edges)
    np.testing.assert_array_equal(loaded.train_mean_distances, prior.train_mean_distances)
    np.testing.assert_array_equal(loaded.index.reconstruct_n(0, 30), x)
    np.testing.assert_array_equal(loaded.mean_distance(q), prior.mean_distance(q))
    np.testing.assert_array_equal(loaded.bin(q), prior.bin(q))
    assert not list((tmp_path / "knn").glob("*.pkl"))


def test_load_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="missing") as err:
        KNNPrior.load(tmp_path / "nothing")
    assert "Fix:" in str(err.value)
    folder = tmp_path / "knn"
    KNNPrior.fit(_feats(10), k=3).save(folder)
    meta = json.loads((folder / "knn.json").read_text())
    (folder / "knn.json").write_text(json.dumps({**meta, "n_train": 11}))
    with pytest.raises(CheckpointError, match="does not match"):
        KNNPrior.load(folder)
    (folder / "knn.json").write_text("{")
    with pytest.raises(CheckpointError, match="unreadable"):
        KNNPrior.load(folder)


def reference_t_hat(b: int, t_max: int) -> int:
    """JustinTebbe/Dynamic-noise-AD test.py: np.maximum(b, 2) / 10 * T_max, then its ``roundup``."""
    x = np.array([np.maximum(b, 2) / 10 * t_max])
    res = np.ceil(x / 10) * 10
    mask = np.logical_and(x % 10 < 5, x % 10 > 0)
    res[mask] -= 10
    return int(res[0])


def test_noise_level_table() -> None:
    # DynAD: T_max = 80, |B| = 10, minimum bin 2, nearest multiple of 10.
    table = {0: 20, 1: 20, 2: 20, 3: 20, 4: 30, 5: 40, 6: 50, 7: 60, 8: 60, 9: 70, 10: 80}
    assert {b: noise_level(b) for b in table} == table
    for t_max in range(0, 301, 5):
        for b in range(0, 11):
            assert noise_level(b, t_max, 10) == reference_t_hat(b, t_max), (b, t_max)
    assert noise_level(5, 50, 10) == 30  # 25 rounds up, as the reference (not banker's rounding)
    assert noise_level(10, 80, 20) == 40 and noise_level(20, 80, 20) == 80


def test_end_to_end_with_features() -> None:
    from raydiff.config import FeaturesConfig
    from raydiff.features import build_features

    phi, _ = build_features(FeaturesConfig(), seed=0)
    g = torch.Generator().manual_seed(0)
    train = torch.rand(12, 1, 32, 32, generator=g) * 0.2 - 0.1  # flat grey images
    test = torch.cat([train[:2], torch.rand(2, 1, 32, 32, generator=g) * 2 - 1])  # 2 normal, 2 noise
    prior = KNNPrior.fit(knn_features(phi, train), k=5, bins=10)
    bins = prior.bin(knn_features(phi, test))
    assert prior.dim == 128 * 16 * 16
    assert bins[2:].min() == 10 and bins[:2].max() < 10
