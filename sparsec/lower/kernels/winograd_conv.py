"""Dense 3x3 stride-1 convolution by Winograd's minimal filtering F(m x m, 3 x 3) (Lavin & Gray, 2016).

Y = A^T [ (G g G^T) * (B^T d B) ] A computes an m x m output tile from an alpha x alpha input tile
d (alpha = m + 2) with alpha^2 multiplies per (filter, channel) instead of 9 m^2: F(2x2, 3x3)
needs 1/2.25 of direct's, F(4x4, 3x3) 1/4. Summed over channels, the element-wise products are
alpha^2 independent GEMMs. Data flow, three passes of one TIR function (IRBuilder):
1. Input transform, parallel over (image, channel): per row of tiles, the alpha input rows it
   reads are copied zero-padded and split by column phase (x mod m), so a tap column of `lanes`
   consecutive tiles is one contiguous vector; V[e, c, p] = (B^T d B)[e] for every tile p.
2. GEMMs, parallel over (e, block of tiles): M[e, k, p] = sum_c U[e, k, c] V[e, c, p], with a
   register tile of filters (weights broadcast) x vectors of tiles, as the direct conv's GEMM.
   U = G g G^T is computed at compile time (the weights are constants).
3. Output transform, parallel over (image, filter): A^T M A per tile, interleaved back into the
   output rows, then bias, residual and activation on the cropped rows.
The transforms' coefficients are compile-time constants: zero terms vanish and +-1 terms are
plain adds. Error: F(4x4) rounds more than direct (its points 0, +-1, +-2 scale terms up to 8x);
measured max relative error against float64 stays under 1e-5 on VGG layers (tests check 1e-4).
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from sparsec.ir.activation import Activation
from sparsec.lower.kernels.common import Kernel, apply_activation
from sparsec.lower.kernels.winograd_plan import TRANSFORMS, Geometry, Tiling, plan, transform_weight


def _pack_weight(weight: np.ndarray, g: Geometry, t: Tiling) -> np.ndarray:
    """U as [E, O/ob, C, ob] (zero filters pad O): a register tile's weights for one channel are contiguous."""
    u = transform_weight(weight, g.m)
    padded = np.zeros((g.transforms, t.op, g.c), np.float64)
    padded[:, : g.o] = u
    packed = padded.reshape(g.transforms, t.op // t.ob, t.ob, g.c).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(packed, np.float32)


# --- emitters ------------------------------------------------------------------------------


def _span(base, lanes: int):
    """Index of `lanes` consecutive elements from `base` (a scalar index when lanes == 1)."""
    return tirx.Ramp(base, 1, lanes) if lanes > 1 else base


def _const(value: float, lanes: int):
    c = tirx.const(float(value), "float32")
    return tirx.Broadcast(c, lanes) if lanes > 1 else c


def _combine(coefs: np.ndarray, terms: list, lanes: int):
    """sum(coef * term) with the compile-time coefficients: zeros dropped, +-1 as add/subtract."""
    total = None
    for coef, term in zip(coefs, terms):
        if coef == 0:
            continue
        scaled = term if abs(coef) == 1 else term * _const(abs(coef), lanes)
        if total is None:
            total = scaled if coef > 0 else _const(0.0, lanes) - scaled
        else:
            total = total + scaled if coef > 0 else total - scaled
    return total if total is not None else _const(0.0, lanes)


def _chunks(count: int, lanes: int):
    """(start, length) of `lanes`-wide pieces covering range(count)."""
    return [(s, min(lanes, count - s)) for s in range(0, count, lanes)]


def _emit_row_copy(data, rows, g: Geometry, nn, c, ty) -> None:
    """rows[i, x mod m, x div m] = the zero-padded input row ty*m + i, column x (padded coordinates)."""
    top, left = g.pads[0], g.pads[1]
    with T.serial(0, g.alpha) as i:
        y = ty * g.m + i - top
        with T.serial(0, g.qx * g.m) as xq:
            x = xq - left
            inside = tirx.all(y >= 0, y < g.h, x >= 0, x < g.w)
            val = tirx.if_then_else(inside, data[nn, c, y, x], tirx.const(0.0, "float32"))
            T.buffer_store(rows, val, [i, xq % g.m, xq // g.m])


def _emit_input_transform(data, v_buf, g: Geometry, t: Tiling) -> None:
    """V[e, c, p] = (B^T d B)[e] for every tile p; tiles past the last are zero (the GEMMs read them)."""
    bt = TRANSFORMS[g.m][2]
    a = g.alpha
    with T.parallel(0, g.n * g.c) as nc:
        nn, c = nc // g.c, nc % g.c
        rows = T.alloc_buffer((a, g.m, g.qx), "float32")
        half = T.alloc_buffer((a, a, t.lanes), "float32")  # B^T applied along the columns
        with T.serial(0, g.ty) as ty:
            _emit_row_copy(data, rows, g, nn, c, ty)
            first = (nn * g.ty + ty) * g.tx
            for start, lanes in _chunks(g.tx, t.lanes):
                for i in range(a):
                    taps = [rows[i, j % g.m, _span(start + j // g.m, lanes)] for j in range(a)]
                    for e2 in range(a):
                        val = _combine(bt[e2], taps, lanes)
                        T.buffer_store(half, val, [i, e2, _span(0, lanes)])
                for e1 in range(a):
                    for e2 in range(a):
                        val = _combine(bt[e1], [half[i, e2, _span(0, lanes)] for i in range(a)], lanes)
                        T.buffer_store(v_buf, val, [e1 * a + e2, c, _span(first + start, lanes)])
    if t.pp > g.tiles:
        with T.parallel(0, g.transforms) as e:
            with T.serial(0, g.c) as c:
                with T.serial(g.tiles, t.pp) as p:
                    T.buffer_store(v_buf, tirx.const(0.0, "float32"), [e, c, p])


def _emit_gemms(u_buf, v_buf, m_buf, g: Geometry, t: Tiling) -> None:
    """M[e, k, p] = sum_c U[e, k, c] V[e, c, p]: tasks ordered e-major, so a thread's consecutive
    tasks share U[e] in its cache; per task, every filter tile reuses the task's V block."""
    blocks = t.pp // t.width
    with T.parallel(0, g.transforms * blocks) as task:
        e, p0 = task // blocks, task % blocks * t.width
        with T.serial(0, t.op // t.ob) as kb:
            # "global" scope: TVM 0.27 puts small allocations on the stack, where LLVM keeps them in registers
            acc = T.alloc_buffer((t.ob, t.width), "float32")
            for o in range(t.ob):
                for v in range(t.vectors):
                    T.buffer_store(acc, _const(0.0, t.lanes), [o, _span(v * t.lanes, t.lanes)])
            with T.serial(0, g.c) as c:
                src = [v_buf[e, c, _span(p0 + v * t.lanes, t.lanes)] for v in range(t.vectors)]
                for o in range(t.ob):
                    w = tirx.Broadcast(u_buf[e, kb, c, o], t.lanes) if t.lanes > 1 else u_buf[e, kb, c, o]
                    for v in range(t.vectors):
                        at = [o, _span(v * t.lanes, t.lanes)]
                        T.buffer_store(acc, acc[tuple(at)] + w * src[v], at)
            for o in range(t.ob):
                for v in range(t.vectors):
                    T.buffer_store(m_buf, acc[o, _span(v * t.lanes, t.lanes)],
                                   [e, kb * t.ob + o, _span(p0 + v * t.lanes, t.lanes)])


def _interleave(values: list, lanes: int):
    """[a0, b0, .., a1, b1, ..]: m vectors of tile values -> output columns in order."""
    if lanes == 1:
        return tirx.Shuffle(values, list(range(len(values))))
    return tirx.Shuffle(values, [j * lanes + i for i in range(lanes) for j in range(len(values))])


def _emit_output_transform(m_buf, out, bias, residual, act: Activation | None, g: Geometry, t: Tiling) -> None:
    """out[n, k, y, x] = act((A^T M A)[y mod m, x mod m] of tile (y div m, x div m) + bias + residual)."""
    at_mat = TRANSFORMS[g.m][0]
    a, m = g.alpha, g.m
    with T.parallel(0, g.n * g.o) as nk:
        nn, k = nk // g.o, nk % g.o
        half = T.alloc_buffer((a, m, t.lanes), "float32")  # A^T applied along the columns
        rows = T.alloc_buffer((m, g.tx * m), "float32")  # one row of tiles, in output columns
        with T.serial(0, g.ty) as ty:
            first = (nn * g.ty + ty) * g.tx
            for start, lanes in _chunks(g.tx, t.lanes):
                for e1 in range(a):
                    sums = [m_buf[e1 * a + e2, k, _span(first + start, lanes)] for e2 in range(a)]
                    for j in range(m):
                        T.buffer_store(half, _combine(at_mat[j], sums, lanes), [e1, j, _span(0, lanes)])
                for i in range(m):
                    cols = [_combine(at_mat[i], [half[e1, j, _span(0, lanes)] for e1 in range(a)], lanes)
                            for j in range(m)]
                    T.buffer_store(rows, _interleave(cols, lanes), [i, _span(start * m, lanes * m)])
            for i in range(m):
                y = ty * m + i
                with T.If(y < g.oh):
                    with T.Then():
                        with T.serial(0, g.ow) as x:
                            val = rows[i, x]
                            if bias is not None:
                                val = val + bias[k]
                            if residual is not None:
                                val = val + residual[nn, k, y, x]
                            T.buffer_store(out, apply_activation(val, act, 1), [nn, k, y, x])


def winograd_conv_kernel(
    weight: np.ndarray,
    in_shape: tuple[int, int, int, int],
    *,
    pads: tuple[int, int, int, int],
    tile: int,
    out_block: int,
    vectors: int,
    lanes: int,
    bias: np.ndarray | None = None,
    activation: Activation | None = None,
    residual: bool = False,
    name: str = "winograd_conv",
) -> Kernel:
    """The TIR kernel of `act(conv3x3(x, weight) + bias + residual)`, stride 1, NCHW float32, by
    F(tile x tile, 3x3); params (x, [residual], u, [bias], out) like the direct conv's."""
    if tile not in TRANSFORMS:
        raise ValueError(f"Winograd output tile must be one of {sorted(TRANSFORMS)}, got {tile}")
    n, c, h, w = (int(d) for d in in_shape)
    g = Geometry.of(n, c, h, w, int(weight.shape[0]), pads, tile)
    if tuple(weight.shape[1:]) != (c, 3, 3):
        raise ValueError(f"Winograd conv needs a {c}-channel 3x3 weight, got {weight.shape}")
    if g.oh < 1 or g.ow < 1:
        raise ValueError(f"conv of {in_shape} with kernel 3x3 has an empty output")
    t = plan(g, out_block, vectors, lanes)
    packed = _pack_weight(weight, g, t)
    out_shape = (g.n, g.o, g.oh, g.ow)
    constants = (packed,) + ((np.asarray(bias, np.float32).reshape(g.o),) if bias is not None else ())
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tirx.noalias": True, "global_symbol": name})
            x = T.arg("x", T.buffer((g.n, g.c, g.h, g.w), "float32"))
            res = T.arg("residual", T.buffer(out_shape, "float32")) if residual else None
            u = T.arg("w", T.buffer(packed.shape, "float32"))
            b = T.arg("bias", T.buffer((g.o,), "float32")) if bias is not None else None
            out = T.arg("out", T.buffer(out_shape, "float32"))
            v_buf = T.alloc_buffer((g.transforms, g.c, t.pp), "float32")
            m_buf = T.alloc_buffer((g.transforms, t.op, t.pp), "float32")
            _emit_input_transform(x, v_buf, g, t)
            _emit_gemms(u, v_buf, m_buf, g, t)
            _emit_output_transform(m_buf, out, b, res, activation, g, t)
    return Kernel(ib.get(), constants, out_shape, "float32")
