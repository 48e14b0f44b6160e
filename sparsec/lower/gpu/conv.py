"""sparsec's dense GPU convolution (direct, any stride / padding / dilation / groups, depthwise
included), in the shape of `tiles`: the input tile in local memory, each weight loaded once per
work-item and broadcast over the float4s of its R rows.

This is also the baseline of the static GPU report: the pattern kernel's global loads per useful
FMA are compared with this kernel's on the same pruned layer (where it multiplies the zeros too).
"""

from __future__ import annotations

import numpy as np
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from sparsec.ir.activation import Activation
from sparsec.lower.gpu import tiles
from sparsec.lower.gpu.tiles import LANES, ConvTile
from sparsec.lower.kernels.common import Kernel
from sparsec.target import Target


def dense_conv_kernel(weight: np.ndarray, in_shape, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                      groups: int = 1, bias: np.ndarray | None = None, activation: Activation | None = None,
                      target: Target, name: str = "conv") -> Kernel:
    """`act(conv(data, weight) + bias)`, NCHW float32, weight [O, I/groups, KH, KW]."""
    t = tiles.plan(in_shape, weight.shape, strides, pads, dilations, groups, target)
    constants = (np.ascontiguousarray(weight, np.float32),) + ((np.asarray(bias, np.float32),) if bias is not None
                                                                else ())
    out_shape = (t.n, t.o, t.oh, t.ow)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(name)
            T.func_attr({"tirx.noalias": True, "global_symbol": name})
            data = T.arg("data", T.buffer((t.n, t.c, t.h, t.w), "float32"))
            w = T.arg("weight", T.buffer(weight.shape, "float32"))
            b = T.arg("bias", T.buffer(bias.shape, "float32")) if bias is not None else None
            out = T.arg("out", T.buffer(out_shape, "float32"))
            _emit(t, data, w, b, out, activation)
    return Kernel(ib.get(), constants, out_shape, "float32")


def _emit(t: ConvTile, data, w, b, out, act) -> None:
    frames, ids_of = tiles.launch(t, t.o // t.m)
    with frames[0], frames[1], frames[2], frames[3], frames[4]:
        ids = ids_of()
        tile = T.alloc_buffer((t.cb, t.tr, t.tc), "float32", scope="shared")
        acc = T.alloc_buffer((t.m, t.rows, LANES), "float32", scope="local")
        first = ids.fb * t.m  # the block's filters lie in one conv group (M divides O / groups)
        c_base = first // t.og * t.cg
        tiles.zero(acc, t)
        with T.serial(0, t.blocks) as blk:
            count = min(t.cb, t.cg)  # channels of a full block; the last one may hold fewer
            tiles.barrier()
            tiles.load_tile(data, tile, t, ids, c_base + blk * t.cb, _block_size(t, blk))
            tiles.barrier()
            with T.serial(0, count) as cc:
                with T.If(blk * t.cb + cc < t.cg):
                    with T.Then():
                        _emit_channel(t, w, tile, acc, ids, first, blk * t.cb + cc, cc)
        tiles.store(out, acc, t, ids, lambda m: first + m, b, act)


def _block_size(t: ConvTile, blk):
    from tvm import tirx

    return tirx.min(t.cb, t.cg - blk * t.cb)


def _emit_channel(t: ConvTile, w, tile, acc, ids, first, c, cc) -> None:
    """Every tap of channel c for the block's M filters: one scalar weight load feeds R float4 FMAs."""
    for m in range(t.m):
        for ky in range(t.kh):
            for kx in range(t.kw):
                weight = T.bind(w[first + m, c, ky, kx])  # one load, R float4 FMAs
                for r in range(t.rows):
                    tiles.fma(acc, m, r, weight, tiles.tap_input(tile, t, ids, cc, r, ky, kx))
