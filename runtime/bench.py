"""Benchmark one model three ways in one process: sparsec, onnxruntime and sparsec's dense path.

Measuring rules (../shared/notes/tvm-0.27.md, "Measuring in one process"): onnxruntime's and
TVM's thread pools keep spinning after a run, so every engine is warmed up, rounds interleave the
engines with a short pause before each, and only medians and ratios from the same run are reported.

    report = bench_model(model, masks, threads=2)
    print(report.format_report()); json_text = report.to_json()
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata

import numpy as np
import onnx

from sparsec.check import TOLERANCE, EngineUnavailable, onnxruntime_session, require_onnxruntime, seeded_inputs
from sparsec.errors import UserError
from sparsec.prune import apply_masks
from sparsec.runtime import cross_core
from sparsec.sparsity import useful_gflops
from sparsec.target import Target

ENGINES = ("sparsec", "onnxruntime", "sparsec-dense")
REFERENCE = "onnxruntime"
PAUSE_S = 0.3  # TVM's workers spin ~0.17 s after a run: a shorter pause halved onnxruntime's speed
RTOL = TOLERANCE  # max |error| / max |reference| that `check` accepts, as `sparsec compile --check`


class MismatchError(UserError):
    """sparsec's output differs from onnxruntime's by more than the tolerance."""


@dataclass(frozen=True)
class Engine:
    """One way to run the model on the prepared input: `call` is what gets timed."""

    name: str
    call: Callable[[], object]
    outputs: Callable[[], list[np.ndarray]]
    compile_s: float
    compiled: object | None = None  # sparsec's CompiledModel, for the per-layer profile


# --- inputs and engines --------------------------------------------------------------------------


def input_shapes_of(model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]] | None = None):
    """Each graph input's shape: the override, else its static dims (a symbolic dim becomes 1)."""
    overrides = overrides or {}
    initializers = {init.name for init in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = overrides.get(value.name) or tuple(d.dim_value or 1 for d in dims)
    return shapes


def onnxruntime_options(threads: int, why: str):
    """onnxruntime's session options for a timed run: `threads` intra-op threads, every graph optimisation."""
    ort = require_onnxruntime(why)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def onnxruntime_engine(model: onnx.ModelProto, masks, inputs: dict[str, np.ndarray], threads: int) -> Engine:
    why = "benchmarking needs onnxruntime as the reference"
    options = onnxruntime_options(threads, why)
    start = time.perf_counter()
    session = onnxruntime_session(apply_masks(model, masks) if masks else model, why, options)
    compile_s = time.perf_counter() - start
    run = lambda: session.run(None, inputs)  # noqa: E731
    return Engine(REFERENCE, run, run, compile_s)


def densified(module, *, direct: bool = False):
    """The module with every weight in the dense layout: same (masked) values, sparsity ignored.
    `direct`: every conv keeps the direct algorithm (no Winograd), so a kernel's instruction count
    can be held against the dense schedule doing the same multiply-adds."""
    from sparsec.ir.knobs import Knobs
    from sparsec.ir.ops import Conv2d
    from sparsec.ir.types import Dense

    weights = tuple(dataclasses.replace(w, layout=Dense(), parts={}) for w in module.weights)
    if not direct:
        return module.replace(weights=weights)
    ops = tuple(dataclasses.replace(op, knobs=Knobs.of({"winograd": 1})) if isinstance(op, Conv2d) else op
                for op in module.ops)
    return module.replace(weights=weights, ops=ops)


def sparsec_engine(model: onnx.ModelProto, masks, inputs: dict[str, np.ndarray], *, dense: bool = False,
                   input_shapes=None, target: Target | None = None) -> Engine:
    """sparsec's compiled model for `target` (default: this machine as it is); `dense` compiles the
    masked weights with the dense kernels."""
    import tvm  # only for the input tensors: timing `run` would time NumPy <-> TVM copies too

    from sparsec.driver import compile as compile_model
    from sparsec.driver import import_model

    start = time.perf_counter()
    module = import_model(model, masks, input_shapes)
    compiled = compile_model(densified(module) if dense else module, target=target or "host")
    compile_s = time.perf_counter() - start
    main = compiled.vm["main"]
    args = [tvm.runtime.tensor(a, tvm.cpu(0)) for a in compiled.check_inputs(inputs)]
    outputs = lambda: list(compiled.run(inputs).values())  # noqa: E731
    name = "sparsec-dense" if dense else "sparsec"
    return Engine(name, lambda: main(*args), outputs, compile_s, compiled)


def make_engine(name: str, model: onnx.ModelProto, masks, inputs, *, threads: int, input_shapes=None,
                target: Target | None = None) -> Engine:
    """The engine called `name` (one of ENGINES), ready to run `inputs`; sparsec's compiled for
    `target` (default: this machine as it is)."""
    if name == REFERENCE:
        return onnxruntime_engine(model, masks, inputs, threads)
    if name in ("sparsec", "sparsec-dense"):
        return sparsec_engine(model, masks, inputs, dense=name == "sparsec-dense", input_shapes=input_shapes,
                              target=target)
    raise UserError(f"unknown engine {name!r}; choose from: {', '.join(ENGINES)}")


def set_tvm_threads(threads: int) -> None:
    """TVM sizes its pool from TVM_NUM_THREADS when the pool starts: set it before any TVM run."""
    os.environ["TVM_NUM_THREADS"] = str(threads)


def tvm_threads() -> int | None:
    """The threads TVM's pool really uses (it ignores TVM_NUM_THREADS once started)."""
    import tvm

    func = tvm.get_global_func("runtime.NumThreads", allow_missing=True)
    return int(func()) if func is not None else None


# --- timing --------------------------------------------------------------------------------------


def timed_ms(call: Callable[[], object], repeats: int) -> float:
    """Milliseconds per call over `repeats` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) * 1e3 / repeats


def warm_up(engine: Engine, min_time_s: float) -> int:
    """Run a few times (first-run allocations, thread-pool start); return repeats filling min_time_s."""
    engine.call()
    once_ms = timed_ms(engine.call, 2)
    return max(1, math.ceil(min_time_s * 1e3 / max(once_ms, 1e-6)))


def measure(engines: list[Engine], rounds: int, min_time_s: float,
            probe: Callable[[], float | None] | None = None,
            ) -> tuple[dict[str, list[float]], dict[str, int], list[float | None]]:
    """ms per run of each engine in each round (rounds interleave the engines), the runs per round, and
    `probe`'s readings (the cores' round trip) before each round and after the last (none without it)."""
    repeats = {}
    for engine in engines:
        time.sleep(PAUSE_S)
        repeats[engine.name] = warm_up(engine, min_time_s)
    runs: dict[str, list[float]] = {e.name: [] for e in engines}
    readings: list[float | None] = []
    for _ in range(rounds):
        if probe is not None:
            time.sleep(PAUSE_S)  # TVM's workers have stopped spinning on the cores it measures
            readings.append(probe())
        for engine in engines:
            time.sleep(PAUSE_S)
            runs[engine.name].append(timed_ms(engine.call, repeats[engine.name]))
    if probe is not None:
        time.sleep(PAUSE_S)
        readings.append(probe())
    return runs, repeats, readings


def profile_layers(engine: Engine, runs: int, between: Callable[[], object] | None = None) -> list[dict]:
    """Median ms of each kernel the VM calls, via its instrument hook, per layer of the manifest;
    `between` runs before each of sparsec's runs, a pause on either side (another engine
    interleaved, so both see the machine in the same state)."""
    compiled = engine.compiled
    per_run: list[dict[str, float]] = []
    state = {"start": 0.0}

    def instrument(func, symbol, before_run, ret_value, *args):  # TVM 0.27: called before and after each Call
        if before_run:
            state["start"] = time.perf_counter()
        elif not symbol.startswith("vm.builtin."):
            current = per_run[-1]
            current[symbol] = current.get(symbol, 0.0) + (time.perf_counter() - state["start"]) * 1e3

    compiled.vm.set_instrument(instrument)
    try:
        for _ in range(runs + 1):  # the first run is a warm-up, dropped below
            if between is not None:
                time.sleep(PAUSE_S)
                between()
                time.sleep(PAUSE_S)
            per_run.append({})
            engine.call()
    finally:
        compiled.vm.set_instrument(None)  # None removes the hook
    return _layer_rows(compiled.manifest.layers, per_run[1:])


def _layer_rows(layers, per_run: list[dict[str, float]]) -> list[dict]:
    """One row per manifest layer (in order), then any other kernel the VM called (Relax ops).
    A kernel the VM never called has no time (None), not 0.0: a missing kernel must show."""
    def median(symbol: str) -> float | None:
        times = [run[symbol] for run in per_run if symbol in run]
        return statistics.median(times) if times else None

    rows = [{**layer, "median_ms": median(layer["kernel"])} for layer in layers]
    for row in rows:
        tile = (row.get("knobs") or {}).get("winograd", 1)
        if tile > 1:  # its useful MACs are direct's: it does 1/2.25 (F2) or 1/4 (F4) of them
            row["format"], row["winograd"] = f"{row['format']}-F{tile}", tile
        row["gflops"] = useful_gflops(row.get("kept_macs", 0), row["median_ms"]) if row.get("kept_macs") else None
    known = {layer["kernel"] for layer in layers}
    others = sorted({s for run in per_run for s in run} - known)
    rows += [{"result": f"({s})", "op": "relax", "format": "-", "kernel": s, "median_ms": median(s)} for s in others]
    return rows


# --- numerics and facts about the run ------------------------------------------------------------


def errors(reference: list[np.ndarray], outputs: list[np.ndarray]) -> tuple[float, float]:
    """Max |output - reference| over all outputs, and that divided by max |reference|."""
    abs_err = max(float(np.max(np.abs(o.astype(np.float64) - r), initial=0.0)) for r, o in zip(reference, outputs))
    scale = max(float(np.max(np.abs(r), initial=0.0)) for r in reference)
    return abs_err, abs_err / scale if scale else abs_err


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall s, busy CPU s of the whole machine, CPU s of this process), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]  # user..steal; guest is inside user
    except (OSError, ValueError):
        return None
    busy = sum(ticks) - ticks[3] - ticks[4]  # minus idle and iowait
    own = os.times()
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def others_cpu_share(start: tuple[float, float, float] | None) -> float | None:
    """Fraction of all cores' time that other processes used since `start`: the machines are
    shared, and a busy neighbour inflates the engines' times, not all by the same factor."""
    end = cpu_snapshot()
    if start is None or end is None or end[0] <= start[0]:
        return None
    others = (end[1] - start[1]) - (end[2] - start[2])
    return min(max(others / ((end[0] - start[0]) * (os.cpu_count() or 1)), 0.0), 1.0)


