"""Dense 1x1 convolution on small planes, vectorised across filters (IRBuilder).

A 7x7 plane has 49 pixels: vectors of 16 pixels pad it to 64 (77% of the lanes busy). Here a
register tile is `pixels` output pixels x `vectors` vectors of consecutive filters: per input
channel, `vectors` contiguous weight loads (packed [O/F, C, F], F = vectors x lanes filters)
and one broadcast input value per pixel feed pixels x vectors FMAs. The pixel count divides the
plane (7 of 49) where that keeps enough sums in flight, so no lane idles (else the last tile is
partial); filters pad to whole tiles (ResNet's 512 or 2048: none).
Any stride reads its pixels directly (each input value is a broadcast scalar load), so there
is no packing pass. Parallel over (image, pixel range, filter tile): a range is a thread's share
of the plane where the input outweighs the weights (`register_plan.pointwise_ranges`), else the
whole plane. A task runs the input channels in blocks of `channel_block`, every pixel tile of its
share per block, so the block's weights (and inputs) stay in L1 while all those tiles use them;
the partial sums wait in a per-task buffer between blocks. (Unblocked, each pixel tile streamed
all the channels' weights and inputs from L2: on AVX2 that ran 0.66-0.8x of the pixel-vector
GEMM; blocks of 64 run 1.1-1.25x of it.) The first pixel tile of a block prefetches its weights
a few channels ahead: on 7x7 planes each weight serves only 49 pixels and comes from memory
(znver4, out of the caches: 1.13-1.15x; M2 1.014x near). The epilogue writes the sums to the NCHW
output with bias, residual and activation: without a residual (and with one block) each tile's own,
its sums transposed in registers (`_emit_tile_epilogue`); else the share's, from its buffer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from sparsec.ir.activation import Activation
from sparsec.lower.kernels.common import Kernel, apply_activation, ceil_div, conv_output_size, emit_prefetch


@dataclass(frozen=True)
class _Plan:
    """Shapes of the conv and its register tile; all compile-time integers."""

    n: int
    c: int
    h: int
    w: int
    o: int
    strides: tuple[int, int]
    pixels: int  # output pixels per register tile (divides the plane when it can)
    vectors: int  # vectors of filters per register tile
    lanes: int
    channel_block: int  # input channels per block (every tile of the plane runs one block at a time)
    line_floats: int = 16  # float32s in the target's cache line
    weights_ahead: int = 32  # channels the first tile's weight prefetch leads by
    ranges: int = 1  # the plane's pixel tiles in this many equal ranges, each a thread's share

    @property
    def oh(self) -> int:
        return conv_output_size(self.h, 0, 0, 1, self.strides[0])

    @property
    def ow(self) -> int:
        return conv_output_size(self.w, 0, 0, 1, self.strides[1])

    @property
    def plane(self) -> int:
        return self.oh * self.ow

    @property
    def filters(self) -> int:
        """Filters per register tile."""
        return self.vectors * self.lanes

    @property
    def op(self) -> int:
        return ceil_div(self.o, self.filters) * self.filters

    @property
    def tiles(self) -> int:
        return ceil_div(self.plane, self.pixels)

    @property
    def blocks(self) -> int:
        return ceil_div(self.c, self.channel_block)

    @property
    def span(self) -> int:
        """Pixel tiles per range."""
        return ceil_div(self.tiles, self.ranges)

    @property
    def groups(self) -> int:
        """Filter tiles."""
        return self.op // self.filters

    @property
    def tile_epilogue(self) -> bool:
        """Whether each pixel tile's sums may leave the registers transposed, as its filters' rows of
        pixels (one channel block: its sums are final once its channels are done; at most a vector of
        pixels); `_emit` takes it for convs without a residual (`_emit_tile_epilogue`)."""
        return self.blocks == 1 and self.pixels <= self.lanes

    @property
    def ragged(self) -> bool:
        """Whether some task's share of the plane may end in a partial vector of pixels."""
        return bool(self.plane % self.lanes) or (self.ranges > 1 and (self.span * self.pixels) % self.lanes != 0)


