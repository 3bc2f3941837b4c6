"""CI stand-in for Julian-Wyatt/AnoDDPM ``simplex.py`` (written for raydiff's parity tests).

Follows the reference's calling convention only: ``Simplex_CLASS`` whose ``newSeed(seed)``
passes the seed (a random one from numpy's global RNG when none is given) to the module-level
``_init``, and ``rand_3d_fixed_T_octaves(shape, T, octaves, persistence, frequency)`` returning a
float64 array (len(T), H, W): the sum over octaves of 3-D OpenSimplex noise at
(col / f, row / f, T / f), f halving and the amplitude multiplied by ``persistence`` per octave.
The noise itself comes from the ``opensimplex`` package (the algorithm AnoDDPM forked), so no
numba port is needed here.
"""

import numpy as np
import opensimplex


def _init(seed):
    """The noise generator of one seed (the reference returns its permutation tables here)."""
    return opensimplex.OpenSimplex(seed=int(seed))


class Simplex_CLASS:
    def __init__(self):
        self.newSeed()

    def newSeed(self, seed=None):
        if not seed:
            seed = int(np.random.randint(-10_000_000_000, 10_000_000_000))
        self._generator = _init(seed)

    def noise3array(self, x, y, z):
        return self._generator.noise3array(np.asarray(x, float), np.asarray(y, float), np.asarray(z, float))

    def rand_3d_fixed_T_octaves(self, shape, T, octaves=1, persistence=0.5, frequency=32):
        rows, cols = shape
        slices = np.atleast_1d(np.asarray(T, dtype=float))
        total = np.zeros((len(slices), rows, cols))
        size, weight = float(frequency), 1.0
        for _ in range(octaves):
            total = total + weight * self.noise3array(np.arange(cols) / size, np.arange(rows) / size, slices / size)
            size, weight = size / 2, weight * persistence
        return total
