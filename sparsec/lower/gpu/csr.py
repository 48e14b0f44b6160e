"""CSR-sparse 1x1 convolution and fully connected layer on the GPU.

1x1 conv: a work-group per (filter, block of output pixels); work-items split the pixels, a float4
each. Every work-item of a work-group walks the same CSR row (no divergence): per nonzero, its
channel and value (two global loads) and the float4 of input pixels (one load at stride 1, four
otherwise). The last float4 of a plane is shifted back to end at the plane's end (it recomputes a
few pixels rather than branching).
FC: a work-group per output (row of the weight, batch row); its work-items take every 64th nonzero
of the row and a tree in local memory sums their partial sums.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from sparsec.fkw import smallest_uint
from sparsec.ir.activation import Activation
from sparsec.lower.kernels.common import Kernel, apply_activation, ceil_div
from sparsec.target import Target

REDUCE_ITEMS = 64  # work-items per FC output
MAX_PIXEL_ITEMS = 64


def csr_arrays(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rowptr (int32), col (smallest uint), val (float32) of a 2-D weight's nonzeros."""
    rows, cols = np.nonzero(weight)
    rowptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=weight.shape[0]))]).astype(np.int32)
    col = cols.astype(smallest_uint(max(weight.shape[1] - 1, 0)))
    if col.size == 0:  # an all-zero weight still needs buffers
        col, vals = np.zeros(1, col.dtype), np.zeros(1, np.float32)
    else:
        vals = weight[rows, cols].astype(np.float32)
    return rowptr, col, vals


def _prim_func(name: str, params: list[tuple[str, tuple, str]], emit) -> tirx.PrimFunc:
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tirx.noalias": True, "global_symbol": name})
            bufs = [T.arg(nm, T.buffer(shape, dtype)) for nm, shape, dtype in params]
            emit(*bufs)
    return ib.get()