def machine_info() -> dict:
    """CPU model and core counts: what a reader needs to compare these figures with theirs."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "platform": platform.platform()}


def versions() -> dict:
    """Installed versions of everything in the measurement."""
    found = {}
    for key, dist in (("sparsec", "sparsec"), ("tvm", "apache-tvm"), ("onnxruntime", "onnxruntime"),
                      ("numpy", "numpy"), ("onnx", "onnx"), ("python", None)):
        try:
            found[key] = platform.python_version() if dist is None else metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[key] = None
    return found


# --- the report ----------------------------------------------------------------------------------


@dataclass
class BenchReport:
    """Medians, ratios and errors of one interleaved run, plus sparsec's per-layer profile."""

    model: str
    threads: int
    rounds: int
    runs_ms: dict[str, list[float]]
    compile_s: dict[str, float]
    errors: dict[str, tuple[float, float]]  # engine -> (max abs, max relative) vs `checked_against`
    layers: list[dict] = field(default_factory=list)
    tvm_threads: int | None = None
    others_cpu: float | None = None  # share of the CPUs other processes used while measuring
    round_trips_ns: list[float | None] = field(default_factory=list)  # cores' round trip (`cross_core`) before
    # each round and after the last
    skipped: dict[str, str] = field(default_factory=dict)  # engine -> why it could not run
    checked_against: str = REFERENCE
    peak_gflops: float | None = None  # measured fp32 FMA peak at `threads` threads (the roofline)
    target: str = "host"  # what sparsec compiled for (`describe_target`)
    machine: dict = field(default_factory=machine_info)
    versions: dict = field(default_factory=versions)
    date: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def median_ms(self, engine: str) -> float:
        return statistics.median(self.runs_ms[engine])

    def ratios(self) -> dict[str, float]:
        """Each other engine's median over sparsec's: > 1 means sparsec is faster."""
        if "sparsec" not in self.runs_ms:
            return {}
        base = self.median_ms("sparsec")
        return {f"{name}/sparsec": self.median_ms(name) / base for name in self.runs_ms if name != "sparsec"}

    @property
    def cross_core_ns(self) -> tuple[float | None, float | None]:
        """The cores' round trip before the first round and after the last."""
        trips = self.round_trips_ns
        return (trips[0], trips[-1]) if trips else (None, None)

    def by_placement(self) -> dict[str, dict]:
        """The rounds whose cores stayed near (or far) apart, by the round trips read before and after each
        (a round between a near and a far reading is in neither): their count, each engine's median and
        the ratios, as `ratios`. Empty without round trips."""
        trips = self.round_trips_ns
        if len(trips) != self.rounds + 1 or any(ns is None for ns in trips):
            return {}
        kept: dict[str, list[int]] = {}
        for i in range(self.rounds):
            before, after = (cross_core.is_far(ns) for ns in trips[i:i + 2])
            if before == after:
                kept.setdefault("far" if before else "near", []).append(i)
        result = {}
        for placement, rounds in sorted(kept.items(), key=lambda item: item[0] != "near"):
            medians = {name: statistics.median(runs[i] for i in rounds) for name, runs in self.runs_ms.items()}
            ratios = ({f"{name}/sparsec": ms / medians["sparsec"] for name, ms in medians.items() if name != "sparsec"}
                      if "sparsec" in medians else {})
            result[placement] = {"rounds": len(rounds), "median_ms": medians, "ratios": ratios}
        return result

    def useful_gflops(self) -> float | None:
        """sparsec's whole-model useful GFLOP/s: 2 x kept MACs of its layers over its median."""
        macs = sum(row.get("kept_macs") or 0 for row in self.layers)
        return useful_gflops(macs, self.median_ms("sparsec")) if macs and "sparsec" in self.runs_ms else None

    def to_dict(self) -> dict:
        engines = {name: {"median_ms": self.median_ms(name), "runs_ms": runs, "compile_s": self.compile_s[name],
                          "max_abs_err": self.errors.get(name, (None,))[0],
                          "max_rel_err": self.errors.get(name, (None, None))[1]}
                   for name, runs in self.runs_ms.items()}
        return {"model": self.model, "threads": self.threads, "tvm_threads": self.tvm_threads,
                "rounds": self.rounds, "others_cpu_share": self.others_cpu, "cross_core_ns": list(self.cross_core_ns),
                "round_trips_ns": list(self.round_trips_ns), "by_placement": self.by_placement(),
                "engines": engines, "ratios": self.ratios(),
                "max_abs_err": {name: err[0] for name, err in self.errors.items()},
                "max_rel_err": {name: err[1] for name, err in self.errors.items()},
                "skipped": self.skipped, "checked_against": self.checked_against,
                "peak_gflops": self.peak_gflops, "useful_gflops": self.useful_gflops(), "target": self.target,
                "machine": self.machine, "versions": self.versions, "date": self.date, "layers": self.layers}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def format_report(self) -> str:
        m = self.machine
        lines = [f"{self.model}: {self.threads} threads, median of {self.rounds} rounds on "
                 f"{m['cpu']} ({m['usable_cores']} usable cores), {self.date}",
                 *([] if self.target == "host" else [f"sparsec compiled for {self.target}, run on this machine"]),
                 f"{'engine':15} {'median ms':>10} {'x sparsec':>10} {'compile s':>10} {'max abs err':>12}"]
        for name in self.runs_ms:
            ratio = self.median_ms(name) / self.median_ms("sparsec") if "sparsec" in self.runs_ms else math.nan
            err = self.errors.get(name, (None,))[0]
            lines.append(f"{name:15} {self.median_ms(name):10.3f} {ratio:10.2f} {self.compile_s[name]:10.2f} "
                         f"{'-' if err is None else f'{err:.2e}':>12}")
        for name, reason in self.skipped.items():
            lines.append(f"{name:15} skipped: {reason}")
        if self.checked_against != REFERENCE:
            lines.append(f"errors are against sparsec's {self.checked_against} (onnxruntime did not run)")
        if self.peak_gflops:
            model = self.useful_gflops()
            share = f": sparsec {model:.1f} useful GFLOP/s = {model / self.peak_gflops:.0%} of it" if model else ""
            lines.append(f"fp32 FMA peak measured at {self.threads} threads: {self.peak_gflops:.1f} GFLOP/s{share}")
        if self.others_cpu is not None:
            lines.append(f"other processes used {self.others_cpu:.0%} of the CPUs while measuring")
        if any(ns is not None for ns in self.cross_core_ns):
            before, after = (cross_core.describe(ns) for ns in self.cross_core_ns)
            lines.append(f"cross-core round trip: {before} before measuring, {after} after")
        if placements := self.by_placement():
            lines.append("rounds by the cores' placement: " + "; ".join(
                _placement_text(name, p) for name, p in placements.items()))
        if self.tvm_threads not in (None, self.threads):
            lines.append(f"warning: TVM ran {self.tvm_threads} threads (its pool had started before "
                         "TVM_NUM_THREADS was set)")
        if self.layers:
            lines += ["", format_layers(self.layers, self.peak_gflops)]
        return "\n".join(lines)


