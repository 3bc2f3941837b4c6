"""Per-map standardisation shared by the simplex and GMM noises."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ over the last dim by a fixed binary tree of element-wise adds: (..., n) → (...).

    Only element-wise operations, so each row's bits depend on that row alone: not on how many
    rows are summed together (a batched ``sum`` may split a reduction differently for different
    numbers of rows, on the CPU and on a GPU alike). The row is zero-padded to a power of two
    (adding 0.0 is exact). log2(n) small kernels, ~2x the input's memory traffic.
    """
    n = x.shape[-1]
    width = 1 << max(0, (n - 1).bit_length())
    if width != n:
        x = F.pad(x, (0, width - n))
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def standardise(maps: torch.Tensor) -> torch.Tensor:
    """Per map (last two dims): zero mean, unit population variance. Same shape and dtype.

    All maps at once, with :func:`pairwise_sum` reductions, so a map's values do not depend on
    the batch it was drawn in, and no host sync is needed. Raises ValueError for a constant map
    (e.g. a 1 x 1 image), which cannot be standardised; on an accelerator that check runs on the
    device (``torch._assert_async``: the error surfaces at the next sync, as a device-side
    assertion that ends the CUDA context) so that noise drawn inside a reverse loop never waits
    for the device.
    """
    h, w = maps.shape[-2:]
    if h * w < 2:
        raise ValueError(_constant_message(maps))
    flat = maps.reshape(-1, h * w)
    mean = pairwise_sum(flat) / (h * w)
    centred = flat - mean[:, None]
    std = (pairwise_sum(centred.square()) / (h * w)).sqrt()
    try:  # checked at once on the CPU; queued on an accelerator (no read-back of ``std``)
        torch._assert_async((std > 0).all(), _constant_message(maps))
    except RuntimeError:
        raise ValueError(_constant_message(maps)) from None
    return (centred / std[:, None]).reshape(maps.shape)


def _constant_message(maps: torch.Tensor) -> str:
    return (
        f"raydiff.noise.standardise: a noise map of shape {tuple(maps.shape[-2:])} is "
        "constant and cannot be scaled to unit variance. Fix: use images of at least "
        "2 x 2 pixels (and, for gmm, sigmas of at least a pixel)."
    )
