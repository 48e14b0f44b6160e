"""Unstructured-sparse kernels over a CSR weight, written with the tirx IRBuilder.

- `csr_conv1x1_kernel`: a 1x1 conv as sparse weight x dense activations (XNNPACK-style SpMM):
  per tile of output pixels (parallel), each output channel o sums w[o, c] * x[c, tile] over
  its nonzeros; the tile is a few SIMD vectors, so each nonzero is one broadcast weight and
  one FMA per vector. Input channels are cut in blocks whose input tile fits L1 (the CSR is
  stored per column block); every output channel reads a block before the next one, and
  partial sums wait in the output tile. Each nonzero costs one load per FMA, so this is
  load-bound at about one FMA per cycle, half the dense peak.
- `csr_dense_kernel`: a fully connected layer with a sparse weight: per block of input columns
  (sized so the block's inputs stay in L1, where the gathers find them), per output (parallel),
  a dot product over the row's nonzeros in the block, `chunk` at a time (a gathered input
  vector times a contiguous weight vector), partial sums waiting in the output. Rows are padded
  with zeros to whole chunks at compile time.
Loop bounds come from the row pointer at run time; the compressed arrays use the smallest
integer dtypes that hold them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from sparsec.ir.activation import Activation
from sparsec.lower.kernels import register_plan
from sparsec.lower.kernels.common import Kernel, apply_activation, require_positive_knobs
from sparsec.target import Target


@dataclass(frozen=True)
class CsrKnobs:
    """Schedule knobs (the auto-tuner's search space); 0 means "the target's register plan"."""

    vectors: int = 0  # conv1x1: SIMD vectors of output pixels per tile (the accumulators)
    lanes: int = 0  # SIMD lanes (the target's fp32 lanes)
    out_groups: int = 2  # conv1x1: output-channel groups in the parallel loop (load balance)
    channel_block: int = 0  # conv1x1: input channels per block (the input tile stays in L1)
    chunk: int = 0  # dense: nonzeros per step (the target's lanes); rows padded to whole chunks
    columns: int = 0  # dense: input columns per block (0: the plan's, the block's inputs fill part of L1)

    def __post_init__(self) -> None:
        require_positive_knobs(self, auto=("vectors", "lanes", "channel_block", "chunk", "columns"))

    def resolved(self, target: Target) -> CsrKnobs:
        """These knobs with every 0 replaced by the target's register plan."""
        lanes = self.lanes or target.lanes()
        vectors = self.vectors or register_plan.csr_vectors(target)
        block = self.channel_block or register_plan.csr_channel_block(target, lanes * vectors)
        return replace(self, vectors=vectors, lanes=lanes, channel_block=block, chunk=self.chunk or lanes,
                       columns=self.columns or register_plan.csr_dense_columns(target))


def _index_dtype(largest: int) -> str:
    """The smallest unsigned (or int32) dtype holding 0..largest."""
    for dtype, top in (("uint8", 0xFF), ("uint16", 0xFFFF)):
        if largest <= top:
            return dtype
    return "int32"


@dataclass(frozen=True)
class Csr:
    """A CSR matrix cut into column blocks, each row of each block padded with zeros to a
    multiple of `unit` entries.

    `rowptr[b, o]..rowptr[b, o + 1]` are the units of row o in column block b (blocks stored one
    after the other); `cols` (relative to the block's first column) and `vals` hold `unit`
    entries per unit."""

    rowptr: np.ndarray  # [blocks, rows + 1]
    cols: np.ndarray
    vals: np.ndarray
    unit: int
    block: int  # columns per block
    col_scale: int = 1  # cols hold column * col_scale (an offset a kernel adds directly)

    @staticmethod
    def of(w: np.ndarray, unit: int = 1, block: int = 0, col_scale: int = 1) -> Csr:
        w = np.asarray(w, np.float32)
        width = w.shape[1]
        block = min(block or width, width) or 1
        parts = [_padded_rows(w[:, b0:b0 + block], unit) for b0 in range(0, max(width, 1), block)]
        ptr = np.stack([p[0] for p in parts]) + np.cumsum([0] + [p[0][-1] for p in parts[:-1]])[:, None]
        # one dummy entry keeps the arrays non-empty when every row is empty
        cols = np.concatenate([*(p[1] for p in parts), [0]]) * col_scale
        cols = cols.astype(_index_dtype((block - 1) * col_scale))
        vals = np.concatenate([*(p[2] for p in parts), [0]]).astype(np.float32)
        return Csr(ptr.astype(_index_dtype(int(ptr.max(initial=0)))), cols, vals, unit, block, col_scale)

    @property
    def blocks(self) -> int:
        return self.rowptr.shape[0]

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.rowptr, self.cols, self.vals


def _padded_rows(w: np.ndarray, unit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row pointer in units, columns, values) of one column block, each row's nonzeros padded
    with (column 0, value 0) entries to a multiple of `unit`."""
    mask = w != 0
    counts = np.count_nonzero(mask, axis=1)
    padded = -(-counts // unit) * unit
    starts = np.concatenate([[0], np.cumsum(padded)])
    rows, cols = np.nonzero(mask)  # row-major: each row's nonzeros in column order
    rank = np.arange(len(rows)) - np.concatenate([[0], np.cumsum(counts)])[rows]
    at = starts[rows] + rank
    out_cols, out_vals = np.zeros(starts[-1], np.int64), np.zeros(starts[-1], np.float32)
    out_cols[at], out_vals[at] = cols, w[mask]
    return starts // unit, out_cols, out_vals


def _i32(x):
    return tirx.Cast("int32", x)


def _ramp(base, lanes: int):
    return tirx.Ramp(base, 1, lanes) if lanes > 1 else base


def _bcast(x, lanes: int):
    return tirx.Broadcast(x, lanes) if lanes > 1 else x


def _epilogue(acc_value, bias, row, act: Activation | None, lanes: int):
    if bias is not None:
        acc_value = acc_value + _bcast(bias[row], lanes)
    return apply_activation(acc_value, act, lanes)


def _csr_args(csr: Csr, bias: np.ndarray | None):
    rp = T.arg("rowptr", T.buffer(csr.rowptr.shape, str(csr.rowptr.dtype)))
    col = T.arg("cols", T.buffer(csr.cols.shape, str(csr.cols.dtype)))
    val = T.arg("vals", T.buffer(csr.vals.shape, "float32"))
    b = T.arg("bias", T.buffer(bias.shape, "float32")) if bias is not None else None
    return rp, col, val, b


# --- 1x1 convolution ----------------------------------------------------------------------


@dataclass(frozen=True)
class _ConvCtx:
    """What the 1x1 emitters share: sizes, the flat views of input/output and the CSR buffers."""

    o: int
    channels: int
    pixels: int
    lanes: int
    blocks: int  # input-channel blocks
    block: int  # input channels per block
    act: Activation | None
    x: object  # [N * C * pixels], flat: cols are offsets (channel * pixels) inside a block
    out: object  # [N, O, pixels]
    rp: object
    col: object
    val: object
    bias: object | None
    residual: object | None = None  # [N, O, pixels] like `out`: added before the activation


def _pieces(width: int, lanes: int) -> list[tuple[int, int]]:
    """(offset, lanes) pieces covering `width` columns: whole vectors, then halves, quarters...
    down to single lanes (a narrow last tile still gets short vectors)."""
    pieces, at = [], 0
    while lanes >= 1:
        while width - at >= lanes:
            pieces.append((at, lanes))
            at += lanes
        lanes //= 2
    return pieces


def _emit_row(cx: _ConvCtx, n, o, p0, width: int, blk: int) -> None:
    """out[n, o, p0:p0+width] += sum over row o's nonzeros in channel block `blk` of
    w * x[n, c, p0:...] (a narrower last tile ends in shorter vectors, see `_pieces`). The
    first block starts from zero, the last one adds the bias and the residual and applies the
    activation; in between the partial sums wait in `out` (in cache: one tile of every channel)."""
    pieces = _pieces(width, cx.lanes)
    acc = T.alloc_buffer((width,), "float32")  # stack, kept in registers (a "local" buffer is a heap workspace)
    for at, size in pieces:
        start = cx.out[n, o, _ramp(p0 + at, size)] if blk else _bcast(tirx.const(0.0, "float32"), size)
        T.buffer_store(acc, start, [_ramp(at, size)])
    base = (n * cx.channels + blk * cx.block) * cx.pixels + p0
    with T.serial(_i32(cx.rp[blk, o]), _i32(cx.rp[blk, o + 1])) as q:
        row = base + _i32(cx.col[q])
        for at, size in pieces:
            src = cx.x[_ramp(row + at, size)]
            value = acc[_ramp(at, size)] + _bcast(cx.val[q], size) * src
            T.buffer_store(acc, value, [_ramp(at, size)])
    for at, size in pieces:
        value = acc[_ramp(at, size)]
        if blk == cx.blocks - 1:
            if cx.residual is not None:
                value = value + cx.residual[n, o, _ramp(p0 + at, size)]
            value = _epilogue(value, cx.bias, o, cx.act, size)
        T.buffer_store(cx.out, value, [n, o, _ramp(p0 + at, size)])


def _emit_subsample(x, xs, n: int, c: int, oh: int, ow: int, strides) -> None:
    """xs[(n * C + c) * OH * OW + i * OW + k] = x[n, c, i * sh, k * sw]: a strided 1x1 conv
    reads a dense grid."""
    with T.parallel(0, n * c) as nc:
        with T.serial(0, oh) as i:
            with T.serial(0, ow) as k:
                value = x[nc // c, nc % c, i * strides[0], k * strides[1]]
                T.buffer_store(xs, value, [(nc * oh + i) * ow + k])


def _emit_tile(cx: _ConvCtx, n, g, per_group: int, p0, width: int) -> None:
    """Channel blocks outside, output channels inside: a block's input tile stays in L1 while
    every output channel of the group reads it."""
    for blk in range(cx.blocks):
        # a loop from 0 plus an offset: TVM 0.27 miscompiles a loop whose start is not
        # constant when a nested loop's bounds use its variable (they miss the offset)
        with T.serial(0, tirx.min(per_group, cx.o - g * per_group)) as oi:
            _emit_row(cx, n, g * per_group + oi, p0, width, blk)


def _emit_conv_main(cx: _ConvCtx, n: int, tile: int, groups: int) -> None:
    """Parallel over (image, output-channel group, pixel tile); the last tile may be narrower."""
    tiles = -(-cx.pixels // tile)
    per_group = -(-cx.o // groups)
    with T.parallel(0, n * groups * tiles) as task:
        img, g, t = task // (groups * tiles), task // tiles % groups, task % tiles
        if cx.pixels % tile == 0:
            _emit_tile(cx, img, g, per_group, t * tile, tile)
        else:
            with T.If(t < tiles - 1):
                with T.Then():
                    _emit_tile(cx, img, g, per_group, t * tile, tile)
                with T.Else():
                    _emit_tile(cx, img, g, per_group, (tiles - 1) * tile, cx.pixels % tile)


def csr_conv1x1_kernel(
    weight: np.ndarray,
    in_shape: tuple[int, int, int, int],
    strides: tuple[int, int] = (1, 1),
    bias: np.ndarray | None = None,
    activation: Activation | None = None,
    knobs: CsrKnobs = CsrKnobs(),
    name: str = "csr_conv1x1",
    *,
    residual: bool = False,
    target: Target,
) -> Kernel:
    """The TIR kernel of `act(conv1x1(x, weight) + bias + residual)` (no padding), NCHW float32,
    with the weight's zeros skipped; params (x, [residual], rowptr, cols, vals, [bias], out), the
    residual shaped like out."""
    knobs = knobs.resolved(target)
    n, c, h, w = (int(d) for d in in_shape)
    o = int(weight.shape[0])
    if tuple(weight.shape) != (o, c, 1, 1):
        raise ValueError(f"weight {weight.shape} is not a 1x1 conv over {c} channels")
    oh, ow = (h - 1) // strides[0] + 1, (w - 1) // strides[1] + 1
    csr = Csr.of(np.asarray(weight).reshape(o, c), block=knobs.channel_block, col_scale=oh * ow)
    bias_arr = np.asarray(bias, np.float32).reshape(o) if bias is not None else None
    tile = knobs.lanes * knobs.vectors
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tirx.noalias": True, "global_symbol": name})
            x = T.arg("x", T.buffer((n, c, h, w), "float32"))
            res = T.arg("residual", T.buffer((n, o, oh, ow), "float32")) if residual else None
            rp, col, val, b = _csr_args(csr, bias_arr)
            out = T.arg("out", T.buffer((n, o, oh, ow), "float32"))
            if strides == (1, 1) or (oh, ow) == (h, w):
                xs = T.decl_buffer((n * c * h * w,), "float32", data=x.data)
            else:
                xs = T.alloc_buffer((n * c * oh * ow,), "float32")
                _emit_subsample(x, xs, n, c, oh, ow, strides)
            flat_out = T.decl_buffer((n, o, oh * ow), "float32", data=out.data)
            flat_res = T.decl_buffer((n, o, oh * ow), "float32", data=res.data) if residual else None
            cx = _ConvCtx(o, c, oh * ow, knobs.lanes, csr.blocks, csr.block, activation, xs,
                          flat_out, rp, col, val, b, flat_res)
            _emit_conv_main(cx, n, tile, min(knobs.out_groups, o))
    consts = csr.arrays() + ((bias_arr,) if bias_arr is not None else ())
    return Kernel(ib.get(), consts, (n, o, oh, ow), "float32")


# --- fully connected ----------------------------------------------------------------------


def _emit_dense_rows(x, out, rp, col, val, b, m: int, n_out: int, chunk: int, act, csr: Csr) -> None:
    """out[i, o] = act(bias[o] + sum over row o's chunks of vals[chunk] * x[i, cols[chunk]]), one
    column block after the other (a parallel pass each); partial sums wait in `out`."""
    for blk in range(csr.blocks):
        first, last = blk == 0, blk == csr.blocks - 1
        with T.parallel(0, n_out) as o:
            with T.serial(0, m) as i:
                acc = T.alloc_buffer((chunk,), "float32")  # stack (a "local" buffer is a heap workspace)
                T.buffer_store(acc, _bcast(tirx.const(0.0, "float32"), chunk), [_ramp(0, chunk)])
                with T.serial(_i32(rp[blk, o]), _i32(rp[blk, o + 1])) as q:
                    at = _ramp(q * chunk, chunk)
                    cols = tirx.Cast("int32x%d" % chunk if chunk > 1 else "int32", col[at]) + blk * csr.block
                    T.buffer_store(acc, acc[_ramp(0, chunk)] + val[at] * x[i, cols], [_ramp(0, chunk)])
                total = acc[0] if first else out[i, o] + acc[0]
                for lane in range(1, chunk):
                    total = total + acc[lane]
                T.buffer_store(out, _epilogue(total, b, o, act, 1) if last else total, [i, o])


def csr_dense_kernel(
    weight: np.ndarray,
    in_shape: tuple[int, int],
    bias: np.ndarray | None = None,
    activation: Activation | None = None,
    knobs: CsrKnobs = CsrKnobs(),
    name: str = "csr_dense",
    *,
    target: Target,
) -> Kernel:
    """The TIR kernel of `act(x @ weight.T + bias)` with the weight's zeros skipped, float32;
    params (x, rowptr, cols, vals, [bias], out). `weight` is [N_out, K]."""
    knobs = knobs.resolved(target)
    (n_out, k), (m, kx) = weight.shape, (int(d) for d in in_shape)
    if k != kx:
        raise ValueError(f"weight {weight.shape} does not fit input {tuple(in_shape)}")
    csr = Csr.of(weight, knobs.chunk, block=knobs.columns)
    bias_arr = np.asarray(bias, np.float32).reshape(n_out) if bias is not None else None
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tirx.noalias": True, "global_symbol": name})
            x = T.arg("x", T.buffer((m, k), "float32"))
            rp, col, val, b = _csr_args(csr, bias_arr)
            out = T.arg("out", T.buffer((m, n_out), "float32"))
            _emit_dense_rows(x, out, rp, col, val, b, m, n_out, knobs.chunk, activation, csr)
    consts = csr.arrays() + ((bias_arr,) if bias_arr is not None else ())
    return Kernel(ib.get(), consts, (m, n_out), "float32")
