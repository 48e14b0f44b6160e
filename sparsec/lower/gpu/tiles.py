"""The shared shape of sparsec's GPU convolutions (dense direct and pattern-sparse).

NDRange: blockIdx.x = a block of filters, blockIdx.y = an output tile (image, tile row, tile
column); a work-group's work-items split the tile (threadIdx.x along the width, threadIdx.y along
the height) and the block's filters (threadIdx.z: FZ filters side by side), each computing M
filters x R rows x one float4 of output columns.
Per block of CB input channels, the work-group copies the input tile its outputs read (halo
included, zeros in the padding) into local memory once; every filter of the block, every tap and
every work-item then reads it there. The epilogue adds the bias, activates and stores (float4 when
the vector lies inside the output).
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import tirx
from tvm.script.ir_builder import tirx as T

from sparsec.ir.activation import Activation
from sparsec.lower.kernels.common import ConvShape, apply_activation, ceil_div
from sparsec.target import Target

LANES = 4  # float4 along the output width (OpenCL's natural vector; Mali's load width)


@dataclass(frozen=True)
class ConvTile(ConvShape):
    """Shapes of one GPU convolution and its tiling; all compile-time integers."""

    m: int  # filters per work-item, one after the other
    fz: int  # filters side by side (threadIdx.z): a work-group runs M x FZ filters
    rows: int  # output rows per work-item (R)
    vx: int  # work-items along the width (each one float4)
    ry: int  # work-items along the height
    cb: int  # input channels per local-memory block

    @property
    def th(self) -> int:
        return self.rows * self.ry

    @property
    def tw(self) -> int:
        return LANES * self.vx

    @property
    def tiles_y(self) -> int:
        return ceil_div(self.oh, self.th)

    @property
    def tiles_x(self) -> int:
        return ceil_div(self.ow, self.tw)

    @property
    def tr(self) -> int:
        """Input rows of a tile."""
        return (self.th - 1) * self.strides[0] + (self.kh - 1) * self.dilations[0] + 1

    @property
    def tc(self) -> int:
        """Input columns of a tile."""
        return (self.tw - 1) * self.strides[1] + (self.kw - 1) * self.dilations[1] + 1

    @property
    def blocks(self) -> int:
        return ceil_div(self.cg, self.cb)

    @property
    def work_items(self) -> int:
        return self.fz * self.vx * self.ry

    @property
    def filter_block(self) -> int:
        return self.m * self.fz

    @property
    def local_bytes(self) -> int:
        return self.cb * self.tr * self.tc * 4


def plan(in_shape, weight_shape, strides, pads, dilations, groups: int, target: Target, *, max_filters: int = 4,
         rows: int = 2, max_items: int = 64, side_by_side: bool = False) -> ConvTile:
    """The tiling for a conv on `target`: the work-group (<= max_items work-items) that best trades
    its size (up to 32 work-items) against the padding its tile adds to the output, M the largest
    divisor of the group's filters <= max_filters, as many channels per block as the local memory
    holds (less 1 KiB)."""
    n, c, h, w = (int(d) for d in in_shape)
    o, _, kh, kw = (int(d) for d in weight_shape)
    og = o // groups
    m = max(d for d in range(1, min(max_filters, og) + 1) if og % d == 0)
    m, fz = (1, m) if side_by_side else (m, 1)
    base = ConvTile(n, c, h, w, o, kh, kw, tuple(strides), tuple(pads), tuple(dilations), groups, m, fz, rows,
                    1, 1, 1)
    budget = target.local_memory_bytes - 1024  # the rest: the kernel's other local arrays, driver use
    fits = [t for t in (_with(base, vx=vx, ry=ry) for vx in (1, 2, 4, 8) for ry in (1, 2, 4, 8, 16, 32))
            if t.vx * t.ry <= max_items and t.work_items <= target.work_group_size and t.tr * t.tc * 4 <= budget]
    waste = {t: t.tiles_y * t.th * t.tiles_x * t.tw / (t.oh * t.ow) for t in fits}
    # useful work per work-item slot, with work-groups below 32 work-items counted as idle lanes
    t = max(fits, key=lambda t: (round(min(t.work_items, 32) / waste[t], 3), t.work_items))
    return _with(t, cb=max(1, min(t.cg, budget // (t.tr * t.tc * 4))))


def _with(t: ConvTile, **changes) -> ConvTile:
    from dataclasses import replace

    return replace(t, **changes)


# --- emitters shared by the kernels ---------------------------------------------------------------


@dataclass(frozen=True)
class Ids:
    """The thread variables of one work-item and the tile they name."""

    fb: object  # filter block (blockIdx.x)
    fz: object  # filter of the block side by side (threadIdx.z)
    n: object
    oy0: object  # first output row of the work-group's tile
    ox0: object
    tx: object
    ty: object


def launch(t: ConvTile, filter_blocks: int):
    """Open the launch frames; returns (frames to enter, a function giving the Ids)."""
    bx, by = T.env_thread("blockIdx.x"), T.env_thread("blockIdx.y")
    tx, ty, tz = T.env_thread("threadIdx.x"), T.env_thread("threadIdx.y"), T.env_thread("threadIdx.z")
    frames = [T.launch_thread(bx, filter_blocks), T.launch_thread(by, t.n * t.tiles_y * t.tiles_x),
              T.launch_thread(tz, t.fz), T.launch_thread(ty, t.ry), T.launch_thread(tx, t.vx)]
    per_image = t.tiles_y * t.tiles_x

    def ids() -> Ids:
        tile = by % per_image
        return Ids(bx, tz, by // per_image, tile // t.tiles_x * t.th, tile % t.tiles_x * t.tw, tx, ty)

    return frames, ids


def barrier() -> None:
    T.evaluate(T.tvm_storage_sync("shared"))


def load_tile(data, tile, t: ConvTile, ids: Ids, c0, count: int) -> None:
    """tile[cc, r, q] = data[n, c0 + cc, iy0 + r, ix0 + q] for cc < count (zeros outside the image
    or past the group's channels), copied cooperatively by the work-group's work-items."""
    total, items = t.cb * t.tr * t.tc, t.work_items
    tid = (ids.fz * t.ry + ids.ty) * t.vx + ids.tx
    iy0 = ids.oy0 * t.strides[0] - t.pads[0]
    ix0 = ids.ox0 * t.strides[1] - t.pads[1]
    with T.serial(0, ceil_div(total, items)) as i:
        flat = i * items + tid
        cc, rest = flat // (t.tr * t.tc), flat % (t.tr * t.tc)
        y, x = iy0 + rest // t.tc, ix0 + rest % t.tc
        with T.If(flat < total):
            with T.Then():
                inside = tirx.all(cc < count, y >= 0, y < t.h, x >= 0, x < t.w)
                value = data[ids.n, tirx.min(c0 + cc, t.c - 1), tirx.max(tirx.min(y, t.h - 1), 0),
                             tirx.max(tirx.min(x, t.w - 1), 0)]
                T.buffer_store(tile, tirx.Select(inside, value, tirx.const(0.0, "float32")), [cc, rest // t.tc,
                                                                                                rest % t.tc])


def tap_input(tile, t: ConvTile, ids: Ids, cc, r: int, ky: int, kx: int):
    """The float4 of tile inputs that output row r of this work-item reads at tap (ky, kx)."""
    row = (ids.ty * t.rows + r) * t.strides[0] + ky * t.dilations[0]
    col = ids.tx * LANES * t.strides[1] + kx * t.dilations[1]
    return tile[cc, row, tirx.Ramp(col, t.strides[1], LANES)]


def fma(acc, m: int, r: int, weight, value) -> None:
    idx = [m, r, tirx.Ramp(0, 1, LANES)]
    T.buffer_store(acc, acc[idx] + tirx.Broadcast(weight, LANES) * value, idx)


def zero(acc, t: ConvTile) -> None:
    for m in range(t.m):
        for r in range(t.rows):
            T.buffer_store(acc, tirx.Broadcast(tirx.const(0.0, "float32"), LANES), [m, r, tirx.Ramp(0, 1, LANES)])


def store(out, acc, t: ConvTile, ids: Ids, filt_of, bias, act: Activation | None) -> None:
    """out[n, filt_of(m), rows of this work-item, its 4 columns] = act(acc[m] + bias) for every m.

    Runtime loops, not unrolled ones: PoCL's barrier handling replicates the code after the last
    barrier once per branch, so a few dozen unrolled guarded stores took minutes to compile."""
    ox = ids.ox0 + ids.tx * LANES
    with T.serial(0, t.m) as m, T.serial(0, t.rows) as r:
        filt = filt_of(m)
        oy = ids.oy0 + ids.ty * t.rows + r
        with T.If(tirx.all(oy < t.oh, ox + LANES <= t.ow)):
            with T.Then():
                value = acc[m, r, tirx.Ramp(0, 1, LANES)]
                if bias is not None:
                    value = value + tirx.Broadcast(bias[filt], LANES)
                T.buffer_store(out, apply_activation(value, act, LANES), [ids.n, filt, oy, tirx.Ramp(ox, 1, LANES)])
            with T.Else():
                with T.serial(0, LANES) as lane:
                    with T.If(tirx.all(oy < t.oh, ox + lane < t.ow)):
                        with T.Then():
                            value = acc[m, r, lane] + (bias[filt] if bias is not None else 0.0)
                            T.buffer_store(out, apply_activation(value, act, 1), [ids.n, filt, oy, ox + lane])
