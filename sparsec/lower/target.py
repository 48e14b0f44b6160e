"""The TVM side of `sparsec.target.Target`: this machine's LLVM CPU name and TVM target objects."""

from __future__ import annotations

import functools
import os

import tvm

from sparsec import target as targets
from sparsec.errors import UserError
from sparsec.target import Target, host_threads

__all__ = ["check_runs_here", "host", "host_target", "host_threads", "resolve_runnable", "resolve_target",
           "size_thread_pool", "tvm_target"]

# LLVM CPU features that are instructions (not tuning hints such as "fast-gather"): a target whose CPU
# has one this machine lacks compiles code that dies here with SIGILL
INSTRUCTION_FEATURES = ("sse", "ssse", "avx", "fma", "f16c", "amx", "neon", "sve", "dotprod", "fullfp16", "i8mm",
                        "bf16")


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


def instruction_features(target: Target) -> set[str]:
    """The vector instruction sets LLVM lets the code of `target`'s CPU use."""
    features = tvm.target.codegen.llvm_get_cpu_features(tvm_target(target))
    return {str(f) for f in features if str(f).startswith(INSTRUCTION_FEATURES)}


def missing_instructions(target: Target) -> tuple[str, ...]:
    """The instruction sets `target`'s CPU code may use that this machine's CPU lacks (a CPU target
    of this machine's architecture; its code would die here with SIGILL)."""
    return _missing_on(target, host_cpu())


@functools.cache
def _missing_on(target: Target, cpu: str) -> tuple[str, ...]:  # a compiled model asks at every run
    return tuple(sorted(instruction_features(target) - instruction_features(targets.host(cpu))))


def check_runs_here(target: Target, what: str) -> None:
    """Refuse, before any compiling, a target whose code this machine cannot run: `what` (the
    command) names why it must run here."""
    here = host()
    if target.kind != "cpu" or target.arch != here.arch:
        kind = "a GPU" if target.kind != "cpu" else target.arch
        raise UserError(f"{what} runs the compiled code on this machine ({here.arch}); target "
                        f"{target.name} is {kind}: give a target of this machine's architecture"
                        + (" (`--count-instructions` counts an aarch64 target's instructions under qemu)"
                           if target.arch == "aarch64" and what == "bench" else ""))
    missing = missing_instructions(target)
    if missing:
        raise UserError(f"{what} runs the compiled code on this machine ({here.cpu}); target "
                        f"{target.name}'s CPU {target.cpu} uses instructions it lacks ({', '.join(missing)}): "
                        "name an older CPU in the target's tvm mcpu")


def resolve_runnable(spec: str, what: str) -> Target:
    """The target of `--target-json SPEC` for `what`, a command that runs its code here (another vector
    shape of this machine: `{"isa": "avx2", ...}`), refused by name unless this CPU runs it."""
    target = resolve_target(spec=spec)
    check_runs_here(target, what)
    return target
