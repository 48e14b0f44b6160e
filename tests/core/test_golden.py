"""Golden IR-text tests: one file per pass in tests/golden/, many cases per file.

File format: a `// RUN: pipeline` line, then cases separated by `// -----`; each case is
`// CASE: name`, the input module, `// EXPECT:` and the module the pipeline must print.
Each case checks: the output text exactly, that the output verifies, that input and output
round-trip through the parser, and that the reference interpreter gives the same numbers
before and after (passes must not change what a model computes).
Regenerate expectations with UPDATE_GOLDEN=1 (and read the diff before committing).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from sparsec.ir import parse_module, print_module, verify
from sparsec.passes import PASSES, parse_pipeline, run_pipeline
from sparsec.reference import run_reference

GOLDEN = Path(__file__).parent.parent / "golden"
SEPARATOR = "// -----"


def golden_cases():
    for path in sorted(GOLDEN.glob("*.sir")):
        text = path.read_text()
        pipeline = re.search(r"^// RUN: (.+)$", text, re.M).group(1).strip()
        for index, chunk in enumerate(text.split(SEPARATOR)):
            name = re.search(r"^// CASE: (.+)$", chunk, re.M).group(1).strip()
            yield pytest.param(path, index, pipeline, chunk, id=f"{path.stem}:{name}")


def _split(chunk: str) -> tuple[str, str]:
    source, _, expected = chunk.partition("// EXPECT:\n")
    body = "\n".join(line for line in source.splitlines() if not line.startswith("// RUN:"))
    return body, expected.strip("\n") + "\n"


def _random_inputs(module) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {p.name: rng.standard_normal(p.type.shape).astype(np.float32) for p in module.inputs}


@pytest.mark.parametrize("path, index, pipeline, chunk", list(golden_cases()))
def test_golden(path, index, pipeline, chunk):
    source, expected = _split(chunk)
    module = verify(parse_module(source, str(path)))
    assert parse_module(print_module(module, inline_weights=True)) == module
    result = verify(run_pipeline(module, parse_pipeline(pipeline)))
    text = print_module(result, inline_weights=True)
    if os.environ.get("UPDATE_GOLDEN"):
        _update(path, index, text)
        return
    assert text == expected
    assert parse_module(text) == result
    inputs = _random_inputs(module)
    before, after = run_reference(module, inputs), run_reference(result, inputs)
    for name in module.outputs:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-4, atol=1e-5)


def _update(path: Path, index: int, text: str) -> None:
    chunks = path.read_text().split(SEPARATOR)
    source, _ = _split(chunks[index])
    head = chunks[index].partition("// EXPECT:\n")[0]
    chunks[index] = head + "// EXPECT:\n" + text + ("\n" if index < len(chunks) - 1 else "")
    path.write_text(SEPARATOR.join(chunks))


def test_every_pass_has_a_golden_file():
    files = {p.stem for p in GOLDEN.glob("*.sir")}
    assert {name.replace("-", "_") for name in PASSES} <= files