def supports(kernel: tuple[int, int], pads, groups: int) -> bool:
    """Whether a conv has this kernel's shape: 1x1, unpadded, one group (any stride)."""
    return tuple(kernel) == (1, 1) and not any(pads) and groups == 1


def pixel_tile(plane: int, accumulators: int, vectors: int, busy: int) -> int:
    """Pixels per register tile within the accumulators (accumulators // vectors of them): the
    largest count dividing the plane (7 of 49), unless its tile keeps fewer than `busy`
    accumulators busy (`register_plan.pointwise_busy_accumulators`; a 34-pixel plane's divisor 2):
    then the most, and the last tile is partial."""
    most = max(1, accumulators // vectors)
    if plane <= most:
        return plane
    divisor = max(p for p in range(1, most + 1) if plane % p == 0)
    return divisor if divisor * vectors >= busy else most


def _pack_weight(weight: np.ndarray, p: _Plan) -> np.ndarray:
    """[O, C, 1, 1] -> [O/F, C, F], zero filters padding O."""
    w = np.zeros((p.op, p.c), np.float32)
    w[: p.o] = np.asarray(weight, np.float32).reshape(p.o, p.c)
    return np.ascontiguousarray(w.reshape(p.op // p.filters, p.filters, p.c).transpose(0, 2, 1))


def _vec(v: int, lanes: int):
    return tirx.Ramp(v * lanes, 1, lanes)


def _emit_weight_prefetch(w, p: _Plan, grp, c) -> None:
    """Channel c's weights of the task's filter tile (a line at a time) into L1."""
    for first in range(0, p.filters, p.line_floats):
        emit_prefetch(w[grp, c, first])


def _emit_channels(x, w, acc, p: _Plan, nn, grp, blk, ti, prefetch: bool) -> None:
    """acc += block `blk`'s channels for pixel tile `ti`; with `prefetch`, each channel also fetches the
    weights `weights_ahead` channels on: the first tile reads them from memory, each used only as many
    times as the plane has pixels (49 at 7x7), a stream the hardware prefetchers ramp up on too late."""
    with T.serial(0, tirx.min(p.channel_block, p.c - blk * p.channel_block)) as ci:
        c = blk * p.channel_block + ci
        if prefetch:
            _emit_weight_prefetch(w, p, grp, tirx.min(c + p.weights_ahead, p.c - 1))
        wv = [w[grp, c, _vec(v, p.lanes)] for v in range(p.vectors)]
        for px in range(p.pixels):
            j = tirx.min(ti * p.pixels + px, p.plane - 1)  # a partial last tile recomputes the last pixel
            xb = tirx.Broadcast(x[nn, c, j // p.ow * p.strides[0], j % p.ow * p.strides[1]], p.lanes)
            for v in range(p.vectors):
                at = _vec(v, p.lanes)
                T.buffer_store(acc[px], acc[px][at] + xb * wv[v], [at])


def _emit_block(x, w, sums, p: _Plan, nn, grp, blk, share: _Share, dest: "_Dest") -> None:
    """sums[tile] += the channels of block `blk`, for every pixel tile of the task's share of the
    plane (the first tile prefetching the block's weights; the others find them in the caches); with
    `dest.tail`, each tile's sums go straight to the output instead (`_emit_tile_epilogue`)."""
    with T.serial(0, share.tiles) as ti:
        # one stack buffer per pixel, which LLVM keeps in registers across the channel loop (TVM 0.27
        # puts allocations over 1 KiB on the heap, where the prefetches kept every sum in memory)
        acc = [T.alloc_buffer((p.filters,), "float32") for _ in range(p.pixels)]
        for px, buf in enumerate(acc):
            IRBuilder.name(f"acc{px}", buf)
        for px in range(p.pixels):
            for v in range(p.vectors):
                zero = tirx.Broadcast(tirx.const(0.0, "float32"), p.lanes)
                first = zero if dest.tail is not None else tirx.Select(blk == 0, zero, sums[ti, px, _vec(v, p.lanes)])
                T.buffer_store(acc[px], first, [_vec(v, p.lanes)])
        with T.If(ti == 0):
            with T.Then():
                _emit_channels(x, w, acc, p, nn, grp, blk, share.first_tile + ti, prefetch=True)
            with T.Else():
                _emit_channels(x, w, acc, p, nn, grp, blk, share.first_tile + ti, prefetch=False)
        if dest.tail is not None:
            _emit_tile_epilogue(acc, p, dest, ti)
        else:
            for px in range(p.pixels):
                for v in range(p.vectors):
                    T.buffer_store(sums, acc[px][_vec(v, p.lanes)], [ti, px, _vec(v, p.lanes)])


@dataclass(frozen=True)
class _Dest:
    """Where a task's sums end: act(sums + bias + residual) into the flat output; with a `tail` (a buffer
    for a tile's sums where its pixels pass the end of the task's share), tile by tile."""

    bias: object | None
    residual: object | None  # flat [N * O * plane]
    out: object  # flat [N * O * plane]
    act: Activation | None
    nn: object
    grp: object
    share: "_Share"
    tail: object = None  # [pixels, filters]: each tile's sums leave transposed (`_emit_tile_epilogue`)

    def at(self, p: _Plan, o, j):
        """Flat output index of the share's pixel j of filter o."""
        return (self.nn * p.o + o) * p.plane + self.share.first_pixel + j

    def finish(self, value, o, at, lanes: int):
        """act(value + bias[o] + residual at `at`, `lanes` pixels on)."""
        if self.bias is not None:
            value = value + (tirx.Broadcast(self.bias[o], lanes) if lanes > 1 else self.bias[o])
        if self.residual is not None:
            value = value + self.residual[tirx.Ramp(at, 1, lanes) if lanes > 1 else at]
        return apply_activation(value, self.act, lanes)


def _transposed(rows: list, lanes: int) -> list:
    """The lanes x lanes transpose of `rows` (vectors): four rounds of two-vector shuffles (a
    butterfly: in round d, vectors i and i + d swap their lane blocks of d), lanes * log2(lanes)
    shuffles in all, where gathering each column lane by lane took a load and an insert per element."""
    rows = list(rows)
    d = lanes // 2
    while d:
        for i in range(lanes):
            if i & d:
                continue
            a, b = rows[i], rows[i + d]
            low = [k if not k & d else lanes + k - d for k in range(lanes)]
            high = [k + d if not k & d else lanes + k for k in range(lanes)]
            rows[i], rows[i + d] = tirx.Shuffle([a, b], low), tirx.Shuffle([a, b], high)
        d //= 2
    return rows


def _emit_tile_epilogue(acc, p: _Plan, dest: _Dest, ti) -> None:
    """One pixel tile's sums (pixels x filters, in registers) to the output's filter rows, for a conv
    without a residual. Where a whole vector from the tile's first pixel lies in the task's share: each
    filter vector transposed in registers (`_transposed`), so a filter's pixels are one vector, stored
    whole; its lanes past the tile's pixels land on the next tile's, which that tile writes later.
    Elsewhere (the share's last tiles, which must not write past it) through a buffer, pixel by pixel.
    Against the share's buffer and its gathering epilogue (a load and an insert per sum), measured on
    znver4, kernels alone, 2 threads: 256x56 -> 64 1.05x, -> 128 1.07x, 512x28 -> 128 1.05x, 256x56 ->
    512 stride 2 1.08x, 1024x14 -> 256 and 2048x7 -> 512 1.00x; ResNet-50 1.009x near, 1.016x far;
    MobileNet-V2 1.018x near, 1.001x far. With a residual it lost (256x14 -> 1024
    and 512x7 -> 2048 0.96x: each tile's residual load meets the previous tile's overlapping store, and
    exact 14- or 7-lane stores 0.98-0.99x), so those keep the buffer."""
    lanes, j0 = p.lanes, ti * p.pixels
    with T.If(j0 + lanes <= dest.share.pixels):
        with T.Then():
            zero = tirx.Broadcast(tirx.const(0.0, "float32"), lanes)
            for v in range(p.vectors):
                rows = [acc[px][_vec(v, lanes)] for px in range(p.pixels)] + [zero] * (lanes - p.pixels)
                for f, column in enumerate(_transposed(rows, lanes)):
                    o = dest.grp * p.filters + v * lanes + f
                    at = dest.at(p, o, j0)
                    value = dest.finish(column, o, at, lanes)
                    _store_if_filter(p, o, lambda value=value, at=at: T.buffer_store(
                        dest.out, value, [tirx.Ramp(at, 1, lanes)]))
        with T.Else():
            for px in range(p.pixels):
                for v in range(p.vectors):
                    T.buffer_store(dest.tail, acc[px][_vec(v, lanes)], [px, _vec(v, lanes)])
            with T.serial(0, p.filters) as f:
                with T.serial(0, p.pixels) as px:
                    o = dest.grp * p.filters + f
                    with T.If(tirx.all(j0 + px < dest.share.pixels, o < p.o)):
                        with T.Then():
                            at = dest.at(p, o, j0 + px)
                            T.buffer_store(dest.out, dest.finish(dest.tail[px, f], o, at, 1), [at])


def _store_if_filter(p: _Plan, o, store) -> None:
    """store(), for a real filter (the last filter tile pads O to whole vectors)."""
    if p.o % p.filters == 0:
        store()
        return
    with T.If(o < p.o):
        with T.Then():
            store()


def _emit_epilogue(sums, p: _Plan, dest: _Dest) -> None:
    """out[n, o, pixel] = act(sums + bias + residual) over the task's share of the plane, one row of
    filters after the other, a vector of pixels at a time: a filter's sums lie `filters` floats apart
    (a strided gather; scalar, this epilogue ran 1x1s of 64 channels at 14x14 0.88x as fast on
    znver4), the share's tail one by one."""
    sums_flat = T.decl_buffer((p.span * p.pixels * p.filters,), "float32", data=sums.data)
    share = dest.share

    def store(o, f, j, lanes: int) -> None:
        at = dest.at(p, o, j)
        span = (lambda first, stride: tirx.Ramp(first, stride, lanes)) if lanes > 1 else (lambda first, _: first)
        value = dest.finish(sums_flat[span(j * p.filters + f, p.filters)], o, at, lanes)
        T.buffer_store(dest.out, value, [span(at, 1)])

    with T.serial(0, p.filters) as f:
        o = dest.grp * p.filters + f
        with T.If(o < p.o):
            with T.Then():
                with T.serial(0, share.pixels // p.lanes) as v:
                    store(o, f, v * p.lanes, p.lanes)
                if p.ragged:
                    with T.serial(0, share.pixels % p.lanes) as k:
                        store(o, f, share.pixels // p.lanes * p.lanes + k, 1)


@dataclass(frozen=True)
class _Share:
    """A task's pixel tiles: all the plane's (one range: compile-time integers) or a range's."""

    first_tile: object  # int or PrimExpr
    tiles: object
    first_pixel: object
    pixels: object  # output pixels the share writes


def _share(p: _Plan, rng) -> _Share:
    if p.ranges == 1:
        return _Share(0, p.tiles, 0, p.plane)
    first = rng * p.span  # the last ranges may be short or empty (5 tiles in 4 ranges: 2, 2, 1, 0)
    return _Share(first, tirx.max(tirx.min(p.span, p.tiles - first), 0), first * p.pixels,
                  tirx.max(tirx.min(p.span * p.pixels, p.plane - first * p.pixels), 0))


def _emit(x, w, bias, residual, out, p: _Plan, act: Activation | None) -> None:
    """Parallel over (image, range, filter tile): TVM gives each thread a contiguous run of tasks, so
    with one range per thread each thread writes (and the next layer reads) its own part of the
    plane, and reads only its part of the input."""
    with T.parallel(0, p.n * p.ranges * p.groups) as task:
        nn, rng, grp = task // (p.ranges * p.groups), task // p.groups % p.ranges, task % p.groups
        share = _share(p, rng)
        flat = lambda buf: T.decl_buffer((p.n * p.o * p.plane,), "float32", data=buf.data)  # noqa: E731
        dest = _Dest(bias, flat(residual) if residual is not None else None, flat(out), act, nn, grp, share)
        if p.tile_epilogue and residual is None:
            tail = T.alloc_buffer((p.pixels, p.filters), "float32")
            IRBuilder.name("tail", tail)
            _emit_block(x, w, None, p, nn, grp, 0, share, replace(dest, tail=tail))
            return
        sums = T.alloc_buffer((p.span, p.pixels, p.filters), "float32")
        with T.serial(0, p.blocks) as blk:
            _emit_block(x, w, sums, p, nn, grp, blk, share, dest)
        _emit_epilogue(sums, p, dest)


def pointwise_conv_kernel(
    weight: np.ndarray,
    in_shape: tuple[int, int, int, int],
    *,
    strides: tuple[int, int] = (1, 1),
    pixels: int,
    vectors: int,
    lanes: int,
    channel_block: int = 0,
    line_floats: int = 16,
    weights_ahead: int = 32,
    ranges: int = 1,
    bias: np.ndarray | None = None,
    activation: Activation | None = None,
    residual: bool = False,
    in_place: bool = False,
    name: str = "pointwise_conv",
) -> Kernel:
    """The TIR kernel of `act(conv1x1(x, weight) + bias + residual)` without padding, NCHW
    float32, vectors across filters, a register tile of `pixels` x `vectors` (see `pixel_tile`),
    input channels in blocks of `channel_block` (0: one block), the first pixel tile prefetching
    the weights `weights_ahead` channels ahead (`register_plan.pointwise_weight_lead`); params
    (x, [residual], w, [bias], out) like the direct conv's; `in_place` (with a residual): no `out`, the
    result overwrites the residual (each element read just before it is written, once)."""
    n, c, h, w = (int(d) for d in in_shape)
    if tuple(weight.shape) != (weight.shape[0], c, 1, 1):
        raise ValueError(f"pointwise conv needs a {c}-channel 1x1 weight, got {weight.shape}")
    block = channel_block if 0 < channel_block < c else c
    plan = _Plan(n, c, h, w, int(weight.shape[0]), tuple(int(s) for s in strides), pixels, vectors, lanes, block,
                 line_floats, weights_ahead, ranges)
    packed = _pack_weight(weight, plan)
    out_shape = (n, plan.o, plan.oh, plan.ow)
    constants = (packed,) + ((np.asarray(bias, np.float32).reshape(plan.o),) if bias is not None else ())
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tirx.noalias": True, "global_symbol": name})
            xb = T.arg("x", T.buffer((n, c, h, w), "float32"))
            res = T.arg("residual", T.buffer(out_shape, "float32")) if residual else None
            wb = T.arg("w", T.buffer(packed.shape, "float32"))
            b = T.arg("bias", T.buffer((plan.o,), "float32")) if bias is not None else None
            out = res if in_place else T.arg("out", T.buffer(out_shape, "float32"))
            _emit(xb, wb, b, res, out, plan, activation)
    return Kernel(ib.get(), constants, out_shape, "float32", in_place=1 if in_place else None)
