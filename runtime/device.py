"""Devices that run compiled models remotely: any TVM RPC server registered with a tracker under a
key (a phone running TVM's `tvm_rpc`, or sparsec's emulated arm64 device, `runtime/emulator.py`).

    device = RpcDevice("127.0.0.1", 9190, "pixel7")
    outputs = run_library(device, Path("model.so"), [x], num_outputs=1)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import relax, rpc

from sparsec.errors import UserError, error_line

SESSION_TIMEOUT_S = 600  # phones and emulated devices are slow: one session may take minutes


@dataclass(frozen=True)
class RpcDevice:
    """A device registered with the TVM tracker at host:port under `key`."""

    host: str
    port: int
    key: str
    description: str = ""  # what the device is, for messages ("emulated cortex-a53 ...")

    def __str__(self) -> str:
        return self.description or f"device {self.key!r} at tracker {self.host}:{self.port}"

    def connect(self):
        """A fresh RPC session on the device; a user error if the tracker or the key is missing."""
        try:
            tracker = rpc.connect_tracker(self.host, self.port)
            keys = {entry.partition(":")[2] or entry for entry in tracker.summary()["queue_info"]}
        except (RuntimeError, OSError, ConnectionError) as err:
            raise UserError(f"no TVM tracker at {self.host}:{self.port} ({str(err).splitlines()[0]})") from None
        if self.key not in keys:
            known = ", ".join(sorted(keys)) or "none"
            raise UserError(f"no device registered under key {self.key!r} at tracker {self.host}:{self.port} "
                            f"(keys there: {known})")
        try:
            return tracker.request(self.key, priority=0, session_timeout=SESSION_TIMEOUT_S)
        except (RuntimeError, OSError) as err:
            raise UserError(f"{self}: could not open a session ({str(err).splitlines()[0]})") from None


def parse_tracker(text: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--tracker {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


def run_library(device: RpcDevice, library: Path, inputs: list[np.ndarray], num_outputs: int) -> list[np.ndarray]:
    """Upload `library` (a Relax VM library built for the device), run `main` on `inputs` there and
    return its outputs."""
    remote = device.connect()
    try:
        remote.upload(str(library))
        dev = remote.cpu(0)
        vm = relax.VirtualMachine(remote.load_module(library.name), dev)
        result = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in inputs])
        values = [result] if num_outputs == 1 else list(result)
        return [v.numpy() for v in values]
    except RuntimeError as err:
        raise UserError(f"{library}: running on {device} failed ({error_line(err)})") from None


def run_kernel_on(device: RpcDevice, kernel, target, *inputs: np.ndarray) -> np.ndarray:
    """Build one generated kernel (`sparsec.lower.kernels.common.Kernel`) for `target`, run it on
    the device with `inputs` + its constants, return its output (the RPC twin of `run_kernel`)."""
    import tempfile

    from tvm.support import cc

    from sparsec.lower.target import tvm_target

    name = str(kernel.func.attrs["global_symbol"])
    lib = tvm.compile(kernel.func, target=tvm_target(target))
    remote = device.connect()
    with tempfile.TemporaryDirectory(prefix="sparsec-kernel-") as tmp:
        path = Path(tmp) / f"{name}.so"
        lib.export_library(str(path), fcompile=cc.cross_compiler(target.cc) if target.cc else None)
        remote.upload(str(path))
    dev = remote.cpu(0)
    func = remote.load_module(path.name)[name]
    args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in (*inputs, *kernel.constants)]
    out = tvm.runtime.tensor(np.zeros(kernel.out_shape, kernel.out_dtype), dev)
    func(*args, out)
    return out.numpy()
