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

from sparsec.fkw import FKW, GroupedFKW, group_fkw
from sparsec.ir.activation import Activation
from sparsec.lower.kernels.common import Kernel, apply_activation


@dataclass(frozen=True)
class PatternConvKnobs:
    """Schedule knobs (the auto-tuner's search space); the defaults suit AVX2 / 16 vector regs."""

    filters_per_group: int = 1  # filters sharing each loaded input vector (filter-level LRE)
    rows_per_step: int = 4  # output rows per step: taps on one input row share a load
    vector_width: int = 8  # SIMD lanes (8 x fp32 = AVX2)
    vectors_per_step: int = 3  # output vectors along the width per step
    band_rows: int = 0  # rows per cache band, filters parallel inside a band (0: no bands)

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
    def wq(self) -> int:
        """Columns of one stride phase of the padded input."""
        return self.tiles_x * self.tile_w + (2 * self.dilations[1]) // self.strides[1]

    def tap(self, tap: int) -> tuple[int, int, int]:
        """(padded row offset, phase, column offset inside the phase) of a tap."""
        ky, kx = divmod(int(tap), 3)
        col = kx * self.dilations[1]
        return ky * self.dilations[0], col % self.strides[1], col // self.strides[1]

    def phase_cols(self, phase: int) -> tuple[int, int]:
        """Columns [lo, hi) of a phase that hold input (the rest is padding)."""
        sw, pl = self.strides[1], self.pads[1]
        lo = max(0, -(-(pl - phase) // sw))
        hi = min(self.wq, -(-(self.w + pl - phase) // sw))
        return lo, max(lo, hi)


def _ramp(base, lanes: int):
    return tirx.Ramp(base, 1, lanes)


def _i32(x):
    return tirx.Cast("int32", x)


def _emit_padding(data, xp, g: _Geometry) -> None:
    """xp[n, c, yp, ph, q] = data[n, c, yp - pad_top, q * sw + ph - pad_left], zero outside."""
    zero = tirx.const(0.0, "float32")
    top, rows_end = g.pads[0], min(g.pads[0] + g.h, g.hp)
    with T.parallel(0, g.n * g.c) as nc:
        n, c = nc // g.c, nc % g.c
        with T.serial(0, g.hp) as yp:
            for ph in range(g.strides[1]):
                lo, hi = g.phase_cols(ph)
                inside = tirx.all(yp >= top, yp < rows_end)
                with T.serial(0, g.wq) as q:
                    x = q * g.strides[1] + ph - g.pads[1]
                    ok = tirx.all(inside, q >= lo, q < hi)
                    val = tirx.if_then_else(ok, data[n, c, yp - top, x], zero)
                    T.buffer_store(xp, val, [n, c, yp, ph, q])


@dataclass(frozen=True)
class _Refs:
    """The buffers of the generated function."""

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


def _emit_pattern_loop(b: _Refs, acc, taps, p: int, grp, n, oy0, ox0, g: _Geometry, nf: int):
    """acc[f, r, v] += w[k, f, t] * input(tap t) for the kernels k of pattern p in group grp."""
    base = _i32(b.offset[grp])
    lo, hi = base + _i32(b.stride[grp, p]), base + _i32(b.stride[grp, p + 1])
    lanes, y0 = g.lanes, oy0 * g.strides[0]
    with T.serial(lo, hi) as k:
        c = _i32(b.index[k])
        for (dy, kx), users in _row_consumers(taps, g).items():
            _, ph, dq = g.tap(kx)
            for v in range(g.vecs):
                src = b.xp[n, c, y0 + dy, ph, _ramp(ox0 + v * lanes + dq, lanes)]
                for f in range(nf):
                    for r, t in users:
                        wv = tirx.Broadcast(b.weight[k, f, t], lanes)
                        idx = [f, r, _ramp(v * lanes, lanes)]
                        T.buffer_store(acc, acc[f, r, _ramp(v * lanes, lanes)] + wv * src, idx)


def _emit_epilogue(b: _Refs, acc, grp, n, oy0, ox0, g: _Geometry, nf, num_filters, act):
    lanes = g.lanes
    for f in range(nf):
        slot = grp * nf + f
        with T.If(slot < num_filters):
            with T.Then():
                filt = _i32(b.order[slot])
                bias = b.bias[filt] if b.bias is not None else None
                for r in range(g.rows):
                    oy = oy0 + r
                    with T.If(oy < g.oh):
                        with T.Then():
                            with T.serial(0, g.tile_w) as x:
                                val = acc[f, r, x]
                                if bias is not None:
                                    val = val + bias
                                val = apply_activation(val, act, 1)
                                with T.If(ox0 + x < g.ow):
                                    with T.Then():
                                        T.buffer_store(b.out, val, [n, filt, oy, ox0 + x])


def _emit_tile(b: _Refs, patterns, grp, n, ty, tx, g: _Geometry, nf, num_filters, act):
    oy0, ox0 = ty * g.rows, tx * g.tile_w
    acc = T.alloc_buffer((nf, g.rows, g.tile_w), "float32", scope="local")
    zero = tirx.Broadcast(tirx.const(0.0, "float32"), g.lanes)
    for f in range(nf):
        for r in range(g.rows):
            for v in range(g.vecs):
                T.buffer_store(acc, zero, [f, r, _ramp(v * g.lanes, g.lanes)])
    for p, taps in enumerate(patterns):
        _emit_pattern_loop(b, acc, taps, p, grp, n, oy0, ox0, g, nf)
    _emit_epilogue(b, acc, grp, n, oy0, ox0, g, nf, num_filters, act)


def _geometry(fkw, in_shape, strides, pads, dilations, knobs) -> _Geometry:
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
    g = _geometry(fkw, in_shape, strides, pads, dilations, knobs)
    grouped = group_fkw(fkw, knobs.filters_per_group)
    constants = grouped.arrays() + ((np.asarray(bias, np.float32),) if bias is not None else ())
    out_shape = (g.n, fkw.num_filters, g.oh, g.ow)
    func = _build_func(g, grouped, constants, bias is not None, activation, out_shape, name)
    return Kernel(func, constants, out_shape, "float32")


def _build_func(g, grouped: GroupedFKW, constants, has_bias, act, out_shape, name):
    nf = grouped.filters_per_group
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tirx.noalias": True, "global_symbol": name})
            data = T.arg("data", T.buffer((g.n, g.c, g.h, g.w), "float32"))
            names = ("offset", "stride", "index", "weight", "order") + (("bias",) if has_bias else ())
            bufs = [T.arg(nm, T.buffer(a.shape, str(a.dtype))) for nm, a in zip(names, constants)]
            out = T.arg("out", T.buffer(out_shape, "float32"))
            xp = T.alloc_buffer((g.n, g.c, g.hp, g.strides[1], g.wq), "float32")
            _emit_padding(data, xp, g)
            b = _Refs(xp, *bufs[:5], bufs[5] if has_bias else None, out)
            with T.parallel(0, grouped.num_groups) as grp:
                with T.serial(0, g.n) as n:
                    with T.serial(0, g.tiles_y) as ty:
                        with T.serial(0, g.tiles_x) as tx:
                            _emit_tile(b, grouped.patterns, grp, n, ty, tx, g, nf,
                                       grouped.num_filters, act)
    return ib.get()
