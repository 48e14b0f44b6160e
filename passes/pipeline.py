"""Pipelines: the text form `-p a,b{option=value}`, running with instrumentation, and the default."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
from dataclasses import dataclass, field

from sparsec.errors import UserError
from sparsec.ir.module import Module
from sparsec.ir.printer import print_module
from sparsec.ir.verify import verify
from sparsec.passes.base import PASSES, Pass, is_option

_STEP = re.compile(r"\s*([a-z0-9-]+)\s*(?:\{([^}]*)\})?\s*(?:,|$)")


def default_pipeline() -> list[Pass]:
    """The compiler's pipeline, in order; each step's comment is what it relies on."""
    from sparsec.passes import registry as p

    return [
        p.FoldBatchnorm(),            # needs: BN right after the conv/linear it scales
        p.FuseEpilogue(),             # after folding, so BN-then-ReLU chains fuse fully
        p.AnalyzeSparsity(),          # needs: masks from import; picks pattern / CSR / dense per weight
        p.ReorderFilters(),           # needs: pattern layouts; permutes filters, records filter_order
        p.ReorderKernels(),           # needs: pattern layouts; fixes the pattern (= kernel) order
        p.EliminateRedundantLoads(),  # needs: reordered filters; groups filters sharing input loads
        p.CompressFkw(),              # last: freezes the above into FKW arrays
    ]


def parse_pipeline(text: str) -> list[Pass]:
    """`fold-batchnorm,reorder-filters{group_size=4}` -> pass objects; `default` is the default."""
    text = text.strip()
    if text == "default":
        return default_pipeline()
    steps, pos = [], 0
    while pos < len(text):
        match = _STEP.match(text, pos)
        if match is None or match.end() == pos:
            raise UserError(f"pipeline {text!r}: cannot read a pass at {text[pos:]!r}; "
                            "write name,name{option=value}")
        steps.append(_make_pass(match.group(1), match.group(2) or ""))
        pos = match.end()
    return steps


def _make_pass(name: str, options_text: str) -> Pass:
    cls = PASSES.get(name)
    if cls is None:
        raise UserError(f"unknown pass {name!r}; known passes: {', '.join(sorted(PASSES))}")
    fields = {f.name: f for f in dataclasses.fields(cls) if is_option(f)}
    options = {}
    for item in filter(None, (s.strip() for s in options_text.split(","))):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in fields:
            raise UserError(f"pass {name} has no option {key!r}; options: {', '.join(fields) or 'none'}")
        options[key] = _option_value(name, key, value.strip(), fields[key].default)
    return cls(**options)


def _option_value(pass_name: str, key: str, text: str, default: object) -> object:
    try:
        if isinstance(default, bool):
            if text not in ("true", "false"):
                raise ValueError
            return text == "true"
        value = type(default)(text) if default is not None else text
    except ValueError:
        raise UserError(f"pass {pass_name}: option {key}={text!r} must be a {type(default).__name__}") from None
    # Every numeric option is a count (filters, patterns) or a ratio: zero, negative or
    # non-finite values mean nothing, and would silently turn the pass off.
    if isinstance(value, (int, float)) and not (0 < value < math.inf):
        raise UserError(f"pass {pass_name}: option {key}={text!r} must be a positive {type(default).__name__}")
    return value


@dataclass
class PassInstrument:
    """What to do around each pass: print the IR after it, verify it, time it."""

    print_after_all: bool = False
    verify_each: bool = False
    dump: callable = None  # optional fn(pass_name, module) called after each pass
    timings: dict[str, float] = field(default_factory=dict)

    def after(self, step: Pass, module: Module, seconds: float) -> None:
        self.timings[step.name] = self.timings.get(step.name, 0.0) + seconds
        if self.verify_each:
            verify(module)
        if self.print_after_all:
            sys.stderr.write(f"// ----- IR after {step.name} -----\n{print_module(module)}")
        if self.dump is not None:
            self.dump(step.name, module)


def run_pipeline(module: Module, steps: list[Pass], instrument: PassInstrument | None = None) -> Module:
    """Run the passes in order, instrumented; the module records each pass that ran."""
    instrument = instrument or PassInstrument()
    for step in steps:
        start = time.perf_counter()
        module = step.apply(module)
        module = module.replace(passes=module.passes + (step.name,))
        instrument.after(step, module, time.perf_counter() - start)
    return module


def remaining_pipeline(module: Module) -> tuple[list[Pass], list[str]]:
    """The default pipeline's passes that have not run over `module` yet, and those that have."""
    unknown = [name for name in module.passes if name not in PASSES]
    if unknown:
        raise UserError(f"module @{module.name} records passes this sparsec does not know: {', '.join(unknown)}; "
                        f"known passes: {', '.join(sorted(PASSES))}")
    steps = default_pipeline()
    return [p for p in steps if p.name not in module.passes], [p.name for p in steps if p.name in module.passes]
