"""`error_line`: the one line of a TVM / onnxruntime / remote error that a diagnostic quotes."""

from __future__ import annotations

from sparsec.errors import error_line


def test_error_line_skips_tvms_printed_ir_and_notes():
    message = ("Check failed: (StructuralEqual(lhs, rhs)) is false: shapes differ\n"
               "def main(x: R.Tensor((1, 3), dtype=\"float32\")):\n    return x\n"
               "# Metadata omitted. Use show_meta=True in script() method to show this information.\n")
    assert error_line(message) == "Check failed: (StructuralEqual(lhs, rhs)) is false: shapes differ"


def test_error_line_takes_a_tracebacks_last_statement():
    remote = ("Traceback (most recent call last):\n  File \"x.py\", line 3, in run\n    f()\n"
              "ValueError: first\nDuring handling...\ntvm.error.InternalError: device lost\n")
    assert error_line(remote) == "tvm.error.InternalError: device lost"


def test_error_line_of_plain_and_empty_messages():
    assert error_line(ValueError("weight (8, 3) is not a 1x1 conv\nmore detail")) == "weight (8, 3) is not a 1x1 conv"
    assert error_line("", "RuntimeError") == "RuntimeError"
    assert error_line("# only a note\n") == "no message"
