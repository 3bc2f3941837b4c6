"""Noise distributions: exactness against opensimplex and eq. 7-8, statistics, determinism."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import opensimplex
import pytest
import torch
from opensimplex.internals import _init as opensimplex_init

from raydiff.config import GMMConfig, ModelSpec
from raydiff.errors import ConfigError
from raydiff.noise import describe_noise, gaussian_noise, gmm_noise, sample_noise, simplex_noise
from raydiff.noise.gmm import draw_gmm_maps, gmm_field
from raydiff.noise.opensimplex3 import noise3, permutation_tables
from raydiff.noise.simplex import draw_simplex_maps, fractal_simplex, octave_frequencies
from raydiff.seeding import generator

CFG = ModelSpec()
KINDS = ("gaussian", "simplex", "gmm")
SEEDS = [0, 3, 12345, -987654321, 2**62 + 5, 2**64 + 7, -(2**70)]



# ------------------------------------------------------------------ OpenSimplex port vs reference


@pytest.mark.parametrize("seed", SEEDS)
def test_permutation_equals_opensimplex_init(seed: int) -> None:
    perm = permutation_tables([seed])[0]
    ref_perm, ref_grad_index = opensimplex_init(seed)
    np.testing.assert_array_equal(perm, ref_perm)
    np.testing.assert_array_equal((perm % 24) * 3, ref_grad_index)
    assert sorted(perm.tolist()) == list(range(256))


@pytest.mark.parametrize("seed", [42, -7, 2**62 + 5])
def test_noise3_equals_opensimplex_at_random_points(seed: int) -> None:
    pts = np.random.default_rng(abs(seed) % 1000).uniform(-400, 400, (3, 2000))
    simplex = opensimplex.OpenSimplex(seed)
    ref = np.array([simplex.noise3(*p) for p in pts.T])
    perm = torch.as_tensor(permutation_tables([seed]))
    coords = [torch.tensor(p)[None] for p in pts]
    out64 = noise3(*coords, perm, dtype=torch.float64)[0].numpy()
    out32 = noise3(*coords, perm)[0]
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out64, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out32.numpy(), ref, rtol=0, atol=1e-5)
    assert ref.std() > 0.1  # a real field, not zeros


def test_noise3_breaks_ties_like_opensimplex() -> None:
    """On a grid of multiples of 1/12, points sit exactly on region boundaries and have equal
    in-cell coordinates: every tie must be broken as the reference breaks it."""
    g = np.arange(-12, 13) / 12.0
    t = torch.tensor(g)
    for seed in (1, 2):
        ref = opensimplex.OpenSimplex(seed).noise3array(g, g, g)  # (z, y, x)
        perm = torch.as_tensor(permutation_tables([seed]))
        out = noise3(t[None, None, None, :], t[None, None, :, None], t[None, :, None, None], perm,
                     dtype=torch.float64)[0]  # fmt: skip
        np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-12)


def test_noise3_one_permutation_per_leading_index() -> None:
    perm = torch.as_tensor(permutation_tables([5, 6]))
    x = torch.linspace(0, 9, 50, dtype=torch.float64)
    out = noise3(x.expand(2, -1), x.expand(2, -1) * 0.7, torch.zeros(2, 1), perm)
    for i, seed in enumerate((5, 6)):
        s = opensimplex.OpenSimplex(seed)
        ref = [s.noise3(float(v), float(v) * 0.7, 0.0) for v in x]
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-5)
    with pytest.raises(ValueError, match="leading dimension"):
        noise3(x[None], x[None], x[None], torch.as_tensor(permutation_tables([1, 2, 3])))


# ------------------------------------------------------------------ simplex octaves (AnoDDPM)


def anoddpm_octaves(seed: int, z: float, size: int, cfg) -> np.ndarray:
    """AnoDDPM's rand_3d_fixed_T_octaves with f_0 scaled to the image size (independent code)."""
    simplex = opensimplex.OpenSimplex(seed)
    noise = np.zeros((1, size, size))
    xs = np.arange(size)
    amplitude, frequency = 1.0, cfg.frequency * size / 256
    for _ in range(cfg.octaves):
        noise += amplitude * simplex.noise3array(xs / frequency, xs / frequency, np.array([z]) / frequency)
        frequency /= 2
        amplitude *= cfg.persistence
    return noise[0]


