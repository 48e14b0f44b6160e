"""Run fuzz cases: compile each with sparsec, run it, compare with onnxruntime; keep reproducers.

A case ends one of four ways:
- ok: every output matches onnxruntime on the masked model within `sparsec.check.TOLERANCE`;
- mismatch: an output differs (the compiled model, or the reference interpreter before or after
  the passes: the three together say whether a kernel, a pass or the interpreter is wrong);
- crash: any other failure: an exception that is not a clean `UserError` at import, or any
  error after the import accepted the model (a kernel TVM cannot build is a compiler bug);
- rejected: a clean `UserError` at import, or a `NotSupportedError` anywhere. The generator
  only builds what sparsec claims to support, so each one is worth reading too.
Nothing is written for a case that passes; each other case leaves `OUT/seed-N/` with the model,
masks, input and a README.txt giving the error and the command that reproduces it.
"""

from __future__ import annotations

import re
import shlex
import shutil
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from sparsec.check import TOLERANCE, relative_error, require_onnxruntime, seeded_inputs
from sparsec.errors import NotSupportedError, UserError
from sparsec.fuzz.generate import Case, random_case
from sparsec.target import Target

KINDS = ("ok", "mismatch", "crash", "rejected")


@dataclass(frozen=True)
class Outcome:
    """How one case ended: its kind (one of `KINDS`), a one-line message and the full details."""

    seed: int
    kind: str
    message: str = ""
    details: str = ""
    seconds: float = 0.0


class _Failed(Exception):
    """A case that did not pass, raised from inside `_check` with its outcome's fields."""

    def __init__(self, kind: str, message: str, details: str = ""):
        super().__init__(message)
        self.kind, self.message, self.details = kind, message, details


def case_inputs(case: Case) -> dict[str, np.ndarray]:
    """The input a case runs on: the one `sparsec compile --check` draws (seed 0), so the command
    in a reproducer's README compares on exactly this input."""
    return seeded_inputs({"input": case.input_shape}, 0)


def run_case(case: Case, target: Target | None = None) -> Outcome:
    """Compile (for `target`, default this machine as it is), run and compare one case."""
    start = time.perf_counter()
    try:
        _check(case, case_inputs(case), target)
    except _Failed as failed:
        return Outcome(case.seed, failed.kind, failed.message, failed.details, time.perf_counter() - start)
    return Outcome(case.seed, "ok", seconds=time.perf_counter() - start)


def _check(case: Case, inputs: dict[str, np.ndarray], target: Target | None) -> None:
    """Raises `_Failed` unless every engine matches onnxruntime on every output."""
    want = _stage("onnxruntime", lambda: _onnxruntime(case, inputs))
    _compare(want, _engines(case, inputs, target))


def _engines(case: Case, inputs: dict[str, np.ndarray], target: Target | None) -> dict[str, dict[str, np.ndarray]]:
    """The outputs of the compiled model, and of the reference interpreter before and after the
    passes (what tells a kernel bug from a pass bug)."""
    from sparsec.driver import compile as compile_model
    from sparsec.driver import import_model
    from sparsec.reference import run_reference

    module = _stage("import", lambda: import_model(case.model, case.masks))
    last = {}  # the module after the last pass
    compiled = _stage("compile", lambda: compile_model(module, target=target or "host", verify_each=True,
                                                      dump=lambda _, m: last.update(ir=m)))
    return {
        "sparsec": _stage("run", lambda: compiled.run(inputs)),
        "reference": _stage("reference", lambda: run_reference(module, inputs)),
        "reference after passes": _stage("reference", lambda: run_reference(last["ir"], inputs)),
    }


