"""Gaussian noise: N(0, I) per pixel (DDPM; Fučka sec. 4.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def gaussian_noise(
    generator: torch.Generator,
    channels: int,
    height: int,
    width: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """One image's noise: Tensor (C, H, W) float32 ~ N(0, I), drawn from ``generator`` on the
    generator's device (then moved to ``device`` when given). Not standardised."""
    out = torch.randn((channels, height, width), generator=generator, device=generator.device)
    return out if device is None else out.to(device)


def batch_gaussian_noise(
    generators: Sequence[torch.Generator],
    channels: int,
    height: int,
    width: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Gaussian noise for a batch, one generator per image: Tensor (B, C, H, W) float32.

    Each image's slice is filled in place by its own generator, which lives on ``device``
    (``raydiff.seeding.generator(seed, device)``): no host round trip, and image b's values
    equal ``torch.randn((C, H, W), generator=generators[b])`` on that device, whatever the batch.
    """
    out = torch.empty((len(generators), channels, height, width), device=device)
    for b, g in enumerate(generators):
        out[b].normal_(generator=g)
    return out


def describe_gaussian() -> dict:
    """The choices behind the Gaussian noise, for a run's metadata (JSON-serialisable)."""
    return {
        "kind": "gaussian",
        "distribution": "N(0, I) per pixel",
        "independent": "per image (seeded from the image seed)",
        "standardised": "no",
        "generated": "on the compute device, one generator per image (device-dependent values)",
    }
