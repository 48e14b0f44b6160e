"""The Target value without TVM: named targets, --target-json, the calibration file, the errors,
and the cost model reading its throughputs."""

from __future__ import annotations

import json

import pytest

from sparsec import target as targets
from sparsec.driver import for_target
from sparsec.errors import NotSupportedError, UserError
from sparsec.passes import default_pipeline
from sparsec.passes.registry import AnalyzeSparsity
from sparsec.target import ARM_CPUS, Target, Throughputs, resolve

HOST_CPU = "znver5"  # what LLVM would report; these tests never ask it


def _resolve(*args, **kwargs) -> Target:
    return resolve(*args, **kwargs, host_cpu=HOST_CPU)


@pytest.fixture(autouse=True)
def _no_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEC_CALIBRATION_DIR", str(tmp_path / "calibration"))


def test_host_is_this_machine():
    t = _resolve("host")
    assert t.name == "host" and t.kind == "cpu" and t.cpu == HOST_CPU and t.device == "local"
    assert t.tvm_dict()["mcpu"] == HOST_CPU and t.tvm_dict()["num-cores"] == t.threads
    assert t.lanes() == t.vector_bits // 32 and t.lanes("int8") == t.vector_bits // 8
    assert (t.vector_bits, t.vector_registers) == targets.ISAS[targets.host_isa()]


def test_arm64_defaults_and_cpus():
    t = _resolve("arm64")
    assert (t.arch, t.cpu, t.isa, t.lanes(), t.vector_registers) == ("aarch64", "cortex-a53", "neon", 4, 32)
    assert t.tvm_dict() == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a53",
                            "mattr": ["+neon"], "num-cores": 4}
    assert t.cc == "aarch64-linux-gnu-g++" and t.qemu_cpu == "cortex-a53"
    a76 = _resolve("arm64", "cortex-a76")
    assert a76.l1d_bytes == 64 * 1024 and a76.qemu_cpu == "cortex-a76"
    assert "emulated (cortex-a76 under qemu-aarch64)" in a76.device or a76.device == "local"


def test_android_compiler_targets_android(monkeypatch):
    monkeypatch.setenv("TVM_NDK_CC", "/ndk/toolchains/llvm/prebuilt/linux-x86_64/bin/aarch64-linux-android28-clang++")
    t = _resolve("arm64")
    assert t.tvm_dict()["mtriple"] == "aarch64-linux-android" and "android" in t.cc
    assert t.device.startswith("none") or t.device == "local"  # no emulated Android here


def test_target_json_sparsec_fields_and_raw_tvm():
    avx2 = _resolve(spec='{"name": "avx2", "isa": "avx2", "tvm": {"mcpu": "haswell"}}')
    assert (avx2.name, avx2.cpu, avx2.lanes(), avx2.vector_registers) == ("avx2", "haswell", 8, 16)
    assert avx2.throughputs == targets.SHIPPED_THROUGHPUTS["avx2"]
    raw = _resolve(spec='{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "num-cores": 8}')
    assert (raw.arch, raw.cpu, raw.isa, raw.threads, raw.l1d_bytes) == ("aarch64", "cortex-a76", "neon", 8, 65536)
    tuned = _resolve(spec='{"isa": "avx2", "throughputs": {"pattern": 0.9, "csr": 0.4}, "threads": 3}')
    assert tuned.throughputs == Throughputs(0.9, 0.4, "--target-json") and tuned.tvm_dict()["num-cores"] == 3


def test_target_json_from_a_file(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"name": "mine", "isa": "sse"}))
    assert _resolve(spec=str(path)).lanes() == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="cuda"),
     "unknown target 'cuda'; known targets: host, arm64, mali, opencl (or --target-json); see `sparsec targets`"),
    (dict(name="arm64", cpu="cortex-z9"), f"unknown --cpu 'cortex-z9' for arm64; known: {', '.join(ARM_CPUS)}"),
    (dict(name="host", cpu="cortex-a53"), "--cpu applies to --target arm64; the host target is this machine's CPU"),
    (dict(spec="{not json"), "--target-json: not valid JSON"),
    (dict(spec="nothing.json"), "--target-json nothing.json: neither a JSON object nor a readable file"),
    (dict(spec='{"lanes": 8}'), "--target-json: unknown field 'lanes'"),
    (dict(spec='{"isa": "avx9"}'), "target json: unknown isa 'avx9'; known: sse, avx2, avx512, neon"),
    (dict(spec='{"vector_registers": 3}'), "target json: vector_bits must be 128, 256 or 512 and vector_registers"),
    (dict(spec='{"throughputs": {"pattern": -1, "csr": 1}}'), "throughput pattern=-1 must be a number in (0, 4]"),
])
def test_bad_targets(kwargs, message):
    with pytest.raises(UserError) as info:
        _resolve(**kwargs)
    assert str(info.value).startswith(message)


def test_gpu_targets_are_opencl_with_aarch64_host_code():
    t = _resolve(spec='{"kind": "opencl", "device": "mali"}')
    assert (t.kind, t.name, t.device_kind, t.lanes()) == ("gpu", "json", "opencl", 4)
    assert t.tvm_dict()["device"] == "mali"
    assert t.tvm_dict()["host"]["mtriple"] == "aarch64-linux-gnu" and t.work_group_size == 256
    assert _resolve("opencl").tvm_dict().get("device") is None
    with pytest.raises(NotSupportedError, match="OpenCL only"):
        _resolve(spec='{"kind": "gpu", "tvm": {"kind": "cuda"}}')