def _placement_text(name: str, placement: dict) -> str:
    """'5 rounds near, onnxruntime/sparsec 1.29x'."""
    count = placement["rounds"]
    ratios = "".join(f", {ratio} {value:.2f}x" for ratio, value in placement["ratios"].items())
    return f"{count} {'round' if count == 1 else 'rounds'} {name}{ratios}"


def format_layers(layers: list[dict], peak_gflops: float | None = None) -> str:
    """The per-layer table: value, op, format, median ms, share of the summed layer time, and
    useful GFLOP/s with its fraction of the measured FMA peak (layers with weights only)."""
    total = sum(row["median_ms"] or 0.0 for row in layers) or 1.0
    lines = [f"{'layer':28} {'op':12} {'format':8} {'median ms':>10} {'share':>7} {'GFLOP/s':>8} {'of peak':>7}"]
    for row in layers:
        ms, gflops = row["median_ms"], row.get("gflops")
        timing = f"{'not called':>10} {'':>7}" if ms is None else f"{ms:10.3f} {ms / total:7.1%}"
        roof = f" {gflops:8.1f}" + (f" {gflops / peak_gflops:7.0%}" if peak_gflops else "") if gflops else ""
        lines.append(f"{row['result'][:28]:28} {row['op'][:12]:12} {row['format']:8} {timing}{roof}")
    lines.append(f"{'sum of layers':50} {total:10.3f}")
    if any(row.get("winograd") for row in layers):
        lines.append(WINOGRAD_NOTE)
    return "\n".join(lines)


