"""The tuner's builder: candidates built in worker processes that `close` stops for good, since the
session removes their output folder right after (Ctrl-C's path)."""

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
