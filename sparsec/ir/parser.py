"""Parser of the IR text form (lark LALR, grammar/sparsec.lark) into a `Module`.

Every error is a `CompileError` located at `file:line:col` with the source line and a caret.
"""

from __future__ import annotations

import json
import re
import typing
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import lark
import numpy as np

from sparsec.errors import CompileError, SourceLoc, UserError
from sparsec.grammar import GRAMMAR_PATH
from sparsec.ir import ops as ops_module
from sparsec.ir.activation import ACTIVATION_PARAMS, Activation
from sparsec.ir.knobs import Knobs
from sparsec.ir.module import Module, Param, Weight
from sparsec.ir.ops import OPS, Op
from sparsec.ir.types import DTYPES, LAYOUTS, Layout, TensorType
from sparsec.npz import load_npz

# Limits on what the text may ask for, checked before building anything: nesting deeper than any
# real IR (inline data of rank 8 inside an attribute is depth 10) would exhaust Python's stack,
# and integers are 64-bit everywhere after the parser (NumPy, TVM).
MAX_DEPTH = 64
MAX_INT = 2**63 - 1
# Brackets that nest, and what the lexer skips over without looking inside: strings and comments.
_NESTING = re.compile(r'"(?:[^"\\\n]|\\.)*"|//[^\n]*|[\[\](){}]')


@cache
def _parser() -> lark.Lark:
    return lark.Lark(GRAMMAR_PATH.read_text(), parser="lalr", propagate_positions=True)


@dataclass(frozen=True)
class Name:
    """A bare identifier literal, e.g. `relu` or `dense`."""

    text: str


@dataclass(frozen=True)
class Call:
    """`name(args, key = value)` literal: an activation or a layout."""

    name: str
    args: tuple
    kwargs: dict


def parse_module(text: str, filename: str = "<string>", arrays: dict | None = None) -> Module:
    """Parse IR text. Weight data comes from `arrays` (npz keys) or, when None, from the
    `weights "file"` the text names (relative to `filename`; default `filename + ".npz"`)."""
    lines = text.splitlines()
    _check_depth(text, filename, lines)
    try:
        tree = _parser().parse(text)
    except lark.UnexpectedInput as err:
        raise CompileError(_loc(filename, lines, err.line, err.column), _syntax_message(err)) from None
    return _Builder(filename, lines, arrays).module(tree)


def _check_depth(text: str, filename: str, lines: list[str]) -> None:
    """A CompileError at the first bracket nested deeper than MAX_DEPTH."""
    depth = 0
    for match in _NESTING.finditer(text):
        token = match.group()
        if token in "[({":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, match.start()) + 1
                column = match.start() - text.rfind("\n", 0, match.start())
                raise CompileError(_loc(filename, lines, line, column),
                                   f"brackets nested deeper than {MAX_DEPTH} levels; no IR needs that many")
        elif token in "])}":
            depth -= 1


def weights_path(filename: str, named: str | None) -> Path:
    """The weights `.npz` of IR text in `filename`: the file its `weights "..."` line names
    (relative to the text's folder), else `filename + ".npz"`."""
    return Path(filename + ".npz") if named is None else Path(filename).parent / named


def named_weights_file(text: str, filename: str) -> Path:
    """`weights_path` from the head of the text alone (no parse), for checks made before reading it."""
    named = None
    try:
        tokens = _parser().lex(text)
        for token in tokens:  # the head: module @name [passes [...]] [weights "file"]
            if token.type == "WEIGHTS":
                named = json.loads(str(next(tokens)))
            if token.type in ("WEIGHTS", "CONST", "FUNC"):
                break
    except (lark.LarkError, ValueError, StopIteration):
        named = None
    return weights_path(filename, named if isinstance(named, str) else None)


def _loc(filename: str, lines: list[str], line: int, column: int) -> SourceLoc:
    source = lines[line - 1] if 0 < line <= len(lines) else ""
    return SourceLoc(filename, line, column, source)


def _syntax_message(err: lark.UnexpectedInput) -> str:
    if isinstance(err, lark.UnexpectedToken):
        expected = sorted(_terminal_text(t) for t in (err.accepts or err.expected))
        shown = ", ".join(expected[:8]) + (", ..." if len(expected) > 8 else "")
        found = "end of input" if err.token.type == "$END" else repr(str(err.token))
        return f"syntax error: unexpected {found}; expected one of: {shown}"
    if isinstance(err, lark.UnexpectedCharacters):
        return f"syntax error: unexpected character {err.char!r}"
    return "syntax error: unexpected end of input"