def test_missing_cross_compiler_names_the_package(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    with pytest.raises(UserError) as info:
        targets.require_compiler(_resolve("arm64"))
    assert "install the Debian package g++-aarch64-linux-gnu" in str(info.value)
    targets.require_compiler(_resolve("host"))  # the host needs no cross compiler


def test_round_trip_through_a_manifest_dict():
    for t in (_resolve("host"), _resolve("arm64", "cortex-x1")):
        data = json.loads(json.dumps(t.to_dict()))
        assert Target.from_dict(data) == t and data["lanes"]["float32"] == t.lanes()


def test_calibration_file_sets_the_throughputs(tmp_path):
    host = _resolve("host")
    assert host.throughputs == targets.SHIPPED_THROUGHPUTS[host.isa]
    path = targets.write_calibration(host, {"pattern": 0.8, "csr": 0.5, "winograd": 0.6}, {"layers": {}})
    assert path == tmp_path / "calibration" / f"{host.arch}-{HOST_CPU}-{host.isa}.json"
    again = _resolve("host")
    assert (again.throughputs.pattern, again.throughputs.csr, again.throughputs.winograd) == (0.8, 0.5, 0.6)
    assert again.throughputs.source.startswith("calibrated")
    record = json.loads(path.read_text())
    del record["throughputs"]["winograd"]  # a file from before the Winograd throughput
    path.write_text(json.dumps(record))
    with pytest.raises(UserError, match="written by an older sparsec .no Winograd throughput.; run `make "
                                        "calibrate` again or delete it"):
        _resolve("host")
    path.write_text("{}")
    with pytest.raises(UserError, match="not a calibration file"):
        _resolve("host")


def test_a_calibration_no_target_would_read_is_not_written(tmp_path):
    host = _resolve("host")
    with pytest.raises(UserError) as info:
        targets.write_calibration(host, {"pattern": 13.354, "csr": 0.5, "winograd": 0.6}, {"layers": {}})
    assert str(info.value) == ("calibrate measured throughput pattern=13.354 must be a number in (0, 4] (dense = "
                               "1): the machine was too busy to time the kernels; nothing written, run it again "
                               "(more --rounds steady the medians)")
    assert not (tmp_path / "calibration").exists()
    assert _resolve("host").throughputs == targets.SHIPPED_THROUGHPUTS[host.isa]


def test_describe_says_what_a_target_implies():
    text = "\n".join(targets.describe(_resolve("arm64")))
    assert "neon: 128-bit, 4 fp32 lanes, 32 registers" in text and "aarch64-linux-gnu-g++" in text
    assert "cost model      pattern 0.68, csr 0.65, winograd 0.53 of dense" in text


def test_the_cost_model_reads_the_targets_throughputs():
    """tiny_cnn's 1x1 conv with half its weights kept: CSR at throughput 0.55 costs 0.5 / 0.55 < 1
    (chosen; the shipped 0.6 too); on a target whose CSR kernel reaches only 0.4 of dense, it stays dense."""
    from sparsec.driver import import_model, optimize
    from sparsec.models import ZOO
    from sparsec.prune import prune_model

    model = ZOO["tiny_cnn"](resolution=32, num_classes=10)
    module = import_model(model, prune_model(model, keep_kernels=0.5, unstructured=0.5))

    def pointwise_layout(target):
        optimized = optimize(module, target=target)
        conv = next(op for op in optimized.ops if op.name == "conv2d" and
                    optimized.weight(op.weight).type.shape[2:] == (1, 1))
        return optimized.weight(conv.weight).layout.kind

    slow = _resolve(spec='{"isa": "avx2", "throughputs": {"pattern": 0.7, "csr": 0.4}}')
    step = next(p for p in for_target(default_pipeline(), slow) if isinstance(p, AnalyzeSparsity))
    assert (step.pattern_throughput, step.csr_throughput) == (0.7, 0.4)
    assert pointwise_layout(_resolve(spec='{"isa": "avx2"}')) == "csr"
    assert pointwise_layout(slow) == "dense"


def test_gpu_targets_keep_residual_adds():
    """ResNet-18's 8 shortcut adds fuse into conv epilogues on CPU targets; on GPU targets (whose
    conv kernels take no residual) fuse-epilogue leaves them layers of their own."""
    from sparsec.driver import import_model, optimize
    from sparsec.models import resnet18
    from sparsec.passes.registry import FuseEpilogue

    module = import_model(resnet18(resolution=32, num_classes=10), None)
    for name, adds, residuals in (("host", 0, 8), ("arm64", 0, 8), ("mali", 8, 0), ("opencl", 8, 0)):
        optimized = optimize(module, target=_resolve(name))
        assert sum(op.name == "add" for op in optimized.ops) == adds, name
        assert sum(getattr(op, "residual", None) is not None for op in optimized.ops) == residuals, name
    step = next(p for p in for_target(default_pipeline(), _resolve("mali")) if isinstance(p, FuseEpilogue))
    assert step.residual is False
