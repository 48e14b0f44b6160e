"""The module: graph inputs, ops in topological order, outputs, and the named weights they read."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from sparsec.errors import SourceLoc
from sparsec.ir.ops import Op
from sparsec.ir.types import Dense, Layout, TensorType


@dataclass(frozen=True, slots=True)
class Param:
    """A graph input: its name (no sigil) and type."""

    name: str
    type: TensorType
    loc: SourceLoc | None = field(default=None, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True, eq=False)
class Weight:
    """A named constant. `data` is always the dense view; `parts` holds what the layout adds
    (a mask, FKW arrays), keyed by the layout's part names. Equality compares the arrays."""

    name: str
    type: TensorType
    data: np.ndarray
    layout: Layout = Dense()
    parts: Mapping[str, np.ndarray] = field(default_factory=dict)
    loc: SourceLoc | None = field(default=None, compare=False, repr=False, kw_only=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Weight):
            return NotImplemented
        return (
            (self.name, self.type, self.layout) == (other.name, other.type, other.layout)
            and _same_array(self.data, other.data)
            and self.parts.keys() == other.parts.keys()
            and all(_same_array(v, other.parts[k]) for k, v in self.parts.items())
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def mask(self) -> np.ndarray:
        """Which elements exist: the stored mask, or everything for a dense weight."""
        if "mask" in self.parts:
            return self.parts["mask"].astype(bool)
        return np.ones(self.data.shape, dtype=bool)


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


@dataclass(frozen=True, eq=True)
class Module:
    """A whole model: `inputs` -> `ops` (topological order) -> `outputs`, reading `weights`.

    `passes` names the passes that already ran over it, in order (printed in the text form), so
    compiling an optimised module runs only what is left of the pipeline.
    """

    name: str
    inputs: tuple[Param, ...]
    ops: tuple[Op, ...]
    outputs: tuple[str, ...]
    weights: tuple[Weight, ...] = ()
    passes: tuple[str, ...] = ()
    # Where the text returns the outputs: errors about the outputs point there.
    loc: SourceLoc | None = field(default=None, compare=False, repr=False, kw_only=True)

    def replace(self, **changes) -> Module:
        return dataclasses.replace(self, **changes)

    @cached_property
    def weight_map(self) -> dict[str, Weight]:
        return {w.name: w for w in self.weights}

    def weight(self, ref: str) -> Weight:
        """The weight a reference names, with or without its `@`."""
        return self.weight_map[ref.removeprefix("@")]

    @cached_property
    def types(self) -> dict[str, TensorType]:
        """Type of every reference: `%value` and `@weight` keys."""
        types = {f"@{w.name}": w.type for w in self.weights}
        types.update({f"%{p.name}": p.type for p in self.inputs})
        types.update({f"%{op.result}": op.type for op in self.ops})
        return types

    def producers(self) -> dict[str, Op]:
        return {op.result: op for op in self.ops}

    def users(self) -> dict[str, list[Op]]:
        """For each referenced `%value` / `@weight`, the ops that read it."""
        found: dict[str, list[Op]] = {}
        for op in self.ops:
            for ref in op.operands():
                found.setdefault(ref, []).append(op)
        return found

    def drop_unused_weights(self) -> Module:
        """The module without weights that no op reads (after a pass folds some away)."""
        used = {ref[1:] for op in self.ops for ref in op.operands() if ref.startswith("@")}
        return self.replace(weights=tuple(w for w in self.weights if w.name in used))
