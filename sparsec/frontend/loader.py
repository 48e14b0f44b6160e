"""Reading an ONNX file: parse checks with one-line errors, and external data confined to the
model's folder (every `location` is validated before any byte of it is read)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from sparsec.errors import UserError


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Parse the ONNX file at `path` and load its external-data weights (from its folder only)."""
    path = Path(path)
    where = str(path)
    data = _read_bytes(path)
    model = _parse(data, where)
    for tensor in external_tensors(model):
        _load_external(tensor, path.parent, where)
    return model


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an ONNX file; pass the .onnx file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; check the path to the .onnx model") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the file ({err.strerror})") from None


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError:
        # A ModelProto starts with field 1 (ir_version, a small varint): bytes that start like one
        # but do not parse were cut short or damaged; anything else was never an ONNX model.
        if _looks_like_onnx(data):
            raise UserError(f"{where}: the ONNX model is truncated or corrupt; export or copy it again") from None
        raise UserError(f"{where}: not an ONNX model (the file does not parse as one); "
                        "pass the .onnx file that torch.onnx.export wrote") from None
    if model.ir_version == 0 or not model.HasField("graph"):
        raise UserError(f"{where}: not an ONNX model (it has no IR version or no graph); "
                        "pass the .onnx file that torch.onnx.export wrote")
    return model


def _looks_like_onnx(data: bytes) -> bool:
    return len(data) >= 2 and data[0] == 0x08 and 1 <= data[1] <= 32


def external_tensors(model: onnx.ModelProto) -> list[TensorProto]:
    """The main graph's tensors (initializers, Constant values) whose data lives in another file."""
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors.extend(a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    return [t for t in tensors if t.data_location == TensorProto.EXTERNAL]


def _load_external(tensor: TensorProto, folder: Path, where: str) -> None:
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    file = _confined(folder, location, tensor.name, where)
    offset, length = _int_entry(info, "offset", tensor.name, where), _int_entry(info, "length", tensor.name, where)
    size = file.stat().st_size
    length = size - offset if length is None else length
    if offset < 0 or length < 0 or offset + length > size:
        raise UserError(f"{where}: weight {tensor.name!r} reads bytes {offset}..{offset + length} of "
                        f"{location!r}, which has {size}; the external data file is truncated")
    with open(file, "rb") as f:
        f.seek(offset)
        tensor.raw_data = f.read(length)
    tensor.data_location = TensorProto.DEFAULT
    del tensor.external_data[:]


def _int_entry(info: dict[str, str], key: str, name: str, where: str) -> int | None:
    """An external-data `offset` / `length` entry as an integer (None when absent)."""
    text = info.get(key)
    if not text:
        return 0 if key == "offset" else None
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{where}: weight {name!r} has external data {key} {text!r}, which is not an integer; "
                        "export the model again") from None


def _confined(folder: Path, location: str, name: str, where: str) -> Path:
    """The external data file, after checking that `location` stays inside the model's folder."""
    parts = PurePosixPath(location.replace("\\", "/")).parts
    escapes = not location or os.path.isabs(location) or location.startswith(("/", "\\")) or ".." in parts
    root = folder.resolve()
    file = (root / location).resolve() if not escapes else root
    if escapes or not file.is_relative_to(root):
        raise UserError(f"{where}: weight {name!r} has external data at {location!r}, outside the "
                        "model's folder; keep external data files beside the .onnx file")
    if not file.is_file():
        raise UserError(f"{where}: weight {name!r} has external data in {location!r}, which is "
                        "missing; copy it beside the .onnx file")
    return file
