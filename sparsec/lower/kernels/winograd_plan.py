"""Winograd's F(m x m, 3x3) without TVM: its matrices, the register tile of its GEMMs and the cost
estimate that picks the output tile (or the direct conv), so the cost model of analyze-sparsity
can weigh a dense 3x3 conv as the kernel will run it (`winograd_conv` generates the kernel)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsec.lower.kernels import register_plan
from sparsec.lower.kernels.shapes import ConvShape, ceil_div
from sparsec.target import Target

# (A^T, G, B^T) per output tile size m (Lavin & Gray; F(4x4) with points 0, +-1, +-2, inf)
TRANSFORMS = {
    2: (np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64),
        np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64),
        np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)),
    4: (np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)),
}


def supports(kernel: tuple[int, int], strides, dilations, groups: int) -> bool:
    """Whether a conv has Winograd's shape: 3x3, stride 1, no dilation, one group."""
    return tuple(kernel) == (3, 3) and tuple(strides) == (1, 1) and tuple(dilations) == (1, 1) and groups == 1


@dataclass(frozen=True)
class Geometry(ConvShape):
    """A 3x3 stride-1 convolution's shapes and its Winograd tiles; all compile-time integers."""

    m: int  # output tile side

    @classmethod
    def of(cls, n: int, c: int, h: int, w: int, o: int, pads, m: int) -> Geometry:
        return cls(n, c, h, w, o, 3, 3, (1, 1), tuple(int(p) for p in pads), (1, 1), 1, m)

    @property
    def alpha(self) -> int:
        return self.m + 2

    @property
    def transforms(self) -> int:
        """Element-wise products per tile: the number of GEMMs."""
        return self.alpha * self.alpha

    @property
    def ty(self) -> int:
        return ceil_div(self.oh, self.m)

    @property
    def tx(self) -> int:
        return ceil_div(self.ow, self.m)

    @property
    def tiles(self) -> int:
        return self.n * self.ty * self.tx

    @property
    def qx(self) -> int:
        """Columns per phase of a copied row: a row of tiles' columns plus the halo."""
        return self.tx + (self.alpha - 1) // self.m


@dataclass(frozen=True)
class Tiling:
    """The GEMMs' register tile and padded extents."""

    ob: int  # filters per register tile
    vectors: int  # vectors of tiles per register tile
    lanes: int
    op: int  # filters padded to whole register tiles
    pp: int  # tiles padded to whole register tiles

    @property
    def width(self) -> int:
        return self.vectors * self.lanes


def plan(g: Geometry, out_block: int, vectors: int, lanes: int) -> Tiling:
    """The register tile among (out_block x vectors) and (out_block * vectors x 1) that pads the
    least work (filters x tiles): F(4x4) on a 56x56 plane has 196 tiles, 224 in 32-wide steps, 208 in 16."""
    shapes = [(out_block, vectors)] + ([(out_block * vectors, 1)] if vectors > 1 else [])

    def tiling(ob: int, v: int) -> Tiling:
        ob = min(ob, g.o)
        return Tiling(ob, v, lanes, ceil_div(g.o, ob) * ob, ceil_div(g.tiles, v * lanes) * v * lanes)

    return min((tiling(ob, v) for ob, v in shapes), key=lambda t: (t.op * t.pp, -t.ob * t.vectors))


# What a tile element of the input / output transform costs, in GEMM multiply-adds per channel
# (measured on znver5, AVX-512: 256 channels at 56x56, F(4x4): input 0.37 ms, output 0.32 ms,
# GEMMs 3.25 ms). Both are vector code like the GEMMs, so the ratio travels; the tuner's
# `winograd` knob measures the real choice.
INPUT_TRANSFORM_COST = 29
OUTPUT_TRANSFORM_COST = 25


def estimated_cost(g: Geometry, t: Tiling) -> int:
    """Padded GEMM multiply-adds plus the transforms' cost in the same unit."""
    per_tile = t.op * g.c * t.pp // g.tiles + INPUT_TRANSFORM_COST * g.c + OUTPUT_TRANSFORM_COST * g.o
    return g.transforms * g.tiles * per_tile


