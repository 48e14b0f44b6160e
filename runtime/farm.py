"""A device farm on this machine: one TVM RPC tracker on 127.0.0.1 and RPC servers registered with
it, each a process group of its own, on free ports, recorded in a state file so that `down` stops
exactly what `up` started (`sparsec farm up|status|down`).

Device kinds are one function each (`DEVICE_KINDS`): the command that starts one server of that
kind registered under a key. `host` is TVM's stock server on this CPU; `arm64` is the emulated
device (aarch64 Python under qemu-user, `runtime/emulator.py`). A phone joins the same tracker
with TVM's `tvm_rpc server --tracker=HOST:PORT --key=K` (see the README).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sparsec.errors import UserError

STATE_FILE = "farm.json"
REGISTER_TIMEOUT_S = {"host": 60.0, "arm64": 180.0}  # a loaded machine, `import tvm` under qemu


def default_state_dir() -> Path:
    """$SPARSEC_FARM_DIR, else build/farm under the current folder."""
    return Path(os.environ.get("SPARSEC_FARM_DIR") or Path("build") / "farm")


def free_port() -> int:
    """A loopback port nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot; /proc), None if there is no such process:
    with the pid it names one process, never a later one that reuses the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


@dataclass
class Proc:
    """One process the farm started: tracker or a device server, leader of its own group."""

    role: str  # tracker | host | arm64 | ...
    key: str
    pid: int
    port: int
    started: int | None
    log: str

    def alive(self) -> bool:
        return self.started is not None and start_time(self.pid) == self.started


@dataclass
class FarmState:
    tracker_port: int
    procs: list[Proc] = field(default_factory=list)
    tracker_host: str = "127.0.0.1"

    @property
    def tracker(self) -> str:
        return f"{self.tracker_host}:{self.tracker_port}"

    def save(self, folder: Path) -> None:
        path = folder / STATE_FILE
        temp = path.with_suffix(".tmp")
        temp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        os.replace(temp, path)

    @classmethod
    def load(cls, folder: Path) -> FarmState | None:
        path = folder / STATE_FILE
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(data["tracker_port"], [Proc(**p) for p in data["procs"]], data.get("tracker_host", "127.0.0.1"))
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{path}: not a farm state file ({err}); remove it if no farm runs") from None


# --- device kinds: one function each -------------------------------------------------------------


