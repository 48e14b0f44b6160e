"""A pattern-sparse 3x3 convolution kernel (PatDNN style), written with the tirx IRBuilder.

Data flow:
1. The input is copied into zero-padded *tiles*: for every output tile (R rows x W columns)
   and channel, the input rows and columns it reads (halo included, split by stride phase) lie
   contiguous. The hot loop then has no bounds checks for any stride, padding or dilation, and
   a block of channels of one tile packs densely into L1 (few lines, few pages). The task that
   computes a tile copies it just before (it stays in cache), unless the filters are sliced
   across tasks (small planes): then a prologue copies every tile once.
2. Parallel over output tiles (x slices of the filter groups). Per tile, (per block of input channels,) per group of
   filters: one loop per pattern runs over that pattern's kernels (bounds from the FKW
   `stride` at run time); tap offsets are compile-time constants, so each distinct input
   vector is loaded once and feeds every tap that reads it (kernel-level load-redundancy
   elimination) and every filter of the group (filter-level) with vector FMAs into register
   accumulators.
3. The epilogue adds bias and the residual (a ResNet shortcut, read at the original channel),
   applies the activation and stores through `filter_order` into the original channel order.

Where a plane's width leaves at most half a vector to its last column of tiles (28 = 3 x 8 + 4),
that column's tiles take their rows in pairs (`_paired_column`): each vector holds two rows' last
columns, so no lanes idle and the column needs half the tiles.

Where a vector is a cache line and a plane's rows take no more vectors that way (28 = 14 + 14 in 16
lanes), a tile row is one vector holding its output columns and their halo (`register_shifts`): each
input row is one aligned load, and the taps of the other kernel columns rotate it in registers, or
(`register_shifts=2`, AVX-512's plan) take it unrotated into a set of sums of their tap column, the
three sets joining rotated once a block (`_emit_shifted_fold`): no permute is left in the kernel loops.

Where a block's pattern loops run a kernel or two each, their exits are coin tosses; `runtime_taps` runs
one loop over the block's kernels instead, each tap's input offset read from a per-kernel table
(`tap_offsets`), for the price of the loads that compile-time taps share (`_emit_runtime_taps_loop`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from sparsec.fkw import FKW, KernelTable, kernel_table
from sparsec.ir.activation import Activation
from sparsec.lower.kernels import register_plan
from sparsec.lower.kernels.common import Kernel, apply_activation, conv_output_size, emit_prefetch
from sparsec.target import Target

SHIFTED_SUM_SETS = 3  # shifted sums: a set per tap column, the first the tile's own accumulators


@dataclass(frozen=True)
class PatternConvKnobs:
    """Schedule knobs (the auto-tuner's search space); 0 (-1 where 0 has a meaning of its own)
    means "choose from the shape and target".

    Width and register plan come from the target (`register_plan`): the vector width is its fp32
    lanes, a tile row at least 8 pixels, and rows x vectors x filters about the accumulators its
    registers leave. Measured on znver3 (AVX2): filter groups (union of the filters' kernels)
    are 2x slower on randomly pruned layers, and 16% faster when filter pairs share their
    (channel, pattern) kernels (F=2, R=4; `sparsec.fkw.KernelTable`); channel blocks (L1 reuse
    of input tiles across filters) pay where each filter keeps enough kernels a block, and on
    strided layers (`register_plan.pattern_channel_block`).
    """

    filters_per_group: int = 1  # filters sharing each loaded input vector (filter-level LRE)
    rows_per_step: int = 0  # output rows per step (0: the register plan's, whichever pads the height least)
    vector_width: int = 0  # SIMD lanes (0: the target's fp32 lanes)
    vectors_per_step: int = 0  # output vectors along the width per step (0: the register plan's)
    channel_block: int = -1  # input channels per L1-sized block (0: one block of all channels; -1: the
    # register plan's, from the kept kernels)
    tap_copies: int = 0  # input tile columns: 1 = one copy per stride phase, taps read it shifted;
    # 3 = one aligned copy per tap column (no unaligned or far loads); 0 = the target's choice
    filter_splits: int = 0  # slices of the filter groups per output tile in the parallel loop (0: enough
    # tasks for the target's threads)
    prefetch: int = -1  # the input tile of the kernel this many iterations ahead is prefetched into L1
    # (its channel is data, so no hardware prefetcher guesses it); 0 = none; -1 = the register plan's
    prefetch_next_tile: int = -1  # 1: the input lines the next task's tile copy will read first are
    # prefetched into L1 during this task's filters; 0 = none; -1 = the register plan's
    pair_rows: int = -1  # 1: the last column tile, where the plane fills at most half of its lanes,
    # takes output rows in pairs (a vector's low half one row, its high half the row `rows` below);
    # 0 = never; -1 = where that pads the plane less
    register_shifts: int = -1  # 1: each tile row is one aligned vector (its columns and halo: lanes - 2 output
    # columns a tile), loaded once and shifted in registers for the taps right of the first; 2: the same rows,
    # each tap column's products summed unshifted in a set of their own, the sets shifted once a block
    # (`shift_sums`); 0 = never; -1 = the register plan's, where the plane's rows take no more vectors that way
    runtime_taps: int = -1  # 1: one loop over a block's kernels whatever their pattern, each tap's input
    # address read from a per-kernel table (no loop entry per pattern); 0: one loop per pattern, taps
    # compile-time constants (rows shared by vertical taps loaded once); -1: the register plan's
    sum_chains: int = 0  # chains of sums per accumulator: 2 = the odd tap slots add into a second set, so
    # each sum waits on half as many FMAs a kernel; 1 = one; 0 = the register plan's (where 2 sets fit)

    def __post_init__(self) -> None:
        if self.tap_copies not in (0, 1, 3):
            raise ValueError(f"knob tap_copies must be 0, 1 or 3, got {self.tap_copies}")
        if self.filters_per_group < 1:
            raise ValueError(f"knob filters_per_group must be >= 1, got {self.filters_per_group}")
        for name in ("rows_per_step", "vector_width", "vectors_per_step", "filter_splits"):
            if getattr(self, name) < 0:
                raise ValueError(f"knob {name} must be >= 0, got {getattr(self, name)}")
        if self.register_shifts not in (-1, 0, 1, 2):
            raise ValueError(f"knob register_shifts must be 0, 1 or 2 (or -1: the target's choice), "
                             f"got {self.register_shifts}")
        for name in ("prefetch_next_tile", "pair_rows", "runtime_taps"):
            if getattr(self, name) not in (-1, 0, 1):
                raise ValueError(f"knob {name} must be 0 or 1 (or -1: the target's choice), got {getattr(self, name)}")
        if self.sum_chains not in (0, 1, 2):
            raise ValueError(f"knob sum_chains must be 1 or 2 (or 0: the target's choice), got {self.sum_chains}")
        if self.sum_chains == 2 and self.register_shifts == 2:
            raise ValueError("knob sum_chains=2 does not go with register_shifts=2: its tap columns' sets of sums "
                             "are the chains; ask for sum_chains=1 (or 0)")
        for name in ("prefetch", "channel_block"):
            if getattr(self, name) < -1:
                raise ValueError(f"knob {name} must be >= 0 (or -1: the target's choice), got {getattr(self, name)}")


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
    rows: int  # accumulator rows per tile (output rows: `out_rows`)
    lanes: int
    vecs: int  # vectors per accumulator row
    tap_copies: int = 1  # 1: one tile copy per stride phase; 3: one aligned copy per tap column
    channel_block: int = 0  # input channels per block (0: one block)
    line_floats: int = 16  # float32s in the target's cache line
    fold: int = 1  # output rows per vector: its lanes split in `fold` parts; part j of accumulator row
    # r is the tile's output row r + j * rows (see `_paired_column`)
    shifted: bool = False  # a tile row is one vector: its lanes hold the output columns and their halo,
    # the taps right of the first read it shifted in registers (`register_shifts`)
    shift_sums: bool = False  # (shifted rows) the shift moves to the sums: one set per tap column

    @property
    def cols_per_vec(self) -> int:
        """Output columns one vector covers (its lanes, or one part of them where rows fold, or
        all but the halo's where taps shift the row in registers)."""
        if self.shifted:
            return self.lanes - 2 * self.dilations[1]
        return self.lanes // self.fold

    @property
    def out_rows(self) -> int:
        """Output rows per tile."""
        return self.rows * self.fold

    @property
    def acc_w(self) -> int:
        """Lanes of one accumulator row."""
        return self.lanes * self.vecs

    @property
    def oh(self) -> int:
        return conv_output_size(self.h, self.pads[0], self.pads[2], 3, self.strides[0], self.dilations[0])

    @property
    def ow(self) -> int:
        return conv_output_size(self.w, self.pads[1], self.pads[3], 3, self.strides[1], self.dilations[1])

    @property
    def tile_w(self) -> int:
        return self.cols_per_vec * self.vecs

    @property
    def tiles_y(self) -> int:
        return -(-self.oh // self.out_rows)

    @property
    def tiles_x(self) -> int:
        return -(-self.ow // self.tile_w)

    @property
    def padded_area(self) -> int:
        """Output pixels the tiles compute, the padding past the plane's edges included."""
        return self.tiles_y * self.out_rows * self.tiles_x * self.tile_w

    @property
    def in_rows(self) -> int:
        """Rows of one tile's input copy: the input rows it reads, or with folded rows its entries,
        each the `fold` input rows its vector parts read."""
        return (self.rows - 1) * self.strides[0] + 2 * self.dilations[0] + 1

    @property
    def slots(self) -> int:
        """Column copies of each input tile row: stride phases, or one per tap column."""
        return 3 if self.tap_copies == 3 else self.strides[1]

    @property
    def pitch(self) -> int:
        """Floats from one tile row to the next: qw, or `blocked_pitch` where channel blocks keep
        the tile in L1."""
        if self.fold > 1:
            return self.acc_w  # an entry: one vector, its parts side by side
        return self.blocked_pitch if 0 < self.channel_block < self.c else self.qw

    @property
    def blocked_pitch(self) -> int:
        """The row pitch inside channel blocks: a whole cache line where a one-copy row fits in one,
        so no vector load crosses a line (measured on znver3 with blocks of 32-64 channels: L1
        1.04-1.05x over the packed rows; unblocked, the 1.6x larger tile streams from L2 slower
        than the split loads it saves, 0.95-0.98x)."""
        return self.line_floats if self.tap_copies == 1 and self.qw <= self.line_floats else self.qw

    @property
    def qw(self) -> int:
        """Input columns of one slot: a phase's columns plus the halo, or exactly the tile's."""
        return self.tile_w if self.tap_copies == 3 else self.tile_w + (2 * self.dilations[1]) // self.strides[1]

    @property
    def channel_floats(self) -> int:
        """Floats of one channel's rows in a tile (unfolded rows)."""
        return self.in_rows * self.slots * self.pitch

    def task_tile_shape(self) -> tuple[int, ...]:
        """The shape of a task's own input tile: [.., c, row, slot, column], or with folded rows
        [.., c, slot, entry x column] (a slot's entries back to back)."""
        if self.fold > 1:
            return (1, 1, 1, self.c, self.slots, self.in_rows * self.pitch)
        return (1, 1, 1, self.c, self.in_rows, self.slots, self.pitch)

    def task_tile_index(self, c, row, slot, q) -> list:
        """The index of (channel, row, slot, column) in a task's own input tile."""
        if self.fold > 1:
            if isinstance(q, tirx.Ramp):  # a vector: its base moves (TVM's bound analysis takes no Ramp + scalar)
                return [0, 0, 0, c, slot, tirx.Ramp(row * self.pitch + q.base, q.stride, q.lanes)]
            return [0, 0, 0, c, slot, row * self.pitch + q]
        return [0, 0, 0, c, row, slot, q]

    def tile_bytes(self, channels: int = 0, padded: bool = False) -> int:
        """Bytes the kernels read of one output tile's input rows for `channels` channels (0: every
        channel; rows padded to a line count their read part), or with `padded` the bytes those
        rows fill inside a channel block (`blocked_pitch` a row)."""
        row = self.blocked_pitch if padded else self.qw
        return min(channels or self.c, self.c) * self.in_rows * self.slots * row * 4

    def column(self, kx: int) -> tuple[int, int]:
        """(slot, column offset inside the slot) that taps of window column kx read."""
        if self.tap_copies == 3:
            return kx, 0
        col = kx * self.dilations[1]
        return col % self.strides[1], col // self.strides[1]

    def source_col(self, tx, slot, q):
        """The input column that slot `slot`, column `q` of column tile `tx` holds."""
        shift = slot * self.dilations[1] if self.tap_copies == 3 else slot
        return (tx * self.tile_w + q) * self.strides[1] + shift - self.pads[1]


@dataclass(frozen=True)
class _Tile:
    """Loop variables naming one output tile."""

    n: object
    ty: object
    tx: object

    def oy0(self, g: _Geometry):
        return self.ty * g.out_rows

    def ox0(self, g: _Geometry):
        return self.tx * g.tile_w


def _ramp(base, lanes: int):
    return tirx.Ramp(base, 1, lanes)


def _vec(v: int, lanes: int):
    return _ramp(v * lanes, lanes)


def _i32(x):
    return tirx.Cast("int32", x)


def _zero(lanes: int):
    return tirx.Broadcast(tirx.const(0.0, "float32"), lanes)


def _inner_tiles(g: _Geometry) -> tuple[int, int]:
    """Column tiles [lo, hi) whose input columns all lie inside the image (no padding)."""
    first_col = lambda tx: g.source_col(tx, 0, 0)  # noqa: E731
    last_col = lambda tx: g.source_col(tx, g.slots - 1, g.qw - 1)  # noqa: E731
    inside = [tx for tx in range(g.tiles_x) if first_col(tx) >= 0 and last_col(tx) < g.w]
    return (inside[0], inside[-1] + 1) if inside else (0, 0)


def _copy_row(data, g: _Geometry, n, c, y, tx, checked: bool, store) -> None:
    """store(slot, q, value) for every column of column tile tx's input row y; `checked`
    guards columns in the padding."""
    for ph in range(g.slots):
        with T.serial(0, g.qw) as q:
            x = g.source_col(tx, ph, q)
            val = data[n, c, y, x]
            if checked:
                val = tirx.if_then_else(tirx.all(x >= 0, x < g.w), val, tirx.const(0.0, "float32"))
            store(ph, q, val)
        if g.pitch > g.qw and g.fold == 1:  # written, or TVM shrinks the buffer to the columns read
            with T.serial(g.qw, g.pitch) as q:
                store(ph, q, tirx.const(0.0, "float32"))


def _emit_tile_row(data, xt, g: _Geometry, n, c, ty, r, y, tiles: range, checked: bool):
    """One input row of the column tiles `tiles`."""
    with T.serial(tiles.start, tiles.stop) as tx:
        _copy_row(data, g, n, c, y, tx, checked, lambda ph, q, v: T.buffer_store(xt, v, [n, ty, tx, c, r, ph, q]))


def _emit_tile_copy(data, xt, g: _Geometry, t: "_Tile") -> None:
    """xt at (c, r, ph, q) (`task_tile_index`): one output tile's input rows for every channel, copied
    by the task that computes the tile, just before it does (they stay in its cache: a prologue
    copying all tiles writes them to memory and reads them back)."""
    lo, hi = _inner_tiles(g)
    width = g.pitch if g.fold == 1 else g.qw  # of the part one input row fills
    with T.serial(0, g.c) as c:
        with T.serial(0, g.in_rows) as r:
            for part in range(g.fold):
                y = (t.ty * g.out_rows + part * g.rows) * g.strides[0] + r - g.pads[0]
                store = lambda ph, q, v, part=part: T.buffer_store(  # noqa: E731
                    xt, v, g.task_tile_index(c, r, ph, part * g.qw + q))
                with T.If(tirx.all(y >= 0, y < g.h)):
                    with T.Then():
                        with T.If(tirx.all(t.tx >= lo, t.tx < hi)):
                            with T.Then():
                                _copy_row(data, g, t.n, c, y, t.tx, False, store)
                            with T.Else():
                                _copy_row(data, g, t.n, c, y, t.tx, True, store)
                    with T.Else():
                        with T.serial(0, g.slots * width) as i:
                            store(i // width, i % width, tirx.const(0.0, "float32"))


def _emit_tiling(data, xt, g: _Geometry) -> None:
    """xt[n, ty, tx, c, r, ph, q] = data[n, c, ty*R*sh + r - pad_top, (tx*W + q)*sw + ph - pad_left],
    zero where that falls in the padding. Inner column tiles copy without checks (vectorisable)."""
    lo, hi = _inner_tiles(g)
    with T.parallel(0, g.n * g.c) as nc:
        n, c = nc // g.c, nc % g.c
        with T.serial(0, g.tiles_y) as ty:
            with T.serial(0, g.in_rows) as r:
                y = ty * g.out_rows * g.strides[0] + r - g.pads[0]
                with T.If(tirx.all(y >= 0, y < g.h)):
                    with T.Then():
                        for tiles, checked in ((range(0, lo), True), (range(lo, hi), False),
                                               (range(max(lo, hi), g.tiles_x), True)):
                            if len(tiles):
                                _emit_tile_row(data, xt, g, n, c, ty, r, y, tiles, checked)
                    with T.Else():
                        with T.serial(0, g.tiles_x * g.slots * g.pitch) as i:
                            idx = [n, ty, i // (g.slots * g.pitch), c, r, i // g.pitch % g.slots, i % g.pitch]
                            T.buffer_store(xt, tirx.const(0.0, "float32"), idx)


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
    xt: object
    offset: object
    stride: object
    index: object
    weight: object
    order: object
    bias: object | None
    out: object
    by_lane: bool = False  # tap weights loaded as one 4-lane vector, used by lane
    prefetch: int = 0  # kernels ahead whose input tile is prefetched
    data: object = None  # the input: set when each task copies its own tile (xt then holds one tile)
    residual: object | None = None  # [N, O, OH, OW] like `out`: added before the activation
    prefetch_next_tile: bool = False  # the next task's new input lines prefetched (needs `data`)
    pool: bool = False  # a 2x2 stride-2 max pool after the activation: `out` holds the pooled plane
    chains: int = 1  # chains of sums per accumulator: 2 = the odd tap slots' products in a second buffer
    taps: object | None = None  # (K, T) int32: each kernel tap's offset in the flat tile (`runtime_taps`)

    def input(self, t: _Tile, c, row, slot, q):
        """The tiled input at (channel, row, slot, column) of tile t."""
        return self.xt[tuple(self._index(t, c, row, slot, q))]

    def tile_start(self, t: _Tile):
        """Where tile t's input (channel 0, row 0, slot 0, column 0) starts in `xt` flattened."""
        return self.xt.offset_of(self._index(t, 0, 0, 0, 0))[0]

    def _index(self, t: _Tile, c, row, slot, q) -> list:
        if self.data is not None:  # the task's own tile
            return self.g.task_tile_index(c, row, slot, q)
        return [t.n, t.ty, t.tx, c, row, slot, q]


def _row_consumers(taps, g: _Geometry) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """Kernel-level LRE: (input row offset, tap column) -> the (accumulator row, tap slot) pairs
    that read it, ordered column by column so each loaded vector dies young (shifted rows: row by
    row, so each row vector dies once its shifts are made; column by column kept all 16 rows of a
    14-row tile live and spilled them). (Folded rows: the entry, whose parts are as many rows
    apart as the parts of the accumulator row.)"""
    uses: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for t, tap in enumerate(taps):
        ky, kx = divmod(int(tap), 3)
        for r in range(g.rows):
            uses.setdefault((r * g.strides[0] + ky * g.dilations[0], kx), []).append((r, t))
    order = (lambda item: item[0]) if g.shifted else (lambda item: (item[0][1], item[0][0]))
    return dict(sorted(uses.items(), key=order))


def _tap_weight(x: _Ctx, k, f: int, tap: int, lanes: int):
    """w[k, f, tap] in every lane. By lane: the kernel's 4 tap weights are one 128-bit load and
    each FMA takes its weight from a lane of it (NEON `fmla v.4s, v.4s, v.s[i]`; wider vectors:
    the 4 weights in every 128-bit part, then an in-part shuffle per tap); else a broadcast
    scalar (x86: a broadcast load, folded into the FMA on AVX-512)."""
    if not x.by_lane:
        return tirx.Broadcast(x.weight[k, f, tap], lanes)
    four = x.weight[k, f, _ramp(0, 4)]
    if lanes == 4:
        return tirx.Shuffle([four], [tap] * 4)
    parts = lanes // 4
    every_part = tirx.Shuffle([four] * parts, list(range(4)) * parts)
    # a fence, or LLVM turns each tap's shuffle of the load back into its own broadcast load
    every_part = tirx.call_llvm_pure_intrin(f"float32x{lanes}", "llvm.arithmetic.fence", every_part)
    return tirx.Shuffle([every_part], [4 * (i // 4) + tap for i in range(lanes)])


def _emit_pattern_loop(x: _Ctx, acc, p: int, row, t: _Tile, odd=None, columns=None):
    """acc[f, r, v] += w[k, f, tap] * input(tap) over the kernels k of pattern p in the table's
    row (block, group); with `odd`, the odd tap slots' products go there (a second chain of sums);
    with `columns` (shifted sums), tap column kx's unshifted products go to columns[kx]."""
    g, lanes = x.g, x.g.lanes
    base = _i32(x.offset[row])
    with T.serial(base + _i32(x.stride[row, p]), base + _i32(x.stride[row, p + 1])) as k:
        c = _i32(x.index[k])
        if x.prefetch:
            _emit_prefetch(x, tirx.min(k + x.prefetch, x.index.shape[0] - 1), t)
        for (dy, kx), users in _row_consumers(x.patterns[p], g).items():
            ph, dq = g.column(kx)
            for v in range(g.vecs):
                if g.shifted:
                    src = _shifted_row(x, t, c, dy, 0 if columns else dq)
                else:
                    src = x.input(t, c, dy, ph, _ramp(v * lanes + dq, lanes))
                for f in range(x.nf):
                    for r, tap in users:
                        if columns:
                            sums = columns[kx]
                        else:
                            sums = odd if odd is not None and tap % 2 else acc
                        value = sums[f, r, _vec(v, lanes)] + _tap_weight(x, k, f, tap, lanes) * src
                        T.buffer_store(sums, value, [f, r, _vec(v, lanes)])


def _emit_runtime_taps_loop(x: _Ctx, acc, row, t: _Tile, odd=None):
    """acc[f, r, v] += w[k, f, tap] * input(tap) over every kernel k of the table's row (block, group),
    whatever its pattern: one loop, each tap's input address its `taps` entry, so no loop entry per
    pattern, but each tap loads its own rows (compile-time taps load a row vertical taps share once)."""
    g, lanes = x.g, x.g.lanes
    flat = T.decl_buffer((int(np.prod([int(d) for d in x.xt.shape])),), "float32", data=x.xt.data)
    tile = x.tile_start(t)
    row_step = g.strides[0] * g.slots * g.pitch
    base = _i32(x.offset[row])
    with T.serial(base + _i32(x.stride[row, 0]), base + _i32(x.stride[row, len(x.patterns)])) as k:
        if x.prefetch:
            _emit_prefetch(x, tirx.min(k + x.prefetch, x.index.shape[0] - 1), t)
        for tap in range(x.patterns.shape[1]):
            at = tile + x.taps[k, tap]
            for r in range(g.rows):
                for v in range(g.vecs):
                    src = flat[_ramp(at + r * row_step + v * lanes, lanes)]
                    for f in range(x.nf):
                        sums = odd if odd is not None and tap % 2 else acc
                        value = sums[f, r, _vec(v, lanes)] + _tap_weight(x, k, f, tap, lanes) * src
                        T.buffer_store(sums, value, [f, r, _vec(v, lanes)])


def tap_offsets(table: KernelTable, g: _Geometry) -> np.ndarray:
    """(K, T) int32: where each kernel's taps read row 0 of its tile, as offsets into the flattened
    tile (channel, row, slot, column) of `_Geometry.task_tile_shape`."""
    rows, patterns = table.stride.shape[0], len(table.patterns)
    counts = np.diff(table.stride.astype(np.int64), axis=1)
    pattern = np.repeat(np.tile(np.arange(patterns), rows), counts.ravel())
    ky, kx = np.divmod(table.patterns.astype(np.int64), 3)
    slot_col = np.array([g.column(int(c)) for c in range(3)])
    at_tap = ((ky * g.dilations[0]) * g.slots + slot_col[kx, 0]) * g.pitch + slot_col[kx, 1]  # (P, T)
    channel = table.index.astype(np.int64)[:, None] * g.channel_floats
    return (channel + at_tap[pattern]).astype(np.int32)


def _shifted_row(x: _Ctx, t: _Tile, c, dy, dq: int):
    """Tile row dy as one aligned vector, its lanes rotated by dq: lane i holds column i + dq (the
    last dq lanes, outside the tile's output columns, wrap around). The row is loaded once for
    every tap column (LLVM merges the equal loads); the fence keeps LLVM from turning load and
    rotation back into a load at the shifted, line-crossing address."""
    lanes = x.g.lanes
    row = tirx.call_llvm_pure_intrin(f"float32x{lanes}", "llvm.arithmetic.fence",
                                     x.input(t, c, dy, 0, _ramp(0, lanes)))
    return row if dq == 0 else tirx.Shuffle([row], [(dq + i) % lanes for i in range(lanes)])


def _emit_prefetch(x: _Ctx, k, t: _Tile):
    """Prefetch into L1 the input tile (every line of it) of kernel k's channel: the channels a
    filter's kernels read jump by data, so the hardware prefetchers cannot run ahead of them."""
    g = x.g
    c = _i32(x.index[k])
    row = g.slots * g.pitch
    for first in range(0, g.in_rows * row, g.line_floats):
        if g.fold > 1:  # slot-major
            slot, rest = divmod(first, g.in_rows * g.pitch)
            emit_prefetch(x.input(t, c, rest // g.pitch, slot, rest % g.pitch))
        else:
            emit_prefetch(x.input(t, c, first // row, first // g.pitch % g.slots, first % g.pitch))


def next_tile_columns(g: _Geometry) -> tuple[int, ...]:
    """Offsets from a tile's last input column, one column in each line its row holds that the
    row of the tile before it (one tile to the left) does not: the tile's advance along the
    input row, in lines, counted back from its end."""
    advance = g.tile_w * g.strides[1]
    return tuple(-k * g.line_floats for k in range(-(-advance // g.line_floats)))


def _clamp(v, size: int):
    return tirx.min(tirx.max(v, 0), size - 1)


def _emit_next_tile_prefetch(x: _Ctx, t: _Tile, step, steps: int):
    """Prefetch into L1 the input lines the next task's tile copy reads that this task's did not,
    for step `step` of this task's `steps` (block, group) iterations: each takes its share of the
    channels, so the misses overlap this task's FMAs. Unprefetched, the copy stalls on them: a
    row piece per channel and input row, each its own stream, too many for the hardware
    prefetchers (the first tile of each row band, its lines all new, gets only its last ones)."""
    g = x.g
    per_image = g.tiles_y * g.tiles_x
    nxt = tirx.min((t.n * g.tiles_y + t.ty) * g.tiles_x + t.tx + 1, g.n * per_image - 1)
    n, ty, tx = nxt // per_image, nxt % per_image // g.tiles_x, nxt % g.tiles_x
    last = g.source_col(tx, g.slots - 1, g.qw - 1)
    first_c = (step * g.c + steps - 1) // steps
    with T.serial(0, ((step + 1) * g.c + steps - 1) // steps - first_c) as i:
        for r in range(g.in_rows):
            y = _clamp(ty * g.out_rows * g.strides[0] + r - g.pads[0], g.h)
            for offset in next_tile_columns(g):
                emit_prefetch(x.data[n, first_c + i, y, _clamp(last + offset, g.w)])


def _emit_block(x: _Ctx, acc, blk, grp, t: _Tile):
    """acc += the kernels of block `blk` for group `grp`, pattern by pattern; with two chains of
    sums, the odd tap slots' products go to a second set that joins acc at the end."""
    odd = None
    if x.chains == 2:
        odd = _local_acc(x, "odd")
        _emit_copy(odd, None, x)
    columns = None
    if x.g.shift_sums:
        columns = [acc] + [_local_acc(x, f"column{kx}") for kx in range(1, SHIFTED_SUM_SETS)]
        for sums in columns[1:]:
            _emit_copy(sums, None, x)
    if x.taps is not None:
        _emit_runtime_taps_loop(x, acc, blk * x.num_groups + grp, t, odd)
    else:
        for p in range(len(x.patterns)):
            _emit_pattern_loop(x, acc, p, blk * x.num_groups + grp, t, odd, columns)
    if odd is not None:
        _emit_fold(acc, odd, x)
    if columns:
        _emit_shifted_fold(acc, columns, x)


def _emit_fold(acc, odd, x: _Ctx):
    """acc += odd, for one group."""
    lanes = x.g.lanes
    for f in range(x.nf):
        for r in range(x.g.rows):
            for v in range(x.g.vecs):
                T.buffer_store(acc, acc[f, r, _vec(v, lanes)] + odd[f, r, _vec(v, lanes)], [f, r, _vec(v, lanes)])


def _emit_shifted_fold(acc, columns, x: _Ctx):
    """acc += tap column kx's sums rotated by its shift (lane i takes lane i + shift: the product of
    the row's lane i + shift, as a shifted row would have put in lane i), for one group."""
    lanes = x.g.lanes
    for f in range(x.nf):
        for r in range(x.g.rows):
            value = acc[f, r, _vec(0, lanes)]
            for kx in range(1, SHIFTED_SUM_SETS):
                shift = x.g.column(kx)[1]
                sums = columns[kx][f, r, _vec(0, lanes)]
                value = value + tirx.Shuffle([sums], [(shift + i) % lanes for i in range(lanes)])
            T.buffer_store(acc, value, [f, r, _vec(0, lanes)])


def _emit_copy(dst, src, x: _Ctx, dst_pre=(), src_pre=()):
    """dst[*dst_pre, f, r, :] = src[*src_pre, f, r, :] (zeros if src is None) for one group."""
    lanes = x.g.lanes
    for f in range(x.nf):
        for r in range(x.g.rows):
            for v in range(x.g.vecs):
                value = src[(*src_pre, f, r, _vec(v, lanes))] if src is not None else _zero(lanes)
                T.buffer_store(dst, value, [*dst_pre, f, r, _vec(v, lanes)])


def _bias_act(x: _Ctx, val, filt, lanes: int, at: list):
    """act(val + bias[filt] + residual[at]); `at` indexes `out` (the original channel `filt`)."""
    if x.bias is not None:
        bias = x.bias[filt]
        val = val + (tirx.Broadcast(bias, lanes) if lanes > 1 else bias)
    if x.residual is not None:
        val = val + x.residual[tuple(at)]
    return apply_activation(val, x.act, lanes)


@contextmanager
def _edge_columns(last_col, width: int):
    """The body runs where `last_col` is inside the plane: a tile sticking out of it stores its columns
    one by one, each lane of the accumulators a constant index. (A loop over them indexed the
    accumulator buffer with its variable, so LLVM kept the accumulators in memory, stored and
    reloaded around every pattern loop of every tile: 28-wide planes ran 1.06-1.08x slower than
    32-wide ones with as many tiles, on znver3.)"""
    with T.If(last_col < width):
        with T.Then():
            yield


def _emit_store_row(x: _Ctx, acc, f: int, r: int, part: int, filt, t: _Tile):
    """out[n, filt, oy, ox0:] = act(acc[f, r, part's lanes] + bias + residual), oy the output row of
    that part of accumulator row r: vectors unless the tile sticks out."""
    g, oy, ox0 = x.g, t.oy0(x.g) + r + part * x.g.rows, t.ox0(x.g)
    cols = g.cols_per_vec
    lane = lambda col: col // cols * g.lanes + part * cols + col % cols  # noqa: E731  (acc lane of a column)
    with T.If(ox0 + g.tile_w <= g.ow):
        with T.Then():
            for v in range(g.vecs):
                at = [t.n, filt, oy, _ramp(ox0 + v * cols, cols)]
                value = acc[f, r, _ramp(lane(v * cols), cols)]
                T.buffer_store(x.out, _bias_act(x, value, filt, cols, at), at)
        with T.Else():  # columns unrolled: a loop indexing acc would keep it in memory (see _edge_columns)
            for col in range(g.tile_w):
                with _edge_columns(ox0 + col, g.ow):
                    at = [t.n, filt, oy, ox0 + col]
                    T.buffer_store(x.out, _bias_act(x, acc[f, r, lane(col)], filt, 1, at), at)


def _emit_store_pooled_rows(x: _Ctx, acc, f: int, r: int, filt, t: _Tile):
    """out[n, filt, oy / 2, ox0 / 2:] = the max over 2x2 windows of act(acc[f, r:r+2, :] + bias +
    residual): the two rows' maximum, then its even lanes against its odd ones; a window past the
    plane's last whole pair of columns is dropped (floor), as a tile sticking out is. (Shifted
    rows: a vector's output columns, lanes - 2 of them.)"""
    g, oy, ox0 = x.g, t.oy0(x.g) + r, t.ox0(x.g)
    cols = g.cols_per_vec
    half = cols // 2
    with T.If(ox0 + g.tile_w <= g.ow):
        with T.Then():
            for v in range(g.vecs):
                rows = [_bias_act(x, acc[f, r + i, _ramp(v * g.lanes, cols)], filt, cols,
                                  [t.n, filt, oy + i, _ramp(ox0 + v * cols, cols)]) for i in (0, 1)]
                both = tirx.max(*rows)
                pooled = tirx.max(tirx.Shuffle([both], list(range(0, cols, 2))),
                                  tirx.Shuffle([both], list(range(1, cols, 2))))
                T.buffer_store(x.out, pooled, [t.n, filt, oy // 2, _ramp(ox0 // 2 + v * half, half)])
        with T.Else():  # windows unrolled, as in _emit_store_row
            for col in range(half * g.vecs):
                with _edge_columns(ox0 + 2 * col + 1, g.ow):
                    taps = [_bias_act(x, acc[f, r + i, 2 * col + j], filt, 1, [t.n, filt, oy + i, ox0 + 2 * col + j])
                            for i in (0, 1) for j in (0, 1)]
                    T.buffer_store(x.out, tirx.max(tirx.max(taps[0], taps[1]), tirx.max(taps[2], taps[3])),
                                   [t.n, filt, oy // 2, ox0 // 2 + col])


EPILOGUE_AHEAD = 2  # filter groups


def _emit_epilogue_prefetch(x: _Ctx, grp, t: _Tile):
    """Prefetch for writing (and the residual for reading) the output lines of the group
    `EPILOGUE_AHEAD` groups on: with channel blocks every group's epilogue runs after the last block,
    one burst of stores to rows scattered by `filter_order`, each line's miss (at worst a trip to
    the other core, which wrote the line's other half) otherwise met one after the other. Measured
    on znver4, kernels alone, 2 threads: L3's shape (256 x 14x14) 1.009x near / 1.028x far, L2's
    and 512 x 7x7 1.00x; ResNet-50 1.000x near / 1.006x far."""
    g = x.g
    for f in range(x.nf):
        slot = tirx.min((grp + EPILOGUE_AHEAD) * x.nf + f, x.num_filters - 1)
        filt = _i32(x.order[slot])
        for r in range(g.rows):
            oy = tirx.min(t.oy0(g) + r, g.oh - 1)
            for col in (*range(0, g.tile_w, g.line_floats), g.tile_w - 1):
                ox = tirx.min(t.ox0(g) + col, g.ow - 1)
                emit_prefetch(x.out[t.n, filt, oy, ox], write=True)
                if x.residual is not None:
                    emit_prefetch(x.residual[t.n, filt, oy, ox])


def _emit_epilogue(x: _Ctx, acc, grp, t: _Tile):
    """Bias, activation, and the store through `filter_order` into the original channels (with a
    fused pool: rows in pairs, each pair's pooled row)."""
    if not x.pool and x.g.fold == 1:
        _emit_epilogue_prefetch(x, grp, t)
    for f in range(x.nf):
        slot = grp * x.nf + f
        with T.If(slot < x.num_filters):
            with T.Then():
                filt = _i32(x.order[slot])
                if x.pool:
                    for r in range(0, x.g.rows, 2):
                        with T.If(t.oy0(x.g) + r + 1 < x.g.oh):
                            with T.Then():
                                _emit_store_pooled_rows(x, acc, f, r, filt, t)
                else:
                    for r in range(x.g.rows):
                        for part in range(x.g.fold):
                            with T.If(t.oy0(x.g) + r + part * x.g.rows < x.g.oh):
                                with T.Then():
                                    _emit_store_row(x, acc, f, r, part, filt, t)


def _local_acc(x: _Ctx, name: str = "acc"):
    # "global" scope: TVM 0.27 puts small global allocations on the stack, where LLVM keeps
    # them in registers across the pattern loops (while every index into it is a constant);
    # "local" ones become heap workspaces.
    acc = T.alloc_buffer((x.nf, x.g.rows, x.g.acc_w), "float32")
    IRBuilder.name(name, acc)
    return acc


def _emit_tile_unblocked(x: _Ctx, t: _Tile, groups: _Groups):
    """One channel block: accumulators start at zero and go straight to the epilogue."""
    # loops over groups start at 0 (plus an offset): TVM 0.27 miscompiles a loop whose start is
    # not constant when nested loops' bounds use its variable
    with T.serial(0, groups.count) as gi:
        grp = groups.first + gi
        acc = _local_acc(x)
        _emit_copy(acc, None, x)
        if x.prefetch_next_tile:
            _emit_next_tile_prefetch(x, t, gi, x.num_groups)
        _emit_block(x, acc, 0, grp, t)
        _emit_epilogue(x, acc, grp, t)


def _emit_tile_blocked(x: _Ctx, t: _Tile, groups: _Groups):
    """Channel blocks outside, groups inside: a block's input tiles stay in L1 while every
    group uses them; partial sums wait in a per-tile buffer between blocks."""
    part = T.alloc_buffer((groups.most, x.nf, x.g.rows, x.g.acc_w), "float32")
    with T.serial(0, groups.count) as gi:
        _emit_copy(part, None, x, dst_pre=(gi,))
    with T.serial(0, x.num_blocks) as blk:
        with T.serial(0, groups.count) as gi:
            acc = _local_acc(x)
            _emit_copy(acc, part, x, src_pre=(gi,))
            if x.prefetch_next_tile:
                _emit_next_tile_prefetch(x, t, blk * x.num_groups + gi, x.num_blocks * x.num_groups)
            _emit_block(x, acc, blk, groups.first + gi, t)
            _emit_copy(part, acc, x, dst_pre=(gi,))
    with T.serial(0, groups.count) as gi:
        acc = _local_acc(x)
        _emit_copy(acc, part, x, src_pre=(gi,))
        _emit_epilogue(x, acc, groups.first + gi, t)


@dataclass(frozen=True)
class _Groups:
    """The filter groups one parallel task computes: [first, first + count), count <= most."""

    first: object
    count: object
    most: int


def _emit_main(x: _Ctx, splits: int, paired: bool):
    """Parallel over output tiles x `splits` slices of the filter groups: each task reads its
    own input tile. Slices keep both cores busy when a plane has fewer tiles than threads
    (a 14x14 plane is one tile). (Tasks of several column tiles sharing each pass over the
    weights measured 5-35% slower: the weights stream well, the extra input tiles crowd L2.)
    `paired`: the last column of tiles takes its rows in pairs (`_paired_column`)."""
    g = x.g
    most = -(-x.num_groups // splits)
    pairs = _paired_column(g)
    # a paired tile costs more than an unpaired one (its copy is larger), so its tasks are spread
    # out: each thread takes a contiguous range of the tasks
    with_pairs = _paired_tasks(g)
    per_image = _tasks_per_image(g, paired)
    with T.parallel(0, g.n * per_image * splits) as task:
        tile, part = task // splits, task % splits
        n, rest = tile // per_image, tile % per_image
        groups = _Groups(part * most, tirx.max(tirx.min(most, x.num_groups - part * most), 0), most)
        if not paired:
            _emit_task(x, _Tile(n, rest // g.tiles_x, rest % g.tiles_x), groups)
        else:
            _emit_paired_or_full(x, pairs, with_pairs, n, rest, groups)


def _emit_paired_or_full(x: _Ctx, pairs: _Geometry, tasks: "_PairedTasks", n, rest, groups: "_Groups"):
    """Task `rest` of image n where the last column's rows are paired: a paired tile or a full one."""
    g = x.g
    last = (g.tiles_x - 1) * g.tile_w // pairs.tile_w  # the last column tile, in the pairs' columns
    # no prefetch of the kernels' tiles: three tap copies (`register_plan.pattern_prefetch`)
    x_pairs = replace(x, g=pairs, prefetch=0, prefetch_next_tile=False)
    if tasks.full == 0:  # the plane is one column of tiles
        _emit_task(x_pairs, _Tile(n, rest, last), groups)
        return
    with T.If(tasks.is_paired(rest)):
        with T.Then():
            _emit_task(x_pairs, _Tile(n, tasks.paired_index(rest), last), groups)
        with T.Else():
            full = tasks.full_index(rest)
            _emit_task(x, _Tile(n, full // (g.tiles_x - 1), full % (g.tiles_x - 1)), groups)


def _paired_tasks(g: _Geometry) -> "_PairedTasks":
    """One image's tasks with the last column's rows in pairs."""
    return _PairedTasks(g.tiles_y * (g.tiles_x - 1), _paired_column(g).tiles_y)


def _tasks_per_image(g: _Geometry, paired: bool) -> int:
    return _paired_tasks(g).count if paired else g.tiles_y * g.tiles_x


@dataclass(frozen=True)
class _PairedTasks:
    """`full` unpaired and `paired` paired tasks of one image, the paired ones spread evenly: paired
    task k is task ((2k + 1) * count) // (2 * paired), the middle of its share of the tasks."""

    full: int
    paired: int

    @property
    def count(self) -> int:
        return self.full + self.paired

    def _paired_up_to(self, i):
        """Paired tasks among tasks 0..i: (2 * paired * (i + 1) + count - 1) // (2 * count)."""
        return tirx.min((2 * self.paired * i + self._offset) // (2 * self.count), self.paired)

    @property
    def _offset(self) -> int:
        return 2 * self.paired + self.count - 1

    def is_paired(self, i):
        # the count above steps up at i: its numerator passed a multiple of 2 * count within its
        # last step (comparing the two quotients instead made TVM 0.27's simplifier divide by zero)
        return (2 * self.paired * i + self._offset) % (2 * self.count) < 2 * self.paired

    def paired_index(self, i):
        return self._paired_up_to(i) - 1

    def full_index(self, i):
        return i - self._paired_up_to(i)


def _emit_task(x: _Ctx, t: _Tile, groups: _Groups):
    """One output tile (for some filter groups): its input tile copied unless a prologue did, then
    its filters."""
    if x.data is not None:
        g = x.g
        x = replace(x, xt=T.alloc_buffer(g.task_tile_shape(), "float32"))
        _emit_tile_copy(x.data, x.xt, g, t)
    if x.num_blocks == 1:
        _emit_tile_unblocked(x, t, groups)
    else:
        _emit_tile_blocked(x, t, groups)


def _paired_column(g: _Geometry) -> _Geometry:
    """The geometry of the last column of tiles with its rows in pairs: half the columns per vector,
    twice the output rows per tile (a 28-wide plane in 8-lane tiles: the last tile's columns 24-27
    of two rows per vector, instead of 4 idle lanes in each). Accumulator row r holds output rows
    r and r + rows, so a vector of input rows a and a + rows serves every tap that row r's would
    (vertical load sharing as in unpaired tiles; pairs of adjacent rows lost it: a paired tile
    cost 1.4-1.5x an unpaired one on znver3). One copy per tap column, entry a of each holding
    those two rows side by side: each vector is one aligned load. (The vector's halves loaded
    apart and joined by an insert: 1.7-2.5x.)"""
    return replace(g, fold=2, tap_copies=3)


def pairs_rows(g: _Geometry) -> bool:
    """Whether pairing the last column's rows leaves less padding: one vector a tile row, stride 1
    down the plane (the pairs' copy holds rows `rows` apart), the last column tile at most half
    filled, and fewer padded pixels (a plane one tile high gains nothing: the pairs pad it as
    much). Measured on znver3, 2 threads, against the unpaired kernel in one process: 28-wide
    planes at 128-512 channels 1.02-1.12x (the paired tiles' copies, three tap columns, cost most
    where 512 channels of them crowd L2)."""
    if g.shifted or g.vecs != 1 or g.fold != 1 or g.strides[0] != 1 or g.lanes % 2:
        return False
    if not 0 < g.ow % g.tile_w <= g.lanes // 2:
        return False
    return _padded_area(g, True) < g.padded_area


def _auto_shifts(g: _Geometry, target: Target, pool: bool, knobs: PatternConvKnobs, asked_copies: int = 0
                 ) -> int:
    """The register plan's `register_shifts` for the tile rows of `g` (its tap copies the plan's, or
    `asked_copies`) and `knobs`' filter groups: 0 unless shifted rows (one copy) take no more vectors
    per output row than whole-vector tiles would, row pairs counting half (28 columns: 14 + 14
    against 16 + 12; 56: 4 x 14 against 3 x 16 + 8 in pairs, more); then 2 (the sums shifted) where
    the target's plan says and two chains of sums were not asked for, else 1 where shifting the
    rows pays."""
    shifted = replace(g, tap_copies=1, shifted=True)
    if asked_copies == 3 or g.strides != (1, 1) or _shifts_problem(shifted, pool):  # strided: not measured
        return 0
    unshifted = g.ow / g.lanes if 0 < g.ow % g.lanes <= g.lanes // 2 else g.tiles_x  # paired: exact
    if shifted.tiles_x > unshifted:
        return 0
    if knobs.sum_chains != 2 and register_plan.pattern_shift_sums(target, g.lanes, knobs.filters_per_group):
        return 2
    return int(register_plan.pattern_register_shifts(target, g.tap_copies, g.lanes, shifted.tiles_x))


def _shifts_problem(g: _Geometry, pool: bool) -> str | None:
    """What keeps the tile rows of `g` from being shifted in registers (None: nothing); a fused
    pool needs whole column pairs in each vector."""
    odd_pool = pool and g.cols_per_vec % 2
    if g.tap_copies != 1 or g.vecs != 1 or g.strides[1] != 1 or g.cols_per_vec < 1 or g.fold != 1 or odd_pool:
        return (f"{g.tap_copies} tap copies, {g.vecs} vectors of {g.lanes} lanes, stride {g.strides[1]} along, "
                f"dilation {g.dilations[1]}{', row pairs' if g.fold != 1 else ''}"
                f"{', a pool on odd columns' if odd_pool else ''}")
    return None


def _shifts_refusal(asked: int, problem: str) -> str:
    return (f"knob register_shifts={asked} needs one tile copy, one vector a tile row wider than the kernel's "
            f"columns, stride 1 along the row, no row pairs, and with a fused pool even columns; got {problem}")


def _pairs_problem(g: _Geometry, filter_splits: int, pool: bool) -> str | None:
    """What keeps the tiles of `g` from pairing the last column's rows (None: nothing)."""
    if pool or filter_splits != 1 or not pairs_rows(g):
        return (f"{g.vecs} vectors of {g.lanes} lanes on a {g.oh}x{g.ow} output (stride {g.strides[0]} down), "
                f"{g.rows} rows, {filter_splits} slices{', a pool' if pool else ''}")
    return None


def register_shifts_problem(in_shape, strides, pads, dilations, knobs: PatternConvKnobs, *,
                            target: Target) -> str | None:
    """Why `knobs` (resolved: the tuner's candidates) cannot shift tile rows in registers, or None."""
    return _shifts_problem(replace(_geometry(in_shape, strides, pads, dilations, knobs, target), shifted=True), False)


def pair_rows_problem(in_shape, strides, pads, dilations, knobs: PatternConvKnobs, *, target: Target) -> str | None:
    """Why `knobs` (resolved: the tuner's candidates) cannot pair the last column's rows, or None."""
    return _pairs_problem(_geometry(in_shape, strides, pads, dilations, knobs, target), knobs.filter_splits, False)


def _padded_area(g: _Geometry, paired: bool) -> int:
    """Output pixels the tiles compute, the last column's as pairs with `paired`."""
    if not paired:
        return g.padded_area
    pairs = _paired_column(g)
    return g.tiles_y * g.out_rows * (g.tiles_x - 1) * g.tile_w + pairs.tiles_y * pairs.out_rows * pairs.tile_w


def auto_filter_splits(tasks: int, groups: int, threads: int) -> int:
    """Slices of the filter groups per tile: none while the tiles alone share evenly among the
    threads (a multiple of them, or at least 4 each), else the fewest slices giving every
    thread 4 tasks, at most one group each. (znver5, 2 threads: L3's single tile sliced 8 ways
    ran 1.45x; L2's 4 tiles unsliced 1.02x over 2 slices: each task then copies its own tile.)"""
    if tasks % threads == 0 or tasks >= 4 * threads:
        return 1
    return max(1, min(groups, -(-4 * threads // max(tasks, 1))))


def _auto_rows(oh: int, knobs: PatternConvKnobs, accumulators: int, even: bool = False) -> int:
    """About `accumulators` in all (rows x vectors x filters): enough FMA chains to cover the FMA
    latency, few enough not to spill; among want, want-1, want-2 rows the one that pads the
    height least (`even`: among the even ones, for a fused pool's row pairs)."""
    if knobs.rows_per_step:
        return knobs.rows_per_step
    want = max(1, min(oh, accumulators // (knobs.vectors_per_step * knobs.filters_per_group)))
    candidates = [r for r in (want, want - 1, want - 2) if r >= 1]
    if even:
        candidates = [r for r in (want, want - 1, want - 2, want - 3) if r >= 2 and r % 2 == 0] or [2]
    return min(candidates, key=lambda r: (-(-oh // r) * r - oh, -r))


def resolve_knobs(in_shape, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1),
                  knobs: PatternConvKnobs = PatternConvKnobs(), *, target: Target,
                  filters: int | None = None, kept: float | None = None, pooled: bool = False) -> PatternConvKnobs:
    """`knobs` with every 0 ("auto") replaced by the value the generator will use on `target`
    (`pooled`: for a kernel with a fused 2x2 max pool, whose rows come in pairs):
    among the register plan's vector counts, the tile (rows x vectors) that pads the output
    least, then the one with more accumulators; filter slices for `filters` filters and with
    them the next tile's prefetch (left 0 and -1 without them); channel blocks for `filters`
    filters keeping `kept` of their kernels (one block without them)."""
    tile = _resolve_tile(in_shape, strides, pads, dilations, knobs, target, filters, kept, pooled)
    tile = _resolve_pairs(_geometry(in_shape, strides, pads, dilations, tile, target), tile, pooled, filters,
                          target.threads)
    if not tile.sum_chains and tile.register_shifts == 2:
        tile = replace(tile, sum_chains=1)  # the tap columns' sets are the chains
    if not tile.sum_chains:
        accumulators = tile.rows_per_step * tile.vectors_per_step * tile.filters_per_group
        tile = replace(tile, sum_chains=register_plan.pattern_sum_chains(target, accumulators))
    if tile.prefetch_next_tile >= 0 or not tile.filter_splits:
        return tile
    input_bytes = 4 * int(np.prod([int(d) for d in in_shape]))
    prefetch = register_plan.pattern_next_tile_prefetch(target, tile.filter_splits == 1, input_bytes)
    return replace(tile, prefetch_next_tile=prefetch)


def _resolve_pairs(g: _Geometry, tile: PatternConvKnobs, pooled: bool, filters: int | None,
                   threads: int) -> PatternConvKnobs:
    """Row pairs in the last column (where they pad less; never with a fused pool, whose windows
    are whole rows) and filter slices for `filters` filters: pairs only with one slice (sliced
    filters share a prologue's copy of the tiles, and the pairs have tiles of their own), so
    pairs asked for take one slice, and automatic ones give way to the slices a plane needs."""
    auto = tile.pair_rows < 0
    pair = int(not pooled and tile.runtime_taps != 1 and pairs_rows(g)) if auto else tile.pair_rows

    def tasks(paired: int) -> int:
        return g.n * _tasks_per_image(g, bool(paired))

    if not tile.filter_splits and filters is not None:
        groups = -(-filters // tile.filters_per_group)
        splits = auto_filter_splits(tasks(pair), groups, threads)
        tile = replace(tile, filter_splits=1 if pair and not auto else splits)  # asked for pairs: one slice
        if tile.filter_splits > 1 and pair and auto:
            pair = 0
            tile = replace(tile, filter_splits=auto_filter_splits(tasks(pair), groups, threads))
    if tile.filter_splits > 1 and auto:
        pair = 0
    return replace(tile, pair_rows=pair)


def padded_work(in_shape, strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), *, target: Target) -> float:
    """Multiply-adds the kernel does per useful one on `target`: its tiles' output area over the
    output's (a 28-wide plane in 8-lane vectors computes 32 columns, a 7-wide one 8: 1.14; in rows
    shifted in registers, 2 x 14 columns in 16-lane vectors: 32 lanes as well)."""
    knobs = resolve_knobs(in_shape, strides, pads, dilations, target=target)
    g = _geometry(in_shape, strides, pads, dilations, replace(knobs, channel_block=0), target)
    halo_lanes = g.lanes / g.cols_per_vec if g.shifted else 1.0  # a shifted row's vector computes its halo's lanes
    return _padded_area(g, knobs.pair_rows == 1) * halo_lanes / (g.oh * g.ow)


def _resolve_tile(in_shape, strides, pads, dilations, knobs: PatternConvKnobs, target: Target,
                  filters: int | None, kept: float | None, pooled: bool = False) -> PatternConvKnobs:
    out_width = conv_output_size(int(in_shape[3]), pads[1], pads[3], 3, strides[1], dilations[1])
    lanes = knobs.vector_width or register_plan.pattern_lanes(target, out_width)
    copies = knobs.tap_copies or (1 if knobs.register_shifts in (1, 2) else register_plan.pattern_tap_copies(
        target, tuple(strides), kept or 0.0, knobs.filters_per_group, lanes))
    asked_copies = knobs.tap_copies
    knobs = replace(knobs, vector_width=lanes, tap_copies=copies)
    g = _geometry(in_shape, strides, pads, dilations, replace(knobs, rows_per_step=1, vectors_per_step=1), target)
    if g.shifted and g.cols_per_vec < 1:  # asked for, with a halo that fills the vector: no tile to size
        raise ValueError(_shifts_refusal(knobs.register_shifts, _shifts_problem(g, pooled)))
    if knobs.runtime_taps == 1 and knobs.register_shifts < 0:
        knobs = replace(knobs, register_shifts=0)  # the table's taps address unshifted rows
    if knobs.register_shifts < 0:
        shifts = _auto_shifts(g, target, pooled, knobs, asked_copies)
        copies = 1 if shifts else copies
        knobs = replace(knobs, register_shifts=shifts, tap_copies=copies)
        g = replace(g, tap_copies=copies, shifted=bool(shifts), shift_sums=shifts == 2)
    shift_sums = knobs.register_shifts == 2
    accumulators = register_plan.pattern_accumulators(target, knobs.filters_per_group, copies, shift_sums)
    accumulators //= SHIFTED_SUM_SETS if shift_sums else 1
    choices = (knobs.vectors_per_step,) if knobs.vectors_per_step else register_plan.pattern_vector_choices(target)
    tiles = [replace(knobs, vectors_per_step=v, rows_per_step=_auto_rows(g.oh, replace(knobs, vectors_per_step=v),
                                                                         accumulators, pooled)) for v in choices]

    def padded_area(k: PatternConvKnobs) -> tuple[int, int]:
        g = _geometry(in_shape, strides, pads, dilations, k, target)
        return g.padded_area, -k.rows_per_step * k.vectors_per_step

    tile = min(tiles, key=padded_area)
    if tile.runtime_taps < 0:
        auto = (not g.shifted and tile.pair_rows != 1
                and register_plan.pattern_runtime_taps(target, tuple(strides), lanes))
        tile = replace(tile, runtime_taps=int(auto))
    if tile.channel_block < 0:
        g = _geometry(in_shape, strides, pads, dilations, replace(tile, channel_block=0), target)
        block = register_plan.pattern_channel_block(target, g.c, kept or 0.0, g.tile_bytes(1),
                                                    (filters or 0) * g.rows * g.tile_w * 4, g.tap_copies,
                                                    g.tile_bytes(1, padded=True), g.ow, tile.runtime_taps == 1)
        tile = replace(tile, channel_block=block)
    if tile.prefetch >= 0:
        return tile
    block = _geometry(in_shape, strides, pads, dilations, tile, target).tile_bytes(tile.channel_block)
    return replace(tile, prefetch=register_plan.pattern_prefetch(target, tile.filters_per_group, copies, block))


def _geometry(in_shape, strides, pads, dilations, knobs: PatternConvKnobs, target: Target) -> _Geometry:
    n, c, h, w = (int(d) for d in in_shape)
    return _Geometry(n, c, h, w, tuple(strides), tuple(pads), tuple(dilations), knobs.rows_per_step,
                     knobs.vector_width, knobs.vectors_per_step, knobs.tap_copies or 1, knobs.channel_block,
                     target.cache_line_bytes // 4, shifted=knobs.register_shifts in (1, 2),
                     shift_sums=knobs.register_shifts == 2)


def pattern_conv_kernel(
    fkw: FKW,
    in_shape: tuple[int, int, int, int],
    *,
    strides=(1, 1),
    pads=(1, 1, 1, 1),
    dilations=(1, 1),
    bias: np.ndarray | None = None,
    activation: Activation | None = None,
    residual: bool = False,
    pool: bool = False,
    in_place: bool = False,
    target: Target,
    knobs: PatternConvKnobs = PatternConvKnobs(),
    name: str = "pattern_conv",
) -> Kernel:
    """The TIR kernel of `act(conv(data, fkw) + bias + residual)`, NCHW float32, see the module
    docstring; params (data, [residual], *constants, out), the residual shaped like the conv's
    output. `pool`: a 2x2 stride-2 max pool fused after the activation (floor: a last odd row or
    column is dropped), so `out` is the pooled plane and the conv's never reaches memory (VGG-16's
    64x224 layer with its pool 1.17-1.49x against the two kernels on znver3).
    `in_place`: no `out`, the result written over the residual (each element's residual read once,
    in the store that overwrites it; `Kernel.in_place`); not with `pool`.

    Constants (parameter order): the kernel table's offset, stride, index, weight and
    filter_order (the FKW's own arrays when groups and blocks are trivial), then bias.
    """
    if in_place and (pool or not residual):
        raise ValueError(f"an in-place pattern conv writes over its residual: it needs one and no fused pool, "
                         f"got residual={residual}, pool={pool}")
    kept = fkw.num_kernels / max(1, fkw.num_filters * int(in_shape[1]))
    knobs = resolve_knobs(in_shape, strides, pads, dilations, knobs, target=target, filters=fkw.num_filters, kept=kept,
                          pooled=pool)
    g = _geometry(in_shape, strides, pads, dilations, knobs, target)
    if pool and (g.rows % 2 or g.cols_per_vec % 2 or min(g.oh, g.ow) < 2):
        raise ValueError(f"a fused 2x2 max pool needs an even rows_per_step and columns a vector and a conv output "
                         f"of at least 2x2, got {g.rows} rows, {g.cols_per_vec} columns, {g.oh}x{g.ow}")
    if g.shifted and (problem := _shifts_problem(g, pool)):
        raise ValueError(_shifts_refusal(knobs.register_shifts, problem))
    if knobs.pair_rows == 1 and (problem := _pairs_problem(g, knobs.filter_splits, pool)):
        raise ValueError(f"knob pair_rows=1 needs one vector a tile row, stride 1 down the plane, a last column "
                         f"tile at most half filled, less padding than without pairs, one filter slice and no "
                         f"fused pool; got {problem}")
    if knobs.runtime_taps == 1 and (g.shifted or knobs.pair_rows == 1):
        raise ValueError("knob runtime_taps=1 needs unshifted tile rows (register_shifts=0) and no row pairs "
                         f"(pair_rows=0), got register_shifts={knobs.register_shifts}, pair_rows={knobs.pair_rows}")
    table = kernel_table(fkw, g.c, knobs.filters_per_group, knobs.channel_block)
    taps = (tap_offsets(table, g),) if knobs.runtime_taps == 1 else ()
    constants = table.arrays() + taps + ((np.asarray(bias, np.float32),) if bias is not None else ())
    by_lane = register_plan.weights_by_lane(target, knobs.filters_per_group) and table.patterns.shape[1] == 4
    func, out_shape = _build_func(g, table, knobs, constants, activation, name, by_lane, residual, pool, in_place)
    return Kernel(func, constants, out_shape, "float32", in_place=1 if in_place else None)


_CONST_NAMES = ("offset", "stride", "index", "weight", "order", "bias")


def _build_func(g: _Geometry, table: KernelTable, knobs, constants, act, name, by_lane: bool, residual: bool,
                pool: bool, in_place: bool = False) -> tuple[tirx.PrimFunc, tuple[int, ...]]:
    """The PrimFunc and its output shape (the pooled plane's with `pool`); `in_place`: the output is
    the residual's buffer (no `out` parameter)."""
    conv_shape = (g.n, table.num_filters, g.oh, g.ow)
    out_shape = (g.n, table.num_filters, g.oh // 2, g.ow // 2) if pool else conv_shape
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tirx.noalias": True, "global_symbol": name})
            data = T.arg("data", T.buffer((g.n, g.c, g.h, g.w), "float32"))
            res = T.arg("residual", T.buffer(conv_shape, "float32")) if residual else None
            names = _CONST_NAMES[:5] + (("taps",) if knobs.runtime_taps == 1 else ()) + _CONST_NAMES[5:]
            bufs = [T.arg(nm, T.buffer(a.shape, str(a.dtype))) for nm, a in zip(names, constants)]
            taps = bufs.pop(5) if knobs.runtime_taps == 1 else None
            out = res if in_place else T.arg("out", T.buffer(out_shape, "float32"))
            # one task per tile: it copies its own tile (measured on znver5, 1.04-1.28x over a
            # prologue copying every tile: VGG-16 conv1_2's shape 1.27x); sliced filters would copy it
            # once per slice, so they share a prologue's copy
            local = knobs.filter_splits == 1
            xt = None
            if not local:
                xt = T.alloc_buffer((g.n, g.tiles_y, g.tiles_x, g.c, g.in_rows, g.slots, g.pitch), "float32")
                _emit_tiling(data, xt, g)
            bias = bufs[5] if len(bufs) > 5 else None
            x = _Ctx(g, table.patterns, table.num_filters, table.filters_per_group, table.num_groups,
                     table.num_blocks, act, xt, *bufs[:5], bias, out, by_lane, knobs.prefetch,
                     data if local else None, res, local and knobs.prefetch_next_tile == 1, pool,
                     knobs.sum_chains, taps)
            _emit_main(x, knobs.filter_splits, knobs.pair_rows == 1)
    return ib.get(), out_shape
