"""What sparsec compiles for: one frozen `Target` value that every consumer reads.

The cost model in analyze-sparsity (its throughputs), every kernel generator (vector lanes and
registers: their register plans and tile sizes derive from these, never from a literal), export
(the compiler that links the artifact), the runtime (the device that runs it) and the manifest all
take the same value; none guesses the machine on its own. Named targets:

- `host`: this machine's CPU through LLVM, as it really is (AVX2, AVX-512, NEON on an ARM host);
- `arm64`: aarch64 + NEON, cross-compiled (`--cpu cortex-a53` baseline, or any CPU of ARM_CPUS);
- `mali` / `opencl`: OpenCL kernels for a Mali (or any OpenCL 1.2) GPU plus aarch64 host code
  (kind `gpu`; checked here on PoCL, see `sparsec.runtime.opencl`);
- `--target-json`: a JSON object, sparsec's fields (`isa`, `tvm`, `vector_registers`, ...) or a raw
  TVM target (`{"kind": "llvm", "mtriple": ...}`), filled in from the named target it resembles.

No tvm import here (passes read targets); the TVM side lives in `sparsec.lower.target`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from sparsec.errors import NotSupportedError, UserError

# isa -> (vector bits, architectural vector registers)
ISAS = {"sse": (128, 16), "avx2": (256, 16), "avx512": (512, 32), "neon": (128, 32)}
DTYPE_BITS = {"float32": 32, "float16": 16, "int8": 8}
NAMED = ("host", "arm64", "mali", "opencl")
ARM64_CC = "aarch64-linux-gnu-g++"
ARM64_CC_PACKAGE = "g++-aarch64-linux-gnu"


MAX_THROUGHPUT = 4.0  # no kernel runs 4x the direct dense kernel's useful rate: a figure past it is a bad timing


@dataclass(frozen=True, slots=True)
class Throughputs:
    """The cost model's relative MAC throughput of each kernel against the direct dense kernel
    (dense = 1.0), and where the numbers come from (a calibration file of this machine, or the
    shipped defaults). `winograd` counts the Winograd kernel's work as its estimate does
    (`winograd_plan.estimated_cost`), so a dense 3x3 conv costs estimate / winograd."""

    pattern: float
    csr: float
    source: str
    dense: float = 1.0
    winograd: float = 1.0

    def __post_init__(self) -> None:
        for name in ("pattern", "csr", "dense", "winograd"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 < value <= MAX_THROUGHPUT:
                raise UserError(f"throughput {name}={value!r} must be a number in (0, {MAX_THROUGHPUT:g}] (dense = 1)")


# Useful GFLOP/s of each kernel over the direct dense kernel's, per core: `sparsec calibrate`,
# medians over its 3 pattern, 3 CSR and its Winograd layers of several GEMM blocks (where the
# Winograd throughput applies: `winograd_plan.several_blocks`). AVX2: five runs on a 2-core
# znver3 (AMD EPYC, shared machine; pattern 0.58-0.68, CSR 0.57-0.68, Winograd 0.53-0.57 of its
# estimate's speed on 28x28 and 56x56 planes, 1.2 on 14x14 ones). Pattern, since session 18 on the
# work its padded tiles do (`pattern_conv.padded_work`, charged apart by the cost model): 0.769,
# 0.624 and 0.658 in three runs (this machine's spread); 0.68 picks 17 of 18 formats right in
# `benchmarks/bench_format_choice.py` (0.72 measured unpadded: 16, 512x7 misjudged). AVX-512:
# three runs on a 2-core znver4 (AMD EPYC, session 37: pattern 1.02, 1.018, 1.125; CSR 0.623, 0.573,
# 0.546; Winograd 0.987-1.012), the medians; they pick 18 of 18 formats right (one within 5%) where
# znver5's figures of session 16 (pattern 0.65, CSR 0.54), from before the AVX-512 pattern kernels
# reached 80% of the peak, sent 512x28 at 50% kept dense, 1.76x slower. SSE and NEON: AVX2's figures
# before session 18, never measured.
SHIPPED_THROUGHPUTS = {
    "avx2": Throughputs(0.68, 0.65, "shipped defaults (measured on znver3, AVX2; `make calibrate` here)",
                        winograd=0.53),
    "sse": Throughputs(0.68, 0.65, "shipped defaults (AVX2's; never measured with SSE)", winograd=0.53),
    "avx512": Throughputs(1.02, 0.573, "shipped defaults (measured on znver4, AVX-512; `make calibrate` here)"),
    "neon": Throughputs(0.68, 0.65, "shipped defaults (AVX2's; not yet measured on an ARM phone)", winograd=0.53),
}


@dataclass(frozen=True, slots=True)
class ArmCpu:
    """An ARM core sparsec knows: caches for tile sizes, the qemu model that emulates its ISA."""

    l1d_kb: int
    l2_kb: int
    qemu_cpu: str  # qemu 7.2 models: cortex-a53/a57/a72/a76, neoverse-n1, max
    isa: str  # what the core implements, for `sparsec targets`


ARM_CPUS = {
    "cortex-a53": ArmCpu(32, 512, "cortex-a53", "ARMv8.0-A"),
    "cortex-a55": ArmCpu(32, 256, "cortex-a76", "ARMv8.2-A + dotprod"),
    "cortex-a72": ArmCpu(32, 1024, "cortex-a72", "ARMv8.0-A"),
    "cortex-a73": ArmCpu(64, 1024, "cortex-a72", "ARMv8.0-A"),
    "cortex-a75": ArmCpu(64, 256, "cortex-a76", "ARMv8.2-A + dotprod"),
    "cortex-a76": ArmCpu(64, 512, "cortex-a76", "ARMv8.2-A + dotprod"),
    "cortex-a77": ArmCpu(64, 512, "cortex-a76", "ARMv8.2-A + dotprod"),
    "cortex-a78": ArmCpu(64, 512, "cortex-a76", "ARMv8.2-A + dotprod"),
    "cortex-x1": ArmCpu(64, 1024, "cortex-a76", "ARMv8.2-A + dotprod"),
    "neoverse-n1": ArmCpu(64, 1024, "neoverse-n1", "ARMv8.2-A + dotprod"),
}
ARM64_BASELINE = "cortex-a53"


@dataclass(frozen=True, slots=True)
class Target:
    """Everything the compiler, the runtime and the manifest need to know about one target."""

    name: str  # host | arm64 | the name a target JSON gives itself
    kind: str  # cpu | gpu
    arch: str  # x86_64 | aarch64
    cpu: str  # LLVM's name for the core (mcpu): znver5, haswell, cortex-a53
    isa: str  # vector ISA (a key of ISAS)
    tvm: str  # the TVM target as canonical JSON (num-cores included)
    vector_bits: int
    vector_registers: int
    l1d_bytes: int
    l2_bytes: int
    threads: int
    cc: str  # the compiler that links the artifact ("" = TVM's default host compiler)
    throughputs: Throughputs
    qemu_cpu: str = ""  # the qemu CPU model that emulates this core ("" = none)
    cache_line_bytes: int = 64  # of the L1 data cache (64 on every x86 and ARM core we target)
    # GPU targets only (kind gpu): the most work-items of one work-group and the local memory one
    # work-group may use; the CPU fields above then describe the host code.
    work_group_size: int = 0
    local_memory_bytes: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("cpu", "gpu"):
            raise UserError(f"target {self.name}: kind {self.kind!r} must be cpu or gpu")
        if self.kind == "gpu":
            _check_gpu(self)
        if self.isa not in ISAS:
            raise UserError(f"target {self.name}: unknown isa {self.isa!r}; known: {', '.join(ISAS)}")
        if self.vector_bits not in (128, 256, 512) or not 8 <= self.vector_registers <= 64:
            raise UserError(f"target {self.name}: vector_bits must be 128, 256 or 512 and vector_registers "
                            f"8..64 (got {self.vector_bits}, {self.vector_registers})")
        if self.threads < 1 or self.l1d_bytes < 1024 or self.l2_bytes < self.l1d_bytes:
            raise UserError(f"target {self.name}: threads >= 1, l1d_bytes >= 1024 and l2_bytes >= l1d_bytes")
        if self.cache_line_bytes not in (32, 64, 128):
            raise UserError(f"target {self.name}: cache_line_bytes must be 32, 64 or 128 (got {self.cache_line_bytes})")
        if "kind" not in self.tvm_dict():
            raise UserError(f"target {self.name}: its TVM target has no 'kind'")

    def lanes(self, dtype: str = "float32") -> int:
        """Vector lanes of `dtype` in one register."""
        return self.vector_bits // DTYPE_BITS[dtype]

    def tvm_dict(self) -> dict:
        return json.loads(self.tvm)

    @property
    def device_kind(self) -> str:
        """What executes the kernels: `cpu`, or `opencl` for GPU targets."""
        return "opencl" if self.kind == "gpu" else "cpu"

    @property
    def device(self) -> str:
        """What runs the artifact when no device is named: this CPU, or an emulated one."""
        if self.kind == "gpu":
            return (f"an OpenCL GPU ({self.name}) through a TVM runtime built with OpenCL (a phone, over --tracker); "
                    "here its kernels run on PoCL with `sparsec run --emulate`")
        if self.arch == _machine():
            return "local"
        if self.arch == "aarch64" and self.qemu_cpu and "android" not in self.tvm_dict().get("mtriple", ""):
            return f"emulated ({self.qemu_cpu} under qemu-aarch64)"
        return "none (name one with --tracker HOST:PORT --key K)"

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["tvm"] = self.tvm_dict()
        data["lanes"] = {dtype: self.lanes(dtype) for dtype in DTYPE_BITS}
        data["device"] = self.device
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Target:
        """The inverse of `to_dict` (a manifest's target); derived keys are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["tvm"] = _canonical(values["tvm"])
        values["throughputs"] = Throughputs(**values["throughputs"])
        return cls(**values)


def _check_gpu(target: Target) -> None:
    tvm = target.tvm_dict()
    if tvm.get("kind") != "opencl":
        raise NotSupportedError(f"target {target.name}: GPU targets are OpenCL only (got TVM kind {tvm.get('kind')!r})")
    if not 1 <= target.work_group_size <= 1024 or target.local_memory_bytes < 1024:
        raise UserError(f"target {target.name}: a GPU target needs work_group_size 1..1024 and local_memory_bytes "
                        f">= 1024 (got {target.work_group_size}, {target.local_memory_bytes})")


def _canonical(tvm: dict | str) -> str:
    return json.dumps(json.loads(tvm) if isinstance(tvm, str) else tvm, sort_keys=True)


def _machine() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


# --- calibration ---------------------------------------------------------------------------------


def calibration_path(arch: str, cpu: str, isa: str) -> Path:
    """Where `make calibrate` writes this CPU's throughputs ($SPARSEC_CALIBRATION_DIR, else the
    user's cache folder)."""
    base = os.environ.get("SPARSEC_CALIBRATION_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sparsec" / "calibration"
    return Path(base) / f"{arch}-{cpu}-{isa}.json"


def throughputs_for(arch: str, cpu: str, isa: str) -> Throughputs:
    """This CPU's calibrated throughputs if `make calibrate` ran here, else the shipped ones."""
    path = calibration_path(arch, cpu, isa)
    if not path.exists():
        return SHIPPED_THROUGHPUTS[isa]
    try:
        data = json.loads(path.read_text())["throughputs"]
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a calibration file ({err}); run `make calibrate` again or delete it") from None
    if isinstance(data, dict) and "winograd" not in data:  # its pattern figure is against Winograd's estimate
        raise UserError(f"{path}: written by an older sparsec (no Winograd throughput); run `make calibrate` "
                        "again or delete it")
    try:
        return Throughputs(data["pattern"], data["csr"], f"calibrated ({path})", winograd=data["winograd"])
    except (KeyError, TypeError, UserError) as err:
        raise UserError(f"{path}: not a calibration file ({err}); run `make calibrate` again or delete it") from None


def write_calibration(target: Target, measured: dict[str, float], details: dict) -> Path:
    """Record measured throughputs (pattern, csr, winograd) for the target's CPU; later targets
    for it read them. A figure no target would accept (a neighbour stalled the dense kernel's
    rounds: pattern once read 13x dense) is refused and nothing is written, since every later
    command for this CPU would stop at the file."""
    try:
        Throughputs(measured["pattern"], measured["csr"], "measured", winograd=measured["winograd"])
    except UserError as err:
        raise UserError(f"calibrate measured {err}: the machine was too busy to time the kernels; nothing "
                        "written, run it again (more --rounds steady the medians)") from None
    path = calibration_path(target.arch, target.cpu, target.isa)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"arch": target.arch, "cpu": target.cpu, "isa": target.isa, "lanes": target.lanes(),
              "threads": target.threads, "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds"), "throughputs": {"dense": 1.0, **measured}, **details}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


