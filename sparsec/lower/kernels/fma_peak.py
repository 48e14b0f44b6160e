"""The machine's fp32 FMA peak, measured by a kernel TVM generates for the target: the roofline
that every other kernel is judged against (useful FLOP/s / peak).

Each thread runs `chains` independent vector FMA chains (`acc = acc * a + b`), as many as the
target's registers hold with room to spare, so the FMA units never wait on a result: the
loop is bound by FMA throughput alone, as a perfect dense kernel would be.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from sparsec.lower.kernels.common import Kernel
from sparsec.target import Target


def fma_chains(target: Target) -> int:
    """Independent accumulator vectors per thread: enough to hide FMA latency on two FMA units
    (2 x 4-5 cycles), never more than the registers hold beside the two operands."""
    return max(2, min(target.vector_registers - 4, 16))


def fma_peak_kernel(target: Target, threads: int, iterations: int) -> tuple[Kernel, int]:
    """The kernel `(coefficients[2, lanes]) -> out[threads, chains * lanes]` and the FLOPs one
    call performs (2 per lane per FMA)."""
    lanes, chains = target.lanes("float32"), fma_chains(target)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("fma_peak")
            T.func_attr({"tirx.noalias": True, "global_symbol": "fma_peak"})
            coef = T.arg("coef", T.buffer((2, lanes), "float32"))
            out = T.arg("out", T.buffer((threads, chains * lanes), "float32"))
            with T.parallel(0, threads) as t:
                acc = T.alloc_buffer((chains * lanes,), "float32")  # on the stack: LLVM keeps it in registers
                a, b = coef[0, tirx.Ramp(0, 1, lanes)], coef[1, tirx.Ramp(0, 1, lanes)]
                for c in range(chains):
                    T.buffer_store(acc, b + tirx.Broadcast(tirx.Cast("float32", t), lanes), [_vec(c, lanes)])
                with T.serial(0, iterations):
                    for c in range(chains):
                        T.buffer_store(acc, acc[_vec(c, lanes)] * a + b, [_vec(c, lanes)])
                for c in range(chains):
                    T.buffer_store(out, acc[_vec(c, lanes)], [t, _vec(c, lanes)])
    flops = 2 * threads * iterations * chains * lanes
    return Kernel(ib.get(), (), (threads, chains * lanes), "float32"), flops


def _vec(c: int, lanes: int):
    return tirx.Ramp(c * lanes, 1, lanes)
