"""Simplex noise as in AnoDDPM (Wyatt et al. 2022; Julian-Wyatt/AnoDDPM ``simplex.py``).

AnoDDPM's ``Simplex_CLASS.rand_3d_fixed_T_octaves`` sums ``octaves`` slices of 3-D OpenSimplex
noise (the ``opensimplex`` 0.4 algorithm):

    n(x, y) = sum_o persistence**o * noise3(x / f_o, y / f_o, z / f_o),   f_o = f_0 / 2**o

with x, y pixel indices, f_0 = 64 px at 256 px and persistence 0.8 over 6 octaves. What we
change (recorded by :func:`describe_simplex`):

- **Size**: f_0 = ``frequency * H / 256`` (features keep their size relative to the image; at
  64 px the last octaves fall below a pixel and add fine-grained noise). The same f_o serves
  both axes (isotropic features; raydiff images are square).
- **Independence**: AnoDDPM copies one map over the batch and slices at z = the timestep with a
  permutation fixed per process. Here every (image, channel) map has its own opensimplex seed
  and slice z = U[0, 1000) * H / 256 px, both drawn from the image's generator, so an image's
  noise depends only on its seed.
- **Scale**: AnoDDPM leaves the sum unnormalised (std ~0.5 at 256 px); here each map is standardised to
  zero mean and unit variance (population std over the H x W pixels) so the DDPM algebra holds.

Backends: ``"torch"`` (default) evaluates all maps at once with the vectorised port
:func:`raydiff.noise.opensimplex3.noise3` on any device (the maps' seeds and slices are drawn on
the host from the image's CPU generator, a few numbers per map, and queued to the device
without a sync); ``"opensimplex"`` calls the reference
package (numba, CPU) map by map. Both give the same maps up to float32 rounding (~1e-6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from raydiff.config import SimplexConfig
from raydiff.noise.device import to_device
from raydiff.noise.opensimplex3 import noise3, permutation_tables
from raydiff.noise.standardise import standardise

SimplexBackend = Literal["torch", "opensimplex"]

#: Slice positions z are drawn from U[0, Z_RANGE) px at 256 px (AnoDDPM slices at the
#: timestep t in [0, 1000)); scaled with the image like the feature size.
Z_RANGE = 1000.0

#: Points per call of the torch port (bounds memory: ~250 bytes per point at peak).
MAX_POINTS = {"cpu": 1 << 19, "other": 1 << 23}


@dataclass(frozen=True)
class SimplexMaps:
    """Random choices of N simplex maps: opensimplex seeds and slice positions (pixels)."""

    seeds: tuple[int, ...]
    z: tuple[float, ...]

    def __add__(self, other: SimplexMaps) -> SimplexMaps:
        return SimplexMaps(self.seeds + other.seeds, self.z + other.z)


def draw_simplex_maps(generator: torch.Generator, channels: int, height: int) -> SimplexMaps:
    """Seeds and slices for one image's ``channels`` maps, drawn from its (CPU) generator."""
    seeds = torch.randint(0, 1 << 62, (channels,), generator=generator, dtype=torch.int64)
    u = torch.rand(channels, generator=generator, dtype=torch.float64)
    z = u * (Z_RANGE * height / 256)
    return SimplexMaps(tuple(seeds.tolist()), tuple(z.tolist()))  # host numbers, read in bulk


def octave_frequencies(cfg: SimplexConfig, height: int) -> list[tuple[float, float]]:
    """(f_o in pixels, amplitude persistence**o) for each octave o of an H-pixel image."""
    f0 = cfg.frequency * height / 256
    return [(f0 / 2**o, cfg.persistence**o) for o in range(cfg.octaves)]