def auto_tile(filters: int, in_shape, pads, out_block: int, vectors: int, lanes: int, speed: float = 1.0) -> int:
    """The output tile (2 or 4) whose estimated cost is least, or 1 (direct) where that cost is
    not below direct's multiply-adds: few channels leave the transforms dominant (VGG's 3-channel
    conv1_1: F(4x4) measured 2.4x slower than direct), and small planes pad whole vectors of tiles
    (7x7, F(4x4): 4 tiles in a 16-lane vector; measured 0.75x of direct, F(2x2) 2.0x). On planes of
    several GEMM blocks (`several_blocks`) the cost is over `speed`: the target's Winograd
    throughput there, on its estimated work."""
    tile, _ = _best_tile(filters, in_shape, pads, out_block, vectors, lanes, speed)
    return tile


def work_ratio(filters: int, in_shape, pads, out_block: int, vectors: int, lanes: int, speed: float = 1.0) -> float:
    """The estimated time of the conv as `auto_tile` runs it, in direct multiply-adds per direct
    multiply-add: about 0.3 for F(4x4) on VGG's 256-channel 56x56 layers at speed 1, 1.0 where it
    stays direct (the cost model of analyze-sparsity weighs a dense 3x3 conv by it against the
    pattern kernel)."""
    return _best_tile(filters, in_shape, pads, out_block, vectors, lanes, speed)[1]


def _best_tile(filters: int, in_shape, pads, out_block: int, vectors: int, lanes: int,
               speed: float = 1.0) -> tuple[int, float]:
    """(auto_tile's choice, its estimated time over direct's multiply-adds)."""
    n, c, h, w = (int(d) for d in in_shape)
    costs = {}
    for m in TRANSFORMS:
        g = Geometry.of(n, c, h, w, int(filters), pads, m)
        if g.oh < 1 or g.ow < 1:
            return 1, 1.0
        tiling = plan(g, out_block, vectors, lanes)
        costs[m] = estimated_cost(g, tiling) / (speed if several_blocks(tiling) else 1.0)
    best = min(costs, key=lambda m: (costs[m], -m))
    direct = 9 * n * g.oh * g.ow * c * filters
    return (best, costs[best] / direct) if costs[best] < direct else (1, 1.0)


def several_blocks(t: Tiling) -> bool:
    """Whether the GEMMs run several blocks of tiles per transform element (each pass over the
    filters' U[e] again): where the target's Winograd throughput applies. Measured on znver3
    (AVX2, 16-tile blocks): 14x14 and 7x7 planes (one block) ran at 1.1-1.3x their estimate's
    speed, 28x28 and 56x56 ones with 128-512 channels at 0.47-0.58x (64 channels: 0.93-1.0x)."""
    return t.pp > t.width


def transform_weight(weight: np.ndarray, m: int) -> np.ndarray:
    """U[e, k, c] = (G g[k, c] G^T)[e // alpha, e % alpha], in float64 then float32."""
    _, g_mat, _ = TRANSFORMS[m]
    w = np.asarray(weight, np.float64)
    u = np.einsum("ai,kcij,bj->abkc", g_mat, w, g_mat)
    return u.reshape(-1, *w.shape[:2])


def algorithm_work(weight_shape, in_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups: int = 1,
                   *, target: Target) -> float:
    """The estimated time of the algorithm a dense conv gets by default on `target`, per multiply-add
    of the direct conv: Winograd's estimate (`work_ratio`, the dense conv's register tile) over the
    target's Winograd throughput where Winograd applies and wins, else 1."""
    if not supports(tuple(weight_shape[2:]), strides, dilations, groups):
        return 1.0
    out_block, vectors = register_plan.gemm_tile(target)
    return work_ratio(int(weight_shape[0]), in_shape, pads, out_block, vectors, target.lanes(),
                      target.throughputs.winograd)