def _terminal_text(name: str) -> str:
    """How a terminal looks in source: `'('` for punctuation and keywords, its name otherwise."""
    try:
        pattern = _parser().get_terminal(name).pattern
    except KeyError:
        return name
    return repr(pattern.value) if pattern.type == "str" else name


class _Builder:
    """Turns the parse tree into IR objects, keeping a location on each."""

    def __init__(self, filename: str, lines: list[str], arrays: dict | None):
        self.filename, self.lines, self.arrays = filename, lines, arrays

    def loc(self, node) -> SourceLoc:
        meta = node.meta if isinstance(node, lark.Tree) else node
        return _loc(self.filename, self.lines, meta.line, meta.column)

    def string(self, token: lark.Token, text: str | None = None) -> str:
        """A quoted string's value; JSON escapes, so `\\q` is an error located at the token."""
        try:
            return json.loads(str(token) if text is None else text)
        except ValueError as err:
            raise CompileError(self.loc(token), f"bad string {str(token)}: {err.msg}; "
                               'escape a backslash as \\\\ (strings use JSON escapes)') from None

    def name(self, token: lark.Token) -> str:
        """A `%name` / `@name` token without its sigil (quoted names unescaped)."""
        body = str(token)[1:]
        return self.string(token, body) if body.startswith('"') else body

    def integer(self, token: lark.Token) -> int:
        text = str(token)
        if len(text.lstrip("-")) > 19 or abs(int(text)) > MAX_INT:
            raise CompileError(self.loc(token), f"integer {text[:24]}{'...' * (len(text) > 24)} does not fit "
                                                "in 64 bits")
        return int(text)

    def module(self, tree: lark.Tree) -> Module:
        name, *rest = (child for child in tree.children if child is not None)
        passes = self.passes(rest.pop(0)) if rest and rest[0].data == "passes_decl" else ()
        weights_file = rest.pop(0) if rest and rest[0].data == "weights_file" else None
        func = rest.pop()
        self.weights_file = weights_file
        weights = tuple(self.weight(decl) for decl in rest)
        inputs, op_list, outputs, ret = self.func(func)
        return Module(self.name(name), inputs, op_list, outputs, weights, passes=passes, loc=self.loc(ret))

    def passes(self, tree: lark.Tree) -> tuple[str, ...]:
        return tuple(self.string(token) for token in tree.children if token is not None)

    def _load_arrays(self, weights_file: lark.Tree | None) -> dict:
        named = None if weights_file is None else self.string(weights_file.children[0])
        path = weights_path(self.filename, named)
        where = self.loc(weights_file) if weights_file is not None else None
        if not path.exists():
            raise CompileError(where, f"weights file {path} does not exist; write it with `sparsec import`")
        try:
            return load_npz(path, "weight", "write the IR and its weights again with `sparsec import`")
        except UserError as err:
            raise CompileError(where, f"weights file {err}") from None

    def weight(self, decl: lark.Tree) -> Weight:
        symbol, type_tree, layout_tree, inline = decl.children
        name, loc = self.name(symbol), self.loc(decl)
        type_ = self.tensor_type(type_tree)
        layout = self.layout(layout_tree)
        if inline is not None:
            arrays = self._inline_arrays(name, inline)
        else:
            arrays = self._file_arrays()
        data = self._array(arrays, name, loc)
        if inline is not None and data.ndim == 1 and data.size == type_.size:
            data = data.reshape(type_.shape)  # inline data may be written flat; stored data never is
        parts = {p: self._array(arrays, f"{name}#{p}", loc) for p in layout.parts}
        return Weight(name, type_, data, layout, parts, loc=loc)

    def _file_arrays(self) -> dict:
        if self.arrays is None:
            self.arrays = self._load_arrays(self.weights_file)
        return self.arrays

    def _inline_arrays(self, name: str, tree: lark.Tree) -> dict:
        """`{data = f32[...], mask = bool[...]}` -> npz-style keys (`name`, `name#mask`)."""
        arrays = {}
        for attr in (a for a in tree.children if a is not None):
            key, value_tree = attr.children
            value = self.literal(value_tree)
            if not isinstance(value, np.ndarray):
                raise CompileError(self.loc(value_tree), "inline weight arrays are typed lists, e.g. f32[1.0, 2.0]")
            arrays[name if str(key) == "data" else f"{name}#{key}"] = value
        return arrays

    def _array(self, arrays: dict, key: str, loc: SourceLoc) -> np.ndarray:
        if key not in arrays:
            raise CompileError(loc, f"weight data has no array {key!r}")
        return arrays[key]

    def tensor_type(self, tree: lark.Tree) -> TensorType:
        dtype, *dims = tree.children
        if str(dtype) not in DTYPES:
            raise CompileError(self.loc(dtype), f"unknown dtype {str(dtype)!r}; known: {', '.join(DTYPES)}")
        try:
            return TensorType(str(dtype), tuple(self.integer(d) for d in dims if d is not None))
        except ValueError as err:
            raise CompileError(self.loc(tree), str(err)) from None

    def layout(self, tree: lark.Tree) -> Layout:
        value = self.literal(tree)
        if isinstance(value, Name):
            kind, kwargs = value.text, {}
        else:
            kind, kwargs = getattr(value, "name", None), getattr(value, "kwargs", {})
        if kind not in LAYOUTS or (isinstance(value, Call) and value.args):
            raise CompileError(self.loc(tree), f"expected a layout ({', '.join(LAYOUTS)}) with keyword options")
        try:
            return LAYOUTS[kind](**kwargs)
        except (TypeError, ValueError) as err:
            raise CompileError(self.loc(tree), f"bad {kind} layout: {err}") from None

    def func(self, tree: lark.Tree):
        _symbol, *items = tree.children
        ret = items.pop()
        inputs = tuple(self.param(p) for p in items if p is not None and p.data == "param")
        op_list = tuple(self.op(s) for s in items if s is not None and s.data == "op_stmt")
        outputs = tuple(self.name(v) for v in ret.children if v is not None)
        return inputs, op_list, outputs, ret

    def param(self, tree: lark.Tree) -> Param:
        value, type_tree = tree.children
        return Param(self.name(value), self.tensor_type(type_tree), loc=self.loc(tree))

    def op(self, tree: lark.Tree) -> Op:
        result, type_tree, op_name, *rest = tree.children
        attr_tree = rest.pop() if rest and isinstance(rest[-1], lark.Tree) and rest[-1].data == "attr_dict" else None
        loc = self.loc(tree)
        cls = OPS.get(str(op_name))
        if cls is None:
            raise CompileError(self.loc(op_name), f"unknown op {str(op_name)!r}; known: {', '.join(sorted(OPS))}")
        operand_values = [self.operand(o) for o in rest if o is not None]
        kwargs = self._bind_operands(cls, operand_values, loc)
        kwargs.update(self._attrs(cls, attr_tree))
        try:
            return cls(self.name(result), self.tensor_type(type_tree), **kwargs, loc=loc)
        except (TypeError, ValueError) as err:
            raise CompileError(loc, f"{cls.name}: {err}") from None

    def _bind_operands(self, cls: type[Op], values: list, loc: SourceLoc) -> dict:
        names = cls.operand_fields()
        if len(values) > len(names):
            raise CompileError(loc, f"{cls.name} takes at most {len(names)} operands "
                                    f"({', '.join(names)}), got {len(values)}")
        hints = typing.get_type_hints(cls, vars(ops_module))
        for name, value in zip(names, values):
            _check_operand(cls, name, hints[name], value, loc)
        return dict(zip(names, values))

    def operand(self, tree: lark.Tree):
        if tree.data == "no_ref":
            return None
        if tree.data == "ref_list":
            return tuple(self.operand(c) for c in tree.children if c is not None)
        token = tree.children[0]
        return token[0] + self.name(token)

    def _attrs(self, cls: type[Op], tree: lark.Tree | None) -> dict:
        if tree is None:
            return {}
        hints = typing.get_type_hints(cls, vars(ops_module))
        allowed = set(cls.attr_fields())
        out = {}
        for attr in (a for a in tree.children if a is not None):
            key, value_tree = attr.children
            if str(key) not in allowed:
                raise CompileError(self.loc(key), f"{cls.name} has no attribute {str(key)!r}; "
                                                  f"it has: {', '.join(sorted(allowed))}")
            out[str(key)] = self._convert(hints[str(key)], self.literal(value_tree), self.loc(value_tree), str(key))
        return out

    def _typed_array(self, tree: lark.Tree, kids: list) -> np.ndarray:
        dtype, *items = kids
        if str(dtype) not in DTYPES:
            raise CompileError(self.loc(dtype), f"unknown dtype {str(dtype)!r}; known: {', '.join(DTYPES)}")
        try:
            return np.array([self.literal(i) for i in items], dtype=DTYPES[str(dtype)])
        except (ValueError, TypeError, OverflowError) as err:  # ragged, not numbers, out of the dtype's range
            raise CompileError(self.loc(tree), f"bad {dtype} array: {err}") from None

    def _dict(self, attrs: list) -> dict:
        """`{name = literal, ...}`; a name given twice is an error at its second place."""
        out = {}
        for attr in attrs:
            key, value_tree = attr.children
            if str(key) in out:
                raise CompileError(self.loc(key), f"{str(key)!r} is given twice")
            out[str(key)] = self.literal(value_tree)
        return out

    def _convert(self, hint, value, loc: SourceLoc, key: str):
        """Check a literal against the field's annotation and build the field's value."""
        is_union = typing.get_origin(hint) is typing.Union or type(hint).__name__ == "UnionType"
        allowed = typing.get_args(hint) if is_union else (hint,)
        for option in allowed:
            converted = _convert_to(option, value)
            if converted is not _NO:
                return converted
        if Activation in allowed and isinstance(value, (Name, Call)):
            raise CompileError(loc, f"attribute {key}: {_activation_problem(value)}")
        raise CompileError(loc, f"attribute {key} must be {_describe(hint)}")

    def literal(self, tree: lark.Tree):
        kind, kids = tree.data, [c for c in tree.children if c is not None]
        if kind in ("int", "float"):
            return self.integer(kids[0]) if kind == "int" else float(kids[0])
        if kind == "string":
            return self.string(kids[0])
        if kind in ("true", "false", "none"):
            return {"true": True, "false": False, "none": None}[kind]
        if kind == "list":
            return [self.literal(c) for c in kids]
        if kind == "name":
            return Name(str(kids[0]))
        if kind == "typed_list":
            return self._typed_array(tree, kids)
        if kind == "dict":
            return self._dict(kids)
        name, *args = kids
        positional = tuple(self.literal(a.children[0]) for a in args if a.data == "positional")
        keywords = {str(a.children[0]): _tuples(self.literal(a.children[1])) for a in args if a.data == "keyword"}
        return Call(str(name), positional, keywords)


