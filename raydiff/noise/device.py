"""Moving a few host-drawn numbers to the compute device without stopping the host.

A plain ``tensor.to("cuda")`` of pageable host memory waits for every kernel already queued
(torch copies and then synchronises the stream). The noise generators copy small tables drawn
on the host (simplex permutations, GMM components) once per draw, inside reverse loops, so they
go through page-locked memory with ``non_blocking=True`` instead: the copy is queued behind the
running kernels and the host moves on. On the CPU this is the identity.
"""

from __future__ import annotations

import torch


def to_device(x: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x`` (a host tensor) on ``device`` (and ``dtype``), queued without a host sync on CUDA."""
    device = torch.device(device)
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    # pin_memory() takes a block of torch's caching host allocator, which records the copy's
    # stream and does not hand the block out again before the copy has finished.
    return x.pin_memory().to(device, non_blocking=True)
