"""Stopping the tuner's workers (Ctrl-C's path): the builder's processes, which `close` must stop
for good since the session removes their output folder right after, and the device slots'
workers, which their own threads may be stopping at the same moment."""

from __future__ import annotations

import psutil
import pytest

from sparsec.driver import import_model, optimize
from sparsec.lower.spaces import space_for
from sparsec.lower.target import host
from sparsec.lower.tuning_build import LocalBuilder
from sparsec.models import conv_layer
from sparsec.prune import prune_model
from sparsec.tuning.task import extract_tasks

pytestmark = pytest.mark.tvm
TARGET = host(threads=1)


def _spawned_workers() -> list[psutil.Process]:
    """Multiprocessing's spawned workers among this process's children (not its resource tracker)."""
    return [p for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]


def test_close_kills_running_builds_and_resolves_every_future(tmp_path):
    model = conv_layer((1, 16, 12, 12), 16)
    module = optimize(import_model(model, prune_model(model, keep_kernels=0.5, prune_first_conv=True)), target=TARGET)
    task = extract_tasks(module, TARGET)[0]
    default = space_for(task.call, TARGET).default
    builder = LocalBuilder(tmp_path / "build", workers=2)
    futures = [builder.submit(task, default) for _ in range(3)]
    workers = _spawned_workers()
    assert workers  # spawned by submit, still importing TVM when close comes
    builder.close()
    assert not [p for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    results = [f.result(timeout=30) for f in futures]  # none lost: each one a failed build
    assert all(r.error for r in results), [r.error for r in results]


def test_a_device_worker_its_own_thread_stops_meanwhile_is_stopped_quietly():
    """Ctrl-C kills a device slot's worker process; the slot's thread notices and stops the worker
    while `RpcRunner.close` does too (TVM's PopenWorker.kill is not thread-safe)."""
    from tvm.support.popen_pool import PopenWorker

    from runtime.rpc_runner import _kill

    worker = PopenWorker()
    worker.send(abs, (-1,))
    assert worker.recv() == 1
    proc, writer = worker._proc, worker._writer

    class OtherThreadWinsTheRace:
        def close(self):  # the first step of kill(): the other thread's kill completes meanwhile
            writer.close()
            proc.kill()
            proc.wait()
            worker._proc = None

    worker._writer = OtherThreadWinsTheRace()
    _kill(worker)
    assert worker._proc is None and proc.poll() is not None
