"""The emulated arm64 device: a real TVM RPC server run by aarch64 Python under qemu user-mode,
registered with its own TVM tracker, both on free loopback ports.

    with EmulatedDevice("cortex-a53") as device:      # an RpcDevice while it is up
        outputs = run_library(device.rpc, Path("model.so"), [x], 1)

Real ARM code runs (NEON included, the ISA of the qemu CPU model), but timings are qemu's, not a
phone's. Its set-up (qemu-user, the cross toolchain, an aarch64 sysroot with Python, aarch64 TVM
runtime wheels) is `make arm64-setup`, cached under build/arm64 (`Arm64Setup`).
Every process it starts runs in its own process group and is killed with it: none is left behind.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sparsec.errors import UserError
from sparsec.runtime.device import RpcDevice

QEMU = "qemu-aarch64"
SERVER_SCRIPT = Path(__file__).parent / "qemu" / "rpc_server.py"
START_TIMEOUT_S = 90  # `import tvm` alone takes 5 s under qemu; a loaded machine takes longer
SETUP_HINT = "run `make arm64-setup` (or `sh runtime/qemu/setup_arm64.sh DIR` and set SPARSEC_ARM64_HOME=DIR)"


def default_home() -> Path:
    """$SPARSEC_ARM64_HOME, else build/arm64 of the source tree sparsec runs from, else the cache."""
    if os.environ.get("SPARSEC_ARM64_HOME"):
        return Path(os.environ["SPARSEC_ARM64_HOME"])
    tree = Path(__file__).resolve().parents[1] / "build" / "arm64"
    return tree if tree.exists() else Path.home() / ".cache" / "sparsec" / "arm64"


@dataclass(frozen=True)
class Arm64Setup:
    """What `make arm64-setup` left in `home`: sysroot (aarch64 Python), site-packages (TVM
    runtime), the TCG plugin and the marker library."""

    home: Path

    @property
    def sysroot(self) -> Path:
        return self.home / "sysroot"

    @property
    def python(self) -> Path:
        return self.sysroot / "usr" / "bin" / "python3.11"

    @property
    def site_packages(self) -> Path:
        return self.home / "site-packages"

    @property
    def plugin(self) -> Path:
        return self.home / "libinsncount.so"

    @property
    def marker(self) -> Path:
        return self.home / "libmarker.so"

    def missing(self) -> list[str]:
        """What is not there, in words."""
        checks = [(shutil.which(QEMU) is not None, f"{QEMU} (Debian package qemu-user)"),
                  (self.python.exists(), f"the aarch64 sysroot with Python ({self.sysroot})"),
                  ((self.site_packages / "tvm").is_dir(), f"the aarch64 TVM runtime ({self.site_packages})")]
        return [what for ok, what in checks if not ok]

    @classmethod
    def find(cls, home: Path | None = None) -> Arm64Setup:
        setup = cls(home or default_home())
        missing = setup.missing()
        if missing:
            raise UserError(f"the emulated arm64 device cannot start: missing {'; '.join(missing)}; {SETUP_HINT}")
        return setup

    def command(self, script: Path, *args: str, qemu_cpu: str, plugin_out: Path | None = None) -> list[str]:
        """The host command running `script` with aarch64 Python under qemu."""
        plugin = ["-plugin", f"{self.plugin},out={plugin_out}"] if plugin_out else []
        return [QEMU, "-cpu", qemu_cpu, *plugin, "-L", str(self.sysroot), str(self.python), str(script), *args]

    def environment(self, threads: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "QEMU_"))}
        env.update(PYTHONPATH=str(self.site_packages), PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1",
                   TVM_USE_RUNTIME_LIB="1", TVM_NUM_THREADS=str(threads))
        return env


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmulatedDevice:
    """An aarch64 TVM RPC server under qemu-user (CPU model `qemu_cpu`), registered with a local
    tracker under `key`. A context manager: the processes stop on exit, even on errors."""

    def __init__(self, qemu_cpu: str = "cortex-a53", key: str = "sparsec-arm64-emu", threads: int = 2,
                 tracker_port: int | None = None, setup: Arm64Setup | None = None):
        self.qemu_cpu, self.key, self.threads = qemu_cpu, key, threads
        self.tracker_port = tracker_port
        self.setup = setup
        self._procs: list[subprocess.Popen] = []
        self._logs = tempfile.TemporaryDirectory(prefix="sparsec-emu-")
        self.rpc: RpcDevice | None = None

    def __enter__(self) -> EmulatedDevice:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> RpcDevice:
        """1. find the set-up  2. tracker  3. qemu server  4. wait until it is registered."""
        try:
            self.setup = self.setup or Arm64Setup.find()
            port = self._start_tracker()
            self._start_server(port)
            what = f"emulated arm64 device ({self.qemu_cpu} under qemu-aarch64, tracker 127.0.0.1:{port})"
            self.rpc = RpcDevice("127.0.0.1", port, self.key, what)
            self._wait_registered(port)
        except BaseException:
            self.stop()
            raise
        return self.rpc

    def _spawn(self, name: str, command: list[str], env: dict | None = None, stdout=None) -> subprocess.Popen:
        log = open(Path(self._logs.name) / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(command, env=env, stdout=stdout or log, stderr=log, stdin=subprocess.DEVNULL,
                                start_new_session=True,  # its own process group: killed as one
                                preexec_fn=_die_with_parent)
        log.close()
        self._procs.append(proc)
        return proc

    def _log_tail(self, name: str) -> str:
        path = Path(self._logs.name) / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1].strip() if lines else "no output"

    def _start_tracker(self) -> int:
        port = self.tracker_port or free_port()
        if not _port_free(port):  # else a stranger answering there would pass for the tracker
            raise UserError(f"the emulated device's tracker did not start: port {port} is in use")
        proc = self._spawn("tracker", [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                       "--port", str(port), "--port-end", str(port + 1), "--silent"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                reason = self._log_tail("tracker")
                if "cannot bind" in reason or "in use" in reason:
                    reason = f"port {port} is in use"
                raise UserError(f"the emulated device's tracker did not start: {reason}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                time.sleep(0.1)
                continue
            if proc.poll() is None:
                return port
        raise UserError(f"the emulated device's tracker did not listen on port {port} within 30 s")

    def _start_server(self, tracker_port: int) -> None:
        port = free_port()
        command = self.setup.command(SERVER_SCRIPT, "127.0.0.1", str(tracker_port), self.key, str(port),
                                     str(port + 100), qemu_cpu=self.qemu_cpu)
        proc = self._spawn("server", command, self.setup.environment(self.threads), stdout=subprocess.PIPE)
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
        line = proc.stdout.readline().decode(errors="replace") if ready else ""
        if not line.startswith("sparsec-rpc-server port"):
            proc.poll()
            reason = self._log_tail("server") if proc.returncode is not None else f"no answer in {START_TIMEOUT_S} s"
            raise UserError(f"the emulated arm64 device ({self.qemu_cpu}) did not start: {reason}")

    def _wait_registered(self, tracker_port: int) -> None:
        from tvm import rpc

        tracker = rpc.connect_tracker("127.0.0.1", tracker_port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(key.endswith(self.key) for key in tracker.summary()["queue_info"]):
                return
            time.sleep(0.2)
        raise UserError(f"the emulated device did not register with the tracker under {self.key!r} within 30 s")

    def stop(self) -> None:
        """SIGTERM each process group (server first, then tracker), SIGKILL what is left."""
        for proc in reversed(self._procs):
            _kill_group(proc)
        self._procs.clear()
        self.rpc = None


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM it when the process that started it dies (even killed),
    so a crashed or killed sparsec leaves no device behind (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(proc):
            time.sleep(0.05)
        if not _group_alive(proc):
            break
    if proc.stdout:
        proc.stdout.close()


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the leader
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True
