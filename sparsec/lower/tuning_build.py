"""The tuner's builder: candidates (a task's kernel with one configuration of knobs) compiled here,
several at once in worker processes, each exported as a shared library linked by the target's
compiler (g++ here, the cross compiler for arm64, the NDK's clang for Android: never a `.tar`
left for the device to link) beside an `.npz` of its arguments.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparsec.errors import error_line
from sparsec.ir.knobs import Knobs
from sparsec.target import Target
from sparsec.tuning.task import KernelCall, Task

INPUT_SEED = 0  # every candidate of a task reads the same input


@dataclass(frozen=True)
class BuildResult:
    """A built candidate: the library, its function, the `.npz` of its arguments (inputs, then a
    residual shaped like the output when the call has one, then constants: `arg0`, `arg1`, ...),
    the output's shape; or the error that stopped the build."""

    config: Knobs
    library: str = ""
    func: str = ""
    arrays: str = ""
    out_shape: tuple[int, ...] = ()
    out_dtype: str = "float32"
    error: str | None = None
    seconds: float = 0.0


def save_call(call: KernelCall, path: Path) -> None:
    """Write a kernel call for the builder's workers (arrays as .npz, parameters as JSON)."""
    arrays = {f"structure/{k}": v for k, v in call.structure.items()}
    arrays.update({f"values/{k}": v for k, v in call.values.items()})
    with open(path, "wb") as f:
        np.savez(f, __meta__=np.array(json.dumps({"generator": call.generator, "params": call.params})), **arrays)


_CALLS: dict[str, KernelCall] = {}


def load_call(path: str) -> KernelCall:
    if path not in _CALLS:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["__meta__"]))
            parts = {"structure": {}, "values": {}}
            for name in npz.files:
                if "/" in name:
                    group, _, key = name.partition("/")
                    parts[group][key] = npz[name]
        _CALLS[path] = KernelCall(meta["generator"], meta["params"], parts["structure"], parts["values"])
    return _CALLS[path]


def export_function(target: Target):
    """How the library is linked: the NDK for Android, the target's cross compiler, else g++ here."""
    if "android" in str(target.tvm_dict().get("mtriple", "")):
        from tvm.support import ndk

        return ndk.create_shared
    if target.cc:
        from tvm.support import cc

        return cc.cross_compiler(target.cc)
    return None


def build_candidate(call_path: str, target_spec: dict, pairs: tuple, out_dir: str) -> BuildResult:
    """Generate, compile and export one candidate (runs in a builder worker)."""
    import tvm

    from sparsec.lower.layers import build_kernel
    from sparsec.lower.target import tvm_target

    config, start = Knobs(tuple(pairs)), time.perf_counter()
    target = Target.from_dict(target_spec)
    try:
        call = load_call(call_path)
        kernel = build_kernel(call, config, target)
        name = "tuned_kernel"
        lib = tvm.compile(kernel.func.with_attr("global_symbol", name), target=tvm_target(target))
        stem = Path(out_dir) / f"c{os.getpid()}-{time.monotonic_ns()}"
        library, arrays = f"{stem}.so", f"{stem}.npz"
        fcompile = export_function(target)
        lib.export_library(library, **({"fcompile": fcompile} if fcompile else {}))
        inputs = candidate_inputs(call, kernel.out_shape)
        np.savez(arrays, **{f"arg{i}": np.ascontiguousarray(a) for i, a in enumerate([*inputs, *kernel.constants])})
    except Exception as err:  # a configuration TVM or the generator rejects is a failed trial
        return BuildResult(config, error=f"build: {_reason(err)}", seconds=time.perf_counter() - start)
    return BuildResult(config, library, name, arrays, tuple(kernel.out_shape), kernel.out_dtype,
                       seconds=time.perf_counter() - start)


def candidate_inputs(call: KernelCall, out_shape) -> list[np.ndarray]:
    """The kernel's run-time inputs in parameter order: the data, and a residual of the output's
    shape when the call has one (seeded: every candidate of a task reads the same)."""
    rng = np.random.default_rng(INPUT_SEED)
    inputs = [rng.standard_normal(call.params["in_shape"]).astype(np.float32)]
    if call.residual:
        inputs.append(rng.standard_normal(tuple(out_shape)).astype(np.float32))
    return inputs


def _reason(err: Exception) -> str:
    return f"{type(err).__name__}: {error_line(err, '')}"


class LocalBuilder:
    """Builds candidates in `workers` fresh processes (spawned: no TVM thread pool is forked)."""

    def __init__(self, out_dir: Path, workers: int | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._pool = self._new_pool()
        self._calls: dict[str, str] = {}
        self._closed = False

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def _call_path(self, task: Task) -> str:
        if task.key not in self._calls:
            path = self.out_dir / f"{task.key}.call.npz"
            save_call(task.call, path)
            self._calls[task.key] = str(path)
        return self._calls[task.key]

    def submit(self, task: Task, config: Knobs) -> Future:
        """A future of the candidate's BuildResult (a crashed worker gives an error result)."""
        args = (self._call_path(task), task.target.to_dict(), config.pairs, str(self.out_dir))
        try:
            inner = self._pool.submit(build_candidate, *args)
        except BrokenProcessPool:
            self._pool = self._new_pool()
            inner = self._pool.submit(build_candidate, *args)
        pool, outer = self._pool, Future()

        def done(f: Future) -> None:
            try:
                outer.set_result(f.result())
            except BrokenProcessPool:
                outer.set_result(BuildResult(config, error="build: the builder process crashed"))
                if self._pool is pool and not self._closed:  # the first of its futures to fail replaces it
                    self._pool = self._new_pool()
            except BaseException as err:  # noqa: BLE001 - a worker's KeyboardInterrupt too: never a lost future
                outer.set_result(BuildResult(config, error=f"build: {_reason(err)}"))

        inner.add_done_callback(done)
        return outer

    def close(self) -> None:
        """Stop: queued builds are dropped and running ones killed, so no worker writes into
        `out_dir` once this returns (its owner removes the folder next: a build finishing during
        that removal made it fail, and Ctrl-C ended in a traceback instead of its message)."""
        self._closed = True
        workers = list(self._pool._processes.values())  # no public handle before Python 3.14
        self._pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.join(timeout=30)
