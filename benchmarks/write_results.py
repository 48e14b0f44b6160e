"""Run the benchmark cases through `sparsec.runtime.bench.bench_model` and write benchmarks/RESULTS.md.

    python benchmarks/write_results.py [--cases L1,L2,...] [--rounds 7]      (`make bench`)
    python benchmarks/write_results.py --target-json '{"isa": "avx2", "l2_bytes": 524288,
        "tvm": {"mcpu": "znver3"}}' -o /tmp/avx2.md    (sparsec's code as a Zen 3 gets it, run here)

Every case is measured in this one process with the engines interleaved (see sparsec.runtime.bench), so
its ratios are from the same run. A case that fails (a kernel not ready yet) is reported as
failed and the others still run.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cases import CASE_BY_KEY, CASES, THREADS, Case, engines_for  # noqa: E402

os.environ["TVM_NUM_THREADS"] = str(THREADS)  # before anything imports tvm: it sizes the pool once

import numpy as np  # noqa: E402

from sparsec.errors import UserError  # noqa: E402
from sparsec.ir.files import write_atomically  # noqa: E402
from sparsec.runtime import cross_core  # noqa: E402
from sparsec.runtime.bench import (  # noqa: E402
    RTOL,
    WINOGRAD_NOTE,
    BenchReport,
    bench_model,
    machine_info,
    measure_peak,
    versions,
)
from sparsec.target import Target  # noqa: E402

COMPILE_LIMIT_S = 60.0  # M1 (VGG-16) must compile within this


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(c.key for c in CASES),
                   help=f"comma-separated case keys (default all: {','.join(CASE_BY_KEY)})")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds per case (default 7)")
    p.add_argument("--min-time", type=float, default=0.2, metavar="S", help="seconds per engine per round")
    p.add_argument("-o", "--output", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--target-json", metavar="JSON|FILE",
                   help="compile sparsec for this target (one this machine runs: another vector shape of it)")
    args = p.parse_args(argv)
    if args.target_json and args.output == HERE / "RESULTS.md":
        p.error("--target-json: give -o FILE (benchmarks/RESULTS.md holds this machine's own run)")
    unknown = [k for k in args.cases.split(",") if k not in CASE_BY_KEY]
    if unknown:
        p.error(f"unknown cases {unknown}; choose from {', '.join(CASE_BY_KEY)}")
    return args


def run_case(case: Case, rounds: int, min_time_s: float, target: Target | None = None) -> BenchReport | str:
    """The case's report, or the error that stopped it (one line, traceback on stderr)."""
    print(f"== {case.key}: {case.title}", file=sys.stderr, flush=True)
    try:
        report = bench_model(case.model, case.masks, threads=THREADS, rounds=rounds, min_time_s=min_time_s,
                             check=False, engines=engines_for(case), name=case.key, target=target)
    except Exception as err:  # a case that cannot run yet is a result to report, not the end of the run
        traceback.print_exc()
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    print(report.format_report(), file=sys.stderr, flush=True)
    return report


def judge_by_the_run_peak(results: dict[str, BenchReport | str], target: Target | None = None) -> None:
    """Every case's roofline against one peak: the best the run measured (each case measures it
    after its engines, and once more here). A neighbour that held a core through one case's
    measurement put L1 at 138% of a one-core peak."""
    reports = [r for r in results.values() if isinstance(r, BenchReport) and r.peak_gflops]
    if reports:
        best = measure_peak(THREADS, target)  # the best of every measurement so far, this one included
        for report in reports:
            report.peak_gflops = best


def fkw_storage(case: Case) -> dict:
    """Bytes the compiled pattern kernel embeds (its FKW kernel table and bias, as the manifest
    records them) vs the kept fp32 weights of that layer."""
    from sparsec.driver import compile as compile_model
    from sparsec.driver import import_model, optimize
    from sparsec.ir.types import Pattern

    module = optimize(import_model(case.model, case.masks))
    op = next(op for op in module.ops if op.name == "conv2d" and isinstance(module.weight(op.weight).layout, Pattern))
    weight = module.weight(op.weight)
    layer = next(row for row in compile_model(module).manifest.layers if row["result"] == op.result)
    kept = int(np.count_nonzero(weight.data))
    return {"weight": weight.name, "layout": weight.layout.kind, "fkw_bytes": layer["constant_bytes"],
            "kept_bytes": kept * 4, "dense_bytes": weight.data.size * 4}


