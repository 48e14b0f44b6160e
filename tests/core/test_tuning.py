"""Tuning without TVM: knobs in the IR text, task keys, spaces, the search, the log, applying it."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from sparsec.driver import import_model, optimize
from sparsec.errors import UserError
from sparsec.ir.knobs import Knobs
from sparsec.ir.parser import parse_module
from sparsec.ir.printer import print_module
from sparsec.models import conv_layer, tiny_cnn
from sparsec.prune import prune_model
from sparsec.target import host
from sparsec.tuning.apply import apply_records, device_key_of
from sparsec.tuning.log import Record, TuningLog, best, matching, trials
from sparsec.tuning.search import EvolutionarySearch, RandomSearch
from sparsec.tuning.space import Knob, Space
from sparsec.tuning.task import extract_tasks, kernel_call, structural_key

TARGET = host("znver4", threads=2)


@pytest.fixture(scope="module")
def tiny():
    model = tiny_cnn()
    masks = prune_model(model, keep_kernels=0.5, unstructured=0.5)
    return optimize(import_model(model, masks), target=TARGET)


# --- knobs in the IR ------------------------------------------------------------------------------


def test_knobs_print_sorted_and_round_trip(tiny):
    op = next(op for op in tiny.ops if op.name == "conv2d")
    tuned = tiny.replace(ops=tuple(dataclasses.replace(o, knobs=Knobs.of({"rows_per_step": 6, "channel_block": 0}))
                                   if o is op else o for o in tiny.ops))
    text = print_module(tuned, None, inline_weights=True)
    assert "knobs = {channel_block = 0, rows_per_step = 6}" in text
    assert parse_module(text) == tuned


def test_knobs_reject_bad_values():
    with pytest.raises(ValueError):
        Knobs((("b", 1), ("a", 2)))  # unsorted
    with pytest.raises(ValueError):
        Knobs.of({"a": 1.5})
    text = """module @m
