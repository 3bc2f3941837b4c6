"""Noise distributions for diffusion: Gaussian, simplex (AnoDDPM), Gaussian mixture (Fučka).

``sample_noise(kind, (B, C, H, W), seeds, models_cfg, device)`` is the one entry point the
training loop and the scoring variants use; image b's noise is a function of ``seeds[b]``, the
config and the device only, bit for bit, so it does not depend on the batch it is drawn in.
It is computed on ``device`` without a host sync (reverse chains draw it at every step). Per-image functions taking a
``torch.Generator`` live in the submodules (:func:`gaussian_noise`, :func:`simplex_noise`,
:func:`gmm_noise`). :func:`describe_noise` returns the choices made, for run metadata.

Simplex and GMM maps are standardised per (image, channel) to zero mean and unit variance;
Gaussian noise is N(0, I) as drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import torch

from raydiff.config import ModelSpec, NoiseKind
from raydiff.noise.gaussian import batch_gaussian_noise, describe_gaussian, gaussian_noise
from raydiff.noise.gmm import batch_gmm_noise, describe_gmm, gmm_noise
from raydiff.noise.simplex import (
    SimplexBackend,
    batch_simplex_noise,
    describe_simplex,
    simplex_noise,
)
from raydiff.noise.standardise import standardise
from raydiff.seeding import generator

__all__ = [
    "NoiseKind",
    "describe_noise",
    "gaussian_noise",
    "gmm_noise",
    "sample_noise",
    "simplex_noise",
    "standardise",
]


def sample_noise(
    kind: NoiseKind,
    shape: tuple[int, int, int, int],
    seeds: Sequence[int],
    models_cfg: ModelSpec,
    device: torch.device | str = "cpu",
    backend: SimplexBackend = "torch",
) -> torch.Tensor:
    """Noise of ``kind`` for a batch: Tensor ``shape`` = (B, C, H, W) float32 on ``device``.

    Args:
        kind: "gaussian" (N(0, I)), "simplex" (AnoDDPM octaves, ``models_cfg.simplex``) or
            "gmm" (Fučka eq. 7-8, ``models_cfg.gmm``); the latter two are standardised per map.
        shape: (B, C, H, W).
        seeds: one seed per image (e.g. ``raydiff.seeding.derive_seed(run_seed, image_id, t)``);
            image b's noise depends only on ``seeds[b]``, C, H, W and the config.
        device: where the result and the computation live. Gaussian noise is drawn by one
            generator per image on ``device`` itself (no host round trip; CPU and CUDA draws
            differ, each device is deterministic). Simplex and GMM maps are drawn as a few
            numbers per map from per-image CPU generators (seeds and slices, mixture
            components), queued to ``device`` without a host sync, and evaluated there.
        backend: simplex only: "torch" (vectorised port, any device) or "opensimplex"
            (the reference package, CPU); the two agree to ~1e-6.
    """
    if kind not in get_args(NoiseKind):
        raise ValueError(
            f"raydiff.noise.sample_noise: unknown noise kind {kind!r}. "
            f"Fix: use one of {list(get_args(NoiseKind))}."
        )
    if len(shape) != 4 or any(int(s) < 1 for s in shape):
        raise ValueError(
            f"raydiff.noise.sample_noise: shape {tuple(shape)} is not (B, C, H, W) with positive "
            "sizes. Fix: pass the shape of the image batch the noise is added to."
        )
    b, c, h, w = (int(s) for s in shape)
    if len(seeds) != b:
        raise ValueError(
            f"raydiff.noise.sample_noise: {len(seeds)} seeds for a batch of {b} images. "
            "Fix: pass exactly one seed per image."
        )
    if kind == "gaussian":
        return batch_gaussian_noise([generator(int(s), device) for s in seeds], c, h, w, device)
    generators = [generator(int(s)) for s in seeds]
    if kind == "simplex":
        return batch_simplex_noise(generators, c, h, w, models_cfg.simplex, device, backend)
    return batch_gmm_noise(generators, c, h, w, models_cfg.gmm, device)


def describe_noise(
    kind: NoiseKind, models_cfg: ModelSpec, image_size: int, backend: SimplexBackend = "torch"
) -> dict:
    """The choices behind ``kind`` at ``image_size`` px (JSON-serialisable), for meta.json."""
    if kind == "gaussian":
        return describe_gaussian()
    if kind == "simplex":
        return describe_simplex(models_cfg.simplex, image_size, backend)
    if kind == "gmm":
        return describe_gmm(models_cfg.gmm)
    raise ValueError(
        f"raydiff.noise.describe_noise: unknown noise kind {kind!r}. "
        f"Fix: use one of {list(get_args(NoiseKind))}."
    )
