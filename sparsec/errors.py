"""The three kinds of failure sparsec tells apart.

- `UserError` and its subclasses: bad input (a file, a flag, a model). The CLI prints the message
  on one line (located diagnostics add the source line and a caret) and exits with status 2.
- `NotSupportedError`: valid input that sparsec does not handle yet; says so, same exit path.
- Internal bugs are plain `assert`s / other exceptions: they keep their traceback.
"""

from __future__ import annotations

import re
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
            line, column = _window(self.loc.source_line, self.loc.column)
            text += f"\n  {line}\n  {' ' * (column - 1)}^"
        return text


def _window(line: str, column: int, width: int = 160) -> tuple[str, int]:
    """The part of a long source line around `column` (1-based), and the column within it: a
    line of 20000 brackets is not worth printing."""
    if len(line) <= width:
        return line, column
    start = max(0, min(column - 1 - width // 2, len(line) - width))
    prefix, suffix = "..." * (start > 0), "..." * (start + width < len(line))
    return prefix + line[start:start + width] + suffix, column - start + len(prefix)


class VerifyError(CompileError):
    """The IR breaks a rule of an op or of the module (types, operands, layouts)."""


# A line that states an error: `ValueError: ...`, `tvm.error.InternalError: ...`, `Check failed: ...`.
_ERROR_STATEMENT = re.compile(r"^([\w.]*(Error|Exception)\b|Check failed)")


def error_line(err: BaseException | str, default: str = "no message") -> str:
    """The line of an error message (TVM's, onnxruntime's, a remote traceback) that says what went
    wrong, for a one-line diagnostic: the last line stating an error, else the first line that is
    not a traceback frame or a note. (TVM puts the statement first and may print the IR after it,
    ending in `# Metadata omitted ...`; Python tracebacks end with it.)"""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    statements = [line for line in lines if _ERROR_STATEMENT.match(line)]
    if statements:
        return statements[-1]
    plain = [line for line in lines if not line.startswith(("#", "Traceback", "File "))]
    return plain[0] if plain else default
