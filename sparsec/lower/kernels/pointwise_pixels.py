"""Dense 1x1 convolution (unpadded, any stride) as a GEMM with vectors across pixels, its epilogue
in registers.

An unpadded 1x1 conv is out[o, p] = sum over c of w[o, c] * x[c, src(p)] on the flat output plane
(stride 1: src(p) = p, the same index in the NCHW input and output). A register tile is
`out_block` filters (weights broadcast, packed [O/ob, C, ob]) x `vectors` vectors of consecutive
output pixels. Parallel over (image, range of pixel tiles (one per thread), pixel block, filter
group); a task first packs its block's pixels of every channel into a panel ([tile, channel, pixel
of the tile]: the channel loop then streams contiguous memory; rows of the plane a channel apart
were up to 2.2x slower at 56x56;
a strided conv gathers its pixels here), then runs each filter tile over each pixel tile, the
whole reduction with the sums in registers, and stores act(sums + bias + residual) straight to
the output. (`pointwise_conv` is the other direction: vectors across filters, for small planes.)

Against the TE GEMM of `dense_conv` this replaced (a separate parallel packing pass over the whole
input, sums zeroed in and read back from a per-block buffer, an epilogue pass over it), measured on
znver3 (AVX2, ResNet-50's shapes, kernels alone, one thread's CPU time): stride 1 at 56x56 and
28x28 1.1-1.45x, 14x14 with 1024 channels 1.05-1.2x; stride 2 (the downsamples) 1.06-1.20x (on two
threads 0.94-1.16x). ResNet-50 (M2) on 2 threads: 1.05x timed after the old kernel (a harness that
favoured the second by up to 4%); with `register_plan.pointwise_busy_accumulators`, 1.08-1.09x timed
either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from sparsec.ir.activation import Activation
from sparsec.lower.kernels.common import Kernel, apply_activation, ceil_div, conv_output_size, emit_prefetch


@dataclass(frozen=True)
class _Plan:
    """Shapes of the conv and its tiling; all compile-time integers."""

    n: int
    c: int
    plane: int  # pixels of a (flat) output plane, the input's too
    o: int
    ob: int  # filters per register tile
    vectors: int  # vectors of pixels per register tile
    lanes: int
    tiles: int  # pixel tiles per parallel task (its panel)
    groups: int  # filter groups in the parallel loop
    ow: int  # output width (strided convs gather their panel)
    strides: tuple[int, int]
    ranges: int = 1  # the plane's pixel tiles in this many equal ranges, one per thread
    line_floats: int = 16  # float32s in the target's cache line

    @property
    def tile(self) -> int:
        """Pixels per register tile."""
        return self.vectors * self.lanes

    @property
    def pixel_tiles(self) -> int:
        return ceil_div(self.plane, self.tile)

    @property
    def span(self) -> int:
        """Pixel tiles per range."""
        return ceil_div(self.pixel_tiles, self.ranges)

    @property
    def blocks(self) -> int:
        """Blocks (parallel tasks' panels) per range."""
        return ceil_div(self.span, self.tiles)

    @property
    def filter_tiles(self) -> int:
        return ceil_div(self.o, self.ob)

    @property
    def per_group(self) -> int:
        """Filter tiles per filter group."""
        return ceil_div(self.filter_tiles, self.groups)


def padded_work(o: int, plane: int, ob: int, tile: int) -> int:
    """Multiply-adds per input channel the tiling computes: filters and pixels padded to whole tiles."""
    return ceil_div(o, ob) * ob * ceil_div(plane, tile) * tile


def _pack_weight(weight: np.ndarray, p: _Plan) -> np.ndarray:
    """[O, C, 1, 1] -> [O/ob, C, ob], zero filters padding O: a tile's weights of one channel are contiguous."""
    w = np.zeros((p.filter_tiles * p.ob, p.c), np.float32)
    w[: p.o] = np.asarray(weight, np.float32).reshape(p.o, p.c)
    return np.ascontiguousarray(w.reshape(p.filter_tiles, p.ob, p.c).transpose(0, 2, 1))


def _vec(start, lanes: int):
    return tirx.Ramp(start, 1, lanes)


@dataclass(frozen=True)
class _Buffers:
    x: tirx.Buffer  # [N, C, plane]; strided: [N, C, H, W]
    w: tirx.Buffer  # [O/ob, C, ob]
    bias: tirx.Buffer | None
    residual: tirx.Buffer | None  # [N, O, plane]
    out: tirx.Buffer  # [N, O, plane]
    act: Activation | None


def _emit_pack(b: _Buffers, panel, p: _Plan, img, first_tile, tiles) -> None:
    """panel[t, c, :] = the pixels of tile first_tile + t in channel c; zeros past the plane."""
    if p.strides != (1, 1):
        _emit_gather(b, panel, p, img, first_tile, tiles)
        return
    with T.serial(0, tiles) as t:
        pix0 = (first_tile + t) * p.tile
        with T.If(pix0 + p.tile <= p.plane):
            with T.Then():
                with T.serial(0, p.c) as c:
                    for v in range(p.vectors):
                        at = _vec(pix0 + v * p.lanes, p.lanes)
                        T.buffer_store(panel, b.x[img, c, at], [t, c, _vec(v * p.lanes, p.lanes)])
            with T.Else():  # the plane's last tile, partial
                with T.serial(0, p.c) as c:
                    with T.serial(0, p.tile) as k:
                        inside = pix0 + k < p.plane
                        value = tirx.if_then_else(inside, b.x[img, c, tirx.min(pix0 + k, p.plane - 1)],
                                                  tirx.const(0.0, "float32"))
                        T.buffer_store(panel, value, [t, c, k])


def _emit_gather(b: _Buffers, panel, p: _Plan, img, first_tile, tiles) -> None:
    """A strided conv's panel: each pixel's input position once, then every channel (pixels past
    the plane repeat its last one; their sums are never stored)."""
    with T.serial(0, tiles) as t:
        with T.serial(0, p.tile) as k:
            pix = tirx.min((first_tile + t) * p.tile + k, p.plane - 1)
            row, col = pix // p.ow * p.strides[0], pix % p.ow * p.strides[1]
            with T.serial(0, p.c) as c:
                T.buffer_store(panel, b.x[img, c, row, col], [t, c, k])


def _epilogue(b: _Buffers, value, img, o, at, lanes: int):
    """The sums (which started at the bias) plus the residual, activated."""
    if b.residual is not None:
        value = value + b.residual[img, o, at]
    return apply_activation(value, b.act, lanes)


def _emit_store(b: _Buffers, acc, p: _Plan, img, ft, pix0) -> None:
    """out = act(acc + bias + residual) for one register tile: whole vectors where the tile lies in
    the plane, else pixel by pixel; filters past O (the last tile's padding) are skipped."""
    with T.If(pix0 + p.tile <= p.plane):
        with T.Then():
            for f in range(p.ob):
                o = ft * p.ob + f
                if p.o % p.ob:
                    with T.If(o < p.o):
                        with T.Then():
                            _emit_store_vectors(b, acc, p, img, f, o, pix0)
                else:
                    _emit_store_vectors(b, acc, p, img, f, o, pix0)
        with T.Else():  # the plane's last tile: its sums copied out by vector, so `acc` stays in registers
            sums = T.alloc_buffer((p.ob, p.tile), "float32")
            for f in range(p.ob):
                for v in range(p.vectors):
                    at = _vec(v * p.lanes, p.lanes)
                    T.buffer_store(sums, acc[f][at], [f, at])
            for f in range(p.ob):
                o = ft * p.ob + f
                with T.serial(0, p.tile) as k:
                    with T.If(tirx.all(pix0 + k < p.plane, o < p.o)):
                        with T.Then():
                            at = pix0 + k
                            T.buffer_store(b.out, _epilogue(b, sums[f, k], img, o, at, 1), [img, o, at])


def _emit_store_vectors(b: _Buffers, acc, p: _Plan, img, f: int, o, pix0) -> None:
    for v in range(p.vectors):
        at = _vec(pix0 + v * p.lanes, p.lanes)
        value = acc[f][_vec(v * p.lanes, p.lanes)]
        T.buffer_store(b.out, _epilogue(b, value, img, o, at, p.lanes), [img, o, at])


def _emit_epilogue_prefetch(b: _Buffers, p: _Plan, img, ft, pix0) -> None:
    """Prefetch the lines the tile's epilogue writes (and reads of the residual) into L1 before its
    reduction, which then covers their misses: each filter's row piece is its own stream, a
    tile's worth of them too many for the hardware prefetchers (measured on znver4 after a 40 MB
    write, 2 threads: 64x56 -> 256 with a residual 1.18x, 128x28 -> 512 1.06x; ResNet-50 1.008x)."""
    for f in range(p.ob):
        o = tirx.min(ft * p.ob + f, p.o - 1)  # the last tile's padding filters: a real row, prefetched twice
        for first in (*range(0, p.tile, p.line_floats), p.tile - 1):  # the last pixel: a row piece off the lines
            at = tirx.min(pix0 + first, p.plane - 1)
            emit_prefetch(b.out[img, o, at], write=True)
            if b.residual is not None:
                emit_prefetch(b.residual[img, o, at])


def _emit_tile(b: _Buffers, panel, p: _Plan, img, ft, t, pix0) -> None:
    """One register tile: sums over every channel in registers, then the epilogue's store."""
    _emit_epilogue_prefetch(b, p, img, ft, pix0)
    acc = _register_tile(p)
    for f in range(p.ob):
        start = _start_value(b, p, ft * p.ob + f)
        for v in range(p.vectors):
            T.buffer_store(acc[f], start, [_vec(v * p.lanes, p.lanes)])
    with T.serial(0, p.c) as c:
        pixels = [panel[t, c, _vec(v * p.lanes, p.lanes)] for v in range(p.vectors)]
        for f in range(p.ob):
            weight = tirx.Broadcast(b.w[ft, c, f], p.lanes)
            for v in range(p.vectors):
                at = _vec(v * p.lanes, p.lanes)
                T.buffer_store(acc[f], acc[f][at] + weight * pixels[v], [at])
    _emit_store(b, acc, p, img, ft, pix0)


def _start_value(b: _Buffers, p: _Plan, o):
    """Sums start at the filter's bias: one add fewer per output vector (with 64 channels a tile's
    epilogue is ~6% of its vector work); the last tile's padding filters read the last bias."""
    if b.bias is None:
        return tirx.Broadcast(tirx.const(0.0, "float32"), p.lanes)
    return tirx.Broadcast(b.bias[tirx.min(o, p.o - 1)], p.lanes)


def _register_tile(p: _Plan) -> list:
    """One stack buffer per filter of the tile, which LLVM keeps in registers while every index into it
    is a constant: TVM 0.27 puts allocations over 1 KiB on the heap (one [ob, tile] buffer was, its
    sums stored and reloaded around every epilogue)."""
    tile = [T.alloc_buffer((p.tile,), "float32") for _ in range(p.ob)]
    for f, buf in enumerate(tile):
        IRBuilder.name(f"acc{f}", buf)
    return tile


def _emit(b: _Buffers, p: _Plan) -> None:
    """Parallel over (image, range, block, filter group): TVM gives each thread a contiguous run of
    tasks, so with one range of pixel tiles per thread the threads' shares are equal. (Blocks cut
    from the whole plane gave one of two threads 20 of 34 tile-groups of a 28x28 plane in tiles of
    48 pixels; measured on znver4, kernels alone: 128x28 -> 512 1.12x, 128x56 -> 512 stride 2
    1.15x, 56x56 planes 1.00-1.02x; ResNet-50, whose 28x28 layers take tiles of 32, 1.00x.)
    Inside a task each pixel tile meets every filter tile of the group in turn: its panel piece
    (channels x tile pixels, 8-16 KB at 64-128 channels) stays in L1 and each channel step reads a
    tile's weights (`out_block` floats) from L2, where filter tiles outside read the block's whole
    panel (up to 4x that, over L1) from L2 for every filter tile, `tile` floats a step. Measured on
    znver4, 2 threads, kernels alone: 64x56 -> 256 with a residual 1.08x, 64x56 -> 64 1.05x,
    128x28 -> 512 with a residual 1.03x, 256x28 -> 512 1.08x, 512x14 -> 256 (a panel piece over L1)
    1.00x; ResNet-50 1.003x near, 1.018x far; MobileNet-V2 1.000x near, 1.027x far."""
    per_range = p.blocks * p.groups
    with T.parallel(0, p.n * p.ranges * per_range) as task:
        img, rng, blk, grp = (task // (p.ranges * per_range), task // per_range % p.ranges,
                              task // p.groups % p.blocks, task % p.groups)
        first_tile = rng * p.span + blk * p.tiles
        tiles = tirx.max(tirx.min(tirx.min(p.tiles, p.span - blk * p.tiles), p.pixel_tiles - first_tile), 0)
        panel = T.alloc_buffer((p.tiles, p.c, p.tile), "float32")
        _emit_pack(b, panel, p, img, first_tile, tiles)
        # pixel tiles outside, filter tiles inside: loops from 0 (TVM 0.27 miscompiles nested bounds
        # under a loop with a non-constant start)
        with T.serial(0, tiles) as t:
            with T.serial(0, tirx.min(p.per_group, p.filter_tiles - grp * p.per_group)) as fi:
                _emit_tile(b, panel, p, img, grp * p.per_group + fi, t, (first_tile + t) * p.tile)


def pointwise_pixels_kernel(
    weight: np.ndarray,
    in_shape: tuple[int, int, int, int],
    *,
    out_block: int,
    vectors: int,
    lanes: int,
    tiles_per_block: int,
    out_groups: int,
    threads: int = 1,
    line_floats: int = 16,
    bias: np.ndarray | None = None,
    activation: Activation | None = None,
    residual: bool = False,
    in_place: bool = False,
    strides: tuple[int, int] = (1, 1),
    name: str = "pointwise_pixels",
) -> Kernel:
    """The TIR kernel of `act(conv1x1(x, weight) + bias + residual)`, unpadded, NCHW float32:
    register tiles of `out_block` filters x `vectors` pixel vectors; the plane's pixel tiles in one
    equal range per thread (of `threads`), each in blocks of at most `tiles_per_block` tiles (of
    equal size, so tasks weigh the same); filters split in `out_groups` groups; the epilogue's
    lines prefetched `line_floats` apart (the target's cache line); params (x,
    [residual], w, [bias], out) like the direct conv's; `in_place` (with a residual): no `out`, the result
    overwrites the residual (each element read just before it is written, once)."""
    n, c, h, w = (int(d) for d in in_shape)
    o = int(weight.shape[0])
    if tuple(weight.shape) != (o, c, 1, 1):
        raise ValueError(f"pointwise conv needs a {c}-channel 1x1 weight, got {weight.shape}")
    oh, ow = (conv_output_size(size, 0, 0, 1, stride) for size, stride in zip((h, w), strides))
    pixel_tiles = ceil_div(oh * ow, vectors * lanes)
    ranges = max(1, min(threads, pixel_tiles))
    span = ceil_div(pixel_tiles, ranges)
    even = ceil_div(span, ceil_div(span, tiles_per_block))  # 9 tiles, at most 4: 3 x 3, not 4 + 4 + 1
    groups = min(out_groups, ceil_div(o, out_block))
    plan = _Plan(n, c, oh * ow, o, out_block, vectors, lanes, even, groups, ow, tuple(strides), ranges, line_floats)
    packed = _pack_weight(weight, plan)
    constants = (packed,) + ((np.asarray(bias, np.float32).reshape(o),) if bias is not None else ())
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tirx.noalias": True, "global_symbol": name})
            x = T.arg("x", T.buffer((n, c, h, w), "float32"))
            res = T.arg("residual", T.buffer((n, o, oh, ow), "float32")) if residual else None
            wb = T.arg("w", T.buffer(packed.shape, "float32"))
            bb = T.arg("bias", T.buffer((o,), "float32")) if bias is not None else None
            out = res if in_place else T.arg("out", T.buffer((n, o, oh, ow), "float32"))
            flat = lambda buf, channels: T.decl_buffer((n, channels, oh * ow), "float32", data=buf.data)  # noqa: E731
            source = flat(x, c) if tuple(strides) == (1, 1) else x  # strided: gathered by row and column
            buffers = _Buffers(source, wb, bb, flat(res, o) if residual else None, flat(out, o), activation)
            _emit(buffers, plan)
    return Kernel(ib.get(), constants, (n, o, oh, ow), "float32", in_place=1 if in_place else None)