# --- markdown ------------------------------------------------------------------------------------


def speedup(report: BenchReport) -> float:
    return report.ratios()["onnxruntime/sparsec"]


def numerics_ok(report: BenchReport) -> bool:
    """Every sparsec engine within RTOL of onnxruntime: a fast wrong answer meets no target."""
    return all(rel <= RTOL for _, rel in report.errors.values())


def verdict(case: Case, report: BenchReport) -> str:
    if not numerics_ok(report):
        return "no (wrong output)"
    return "yes" if case.meets(speedup(report)) else "no"


def summary_table(results: dict[str, BenchReport | str]) -> list[str]:
    lines = ["| case | sparsec ms | onnxruntime ms | sparsec-dense ms | onnxruntime / sparsec | target | met "
             "| useful GFLOP/s | of FMA peak | others' CPU | cores' round trip | by placement |",
             "|---|---:|---:|---:|---:|---|---|---:|---:|---:|---|---|"]
    for key, report in results.items():
        case = CASE_BY_KEY[key]
        if isinstance(report, str):
            lines.append(f"| {key} | failed | | | | {case.target} | no | | | | | |")
            continue
        ms = lambda e, r=report: f"{r.median_ms(e):.2f}" if e in r.runs_ms else "-"  # noqa: E731
        met = verdict(case, report)
        useful, peak = report.useful_gflops(), report.peak_gflops
        roof = f"{useful:.1f} | {useful / peak:.0%}" if useful and peak else "- | -"
        lines.append(f"| {key} | {ms('sparsec')} | {ms('onnxruntime')} | {ms('sparsec-dense')} | "
                     f"{speedup(report):.2f}x | {case.target} | {met} | {roof} | {_pct(report.others_cpu)} | "
                     f"{_round_trips(report.cross_core_ns)} | {_by_placement(report)} |")
    return lines


def case_section(case: Case, report: BenchReport | str) -> list[str]:
    lines = [f"### {case.key}: {case.title}", ""]
    if isinstance(report, str):
        return lines + [f"Failed: `{report}`", ""]
    lines += ["| engine | median ms | onnxruntime / engine | compile s | max abs err | max rel err |",
              "|---|---:|---:|---:|---:|---:|"]
    for name in report.runs_ms:
        abs_err, rel_err = report.errors.get(name, (None, None))
        err = lambda v: "reference" if v is None else f"{v:.2e}"  # noqa: E731
        lines.append(f"| {name} | {report.median_ms(name):.3f} | "
                     f"{report.median_ms('onnxruntime') / report.median_ms(name):.2f}x | "
                     f"{report.compile_s[name]:.1f} | {err(abs_err)} | {err(rel_err)} |")
    met = {"yes": "met", "no": "NOT met"}.get(verdict(case, report), f"NOT met: max rel err > {RTOL:g}")
    dense_path = report.ratios().get("sparsec-dense/sparsec")
    lines += ["", f"Target: onnxruntime / sparsec {case.target}; measured {speedup(report):.2f}x ({met})."
              + (f" sparsec-dense / sparsec: {dense_path:.2f}x." if dense_path else ""), ""]
    return lines