def _check_operand(cls: type[Op], field: str, hint, value, loc: SourceLoc) -> None:
    """The operand's shape against its field: one reference, an optional one, or a list of them."""
    if typing.get_origin(hint) is tuple:
        ok, want = isinstance(value, tuple) and all(isinstance(v, str) for v in value), "a list of values [%a, %b]"
    elif type(None) in typing.get_args(hint):
        ok, want = value is None or isinstance(value, str), "one value or weight, or none"
    else:
        ok, want = isinstance(value, str), "one value or weight"
    if not ok:
        raise CompileError(loc, f"{cls.name} operand {field} takes {want}")


_NO = object()


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _convert_to(option, value):
    """`value` as an instance of the annotation `option`, or `_NO` if it is not one."""
    origin = typing.get_origin(option)
    if option is type(None):
        return None if value is None else _NO
    if option is bool:
        return value if isinstance(value, bool) else _NO
    if option is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if option is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _NO
    if option is str:
        return value if isinstance(value, str) else _NO
    if origin is tuple and isinstance(value, list):
        item = typing.get_args(option)[0]
        items = [_convert_to(item, v) for v in value]
        return _NO if any(i is _NO for i in items) else tuple(items)
    if option is Activation:
        return _activation(value)
    if option is Knobs:
        return _knobs(value)
    return _NO


def _knobs(value):
    if not isinstance(value, dict):
        return _NO
    try:
        return Knobs.of(value)
    except ValueError:
        return _NO


def _activation(value):
    if isinstance(value, Name):
        value = Call(value.text, (), {})
    if not isinstance(value, Call) or value.kwargs:
        return _NO
    try:
        return Activation(value.name, tuple(value.args))
    except (ValueError, TypeError):
        return _NO


def _activation_problem(value: Name | Call) -> str:
    """Why a name or call is not an activation, listing the ones there are."""
    known = ", ".join(f"{k}({', '.join(p)})" if p else k for k, p in ACTIVATION_PARAMS.items())
    if isinstance(value, Call) and value.kwargs:
        return f"activation {value.name} takes its parameters by position; activations: {known}"
    call = value if isinstance(value, Call) else Call(value.text, (), {})
    try:
        Activation(call.name, tuple(call.args))
    except (ValueError, TypeError) as err:
        return f"{err}; activations: {known}"
    return f"not an activation; activations: {known}"  # pragma: no cover - _activation accepted it


def _describe(hint) -> str:
    text = str(hint).replace("typing.", "").replace("sparsec.ir.activation.", "").replace("sparsec.ir.knobs.", "")
    return text.replace("NoneType", "none")