# --- host ----------------------------------------------------------------------------------------


def host_isa() -> str:
    """This machine's widest vector ISA sparsec generates for."""
    if _machine() == "aarch64":
        return "neon"
    flags = _cpu_flags()
    if "avx512f" in flags and "avx512vl" in flags:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= flags else "sse"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def _data_cache(level: int) -> Path | None:
    """cpu0's sysfs folder for its data (or unified) cache of `level`, if the kernel lists one."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if int((index / "level").read_text()) == level and (index / "type").read_text().strip() != "Instruction":
                return index
        except (OSError, ValueError):
            continue
    return None


def _cache_bytes(level: int, default_kb: int) -> int:
    """Per-core data cache of `level` from sysfs (L1: the data cache), else the default."""
    try:
        size = (_data_cache(level) / "size").read_text().strip().upper()
        return int(size.rstrip("KM")) * (1024 if size.endswith("K") else 1024 * 1024)
    except (TypeError, OSError, ValueError):
        return default_kb * 1024


def _cache_line_bytes(default: int = 64) -> int:
    """The L1 data cache's line size from sysfs, else the default."""
    try:
        return int((_data_cache(1) / "coherency_line_size").read_text()) or default
    except (TypeError, OSError, ValueError):
        return default


def host_threads() -> int:
    """Threads for the host target: TVM_NUM_THREADS if set, else every core."""
    return int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))


