"""`sparsec farm` and `sparsec tune` on loopback: a tracker and three host RPC servers on free
ports of 127.0.0.1, tuning one small pattern-sparse layer. Resume, apply, Ctrl-C, a torn log line,
an unreachable tracker, and devices that hang or die mid-run (the farm's last test: it breaks it).
Every process is stopped by its process group in the fixture's `finally`."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle  # noqa: E402,F401 - pinned test dependency: missing must fail
import numpy as np
import psutil  # noqa: E402,F401 - pinned test dependency: missing must fail
import pytest
import tornado  # noqa: E402,F401 - pinned test dependency: missing must fail

from sparsec.cli import main  # noqa: E402
from sparsec.models import conv_layer  # noqa: E402
from sparsec.prune import prune_model, save_masks  # noqa: E402
from sparsec.runtime import farm as farms  # noqa: E402

pytestmark = [pytest.mark.tvm, pytest.mark.rpc]
QUICK = ["--min-repeat-ms", "2", "--repeat", "3", "--builders", "2"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    model = conv_layer((1, 16, 12, 12), 16)
    (root / "layer.onnx").write_bytes(model.SerializeToString())
    save_masks(prune_model(model, keep_kernels=0.5, prune_first_conv=True), root / "masks.npz")
    return root


@pytest.fixture(scope="module")
def farm(work):
    folder = work / "farm"
    state = None
    try:
        state = farms.up(folder, {"host": 3}, threads=1)
        yield state, folder
    finally:
        if state is not None:
            for proc in state.procs:
                if proc.alive():
                    os.killpg(proc.pid, signal.SIGCONT)
            farms.stop(state)


def _tune(work, tracker: str, log: Path, *extra: str) -> list[str]:
    return ["tune", str(work / "layer.onnx"), "--masks", str(work / "masks.npz"), "--tracker", tracker,
            "--key", "host", "--log", str(log), *QUICK, *extra]


def _records(log: Path) -> list[dict]:
    """The trials of a log (confirmations left out)."""
    return [r for line in log.read_text().splitlines() if not (r := json.loads(line)).get("confirm")]


def _no_duplicates(records: list[dict]) -> bool:
    seen = collections.Counter((r["task"], json.dumps(r["knobs"], sort_keys=True)) for r in records)
    return max(seen.values()) == 1


SPAWNED: list[subprocess.Popen] = []


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background job inherits SIGINT ignored: Ctrl-C as in a terminal


def _spawn(work, args: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "sparsec.cli", *args], cwd=work, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_sigint)
    SPAWNED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _stop_spawned():
    """A `sparsec tune` a failed test left running is stopped with its process group."""
    yield
    while SPAWNED:
        proc = SPAWNED.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_lines(log: Path, count: int, proc: subprocess.Popen, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{log} did not reach {count} records (exit {proc.poll()})")


def test_farm_status_lists_the_devices_per_key(farm, capsys):
    state, folder = farm
    assert main(["farm", "status", "--state-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"tracker 127.0.0.1:{state.tracker_port}" in out and "key host: 3 device(s)" in out


def test_tune_resume_and_apply(farm, work, capsys):
    state, _ = farm
    log, plot = work / "tune.jsonl", work / "tune.png"
    assert main(_tune(work, state.tracker, log, "--trials", "6", "--plot", str(plot))) == 0
    out, err = capsys.readouterr()
    records = _records(log)
    assert len(records) == 6 and _no_duplicates(records) and all(r["error"] is None for r in records)
    assert {r["device_key"] for r in records} == {"host"} and plot.stat().st_size > 1000
    assert "best" in err and "pattern_conv" in out
    lines = len(log.read_text().splitlines())
    assert main(_tune(work, state.tracker, log, "--trials", "6")) == 0  # finished: measures nothing
    assert len(log.read_text().splitlines()) == lines
    library = work / "tuned.so"
    assert main(["compile", str(work / "layer.onnx"), "--masks", str(work / "masks.npz"), "--tuning-log", str(log),
                 "-o", str(library), "--dump-ir-after", "compress-fkw", "--check"]) == 0
    err = capsys.readouterr().err
    assert "tuning log: 1 layers tuned for key 'host'" in err
    layer = json.loads((work / "tuned.so.json").read_text())["layers"][0]
    assert layer["task"] == records[0]["task"] and layer["knobs"] in [r["knobs"] for r in records]
    assert "knobs = {" in (work / "tuned.tuned.sir").read_text()


def test_unreachable_tracker_is_one_clear_error(work, capsys):
    port = farms.free_port()
    assert main(_tune(work, f"127.0.0.1:{port}", work / "none.jsonl", "--trials", "2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no TVM tracker answers at 127.0.0.1:{port}" in err[0]


def test_ctrl_c_leaves_a_resumable_log_and_a_torn_line_is_skipped(farm, work):
    state, _ = farm
    log = work / "ctrl-c.jsonl"
    args = _tune(work, state.tracker, log, "--trials", "10", "--cooldown-ms", "60", "--seed", "3")
    proc = _spawn(work, args)
    _wait_lines(log, 3, proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "run the same command again to continue" in err, err
    done = _records(log)  # every line whole
    assert 3 <= len(done) < 10
    with open(log, "a") as f:
        f.write(json.dumps(done[-1])[:30])  # a write cut short
    proc = _spawn(work, args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "torn" in err
    records = _records(log)
    assert len(records) == 10 and _no_duplicates(records)


def test_devices_that_hang_or_die_cost_only_their_trial(farm, work):
    """The farm's last test: one server stops answering (SIGSTOP), another is killed, mid-run."""
    state, _ = farm
    log = work / "faults.jsonl"
    servers = [p for p in state.procs if p.role == "host"]
    # a trial's timeout well above a loaded 2-core machine's slowest build+run, so only the stopped device times out
    proc = _spawn(work, _tune(work, state.tracker, log, "--trials", "14", "--cooldown-ms", "80", "--timeout", "20"))
    _wait_lines(log, 3, proc)
    os.killpg(servers[0].pid, signal.SIGSTOP)
    _wait_lines(log, 6, proc)
    os.killpg(servers[1].pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    records = _records(log)
    assert len(records) == 14 and _no_duplicates(records)
    assert all(r["error"] is None for r in records), [r["error"] for r in records]
    assert np.all([r["median_s"] > 0 for r in records])
