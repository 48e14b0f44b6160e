"""The emulated device's side: a stock TVM RPC server, run by aarch64 Python under qemu-user.

`python -m tvm.exec.rpc_server` cannot run here: it re-executes `sys.executable`, an aarch64
program the host kernel cannot start. This one-process server (TVM's own server state, its
sessions forked, never exec'd) binds a port in [port, port_end), registers with the tracker
under `key`, prints `sparsec-rpc-server port P` once it listens and serves until killed.
Usage: python rpc_server.py TRACKER_HOST TRACKER_PORT KEY PORT PORT_END
"""

import sys

from tvm.rpc.server import PopenRPCServerState


def main(tracker_host: str, tracker_port: str, key: str, port: str, port_end: str) -> None:
    state = PopenRPCServerState("127.0.0.1", int(port), int(port_end),
                                tracker_addr=(tracker_host, int(tracker_port)), key=key, silent=True)
    print(f"sparsec-rpc-server port {state.port}", flush=True)
    state.thread.join()


if __name__ == "__main__":
    main(*sys.argv[1:])
