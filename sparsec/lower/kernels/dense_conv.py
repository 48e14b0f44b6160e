"""Dense convolution (any stride, padding, dilation, groups) as a register-tiled implicit GEMM.

Data flow, three TE stages scheduled with `tvm.s_tir.Schedule`:
1. `xp`: the input copied once into zero-padded, stride-phase-split planes, each flattened with a
   row pitch `wq`. A tap (kh, kw) is then one plane plus a constant offset, and output pixel j
   (flattened with the same pitch) reads `xp[..., j + offset]`: the conv is a GEMM whose "B"
   rows are shifted windows of `xp` (no im2col), and every stride becomes stride 1.
2. `wide`: the conv over the pitch-`wq` pixel grid (columns past OW are junk), padded to whole
   tiles so no loop has a tail. Register tile: `out_block` filters (weights broadcast from a
   compile-time packing [O/ob, I/g, KH, KW, ob]) x `vectors` SIMD vectors of pixels; input
   channels are split in L1-sized blocks and partial sums stay in `wide` between blocks.
3. `out`: drop the junk columns, add the bias and the residual (if any), apply the activation. When pixel blocks can be
   whole output rows (the tile divides rows x wq), this runs right after each block, on sums
   still in cache; otherwise it is one more parallel pass.
Depthwise convs (one input channel per filter) have no channel reduction to tile: they are
parallel over channels with one channel's padded plane, sums and outputs kept in L1.
Dense 3x3 stride-1 convs with enough channels go to Winograd's F(m x m, 3x3) instead
(`winograd_conv`, knob `winograd`): a quarter of the multiplies for F(4x4). Unpadded 1x1 convs
with many channels go to `pointwise_conv` (knob `pointwise`): vectors across filters; the other
unpadded 1x1 convs to `pointwise_pixels`, the same register tile as here with the epilogue in
registers (knob `channel_block` unused: one block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from tvm import s_tir, te, tirx

from sparsec.ir.activation import Activation
from sparsec.lower.kernels import (
    depthwise_conv,
    pointwise_conv,
    pointwise_pixels,
    register_plan,
    winograd_conv,
    winograd_plan,
)
from sparsec.lower.kernels.common import (
    ConvShape,
    Kernel,
    apply_activation,
    ceil_div,
    conv_output_size,
    require_positive_knobs,
)
from sparsec.target import Target


@dataclass(frozen=True)
class DenseConvKnobs:
    """Schedule knobs (the auto-tuner's search space); 0 means "the target's register plan"."""

    out_block: int = 0  # filters per register tile (weights broadcast from memory)
    vectors: int = 0  # SIMD vectors of output pixels per register tile
    lanes: int = 0  # SIMD lanes (the target's fp32 lanes)
    tiles_per_block: int = 4  # register tiles along the pixels per parallel work item
    channel_block: int = 0  # input channels per block of the reduction (0: the register plan's)
    out_groups: int = 2  # filter groups in the parallel loop (load balance with few pixel blocks)
    dw_vectors: int = 8  # depthwise, the direct conv: most SIMD vectors of one output row per step
    depthwise: int = 0  # depthwise (square, 2-7 taps, stride 1 or 2): 2 = tap columns taken apart in registers
    # (`depthwise_conv`, `dw_rows` output rows a band), 1 = the direct conv, 0 = the plan's choice
    dw_rows: int = 0  # `depthwise_conv`: output rows per band (0: the register plan's)
    winograd: int = 0  # 3x3 stride 1: Winograd F(m x m, 3x3) output tile m (2 or 4), 1 = direct,
    # 0 = the plan's choice (`winograd_plan.auto_tile`)
    pointwise: int = 0  # 1x1 without padding: 2 = vectors across filters (`pointwise_conv`: out_block
    # pixels x `vectors` filter vectors), 1 = across pixels (the GEMM above), 0 = the plan's choice
    ranges: int = 0  # pointwise=2: the plane's pixels in this many ranges, one a thread (0: the plan's)

    def __post_init__(self) -> None:
        require_positive_knobs(self, auto=("out_block", "vectors", "lanes", "channel_block", "winograd", "pointwise",
                                           "depthwise", "dw_rows", "ranges"))
        if self.pointwise > 2:
            raise ValueError(f"knob pointwise must be 0 (auto), 1 (vectors of pixels) or 2 (vectors of filters), "
                             f"got {self.pointwise}")
        if self.depthwise > 2:
            raise ValueError(f"knob depthwise must be 0 (auto), 1 (the direct conv) or 2 (tap columns in registers), "
                             f"got {self.depthwise}")
        if self.winograd not in (0, 1, *winograd_plan.TRANSFORMS):
            raise ValueError(f"knob winograd must be 0 (auto), 1 (direct) or an output tile "
                             f"{sorted(winograd_plan.TRANSFORMS)}, got {self.winograd}")

    def resolved(self, target: Target) -> DenseConvKnobs:
        """These knobs with every 0 replaced by the target's register plan."""
        rows, vectors = register_plan.gemm_tile(target)
        return replace(self, out_block=self.out_block or rows, vectors=self.vectors or vectors,
                       lanes=self.lanes or target.lanes())


@dataclass(frozen=True)
class _Geometry(ConvShape):
    """One convolution's shapes and what the direct conv derives from them."""

    pitch: int = 0  # a phase plane's row pitch where the plan widens it (see `wq`)

    @property
    def depthwise(self) -> bool:
        return self.cg == 1

    def phases(self, axis: int) -> int:
        """Stride phases a kernel axis reads: 1 when every tap lands on phase 0 (e.g. 1x1)."""
        k, s, d = (self.kh, self.kw)[axis], self.strides[axis], self.dilations[axis]
        return 1 if all(t * d % s == 0 for t in range(k)) else s

    @property
    def planes(self) -> int:
        return self.phases(0) * self.phases(1)

    @property
    def wq(self) -> int:
        """Row pitch of a phase plane: the padded width per phase, and enough that an output
        row plus the widest tap shift never wraps into the next row."""
        padded = ceil_div(self.w + self.pads[1] + self.pads[3], self.strides[1])
        return max(padded, self.ow + (self.kw - 1) * self.dilations[1] // self.strides[1], self.pitch)

    @property
    def max_offset(self) -> int:
        return self.tap_offset(self.kh - 1, self.kw - 1)

    def tap_plane(self, kh, kw):
        """The phase plane tap (kh, kw) reads (works on ints and TE index expressions)."""
        (sh, sw), (dh, dw) = self.strides, self.dilations
        return (kh * dh % sh) * self.phases(1) + kw * dw % sw

    def tap_offset(self, kh, kw):
        """Flat offset of tap (kh, kw) inside its plane, relative to the output pixel."""
        (sh, sw), (dh, dw) = self.strides, self.dilations
        return kh * dh // sh * self.wq + kw * dw // sw


@dataclass(frozen=True)
class _Tiling:
    """How one convolution is tiled: register tile, blocks, padded extents."""

    ob: int  # filters per register tile
    vectors: int
    lanes: int
    tiles: int  # register tiles per parallel pixel block
    rb: int  # input channels per reduction block
    og: int  # filter groups in the parallel loop
    op: int  # filters padded to whole tiles
    jp: int  # flattened output pixels padded to whole blocks (depthwise: last pixel read + 1)
    row: int = 0  # depthwise: output columns computed per row (OW padded to whole steps)
    block_rows: int = 0  # whole output rows per pixel block (0: blocks ignore rows)

    @property
    def tile(self) -> int:
        """Pixels per register tile."""
        return self.lanes * self.vectors

    @property
    def block(self) -> int:
        return self.tile * self.tiles


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def _tile_shapes(g: _Geometry, k: DenseConvKnobs) -> list[tuple[int, int]]:
    """Candidate (filters, vectors) register tiles, each about out_block * vectors accumulators:
    the knobs' own, and 4 filters x more vectors (it pads fewer filters when O = 64, 512...).
    Grouped convs need a tile inside one group."""
    budget = k.out_block * k.vectors
    if g.groups > 1:
        ob = _largest_divisor(g.og, k.out_block)
        return [(ob, max(1, min(4, budget // ob)))]
    shapes = [(min(k.out_block, g.o), k.vectors)]
    if k.out_block != 4 and budget % 4 == 0 and budget // 4 <= 4:
        shapes.append((min(4, g.o), budget // 4))
    return shapes


def _gemm_plan(g: _Geometry, k: DenseConvKnobs, ob: int, vectors: int, aligned: bool):
    """The tiling for one register tile shape. `aligned`: pixel blocks of whole output rows
    (rows padded to whole blocks), so bias/activation/crop run right after each block, on data
    still in cache; None if no row count makes whole tiles. Else blocks of the flat pixels."""
    tile = k.lanes * vectors
    if aligned:
        unit = tile // math.gcd(g.wq, tile)  # fewest rows making whole tiles
        if unit > g.oh:
            return None
        target = max(1, round(k.tiles_per_block * tile / (unit * g.wq)))
        mult = min(range(1, max(target, 1) * 2 + 1),
                   key=lambda m: (ceil_div(g.oh, m * unit) * m * unit, abs(m - target)))
        rows = mult * unit
        jp, tiles = ceil_div(g.oh, rows) * rows * g.wq, rows * g.wq // tile
    else:
        rows, n_tiles = 0, ceil_div(g.oh * g.wq, tile)
        # tiles per pixel block: the count (up to twice the knob) that pads the fewest tiles
        tiles = min(range(1, min(2 * k.tiles_per_block, n_tiles) + 1),
                    key=lambda t: (ceil_div(n_tiles, t) * t, abs(t - k.tiles_per_block), -t))
        jp = ceil_div(n_tiles, tiles) * tiles * tile
    og = k.out_groups if g.groups == 1 or (g.o // ob) % k.out_groups == 0 else 1
    og = min(og, ceil_div(g.o, ob))
    op = ceil_div(g.o, ob * og) * ob * og if g.groups == 1 else g.o
    rb = _largest_divisor(g.cg, k.channel_block)  # resolved by `_resolve_direct`
    return _Tiling(ob, vectors, k.lanes, tiles, rb, og, op, jp, block_rows=rows)


def _pixel_gemm_tile(g: _Geometry, k: DenseConvKnobs) -> tuple[int, int]:
    """Unpadded 1x1 convs (`pointwise_pixels`): the candidate register tile doing the least
    padded work (filters and the plane's pixels padded to whole tiles), the knobs' own on ties."""
    return min(_tile_shapes(g, k), key=lambda s: pointwise_pixels.padded_work(g.o, g.oh * g.ow, s[0], s[1] * k.lanes))


def _plan(g: _Geometry, k: DenseConvKnobs) -> tuple[_Geometry, _Tiling]:
    """The geometry (its row pitch) and tiling the kernel uses."""
    if g.depthwise:
        row_vectors = ceil_div(g.ow, k.lanes)
        vectors = ceil_div(row_vectors, ceil_div(row_vectors, k.dw_vectors))
        row = ceil_div(row_vectors, vectors) * vectors * k.lanes
        # jp: whole plane rows are read (so the padding loop splits into rows without a tail)
        reads = ceil_div((g.oh - 1) * g.wq + row + g.max_offset, g.wq) * g.wq
        return g, _Tiling(1, vectors, k.lanes, 1, 1, 1, g.o, reads - g.max_offset, row)
    # the plan doing the least padded work (the knobs' own tile shape, then the narrower pitch on
    # ties); a separate epilogue pass costs about 16 multiply-adds per output (measured on znver3).
    # Pitches up to a vector wider: blocks of whole rows need rows x pitch to make whole tiles, and
    # an odd pitch (113, a 224 plane's stride-2 phases) takes 48 rows a block (112 rows padded to 144)
    plans = [(wide, p) for wide in (replace(g, pitch=g.wq + extra) for extra in range(k.lanes))
             for aligned in (True, False) for ob, v in _tile_shapes(wide, k)
             if (p := _gemm_plan(wide, k, ob, v, aligned)) is not None]
    macs = g.cg * g.kh * g.kw
    return min(plans, key=lambda plan: plan[1].op * plan[1].jp * (macs + (0 if plan[1].block_rows else 16)))


# --- compute (TE) -------------------------------------------------------------------------


def _padded_planes(x: te.Tensor, g: _Geometry, t: _Tiling) -> te.Tensor:
    """xp[n, c, plane, f]: phase plane (rh, rw) of the zero-padded input, flattened with pitch wq:
    xp[n, c, rh * phases_w + rw, hq * wq + wq'] = x[n, c, hq * sh + rh - top, wq' * sw + rw - left]."""
    rows = ceil_div(t.jp + g.max_offset, g.wq)
    (sh, sw), (top, left), pw = g.strides, g.pads[:2], g.phases(1)

    def value(n, c, plane, f):
        h = f // g.wq * sh + plane // pw - top
        w = f % g.wq * sw + plane % pw - left
        inside = tirx.all(h >= 0, h < g.h, w >= 0, w < g.w)
        return tirx.if_then_else(inside, x[n, c, h, w], tirx.const(0.0, "float32"))

    return te.compute((g.n, g.c, g.planes, rows * g.wq), value, name="xp")


def _gemm_sums(xp: te.Tensor, wpk: te.Tensor, g: _Geometry, t: _Tiling) -> te.Tensor:
    """wide[n, o, j] = sum over (r, kh, kw) of w[o, r, kh, kw] * xp[n, channel, plane, j + offset]."""
    r = te.reduce_axis((0, g.cg), "r")
    kh, kw = te.reduce_axis((0, g.kh), "kh"), te.reduce_axis((0, g.kw), "kw")

    def value(n, o, j):
        chan = r if g.groups == 1 else o // g.og * g.cg + r
        src = xp[n, chan, g.tap_plane(kh, kw), j + g.tap_offset(kh, kw)]
        return te.sum(wpk[o // t.ob, r, kh, kw, o % t.ob] * src, axis=[r, kh, kw])

    if t.block_rows:  # rows kept apart, so a block of rows is a rectangle for the epilogue
        rows = (g.n, t.op, t.jp // g.wq, g.wq)
        return te.compute(rows, lambda n, o, i, k: value(n, o, i * g.wq + k), name="wide")
    return te.compute((g.n, t.op, t.jp), value, name="wide")


def _depthwise_sums(xp: te.Tensor, wdw: te.Tensor, g: _Geometry, t: _Tiling) -> te.Tensor:
    """wide[n, o, i, k] = sum over (kh, kw) of w[o, kh, kw] * xp[n, o // multiplier, plane, i * wq + k
    + offset]: rows kept apart (a rectangular region per channel), columns padded to whole steps."""
    kh, kw = te.reduce_axis((0, g.kh), "kh"), te.reduce_axis((0, g.kw), "kw")

    def value(n, o, i, k):
        src = xp[n, o // g.og, g.tap_plane(kh, kw), i * g.wq + k + g.tap_offset(kh, kw)]
        return te.sum(wdw[o, kh, kw] * src, axis=[kh, kw])

    return te.compute((g.n, g.o, g.oh, t.row), value, name="wide")


def _epilogue(wide: te.Tensor, g: _Geometry, bias: te.Tensor | None, residual: te.Tensor | None,
              act: Activation | None):
    """out[n, o, i, k] = act(wide[n, o, i * wq + k] + bias[o] + residual[n, o, i, k]): junk columns dropped."""

    def value(n, o, i, k):
        v = wide[n, o, i, k] if len(wide.shape) == 4 else wide[n, o, i * g.wq + k]
        v = v + bias[o] if bias is not None else v
        v = v + residual[n, o, i, k] if residual is not None else v
        return apply_activation(v, act, 1)

    return te.compute((g.n, g.o, g.oh, g.ow), value, name="out")


# --- schedules ----------------------------------------------------------------------------


def _interior_columns(g: _Geometry) -> tuple[int, int]:
    """Plane columns [lo, hi) that read inside the input for every phase (no zero padding)."""
    (sw, left), pw = (g.strides[1], g.pads[1]), g.phases(1)
    lo = max(ceil_div(left - rw, sw) for rw in range(pw))
    hi = min(ceil_div(g.w + left - rw, sw) for rw in range(pw))
    return max(0, lo), min(g.wq, max(lo, hi))


def _schedule_planes(sch: s_tir.Schedule, g: _Geometry, outer: int, parallel: bool = False) -> None:
    """Padding copy (its loops after the first `outer`), looping in input order (rows, row phase,
    columns, column phase) so loads are contiguous; the column loop is cut at the padding so the
    middle part has no bounds checks left once simplified, and LLVM vectorizes it (de-interleaving
    the stride phases). A single plane's loop may be gone (compute_at drops unit loops).
    `parallel`: the images, the plane rows and the channels (`outer` = 2: images and channels) as one
    parallel loop, rows outermost (a stem's 3 channels were 3 tasks for the threads)."""
    *plane, f = sch.get_loops(sch.get_sblock("xp"))[outer:]
    hq, wq = sch.split(f, [None, g.wq])
    if g.planes > 1:
        rh, rw = sch.split(plane[0], [None, g.phases(1)])
        sch.reorder(hq, rh, wq, rw)
    elif plane:
        sch.reorder(hq, *plane, wq)
    if parallel:  # rows outside the channels: a thread copies the rows its GEMM tasks read
        *images, channel = sch.get_loops(sch.get_sblock("xp"))[:outer]
        sch.reorder(*images, hq, channel)
        sch.parallel(sch.fuse(*images, hq, channel))
    lo, hi = _interior_columns(g)
    cuts = [c for c in (lo, hi - lo) if c > 0]
    if sum(cuts) < g.wq and cuts:
        sch.loop_partition(wq, [*cuts, None])


def _schedule_epilogue(sch: s_tir.Schedule) -> None:
    n, o, _, _ = sch.get_loops(sch.get_sblock("out"))
    sch.parallel(sch.fuse(n, o))


def _schedule_gemm(sch: s_tir.Schedule, g: _Geometry, t: _Tiling) -> None:
    """Loops: parallel(n, pixel block, filter group) > channel block > filter tile > pixel tile >
    (channels, kh, kw) > unrolled ob x vectors register tile. The sums live in `wide` across
    channel blocks; inside one block LLVM keeps the tile in registers (buffers are noalias).
    Pixel blocks outside the filter groups, and the padding copy by rows: each thread reads the
    plane rows it copied, not the other core's (groups outside, every thread read all of them:
    measured on znver4, 2 threads, kernels alone, near / far placement: MobileNet-V2's stem 1.29x /
    2.37x, ResNet-50's 1.03x / 1.14x, VGG-16's conv1_1 1.02x / 1.13x, 64x56 -> 128 stride 2 1.10x /
    1.50x)."""
    _schedule_planes(sch, g, outer=2, parallel=True)
    blk = sch.get_sblock("wide")
    n, o, *pixels, r, kh, kw = sch.get_loops(blk)
    j = sch.fuse(*pixels) if len(pixels) > 1 else pixels[0]
    go, oo, oi = sch.split(o, [t.og, None, t.ob])
    jo, ji, jt, jl = sch.split(j, [None, t.tiles, t.vectors, t.lanes])
    ro, ri = sch.split(r, [None, t.rb])
    sch.reorder(n, jo, go, ro, oo, ji, ri, kh, kw, oi, jt, jl)
    par = sch.fuse(n, jo, go)
    sch.parallel(par)
    for loop in (kw, oi, jt):
        sch.unroll(loop)
    sch.vectorize(jl)
    sch.decompose_reduction(blk, ro)
    sch.vectorize(sch.get_loops(sch.get_sblock("wide_init"))[-1])
    if t.block_rows:
        sch.reverse_compute_at(sch.get_sblock("out"), par)
    else:
        _schedule_epilogue(sch)


def _schedule_depthwise(sch: s_tir.Schedule, g: _Geometry, t: _Tiling) -> None:
    """Parallel over (image, channel); that channel's padded plane, sums and outputs are
    computed under the same iteration, so they stay in L1."""
    blk = sch.get_sblock("wide")
    n, o, i, k, kh, kw = sch.get_loops(blk)
    no = sch.fuse(n, o)
    ko, kt, kl = sch.split(k, [None, t.vectors, t.lanes])
    sch.reorder(no, i, ko, kh, kw, kt, kl)
    sch.parallel(no)
    for loop in (kh, kw, kt):
        sch.unroll(loop)
    sch.vectorize(kl)
    sch.decompose_reduction(blk, kh)
    sch.compute_at(sch.get_sblock("xp"), no)
    sch.reverse_compute_at(sch.get_sblock("out"), no)
    # the epilogue's row as one vector: LLVM left rows of 7 and 14 scalar (znver4, MobileNet-V2's
    # shapes alone: 576 x 14x14 2.1x, 960 x 7x7 1.58x, 192 x 28x28 1.12x, wider rows 1.0x)
    own = sch.get_loops(sch.get_sblock("out"))[1:]  # under the channel loop; unit loops are gone
    if own:
        sch.vectorize(own[-1])
    _schedule_planes(sch, g, outer=1)


# --- weights ------------------------------------------------------------------------------


def _pack_weight(weight: np.ndarray, g: _Geometry, t: _Tiling) -> np.ndarray:
    """OIHW -> [O/ob, I/g, KH, KW, ob] (zero filters pad O): a tile's weights for one tap are
    contiguous. Depthwise: [O, KH, KW]."""
    w = np.asarray(weight, np.float32)
    if g.depthwise:
        return np.ascontiguousarray(w.reshape(g.o, g.kh, g.kw))
    padded = np.zeros((t.op, *w.shape[1:]), np.float32)
    padded[: g.o] = w
    packed = padded.reshape(t.op // t.ob, t.ob, g.cg, g.kh, g.kw).transpose(0, 2, 3, 4, 1)
    return np.ascontiguousarray(packed)


def _geometry(weight, in_shape, strides, pads, dilations, groups) -> _Geometry:
    n, c, h, w = (int(d) for d in in_shape)
    o, cg, kh, kw = (int(d) for d in weight.shape)
    if c % groups or o % groups or cg != c // groups:
        raise ValueError(f"weight {weight.shape} does not fit input {in_shape} with {groups} groups")
    g = _Geometry(n, c, h, w, o, kh, kw, tuple(strides), tuple(pads), tuple(dilations), groups)
    if g.oh < 1 or g.ow < 1:
        raise ValueError(f"conv of {in_shape} with kernel {kh}x{kw} has an empty output")
    return g


def resolve_knobs(weight_shape, in_shape, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups: int = 1,
                  knobs: DenseConvKnobs = DenseConvKnobs(), *, target: Target) -> DenseConvKnobs:
    """`knobs` with every 0 replaced: `winograd` by the algorithm the shape gets (1: direct where
    Winograd does not apply), the register tile by the target's plan for that algorithm."""
    eligible = winograd_plan.supports(tuple(weight_shape[2:]), strides, dilations, groups)
    if knobs.winograd > 1 and not eligible:
        raise ValueError(f"knob winograd={knobs.winograd} needs a 3x3 stride-1 undilated ungrouped conv, "
                         f"got kernel {tuple(weight_shape[2:])}, strides {tuple(strides)}, "
                         f"dilations {tuple(dilations)}, groups {groups}")
    if knobs.winograd == 0:
        base = knobs.resolved(target)
        tile = winograd_plan.auto_tile(int(weight_shape[0]), in_shape, pads, base.out_block, base.vectors,
                                       base.lanes, target.throughputs.winograd) if eligible else 1
        knobs = replace(knobs, winograd=tile)
    if knobs.winograd > 1:
        return replace(knobs.resolved(target), pointwise=1)
    by_registers = depthwise_conv.supports(weight_shape, in_shape, strides, dilations, groups)
    if knobs.depthwise == 2 and not by_registers:
        raise ValueError(f"knob depthwise=2 needs a depthwise conv (one filter per channel) with a square kernel "
                         f"of 2-7 taps, stride 1 or 2 and one dilation both ways; got weight {tuple(weight_shape)}, "
                         f"strides {tuple(strides)}, dilations {tuple(dilations)}, groups {groups}")
    if knobs.depthwise == 2 or (knobs.depthwise == 0 and by_registers):
        out_width = conv_output_size(int(in_shape[3]), pads[1], pads[3], int(weight_shape[3]), strides[1],
                                     dilations[1])
        return replace(knobs, depthwise=2, lanes=knobs.lanes or depthwise_conv.pick_lanes(out_width, target.lanes()),
                       dw_rows=knobs.dw_rows or register_plan.depthwise_rows(target))
    knobs = replace(knobs, depthwise=1)
    pointwise = pointwise_conv.supports(tuple(weight_shape[2:]), pads, groups)
    if knobs.pointwise == 2 and not pointwise:
        raise ValueError(f"knob pointwise=2 needs an unpadded ungrouped 1x1 conv, got kernel "
                         f"{tuple(weight_shape[2:])}, pads {tuple(pads)}, groups {groups}")
    if knobs.pointwise == 0:
        plane = math.prod(conv_output_size(int(size), 0, 0, 1, stride) for size, stride in zip(in_shape[2:], strides))
        across = pointwise and register_plan.pointwise_across_filters(target, int(weight_shape[1]), strides, plane,
                                                                      filters=int(weight_shape[0]))
        knobs = replace(knobs, pointwise=2 if across else 1)
    if knobs.pointwise == 2:
        return _resolve_pointwise(in_shape, strides, int(weight_shape[0]), knobs, target)
    return _resolve_direct(weight_shape, in_shape, strides, pads, dilations, groups, knobs, target)


def _resolve_pointwise(in_shape, strides, filters: int, knobs: DenseConvKnobs, target: Target) -> DenseConvKnobs:
    """Vectors across filters: `vectors` filter vectors x `out_block` pixels; unless the knobs set
    it, a pixel count dividing the plane within the target's accumulators unless it leaves too many
    of them idle (`pointwise_conv.pixel_tile`: 7 of a 7x7 plane, 14 of 14x14 ... 56x56 on AVX-512;
    6 of either on AVX2, the last tile partial)."""
    vectors, accumulators = register_plan.pointwise_tile(target)
    vectors = knobs.vectors or vectors
    oh, ow = (conv_output_size(int(size), 0, 0, 1, stride) for size, stride in zip(in_shape[2:], strides))
    busy = register_plan.pointwise_busy_accumulators(target)
    pixels = knobs.out_block or pointwise_conv.pixel_tile(oh * ow, accumulators, vectors, busy)
    block = knobs.channel_block or register_plan.pointwise_channel_block(target, int(in_shape[1]))
    ranges = knobs.ranges or register_plan.pointwise_ranges(target, oh * ow, filters)
    return replace(knobs, out_block=pixels, vectors=vectors, lanes=knobs.lanes or target.lanes(), channel_block=block,
                   ranges=ranges)


def _resolve_direct(weight_shape, in_shape, strides, pads, dilations, groups, knobs: DenseConvKnobs,
                    target: Target) -> DenseConvKnobs:
    """The register tile, when the knobs leave it to the plan: among the target's tiles, the one
    whose plan (unpadded 1x1s: `pointwise_pixels`'s) does the least padded work (then the one with
    more accumulators)."""
    taps = int(np.prod(weight_shape[2:]))
    resolved = replace(knobs.resolved(target),
                       channel_block=knobs.channel_block or register_plan.gemm_channel_block(taps))
    if knobs.out_block or knobs.vectors or groups > 1 or int(weight_shape[1]) == 1:
        return resolved
    g = _geometry(np.empty(weight_shape, np.float32), in_shape, strides, pads, dilations, groups)
    macs = g.cg * g.kh * g.kw

    def cost(tile: tuple[int, int]) -> tuple[int, int]:
        tiled = replace(resolved, out_block=tile[0], vectors=tile[1])
        if pointwise_conv.supports((g.kh, g.kw), pads, groups):  # run by `pointwise_pixels`
            ob, vectors = _pixel_gemm_tile(g, tiled)
            return pointwise_pixels.padded_work(g.o, g.oh * g.ow, ob, vectors * tiled.lanes), -tile[0] * tile[1]
        t = _plan(g, tiled)[1]
        return t.op * t.jp * (macs + (0 if t.block_rows else 16)), -tile[0] * tile[1]

    ob, vectors = min(register_plan.gemm_tiles(target), key=cost)
    return replace(resolved, out_block=ob, vectors=vectors)


def dense_conv_kernel(
    weight: np.ndarray,
    in_shape: tuple[int, int, int, int],
    *,
    strides: tuple[int, int] = (1, 1),
    pads: tuple[int, int, int, int] = (0, 0, 0, 0),
    dilations: tuple[int, int] = (1, 1),
    groups: int = 1,
    bias: np.ndarray | None = None,
    activation: Activation | None = None,
    residual: bool = False,
    in_place: bool = False,
    target: Target,
    knobs: DenseConvKnobs = DenseConvKnobs(),
    name: str = "dense_conv",
) -> Kernel:
    """The TIR kernel of `act(conv(x, weight) + bias + residual)`, NCHW float32; params
    (x, [residual], w, [bias], out), the residual shaped like out. `in_place`: where the kernel is
    a 1x1's (`pointwise_conv`, `pointwise_pixels`), it writes over the residual and has no `out`
    (`Kernel.in_place`); the other kernels ignore it."""
    if in_place and not residual:
        raise ValueError("an in-place conv writes over its residual: it needs one")
    g = _geometry(weight, in_shape, strides, pads, dilations, groups)
    knobs = resolve_knobs(weight.shape, in_shape, strides, pads, dilations, groups, knobs, target=target)
    if knobs.depthwise == 2:
        return depthwise_conv.depthwise_conv_kernel(
            weight, in_shape, strides=strides, pads=pads, dilation=dilations[0], lanes=knobs.lanes, rows=knobs.dw_rows,
            bias=bias, activation=activation, residual=residual, name=name)
    if knobs.pointwise == 2:
        return pointwise_conv.pointwise_conv_kernel(
            weight, in_shape, strides=strides, pixels=knobs.out_block, vectors=knobs.vectors, lanes=knobs.lanes,
            channel_block=knobs.channel_block, line_floats=target.cache_line_bytes // 4,
            weights_ahead=register_plan.pointwise_weight_lead(target), ranges=knobs.ranges, bias=bias,
            activation=activation, residual=residual, in_place=in_place, name=name)
    if knobs.winograd > 1:
        return winograd_conv.winograd_conv_kernel(
            weight, in_shape, pads=pads, tile=knobs.winograd, out_block=knobs.out_block, vectors=knobs.vectors,
            lanes=knobs.lanes, bias=bias, activation=activation, residual=residual, name=name)
    if pointwise_conv.supports((g.kh, g.kw), pads, groups):
        ob, vectors = _pixel_gemm_tile(g, knobs)
        return pointwise_pixels.pointwise_pixels_kernel(
            weight, in_shape, strides=strides, out_block=ob, vectors=vectors, lanes=knobs.lanes,
            tiles_per_block=knobs.tiles_per_block, out_groups=knobs.out_groups, threads=target.threads,
            line_floats=target.cache_line_bytes // 4, bias=bias,
            activation=activation, residual=residual, in_place=in_place, name=name)
    g, t = _plan(g, knobs)
    x = te.placeholder((g.n, g.c, g.h, g.w), "float32", name="x")
    packed = _pack_weight(weight, g, t)
    w = te.placeholder(packed.shape, "float32", name="w")
    b = te.placeholder((g.o,), "float32", name="bias") if bias is not None else None
    out_shape = (g.n, g.o, g.oh, g.ow)
    r = te.placeholder(out_shape, "float32", name="residual") if residual else None
    xp = _padded_planes(x, g, t)
    wide = (_depthwise_sums if g.depthwise else _gemm_sums)(xp, w, g, t)
    out = _epilogue(wide, g, b, r, activation)
    func = te.create_prim_func([x, *([r] if r is not None else []), w, *([b] if b is not None else []), out])
    sch = s_tir.Schedule(func.with_attr("global_symbol", name))
    (_schedule_depthwise if g.depthwise else _schedule_gemm)(sch, g, t)
    constants = (packed,) + ((np.asarray(bias, np.float32).reshape(g.o),) if bias is not None else ())
    return Kernel(sch.mod["main"], constants, out_shape, "float32")
