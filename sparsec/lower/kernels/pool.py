"""Pooling kernels (NCHW float32): max pool, average pool and global average pool.

Each is parallel over the (image, channel) planes and reads the input directly, no padded
copy: a tap outside the input reads the lowest float32 (max; as onnxruntime, so a window of
padding only gives -3.4e38, not -inf) or 0 (average). The output-column loop is cut where
windows leave the input, so the middle part has no bounds logic left once simplified, and LLVM
vectorizes the unrolled window along the output row (de-interleaving strided taps). The average
divides by the window's clipped size, computed from the output position (ONNX
`count_include_pad` semantics; 0 for a window with nothing to count).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import s_tir, te, tirx

from sparsec.lower.kernels.common import Kernel, has_block
from sparsec.target import Target


@dataclass(frozen=True)
class _Window:
    """One spatial axis of a windowed pool."""

    size: int  # input extent
    kernel: int
    stride: int
    pad_lo: int
    pad_hi: int
    ceil_mode: bool
    dilation: int = 1

    @property
    def span(self) -> int:
        return self.dilation * (self.kernel - 1) + 1

    @property
    def out(self) -> int:
        span = self.size + self.pad_lo + self.pad_hi - self.span
        n = (-(-span // self.stride) if self.ceil_mode else span // self.stride) + 1
        # a ceil_mode window must start inside the input or its leading padding
        if self.ceil_mode and (n - 1) * self.stride >= self.size + self.pad_lo:
            n -= 1
        return n

    def count(self, i, include_pad: bool):
        """How many positions of window i count for the average (at least 1: an empty window
        averages to 0). Positions past the bottom/right pad (ceil mode) never count."""
        start = i * self.stride
        lo, hi = (0, self.size + self.pad_lo + self.pad_hi) if include_pad else (
            self.pad_lo, self.pad_lo + self.size)
        return tirx.max(tirx.min(start + self.kernel, hi) - tirx.max(start, lo), 1)


def _windows(in_shape, kernel, strides, pads, ceil_mode, dilations=(1, 1)) -> tuple[_Window, _Window]:
    _, _, h, w = (int(d) for d in in_shape)
    if len(kernel) != 2 or len(pads) != 4:
        raise ValueError(f"2-D pooling needs a 2-D kernel and 4 pads, got {kernel} and {pads}")
    wins = tuple(
        _Window(size, kernel[a], strides[a], pads[a], pads[a + 2], ceil_mode, dilations[a])
        for a, size in enumerate((h, w))
    )
    if min(win.out for win in wins) < 1:
        raise ValueError(f"pool of {tuple(in_shape)} with kernel {kernel}, pads {pads} is empty")
    return wins


def _tap(x: te.Tensor, wins, n, c, i, k, rh, rw, fill: float):
    """x at tap (rh, rw) of window (i, k), or `fill` outside the input. The index is clamped
    too, so the load stays in bounds even where the select is evaluated eagerly."""
    wh, ww = wins
    h = i * wh.stride + rh * wh.dilation - wh.pad_lo
    w = k * ww.stride + rw * ww.dilation - ww.pad_lo
    value = x[n, c, tirx.min(tirx.max(h, 0), wh.size - 1), tirx.min(tirx.max(w, 0), ww.size - 1)]
    inside = tirx.all(h >= 0, h < wh.size, w >= 0, w < ww.size)
    return tirx.if_then_else(inside, value, tirx.const(fill, "float32"))


def _interior_cuts(win: _Window) -> list[int]:
    """loop_partition factors splitting the output positions into [border, interior, border]."""
    lo = -(-win.pad_lo // win.stride)  # first window starting inside the input
    hi = (win.size - win.span + win.pad_lo) // win.stride + 1  # past the last ending inside
    cuts = [c for c in (min(lo, win.out), min(hi, win.out) - lo) if c > 0]
    return cuts[:-1] if sum(cuts) >= win.out else cuts


def _schedule_windowed(sch: s_tir.Schedule, wins) -> None:
    """Parallel over planes; the window loops unrolled inside the output column loop, which is
    cut at the padding (see the module docstring); an average's division follows each row."""
    blk = sch.get_sblock("pool")
    n, c, i, k, rh, rw = sch.get_loops(blk)
    sch.parallel(sch.fuse(n, c))
    sch.unroll(rh)
    sch.unroll(rw)
    if has_block(sch, "out"):
        sch.reverse_compute_at(sch.get_sblock("out"), i)
    cuts = _interior_cuts(wins[1])
    if cuts:
        sch.loop_partition(k, [*cuts, None])


