"""Depthwise convolution (square kernels of 2-7 taps a side, any dilation, stride 1 or 2), its taps'
columns taken apart in registers.

Parallel over (image, channel). A task walks its channel's output rows in bands of `rows`: it
copies the band's input rows into a zero-padded buffer (rows `pitch` floats apart, a whole number
of vectors, each row one contiguous vector copy), then for each output vector of the band's rows
loads every input row it reads as a few aligned vectors and builds each tap column from them with
one shuffle (3x3 at stride 2: the even columns, the odd ones, the even ones one further; at stride
1: the row and its shifts by one and two). Each input row is loaded once for the band's output rows
that read it (3x3 at stride 2, rows 2i .. 2i + 2: one row serves two output rows).

The direct conv it replaces for these shapes (`dense_conv`: a padded copy of the whole plane
split into stride phases, then unaligned loads per tap) spent most of a stride-2 layer on the
phase copy: one scalar move per input float (~15k cycles per 112x112 channel on znver4). Measured
on znver4, 2 threads, kernels alone: MobileNet-V2's 3x3s 1.2-3.8x (stride 2 at 112 and 56 wide
3.3-3.8x; 192 x 28x28 stride 2 0.9x), the model 1.19x; MobileNet-V3's 5x5s 1.25-2.1x and a
dilated 3x3 (256 x 28x28, dilation 2) 1.27x (cores far apart).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from sparsec.ir.activation import Activation
from sparsec.lower.kernels.common import Kernel, apply_activation, ceil_div, conv_output_size


def supports(weight_shape, in_shape, strides, dilations, groups: int) -> bool:
    """Whether a conv has this kernel's shape: one square filter of 2-7 taps a side per channel,
    stride 1 or 2 and one dilation (each the same both ways)."""
    o, cg, kh, kw = (int(d) for d in weight_shape)
    c = int(in_shape[1])
    return (groups == c == o and cg == 1 and kh == kw and 2 <= kh <= MAX_TAPS
            and dilations[0] == dilations[1] >= 1 and tuple(strides) in ((1, 1), (2, 2)))


MAX_TAPS = 7  # a side of the kernel: its tap columns are shuffles, its weights broadcasts


def pick_lanes(out_width: int, lanes: int) -> int:
    """Vector width for rows of `out_width` outputs: the target's lanes, or half of them where a row
    fits in half a vector. Measured on znver4 (AVX-512), MobileNet-V2's layers alone: 7 columns in
    8 lanes 1.12-1.55x over 16; 56 columns in 4 x 16 lanes 1.05-1.21x over 7 x 8 (whole vectors
    do fewer shuffles and loads per output than narrow ones waste on padding)."""
    half = lanes // 2
    return half if half >= 4 and out_width <= half else lanes


@dataclass(frozen=True)
class _Plan:
    """Shapes of the conv and its tiling; all compile-time integers."""

    n: int
    c: int
    h: int
    w: int
    stride: int
    pads: tuple[int, int, int, int]  # top, left, bottom, right (ONNX order)
    lanes: int
    rows: int  # output rows per band (accumulators)
    taps: int = 3  # a side of the kernel
    dilation: int = 1

    @property
    def oh(self) -> int:
        return conv_output_size(self.h, self.pads[0], self.pads[2], self.taps, self.stride, self.dilation)

    @property
    def ow(self) -> int:
        return conv_output_size(self.w, self.pads[1], self.pads[3], self.taps, self.stride, self.dilation)

    @property
    def vectors(self) -> int:
        """Output vectors per row (the last one partial where the width is not a multiple)."""
        return ceil_div(self.ow, self.lanes)

    @property
    def reach(self) -> int:
        """Input rows (and columns) from a window's first tap to its last."""
        return (self.taps - 1) * self.dilation

    @property
    def loads(self) -> int:
        """Vectors loaded per input row per output vector: its columns and the taps' reach past them."""
        return ceil_div(self.stride * (self.lanes - 1) + self.reach + 1, self.lanes)

    @property
    def pitch(self) -> int:
        """Floats per padded row: what the last output vector's loads reach, and the input row
        with its left padding."""
        reach = self.stride * (self.vectors - 1) * self.lanes + self.loads * self.lanes
        return max(reach, ceil_div(self.pads[1] + self.w, self.lanes) * self.lanes)

    @property
    def band_rows(self) -> int:
        """Input rows one band of output rows reads."""
        return self.stride * (self.rows - 1) + self.reach + 1

    @property
    def bands(self) -> int:
        return ceil_div(self.oh, self.rows)


