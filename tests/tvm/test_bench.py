"""sparsec.runtime.bench and `sparsec bench` on the tiny model: the report's keys, sane medians, small errors."""

from __future__ import annotations

import dataclasses
import json
import platform

import numpy as np
import pytest

from sparsec.cli import main
from sparsec.models import tiny_cnn
from sparsec.prune import prune_model, save_masks
from sparsec.runtime import cross_core
from sparsec.runtime.bench import ENGINES, BenchReport, MismatchError, bench_model, densified, errors

pytestmark = pytest.mark.tvm

FAST = dict(threads=2, rounds=2, min_time_s=0.01)


@pytest.fixture(scope="module")
def tiny():
    model = tiny_cnn()
    return model, prune_model(model, patterns=8, keep_kernels=0.5, unstructured=0.5)


@pytest.fixture(scope="module")
def report(tiny):
    model, masks = tiny
    return bench_model(model, masks, **FAST)


def test_report_has_every_engine_with_positive_medians(report):
    data = json.loads(report.to_json())
    assert set(data["engines"]) == set(ENGINES)
    for engine in ENGINES:
        assert data["engines"][engine]["median_ms"] > 0
        assert len(data["engines"][engine]["runs_ms"]) == FAST["rounds"]
    assert set(data["ratios"]) == {"onnxruntime/sparsec", "sparsec-dense/sparsec"}
    assert data["threads"] == 2
    assert {"cpu", "cores"} <= set(data["machine"])
    assert {"tvm", "onnxruntime", "numpy", "sparsec"} <= set(data["versions"])
    assert data["date"]
    assert data["others_cpu_share"] is None or 0 <= data["others_cpu_share"] <= 1
    before, after = data["cross_core_ns"]  # 2 threads: the cores' round trip around the rounds
    assert 5 < before < 100_000 and 5 < after < 100_000
    assert f"cross-core round trip: {cross_core.describe(before)} before measuring" in report.format_report()
    trips = data["round_trips_ns"]  # before each round and after the last, the first and last as above
    assert len(trips) == FAST["rounds"] + 1 and (trips[0], trips[-1]) == (before, after)
    assert sum(p["rounds"] for p in data["by_placement"].values()) <= FAST["rounds"]


def test_rounds_split_by_the_cores_placement():
    """A round counts where the round trips before and after it agree; one between placements is left out."""
    runs = {"onnxruntime": [10.0, 30.0, 12.0, 50.0], "sparsec": [5.0, 25.0, 8.0, 40.0]}
    report = BenchReport("m", 2, 4, runs, {"onnxruntime": 0.0, "sparsec": 1.0}, {},
                         round_trips_ns=[60.0, 70.0, 350.0, 340.0, 80.0])
    near, far = report.by_placement()["near"], report.by_placement()["far"]
    assert list(report.by_placement()) == ["near", "far"]
    assert near == {"rounds": 1, "median_ms": {"onnxruntime": 10.0, "sparsec": 5.0},
                    "ratios": {"onnxruntime/sparsec": 2.0}}
    assert far == {"rounds": 1, "median_ms": {"onnxruntime": 12.0, "sparsec": 8.0},
                   "ratios": {"onnxruntime/sparsec": 1.5}}
    assert "rounds by the cores' placement: 1 round near, onnxruntime/sparsec 2.00x; 1 round far, " \
           "onnxruntime/sparsec 1.50x" in report.format_report()
    three_near = dataclasses.replace(report, round_trips_ns=[60.0, 70.0, 65.0, 75.0, 500.0])
    assert three_near.by_placement()["near"]["median_ms"] == {"onnxruntime": 12.0, "sparsec": 8.0}
    assert "far" not in three_near.by_placement()
    assert dataclasses.replace(report, round_trips_ns=[60.0, None, 65.0, 75.0, 80.0]).by_placement() == {}
    assert BenchReport("m", 2, 4, runs, {}, {}).by_placement() == {}  # one thread: no probe


def test_sparsec_and_its_dense_path_match_onnxruntime(report):
    data = report.to_dict()
    assert set(data["max_abs_err"]) == {"sparsec", "sparsec-dense"}
    assert all(err < 1e-4 for err in data["max_rel_err"].values())


def test_layer_table_covers_the_manifest(report):
    rows = [row for row in report.layers if row["op"] != "relax"]
    assert [row["op"] for row in rows if row["op"] == "conv2d"]  # the convs are there, by their IR op
    assert all(row["median_ms"] > 0 and row["format"] for row in rows)  # every kernel ran and was timed
    convs = [row for row in rows if row["op"] == "conv2d"]
    assert all(row["kept_macs"] > 0 and row["gflops"] > 0 for row in convs)
    assert report.peak_gflops > 0 and 0 < report.useful_gflops()
    assert "of peak" in report.format_report()
    assert "sum of layers" in report.format_report()


