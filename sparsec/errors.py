"""The three kinds of failure sparsec tells apart.

- `UserError` and its subclasses: bad input (a file, a flag, a model). The CLI prints the message
  on one line (located diagnostics add the source line and a caret) and exits with status 2.
- `NotSupportedError`: valid input that sparsec does not handle yet; says so, same exit path.
- Internal bugs are plain `assert`s / other exceptions: they keep their traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    """Bad input: the message names the thing and says what to do."""


class NotSupportedError(UserError):
    """Valid input that sparsec does not support yet."""


@dataclass(frozen=True, slots=True)
class SourceLoc:
    """A position in IR text: 1-based line and column, plus the line itself for the caret."""

    file: str
    line: int
    column: int
    source_line: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class CompileError(UserError):
    """An error in IR text, printed as `file:line:col: msg`, the source line and a caret."""

    def __init__(self, loc: SourceLoc | None, message: str):
        self.loc = loc
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        if self.loc is None:
            return self.message
        text = f"{self.loc}: {self.message}"
        if self.loc.source_line:
            caret = " " * (self.loc.column - 1) + "^"
            text += f"\n  {self.loc.source_line}\n  {caret}"
        return text


class VerifyError(CompileError):
    """The IR breaks a rule of an op or of the module (types, operands, layouts)."""
