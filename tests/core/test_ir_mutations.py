"""Hostile IR text: valid modules mutated token by token (deleted, duplicated, swapped, replaced by
odd values, wrapped in deep brackets) must parse and verify into a module or fail with a located
`CompileError` / `UserError`; never another exception (KeyError, RecursionError, OverflowError...)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sparsec.errors import CompileError, UserError
from sparsec.ir import parse_module, print_module, verify
from sparsec.ir.parser import _parser

GOLDEN = Path(__file__).parent.parent / "golden"


def _seeds() -> list[str]:
    """Every module of the golden files, inputs and expectations: all ops, layouts and attributes."""
    texts = []
    for path in sorted(GOLDEN.glob("*.sir")):
        for chunk in path.read_text().split("// -----"):
            texts.extend(part for part in re.split(r"^// EXPECT:\n", chunk, flags=re.M) if "module @" in part)
    return texts


SEEDS = _seeds()
FKW = next(text for text in SEEDS if "fkw(patterns" in text and "mask = bool[[[[false" in text)
# Tokens that broke the parser or the verifier once, or look like they could.
ODD = ["-1", "0", "99999999999999999999999", "1e999", "nan", "-0.0", '"a\\q"', '"\\u0000"', "none", "true",
       "%x", "@w", "%nope", "[", "]", "{", "}", "(", ")", ",", "=", ":", "f32[]", "u8[300]", "bool[2]",
       "i64[9223372036854775807]", "relu", "clip(1.0)", "swish", "dense", "fkw(patterns = [[9]])",
       "[%x, %x]", "return", "const", "func", "module", "weights"]
# Numbers that keep the syntax but not the meaning.
ODD_NUMBERS = ["0", "-1", "-4", "1", "2", "3", "256", "300", "65536", "2147483648", "9223372036854775807",
               "0.5", "-2.5"]


def _tokens(text: str) -> list[tuple[str, int, int]]:
    """(terminal, start, end) of each token the grammar's lexer finds (comments and spaces skipped)."""
    return [(t.type, t.start_pos, t.end_pos) for t in _parser().lex(text)]


@st.composite
def mutated(draw) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 3))):
        tokens = _tokens(text)
        # The kind first, then a token of it: numbers and names are rare next to data floats.
        kind = draw(st.sampled_from(sorted({k for k, _, _ in tokens})))
        _, start, end = draw(st.sampled_from([t for t in tokens if t[0] == kind]))
        _, other_start, other_end = tokens[draw(st.integers(0, len(tokens) - 1))]
        token, other = text[start:end], text[other_start:other_end]
        same_kind = [text[s:e] for k, s, e in tokens if k == kind]
        how = draw(st.sampled_from(["delete", "duplicate", "swap", "replace", "nest", "same-kind", "same-kind"]))
        if how == "delete":
            text = text[:start] + text[end:]
        elif how == "duplicate":
            text = text[:end] + " " + token + text[end:]
        elif how == "replace":
            text = text[:start] + draw(st.sampled_from(ODD)) + text[end:]
        elif how == "same-kind":  # keeps the syntax: another name, op, dtype or number in its place
            choices = ODD_NUMBERS if kind in ("INT", "FLOAT") else same_kind
            text = text[:start] + draw(st.sampled_from(choices)) + text[end:]
        elif how == "nest":
            depth = draw(st.sampled_from([1, 2, 70, 3000]))
            text = text[:start] + "[" * depth + token + "]" * draw(st.sampled_from([0, depth])) + text[end:]
        elif end <= other_start:
            text = text[:start] + other + text[end:other_start] + token + text[other_end:]
        if not _tokens_ok(text):
            break
    return text


def _tokens_ok(text: str) -> bool:
    try:
        return len(_tokens(text)) > 0
    except Exception:  # noqa: BLE001 - the lexer fails on text it cannot cut; the parser must still cope
        return False


def _parse(text: str):
    return verify(parse_module(text, "fuzz.sir"))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
@example(SEEDS[0].replace("pads = [1, 1, 1, 1]", "pads = " + "[" * 20000 + "]" * 20000, 1))  # RecursionError once
@example(SEEDS[0].replace("pads = [1, 1, 1, 1]", "pads = " + "[" * 20000, 1))
@example(SEEDS[0].replace("return %y", "return"))
# One of each fault class the campaign found, so that each fix stays covered whatever is drawn:
@example(FKW.replace("mask = bool[[[[false", "mask = u8[[[[300", 1))  # OverflowError once
@example(FKW.replace("f32[4, 3, 3, 3]", "f32[-4, 3, 3, 3]", 1))  # ValueError (types.py) once
@example(FKW.replace("pads = [1, 1, 1, 1]", "pads = [99999999999999999999999, 1, 1, 1]", 1))
@example(FKW.replace("conv2d(%x, @w, @b)", "conv2d([%x, %x], @w, @b)", 1))  # KeyError (ops.py) once
@example(FKW.replace("conv2d(%x, @w, @b)", "conv2d(%x, none, @b)", 1))
@example(FKW.replace("activation = relu", "activation = swish", 1))
@example(FKW.replace("module @fkw", 'module @"fkw\\q"', 1))  # JSONDecodeError once
def test_mutated_text_gives_a_module_or_a_located_error(text):
    try:
        module = _parse(text)
    except CompileError as err:
        assert err.loc is None or err.loc.file == "fuzz.sir"
        return
    except UserError:
        return
    print_module(module, inline_weights=True)  # a module that verifies also prints


@pytest.mark.parametrize("text", SEEDS[:3])
def test_seeds_are_valid(text):
    _parse(text)
