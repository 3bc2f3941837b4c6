"""Per-map standardisation shared by the simplex and GMM noises."""

from __future__ import annotations

import torch


def standardise(maps: torch.Tensor) -> torch.Tensor:
    """Per map (last two dims): zero mean, unit population variance. Same shape and dtype.

    Each map is reduced on its own: a batched reduction may sum in an order that depends on
    the number of maps, and a map's values must not depend on the batch it was drawn in.
    Raises ValueError for a constant map (e.g. a 1 x 1 image), which cannot be standardised.
    """
    flat = maps.reshape(-1, *maps.shape[-2:])
    out = torch.empty_like(flat)
    stds = []
    for i, m in enumerate(flat):
        centred = m - m.mean()
        std = centred.square().mean().sqrt()
        out[i] = centred / std
        stds.append(std)
    if stds and bool((torch.stack(stds) == 0).any()):
        raise ValueError(
            f"raydiff.noise.standardise: a noise map of shape {tuple(maps.shape[-2:])} is "
            "constant and cannot be scaled to unit variance. Fix: use images of at least "
            "2 x 2 pixels (and, for gmm, sigmas of at least a pixel)."
        )
    return out.reshape(maps.shape)
