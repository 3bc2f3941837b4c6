"""Gaussian noise: N(0, I) per pixel (DDPM; Fučka sec. 4.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def gaussian_noise(
    generator: torch.Generator,
    channels: int,
    height: int,
    width: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """One image's noise: Tensor (C, H, W) float32 ~ N(0, I), drawn from ``generator`` (CPU, so
    the values do not depend on the device) and moved to ``device``. Not standardised."""
    return torch.randn((channels, height, width), generator=generator).to(device)


def batch_gaussian_noise(
    generators: Sequence[torch.Generator],
    channels: int,
    height: int,
    width: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Gaussian noise for a batch, one generator per image: Tensor (B, C, H, W) float32."""
    draws = [torch.randn((channels, height, width), generator=g) for g in generators]
    return torch.stack(draws).to(device)


def describe_gaussian() -> dict:
    """The choices behind the Gaussian noise, for a run's metadata (JSON-serialisable)."""
    return {
        "kind": "gaussian",
        "distribution": "N(0, I) per pixel",
        "independent": "per image (seeded from the image seed)",
        "standardised": "no",
    }
