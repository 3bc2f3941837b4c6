"""Explicit randomness: every random draw is seeded from (run seed, image id, purpose).

A score therefore depends only on the image, the models and the config: not on the batch it
was scored in, the order of the test set, or which actor scored it.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def derive_seed(run_seed: int, *parts: object) -> int:
    """A 63-bit seed from the run seed and any identifying parts (image id, variant, level)."""
    text = "\x1f".join([str(run_seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed``. Gaussian noise and trend's probe are
    drawn by generators on the compute device; everything else by CPU generators."""
    import torch  # lazy: derive_seed serves torch-free modules (data.splits, data.manifest)

    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