def test_simplex_octaves_equal_anoddpm_formula() -> None:
    maps = draw_simplex_maps(generator(11), channels=2, height=48)
    field = fractal_simplex(maps, 48, 48, CFG.simplex, dtype=torch.float64)
    for i, (seed, z) in enumerate(zip(maps.seeds, maps.z)):
        ref = anoddpm_octaves(seed, z, 48, CFG.simplex)
        np.testing.assert_allclose(field[i].numpy(), ref, rtol=0, atol=1e-10)


def test_simplex_backends_agree() -> None:
    shape = (2, 3, 40, 40)
    fast = sample_noise("simplex", shape, [1, 2], CFG)
    ref = sample_noise("simplex", shape, [1, 2], CFG, backend="opensimplex")
    assert ref.dtype == torch.float32
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)


def test_simplex_chunking_does_not_change_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    import raydiff.noise.simplex as simplex

    maps = draw_simplex_maps(generator(3), channels=3, height=32)
    whole = fractal_simplex(maps, 32, 32, CFG.simplex)
    for budget in (32 * 32 * 2, 32 * 32 * 6 * 2):  # octaves split / maps split
        monkeypatch.setitem(simplex.MAX_POINTS, "cpu", budget)
        assert torch.equal(fractal_simplex(maps, 32, 32, CFG.simplex), whole)


def test_octave_frequencies_scale_with_image_size() -> None:
    assert [f for f, _ in octave_frequencies(CFG.simplex, 256)] == [64, 32, 16, 8, 4, 2]
    assert [f for f, _ in octave_frequencies(CFG.simplex, 64)] == [16, 8, 4, 2, 1, 0.5]
    amps = [a for _, a in octave_frequencies(CFG.simplex, 64)]
    np.testing.assert_allclose(amps, [0.8**o for o in range(6)])


# ------------------------------------------------------------------ GMM (Fučka eq. 7-8)


def test_gmm_field_equals_eq_7_8() -> None:
    cfg = GMMConfig(min_components=2, max_components=6, min_sigma=0.05, max_sigma=0.3)
    h, w = 20, 28
    maps = draw_gmm_maps(generator(4), 3, h, w, cfg)
    field = gmm_field(maps, h, w, dtype=torch.float64).numpy()
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    for m in range(3):
        ref = np.zeros((h, w))
        for i in range(cfg.max_components):
            wi, mx, my = (float(getattr(maps, f)[m, i]) for f in ("weights", "mean_x", "mean_y"))
            sx, sy = float(maps.sigma_x[m, i]), float(maps.sigma_y[m, i])
            g = np.exp(-((x - mx) ** 2) / (2 * sx**2) - (y - my) ** 2 / (2 * sy**2))
            ref += wi * g / (2 * math.pi * sx * sy)  # eq. 7, summed as eq. 8
        np.testing.assert_allclose(field[m], ref, rtol=1e-12, atol=1e-15)
    # Parameters within the configured ranges; K in [min, max] non-zero weights.
    k = (maps.weights > 0).sum(1)
    assert ((k >= cfg.min_components) & (k <= cfg.max_components)).all()
    live = maps.weights > 0
    assert (maps.weights[live] <= 1).all()
    assert ((maps.sigma_x[live] >= 0.05 * w) & (maps.sigma_x[live] <= 0.3 * w)).all()
    assert ((maps.sigma_y[live] >= 0.05 * h) & (maps.sigma_y[live] <= 0.3 * h)).all()
    assert ((maps.mean_x[live] >= 0) & (maps.mean_x[live] <= w - 1)).all()


def test_gmm_rejects_inverted_ranges() -> None:
    bad = dataclasses.replace(CFG, gmm=GMMConfig(min_components=10, max_components=5))
    with pytest.raises(ConfigError, match="models.gmm"):
        sample_noise("gmm", (1, 1, 8, 8), [0], bad)


# ------------------------------------------------------------------ Gaussian


def test_gaussian_is_randn_from_the_image_generator() -> None:
    out = sample_noise("gaussian", (2, 3, 8, 8), [7, 8], CFG)
    for i, s in enumerate((7, 8)):
        torch.testing.assert_close(out[i], torch.randn((3, 8, 8), generator=generator(s)), rtol=0, atol=0)