def layer_table(report: BenchReport) -> list[str]:
    total = sum(row["median_ms"] or 0.0 for row in report.layers) or 1.0
    peak = report.peak_gflops
    lines = [f"| layer | op | format | kernel | median ms | share | useful GFLOP/s | of peak ({peak or 0:.0f}) |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for row in report.layers:
        ms, gflops = row["median_ms"], row.get("gflops")
        timing = "not called | " if ms is None else f"{ms:.3f} | {ms / total:.1%}"
        roof = f"{gflops:.1f} | {gflops / peak:.0%}" if gflops and peak else " | "
        lines.append(f"| {row['result']} | {row['op']} | {row['format']} | `{row['kernel']}` | {timing} | {roof} |")
    lines.append(f"| **sum** | | | | {total:.3f} | | | |")
    lines.append(f"| **whole model (median)** | | | | {report.median_ms('sparsec'):.3f} | | | |")
    if any(row.get("winograd") for row in report.layers):
        lines += ["", WINOGRAD_NOTE + "."]
    return lines


def extras(results: dict[str, BenchReport | str], storage: dict | str | None) -> list[str]:
    lines = []
    m1 = results.get("M1")
    if isinstance(m1, BenchReport):
        seconds = m1.compile_s["sparsec"]
        lines += ["## Compile time", "",
                  f"M1 (VGG-16, import + passes + TVM build): {seconds:.1f} s "
                  f"(limit {COMPILE_LIMIT_S:.0f} s: {'met' if seconds < COMPILE_LIMIT_S else 'NOT met'}).", ""]
    if isinstance(storage, dict):
        lines += ["## FKW storage (L1)", "",
                  f"Weight `{storage['weight']}` ({storage['layout']} after the passes): "
                  f"the compiled kernel embeds {storage['fkw_bytes']:,} bytes (FKW kernel table + bias) "
                  f"vs kept fp32 weights {storage['kept_bytes']:,} bytes "
                  f"({storage['fkw_bytes'] / storage['kept_bytes']:.3f}x; dense {storage['dense_bytes']:,} bytes).", ""]
    elif isinstance(storage, str):
        lines += ["## FKW storage (L1)", "", f"Failed: `{storage}`", ""]
    for key in ("M1", "M2", "dense", "MB2"):
        report = results.get(key)
        if isinstance(report, BenchReport) and report.layers:
            lines += [f"## Per-layer times, {key} (sparsec, VM instrument hook)", "", *layer_table(report), ""]
            if key in ("M1", "M2", "MB2"):
                lines += peer_section(CASE_BY_KEY[key], report.peak_gflops)
    return lines


PEER_RUNS = 20


def peer_section(case: Case, peak: float | None) -> list[str]:
    """The case's layers by sort against onnxruntime's own profiler, the two interleaved (sparsec
    compiled again; `benchmarks/compare_layers.py CASE` prints them layer by layer), with their share
    of the run's FMA `peak` and what the case's target asks in those terms."""
    from sparsec.check import seeded_inputs
    from sparsec.runtime.bench import input_shapes_of
    from sparsec.runtime.peer_profile import compare_layers, group_table, target_lines

    title = f"### {case.key} by sort of layer, against onnxruntime's profiler"
    try:
        inputs = seeded_inputs(input_shapes_of(case.model))
        pairs = compare_layers(case.model, case.masks, inputs, threads=THREADS, runs=PEER_RUNS)
    except Exception as err:  # reported in the file like a failed case
        return [title, "", f"Failed: `{type(err).__name__}: {err}`", ""]
    target = ["", *target_lines(pairs, case.min_speedup, peak)] if peak else []
    return [title, "", f"Each engine's per-layer medians over {PEER_RUNS} profiled runs, the engines' runs "
            "interleaved; onnxruntime's nodes matched with sparsec's layers by kind in execution order "
            f"(`python benchmarks/compare_layers.py {case.key}` lists every layer). Profilers add to "
            "every node: compare the ratios.", "", *group_table(pairs, peak), *target, ""]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _round_trips(ns: tuple[float | None, float | None]) -> str:
    """Before / after the case's rounds, e.g. '66 / 340 ns (far)'."""
    if all(v is None for v in ns):
        return "-"
    far = " (far)" if any(cross_core.is_far(v) for v in ns) else ""
    return " / ".join("-" if v is None else f"{v:.0f}" for v in ns) + f" ns{far}"


def _by_placement(report: BenchReport) -> str:
    """onnxruntime / sparsec over the rounds in each placement, e.g. 'near 1.29x (5), far 1.15x (2)'."""
    parts = [f"{name} {p['ratios']['onnxruntime/sparsec']:.2f}x ({p['rounds']})"
             for name, p in report.by_placement().items() if "onnxruntime/sparsec" in p["ratios"]]
    return ", ".join(parts) or "-"


def _target_line(target: Target | None) -> str:
    """The target the cases compiled for: its CPU and vector shape (`sparsec targets`)."""
    from sparsec.lower.target import host

    t = target or host(THREADS)
    name = "host" if target is None else f"{t.name} (compiled for, run on this machine's {host().cpu})"
    return (f"{name} = {t.cpu} ({t.isa}: {t.lanes()} fp32 lanes, {t.vector_registers} vector registers, "
            f"{t.l2_bytes // 1024} KiB L2 planned for); cost model pattern {t.throughputs.pattern:g}, "
            f"csr {t.throughputs.csr:g} ({t.throughputs.source})")


ARM64_BEGIN, ARM64_END = "<!-- arm64: written by benchmarks/arm64.py -->", "<!-- /arm64 -->"


def render(results: dict[str, BenchReport | str], storage, command: str, target: Target | None = None) -> str:
    machine, found = machine_info(), versions()
    first = next((r for r in results.values() if isinstance(r, BenchReport)), None)
    date = first.date if first else "-"
    lines = ["# sparsec benchmark results", "",
             f"Written by `{command}` on {date}. Batch 1, fp32, {THREADS} threads per engine; medians of "
             "interleaved rounds in one process (see `runtime/bench.py`).", "",
             f"- Machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
             f"{machine['platform']}",
             f"- Target: {_target_line(target)}",
             "- Versions: " + ", ".join(f"{k} {v}" for k, v in found.items()),
             "- \"others' CPU\": the share of all cores that other processes used while a case was measured. "
             "The machine is shared: a busy neighbour inflates the engines' times unevenly, "
             "so trust ratios measured at a low share.",
             "- \"cores' round trip\": a cache line's trip between the two cores and back, before and after the "
             "case's rounds (`runtime/cross_core.py`). The VM's host moves its vCPUs between cores close together "
             f"(~55-90 ns) and far apart (over {cross_core.FAR_NS:.0f} ns; on znver4 320-380 ns), and far apart "
             "2-thread runs slow down (M2: sparsec 23%, onnxruntime 10%): compare cases measured in one placement. "
             "\"by placement\": onnxruntime / sparsec over the rounds whose cores stayed near (or far) apart, read "
             "before and after each round (their count in brackets); the headline ratio takes every round.",
             "",
             "## Summary", "", *summary_table(results), "", "## Cases", ""]
    for key, report in results.items():
        lines += case_section(CASE_BY_KEY[key], report)
    lines += extras(results, storage)
    return "\n".join(lines).rstrip() + "\n"


def kept_sections(path: Path) -> str:
    """Sections other scripts (or people) own in RESULTS.md, each between `<!-- NAME ... -->` and
    `<!-- /NAME -->` (the tuning figures of bench_tuning.py, the ARM64 figures of arm64.py, the GPU
    figures of gpu_static.py, what was tried and lost), carried over when the file is written again."""
    text = path.read_text() if path.exists() else ""
    kept = [m.group(0) for m in re.finditer(r"<!-- (\w+)\b[^>]*-->.*?<!-- /\1 -->", text, flags=re.S)]
    return "".join(f"\n{section}\n" for section in kept)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = args.cases.split(",")
    from sparsec.lower.target import resolve_runnable

    try:
        target = resolve_runnable(args.target_json, "write_results.py") if args.target_json else None
    except UserError as err:
        print(f"write_results.py: error: {err}", file=sys.stderr)
        return 2
    results = {key: run_case(CASE_BY_KEY[key], args.rounds, args.min_time, target) for key in keys}
    judge_by_the_run_peak(results, target)
    storage = None
    if "L1" in keys:
        try:
            storage = fkw_storage(CASE_BY_KEY["L1"])
        except Exception as err:  # reported in the file like a failed case
            storage = f"{type(err).__name__}: {err}"
    command = " ".join(["python benchmarks/write_results.py", *(argv if argv is not None else sys.argv[1:])])
    text = render(results, storage, command, target) + kept_sections(args.output)
    write_atomically(args.output, lambda path: path.write_text(text))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
