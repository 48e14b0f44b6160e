"""The manifest `model.so.json`: what a compiled library takes and returns, and the library's size
and SHA-256, so that a library is checked before TVM maps it into memory (a truncated library is a
bus error there, not an exception). Reading one is the one guarded loader of manifests: a damaged
or edited manifest is a `UserError` naming the file, never a KeyError or TypeError.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sparsec.errors import UserError
from sparsec.ir.types import DTYPES, TensorType
from sparsec.target import Target

# 2: the library's size and sha256 are recorded, and the library carries its own signature.
MANIFEST_VERSION = 2
ELF_MAGIC = b"\x7fELF"
TAR_MAGIC = (257, b"ustar")  # a GPU model without a cross compiler is a .tar the phone links
GZIP_MAGIC = b"\x1f\x8b"  # TVM's export_library writes that .tar gzip-compressed
DEVICE_KINDS = ("cpu", "opencl")
_RECOMPILE = "compile the model again with `sparsec compile`"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def type(self) -> TensorType:
        return TensorType(self.dtype, self.shape)


@dataclass(frozen=True)
class LibraryFile:
    """What the manifest records of the library it was written with."""

    size: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> LibraryFile:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return cls(path.stat().st_size, digest.hexdigest())


@dataclass(frozen=True)
class Manifest:
    """What a user of the library needs to know: inputs, outputs, target, per-layer formats."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    target: str
    target_json: str
    layers: tuple[dict, ...]
    target_spec: dict = field(default_factory=dict)  # sparsec's whole Target (`Target.to_dict`)
    device_kind: str = "cpu"  # what runs the kernels: cpu | opencl
    gpu: dict = field(default_factory=dict)  # GPU models: the OpenCL source's sha256, kernel count

    def to_json(self, library: LibraryFile) -> str:
        return json.dumps({"version": MANIFEST_VERSION, "entry": "main", **asdict(self),
                           "library": asdict(library)}, indent=1)

    def signature(self) -> str:
        """The inputs and outputs as one line of text; the library carries it too (`add_signature`)."""
        specs = {key: [[s.name, s.dtype, list(s.shape)] for s in getattr(self, key)] for key in ("inputs", "outputs")}
        return json.dumps(specs)

    def input_types(self) -> dict[str, TensorType]:
        return {spec.name: spec.type for spec in self.inputs}

    def target_value(self) -> Target | None:
        """The Target the model was compiled for (None for a manifest written before it was kept)."""
        return Target.from_dict(self.target_spec) if self.target_spec else None


def describe_signature(signature: str) -> str:
    """`inputs: input f32[1, 3, 32, 32]; outputs: output f32[1, 10]` for a `Manifest.signature()`."""
    specs = json.loads(signature)
    return "; ".join(f"{key}: " + ", ".join(f"{n} {TensorType(d, tuple(s))}" for n, d, s in specs[key])
                     for key in ("inputs", "outputs"))


# --- reading ---------------------------------------------------------------------------------------


class _Bad(Exception):
    """A field of the manifest that is missing or has the wrong kind of value."""


def read_manifest(path: Path) -> tuple[Manifest, LibraryFile]:
    """The manifest at `path` and the library it records, or a UserError saying what is wrong."""
    try:
        data = json.loads(path.read_text())
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not the manifest of a compiled model; {_RECOMPILE}") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the manifest ({err.strerror}); {_RECOMPILE}") from None
    except ValueError as err:  # json and UTF-8 errors
        raise UserError(f"{path}: the manifest is not JSON ({err}); {_RECOMPILE}") from None
    try:
        return _manifest(data)
    except _Bad as err:
        raise UserError(f"{path}: the manifest is damaged or not sparsec's ({err}); {_RECOMPILE}") from None


def _manifest(data) -> tuple[Manifest, LibraryFile]:
    _want(isinstance(data, dict), "it is not a JSON object")
    version = data.get("version")
    _want(version == MANIFEST_VERSION, f"version {version!r}, this sparsec reads version {MANIFEST_VERSION}")
    _want(data.get("entry") == "main", "its entry is not main")
    device_kind = data.get("device_kind", "cpu")
    _want(device_kind in DEVICE_KINDS, f"device_kind {device_kind!r} is not one of {', '.join(DEVICE_KINDS)}")
    gpu = data.get("gpu", {})
    _want(type(gpu) is dict, "gpu is not an object")
    manifest = Manifest(_specs(data, "inputs"), _specs(data, "outputs"), _get(data, "target", str),
                        _get(data, "target_json", str), tuple(_get(data, "layers", list)),
                        _get(data, "target_spec", dict), device_kind, gpu)
    _target(manifest)
    library = _get(data, "library", dict)
    size, sha256 = _get(library, "size", int), _get(library, "sha256", str)
    _want(size > 0 and len(sha256) == 64, "library size or sha256 is malformed")
    return manifest, LibraryFile(size, sha256)


def _specs(data: dict, key: str) -> tuple[TensorSpec, ...]:
    specs = _get(data, key, list)
    _want(len(specs) > 0, f"{key} is empty")
    return tuple(_spec(spec, key) for spec in specs)


def _spec(spec, key: str) -> TensorSpec:
    _want(isinstance(spec, dict), f"an entry of {key} is not an object")
    name, dtype, shape = _get(spec, "name", str), _get(spec, "dtype", str), _get(spec, "shape", list)
    _want(dtype in DTYPES, f"{key[:-1]} {name!r} has dtype {dtype!r}; dtypes are {', '.join(DTYPES)}")
    _want(all(type(d) is int and d >= 1 for d in shape), f"{key[:-1]} {name!r} has shape {shape}")
    return TensorSpec(name, dtype, tuple(shape))


def _target(manifest: Manifest) -> None:
    try:
        manifest.target_value()
    except (KeyError, TypeError, ValueError, AttributeError, UserError):  # what a damaged dict raises
        raise _Bad("its target_spec is not a target") from None


def _get(data: dict, key: str, kind: type):
    value = data.get(key)
    _want(type(value) is kind, f"{key} is missing or not a {kind.__name__}")  # bool is not an int here
    return value


def _want(condition: bool, problem: str) -> None:
    if not condition:
        raise _Bad(problem)


def check_library(path: Path, recorded: LibraryFile) -> None:
    """The library is the one the manifest was written with: same size, an ELF file, same sha256."""
    if not path.is_file():
        raise UserError(f"{path}: is not a file; {_RECOMPILE}")
    try:
        with open(path, "rb") as f:
            head = f.read(TAR_MAGIC[0] + len(TAR_MAGIC[1]))
        actual = LibraryFile.of(path)
    except OSError as err:
        raise UserError(f"{path}: cannot read the library ({err.strerror})") from None
    if actual.size != recorded.size:
        raise UserError(f"{path}: the library has {actual.size} bytes but its manifest records {recorded.size} "
                        f"(truncated or replaced); {_RECOMPILE}")
    if path.suffix == ".tar":
        if not head.startswith(GZIP_MAGIC) and head[TAR_MAGIC[0]:] != TAR_MAGIC[1]:
            raise UserError(f"{path}: not a tar archive of object files; {_RECOMPILE}")
    elif not head.startswith(ELF_MAGIC):
        raise UserError(f"{path}: not a shared library (no ELF header); {_RECOMPILE}")
    if actual.sha256 != recorded.sha256:
        raise UserError(f"{path}: the library's sha256 differs from the one its manifest records "
                        f"(damaged or replaced); {_RECOMPILE}")