def host_server(tracker_port: int, key: str, port: int, threads: int) -> tuple[list[str], dict]:
    """TVM's stock RPC server on this CPU."""
    command = [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{tracker_port}", "--key", key,
               "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 50)]
    return command, {**os.environ, "TVM_NUM_THREADS": str(threads), "TVM_BIND_THREADS": "0"}


def arm64_server(tracker_port: int, key: str, port: int, threads: int) -> tuple[list[str], dict]:
    """The emulated arm64 device: aarch64 Python under qemu-user running TVM's server."""
    try:
        from sparsec.runtime.emulator import SERVER_SCRIPT, Arm64Setup
    except ImportError:
        raise UserError("--arm64: the emulated arm64 device is not available in this build "
                        "(needs sparsec.runtime.emulator and `make arm64-setup`)") from None
    setup = Arm64Setup.find()  # a user error naming what is missing and how to set it up
    cpu = os.environ.get("SPARSEC_FARM_QEMU_CPU", "cortex-a53")
    command = setup.command(SERVER_SCRIPT, "127.0.0.1", str(tracker_port), key, str(port), str(port + 50),
                            qemu_cpu=cpu)
    return command, setup.environment(threads)


DEVICE_KINDS: dict[str, Callable[[int, str, int, int], tuple[list[str], dict]]] = {
    "host": host_server,
    "arm64": arm64_server,
}


# --- up / status / down ---------------------------------------------------------------------------


def _spawn(role: str, key: str, command: list[str], env: dict | None, port: int, folder: Path) -> Proc:
    log = folder / f"{role}-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # its own process group: stopped as one
    return Proc(role, key, proc.pid, port, start_time(proc.pid), str(log))


def _wait_listening(proc: Proc, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.alive():
            raise UserError(f"the tracker did not start: {_log_tail(proc)}")
        try:
            socket.create_connection(("127.0.0.1", proc.port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise UserError(f"the tracker did not listen on port {proc.port} within {timeout_s:g} s")


def _log_tail(proc: Proc) -> str:
    try:
        lines = [line for line in Path(proc.log).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    return lines[-1].strip() if lines else "no output"


def tracker_summary(host: str, port: int) -> dict:
    """The tracker's own view: {"queue_info": {key: {"free", "pending"}}, "server_info": [...]}."""
    from tvm import rpc

    try:
        return rpc.connect_tracker(host, port).summary()
    except (RuntimeError, OSError, ConnectionError) as err:
        raise UserError(f"no TVM tracker answers at {host}:{port} ({str(err).strip().splitlines()[0]}); "
                        "start one with `sparsec farm up`") from None


def servers_by_key(summary: dict) -> dict[str, list[str]]:
    """key -> the server addresses registered under it (host:port)."""
    found: dict[str, list[str]] = {}
    for server in summary.get("server_info", []):
        key = server["key"].partition(":")[2] or server["key"]
        found.setdefault(key, []).append(f"{server['addr'][0]}:{server['addr'][1]}")
    return found


def _wait_registered(state: FarmState, want: dict[str, int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        dead = [p for p in state.procs if not p.alive()]
        if dead:
            raise UserError(f"the {dead[0].role} server (key {dead[0].key!r}) exited: {_log_tail(dead[0])}")
        registered = servers_by_key(tracker_summary("127.0.0.1", state.tracker_port))
        have = {key: len(addrs) for key, addrs in registered.items()}
        if all(have.get(key, 0) >= n for key, n in want.items()):
            return
        if time.monotonic() > deadline:
            raise UserError(f"devices did not register with the tracker within {timeout_s:g} s "
                            f"(registered: {have or 'none'}, expected: {want})")
        time.sleep(0.3)


def up(folder: Path, counts: dict[str, int], keys: dict[str, str] | None = None, tracker_port: int | None = None,
       threads: int | None = None) -> FarmState:
    """Start a tracker and `counts[kind]` servers of each kind; on any failure stop them all."""
    folder.mkdir(parents=True, exist_ok=True)
    old = FarmState.load(folder)
    if old is not None and any(p.alive() for p in old.procs):
        raise UserError(f"a farm is already up here (tracker {old.tracker}, state {folder / STATE_FILE}): "
                        "`sparsec farm down` first, or use another --state-dir")
    keys = {kind: (keys or {}).get(kind, kind) for kind in counts}
    port = tracker_port or free_port()
    state = FarmState(port)
    try:
        command = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                   "--port-end", str(port + 1), "--silent"]
        tracker = _spawn("tracker", "", command, None, port, folder)
        state.procs.append(tracker)
        state.save(folder)
        _wait_listening(tracker)
        for kind, count in counts.items():
            for _ in range(count):
                server_port = free_port()
                command, env = DEVICE_KINDS[kind](port, keys[kind], server_port, threads or os.cpu_count() or 1)
                state.procs.append(_spawn(kind, keys[kind], command, env, server_port, folder))
                state.save(folder)
        want = {keys[k]: n for k, n in counts.items() if n}
        _wait_registered(state, want, max([REGISTER_TIMEOUT_S.get(k, 60.0) for k in want] or [1.0]))
    except BaseException:
        stop(state)
        (folder / STATE_FILE).unlink(missing_ok=True)
        raise
    return state


def stop_group(proc: Proc, grace_s: float = 5.0) -> bool:
    """SIGTERM the process group `proc` leads, SIGKILL what is left after `grace_s`; False if it
    was not running (or the pid now names another process)."""
    if not proc.alive():
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return True
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if not _group_alive(proc.pid):
                return True
            time.sleep(0.05)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie leader (our own child) still counts as a member: reap it
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    return True


def stop(state: FarmState) -> list[Proc]:
    """Stop every process of the farm, servers before the tracker; the ones that were running."""
    servers = [p for p in state.procs if p.role != "tracker"]
    trackers = [p for p in state.procs if p.role == "tracker"]
    return [p for p in servers + trackers if stop_group(p)]


def down(folder: Path) -> list[Proc]:
    """Stop what `up` started here and remove the state file."""
    state = FarmState.load(folder)
    if state is None:
        raise UserError(f"no farm is up here (no {folder / STATE_FILE}); see --state-dir")
    stopped = stop(state)
    (folder / STATE_FILE).unlink(missing_ok=True)
    return stopped


def status(folder: Path) -> list[str]:
    """The farm as the state file records it and as its tracker sees it, one fact a line."""
    state = FarmState.load(folder)
    if state is None:
        raise UserError(f"no farm is up here (no {folder / STATE_FILE}); start one with `sparsec farm up`")
    lines = [f"tracker 127.0.0.1:{state.tracker_port} (pid {p.pid}, {'running' if p.alive() else 'NOT running'})"
             for p in state.procs if p.role == "tracker"]
    summary = tracker_summary(state.tracker_host, state.tracker_port)
    queues = summary.get("queue_info", {})
    for key, addrs in sorted(servers_by_key(summary).items()):
        queue = queues.get(key, {})
        lines.append(f"key {key}: {len(addrs)} device(s), {queue.get('free', 0)} free, "
                     f"{queue.get('pending', 0)} pending: {', '.join(sorted(addrs))}")
    for proc in state.procs:
        if proc.role != "tracker" and not proc.alive():
            lines.append(f"{proc.role} server {proc.key!r} (pid {proc.pid}, port {proc.port}) is not running")
    return lines