def _vec(start, lanes: int):
    return tirx.Ramp(start, 1, lanes)


def _zero(lanes: int):
    return tirx.Broadcast(tirx.const(0.0, "float32"), lanes)


@dataclass(frozen=True)
class _Buffers:
    x: tirx.Buffer  # [N, C, H, W]
    w: tirx.Buffer  # [C, taps * taps]
    bias: tirx.Buffer | None
    residual: tirx.Buffer | None  # [N, C, OH, OW]
    out: tirx.Buffer
    act: Activation | None


def _emit_band_copy(b: _Buffers, band, p: _Plan, img, c, band_index) -> None:
    """band[r, left + x] = x[img, c, y, x] for the band's input rows y (zeros for rows outside the
    image); the padding columns stay as the task's zeroing left them."""
    left = p.pads[1]
    whole, tail = divmod(p.w, p.lanes)
    for r in range(p.band_rows):
        y = band_index * p.rows * p.stride + r - p.pads[0]
        with T.If(tirx.all(y >= 0, y < p.h)):
            with T.Then():
                for v in range(whole):
                    T.buffer_store(band, b.x[img, c, y, _vec(v * p.lanes, p.lanes)], [r, _vec(left + v * p.lanes,
                                                                                            p.lanes)])
                for k in range(whole * p.lanes, whole * p.lanes + tail):
                    T.buffer_store(band, b.x[img, c, y, k], [r, left + k])
            with T.Else():
                for v in range(p.pitch // p.lanes):
                    T.buffer_store(band, _zero(p.lanes), [r, _vec(v * p.lanes, p.lanes)])


def _tap_columns(band, p: _Plan, r: int, vec) -> list:
    """Row r's tap columns for output vector `vec`: lane l of column kw holds padded input column
    stride * (first output + l) + kw * dilation."""
    first = vec * p.stride * p.lanes
    parts = [band[r, _vec(first + k * p.lanes, p.lanes)] for k in range(p.loads)]
    return [tirx.Shuffle(parts, [p.stride * lane + kw * p.dilation for lane in range(p.lanes)])
            for kw in range(p.taps)]


def _emit_sums(b: _Buffers, band, acc, p: _Plan, c, vec) -> None:
    """acc[i] = the conv's sums for output row i of the band, output vector `vec`: every input row
    loaded and taken apart once, then used by each output row that reads it."""
    for i in range(p.rows):
        T.buffer_store(acc, _zero(p.lanes), [i, _vec(0, p.lanes)])
    for r in range(p.band_rows):
        columns = _tap_columns(band, p, r, vec)
        for i in range(p.rows):
            kh, off = divmod(r - p.stride * i, p.dilation)
            if 0 <= kh < p.taps and off == 0:
                for kw in range(p.taps):
                    weight = tirx.Broadcast(b.w[c, kh * p.taps + kw], p.lanes)
                    T.buffer_store(acc, acc[i, _vec(0, p.lanes)] + weight * columns[kw], [i, _vec(0, p.lanes)])


def _epilogue(b: _Buffers, value, img, c, y, x, lanes: int):
    if b.bias is not None:
        value = value + (tirx.Broadcast(b.bias[c], lanes) if lanes > 1 else b.bias[c])
    if b.residual is not None:
        value = value + b.residual[img, c, y, _vec(x, lanes) if lanes > 1 else x]
    return apply_activation(value, b.act, lanes)


def _emit_stores(b: _Buffers, acc, p: _Plan, img, c, band_index, vec, width: int) -> None:
    """out = act(acc + bias + residual) for the band's rows inside the plane: `width` columns from
    output vector `vec` (a whole vector, or the row's last columns one by one)."""
    for i in range(p.rows):
        y = band_index * p.rows + i
        with T.If(y < p.oh):
            with T.Then():
                x0 = vec * p.lanes
                if width == p.lanes:
                    value = _epilogue(b, acc[i, _vec(0, p.lanes)], img, c, y, x0, p.lanes)
                    T.buffer_store(b.out, value, [img, c, y, _vec(x0, p.lanes)])
                else:
                    for k in range(width):
                        T.buffer_store(b.out, _epilogue(b, acc[i, k], img, c, y, x0 + k, 1), [img, c, y, x0 + k])


def _emit(b: _Buffers, p: _Plan) -> None:
    whole, tail = divmod(p.ow, p.lanes)
    with T.parallel(0, p.n * p.c) as task:
        img, c = task // p.c, task % p.c
        band = T.alloc_buffer((p.band_rows, p.pitch), "float32")
        for r in range(p.band_rows):  # the padding columns: zero once, the copies leave them
            for v in range(p.pitch // p.lanes):
                T.buffer_store(band, _zero(p.lanes), [r, _vec(v * p.lanes, p.lanes)])
        with T.serial(0, p.bands) as band_index:
            _emit_band_copy(b, band, p, img, c, band_index)
            # "global" scope: a stack buffer LLVM keeps in registers (every index a constant)
            acc = T.alloc_buffer((p.rows, p.lanes), "float32")
            with T.serial(0, whole) as vec:
                _emit_sums(b, band, acc, p, c, vec)
                _emit_stores(b, acc, p, img, c, band_index, vec, p.lanes)
            if tail:
                _emit_sums(b, band, acc, p, c, whole)
                _emit_stores(b, acc, p, img, c, band_index, whole, tail)


def depthwise_conv_kernel(
    weight: np.ndarray,
    in_shape: tuple[int, int, int, int],
    *,
    strides: tuple[int, int] = (1, 1),
    pads: tuple[int, int, int, int] = (1, 1, 1, 1),
    dilation: int = 1,
    lanes: int,
    rows: int,
    bias: np.ndarray | None = None,
    activation: Activation | None = None,
    residual: bool = False,
    name: str = "depthwise_conv",
) -> Kernel:
    """The TIR kernel of `act(depthwise_conv(x, weight) + bias + residual)`, NCHW float32 (see
    `supports`): vectors of `lanes` outputs, bands of `rows` output rows; params (x, [residual], w,
    [bias], out) like the direct conv's."""
    n, c, h, w = (int(d) for d in in_shape)
    taps = int(weight.shape[-1])
    if not supports(weight.shape, in_shape, strides, (dilation, dilation), c):
        raise ValueError(f"depthwise conv needs a ({c}, 1, k, k) weight (k 2-{MAX_TAPS}) and stride 1 or 2, got "
                         f"{tuple(weight.shape)} and strides {tuple(strides)}")
    plan = _Plan(n, c, h, w, int(strides[0]), tuple(int(v) for v in pads), lanes, rows, taps, int(dilation))
    plan = replace(plan, rows=max(1, min(rows, plan.oh)))
    out_shape = (n, c, plan.oh, plan.ow)
    constants = (np.ascontiguousarray(np.asarray(weight, np.float32).reshape(c, taps * taps)),)
    constants += (np.asarray(bias, np.float32).reshape(c),) if bias is not None else ()
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tirx.noalias": True, "global_symbol": name})
            x = T.arg("x", T.buffer((n, c, h, w), "float32"))
            res = T.arg("residual", T.buffer(out_shape, "float32")) if residual else None
            wb = T.arg("w", T.buffer((c, taps * taps), "float32"))
            bb = T.arg("bias", T.buffer((c,), "float32")) if bias is not None else None
            out = T.arg("out", T.buffer(out_shape, "float32"))
            _emit(_Buffers(x, wb, bb, res, out, activation), plan)
    return Kernel(ib.get(), constants, out_shape, "float32")
