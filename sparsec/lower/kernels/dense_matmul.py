"""Dense matrix products: fully connected layers (constant weight) and activation x activation.

Both are one register-tiled GEMM, C[m, n] = sum_k A[m, k] * B[k, n]: a tile of `row_block` rows
of A (broadcast scalars) x `vectors` SIMD vectors of a B row (contiguous loads). For a fully
connected layer B is the weight, packed at compile time as [N/nb, K, nb] so each tile streams
one contiguous panel; a batch-1 layer (a GEMV, bound by reading the weight once) uses one row
and wider vectors. Rows and columns are padded to whole tiles (zero weights, or a padded copy of
an activation), so no loop has a tail; the epilogue drops the padding, adds bias, activates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from tvm import s_tir, te, tirx

from sparsec.ir.activation import Activation
from sparsec.lower.kernels import register_plan
from sparsec.lower.kernels.common import Kernel, apply_activation, ceil_div, has_block, require_positive_knobs
from sparsec.target import Target


@dataclass(frozen=True)
class MatmulKnobs:
    """Schedule knobs (the auto-tuner's search space); 0 means "the target's register plan"."""

    row_block: int = 0  # rows of A per register tile (broadcast scalars)
    vectors: int = 0  # SIMD vectors of output columns per register tile
    lanes: int = 0  # SIMD lanes (the target's fp32 lanes)
    gemv_vectors: int = 4  # one-row products: SIMD vectors of output columns per step
    k_block: int = 256  # reduction block kept in L1 (one-row products stream all of K)
    col_tiles: int = 4  # register tiles along the columns per parallel work item

    def __post_init__(self) -> None:
        require_positive_knobs(self, auto=("row_block", "vectors", "lanes"))

    def resolved(self, target: Target) -> MatmulKnobs:
        """These knobs with every 0 replaced by the target's register plan."""
        rows, vectors = register_plan.gemm_tile(target)
        return replace(self, row_block=self.row_block or rows, vectors=self.vectors or vectors,
                       lanes=self.lanes or target.lanes())


def _round_up(a: int, b: int) -> int:
    return ceil_div(a, b) * b


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


@dataclass(frozen=True)
class _Tiling:
    """Register tile and padded extents of one product (m x k) @ (k x n)."""

    m: int
    n: int
    k: int
    mb: int  # rows per register tile
    vectors: int
    lanes: int
    tiles: int  # register tiles per parallel column block
    kb: int  # reduction block

    @property
    def nb(self) -> int:
        return self.lanes * self.vectors

    @property
    def mp(self) -> int:
        return _round_up(self.m, self.mb)

    @property
    def np_(self) -> int:
        return _round_up(self.n, self.nb * self.tiles)


def _plan(m: int, n: int, k: int, knobs: MatmulKnobs) -> _Tiling:
    if m == 1:
        vectors = min(knobs.gemv_vectors, ceil_div(n, knobs.lanes))
        return _Tiling(m, n, k, 1, vectors, knobs.lanes, 1, k)
    # a row count the default tile would pad (64 = 10 x 6 + 4) takes 4 rows x 3 vectors
    mb, vectors = min(knobs.row_block, m), knobs.vectors
    if m % mb and m % 4 == 0:
        mb, vectors = 4, max(1, knobs.row_block * knobs.vectors // 4)
    vectors = min(vectors, ceil_div(n, knobs.lanes))
    tiles = min(knobs.col_tiles, ceil_div(n, knobs.lanes * vectors))
    return _Tiling(m, n, k, mb, vectors, knobs.lanes, tiles, _largest_divisor(k, knobs.k_block))


# --- compute (TE) -------------------------------------------------------------------------


def _zero_padded(src: te.Tensor, shape, name: str) -> te.Tensor:
    """A copy of `src` grown to `shape` with zeros (only built when the shapes differ)."""
    if tuple(int(d) for d in src.shape) == tuple(shape):
        return src

    def value(*idx):
        inside = tirx.all(*(i < int(d) for i, d in zip(idx, src.shape)))
        clamped = [tirx.min(i, int(d) - 1) for i, d in zip(idx, src.shape)]
        return tirx.if_then_else(inside, src[tuple(clamped)], tirx.const(0.0, "float32"))

    return te.compute(shape, value, name=name)


def _epilogue(wide, out_shape, bias, act: Activation | None) -> te.Tensor:
    """out = act(wide + bias[col]), the padding rows and columns dropped."""

    def value(*idx):
        v = wide[idx]
        return apply_activation(v + bias[idx[-1]] if bias is not None else v, act, 1)

    return te.compute(out_shape, value, name="out")


# --- schedule -----------------------------------------------------------------------------


def _schedule(sch: s_tir.Schedule, t: _Tiling, batched: bool) -> None:
    """Loops: parallel(batch, column block) > k block > row tile > column tile > k >
    unrolled mb x vectors register tile. Sums stay in `wide` across k blocks; inside one block
    LLVM keeps the tile in registers (buffers are noalias)."""
    blk = sch.get_sblock("wide")
    *b, m, n, k = sch.get_loops(blk)
    mo, mi = sch.split(m, [None, t.mb])
    no, ni, nt, nl = sch.split(n, [None, t.tiles, t.vectors, t.lanes])
    ko, ki = sch.split(k, [None, t.kb])
    sch.reorder(*b, no, ko, mo, ni, ki, mi, nt, nl)
    sch.parallel(sch.fuse(*b, no) if batched else no)
    sch.unroll(mi)
    sch.unroll(nt)
    sch.vectorize(nl)
    sch.decompose_reduction(blk, ko)
    sch.vectorize(sch.get_loops(sch.get_sblock("wide_init"))[-1])
    for name in ("ap", "bp", "out"):
        if has_block(sch, name):
            loops = sch.get_loops(sch.get_sblock(name))
            sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 1 else loops[0])


# --- fully connected ----------------------------------------------------------------------


def _pack_weight(weight: np.ndarray, t: _Tiling) -> np.ndarray:
    """[N, K] -> [Np/nb, K, nb] with zero columns: a register tile streams one contiguous panel."""
    padded = np.zeros((t.np_, t.k), np.float32)
    padded[: t.n] = weight
    return np.ascontiguousarray(padded.reshape(t.np_ // t.nb, t.nb, t.k).transpose(0, 2, 1))


def dense_kernel(
    weight: np.ndarray,
    in_shape: tuple[int, int],
    bias: np.ndarray | None = None,
    activation: Activation | None = None,
    knobs: MatmulKnobs = MatmulKnobs(),
    name: str = "dense",
    *,
    target: Target,
) -> Kernel:
    """The TIR kernel of `act(x @ weight.T + bias)` (ONNX Gemm with transB, constant weight),
    float32; params (x, packed weight, [bias], out)."""
    (n, k), (m, kx) = weight.shape, (int(d) for d in in_shape)
    if k != kx:
        raise ValueError(f"weight {weight.shape} does not fit input {tuple(in_shape)}")
    t = _plan(m, n, k, knobs.resolved(target))
    packed = _pack_weight(np.asarray(weight, np.float32), t)
    x = te.placeholder((m, k), "float32", name="x")
    w = te.placeholder(packed.shape, "float32", name="w")
    b = te.placeholder((n,), "float32", name="bias") if bias is not None else None
    xp = _zero_padded(x, (t.mp, k), "ap")
    r = te.reduce_axis((0, k), "k")
    wide = te.compute(
        (t.mp, t.np_),
        lambda i, j: te.sum(xp[i, r] * w[j // t.nb, r, j % t.nb], axis=r),
        name="wide",
    )
    out = _epilogue(wide, (m, n), b, activation)
    func = te.create_prim_func([x, w, *([b] if b is not None else []), out])
    sch = s_tir.Schedule(func.with_attr("global_symbol", name))
    _schedule(sch, t, batched=False)
    constants = (packed,) + ((np.asarray(bias, np.float32).reshape(n),) if bias is not None else ())
    return Kernel(sch.mod["main"], constants, (m, n), "float32")


# --- activation x activation --------------------------------------------------------------


def _batch_shape(a_shape, b_shape) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2])))
    except ValueError as err:
        raise ValueError(f"matmul batch dims of {a_shape} and {b_shape} do not broadcast") from err


def _batch_index(shape, batch: tuple[int, ...], idx) -> list:
    """Index into an operand with (possibly broadcast) leading batch dims, numpy-style."""
    lead = len(shape) - 2
    own = idx[len(batch) - lead:len(batch)] if lead else ()
    return [0 if int(d) == 1 else i for d, i in zip(shape[:lead], own)]


def matmul_kernel(a_shape, b_shape, name: str = "matmul", knobs: MatmulKnobs = MatmulKnobs(), *,
                  target: Target) -> Kernel:
    """The TIR kernel of `a @ b` (numpy matmul: rank >= 2, batch dims broadcast), float32;
    params (a, b, out)."""
    a_shape, b_shape = tuple(int(d) for d in a_shape), tuple(int(d) for d in b_shape)
    if len(a_shape) < 2 or len(b_shape) < 2 or a_shape[-1] != b_shape[-2]:
        raise ValueError(f"cannot multiply {a_shape} by {b_shape}")
    batch = _batch_shape(a_shape, b_shape)
    (m, k), n = a_shape[-2:], b_shape[-1]
    t = _plan(m, n, k, knobs.resolved(target))
    a = te.placeholder(a_shape, "float32", name="a")
    b = te.placeholder(b_shape, "float32", name="b")
    ap = _zero_padded(a, (*a_shape[:-2], t.mp, k), "ap")
    bp = _zero_padded(b, (*b_shape[:-2], k, t.np_), "bp")
    r = te.reduce_axis((0, k), "k")

    def value(*idx):
        bi, i, j = idx[:-2], idx[-2], idx[-1]
        lhs = ap[(*_batch_index(a_shape, batch, bi), i, r)]
        return te.sum(lhs * bp[(*_batch_index(b_shape, batch, bi), r, j)], axis=r)

    wide = te.compute((*batch, t.mp, t.np_), value, name="wide")
    out = _epilogue(wide, (*batch, m, n), None, None)
    func = te.create_prim_func([a, b, out])
    sch = s_tir.Schedule(func.with_attr("global_symbol", name))
    _schedule(sch, t, batched=bool(batch))
    return Kernel(sch.mod["main"], (), (*batch, m, n), "float32")
