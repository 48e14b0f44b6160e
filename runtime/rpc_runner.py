"""The tuner's runner: built candidates measured on every device registered with a TVM tracker
under one key, one at a time per device, all devices at once.

Each device slot is a thread driving a worker process of its own (`tvm.support.popen_pool`'s
PopenWorker), so a device that hangs costs that worker (killed at the timeout), never the tuner.
A trial that fails on a device (it died, hung, or the session broke) is retried on the next device
the tracker grants; failing on `ATTEMPTS` devices, the candidate itself is what fails (it
crashed or hung each time) and is recorded as such.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from sparsec.errors import UserError, error_line

ATTEMPTS = 2  # devices a trial may fail on before the candidate is blamed
NO_DEVICE_S = 120.0  # how long to wait for a device of the key before giving up


@dataclass(frozen=True)
class Measurement:
    """What one trial gave: times of each run (seconds), the device, the output (for the check),
    or the error (`fault` says whether devices failed rather than the candidate's build)."""

    times: tuple[float, ...] = ()
    device: str = ""
    output: np.ndarray | None = None
    error: str | None = None

    @property
    def median(self) -> float:
        return float(np.median(self.times))

    @property
    def spread(self) -> float:
        return float(max(self.times) - min(self.times))


@dataclass(frozen=True)
class RunnerConfig:
    """Where the devices are and how to time: `repeat` runs of at least `min_repeat_ms` each,
    `cooldown_ms` of idle device between runs (phones throttle), `timeout_s` per trial."""

    tracker_host: str
    tracker_port: int
    key: str
    timeout_s: float = 60.0
    repeat: int = 5
    min_repeat_ms: int = 40
    cooldown_ms: int = 0


# --- the tracker ---------------------------------------------------------------------------------


def tracker_devices(host: str, port: int, key: str) -> int:
    """How many devices are registered under `key` (free or busy); a user error if no tracker answers."""
    from sparsec.runtime.farm import servers_by_key, tracker_summary

    summary = tracker_summary(host, port)
    busy = summary.get("queue_info", {}).get(key, {})
    return max(len(servers_by_key(summary).get(key, [])), busy.get("free", 0))


def request_device(host: str, port: int, key: str, wait_s: float, sockets: set | None = None) -> tuple[str, int, str]:
    """Ask the tracker for a free device of `key`: (host, port, matchkey) of its server. Unlike
    `TrackerSession.request` it gives up after `wait_s` (TimeoutError), says which server it is,
    and can be cut short from another thread (the socket sits in `sockets` while it waits)."""
    from tvm.rpc import base

    sock = socket.create_connection((host, port), timeout=10)
    if sockets is not None:
        sockets.add(sock)
    try:
        sock.sendall(np.int32(base.RPC_TRACKER_MAGIC).tobytes())
        if int(np.frombuffer(base.recvall(sock, 4), np.int32)[0]) != base.RPC_TRACKER_MAGIC:
            raise RuntimeError(f"{host}:{port} is not a TVM tracker")
        base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", 0])
        sock.settimeout(wait_s)
        value = base.recvjson(sock)
    except TimeoutError:
        raise TimeoutError(f"no device of key {key!r} became free within {wait_s:g} s") from None
    finally:
        if sockets is not None:
            sockets.discard(sock)
        sock.close()
    if value[0] != base.TrackerCode.SUCCESS:
        raise RuntimeError(f"the tracker refused the request: {value}")
    url, server_port, matchkey = value[1]
    return url, int(server_port), matchkey


# --- one trial on one device (runs in a worker process) ---------------------------------------------


def measure_on_device(grant: tuple[str, int, str], library: str, func: str, arrays: str, out_shape, out_dtype: str,
                      config: RunnerConfig) -> tuple[list[float], np.ndarray]:
    """1. connect to the granted server  2. upload and load the library  3. copy the arguments
    4. run once and fetch the output  5. time it  6. (always) remove the upload, close the session."""
    import os

    import tvm
    from tvm import rpc

    remote = rpc.connect(grant[0], grant[1], key=grant[2], session_timeout=config.timeout_s)
    name = os.path.basename(library)
    try:
        remote.upload(library)
        module = remote.load_module(name)
        dev = remote.cpu(0)
        with np.load(arrays) as npz:
            args = [tvm.runtime.tensor(npz[f"arg{i}"], dev) for i in range(len(npz.files))]
        out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev)
        module[func](*args, out)
        output = out.numpy()
        timer = module.time_evaluator(func, dev, number=1, repeat=config.repeat, min_repeat_ms=config.min_repeat_ms,
                                      cooldown_interval_ms=config.cooldown_ms)
        return list(timer(*args, out).results), output
    finally:
        try:
            remote.remove(name)
        except Exception:  # noqa: BLE001 - the session may be what broke
            pass
        del remote