def _compare(want: dict[str, np.ndarray], engines: dict[str, dict[str, np.ndarray]]) -> None:
    for engine, got in engines.items():
        for name, value in want.items():
            if np.shape(got.get(name)) != value.shape:
                raise _Failed("mismatch", f"output {name!r}: {engine} gives shape {list(np.shape(got.get(name)))}, "
                              f"onnxruntime {list(value.shape)}")
    errors = {engine: {name: relative_error(got[name], value) for name, value in want.items()}
              for engine, got in engines.items()}
    bad = [(name, engine) for engine, by_output in errors.items() for name, e in by_output.items()
           if not e <= TOLERANCE]
    if bad:
        name, engine = bad[0]
        table = "\n".join(f"  {engine:24} {name!r}: {e:.2e}" for engine, by in errors.items() for name, e in by.items())
        raise _Failed("mismatch", f"output {name!r}: {engine} differs from onnxruntime by {errors[engine][name]:.2e} "
                       f"(tolerance {TOLERANCE:g}); " + ", ".join(f"{e} {errors[e][name]:.1e}" for e in errors),
                       f"max |got - want| / max |want| per engine and output:\n{table}\n")


def _stage(stage: str, fn: Callable):
    """Runs one stage, turning its failure into a `_Failed` of the right kind."""
    try:
        return fn()
    except NotSupportedError as err:
        raise _Failed("rejected", f"{stage}: {_first_line(err)}", traceback.format_exc()) from None
    except UserError as err:
        # A user error after the import accepted the model is the compiler's failure, not the user's.
        kind = "rejected" if stage == "import" else "crash"
        raise _Failed(kind, f"{stage}: {_first_line(err)}", _traceback(err)) from None
    except Exception as err:  # noqa: BLE001 - any other exception is a crash to report
        if stage == "onnxruntime":
            raise _Failed("crash", f"onnxruntime cannot run the generated model (a fuzzer bug): {_first_line(err)}",
                          traceback.format_exc()) from None
        raise _Failed("crash", f"{stage}: {type(err).__name__}: {_first_line(err)}", traceback.format_exc()) from None


def _traceback(err: BaseException) -> str:
    """The traceback, and the error a `raise ... from None` hid (TVM's full message)."""
    text = traceback.format_exc()
    if err.__suppress_context__ and err.__context__ is not None:
        text += f"\nThe error it replaced ({type(err.__context__).__name__}):\n{str(err.__context__)[:20000]}\n"
    return text


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[0].strip()[:300] if lines else type(err).__name__


