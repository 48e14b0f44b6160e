"""A pattern-sparse 3x3 convolution kernel (PatDNN style), written with the tirx IRBuilder.

Data flow: the input is copied once into a zero-padded, stride-phase-split buffer, so the hot
loop has no bounds checks and reads contiguous vectors for any stride. Then, per group of
filters (parallel) and per tile of output rows x output vectors, one loop per pattern runs
over that pattern's kernels (bounds read from FKW `stride` at run time); tap offsets are
compile-time constants, so each tap is one vector FMA per accumulator. The epilogue adds bias,
applies the activation and stores through `filter_order` into the original channel order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from sparsec.fkw import FKW, KernelTable, kernel_table
from sparsec.ir.activation import Activation
from sparsec.lower.kernels.common import Kernel, apply_activation


@dataclass(frozen=True)
class PatternConvKnobs:
    """Schedule knobs (the auto-tuner's search space); the defaults suit AVX2 / 16 vector regs."""

    filters_per_group: int = 1  # filters sharing each loaded input vector (filter-level LRE)
    rows_per_step: int = 4  # output rows per step: taps on one input row share a load
    vector_width: int = 8  # SIMD lanes (8 x fp32 = AVX2)
    vectors_per_step: int = 3  # output vectors along the width per step
    channel_block: int = 0  # input channels per L1 block (0: all channels in one block)
    prefetch_distance: int = 0  # prefetch the input tile of the kernel this many ahead (0: off)

    def __post_init__(self) -> None:
        for name in ("filters_per_group", "rows_per_step", "vector_width", "vectors_per_step"):
            if getattr(self, name) < 1:
                raise ValueError(f"knob {name} must be >= 1")


@dataclass(frozen=True)
class _Geometry:
    """Shapes of one convolution and its tiling; all compile-time integers."""

    n: int
    c: int
    h: int
    w: int
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right (ONNX order)
    dilations: tuple[int, int]
    rows: int  # output rows per step
    lanes: int
    vecs: int  # output vectors per step

    @property
    def oh(self) -> int:
        return (self.h + self.pads[0] + self.pads[2] - 2 * self.dilations[0] - 1) // self.strides[0] + 1

    @property
    def ow(self) -> int:
        return (self.w + self.pads[1] + self.pads[3] - 2 * self.dilations[1] - 1) // self.strides[1] + 1

    @property
    def tile_w(self) -> int:
        return self.lanes * self.vecs

    @property
    def tiles_y(self) -> int:
        return -(-self.oh // self.rows)

    @property
    def tiles_x(self) -> int:
        return -(-self.ow // self.tile_w)

    @property
    def hp(self) -> int:
        """Rows of the padded input: enough for every (possibly partial) row tile."""
        return (self.tiles_y * self.rows - 1) * self.strides[0] + 2 * self.dilations[0] + 1

    @property
    def qw(self) -> int:
        """Columns of one stride phase of one input strip (a tile's columns plus the halo)."""
        return self.tile_w + (2 * self.dilations[1]) // self.strides[1]

    def tap(self, tap: int) -> tuple[int, int, int]:
        """(padded row offset, phase, column offset inside the phase) of a tap."""
        ky, kx = divmod(int(tap), 3)
        col = kx * self.dilations[1]
        return ky * self.dilations[0], col % self.strides[1], col // self.strides[1]

def _ramp(base, lanes: int):
    return tirx.Ramp(base, 1, lanes)


def _i32(x):
    return tirx.Cast("int32", x)


def _emit_padding(data, xs, g: _Geometry) -> None:
    """Copy the input into zero-padded strips, one per column tile and stride phase:

    xs[n, tx, c, yp, ph, q] = data[n, c, yp - pad_top, (tx * tile_w + q) * sw + ph - pad_left].
    A tile's rows of one channel are then contiguous, so a block of channels packs densely
    into the L1 cache, and the hot loop needs no bounds checks for any stride or padding.
    """
    zero = tirx.const(0.0, "float32")
    with T.parallel(0, g.n * g.c) as nc:
        n, c = nc // g.c, nc % g.c
        with T.serial(0, g.hp) as yp:
            y = yp - g.pads[0]
            with T.serial(0, g.tiles_x) as tx:
                for ph in range(g.strides[1]):
                    with T.serial(0, g.qw) as q:
                        x = (tx * g.tile_w + q) * g.strides[1] + ph - g.pads[1]
                        ok = tirx.all(y >= 0, y < g.h, x >= 0, x < g.w)
                        val = tirx.if_then_else(ok, data[n, c, y, x], zero)
                        T.buffer_store(xs, val, [n, tx, c, yp, ph, q])


@dataclass(frozen=True)
class _Ctx:
    """Everything the emitters share: geometry, table shape, activation and the buffers."""

    g: _Geometry
    patterns: np.ndarray
    num_filters: int
    nf: int  # filters per group
    num_groups: int
    num_blocks: int
    act: Activation | None
    prefetch: int
    xp: object
    offset: object
    stride: object
    index: object
    weight: object
    order: object
    bias: object | None
    out: object


def _row_consumers(taps, g: _Geometry) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Kernel-level LRE: (padded input row offset, tap column) -> the (output row, tap slot)
    pairs that read it. One loaded vector then feeds every tap of the pattern on that row."""
    uses: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for t, tap in enumerate(taps):
        ky, kx = divmod(int(tap), 3)
        for r in range(g.rows):
            uses.setdefault((r * g.strides[0] + ky * g.dilations[0], kx), []).append((r, t))
    return dict(sorted(uses.items(), key=lambda item: (item[0][1], item[0][0])))


def _emit_prefetch(x: _Ctx, k, n, oy0, tx):
    """Prefetch the (contiguous) input tile of the kernel `prefetch` places ahead into L1."""
    g = x.g
    ahead = tirx.min(k + x.prefetch, x.index.shape[0] - 1)
    c = _i32(x.index[ahead])
    span = ((g.rows - 1) * g.strides[0] + 2 * g.dilations[0] + 1) * g.strides[1] * g.qw
    for j in range(0, span + 15, 16):
        addr = tirx.address_of(x.xp[n, tx, c, oy0 * g.strides[0], 0, j])
        T.evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0", addr, _c32(0), _c32(3), _c32(1)))


def _c32(v: int):
    return tirx.const(v, "int32")


def _vec(v: int, lanes: int):
    return _ramp(v * lanes, lanes)


def _emit_pattern_loop(x: _Ctx, acc, p: int, run: int, grp, n, oy0, tx):
    """acc[f, r, v] += w[k, f, t] * input(tap t) over the kernels k of one (block, pattern) run.

    Each distinct input vector is loaded once and feeds every tap of every filter of the group
    that reads it (kernel- and filter-level load-redundancy elimination)."""
    g, lanes = x.g, x.g.lanes
    base = _i32(x.offset[grp])
    lo, hi = base + _i32(x.stride[grp, run]), base + _i32(x.stride[grp, run + 1])
    with T.serial(lo, hi) as k:
        c = _i32(x.index[k])
        if x.prefetch:
            _emit_prefetch(x, k, n, oy0, tx)
        for (dy, kx), users in _row_consumers(x.patterns[p], g).items():
            _, ph, dq = g.tap(kx)
            for v in range(g.vecs):
                src = x.xp[n, tx, c, oy0 * g.strides[0] + dy, ph, _ramp(v * lanes + dq, lanes)]
                for f in range(x.nf):
                    for r, t in users:
                        wv = tirx.Broadcast(x.weight[k, f, t], lanes)
                        value = acc[f, r, _vec(v, lanes)] + wv * src
                        T.buffer_store(acc, value, [f, r, _vec(v, lanes)])


def _emit_copy(dst, src, x: _Ctx, dst_pre=(), src_pre=()):
    """dst[*dst_pre, f, r, :] = src[*src_pre, f, r, :] for a group's (F, R, tile) block."""
    lanes = x.g.lanes
    for f in range(x.nf):
        for r in range(x.g.rows):
            for v in range(x.g.vecs):
                value = src[(*src_pre, f, r, _vec(v, lanes))] if src is not None else _zero(lanes)
                T.buffer_store(dst, value, [*dst_pre, f, r, _vec(v, lanes)])


def _zero(lanes: int):
    return tirx.Broadcast(tirx.const(0.0, "float32"), lanes)


def _emit_store_row(x: _Ctx, acc, f: int, r: int, n, filt, oy, ox0):
    """out[n, filt, oy, ox0:] = act(acc[f, r, :] + bias): vectors when the tile is inside."""
    g = x.g
    with T.If(ox0 + g.tile_w <= g.ow):
        with T.Then():
            for v in range(g.vecs):
                val = _bias_act(x, acc[f, r, _vec(v, g.lanes)], filt, g.lanes)
                T.buffer_store(x.out, val, [n, filt, oy, _ramp(ox0 + v * g.lanes, g.lanes)])
        with T.Else():
            with T.serial(0, tirx.min(g.tile_w, g.ow - ox0)) as col:
                val = _bias_act(x, acc[f, r, col], filt, 1)
                T.buffer_store(x.out, val, [n, filt, oy, ox0 + col])


def _bias_act(x: _Ctx, val, filt, lanes: int):
    if x.bias is not None:
        bias = x.bias[filt]
        val = val + (tirx.Broadcast(bias, lanes) if lanes > 1 else bias)
    return apply_activation(val, x.act, lanes)


def _emit_epilogue(x: _Ctx, acc, grp, n, oy0, ox0):
    """Bias, activation, and the store through `filter_order` into the original channels."""
    for f in range(x.nf):
        slot = grp * x.nf + f
        with T.If(slot < x.num_filters):
            with T.Then():
                filt = _i32(x.order[slot])
                for r in range(x.g.rows):
                    with T.If(oy0 + r < x.g.oh):
                        with T.Then():
                            _emit_store_row(x, acc, f, r, n, filt, oy0 + r, ox0)


def _emit_block(x: _Ctx, acc, blk, grp, n, oy0, ox0):
    for p in range(len(x.patterns)):
        _emit_pattern_loop(x, acc, p, blk * len(x.patterns) + p, grp, n, oy0, ox0 // x.g.tile_w)


def _emit_tile_unblocked(x: _Ctx, n, oy0, ox0):
    """One channel block: accumulators start at zero and go straight to the epilogue."""
    with T.serial(0, x.num_groups) as grp:
        acc = T.alloc_buffer((x.nf, x.g.rows, x.g.tile_w), "float32", scope="local")
        _emit_copy(acc, None, x)
        _emit_block(x, acc, 0, grp, n, oy0, ox0)
        _emit_epilogue(x, acc, grp, n, oy0, ox0)


def _emit_tile_blocked(x: _Ctx, n, oy0, ox0):
    """Channel blocks outside, groups inside: a block's input tile stays in L1 while every
    group uses it; partial sums live in a per-tile buffer between blocks."""
    g = x.g
    part = T.alloc_buffer((x.num_groups, x.nf, g.rows, g.tile_w), "float32")
    with T.serial(0, x.num_groups) as grp:
        _emit_copy(part, None, x, dst_pre=(grp,))
    with T.serial(0, x.num_blocks) as blk:
        with T.serial(0, x.num_groups) as grp:
            acc = T.alloc_buffer((x.nf, g.rows, g.tile_w), "float32", scope="local")
            _emit_copy(acc, part, x, src_pre=(grp,))
            _emit_block(x, acc, blk, grp, n, oy0, ox0)
            _emit_copy(part, acc, x, dst_pre=(grp,))
    with T.serial(0, x.num_groups) as grp:
        acc = T.alloc_buffer((x.nf, g.rows, g.tile_w), "float32", scope="local")
        _emit_copy(acc, part, x, src_pre=(grp,))
        _emit_epilogue(x, acc, grp, n, oy0, ox0)


def _emit_main(x: _Ctx):
    """Parallel over output tiles (each thread reads its own input region)."""
    g = x.g
    with T.parallel(0, g.n * g.tiles_y * g.tiles_x) as tile:
        n, rest = tile // (g.tiles_y * g.tiles_x), tile % (g.tiles_y * g.tiles_x)
        oy0, ox0 = rest // g.tiles_x * g.rows, rest % g.tiles_x * g.tile_w
        if x.num_blocks == 1:
            _emit_tile_unblocked(x, n, oy0, ox0)
        else:
            _emit_tile_blocked(x, n, oy0, ox0)


def _geometry(in_shape, strides, pads, dilations, knobs) -> _Geometry:
    n, c, h, w = (int(d) for d in in_shape)
    return _Geometry(
        n, c, h, w, tuple(strides), tuple(pads), tuple(dilations),
        knobs.rows_per_step, knobs.vector_width, knobs.vectors_per_step,
    )


def pattern_conv_kernel(
    fkw: FKW,
    in_shape: tuple[int, int, int, int],
    *,
    strides=(1, 1),
    pads=(1, 1, 1, 1),
    dilations=(1, 1),
    bias: np.ndarray | None = None,
    activation: Activation | None = None,
    knobs: PatternConvKnobs = PatternConvKnobs(),
    name: str = "pattern_conv",
) -> Kernel:
    """The TIR kernel of `act(conv(data, fkw) + bias)`, NCHW float32, see the module docstring."""
    g = _geometry(in_shape, strides, pads, dilations, knobs)
    table = kernel_table(fkw, g.c, knobs.filters_per_group, knobs.channel_block)
    constants = table.arrays() + ((np.asarray(bias, np.float32),) if bias is not None else ())
    out_shape = (g.n, fkw.num_filters, g.oh, g.ow)
    func = _build_func(g, table, knobs, constants, activation, out_shape, name)
    return Kernel(func, constants, out_shape, "float32")


_CONST_NAMES = ("offset", "stride", "index", "weight", "order", "bias")


def _build_func(g: _Geometry, table: KernelTable, knobs, constants, act, out_shape, name):
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tirx.noalias": True, "global_symbol": name})
            data = T.arg("data", T.buffer((g.n, g.c, g.h, g.w), "float32"))
            bufs = [T.arg(nm, T.buffer(a.shape, str(a.dtype))) for nm, a in zip(_CONST_NAMES, constants)]
            out = T.arg("out", T.buffer(out_shape, "float32"))
            xp = T.alloc_buffer((g.n, g.tiles_x, g.c, g.hp, g.strides[1], g.qw), "float32")
            _emit_padding(data, xp, g)
            bias = bufs[5] if len(bufs) > 5 else None
            x = _Ctx(g, table.patterns, table.num_filters, table.filters_per_group,
                     table.num_groups, table.num_blocks, act, knobs.prefetch_distance, xp, *bufs[:5], bias, out)
            _emit_main(x)
    return ib.get()