def csr_conv1x1_kernel(weight: np.ndarray, in_shape, *, strides=(1, 1), bias: np.ndarray | None = None,
                       activation: Activation | None = None, target: Target, name: str = "csr_conv") -> Kernel:
    """`act(conv1x1(data, weight) + bias)` (no padding), NCHW float32, weight [O, C, 1, 1]."""
    n, c, h, w = (int(d) for d in in_shape)
    o = int(weight.shape[0])
    oh, ow = (h - 1) // strides[0] + 1, (w - 1) // strides[1] + 1
    pixels = oh * ow
    lanes = target.lanes() if pixels >= target.lanes() else 1
    items = min(MAX_PIXEL_ITEMS, ceil_div(pixels, lanes))
    blocks = ceil_div(pixels, items * lanes)
    constants = csr_arrays(weight.reshape(o, c))
    constants += (np.asarray(bias, np.float32),) if bias is not None else ()
    out_shape = (n, o, oh, ow)

    def emit(data, rowptr, col, val, *rest):
        b, out = (rest[0], rest[1]) if bias is not None else (None, rest[0])
        flat_in = T.decl_buffer((n * c * h * w,), "float32", data=data.data)
        flat_out = T.decl_buffer((n * o * pixels,), "float32", data=out.data)
        bx, by, tx = T.env_thread("blockIdx.x"), T.env_thread("blockIdx.y"), T.env_thread("threadIdx.x")
        with T.launch_thread(bx, o), T.launch_thread(by, n * blocks), T.launch_thread(tx, items):
            img, blk = by // blocks, by % blocks
            base = tirx.min((blk * items + tx) * lanes, pixels - lanes)
            acc = T.alloc_buffer((lanes,), "float32", scope="local")
            vec = tirx.Ramp(0, 1, lanes) if lanes > 1 else 0
            T.buffer_store(acc, tirx.Broadcast(tirx.const(0.0, "float32"), lanes) if lanes > 1 else 0.0, [vec])
            first = T.bind(rowptr[bx])
            with T.serial(0, rowptr[bx + 1] - first) as i:
                j = first + i
                plane = T.bind((img * c + tirx.Cast("int32", col[j])) * h * w)
                scale = T.bind(val[j])
                if strides == (1, 1) and lanes > 1:  # one float4 load
                    x = flat_in[tirx.Ramp(plane + base, 1, lanes)]
                    T.buffer_store(acc, acc[vec] + tirx.Broadcast(scale, lanes) * x, [vec])
                else:  # strided pixels: one load per lane
                    for lane in range(lanes):
                        p = base + lane
                        x = flat_in[plane + p // ow * strides[0] * w + p % ow * strides[1]]
                        T.buffer_store(acc, acc[lane] + scale * x, [lane])
            value = acc[vec]
            if b is not None:
                value = value + (tirx.Broadcast(b[bx], lanes) if lanes > 1 else b[bx])
            dst = (img * o + bx) * pixels + base
            T.buffer_store(flat_out, apply_activation(value, activation, lanes),
                           [tirx.Ramp(dst, 1, lanes) if lanes > 1 else dst])

    params = [("data", tuple(in_shape), "float32")] + [(nm, a.shape, str(a.dtype)) for nm, a in
                                                      zip(("rowptr", "col", "val", "bias"), constants)]
    func = _prim_func(name, params + [("out", out_shape, "float32")], emit)
    return Kernel(func, constants, out_shape, "float32")


def csr_dense_kernel(weight: np.ndarray, in_shape, *, bias: np.ndarray | None = None,
                     activation: Activation | None = None, target: Target, name: str = "csr_linear") -> Kernel:
    """y[m, r] = act(sum_k x[m, k] * weight[r, k] + bias[r]), weight [N, K] as CSR."""
    m_rows, k_dim = (int(d) for d in in_shape)
    n_out = int(weight.shape[0])
    constants = csr_arrays(weight)
    constants += (np.asarray(bias, np.float32),) if bias is not None else ()
    out_shape = (m_rows, n_out)

    def emit(x, rowptr, col, val, *rest):
        b, out = (rest[0], rest[1]) if bias is not None else (None, rest[0])
        bx, by, tx = T.env_thread("blockIdx.x"), T.env_thread("blockIdx.y"), T.env_thread("threadIdx.x")
        with T.launch_thread(bx, n_out), T.launch_thread(by, m_rows), T.launch_thread(tx, REDUCE_ITEMS):
            part = T.alloc_buffer((REDUCE_ITEMS,), "float32", scope="shared")
            acc = T.alloc_buffer((1,), "float32", scope="local")
            T.buffer_store(acc, 0.0, [0])
            count = rowptr[bx + 1] - rowptr[bx] - tx
            with T.serial(0, (count + REDUCE_ITEMS - 1) // REDUCE_ITEMS) as i:
                j = rowptr[bx] + tx + i * REDUCE_ITEMS
                T.buffer_store(acc, acc[0] + val[j] * x[by, tirx.Cast("int32", col[j])], [0])
            T.buffer_store(part, acc[0], [tx])
            step = REDUCE_ITEMS // 2
            while step >= 1:
                T.evaluate(T.tvm_storage_sync("shared"))
                with T.If(tx < step):
                    with T.Then():
                        T.buffer_store(part, part[tx] + part[tx + step], [tx])
                step //= 2
            T.evaluate(T.tvm_storage_sync("shared"))
            with T.If(tx == 0):
                with T.Then():
                    value = part[0] + (b[bx] if b is not None else 0.0)
                    T.buffer_store(out, apply_activation(value, activation, 1), [by, bx])

    params = [("x", tuple(in_shape), "float32")] + [(nm, a.shape, str(a.dtype)) for nm, a in
                                                   zip(("rowptr", "col", "val", "bias"), constants)]
    func = _prim_func(name, params + [("out", out_shape, "float32")], emit)
    return Kernel(func, constants, out_shape, "float32")
