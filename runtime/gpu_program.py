"""What a GPU-compiled model runs, layer by layer: OpenCL kernels and how they are launched.

TVM compiles each layer's kernel (one PrimFunc per IR op) into one or more OpenCL kernels; the
launch configuration of each (global and local sizes, argument order, scratch buffers) lives only
in TVM's lowering, never in the compiled module, so the compiler records it here. The record and
the artifact's OpenCL source, the kernels' constant arrays and the optimised IR (for the reference
interpreter) travel in one `.gpu.npz` bundle beside the library, which `sparsec run --emulate`
replays on PoCL (`sparsec.runtime.opencl`). No tvm and no pyopencl here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sparsec.errors import UserError

BUNDLE_VERSION = 1


@dataclass(frozen=True)
class Launch:
    """One OpenCL kernel launch. `args` name buffers: `param:i` (the layer kernel's i-th parameter:
    inputs, then constants, then the output) or `temp:j` (a scratch buffer of the layer)."""

    kernel: str
    args: tuple[str, ...]
    global_size: tuple[int, int, int]
    local_size: tuple[int, int, int]

    @property
    def work_groups(self) -> int:
        return int(np.prod([g // max(loc, 1) for g, loc in zip(self.global_size, self.local_size)]))

    @property
    def work_items(self) -> int:
        return int(np.prod(self.global_size))


@dataclass(frozen=True)
class GpuLayer:
    """One IR op on the GPU: its kernel's launches, or a view (`kernel == ""`: a reshape the VM
    does without a kernel, replayed in NumPy)."""

    result: str
    op: str
    kernel: str
    inputs: tuple[str, ...]  # IR references (%value) of the kernel's leading parameters
    constants: int  # how many constant arrays follow them (in the bundle as const:<result>:<i>)
    out_shape: tuple[int, ...]
    temps: tuple[int, ...] = ()  # bytes of each scratch buffer
    launches: tuple[Launch, ...] = ()

    @property
    def is_view(self) -> bool:
        return not self.kernel


@dataclass(frozen=True)
class GpuProgram:
    """The whole model on the GPU: the OpenCL source of the artifact and its layers in order."""

    target: str
    source: str
    layers: tuple[GpuLayer, ...]

    @property
    def source_sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps({"version": BUNDLE_VERSION, **asdict(self)})

    @classmethod
    def from_json(cls, text: str) -> GpuProgram:
        data = json.loads(text)
        if data.get("version") != BUNDLE_VERSION:
            raise UserError(f"GPU bundle version {data.get('version')!r}; this sparsec reads {BUNDLE_VERSION}")
        layers = tuple(GpuLayer(**{**layer, "inputs": tuple(layer["inputs"]), "out_shape": tuple(layer["out_shape"]),
                                   "temps": tuple(layer["temps"]),
                                   "launches": tuple(_launch(launch) for launch in layer["launches"])})
                       for layer in data["layers"])
        return cls(data["target"], data["source"], layers)


def _launch(data: dict) -> Launch:
    return Launch(data["kernel"], tuple(data["args"]), tuple(data["global_size"]), tuple(data["local_size"]))


@dataclass(frozen=True)
class GpuBundle:
    """Everything `--emulate` needs: the program, each layer's constants, and the optimised IR
    (text and weights) that the reference interpreter runs."""

    program: GpuProgram
    constants: dict[str, tuple[np.ndarray, ...]]  # layer result -> its kernel's constant arrays
    ir_text: str
    weights: dict[str, np.ndarray]

    def save(self, path: str | os.PathLike) -> None:
        arrays = {"program.json": _text_array(self.program.to_json()), "ir.sir": _text_array(self.ir_text)}
        for result, consts in self.constants.items():
            arrays.update({f"const:{result}:{i}": c for i, c in enumerate(consts)})
        arrays.update({f"weight:{name}": w for name, w in self.weights.items()})
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        Path(path).write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> GpuBundle:
        try:
            with np.load(path, allow_pickle=False) as data:
                program = GpuProgram.from_json(bytes(data["program.json"]).decode())
                consts: dict[str, list[np.ndarray]] = {}
                weights = {}
                for key in data.files:
                    if key.startswith("const:"):
                        _, result, index = key.rsplit(":", 2)
                        consts.setdefault(result, []).append((int(index), data[key]))
                    elif key.startswith("weight:"):
                        weights[key[len("weight:"):]] = data[key]
                ir_text = bytes(data["ir.sir"]).decode()
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"{path}: not a sparsec GPU bundle ({err})") from None
        ordered = {r: tuple(a for _, a in sorted(items, key=lambda item: item[0])) for r, items in consts.items()}
        return cls(program, ordered, ir_text, weights)


def _text_array(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8)


def library_bytes(library: Path) -> bytes:
    """The bytes of a library as deployed: a .so as it is, a .tar's members one after another."""
    import tarfile

    if library.suffix != ".tar":
        return library.read_bytes()
    with tarfile.open(library) as tar:
        return b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())


def require_source_in(library: Path, program: GpuProgram) -> None:
    """The bundle's OpenCL source must be the library's own (it is embedded verbatim in it), so
    `--emulate` runs the artifact's kernels, not a stale copy."""
    if program.source.encode() not in library_bytes(library):
        raise UserError(f"{library}: its GPU bundle's OpenCL source (sha256 {program.source_sha256[:12]}) is not the "
                        "library's; compile the model again")


def bundle_path(library: Path) -> Path:
    """Where the GPU bundle of `model.tar` / `model.so` lies: `model.tar.gpu.npz`."""
    return Path(str(library) + ".gpu.npz")
