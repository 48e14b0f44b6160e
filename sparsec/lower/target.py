"""The TVM side of `sparsec.target.Target`: this machine's LLVM CPU name and TVM target objects."""

from __future__ import annotations

import tvm

from sparsec import target as targets
from sparsec.target import Target, host_threads

__all__ = ["host", "host_target", "host_threads", "resolve_target", "tvm_target"]


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