def host(cpu: str, threads: int | None = None) -> Target:
    """This machine, with `cpu` its LLVM name (the TVM side detects it)."""
    arch, isa = _machine(), host_isa()
    bits, registers = ISAS[isa]
    threads = threads or host_threads()
    tvm = {"kind": "llvm", "mcpu": cpu, "num-cores": threads}
    if arch == "aarch64":
        tvm.update({"mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    return Target("host", "cpu", arch, cpu, isa, _canonical(tvm), bits, registers, _cache_bytes(1, 32),
                  _cache_bytes(2, 512), threads, "", throughputs_for(arch, cpu, isa),
                  cache_line_bytes=_cache_line_bytes())


# --- arm64 ---------------------------------------------------------------------------------------


def arm64(cpu: str | None = None, cc: str | None = None, threads: int = 4) -> Target:
    """aarch64 + NEON for one ARM core (cortex-a53 when none is named), cross-compiled."""
    cpu = cpu or ARM64_BASELINE
    if cpu not in ARM_CPUS:
        raise UserError(f"unknown --cpu {cpu!r} for arm64; known: {', '.join(ARM_CPUS)}")
    core = ARM_CPUS[cpu]
    cc = cc or os.environ.get("TVM_NDK_CC") or ARM64_CC
    triple = "aarch64-linux-android" if "android" in cc else "aarch64-linux-gnu"
    tvm = {"kind": "llvm", "mtriple": triple, "mcpu": cpu, "mattr": ["+neon"], "num-cores": threads}
    bits, registers = ISAS["neon"]
    return Target("arm64", "cpu", "aarch64", cpu, "neon", _canonical(tvm), bits, registers, core.l1d_kb * 1024,
                  core.l2_kb * 1024, threads, cc, throughputs_for("aarch64", cpu, "neon"), core.qemu_cpu)


# --- mali / opencl ------------------------------------------------------------------------------

# TVM's own limits for its mali and opencl targets (max_num_threads, max_shared_memory_per_block):
# Mali Bifrost/Valhall run 256-work-item work-groups (384 on some, 1024 on Valhall, but 256 is
# safe everywhere); OpenCL 1.2 guarantees 16 KiB of local memory.
GPU_WORK_GROUP_SIZE = 256
GPU_LOCAL_MEMORY = 16384


def gpu(name: str = "mali", cc: str | None = None) -> Target:
    """OpenCL kernels for a Mali GPU (`mali`) or any OpenCL 1.2 GPU (`opencl`), with aarch64 host
    code (the phone's CPU, cortex-a53 baseline). The artifact is a `.so` when the cross compiler
    `cc` is present, else a `.tar` (linked on the phone)."""
    if name not in ("mali", "opencl"):
        raise UserError(f"unknown GPU target {name!r}; known: mali, opencl")
    host = arm64(None, cc)
    device = {"kind": "opencl", "max_num_threads": GPU_WORK_GROUP_SIZE,
              "max_shared_memory_per_block": GPU_LOCAL_MEMORY, "host": host.tvm_dict()}
    if name == "mali":
        device["device"] = "mali"
    return dataclasses.replace(host, name=name, kind="gpu", tvm=_canonical(device), qemu_cpu="",
                               work_group_size=GPU_WORK_GROUP_SIZE, local_memory_bytes=GPU_LOCAL_MEMORY)


def cross_compiler_present(target: Target) -> bool:
    return bool(target.cc) and shutil.which(target.cc) is not None


def require_compiler(target: Target) -> None:
    """A cross target's compiler must exist before any work: say which package provides it.
    GPU targets need none (without one the artifact is a .tar, linked on the phone)."""
    if not target.cc or shutil.which(target.cc) or target.kind == "gpu":
        return
    if target.cc == ARM64_CC:
        raise UserError(f"--target {target.name} needs the cross compiler {ARM64_CC}: install the Debian package "
                        f"{ARM64_CC_PACKAGE} (apt-get install {ARM64_CC_PACKAGE}), or name another with --cc "
                        "or TVM_NDK_CC=<Android NDK clang>")
    raise UserError(f"--target {target.name}: the compiler {target.cc!r} is not found")


# --- --target-json -------------------------------------------------------------------------------


def from_json(text: str, host_cpu: str) -> Target:
    """A target from JSON text (or a path to a .json file): sparsec's own fields, or a raw TVM
    target; what it leaves out comes from the named target it resembles."""
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise UserError(f"--target-json {text}: neither a JSON object nor a readable file")
        text = path.read_text()
    try:
        spec = json.loads(text)
    except ValueError as err:
        raise UserError(f"--target-json: not valid JSON ({err})") from None
    if not isinstance(spec, dict):
        raise UserError("--target-json: expected a JSON object")
    if "tvm" not in spec and "kind" in spec:  # a raw TVM target
        spec = {"tvm": spec, **({"kind": "gpu"} if spec["kind"] not in ("llvm", "c") else {})}
    tvm = spec.get("tvm", {})
    if not isinstance(tvm, dict):
        raise UserError("--target-json: 'tvm' must be a TVM target object")
    if spec.get("kind") == "gpu" or tvm.get("kind") == "opencl":
        return _override(gpu("mali" if tvm.get("device") == "mali" else "opencl"), spec)
    aarch64 = "aarch64" in str(tvm.get("mtriple", "")) or spec.get("arch") == "aarch64"
    base = arm64(tvm.get("mcpu") if tvm.get("mcpu") in ARM_CPUS else None) if aarch64 else host(host_cpu)
    return _override(base, spec)


def _override(base: Target, spec: dict) -> Target:
    fields = {f.name for f in dataclasses.fields(Target)}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise UserError(f"--target-json: unknown field {unknown[0]!r}; fields: {', '.join(sorted(fields))}")
    values = dict(spec)
    isa = values.get("isa", base.isa)
    if isa in ISAS and isa != base.isa:  # another ISA: its vector shape, unless given too
        values.setdefault("vector_bits", ISAS[isa][0])
        values.setdefault("vector_registers", ISAS[isa][1])
    tvm = {**base.tvm_dict(), **values.get("tvm", {})}
    cores = tvm["host"] if base.kind == "gpu" else tvm  # a GPU target's threads are its host's
    cores["num-cores"] = values.get("threads", cores.get("num-cores", base.threads))
    values["tvm"] = _canonical(tvm)
    values.setdefault("name", "json")
    values.setdefault("cpu", str(cores.get("mcpu", base.cpu)))
    values.setdefault("threads", cores["num-cores"])
    if isinstance(values.get("throughputs"), dict):
        values["throughputs"] = Throughputs(**{"source": "--target-json", **values["throughputs"]})
    elif "throughputs" not in values and isa != base.isa:
        values["throughputs"] = SHIPPED_THROUGHPUTS.get(isa, base.throughputs)
    try:
        return dataclasses.replace(base, **values)
    except TypeError as err:
        raise UserError(f"--target-json: {err}") from None


# --- resolving the command line --------------------------------------------------------------------


def resolve(name: str = "host", cpu: str | None = None, spec: str | None = None, cc: str | None = None, *,
            host_cpu: str) -> Target:
    """The Target of `--target NAME [--cpu CPU] [--cc CC]` or `--target-json SPEC`."""
    if spec is not None:
        target = from_json(spec, host_cpu)
        return dataclasses.replace(target, cc=cc) if cc else target
    if name == "host":
        if cpu is not None:
            raise UserError("--cpu applies to --target arm64; the host target is this machine's CPU")
        return host(host_cpu)
    if name == "arm64":
        return arm64(cpu, cc)
    if name in ("mali", "opencl"):
        if cpu is not None:
            raise UserError(f"--cpu applies to --target arm64; --target {name} runs aarch64 host code on the "
                            "phone's CPU (cortex-a53 baseline)")
        return gpu(name, cc)
    raise UserError(f"unknown target {name!r}; known targets: {', '.join(NAMED)} (or --target-json); "
                    "see `sparsec targets`")


def describe(target: Target) -> list[str]:
    """What a target implies, one fact a line (for `sparsec targets`)."""
    if target.kind == "gpu":
        return [
            f"tvm target      {json.dumps(target.tvm_dict(), sort_keys=True)}",
            f"kernels         OpenCL C 1.2; work-groups of at most {target.work_group_size} work-items, "
            f"{target.local_memory_bytes // 1024} KiB local memory; float{target.lanes()} vectors",
            f"host code       aarch64 ({target.cpu}), linked by {target.cc} into a .so (else a .tar)",
            f"runs on         {target.device}",
        ]
    return [
        f"tvm target      {json.dumps(target.tvm_dict(), sort_keys=True)}",
        f"vector          {target.isa}: {target.vector_bits}-bit, {target.lanes()} fp32 lanes, "
        f"{target.vector_registers} registers",
        f"caches          L1d {target.l1d_bytes // 1024} KiB, L2 {target.l2_bytes // 1024} KiB; "
        f"threads {target.threads}",
        f"linked by       {target.cc or 'the host C++ compiler (TVM default)'}",
        f"runs on         {target.device}",
        f"cost model      pattern {target.throughputs.pattern:g}, csr {target.throughputs.csr:g}, "
        f"winograd {target.throughputs.winograd:g} "
        f"of dense ({target.throughputs.source})",
    ]