def _onnxruntime(case: Case, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from sparsec.prune import apply_masks

    ort = require_onnxruntime("sparsec fuzz compares with onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no warnings about the outputs' undeclared dims
    session = ort.InferenceSession(apply_masks(case.model, case.masks).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


# ---- reproducers ---------------------------------------------------------------------------


def write_reproducer(case: Case, outcome: Outcome, folder: Path, target_json: str | None = None) -> None:
    """`folder`/model.onnx, masks.npz, input.npy and README.txt for a failing case (compiled for
    `target_json`, a `--target-json` spec, if given)."""
    from sparsec.prune import save_masks

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(case.model.SerializeToString())
    save_masks(case.masks, folder / "masks.npz")
    np.save(folder / "input.npy", case_inputs(case)["input"])
    (folder / "README.txt").write_text(_readme(case, outcome, target_json))


def _readme(case: Case, outcome: Outcome, target_json: str | None = None) -> str:
    target = "" if target_json is None else f" --target-json {shlex.quote(target_json)}"
    return (
        f"sparsec fuzz, seed {case.seed}: {outcome.kind}\n{outcome.message}\n\n"
        "Reproduce, in this folder:\n"
        f"    sparsec compile model.onnx --masks masks.npz -o m.so --check{target}\n"
        "input.npy is the input compared (the one --check draws); to run the library on it:\n"
        "    sparsec run m.so --input input.npy -o y.npy\n"
        f"To regenerate this case: sparsec fuzz --seeds 1 --start {case.seed}{target}\n\n"
        f"{describe_case(case)}\n\nDetails:\n{outcome.details}"
    )


def describe_case(case: Case) -> str:
    """The model's nodes (with attributes) and a line per mask: enough to read a case."""
    graph = case.model.graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    lines = [f"Model: opset {case.model.opset_import[0].version}, input {dims}, outputs "
             + ", ".join(f"{name} {list(shape)}" for name, shape in case.shapes.items())]
    for node in graph.node:
        attrs = ", ".join(f"{a.name}={_attr(a)}" for a in node.attribute)
        call = f"  {node.output[0]} = {node.op_type}({', '.join(node.input)})"
        lines.append(call + (f" {{{attrs}}}" if attrs else ""))
    lines.append("Masks:" if case.masks else "Masks: none")
    for name, mask in case.masks.items():
        lines.append(f"  {name} {list(mask.shape)}: {int(mask.sum())} of {mask.size} kept")
    return "\n".join(lines)


def _attr(attr: onnx.AttributeProto):
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):  # a Constant's value: small ones in full
        array = onnx.numpy_helper.to_array(value)
        return array.tolist() if array.size <= 8 else f"<{array.dtype}{list(array.shape)}>"
    return value.decode() if isinstance(value, bytes) else list(value) if isinstance(value, list) else value


# ---- the loop ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Every case's outcome and the wall time of the whole run."""

    outcomes: tuple[Outcome, ...]
    seconds: float

    def count(self, kind: str) -> int:
        return sum(o.kind == kind for o in self.outcomes)

    @property
    def failed(self) -> bool:
        return bool(self.count("mismatch") or self.count("crash"))

    def causes(self) -> list[str]:
        """One line per distinct failure message (names and numbers masked), most frequent first,
        with the seeds that hit it: what a long run found, at a glance."""
        seeds: dict[str, list[int]] = {}
        for o in self.outcomes:
            if o.kind != "ok":
                seeds.setdefault(f"{o.kind}: {signature(o.message)}", []).append(o.seed)
        ranked = sorted(seeds.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        return [f"{len(s):4d} x {cause} (seeds {', '.join(map(str, s[:8]))}{', ...' if len(s) > 8 else ''})"
                for cause, s in ranked]

    def line(self) -> str:
        return (f"fuzz: {len(self.outcomes)} cases, {self.count('ok')} ok, {self.count('mismatch')} mismatches, "
                f"{self.count('crash')} crashes, {self.count('rejected')} rejected")


def signature(message: str) -> str:
    """A failure message with value names, shapes and numbers masked, so alike failures group."""
    message = re.sub(r"%[\w.$-]+|@[\w.$-]+|'[^']*'|\"[^\"]*\"", "<name>", message)
    message = re.sub(r"\[[\d, ]*\]|\([\d, ]*\)", "<shape>", message)
    return re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "#", message)


def fuzz(seeds: Iterable[int], out: Path | None = None, log: Callable[[str], None] = print,
         target: Target | None = None, target_json: str | None = None) -> Summary:
    """Runs the case of each seed, compiled for `target` (default this machine as it is; the
    `--target-json` spec it came from, `target_json`, goes in the reproducers); logs each failure
    and writes its reproducer under `out` (a passing seed's stale reproducer there is removed)."""
    require_onnxruntime("sparsec fuzz compares with onnxruntime")  # one clean error, not a crash per case
    start, outcomes = time.perf_counter(), []
    for seed in seeds:
        try:
            case = random_case(seed)
        except Exception as err:  # noqa: BLE001 - a generator bug is reported like any crash
            outcomes.append(Outcome(seed, "crash", f"the generator failed (a fuzzer bug): {err!r}",
                                    traceback.format_exc()))
            log(f"seed {seed}: crash: {outcomes[-1].message}")
            continue
        outcome = run_case(case, target)
        outcomes.append(outcome)
        folder = None if out is None else out / f"seed-{seed}"
        if outcome.kind == "ok":
            if folder is not None and folder.is_dir():
                shutil.rmtree(folder)
            continue
        log(f"seed {seed}: {outcome.kind}: {outcome.message}")
        if folder is not None:
            write_reproducer(case, outcome, folder, target_json)
    return Summary(tuple(outcomes), time.perf_counter() - start)
