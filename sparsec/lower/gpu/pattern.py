"""The pattern-sparse 3x3 convolution on the GPU, in PatDNN's shape (NDRange as in `tiles`).

A work-group is FZ consecutive filters in reorder-filters' order (alike kernel counts and pattern
mixes) side by side (threadIdx.z) over one output tile; a work-item computes one filter x R rows x
one float4 of output columns. Per block of CB input channels the work-group copies the input tile
into local memory; then each work-item runs one loop per pattern over its filter's kernels of that
block, bounds from FKW arrays in global memory. A kernel costs two global loads, its channel
(`index`) and its 4 weights (one float4), and feeds 4 taps x R rows of float4 FMAs from local
memory. The epilogue stores through `filter_order` into the original channel order.

No divergence: the filters of a work-group are padded (zero-weight kernels) to the same number of
kernels in every (channel block, pattern) run, so every work-item of a work-group runs the same
pattern sequence with the same trip counts (`group_table`; reorder-filters keeps the padding small).
The static GPU report checks this on the generated code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from sparsec.fkw import FKW, kernel_table, smallest_uint
from sparsec.ir.activation import Activation
from sparsec.lower.gpu import tiles
from sparsec.lower.gpu.tiles import LANES, ConvTile
from sparsec.lower.kernels.common import Kernel
from sparsec.target import Target

FILTERS_SIDE_BY_SIDE = 8  # filters sharing each input tile: the input's global loads per FMA fall with it
ROWS = 4


@dataclass(frozen=True)
class GroupTable:
    """FKW re-cut for work-groups of `width` filters and channel blocks of `block` channels.

    Stored filter s owns kernels `offset[s] + stride[s, r] : offset[s] + stride[s, r + 1]` in run
    r = block * P + pattern; the filters of one work-group have equal runs (padding kernels: the
    block's first channel, zero weights). Each filter keeps its own copy of the group's `stride`
    row: a work-item reads its own filter's bounds (equal across the work-group by construction; a
    kernel whose loop bounds look uniform makes PoCL's barrier handling explode, see runtime/opencl)."""

    patterns: np.ndarray
    offset: np.ndarray  # (O,) int32
    stride: np.ndarray  # (O, B*P+1) int32, equal within a group
    index: np.ndarray  # (K,) input channel of each kernel
    weight: np.ndarray  # (K, T) float32
    order: np.ndarray  # (O,) int32 filter_order
    kept: int  # kernels before padding

    @property
    def padding(self) -> float:
        """Padding kernels per kept kernel."""
        return len(self.index) / max(self.kept, 1) - 1.0


def group_table(fkw: FKW, in_channels: int, width: int, block: int) -> GroupTable:
    """Pad each group of `width` consecutive stored filters to equal (block, pattern) runs."""
    table = kernel_table(fkw, in_channels, 1, block)
    num_patterns = len(fkw.patterns)
    src_starts, counts = table.runs()  # (O, R)
    groups = -(-fkw.num_filters // width)
    padded = np.zeros((groups * width, counts.shape[1]), np.int64)
    padded[: len(counts)] = counts
    group_counts = padded.reshape(groups, width, -1).max(axis=1)  # (G, R)
    per_filter = group_counts.sum(axis=1)
    offset = np.repeat(np.concatenate([[0], np.cumsum(per_filter)[:-1]]) * width, width)[: fkw.num_filters]
    offset = offset + np.tile(np.arange(width), groups)[: fkw.num_filters] * np.repeat(per_filter, width)[
        : fkw.num_filters]
    total = int(per_filter.sum()) * width
    run_block = np.arange(counts.shape[1]) // max(num_patterns, 1)
    index = np.zeros(total, np.int64)
    weight = np.zeros((total, fkw.taps_per_pattern), np.float32)
    starts = np.concatenate([np.zeros((groups, 1), np.int64), np.cumsum(group_counts, axis=1)], axis=1)
    for s in range(fkw.num_filters):
        g = s // width
        for r in np.nonzero(group_counts[g])[0]:
            dst = offset[s] + starts[g, r]
            n, pad = counts[s, r], group_counts[g, r]
            src = src_starts[s, r]
            index[dst: dst + n] = table.index[src: src + n]
            weight[dst: dst + n] = table.weight[src: src + n, 0]
            index[dst + n: dst + pad] = run_block[r] * block
    return GroupTable(fkw.patterns, offset.astype(np.int32), np.repeat(starts, width, axis=0)[: fkw.num_filters]
                      .astype(np.int32),
                      index.astype(smallest_uint(max(in_channels - 1, 0))), weight,
                      fkw.filter_order.astype(np.int32), fkw.num_kernels)


def plan(in_shape, num_filters: int, strides, pads, dilations, target: Target) -> ConvTile:
    return tiles.plan(in_shape, (num_filters, int(in_shape[1]), 3, 3), strides, pads, dilations, 1, target,
                      max_filters=FILTERS_SIDE_BY_SIDE, rows=ROWS, max_items=16, side_by_side=True)


def pattern_conv_kernel(fkw: FKW, in_shape, *, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1),
                        bias: np.ndarray | None = None, activation: Activation | None = None, target: Target,
                        name: str = "pattern_conv") -> Kernel:
    """`act(conv(data, fkw) + bias)`, NCHW float32. Constants: the group table's offset, stride,
    index, weight and order, then bias."""
    t = plan(in_shape, fkw.num_filters, strides, pads, dilations, target)
    table = group_table(fkw, t.c, t.fz, t.cb)
    constants = (table.offset, table.stride, table.index, table.weight, table.order)
    constants += (np.asarray(bias, np.float32),) if bias is not None else ()
    out_shape = (t.n, t.o, t.oh, t.ow)
    names = ("offset", "stride", "index", "weight", "order", "bias")
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tirx.noalias": True, "global_symbol": name})
            data = T.arg("data", T.buffer((t.n, t.c, t.h, t.w), "float32"))
            bufs = [T.arg(nm, T.buffer(a.shape, str(a.dtype))) for nm, a in zip(names, constants)]
            out = T.arg("out", T.buffer(out_shape, "float32"))
            _emit(t, table.patterns, data, bufs, out, activation)
    return Kernel(ib.get(), constants, out_shape, "float32")


def _emit(t: ConvTile, patterns: np.ndarray, data, bufs, out, act) -> None:
    offset, stride, index, weight, order = bufs[:5]
    bias = bufs[5] if len(bufs) > 5 else None
    frames, ids_of = tiles.launch(t, t.o // t.fz)
    with frames[0], frames[1], frames[2], frames[3], frames[4]:
        ids = ids_of()
        tile = T.alloc_buffer((t.cb, t.tr, t.tc), "float32", scope="shared")
        acc = T.alloc_buffer((t.m, t.rows, LANES), "float32", scope="local")
        wv = T.alloc_buffer((patterns.shape[1],), "float32", scope="local")
        slot = T.bind(ids.fb * t.fz + ids.fz)
        first = T.bind(offset[slot])  # the filter's first kernel: one load per work-item
        tiles.zero(acc, t)
        with T.serial(0, t.blocks) as blk:
            tiles.barrier()
            tiles.load_tile(data, tile, t, ids, blk * t.cb, tirx.min(t.cb, t.c - blk * t.cb))
            tiles.barrier()
            start = T.bind(stride[slot, blk * len(patterns)])
            for p, taps in enumerate(patterns):  # each run's end is the next run's start: P + 1 loads a block
                end = T.bind(stride[slot, blk * len(patterns) + p + 1])
                _emit_pattern_loop(t, (index, weight), tile, acc, wv, ids, first + start, end - start, blk, taps)
                start = end
        tiles.store(out, acc, t, ids, lambda m: order[slot], bias, act)


def _emit_pattern_loop(t: ConvTile, arrays, tile, acc, wv, ids, lo, count, blk, taps) -> None:
    """acc += the kernels lo .. lo + count of one (channel block, pattern) run."""
    index, weight = arrays
    with T.serial(0, count) as i:  # from 0, offset added: see tvm-0.27 notes on non-zero starts
        k = lo + i
        cc = T.bind(tirx.Cast("int32", index[k]) - blk * t.cb)  # one load of the channel per kernel
        if len(taps) == LANES:
            T.buffer_store(wv, weight[k, tirx.Ramp(0, 1, LANES)], [tirx.Ramp(0, 1, LANES)])
        else:
            for j in range(len(taps)):
                T.buffer_store(wv, weight[k, j], [j])
        for j, tap in enumerate(int(x) for x in taps):
            ky, kx = divmod(tap, 3)
            for r in range(t.rows):
                tiles.fma(acc, 0, r, wv[j], tiles.tap_input(tile, t, ids, cc, r, ky, kx))