def test_dense_path_drops_every_sparse_layout(tiny):
    from sparsec.driver import import_model

    module = densified(import_model(*tiny))
    assert {w.layout.kind for w in module.weights} == {"dense"}
    assert all(not w.parts for w in module.weights)


def test_errors_are_relative_to_the_output_range():
    reference = [np.array([2.0, -4.0], np.float32)]
    assert errors(reference, [np.array([2.0, -3.0], np.float32)]) == (1.0, 0.25)


def test_a_kernel_the_vm_never_called_has_no_time():
    layers = [{"result": "a", "op": "conv2d", "format": "dense", "kernel": "k_a"},
              {"result": "b", "op": "conv2d", "format": "dense", "kernel": "k_b"}]
    from sparsec.runtime.bench import _layer_rows, format_layers

    rows = _layer_rows(layers, [{"k_a": 2.0}, {"k_a": 4.0}])
    assert [row["median_ms"] for row in rows] == [3.0, None]
    assert "not called" in format_layers(rows).splitlines()[2]


def test_winograd_layers_are_named_in_the_layer_table():
    from sparsec.runtime.bench import WINOGRAD_NOTE, _layer_rows, format_layers

    layers = [{"result": "a", "op": "conv2d", "format": "dense", "kernel": "k_a", "knobs": {"winograd": 4}},
              {"result": "b", "op": "conv2d", "format": "dense", "kernel": "k_b", "knobs": {"winograd": 1}}]
    rows = _layer_rows(layers, [{"k_a": 1.0, "k_b": 1.0}])
    assert [row["format"] for row in rows] == ["dense-F4", "dense"]
    assert format_layers(rows).splitlines()[-1] == WINOGRAD_NOTE
    assert WINOGRAD_NOTE not in format_layers(rows[1:])


def test_model_stamped_with_a_newer_ir_version_is_benched(tiny):
    model, masks = tiny
    newer = type(model)()
    newer.CopyFrom(model)
    newer.ir_version = 14  # what onnx 1.23's make_model stamps; onnxruntime 1.31 reads up to 13
    report = bench_model(newer, masks, engines=("sparsec", "onnxruntime"), **FAST)
    assert not report.skipped and report.checked_against == "onnxruntime"
    assert report.errors["sparsec"][1] < 1e-4


def test_engine_onnxruntime_cannot_load_is_skipped_with_its_reason(tiny, monkeypatch):
    import sparsec.runtime.bench as bench
    from sparsec.check import EngineUnavailable

    def refuse(*args, **kwargs):
        raise EngineUnavailable("onnxruntime cannot load the model: some reason")

    monkeypatch.setattr(bench, "onnxruntime_session", refuse)
    report = bench_model(*tiny, engines=("sparsec", "onnxruntime"), **FAST)
    assert report.skipped == {"onnxruntime": "onnxruntime cannot load the model: some reason"}
    assert report.checked_against == "reference interpreter" and report.errors["sparsec"][1] < 1e-4
    assert "onnxruntime     skipped: onnxruntime cannot load the model: some reason" in report.format_report()


def test_check_raises_on_a_mismatch(tiny, monkeypatch):
    import sparsec.runtime.bench as bench

    monkeypatch.setattr(bench, "RTOL", -1.0)  # nothing passes
    with pytest.raises(MismatchError, match="differs from onnxruntime"):
        bench_model(*tiny, engines=("onnxruntime", "sparsec"), **FAST)


def test_cli_bench_writes_json(tmp_path, tiny, capsys, monkeypatch):
    monkeypatch.setenv("TVM_NUM_THREADS", "2")  # the command sets it; restore it afterwards
    model, masks = tiny
    (tmp_path / "tiny.onnx").write_bytes(model.SerializeToString())
    save_masks(masks, tmp_path / "masks.npz")
    code = main(["bench", str(tmp_path / "tiny.onnx"), "--masks", str(tmp_path / "masks.npz"), "--threads", "2",
                 "--rounds", "2", "--min-time", "0.01", "--input-shape", "input=1x3x32x32",
                 "--json", str(tmp_path / "out.json")])
    assert code == 0
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["model"] == "tiny" and data["engines"]["sparsec"]["median_ms"] > 0
    assert "onnxruntime" in capsys.readouterr().out


def test_cli_bench_missing_model_exits_2(tmp_path, capsys):
    code = main(["bench", str(tmp_path / "nope.onnx"), "--json", str(tmp_path / "out.json")])
    assert code == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_compare_layers_pairs_every_layer_with_weights_or_a_pool(tiny):
    from sparsec.check import seeded_inputs
    from sparsec.runtime.bench import input_shapes_of
    from sparsec.runtime.peer_profile import compare_layers

    model, masks = tiny
    pairs = compare_layers(model, masks, seeded_inputs(input_shapes_of(model)), threads=2, runs=3)
    matched = [(p.layer, p.peer.kind) for p in pairs if p.peer is not None]
    # 4 convs, the max pool (fused into its conv or not), the global pool and the classifier
    assert [kind for _, kind in matched] == ["conv", "pool", "conv", "conv", "conv", "pool", "fc"]
    for pair in pairs:
        if pair.peer is not None:
            assert pair.peer.ms > 0
            assert pair.sparsec_ms is None if pair.format.startswith("fused into") else pair.sparsec_ms > 0