WINOGRAD_NOTE = ("dense-F2 / dense-F4: Winograd F(2x2, 3x3) / F(4x4, 3x3); useful GFLOP/s count direct conv's "
                 "multiply-adds, of which these do 1/2.25 / 1/4, so their share of the peak can pass 100%")


def bench_model(model: onnx.ModelProto, masks: dict[str, np.ndarray] | None, *, threads: int = 2,
                rounds: int = 7, min_time_s: float = 0.2, check: bool = True,
                engines: tuple[str, ...] = ENGINES, input_shapes: dict[str, tuple[int, ...]] | None = None,
                name: str | None = None, target: Target | None = None) -> BenchReport:
    """Time `engines` on one seeded input; with `check`, raise MismatchError past RTOL. sparsec
    compiles for `target`, one this machine runs (default: this machine as it is; another vector
    shape of it, say AVX2 code on an AVX-512 CPU, shows how the kernels fare on such machines)."""
    _check_options(threads, rounds, min_time_s, engines)
    set_tvm_threads(threads)
    if target is not None:
        from sparsec.lower.target import check_runs_here

        check_runs_here(target, "bench")
    inputs = seeded_inputs(input_shapes_of(model, input_shapes))
    built, skipped = _build_engines(engines, model, masks, inputs, threads, input_shapes, target)
    errs, against = _errors(built, lambda: _reference_outputs(model, masks, inputs, input_shapes))
    if check:
        _check_errors(errs, against)
    start = cpu_snapshot()
    runs, repeats, trips = measure(built, rounds, min_time_s, cross_core.round_trip_ns if threads > 1 else None)
    sparsec = next((e for e in built if e.name == "sparsec"), None)
    time.sleep(PAUSE_S)
    # at least one round's worth of runs: a few runs of a 1 ms layer are too noisy for a median
    layers = profile_layers(sparsec, max(rounds, repeats["sparsec"])) if sparsec else []
    peak = measure_peak(threads, target) if sparsec else None
    return BenchReport(name or model.graph.name or "model", threads, rounds, runs,
                       {e.name: e.compile_s for e in built}, errs, layers,
                       tvm_threads() if any(e.compiled for e in built) else None, others_cpu_share(start),
                       trips, skipped=skipped, checked_against=against, peak_gflops=peak,
                       target=describe_target(target))