class RpcRunner:
    """Measures candidates on the devices of `config.key` (see the module docstring)."""

    def __init__(self, config: RunnerConfig, slots: int | None = None):
        self.config = config
        found = tracker_devices(config.tracker_host, config.tracker_port, config.key)
        if not found and not slots:
            raise UserError(f"no device is registered under key {config.key!r} at the tracker "
                            f"{config.tracker_host}:{config.tracker_port} (see `sparsec farm status`)")
        self.slots = slots or found
        self._local = threading.local()
        self._workers: list = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix="device-slot")
        self._closed = False
        self._sockets: set = set()  # tracker requests waiting for a device

    @property
    def device_key(self) -> str:
        return self.config.key

    def submit(self, build) -> Future:
        """A future of the Measurement of a BuildResult."""
        return self._pool.submit(self._trial, build)

    def _worker(self):
        from tvm.support.popen_pool import PopenWorker

        if getattr(self._local, "worker", None) is None:
            self._local.worker = PopenWorker()
            with self._lock:
                self._workers.append(self._local.worker)
        return self._local.worker

    def _trial(self, build) -> Measurement:
        errors = []
        for _ in range(ATTEMPTS):
            if self._closed:
                return Measurement(error="interrupted")
            result = self._attempt(build)
            if result.error is None:
                return result
            errors.append(result.error)
        return Measurement(device=result.device, error=f"failed on {len(errors)} devices: {'; '.join(errors)}")

    def _attempt(self, build) -> Measurement:
        cfg = self.config
        try:
            grant = request_device(cfg.tracker_host, cfg.tracker_port, cfg.key, NO_DEVICE_S, self._sockets)
        except OSError as err:
            if self._closed:
                return Measurement(error="interrupted")
            return self._tracker_error(err)
        device = f"{grant[0]}:{grant[1]}"
        worker = self._worker()
        start = time.monotonic()
        try:
            worker.send(measure_on_device, (grant, build.library, build.func, build.arrays, build.out_shape,
                                            build.out_dtype, cfg), timeout=cfg.timeout_s)
            times, output = worker.recv()
        except TimeoutError:
            _kill(worker)  # close() may be stopping it too
            return Measurement(device=device, error=f"{device}: no answer within {cfg.timeout_s:g} s")
        except Exception as err:  # noqa: BLE001 - the session broke, the device died, the kernel crashed
            reason = error_line(err, type(err).__name__)
            return Measurement(device=device, error=f"{device}: {reason} after {time.monotonic() - start:.1f} s")
        return Measurement(tuple(times), device, output)

    def _tracker_error(self, err: OSError):
        cfg = self.config
        where = f"the tracker {cfg.tracker_host}:{cfg.tracker_port}"
        if isinstance(err, TimeoutError):
            raise UserError(f"{err} at {where}: did every device die? (`sparsec farm status`); the log holds every "
                            "finished trial: run again to continue") from None
        raise UserError(f"{where} stopped answering ({err}); the log holds every finished trial: run again to "
                        "continue") from None

    def close(self) -> None:
        """Stop: pending trials are dropped; running ones end with their workers, waiting
        requests with their sockets, so no thread outlives the tuner."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        for sock in list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            for worker in self._workers:
                _kill(worker)


def _kill(worker) -> None:
    """Stop a device slot's worker. Its own thread may be stopping it too (Ctrl-C reaches the
    worker's process, whose death that thread notices), and TVM's `PopenWorker.kill` is not
    thread-safe: the loser of that race finds the process gone, which is all it wanted."""
    try:
        worker.kill()
    except (AttributeError, OSError):
        pass
