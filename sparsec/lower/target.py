"""Targets sparsec compiles for, as TVM target objects."""

from __future__ import annotations

import os

import tvm

from sparsec.errors import UserError

SUPPORTED_TARGETS = ("host",)


def host_threads() -> int:
    """Threads for the host target: TVM_NUM_THREADS if set, else every core."""
    return int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))


def host_target(threads: int | None = None) -> tvm.target.Target:
    """This machine's CPU through LLVM, with its real microarchitecture (znver3, skylake, ...)."""
    cpu = tvm.target.codegen.llvm_get_system_cpu()
    return tvm.target.Target({"kind": "llvm", "mcpu": cpu, "num-cores": threads or host_threads()})


def resolve_target(name: str) -> tvm.target.Target:
    """The TVM target for a `--target` name; an unknown name is a user error."""
    if name == "host":
        return host_target()
    raise UserError(
        f"target {name!r} is not supported; choose one of: {', '.join(SUPPORTED_TARGETS)}"
    )
