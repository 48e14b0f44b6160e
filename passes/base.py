"""What a pass is, and the one registry of passes by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from sparsec.ir.module import Module

PASSES: dict[str, type[Pass]] = {}


@dataclass(frozen=True)
class Pass:
    """A module -> module transformation. Subclasses are frozen dataclasses whose fields are the
    pass's options (`-p name{option=value}`), with a kebab-case `name` shared by file and test.
    A field marked `not_an_option()` is set by the driver for a target, not on the command line."""

    name: ClassVar[str] = ""

    def apply(self, module: Module) -> Module:  # pragma: no cover - abstract
        raise NotImplementedError


def not_an_option(default: Any = None) -> Any:
    """A pass field the driver sets from the target (a function, say): no `-p` option, no equality."""
    return field(default=default, compare=False, repr=False, metadata={"option": False})


def is_option(f) -> bool:
    return f.metadata.get("option", True)


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: add a pass to `PASSES` under its name."""
    assert cls.name and cls.name not in PASSES, f"pass name {cls.name!r} missing or taken"
    PASSES[cls.name] = cls
    return cls
