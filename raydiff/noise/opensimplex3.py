"""OpenSimplex 3-D noise (opensimplex 0.4.x, Kurt Spencer's 2014 algorithm) in vectorised torch.

A port of ``opensimplex.internals._noise3`` (the package AnoDDPM forked for its simplex noise)
that evaluates millions of points per call on any device. It reproduces the reference *exactly*
in its discrete decisions and up to float rounding in its values:

- the permutation is derived from the seed with the same 64-bit LCG shuffle as
  ``opensimplex.internals._init`` (:func:`permutation_tables`), so ``seed`` means the same
  field in both implementations;
- everything that decides *which* lattice vertices contribute (skew, floor, region tests) runs
  in float64 with the same operations in the same order as the reference, so every point lands
  in the same region and picks the same two "extra" vertices;
- the contributions themselves (offsets < 3 lattice units) run in ``dtype`` (float32 by
  default: < 1e-6 absolute error; float64 agrees with the reference to ~1e-15).

Why not simply sum every lattice vertex inside the kernel radius: the 2014 algorithm considers
at most 8 vertices per point (the cell's 4 or 6 + 2 extra) and leaves out a few with a small
positive attenuation (4 % of points, up to ~1e-4 of the field's std of ~0.3). A brute-force sum
is a slightly different (continuous) noise, so the branch logic is ported instead. Branches
are slow to vectorise, so each point computes the 16 float comparisons the reference's
branches test (:data:`DECISION_BITS`) as one integer, and looks its two extra vertices up in a
table (:data:`_EXTRA_TABLE`) built by running a line-by-line transcription of the reference
branches (:func:`_reference_extras`) on every combination of outcomes. The 8 corners of the
cell are evaluated for every point and masked by region. Tested equal to opensimplex on random
points, on grids full of exact ties and on AnoDDPM's octave grids (tests/test_noise.py).

Symbols (reference names): ``xs, ys, zs`` stretched coordinates, ``xsb`` their floor (the
rhombohedral super-cell), ``xins`` the position inside it, ``in_sum = xins + yins + zins``
(region: <= 1 tetrahedron at (0,0,0), >= 2 tetrahedron at (1,1,1), else octahedron),
``dx0`` the offset from the cell origin in unstretched space, ``attn = 2 - |d|^2`` the kernel.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

STRETCH_CONSTANT3 = -1.0 / 6  # (1/sqrt(3+1) - 1) / 3
SQUISH_CONSTANT3 = 1.0 / 3  # (sqrt(3+1) - 1) / 3
NORM_CONSTANT3 = 103.0

#: The 24 gradients of opensimplex's GRADIENTS3 (rhombicuboctahedron vertices), one per row.
GRADIENTS3 = np.array(
    [
        [-11, 4, 4], [-4, 11, 4], [-4, 4, 11],
        [11, 4, 4], [4, 11, 4], [4, 4, 11],
        [-11, -4, 4], [-4, -11, 4], [-4, -4, 11],
        [11, -4, 4], [4, -11, 4], [4, -4, 11],
        [-11, 4, -4], [-4, 11, -4], [-4, 4, -11],
        [11, 4, -4], [4, 11, -4], [4, 4, -11],
        [-11, -4, -4], [-4, -11, -4], [-4, -4, -11],
        [11, -4, -4], [4, -11, -4], [4, -4, -11],
    ],
    dtype=np.float64,
)  # fmt: skip

_LCG_MUL = np.uint64(6364136223846793005)
_LCG_INC = np.uint64(1442695040888963407)


def permutation_tables(seeds: Sequence[int]) -> np.ndarray:
    """opensimplex's permutation for each seed (``opensimplex.internals._init``), vectorised.

    Args:
        seeds: Python ints (any sign/size; reduced to int64 two's complement like the reference).

    Returns:
        int64 array (len(seeds), 256): ``perm`` of each seed, a permutation of 0..255. The
        reference's ``perm_grad_index3`` is ``(perm % 24) * 3`` (3 x the GRADIENTS3 row).
    """
    n = len(seeds)
    with np.errstate(over="ignore"):
        state = np.array([int(s) % 2**64 for s in seeds], dtype=np.uint64)
        for _ in range(3):
            state = state * _LCG_MUL + _LCG_INC
        source = np.tile(np.arange(256, dtype=np.int64), (n, 1))
        perm = np.zeros((n, 256), dtype=np.int64)
        rows = np.arange(n)
        for i in range(255, -1, -1):
            state = state * _LCG_MUL + _LCG_INC
            m = i + 1
            # Python's (signed_seed + 31) % m, without leaving int64.
            r = (state.view(np.int64) % m + 31 % m) % m
            perm[:, i] = source[rows, r]
            source[rows, r] = source[:, i]
    return perm


# --------------------------------------------------------------------------------------------
# The extra-vertex table: a transcription of the reference branches on discrete state only.
# --------------------------------------------------------------------------------------------


def _extra_tetra0(c: int, zero_is_close: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Reference lines for ``in_sum <= 1``: offsets (xsv - xsb, ...) of ext0 and ext1."""
    if zero_is_close:  # (0,0,0) is one of the closest two tetrahedral vertices; c has one bit
        x0, x1 = (-1, 0) if (c & 1) == 0 else (1, 1)
        if (c & 2) == 0:
            y0 = y1 = 0
            if (c & 1) == 0:
                y1 -= 1
            else:
                y0 -= 1
        else:
            y0 = y1 = 1
        z0, z1 = (0, -1) if (c & 4) == 0 else (1, 1)
    else:  # c = a_point | b_point has two bits
        x0, x1 = (0, -1) if (c & 1) == 0 else (1, 1)
        y0, y1 = (0, -1) if (c & 2) == 0 else (1, 1)
        z0, z1 = (0, -1) if (c & 4) == 0 else (1, 1)
    return (x0, y0, z0), (x1, y1, z1)


def _extra_tetra1(c: int, one_is_close: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Reference lines for ``in_sum >= 2``."""
    if one_is_close:  # (1,1,1) is one of the closest two; c has two bits
        x0, x1 = (2, 1) if (c & 1) != 0 else (0, 0)
        if (c & 2) != 0:
            y0 = y1 = 1
            if (c & 1) != 0:
                y1 += 1
            else:
                y0 += 1
        else:
            y0 = y1 = 0
        z0, z1 = (1, 2) if (c & 4) != 0 else (0, 0)
    else:  # c = a_point & b_point has one bit
        x0, x1 = (1, 2) if (c & 1) != 0 else (0, 0)
        y0, y1 = (1, 2) if (c & 2) != 0 else (0, 0)
        z0, z1 = (1, 2) if (c & 4) != 0 else (0, 0)
    return (x0, y0, z0), (x1, y1, z1)


def _permutation_of_110(c: int) -> tuple[int, int, int]:
    """The (1,1,-1)-type vertex whose -1 sits on the first axis missing from ``c``."""
    if (c & 1) == 0:
        return (-1, 1, 1)
    if (c & 2) == 0:
        return (1, -1, 1)
    return (1, 1, -1)


def _axis_times_two(c: int) -> tuple[int, int, int]:
    if (c & 1) != 0:
        return (2, 0, 0)
    if (c & 2) != 0:
        return (0, 2, 0)
    return (0, 0, 2)


def _extra_octahedron(a_point: int, b_point: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Reference lines for the octahedron; a point is on the (1,1,1) side iff it has two bits."""
    a_far = bin(a_point).count("1") == 2
    b_far = bin(b_point).count("1") == 2
    if a_far == b_far:
        if a_far:  # both on the (1,1,1) side: (1,1,1) and the shared axis doubled
            return (1, 1, 1), _axis_times_two(a_point & b_point)
        return (0, 0, 0), _permutation_of_110(a_point | b_point)
    c1, c2 = (a_point, b_point) if a_far else (b_point, a_point)
    return _permutation_of_110(c1), _axis_times_two(c2)


#: Comparisons (float64, on the reference's own values) that decide a point's extra vertices,
#: in the bit order of the decision index. ``median`` is the median of (xins, yins, zins);
#: ``a, b, s`` are the octahedron's scores |p1 - 1|, |p2 - 1|, |p3 - 1| with p1 = xins + yins,
#: p2 = xins + zins, p3 = yins + zins.
DECISION_BITS = (
    "yins > xins", "yins < xins", "zins > yins", "zins < yins", "zins > xins", "zins < xins",
    "1 - in_sum > median", "3 - in_sum < median", "p1 > 1", "p2 > 1", "p3 > 1",
    "a <= b", "a < s", "b < s", "in_sum <= 1", "in_sum >= 2",
)  # fmt: skip


def _reference_extras(bits: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The reference's choice of extra vertices, given the outcomes of :data:`DECISION_BITS`.

    A line-by-line transcription of ``_noise3``'s branches with each float comparison replaced
    by its bit. Two rewrites are exact: in the (0,0,0) tetrahedron the two chosen scores are the
    two largest of (xins, yins, zins), so "wins > a_score or wins > b_score" is "wins > median"
    (likewise "<" and the two smallest in the (1,1,1) tetrahedron); the octahedron's
    ``p - 1`` / ``1 - p`` is |p - 1| bit for bit.
    """
    y_gt_x, y_lt_x, z_gt_y, z_lt_y, z_gt_x, z_lt_x, close0, close1 = (
        bool(bits >> i & 1) for i in range(8)
    )
    far1, far2, far3, a_le_b, a_lt_s, b_lt_s, tetra0, tetra1 = (
        bool(bits >> i & 1) for i in range(8, 16)
    )
    if tetra0:  # a_point = 0x01 (score xins), b_point = 0x02 (score yins)
        if not y_gt_x and z_gt_y:  # a_score >= b_score and zins > b_score
            a_point, b_point, b_gt_a = 0x01, 0x04, z_gt_x
        elif y_gt_x and z_gt_x:  # a_score < b_score and zins > a_score
            a_point, b_point, b_gt_a = 0x04, 0x02, z_lt_y
        else:
            a_point, b_point, b_gt_a = 0x01, 0x02, y_gt_x
        if close0:
            return _extra_tetra0(b_point if b_gt_a else a_point, zero_is_close=True)
        return _extra_tetra0(a_point | b_point, zero_is_close=False)
    if tetra1:  # a_point = 0x06 (score xins), b_point = 0x05 (score yins)
        if not y_lt_x and z_lt_y:  # a_score <= b_score and zins < b_score
            a_point, b_point, b_lt_a = 0x06, 0x03, z_lt_x
        elif y_lt_x and z_lt_x:  # a_score > b_score and zins < a_score
            a_point, b_point, b_lt_a = 0x03, 0x05, z_gt_y
        else:
            a_point, b_point, b_lt_a = 0x06, 0x05, y_lt_x
        if close1:
            return _extra_tetra1(b_point if b_lt_a else a_point, one_is_close=True)
        return _extra_tetra1(a_point & b_point, one_is_close=False)
    a_point = 0x03 if far1 else 0x04
    b_point = 0x05 if far2 else 0x02
    new_point = 0x06 if far3 else 0x01
    if a_le_b and a_lt_s:
        a_point = new_point
    elif not a_le_b and b_lt_s:
        b_point = new_point
    return _extra_octahedron(a_point, b_point)


def _build_extra_table() -> np.ndarray:
    """(2**16, 2, 3) int64: lattice offsets of ext0 and ext1 for every decision index."""
    cache: dict[int, tuple] = {}
    table = np.zeros((1 << len(DECISION_BITS), 2, 3), dtype=np.int64)
    for bits in range(table.shape[0]):
        # Only the bits of the point's region matter; memoise on them.
        if bits >> 14 & 1:
            key = bits & 0b1100_0000_1111_1111 & ~(1 << 7)
        elif bits >> 15 & 1:
            key = bits & 0b1000_0000_1111_1111 & ~(1 << 6)
        else:
            key = bits & 0b0011_1111_0000_0000
        if key not in cache:
            cache[key] = _reference_extras(key)
        table[bits] = cache[key]
    return table


_EXTRA_TABLE = _build_extra_table()

#: The 8 corners of the super-cell. 000 belongs only to the (0,0,0) tetrahedron, 111 only to
#: the (1,1,1) one, one-bit corners to all regions but the (1,1,1) tetrahedron, two-bit
#: corners to all but the (0,0,0) one.
_CORNERS = [(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)]


def _decisions(
    xins: torch.Tensor, yins: torch.Tensor, zins: torch.Tensor, in_sum: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int32 decision index (bits of :data:`DECISION_BITS`) and the masks of the two
    tetrahedra (in_sum <= 1, in_sum >= 2); all float64 comparisons of the reference's values."""
    lo, hi = torch.minimum(xins, yins), torch.maximum(xins, yins)
    median = torch.maximum(lo, torch.minimum(hi, zins))
    p1, p2, p3 = xins + yins, xins + zins, yins + zins
    # p - 1 > 0 exactly when p > 1 (rounding is monotonic); |p - 1| = max(p - 1, 1 - p).
    q1, q2, q3 = p1 - 1, p2 - 1, p3 - 1
    a, b, s = torch.maximum(q1, -q1), torch.maximum(q2, -q2), torch.maximum(q3, -q3)
    tetra0, tetra1 = in_sum <= 1, in_sum >= 2
    conditions = (
        yins > xins, yins < xins, zins > yins, zins < yins, zins > xins, zins < xins,
        (1 - in_sum) > median, (3 - in_sum) < median, q1 > 0, q2 > 0, q3 > 0,
        a <= b, a < s, b < s, tetra0, tetra1,
    )  # fmt: skip
    index = torch.zeros(xins.shape, dtype=torch.int32, device=xins.device)
    for bit, condition in enumerate(conditions):
        index.add_(condition, alpha=1 << bit)
    return index, tetra0, tetra1


def _take(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 1-D table (index_select: several times faster than indexing)."""
    return table.index_select(0, index.reshape(-1)).reshape(index.shape)


# Lattice offsets are in -1..2, so hashed coordinates are looked up in tables widened to
# avoid a ``& 255`` per vertex: perm2 over (X + i + 1, Y + j + 1) in [0, 258]^2, gradients over
# h + Z + k + 1 in [0, 513].
_W2 = 259
_WZ = 514


def _hash_tables(perm: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Per map, flattened over maps: perm2[m, a, b] = perm[(perm[(a-1) & 255] + b-1) & 255]
    and the gradient components (gx, gy, gz)[m, u] of GRADIENTS3[perm[(u-1) & 255] % 24]."""
    n, device = perm.shape[0], perm.device
    wrap = (torch.arange(_W2, device=device) - 1) & 255
    first = perm[:, wrap]  # (n, W2)
    perm2 = torch.gather(perm, 1, ((first[:, :, None] + wrap) & 255).reshape(n, -1))
    gradient_row = perm[:, (torch.arange(_WZ, device=device) - 1) & 255] % 24  # (n, WZ)
    grads = _gradients(device, dtype)[gradient_row.reshape(-1)]
    return (
        perm2.reshape(-1).to(torch.int32),
        grads[:, 0].contiguous(),
        grads[:, 1].contiguous(),
        grads[:, 2].contiguous(),
    )


@functools.cache
def _gradients(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """GRADIENTS3 on ``device`` (copied once per device and dtype, not once per call)."""
    return torch.as_tensor(GRADIENTS3, dtype=dtype, device=device)


@functools.cache
def _extra_tables(device: torch.device, dtype: torch.dtype) -> list[tuple[torch.Tensor, ...]]:
    """For ext0, ext1 by decision index: (i * W2 + j, k) and the unstretched offsets
    (i, j, k) + (i + j + k) / 3, on ``device`` (built once per device and dtype)."""
    t = _EXTRA_TABLE.astype(np.float64)
    shift = t + t.sum(-1, keepdims=True) * SQUISH_CONSTANT3
    out = []
    for e in range(2):
        ij = _EXTRA_TABLE[:, e, 0] * _W2 + _EXTRA_TABLE[:, e, 1]
        out.append(
            (
                torch.as_tensor(ij, dtype=torch.int32, device=device),
                torch.as_tensor(_EXTRA_TABLE[:, e, 2], dtype=torch.int32, device=device),
                *(torch.as_tensor(shift[:, e, a], dtype=dtype, device=device) for a in range(3)),
            )
        )
    return out


def noise3(
    x: torch.Tensor,
    y: torch.Tensor,
    z: torch.Tensor,
    perm: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """OpenSimplex 3-D noise at points (x, y, z), one permutation per leading index.

    Equals ``opensimplex.OpenSimplex(seed).noise3(x, y, z)`` with ``perm =
    permutation_tables([seed])`` (up to float rounding of ``dtype``: < 1e-6 for float32).
    Memory: ~250 bytes per point at peak; callers chunk (see ``simplex.fractal_simplex``).

    Args:
        x, y, z: tensors broadcastable to a common shape (N, ...), converted to float64 (the
            region tests must see the reference's float64 values); |coordinates| < 2**30.
        perm: int (N, 256) permutations from :func:`permutation_tables`.
        dtype: dtype of the kernel sums and of the result.

    Returns:
        Tensor (N, ...) of ``dtype`` on x's device, values in about [-1, 1] (std ~0.3).
    """
    x, y, z = torch.broadcast_tensors(*(t.to(torch.float64) for t in (x, y, z)))
    n = perm.shape[0]
    if x.dim() == 0 or x.shape[0] != n:
        raise ValueError(
            f"raydiff.noise.opensimplex3.noise3: coordinates have shape {tuple(x.shape)} but "
            f"perm has {n} rows. Fix: give the coordinates a leading dimension of size {n} "
            "(one permutation per leading index)."
        )
    device = x.device
    # Skew onto the simplectic honeycomb (float64, same operation order as the reference).
    stretch_offset = (x + y + z) * STRETCH_CONSTANT3
    xs, ys, zs = x + stretch_offset, y + stretch_offset, z + stretch_offset
    xsb, ysb, zsb = torch.floor(xs), torch.floor(ys), torch.floor(zs)
    squish_offset = (xsb + ysb + zsb) * SQUISH_CONSTANT3
    dx0 = (x - (xsb + squish_offset)).to(dtype)
    dy0 = (y - (ysb + squish_offset)).to(dtype)
    dz0 = (z - (zsb + squish_offset)).to(dtype)
    xins, yins, zins = xs - xsb, ys - ysb, zs - zsb
    decision, tetra0, tetra1 = _decisions(xins, yins, zins, xins + yins + zins)
    del x, y, z, xs, ys, zs, stretch_offset, squish_offset, xins, yins, zins

    perm2, gx, gy, gz = _hash_tables(perm.to(device=device, dtype=torch.long), dtype)
    index_dtype = torch.int32 if n * _W2 * _W2 < 2**31 else torch.int64
    map_index = torch.arange(n, device=device, dtype=index_dtype)
    map_index = map_index.reshape((n,) + (1,) * (dx0.dim() - 1))
    xy_base = map_index * (_W2 * _W2) + ((xsb.to(index_dtype) & 255) + 1) * _W2
    xy_base = xy_base + (ysb.to(index_dtype) & 255) + 1
    z_base = map_index * _WZ + (zsb.to(index_dtype) & 255) + 1
    del xsb, ysb, zsb

    def contribution(ij, k, sx, sy, sz, use: torch.Tensor | None) -> None:
        """value += attn^4 (g . d) for the vertex at lattice offset (i, j, k); (sx, sy, sz) =
        its unstretched offset (i, j, k) + (i + j + k) / 3; ij = i * W2 + j."""
        dx, dy, dz = dx0 - sx, dy0 - sy, dz0 - sz
        attn = dx * dx
        attn.addcmul_(dy, dy).addcmul_(dz, dz)
        attn = attn.neg_().add_(2).clamp_min_(0)
        if use is not None:
            attn.mul_(use)
        attn.mul_(attn)
        attn.mul_(attn)
        key = _take(perm2, xy_base + ij) + (z_base + k)
        dot = _take(gx, key).mul_(dx)
        dot.addcmul_(_take(gy, key), dy).addcmul_(_take(gz, key), dz)
        value.addcmul_(attn, dot)

    r0, r1 = tetra0.to(dtype), tetra1.to(dtype)
    uses = {0: r0, 1: 1 - r1, 2: 1 - r0, 3: r1}
    value = torch.zeros(dx0.shape, dtype=dtype, device=device)
    for i, j, k in _CORNERS:
        s = (i + j + k) * SQUISH_CONSTANT3
        contribution(i * _W2 + j, k, i + s, j + s, k + s, uses[i + j + k])
    for ij, k, sx, sy, sz in _extra_tables(device, dtype):
        contribution(*(_take(t, decision) for t in (ij, k, sx, sy, sz)), None)
    return value / NORM_CONSTANT3
