"""pytest-benchmark suite: each case's engines, numerics checked against onnxruntime.

Run with `pytest benchmarks` (not part of `make test`). Per case, onnxruntime runs first and
sparsec last, so sparsec's test can put its speed-ups in `extra_info`. The authoritative,
interleaved figures are `benchmarks/write_results.py`'s (`make bench`).
"""

from __future__ import annotations

import time

import pytest
from cases import CASES, THREADS, Case, engines_for

from sparsec.runtime.bench import PAUSE_S, RTOL, errors, warm_up

ROUNDS = 7
MIN_TIME_S = 0.2  # per round

PARAMS = [pytest.param(case, engine, id=f"{case.key}-{engine}")
          for case in CASES for engine in engines_for(case, dense_path=case.is_layer)]


@pytest.mark.parametrize("case,engine", PARAMS)
def test_kernel(benchmark, bench_cache, assert_targets, case: Case, engine: str):
    runner = bench_cache.engine(case, engine)
    benchmark.group = f"{case.key}: {case.title}"
    benchmark.extra_info.update(case=case.key, engine=engine, threads=THREADS, compile_s=runner.compile_s)
    if engine != "onnxruntime":
        _check_numerics(benchmark, bench_cache.reference(case), runner.outputs())
    time.sleep(PAUSE_S)  # the previous test's thread pool may still spin
    repeats = warm_up(runner, MIN_TIME_S)
    benchmark.pedantic(runner.call, rounds=ROUNDS, iterations=repeats, warmup_rounds=0)
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing measured
        return
    bench_cache.medians[case.key, engine] = benchmark.stats.stats.median
    if engine == "sparsec":
        _record_speedups(benchmark, bench_cache.medians, case, assert_targets)


def _check_numerics(benchmark, reference, outputs) -> None:
    abs_err, rel_err = errors(reference, outputs)
    benchmark.extra_info.update(max_abs_err=abs_err, max_rel_err=rel_err)
    assert rel_err <= RTOL, f"max abs error {abs_err:.3g} vs onnxruntime ({rel_err:.3g} of the output range)"


def _record_speedups(benchmark, medians, case: Case, assert_targets: bool) -> None:
    """Other engines' medians over sparsec's, from the tests that ran before this one."""
    mine = medians[case.key, "sparsec"]
    for other in ("onnxruntime", "sparsec-dense"):
        if (case.key, other) in medians:
            benchmark.extra_info[f"{other}/sparsec"] = medians[case.key, other] / mine
    speedup = benchmark.extra_info.get("onnxruntime/sparsec")
    if speedup is None:
        return
    benchmark.extra_info.update(target=case.target, meets_target=case.meets(speedup))
    if assert_targets:
        assert case.meets(speedup), f"{case.key}: {speedup:.2f}x vs onnxruntime, target {case.target}"