def test_profile_layers_runs_the_interleaved_engine_before_each_of_its_runs(tiny, monkeypatch):
    from sparsec.runtime import bench
    from sparsec.runtime.bench import make_engine, profile_layers

    monkeypatch.setattr(bench, "PAUSE_S", 0.0)
    model, masks = tiny
    engine = make_engine("sparsec", model, masks, bench.seeded_inputs(bench.input_shapes_of(model)), threads=2)
    order = []
    calls = engine.call
    engine = dataclasses.replace(engine, call=lambda: (order.append("sparsec"), calls()))
    rows = profile_layers(engine, 3, between=lambda: order.append("peer"))
    assert order == ["peer", "sparsec"] * 4  # the warm-up run too
    assert all(row["median_ms"] > 0 for row in rows if row["op"] == "conv2d")


def _script(name: str):
    """A script of benchmarks/ as a module (they are run by path, not installed)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv", [
    ["pattern", "16x8", "--kernel-groups", "2", "{}", '{"filters_per_group": 2, "rows_per_step": 4}'],
    ["pointwise", "16x8", "--filters", "24", "--residual", "{}", '{"out_block": 4, "vectors": 1}'],
])
def test_ab_knobs_times_every_variant_against_the_first(argv, capsys):
    import re

    assert _script("ab_knobs").main([*argv, "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^ +[\d.]+ ms +[\d.]+ GFLOP/s +\d+% of peak +x([\d.]+) +(\{.*\})$", out, flags=re.M)
    assert [variant for _, variant in rows] == argv[-2:]
    assert rows[0][0] == "1.000"
    assert "FMA peak" in out


def test_ab_knobs_names_a_bad_knob(capsys):
    assert _script("ab_knobs").main(["pattern", "16x8", "{}", '{"rows_per_stepp": 4}']) == 2
    assert "error: knobs {\"rows_per_stepp\": 4}: " in capsys.readouterr().err


def test_arm64_section_is_rewritten_whole_with_its_introduction(tmp_path):
    """benchmarks/arm64.py puts its tables in RESULTS.md's ARM64 section: the section replaced whole,
    introduction included (a rerun had dropped it), the rest of the file as it was; appended where absent."""
    arm64 = _script("arm64")
    begin, end = "<!-- arm64: written by benchmarks/arm64.py -->", "<!-- /arm64 -->"
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# top\n\n{begin}\n## old\n\nold tables\n{end}\n\n## after\n")
    arm64.put_section(results, "| new | table |\n")
    text = results.read_text()
    assert text.startswith("# top\n\n" + begin) and text.endswith(f"| new | table |\n{end}\n\n## after\n")
    assert "old tables" not in text and "## ARM64 on the emulated device" in text
    assert "No phone was used" in text and "direct dense schedule" in text
    bare = tmp_path / "bare.md"
    bare.write_text("# only\n")
    arm64.put_section(bare, "| t |\n")
    assert bare.read_text().startswith(f"# only\n\n{begin}\n## ARM64") and bare.read_text().endswith(f"| t |\n{end}\n")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="times AVX2 code: an x86 machine's other vector shape")
def test_format_choice_judges_another_vector_shape_of_this_machine(tmp_path, capsys, monkeypatch):
    """`bench_format_choice.py --target-json`: both kernels built for that target and timed here, the
    cost model's pick with its throughputs; a CPU this one cannot run refused by name, exit 2."""
    monkeypatch.setenv("SPARSEC_CALIBRATION_DIR", str(tmp_path))  # the shipped throughputs, whatever this CPU holds
    monkeypatch.setenv("TVM_NUM_THREADS", "2")  # the script sets it; restore it afterwards
    choice = _script("bench_format_choice")
    avx2 = '{"isa": "avx2", "tvm": {"mcpu": "haswell"}}'
    assert choice.main(["--layers", "16x8", "--keep", "0.5", "--rounds", "1", "--target-json", avx2]) == 0
    out = capsys.readouterr().out
    assert "(haswell, avx2)" in out and "pattern throughput 0.68 (shipped defaults (measured on znver3" in out
    (row,) = [line for line in out.splitlines() if line.startswith("| 16x8x8 | 0.5 |")]
    assert row.split(" | ")[5] in ("pattern", "dense")  # the cost model's pick
    assert choice.main(["--layers", "16x8", "--target-json", '{"tvm": {"mcpu": "sapphirerapids"}}']) == 2
    assert "bench_format_choice.py: error: bench_format_choice.py runs the compiled code on this machine" in \
        capsys.readouterr().err