def _build(x: te.Tensor, out: te.Tensor, wins, name: str) -> Kernel:
    func = te.create_prim_func([x, out]).with_attr("global_symbol", name)
    sch = s_tir.Schedule(func)
    _schedule_windowed(sch, wins)
    return Kernel(sch.mod["main"], (), tuple(int(d) for d in out.shape), "float32")


def max_pool_kernel(in_shape, kernel, strides, pads=(0, 0, 0, 0), ceil_mode=False,
                    dilations=(1, 1), name: str = "max_pool") -> Kernel:
    """ONNX MaxPool (2-D); params (x, out)."""
    wh, ww = _windows(in_shape, tuple(kernel), tuple(strides), tuple(pads), ceil_mode, tuple(dilations))
    x = te.placeholder(tuple(int(d) for d in in_shape), "float32", name="x")
    rh, rw = te.reduce_axis((0, wh.kernel), "rh"), te.reduce_axis((0, ww.kernel), "rw")
    lowest = float(np.finfo(np.float32).min)
    out = te.compute(
        (*x.shape[:2], wh.out, ww.out),
        lambda n, c, i, k: te.max(_tap(x, (wh, ww), n, c, i, k, rh, rw, lowest), axis=[rh, rw]),
        name="pool",
    )
    return _build(x, out, (wh, ww), name)


def avg_pool_kernel(in_shape, kernel, strides, pads=(0, 0, 0, 0), ceil_mode=False,
                    count_include_pad=False, name: str = "avg_pool") -> Kernel:
    """ONNX AveragePool (2-D); params (x, out)."""
    wh, ww = _windows(in_shape, tuple(kernel), tuple(strides), tuple(pads), ceil_mode)
    x = te.placeholder(tuple(int(d) for d in in_shape), "float32", name="x")
    rh, rw = te.reduce_axis((0, wh.kernel), "rh"), te.reduce_axis((0, ww.kernel), "rw")
    sums = te.compute(
        (*x.shape[:2], wh.out, ww.out),
        lambda n, c, i, k: te.sum(_tap(x, (wh, ww), n, c, i, k, rh, rw, 0.0), axis=[rh, rw]),
        name="pool",
    )

    def mean(n, c, i, k):
        count = wh.count(i, count_include_pad) * ww.count(k, count_include_pad)
        return sums[n, c, i, k] / tirx.Cast("float32", count)

    return _build(x, te.compute(sums.shape, mean, name="out"), (wh, ww), name)


def global_avg_pool_kernel(in_shape, name: str = "global_avg_pool", *, target: Target) -> Kernel:
    """ONNX GlobalAveragePool; params (x, out [N, C, 1, 1]). The plane sum is split into one
    vector's lanes of interleaved partial sums (rfactor), so it is not one serial chain of adds."""
    lanes = target.lanes()
    n, c, h, w = (int(d) for d in in_shape)
    x = te.placeholder((n, c, h, w), "float32", name="x")
    r = te.reduce_axis((0, h * w), "r")
    sums = te.compute((n, c, 1, 1), lambda b, ch, i, k: te.sum(x[b, ch, r // w, r % w], axis=r), name="sum")
    out = te.compute(sums.shape, lambda *idx: sums[idx] / tirx.const(float(h * w), "float32"), name="out")
    sch = s_tir.Schedule(te.create_prim_func([x, out]).with_attr("global_symbol", name))
    blk = sch.get_sblock("sum")
    b, ch, _, _, red = sch.get_loops(blk)
    sch.parallel(sch.fuse(b, ch))
    if h * w >= 2 * lanes:
        _, inner = sch.split(red, [None, lanes])
        partial = sch.rfactor(inner, 0)
        if (h * w) % lanes == 0:  # else the partial sums carry a bounds predicate
            sch.vectorize(sch.get_loops(partial)[-1])
    sch.reverse_compute_at(sch.get_sblock("out"), sch.get_loops(blk)[0])
    return Kernel(sch.mod["main"], (), (n, c, 1, 1), "float32")
