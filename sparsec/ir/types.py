"""Frozen value types of the IR: tensor types and the layouts a weight can be stored in.

A layout says what a weight *is* (its properties), not how a kernel reads it: `dense`, `masked`
(zeros outside a stored mask are structural), `pattern` (3x3 kernels each fit one of a few tap
sets), `csr` (unstructured), `fkw` (a pattern weight the lowering stores filter-kernel-wise).
Every layout keeps the dense view as the weight's data: it is the one source of truth.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np

DTYPES: dict[str, np.dtype] = {
    "f32": np.dtype("float32"),
    "f64": np.dtype("float64"),
    "i64": np.dtype("int64"),
    "i32": np.dtype("int32"),
    "i16": np.dtype("int16"),
    "i8": np.dtype("int8"),
    "u32": np.dtype("uint32"),
    "u16": np.dtype("uint16"),
    "u8": np.dtype("uint8"),
    "bool": np.dtype("bool"),
}


def dtype_name(dtype: np.dtype) -> str:
    """The IR name of a NumPy dtype (`float32` -> `f32`)."""
    for name, np_dtype in DTYPES.items():
        if np_dtype == dtype:
            return name
    raise ValueError(f"dtype {dtype} has no IR name")


@dataclass(frozen=True, slots=True)
class TensorType:
    """A tensor's element type and static shape, printed `f32[1, 3, 224, 224]`."""

    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; known: {', '.join(DTYPES)}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if any(d < 0 for d in self.shape):
            raise ValueError(f"negative dimension in shape {list(self.shape)}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def np_dtype(self) -> np.dtype:
        return DTYPES[self.dtype]

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(map(str, self.shape))}]"


# --- layouts -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layout:
    """Base of the weight layouts; `kind` is the name in the text form."""

    kind: ClassVar[str] = ""
    # Names of the extra arrays (beside the dense data) a weight of this layout stores.
    parts: ClassVar[tuple[str, ...]] = ()

    def options(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class Dense(Layout):
    """Every element may be nonzero."""

    kind: ClassVar[str] = "dense"


@dataclass(frozen=True, slots=True)
class Masked(Layout):
    """Pruned: the stored `mask` says which elements exist; the data is zero elsewhere."""

    kind: ClassVar[str] = "masked"
    parts: ClassVar[tuple[str, ...]] = ("mask",)


def _tap_tuple(pattern) -> tuple[int, ...]:
    try:  # integers only: int() would truncate 1.5 and raise OverflowError on inf
        taps = tuple(operator.index(t) for t in pattern)
    except TypeError:
        raise ValueError(f"pattern {list(pattern)} must be increasing tap ids in 0..8") from None
    if not taps or list(taps) != sorted(set(taps)) or not all(0 <= t < 9 for t in taps):
        raise ValueError(f"pattern {list(taps)} must be increasing tap ids in 0..8")
    return taps


@dataclass(frozen=True, slots=True)
class Pattern(Layout):
    """3x3 kernels whose kept taps (0..8, row-major) each fit one of `patterns` (all its taps or a
    subset: zero weights fill the rest); empty kernels allowed."""

    kind: ClassVar[str] = "pattern"
    parts: ClassVar[tuple[str, ...]] = ("mask",)
    patterns: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "patterns", tuple(_tap_tuple(p) for p in self.patterns))
        if len(set(self.patterns)) != len(self.patterns):
            raise ValueError("pattern layout lists a pattern twice")


@dataclass(frozen=True, slots=True)
class CSR(Layout):
    """Unstructured sparsity, rows = output channels / features, stored compressed by rows."""

    kind: ClassVar[str] = "csr"
    parts: ClassVar[tuple[str, ...]] = ("mask",)


@dataclass(frozen=True, slots=True)
class FKW(Pattern):
    """A pattern weight committed to FKW storage (PatDNN's filter-kernel-weight arrays).

    The arrays are not stored in the IR: the lowering derives them from the weight's data, mask,
    `patterns` (whose order fixes the pattern ids) and the op's `filter_order`, so no pass can
    leave them disagreeing with the data the reference interpreter reads.
    """

    kind: ClassVar[str] = "fkw"


LAYOUTS: dict[str, type[Layout]] = {cls.kind: cls for cls in (Dense, Masked, Pattern, CSR, FKW)}
