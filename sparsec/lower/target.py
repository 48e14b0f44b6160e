"""The TVM side of `sparsec.target.Target`: this machine's LLVM CPU name and TVM target objects."""

from __future__ import annotations

import os

import tvm

from sparsec import target as targets
from sparsec.target import Target, host_threads

__all__ = ["host", "host_target", "host_threads", "resolve_target", "size_thread_pool", "tvm_target"]


def size_thread_pool() -> None:
    """Give TVM's thread pool the host target's threads unless the user chose (TVM_NUM_THREADS):
    on x86 it defaults to half the cores, assuming two hardware threads per core (one thread on a
    2-core VM, where `sparsec calibrate` then timed every kernel at half speed). TVM reads it once,
    when the pool starts at the first parallel run: so this runs when sparsec imports TVM."""
    os.environ.setdefault("TVM_NUM_THREADS", str(host_threads()))


size_thread_pool()


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (znver3, skylake-avx512, neoverse-n1, ...)."""
    return str(tvm.target.codegen.llvm_get_system_cpu())


def host(threads: int | None = None) -> Target:
    """This machine's target, as it really is."""
    return targets.host(host_cpu(), threads)


def resolve_target(name: str = "host", cpu: str | None = None, spec: str | None = None,
                   cc: str | None = None) -> Target:
    """The Target of `--target NAME [--cpu CPU] [--cc CC]` or `--target-json SPEC`."""
    return targets.resolve(name, cpu, spec, cc, host_cpu=host_cpu())


def tvm_target(target: Target) -> tvm.target.Target:
    """The TVM target object `tvm.compile` gets for `target`."""
    return tvm.target.Target(target.tvm_dict())


def host_target(threads: int | None = None) -> tvm.target.Target:
    """The TVM target of this machine (benchmarks compile single kernels with it)."""
    return tvm_target(host(threads))
