"""What a pass is, and the one registry of passes by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sparsec.ir.module import Module

PASSES: dict[str, type[Pass]] = {}


@dataclass(frozen=True)
class Pass:
    """A module -> module transformation. Subclasses are frozen dataclasses whose fields are the
    pass's options (`-p name{option=value}`), with a kebab-case `name` shared by file and test."""

    name: ClassVar[str] = ""

    def apply(self, module: Module) -> Module:  # pragma: no cover - abstract
        raise NotImplementedError


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: add a pass to `PASSES` under its name."""
    assert cls.name and cls.name not in PASSES, f"pass name {cls.name!r} missing or taken"
    PASSES[cls.name] = cls
    return cls