# ------------------------------------------------------------------ statistics


def lag1_autocorrelation(n: torch.Tensor) -> torch.Tensor:
    """Mean of the x- and y-lag-1 autocorrelations of each map: (B, C)."""
    n = n - n.mean((-2, -1), keepdim=True)
    var = (n * n).mean((-2, -1))
    ax = (n[..., :, 1:] * n[..., :, :-1]).mean((-2, -1)) / var
    ay = (n[..., 1:, :] * n[..., :-1, :]).mean((-2, -1)) / var
    return (ax + ay) / 2


@pytest.mark.parametrize("kind", ["simplex", "gmm"])
def test_standardised_per_map(kind: str) -> None:
    n = sample_noise(kind, (3, 3, 48, 48), [1, 2, 3], CFG)
    torch.testing.assert_close(n.mean((-2, -1)), torch.zeros(3, 3), rtol=0, atol=1e-5)
    torch.testing.assert_close(n.var((-2, -1), unbiased=False), torch.ones(3, 3), rtol=0, atol=1e-4)


def test_gaussian_moments() -> None:
    n = sample_noise("gaussian", (4, 3, 64, 64), [1, 2, 3, 4], CFG)
    assert abs(float(n.mean())) < 0.02  # 49k samples: std error 0.0045
    assert abs(float(n.var()) - 1) < 0.03


def test_spatial_correlation() -> None:
    shape, seeds = (4, 3, 64, 64), [10, 11, 12, 13]
    gauss = lag1_autocorrelation(sample_noise("gaussian", shape, seeds, CFG))
    assert gauss.abs().max() < 0.08  # std error of one map's estimate: ~1/64
    for kind in ("simplex", "gmm"):
        assert lag1_autocorrelation(sample_noise(kind, shape, seeds, CFG)).min() > 0.5, kind


# ------------------------------------------------------------------ determinism, independence


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_and_batch_independent(kind: str) -> None:
    a = sample_noise(kind, (2, 3, 24, 24), [5, 6], CFG)
    assert torch.equal(a, sample_noise(kind, (2, 3, 24, 24), [5, 6], CFG))
    assert torch.equal(a[0], sample_noise(kind, (1, 3, 24, 24), [5], CFG)[0])
    assert torch.equal(a[1], sample_noise(kind, (3, 3, 24, 24), [9, 6, 5], CFG)[1])


@pytest.mark.parametrize("kind", KINDS)
def test_different_seeds_and_channels_differ(kind: str) -> None:
    n = sample_noise(kind, (2, 3, 32, 32), [1, 2], CFG).flatten(2)
    maps = n.reshape(6, -1)
    corr = torch.corrcoef(maps)
    off_diagonal = corr[~torch.eye(6, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.9, kind  # no two maps (images or channels) alike


def test_per_image_functions_equal_sample_noise() -> None:
    c, h, w = 3, 20, 24
    torch.testing.assert_close(
        gaussian_noise(generator(4), c, h, w), sample_noise("gaussian", (1, c, h, w), [4], CFG)[0]
    )
    torch.testing.assert_close(
        simplex_noise(generator(4), c, h, w, CFG.simplex),
        sample_noise("simplex", (1, c, h, w), [4], CFG)[0],
    )
    torch.testing.assert_close(
        gmm_noise(generator(4), c, h, w, CFG.gmm), sample_noise("gmm", (1, c, h, w), [4], CFG)[0]
    )


@pytest.mark.parametrize("kind", KINDS)
def test_shape_dtype_device(kind: str) -> None:
    n = sample_noise(kind, (2, 1, 16, 40), [0, 1], CFG, device=torch.device("cpu"))
    assert n.shape == (2, 1, 16, 40) and n.dtype == torch.float32 and n.device.type == "cpu"
    assert torch.isfinite(n).all()
    json.dumps(describe_noise(kind, CFG, 256))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="one seed per image"):
        sample_noise("gaussian", (2, 1, 8, 8), [0], CFG)
    with pytest.raises(ValueError, match="unknown noise kind"):
        sample_noise("perlin", (1, 1, 8, 8), [0], CFG)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="opensimplex"):
        sample_noise("simplex", (1, 1, 8, 8), [0], CFG, backend="numpy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="constant"):
        sample_noise("simplex", (1, 1, 1, 1), [0], CFG)
