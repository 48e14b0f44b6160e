"""The instruction counter's aarch64 side, run by aarch64 Python under qemu with sparsec's TCG
plugin (insn_count.c): for each kernel of a spec, one warm-up call, then one call inside a
counting window, then an empty window (the window's own cost, subtracted on the host).
Usage: python count_kernels.py LIBRARY SPEC.json MARKER.so OUTPUTS.npz
"""

import ctypes
import json
import sys

import numpy as np
import tvm


def main(library: str, spec_path: str, marker_path: str, outputs_path: str) -> None:
    marker = ctypes.CDLL(marker_path)
    lib = tvm.runtime.load_module(library)
    dev = tvm.cpu(0)
    outputs = {}
    for entry in json.load(open(spec_path)):
        with np.load(entry["arrays"]) as arrays:
            args = [tvm.runtime.tensor(arrays[f"a{i}"], dev) for i in range(len(arrays.files))]
        out = tvm.runtime.tensor(np.zeros(entry["out_shape"], np.float32), dev)
        func = lib[entry["name"]]
        func(*args, out)  # warm-up: lazy binding, first-touch page faults
        marker.sparsec_window_open()
        func(*args, out)
        marker.sparsec_window_close()
        marker.sparsec_window_open()
        marker.sparsec_window_close()
        outputs[entry["name"]] = out.numpy()
    np.savez(outputs_path, **outputs)


if __name__ == "__main__":
    main(*sys.argv[1:])