const @w : f32[2, 3] dense = {data = f32[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}
func @main(%x : f32[1, 3]) {
  %y : f32[1, 2] = linear(%x, @w) {knobs = {chunk = 8, chunk = 4}}
  return %y
}
"""
    with pytest.raises(UserError, match="'chunk' is given twice"):
        parse_module(text)
    with pytest.raises(UserError, match="attribute knobs must be"):
        parse_module(text.replace("{chunk = 8, chunk = 4}", "[1, 2]"))


# --- tasks and keys -----------------------------------------------------------------------------


def test_one_task_per_tunable_layer_with_stable_keys(tiny):
    tasks = extract_tasks(tiny, TARGET)
    tunable = [op.result for op in tiny.ops if op.name in ("conv2d", "linear")]
    assert [t.layers[0] for t in tasks] == tunable
    assert {t.generator for t in tasks} >= {"pattern_conv", "dense_conv"}
    again = extract_tasks(optimize(import_model(tiny_cnn(), prune_model(tiny_cnn(), keep_kernels=0.5,
                                                                       unstructured=0.5)), target=TARGET), TARGET)
    assert [t.key for t in tasks] == [t.key for t in again]
    assert all(len(t.key) == 16 for t in tasks)


def test_key_ignores_weight_values_but_not_structure_or_target(tiny):
    call = next(c for op in tiny.ops if (c := kernel_call(op, tiny)) and c.generator == "pattern_conv")
    scaled = dataclasses.replace(call, values={k: v * 3 for k, v in call.values.items()})
    assert structural_key(scaled, TARGET) == structural_key(call, TARGET)
    other_index = dict(call.structure, index=call.structure["index"][::-1].copy())
    assert structural_key(dataclasses.replace(call, structure=other_index), TARGET) != structural_key(call, TARGET)
    assert structural_key(call, host("znver4", threads=1)) != structural_key(call, TARGET)


def test_equal_layers_share_a_task():
    model = conv_layer((1, 8, 8, 8), 8)
    module = optimize(import_model(model, prune_model(model, keep_kernels=0.5)), target=TARGET)
    twice = module.replace(ops=module.ops + (dataclasses.replace(module.ops[-1], result="again", input="%output"),),
                           outputs=("again",))
    # the second conv reads the first's output: same shapes, same weight, so the same task
    tasks = extract_tasks(twice, TARGET)
    assert len(tasks) == 1 and tasks[0].layers == ("output", "again")


# --- spaces and search ------------------------------------------------------------------------------

SPACE = Space("synthetic", (Knob("rows", (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16)), Knob("vecs", (1, 2, 3, 4)),
                            Knob("fpg", (1, 2, 4)), Knob("block", (0, 16, 32, 64, 128)), Knob("width", (8, 16))),
              Knobs.of(dict(rows=8, vecs=1, fpg=1, block=0, width=16)),
              lambda c: "too many accumulators" if c["rows"] * c["vecs"] * c["fpg"] > 28 else None)


def _cost(c: Knobs) -> float:
    """A pattern-conv-like landscape: best near 14 accumulators, one filter, 64-channel blocks, 16 lanes."""
    acc = c["rows"] * c["vecs"] * c["fpg"]
    block = c["block"] or 256
    t = 1.0 + 0.3 * abs(math.log2(acc / 14)) + 0.4 * math.log2(c["fpg"]) + 0.1 * abs(math.log2(block / 64))
    return t * (1.0 if c["width"] == 16 else 1.3)


def test_space_rules_and_moves():
    assert SPACE.legal(SPACE.default) and not SPACE.legal(Knobs.of(dict(rows=16, vecs=4, fpg=4, block=0, width=8)))
    assert "not one of" in SPACE.problem(Knobs.of(dict(rows=9, vecs=1, fpg=1, block=0, width=8)))
    rng = np.random.default_rng(0)
    configs = SPACE.configs()
    assert len(configs) == SPACE.size() == 760 and all(SPACE.legal(c) for c in configs)
    for _ in range(100):
        child = SPACE.mutate(SPACE.sample(rng), rng)
        assert SPACE.legal(child)


def _search(cls, seed: int, trials: int = 64) -> float:
    search, noise = cls(SPACE, seed), np.random.default_rng(seed + 100)
    while len(search.seen()) < trials:
        proposed = search.propose(min(4, trials - len(search.seen())))
        assert proposed and not set(proposed) & search.seen()
        for config in proposed:
            search.observe(config, _cost(config) * (1 + 0.03 * noise.standard_normal()))
    assert len(search.seen()) == trials
    return min(_cost(c) for c in search.times)


def test_evolutionary_beats_random_at_equal_trials():
    optimum = min(_cost(c) for c in SPACE.configs())
    evolved = [_search(EvolutionarySearch, seed) / optimum for seed in range(8)]
    random = [_search(RandomSearch, seed) / optimum for seed in range(8)]
    assert np.mean(evolved) < np.mean(random)
    assert max(evolved) < 1.05


def test_search_measures_the_default_first_and_never_a_failed_config():
    search = EvolutionarySearch(SPACE, 0)
    assert search.propose(3)[0] == SPACE.default
    bad = SPACE.sample(np.random.default_rng(1))
    search.observe(bad, None)
    for _ in range(30):
        picks = search.propose(8)
        assert bad not in picks
        for config in picks:
            search.observe(config, _cost(config))


def test_random_search_exhausts_a_small_space():
    small = Space("s", (Knob("a", (1, 2, 3)),), Knobs.of({"a": 1}))
    search = RandomSearch(small, 0)
    for config in search.propose(5):
        search.observe(config, 1.0)
    assert len(search.seen()) == 3 and search.propose(1) == []


# --- the log ------------------------------------------------------------------------------------


def _record(task="t1", knobs=None, median=1e-3, error=None, key="host") -> Record:
    return Record(task, "pattern_conv", "host", key, knobs or {"a": 1}, None if error else median,
                  None if error else 1e-5, 0 if error else 5, "127.0.0.1:1", error=error)


def test_log_appends_whole_lines_and_reads_them_back(tmp_path):
    log = TuningLog(tmp_path / "t.jsonl")
    assert log.records() == []
    records = [_record(knobs={"a": i}, median=i * 1e-3) for i in range(1, 4)] + [_record(knobs={"a": 9}, error="x")]
    for record in records:
        log.append(record)
    text = (tmp_path / "t.jsonl").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 4
    assert all(json.loads(line)["task"] == "t1" for line in text.splitlines())
    assert log.records() == records
    assert best(matching(log.records(), "t1", "host")).knobs == {"a": 1}
    log.append(dataclasses.replace(records[0], median_s=9e-3, confirm=True))  # a = 1 again: slower this time
    log.append(dataclasses.replace(records[0], median_s=8e-3, confirm=True))
    log.append(dataclasses.replace(records[2], median_s=7e-3, confirm=True))
    # once confirmed, only confirmed configurations compete, each by the median of its records
    assert best(matching(log.records(), "t1", "host")).knobs == {"a": 3}
    assert matching(log.records(), "t1", "phone") == []


def test_the_default_stays_unless_beaten_clearly_side_by_side():
    default, rival = _record(knobs={"a": 1}, median=10e-3), _record(knobs={"a": 2}, median=8e-3)
    rounds = lambda d, r: [dataclasses.replace(default, median_s=d, confirm=True, baseline=True),  # noqa: E731
                           dataclasses.replace(rival, median_s=r, confirm=True)]
    # 1% faster in the confirmation rounds: a tie on a noisy machine, the default stays
    assert best([default, rival, *rounds(10e-3, 9.9e-3), *rounds(10e-3, 9.9e-3)]).knobs == {"a": 1}
    # 5% faster side by side: the rival wins
    assert best([default, rival, *rounds(10e-3, 9.5e-3), *rounds(10e-3, 9.5e-3)]).knobs == {"a": 2}
    # a log without baseline marks (older logs) keeps the plain rule: the fastest median
    unmarked = [dataclasses.replace(r, baseline=False) for r in rounds(10e-3, 9.9e-3)]
    assert best([default, rival, *unmarked]).knobs == {"a": 2}


def test_torn_last_line_is_skipped_with_a_warning_and_cut_before_appending(tmp_path):
    path = tmp_path / "t.jsonl"
    warnings: list[str] = []
    log = TuningLog(path, warn=warnings.append)
    log.append(_record(knobs={"a": 1}))
    with open(path, "ab") as f:
        f.write(_record(knobs={"a": 2}).to_line().encode()[:40])  # a write cut short
    assert [r.knobs for r in log.records()] == [{"a": 1}]
    assert "line 2 is torn" in warnings[0]
    log.append(_record(knobs={"a": 3}))
    assert [r.knobs for r in TuningLog(path).records()] == [{"a": 1}, {"a": 3}]
    assert any("cutting off a torn last line" in w for w in warnings)


def test_a_bad_line_inside_the_log_is_a_user_error(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(_record().to_line() + "{not json\n" + _record().to_line())
    with pytest.raises(UserError, match="t.jsonl:2: not a tuning record"):
        TuningLog(path).records()


# --- applying a log -----------------------------------------------------------------------------


def test_apply_takes_the_best_record_per_task_and_names_untuned_layers(tiny):
    tasks = extract_tasks(tiny, TARGET)
    first, rest = tasks[0], tasks[1:]
    records = [_record(first.key, {"out_block": 4}, 2e-3), _record(first.key, {"out_block": 8}, 1e-3),
               _record(first.key, {"out_block": 2}, error="crashed"),
               _record(first.key, {"out_block": 6}, 0.5e-3, key="phone")]
    tuned, applied = apply_records(tiny, records, TARGET, "host")
    op = next(op for op in tuned.ops if op.result == first.layers[0])
    assert op.knobs == Knobs.of({"out_block": 8})
    assert applied.untuned == tuple(layer for t in rest for layer in t.layers)
    assert "no record for" in applied.summary("host")
    assert "knobs = {out_block = 8}" in print_module(tuned)
    with pytest.raises(UserError, match="several device keys"):
        device_key_of(records, TARGET, None)
    assert device_key_of(records[:2], TARGET, None) == "host"


# --- the tuning loop over a fake builder and runner ----------------------------------------------


class _FakeBuilder:
    workers = 2

    def submit(self, task, config):
        from concurrent.futures import Future
        from types import SimpleNamespace

        future = Future()
        future.set_result(SimpleNamespace(config=config, error=None, library="", arrays=""))
        return future


class _FakeRunner:
    """Times from the synthetic cost; `bad` configurations crash (on every device)."""

    slots, device_key = 3, "host"

    def __init__(self, bad=frozenset()):
        self.bad, self.runs = bad, []

    def submit(self, build):
        from concurrent.futures import Future

        from sparsec.runtime.rpc_runner import Measurement

        self.runs.append(build.config)
        future = Future()
        if build.config in self.bad:
            future.set_result(Measurement(device="d1", error="failed on 2 devices: crashed"))
        else:
            future.set_result(Measurement((_cost(build.config),) * 3, "d1", np.zeros(4)))
        return future


def test_tuner_logs_every_trial_blames_crashes_once_and_resumes(tmp_path):
    from sparsec.tuning.task import KernelCall, Task
    from sparsec.tuning.tuner import Tuner

    task = Task("k" * 16, KernelCall("synthetic", {}), TARGET, ("y",))
    bad = {c for c in SPACE.configs() if c["fpg"] == 4}
    log = TuningLog(tmp_path / "t.jsonl")
    runner = _FakeRunner(bad)
    first = Tuner(log, _FakeBuilder(), runner, trials=20, seed=1).tune_task(task, SPACE)
    records = trials(log.records())
    confirmations = [r for r in log.records() if r.confirm]
    assert {r.config for r in confirmations} >= {SPACE.default} and len(confirmations) == 2 * 4
    assert {r.config for r in confirmations if r.baseline} == {SPACE.default}
    assert first.trials == len(records) == 20 and first.new == 20
    assert records[0].config == SPACE.default and first.default_s == _cost(SPACE.default)
    assert len({r.config for r in records}) == 20  # no configuration twice
    assert all(not r.ok for r in records if r.config in bad) and first.failed == sum(r.config in bad for r in records)
    again = Tuner(log, _FakeBuilder(), _FakeRunner(bad), trials=20, seed=1).tune_task(task, SPACE)
    assert again.new == 0 and len(log.records()) == 28  # a finished command measures nothing
    more = Tuner(log, _FakeBuilder(), _FakeRunner(bad), trials=30, seed=1).tune_task(task, SPACE)
    assert more.new == 10 and len({r.config for r in trials(log.records())}) == 30  # and continues where it stopped
    assert len(trials(log.records())) == 30


def test_a_trial_that_fails_on_a_device_is_retried_on_another():
    from types import SimpleNamespace

    from sparsec.runtime.rpc_runner import ATTEMPTS, Measurement, RpcRunner

    runner = object.__new__(RpcRunner)
    runner._closed = False
    outcomes = iter([Measurement(device="a:1", error="a:1: connection reset"), Measurement((1e-3,), "b:2")])
    runner._attempt = lambda build: next(outcomes)
    assert runner._trial(SimpleNamespace()).device == "b:2"
    runner._attempt = lambda build: Measurement(device="a:1", error="a:1: no answer within 5 s")
    failed = runner._trial(SimpleNamespace())
    assert failed.error.startswith(f"failed on {ATTEMPTS} devices")