def fractal_simplex(
    maps: SimplexMaps,
    height: int,
    width: int,
    cfg: SimplexConfig,
    device: torch.device | str = "cpu",
    backend: SimplexBackend = "torch",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The octave sum (unstandardised) of each map: Tensor (N, H, W) of ``dtype`` on ``device``.

    Row index = y, column index = x, as in ``opensimplex.noise3array(x, y, z)[0]``.
    """
    octaves = octave_frequencies(cfg, height)
    if backend == "opensimplex":
        return _fractal_opensimplex(maps, height, width, octaves).to(device=device, dtype=dtype)
    if backend != "torch":
        raise ValueError(
            f"raydiff.noise.simplex: unknown backend {backend!r}. Fix: use 'torch' or 'opensimplex'."
        )
    device = torch.device(device)
    n = len(maps.seeds)
    # The maps' random choices were drawn on the host: queued to the device without a sync.
    perm = to_device(torch.from_numpy(permutation_tables(maps.seeds)), device)
    freq = to_device(torch.tensor([f for f, _ in octaves], dtype=torch.float64), device)
    f = freq.reshape(1, -1, 1, 1)
    x = torch.arange(width, dtype=torch.float64, device=device).reshape(1, 1, 1, -1) / f
    y = torch.arange(height, dtype=torch.float64, device=device).reshape(1, 1, -1, 1) / f
    z_all = to_device(torch.tensor(maps.z, dtype=torch.float64), device).reshape(-1, 1, 1, 1) / f
    budget = MAX_POINTS["cpu" if device.type == "cpu" else "other"]
    n_oct = len(octaves)
    oct_step = max(1, min(n_oct, budget // (height * width)))  # octaves per call (big images)
    map_step = max(1, budget // (n_oct * height * width)) if oct_step == n_oct else 1
    out = torch.zeros((n, height, width), dtype=dtype, device=device)
    for s in range(0, n, map_step):
        e = min(n, s + map_step)
        for o in range(0, n_oct, oct_step):
            p = min(n_oct, o + oct_step)
            xo, yo = x[:, o:p].expand(e - s, -1, -1, -1), y[:, o:p].expand(e - s, -1, -1, -1)
            field = noise3(xo, yo, z_all[s:e, o:p], perm[s:e], dtype)
            for i in range(p - o):  # elementwise, octave by octave: bits independent of chunks
                out[s:e] += octaves[o + i][1] * field[:, i]
    return out


def _fractal_opensimplex(
    maps: SimplexMaps, height: int, width: int, octaves: list[tuple[float, float]]
) -> torch.Tensor:
    """Reference path: opensimplex's numba ``noise3array``, one map and octave at a time."""
    import opensimplex  # optional on the GPU check's image (scripts/gpu_check.sh); pulls in numba (~1 s)

    xs, ys = np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64)
    out = np.zeros((len(maps.seeds), height, width), dtype=np.float64)
    for i, (seed, z) in enumerate(zip(maps.seeds, maps.z)):
        simplex = opensimplex.OpenSimplex(seed)
        for f, amplitude in octaves:
            out[i] += amplitude * simplex.noise3array(xs / f, ys / f, np.array([z / f]))[0]
    return torch.from_numpy(out)


def simplex_noise(
    generator: torch.Generator,
    channels: int,
    height: int,
    width: int,
    cfg: SimplexConfig,
    device: torch.device | str = "cpu",
    backend: SimplexBackend = "torch",
) -> torch.Tensor:
    """One image's simplex noise: Tensor (C, H, W) float32, each map zero mean / unit variance.

    Equals ``sample_noise("simplex", (1, C, H, W), [seed], ...)[0]`` for
    ``generator = raydiff.seeding.generator(seed)``.
    """
    return batch_simplex_noise([generator], channels, height, width, cfg, device, backend)[0]


def batch_simplex_noise(
    generators: Sequence[torch.Generator],
    channels: int,
    height: int,
    width: int,
    cfg: SimplexConfig,
    device: torch.device | str = "cpu",
    backend: SimplexBackend = "torch",
) -> torch.Tensor:
    """Simplex noise for a batch, one generator per image: Tensor (B, C, H, W) float32.

    Draws each image's maps from its own generator, then evaluates all B x C maps together.
    """
    maps = SimplexMaps((), ())
    for g in generators:
        maps = maps + draw_simplex_maps(g, channels, height)
    field = fractal_simplex(maps, height, width, cfg, device, backend)
    return standardise(field).reshape(len(generators), channels, height, width)


def describe_simplex(cfg: SimplexConfig, height: int, backend: SimplexBackend = "torch") -> dict:
    """The choices behind the simplex noise, for a run's metadata (JSON-serialisable)."""
    return {
        "kind": "simplex",
        "reference": "AnoDDPM rand_3d_fixed_T_octaves; opensimplex 0.4 noise3",
        "octaves": cfg.octaves,
        "persistence": cfg.persistence,
        "frequency_at_256px": cfg.frequency,
        "frequencies_px": [f for f, _ in octave_frequencies(cfg, height)],
        "z_slice_px": f"U[0, {Z_RANGE * height / 256:g})",
        "independent": "per image and channel (seeded from the image seed)",
        "standardised": "per map: zero mean, unit population variance",
        "backend": backend,
    }