def measure_peak(threads: int, target: Target | None = None) -> float:
    """The fp32 FMA peak of `target`'s code (default: this machine as it is) at `threads` threads,
    measured now (same machine state as the run)."""
    from sparsec.lower.target import host
    from sparsec.runtime.roofline import fma_peak_gflops

    time.sleep(PAUSE_S)
    return fma_peak_gflops(target or host(threads), threads)


def describe_target(target: Target | None) -> str:
    """What sparsec's code was compiled for: "host" (this machine as it is), or the target's CPU and
    vector shape."""
    if target is None:
        return "host"
    return (f"{target.name}: {target.cpu} ({target.isa}, {target.lanes()} fp32 lanes, "
            f"{target.vector_registers} registers)")


def _build_engines(names, model, masks, inputs, threads, input_shapes,
                   target: Target | None = None) -> tuple[list[Engine], dict[str, str]]:
    """The engines ready to run, and those that cannot run this model (onnxruntime may refuse a
    model sparsec reads) with the reason, so the bench goes on without them."""
    built, skipped = [], {}
    for name in names:
        try:
            built.append(make_engine(name, model, masks, inputs, threads=threads, input_shapes=input_shapes,
                                     target=target))
        except EngineUnavailable as err:
            skipped[name] = str(err)
    return built, skipped


