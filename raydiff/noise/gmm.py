"""Gaussian-mixture noise (Fučka et al., "noise distributions", sec. 4.3, eq. 7-8).

Each noise map is a function sampled once for the whole map, not per pixel:

    g_i(x, y) = 1 / (2 pi sx_i sy_i) * exp(-(x - mx_i)^2 / (2 sx_i^2) - (y - my_i)^2 / (2 sy_i^2))   (7)
    f(x, y)   = sum_{i=1..K} w_i g_i(x, y),   w_i ~ U[0, 1]                                       (8)

evaluated on the pixel grid x in {0..W-1}, y in {0..H-1}. The paper leaves K, the means and the
sigmas unspecified; our choices (recorded by :func:`describe_gmm`):

- K ~ U{min_components..max_components} per map; means uniform over the evaluated grid
  (mx ~ U[0, W-1], my ~ U[0, H-1]); sx ~ U[min_sigma, max_sigma] * W, sy likewise * H,
  drawn independently (axis-aligned components, no correlation term, as in eq. 7);
- weights are non-negative as in the paper (a sum of bumps); the normalisation 1/(2 pi sx sy)
  of eq. 7 is kept, so narrow bumps are the tallest;
- independent maps per image *and channel* ("every noise map is made using function f");
- each map is then standardised to zero mean and unit variance (the paper's "standardise").

Eq. 7 is separable, so f = sum_i (w_i / (2 pi sx_i sy_i)) gy_i(y) gx_i(x)^T: a sum of K outer
products, accumulated for all maps at once (:func:`gmm_field`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from raydiff.config import GMMConfig
from raydiff.errors import ConfigError
from raydiff.noise.device import to_device
from raydiff.noise.standardise import standardise


@dataclass(frozen=True)
class GMMMaps:
    """Components of N maps, tensors (N, max_components) float64; a map with K components has
    zero weights beyond K (a fixed width keeps each map's arithmetic independent of the batch)."""

    weights: torch.Tensor
    mean_x: torch.Tensor
    mean_y: torch.Tensor
    sigma_x: torch.Tensor
    sigma_y: torch.Tensor

    @staticmethod
    def cat(parts: Sequence[GMMMaps]) -> GMMMaps:
        return GMMMaps(
            *(torch.cat([getattr(p, f) for p in parts]) for f in GMMMaps.__dataclass_fields__)
        )


def check_gmm_config(cfg: GMMConfig) -> None:
    """Cross-field checks the config loader does not make."""
    if cfg.min_components > cfg.max_components or cfg.min_sigma > cfg.max_sigma:
        raise ConfigError(
            "models.gmm",
            f"min_components={cfg.min_components}, max_components={cfg.max_components}, "
            f"min_sigma={cfg.min_sigma}, max_sigma={cfg.max_sigma}: a minimum exceeds its maximum.",
            "set min_components <= max_components and min_sigma <= max_sigma.",
        )


def draw_gmm_maps(
    generator: torch.Generator, channels: int, height: int, width: int, cfg: GMMConfig
) -> GMMMaps:
    """One image's ``channels`` maps, drawn from its (CPU) generator in this order: the C
    component counts K, then per channel K x (weight, mean_x, mean_y, sigma_x, sigma_y)
    uniforms."""
    check_gmm_config(cfg)
    # C draws in one call: the same numbers as C scalar draws (CPU generator), read in bulk.
    ks = torch.randint(cfg.min_components, cfg.max_components + 1, (channels,), generator=generator).tolist()
    k_max = cfg.max_components
    rows = []
    for k in ks:
        u = torch.rand((k, 5), generator=generator, dtype=torch.float64)
        rows.append(torch.nn.functional.pad(u, (0, 0, 0, k_max - k), value=0.5))
    u = torch.stack(rows)  # (C, max_components, 5)
    u[..., 0] *= torch.arange(k_max) < torch.tensor(ks)[:, None]  # weight 0 beyond K
    span = cfg.max_sigma - cfg.min_sigma
    return GMMMaps(
        weights=u[..., 0],
        mean_x=u[..., 1] * (width - 1),
        mean_y=u[..., 2] * (height - 1),
        sigma_x=(cfg.min_sigma + span * u[..., 3]) * width,
        sigma_y=(cfg.min_sigma + span * u[..., 4]) * height,
    )


def gmm_field(
    maps: GMMMaps,
    height: int,
    width: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """f(x, y) of eq. 8 for each map (unstandardised): Tensor (N, H, W) of ``dtype``, >= 0.

    All N maps at once: a loop over the (fixed) ``max_components`` slots adds one separable
    bump per slot to every map, f += (w_i / (2 pi sx_i sy_i)) gy_i(y) gx_i(x)^T. Element-wise
    adds in a fixed order, so a map's bits do not depend on how many maps share the call (a
    batched matmul may pick its kernel, and summation order, by batch size). The components
    were drawn on the host and are queued to the device without a sync.
    """
    p = {k: to_device(getattr(maps, k), device, dtype) for k in GMMMaps.__dataclass_fields__}
    xs = torch.arange(width, device=device, dtype=dtype)
    ys = torch.arange(height, device=device, dtype=dtype)
    gx = torch.exp(-((xs - p["mean_x"][..., None]) ** 2) / (2 * p["sigma_x"][..., None] ** 2))  # (N, K, W)
    gy = torch.exp(-((ys - p["mean_y"][..., None]) ** 2) / (2 * p["sigma_y"][..., None] ** 2))  # (N, K, H)
    coef = p["weights"] / (2 * math.pi * p["sigma_x"] * p["sigma_y"])  # w_i / (2 pi sx sy), eq. 7
    lhs = gy * coef[..., None]  # (N, K, H)
    out = torch.zeros((lhs.shape[0], height, width), device=device, dtype=dtype)
    for i in range(lhs.shape[1]):  # eq. 8: sum over the component slots (zero weight beyond K)
        out.addcmul_(lhs[:, i, :, None], gx[:, i, None, :])
    return out


def gmm_noise(
    generator: torch.Generator,
    channels: int,
    height: int,
    width: int,
    cfg: GMMConfig,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """One image's GMM noise: Tensor (C, H, W) float32, each map zero mean / unit variance."""
    return batch_gmm_noise([generator], channels, height, width, cfg, device)[0]


def batch_gmm_noise(
    generators: Sequence[torch.Generator],
    channels: int,
    height: int,
    width: int,
    cfg: GMMConfig,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """GMM noise for a batch, one generator per image: Tensor (B, C, H, W) float32."""
    maps = GMMMaps.cat([draw_gmm_maps(g, channels, height, width, cfg) for g in generators])
    field = standardise(gmm_field(maps, height, width, device))
    return field.reshape(len(generators), channels, height, width)


def describe_gmm(cfg: GMMConfig) -> dict:
    """The choices behind the GMM noise, for a run's metadata (JSON-serialisable)."""
    return {
        "kind": "gmm",
        "reference": "Fucka et al. eq. 7-8",
        "components": [cfg.min_components, cfg.max_components],
        "sigma_fraction_of_side": [cfg.min_sigma, cfg.max_sigma],
        "weights": "U[0, 1]",
        "means": "uniform over the pixel grid",
        "normalisation": "1 / (2 pi sx sy) as in eq. 7",
        "independent": "per image and channel (seeded from the image seed)",
        "standardised": "per map: zero mean, unit population variance",
    }