def _reference_outputs(model, masks, inputs, input_shapes) -> list[np.ndarray]:
    """sparsec's reference interpreter on the imported model: the check when onnxruntime cannot run."""
    from sparsec.driver import import_model
    from sparsec.reference import run_reference

    return list(run_reference(import_model(model, masks, input_shapes), inputs).values())


def _check_options(threads: int, rounds: int, min_time_s: float, engines: tuple[str, ...]) -> None:
    if threads < 1 or rounds < 1 or min_time_s < 0:
        raise UserError(f"threads={threads}, rounds={rounds}, min_time_s={min_time_s}: "
                        "use at least one thread and one round, and a time >= 0")
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise UserError(f"engines {list(engines)}: choose from {', '.join(ENGINES)}")


def _errors(engines: list[Engine], fallback: Callable[[], list[np.ndarray]]) -> tuple[dict, str]:
    """Each engine's errors against onnxruntime, or against the reference interpreter when
    onnxruntime is not among the engines; and which of the two it was."""
    reference = next((e for e in engines if e.name == REFERENCE), None)
    expected = reference.outputs() if reference else fallback()
    errs = {e.name: errors(expected, e.outputs()) for e in engines if e is not reference}
    return errs, REFERENCE if reference else "reference interpreter"


def _check_errors(errs: dict[str, tuple[float, float]], against: str) -> None:
    for name, (abs_err, rel_err) in errs.items():
        if not rel_err <= RTOL:  # also catches NaN
            raise MismatchError(f"{name} differs from {against}: max abs error {abs_err:.3g} "
                                f"({rel_err:.3g} of the output's range, tolerance {RTOL:g})")
