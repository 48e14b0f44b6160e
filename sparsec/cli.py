"""The `sparsec` command line: one thin function per job over the library.

Every user error prints one message (`sparsec: error: ...`) and exits with status 2, with no
traceback and no output file left behind.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

from sparsec.errors import UserError

EXIT_USER_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.command(args) or 0
    except UserError as err:
        print(f"sparsec: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparsec", description=__doc__.splitlines()[0])
    jobs = parser.add_subparsers(required=True, metavar="COMMAND")
    for register in (_import_parser, _opt_parser, _compile_parser, _run_parser, _prune_parser, _inspect_parser,
                     _demo_parser, _bench_parser, _targets_parser, _calibrate_parser, _zoo_parser, _fuzz_parser,
                     _farm_parser, _tune_parser):
        register(jobs)
    return parser


# --- sparsec import ------------------------------------------------------------------------------


def _import_parser(jobs) -> None:
    p = jobs.add_parser("import", help="ONNX model (+ masks) -> IR text with its weights .npz")
    p.add_argument("model", type=Path)
    p.add_argument("--masks", type=Path, help="pruning masks .npz keyed by initializer name")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224",
                   help="bind an input's shape (symbolic batch defaults to 1)")
    p.add_argument("-o", "--output", type=Path, required=True, help="IR text to write (weights beside it)")
    p.add_argument("--weights", type=Path, help="where to write the weights (default OUTPUT.npz)")
    p.set_defaults(command=cmd_import)


def cmd_import(args) -> int:
    from sparsec.ir.files import write_module

    weights = args.weights or Path(str(args.output) + ".npz")
    check_paths([args.output, weights], [args.model, args.masks])
    write_module(load_model(args), args.output, weights)
    return 0


def check_paths(outputs: list, inputs: list) -> None:
    """The outputs can be written and overwrite no input (None entries skipped): before any work."""
    from sparsec.ir.files import check_outputs, ir_files

    sources = [file for path in inputs if path for file in (ir_files(path) if path.suffix == ".sir" else [path])]
    check_outputs([Path(p) for p in outputs if p], sources)


def load_model(args):
    """The `model` / `--masks` / `--input-shape` arguments -> verified IR module."""
    from sparsec.driver import import_model

    return import_model(args.model, args.masks, parse_input_shapes(args.input_shape))


def parse_input_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """`NAME=1x3x224x224` items -> {NAME: (1, 3, 224, 224)}."""
    shapes = {}
    for item in items:
        name, _, dims = item.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not name or not shape or min(shape) < 1:
            raise UserError(f"--input-shape {item!r}: expected NAME=DIMS like input=1x3x224x224")
        shapes[name] = shape
    return shapes


# --- sparsec opt ---------------------------------------------------------------------------------


def _opt_parser(jobs) -> None:
    p = jobs.add_parser("opt", help="run passes over IR text")
    p.add_argument("module", type=Path, nargs="?", help="IR text (.sir)")
    p.add_argument("-p", "--passes", default="", help="pipeline, e.g. fold-batchnorm,fuse-epilogue "
                   "(or 'default'); see `sparsec opt --list-passes`")
    p.add_argument("--list-passes", action="store_true", help="print the registered passes and exit")
    p.add_argument("--print-after-all", action="store_true", help="print the IR to stderr after each pass")
    p.add_argument("--verify-each", action="store_true", help="verify the IR after each pass")
    p.add_argument("--timings", action="store_true", help="print each pass's time to stderr")
    p.add_argument("-o", "--output", type=Path, help="IR text to write (default: print to stdout)")
    p.set_defaults(command=cmd_opt)


def cmd_opt(args) -> int:
    from sparsec.ir.files import read_module, write_module
    from sparsec.ir.printer import print_module
    from sparsec.passes import PASSES, PassInstrument, parse_pipeline, run_pipeline

    if args.list_passes:
        for name, cls in sorted(PASSES.items()):
            print(f"{name:28} {(cls.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if args.module is None:
        raise UserError("opt: give the IR text to optimize (sparsec opt MODULE.sir -p PASSES)")
    if args.output:
        check_paths([args.output, Path(str(args.output) + ".npz")], [args.module])
    pipeline = parse_pipeline(args.passes)
    module = read_module(args.module)
    instrument = PassInstrument(print_after_all=args.print_after_all, verify_each=args.verify_each)
    module = run_pipeline(module, pipeline, instrument)
    if args.timings:
        _print_timings(instrument)
    if args.output:
        write_module(module, args.output)
    else:
        sys.stdout.write(print_module(module, None))
    return 0


# --- sparsec compile -----------------------------------------------------------------------------


def _compile_parser(jobs) -> None:
    p = jobs.add_parser("compile", help="ONNX model (+ masks) -> TVM library model.so (+ model.so.json)")
    p.add_argument("model", type=Path, help="ONNX model, or IR text (.sir)")
    p.add_argument("--masks", type=Path, help="pruning masks .npz keyed by initializer name")
    _target_arguments(p)
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="library to write (model.so; GPU targets: model.so or model.tar)")
    p.add_argument("--dump-ir-after", metavar="PASS|all",
                   help="write the IR text after that pass (or every pass) beside the output")
    p.add_argument("--verify-each", action="store_true", help="verify the IR after each pass")
    p.add_argument("--timings", action="store_true", help="print each pass's time to stderr")
    p.add_argument("--check", action="store_true",
                   help="run the compiled model against the reference interpreter and onnxruntime "
                        "(an arm64 model runs on the emulated device, or the --tracker one; a GPU model's "
                        "kernels run layer by layer on PoCL)")
    _device_arguments(p)
    p.add_argument("--tuning-log", type=Path, metavar="TUNE.jsonl",
                   help="apply the best record of each layer's task (for the target and --key) from this log")
    p.set_defaults(command=cmd_compile)


def _target_arguments(p) -> None:
    p.add_argument("--target", default="host", help="target to compile for: host (default), arm64, mali or "
                   "opencl (OpenCL GPU kernels + aarch64 host code); see `sparsec targets`")
    p.add_argument("--cpu", help="the core of an arm64 target (default cortex-a53; see `sparsec targets`)")
    p.add_argument("--target-json", metavar="JSON|FILE",
                   help="a target as JSON (sparsec's fields or a raw TVM target), instead of --target")
    p.add_argument("--cc", help="the compiler that links the library (arm64 default: aarch64-linux-gnu-g++; "
                   "or TVM_NDK_CC=<Android NDK clang>)")


def resolve_target_args(args):
    """--target/--cpu/--target-json/--cc -> Target, with its compiler present (before any work)."""
    from sparsec.lower.target import resolve_target
    from sparsec.target import require_compiler

    target = resolve_target(args.target, args.cpu, args.target_json, args.cc)
    require_compiler(target)
    if target.kind == "gpu":  # its kernels are built by an OpenCL compiler (PoCL here) at compile time
        from sparsec.runtime.opencl import device

        device(f"--target {target.name} (its kernels are checked by an OpenCL compiler)")
    return target


def local_target_args(args, command: str):
    """--target-json's target for a command that runs its code here (None without the flag)."""
    from sparsec.lower.target import resolve_runnable

    return resolve_runnable(args.target_json, command) if args.target_json else None


def _device_arguments(p) -> None:
    p.add_argument("--tracker", metavar="HOST:PORT", help="run on the device registered with this TVM tracker")
    p.add_argument("--key", help="the device's key at the tracker (with --tracker); with --tuning-log, whose "
                   "records apply")


def cmd_compile(args) -> int:
    from sparsec.runtime.model import check_library_suffix

    target = resolve_target_args(args)  # an unknown target or a missing compiler fails before any work
    check_library_suffix(args.output, target)
    check_paths([args.output, Path(str(args.output) + ".json")], [args.model, args.masks])
    module = _load_source(args)
    from sparsec.driver import compile as compile_model
    from sparsec.passes import PassInstrument

    dump = _ir_dumper(args.output, args.dump_ir_after, [args.model, args.masks]) if args.dump_ir_after else None
    instrument = PassInstrument(verify_each=args.verify_each, dump=dump)
    if module.passes:
        _print_pass_plan(args.model, module)
    if args.tuning_log:
        module = _apply_tuning_log(module, args, target, instrument)
    compiled = compile_model(module, target=target, instrument=instrument)
    if args.timings:
        _print_timings(instrument)
    if args.check and compiled.is_gpu:
        _check_gpu(compiled.gpu_bundle, module)
    elif args.check:
        from sparsec.check import check_compiled

        with device_for(compiled, args) as device:
            checked = compiled.on(device) if device else compiled
            print(check_compiled(checked, module, args.model if args.model.suffix == ".onnx" else None, args.masks))
    compiled.export(args.output)
    return 0


def _apply_tuning_log(module, args, target, instrument):
    """The optimised module with each layer's knobs from the log's best record; says which
    layers had none."""
    from sparsec.driver import optimize
    from sparsec.tuning.apply import apply_records, device_key_of
    from sparsec.tuning.log import TuningLog

    if not args.tuning_log.exists():
        raise UserError(f"--tuning-log {args.tuning_log}: no such file (write one with `sparsec tune`)")
    records = TuningLog(args.tuning_log).records()
    key = device_key_of(records, target, args.key)
    module, applied = apply_records(optimize(module, target=target, instrument=instrument), records, target, key)
    print(f"sparsec: {applied.summary(key)}", file=sys.stderr)
    if args.dump_ir_after:  # the knobs are in the IR text from here on
        from sparsec.ir.files import write_module

        write_module(module, args.output.with_name(f"{args.output.stem}.tuned.sir"))
    return module


def _check_gpu(bundle, module, inputs=None):
    """Run a GPU model's kernels layer by layer on PoCL against the reference; print the table."""
    from sparsec.check import random_inputs
    from sparsec.runtime.gpu_check import check_bundle, require_passed

    check = check_bundle(bundle, inputs if inputs is not None else random_inputs(module))
    print(check.format())
    require_passed(check)
    return check


def device_for(compiled, args):
    """A context manager giving the device to run `compiled` on: the --tracker one, None for this
    CPU, or an emulated device started for it (and stopped after)."""
    import contextlib

    from sparsec.runtime.device import RpcDevice, parse_tracker

    if args.tracker is not None and args.key is None:
        raise UserError("--tracker and --key go together: --tracker HOST:PORT --key KEY")
    if args.tracker:
        return contextlib.nullcontext(RpcDevice(*parse_tracker(args.tracker), args.key))
    if compiled.runs_here:
        return contextlib.nullcontext(None)
    # no local OpenCL TVM runtime: only a phone runs a GPU model (or PoCL checks its kernels); no emulator
    # for this architecture's newer CPUs
    if compiled.is_gpu or compiled.target.device == "local":
        raise UserError(compiled._needs_device())
    return _emulated(compiled.target)


@contextmanager
def _emulated(target):
    from sparsec.runtime.emulator import EmulatedDevice

    if target.device.startswith("none"):
        raise UserError(f"a {target.name} model for {target.tvm_dict().get('mtriple')} has no emulated device here: "
                        "name a real one with --tracker HOST:PORT --key K")
    print(f"sparsec: running on an emulated {target.name} device: {target.qemu_cpu} under qemu-aarch64 "
          "(real ARM code; its timings are emulation speed, not a phone's)", file=sys.stderr)
    with EmulatedDevice(target.qemu_cpu) as device:
        yield device.rpc


def _load_source(args):
    if args.model.suffix == ".sir":
        from sparsec.ir.files import read_module

        if args.masks or args.input_shape:
            flags = " and ".join(f for f, v in (("--masks", args.masks), ("--input-shape", args.input_shape)) if v)
            raise UserError(f"{args.model}: {flags} apply to ONNX models; IR text already holds its masks "
                            "and shapes (give them to `sparsec import`)")
        return read_module(args.model)  # parsed and verified
    return load_model(args)


def _print_pass_plan(source: Path, module) -> None:
    """Say which passes of the default pipeline an optimised module skips and which still run."""
    from sparsec.passes import remaining_pipeline

    steps, done = remaining_pipeline(module)
    todo = ", ".join(step.name for step in steps) or "none"
    print(f"sparsec: {source} records passes {', '.join(module.passes)}; not run again: {', '.join(done) or 'none'}; "
          f"running: {todo}", file=sys.stderr)


def _print_timings(instrument) -> None:
    for name, seconds in instrument.timings.items():
        print(f"pass {name:28} {seconds * 1000:9.1f} ms", file=sys.stderr)


def _check_suffix(path: Path, suffix: str) -> None:
    if path.suffix != suffix:
        raise UserError(f"{path}: the output must be a {suffix} file")


def _ir_dumper(output: Path, which: str, inputs: list):
    """A pass-instrument hook writing `OUTPUT.after-PASS.sir` (+ .npz) for the chosen passes."""
    from sparsec.ir.files import write_module
    from sparsec.passes import PASSES

    if which != "all" and which not in PASSES:
        raise UserError(f"--dump-ir-after {which}: no such pass; known passes: {', '.join(sorted(PASSES))}, all")
    counter = iter(range(1, 1000))

    def dump(pass_name, module) -> None:
        if which in ("all", pass_name):
            path = output.with_name(f"{output.stem}.{next(counter):02d}-{pass_name}.sir")
            check_paths([path, Path(str(path) + ".npz")], inputs)  # a dump never overwrites the source
            write_module(module, path)

    return dump


# --- sparsec run ---------------------------------------------------------------------------------


def _run_parser(jobs) -> None:
    p = jobs.add_parser("run", help="run a compiled model (.so/.tar) or IR text (.sir, reference interpreter)")
    p.add_argument("module", type=Path, help="model.so / model.tar from `sparsec compile`, or IR text (.sir)")
    p.add_argument("--emulate", action="store_true",
                   help="GPU models: run the OpenCL kernels layer by layer on PoCL and compare every layer with "
                        "the reference interpreter (correctness only; PoCL timings are not Mali timings)")
    p.add_argument("--input", type=Path, required=True, help=".npy (one input) or .npz keyed by input name")
    p.add_argument("-o", "--output", type=Path, required=True, help=".npy (one output) or .npz keyed by name")
    _device_arguments(p)
    p.set_defaults(command=cmd_run)


def cmd_run(args) -> int:
    from sparsec.io import read_inputs, write_outputs

    library_files = [args.module, Path(str(args.module) + ".json")] if args.module.suffix in (".so", ".tar") \
        else [args.module]
    check_paths([args.output], [*library_files, args.input])
    if args.module.suffix in (".so", ".tar"):
        from sparsec.driver import load

        compiled = load(args.module)
        inputs = read_inputs(args.input, compiled.manifest.input_types())
        if args.emulate:
            if not compiled.is_gpu:
                raise UserError(f"{args.module}: --emulate runs GPU models' OpenCL kernels on PoCL; this model is "
                                f"for {compiled.manifest.target} (a CPU)")
            from sparsec.runtime.opencl import device

            device("--emulate")
            bundle = compiled.gpu_bundle
            from sparsec.ir.parser import parse_module

            module = parse_module(bundle.ir_text, str(args.module), arrays=bundle.weights)
            outputs = _check_gpu(bundle, module, inputs).outputs
        else:
            with device_for(compiled, args) as device:
                outputs = (compiled.on(device) if device else compiled).run(inputs)
    else:
        from sparsec.ir.files import read_module
        from sparsec.reference import run_reference

        module = read_module(args.module)
        inputs = read_inputs(args.input, {p.name: p.type for p in module.inputs})
        outputs = run_reference(module, inputs)
    write_outputs(args.output, outputs)
    return 0


# --- sparsec prune / inspect ---------------------------------------------------------------------


def _prune_parser(jobs) -> None:
    p = jobs.add_parser("prune", help="PCONV masks for an ONNX model: patterns + connectivity pruning")
    p.add_argument("model", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="masks .npz to write")
    _pruning_arguments(p, keep_kernels=1.0)
    p.set_defaults(command=cmd_prune)


def _pruning_arguments(p, keep_kernels: float) -> None:
    p.add_argument("--patterns", type=int, default=8, help="number of 4-tap patterns (default 8)")
    p.add_argument("--keep-kernels", type=float, default=keep_kernels, metavar="F",
                   help=f"fraction of 3x3 kernels kept per layer (default {keep_kernels:g}; 0.278 = PCONV's 3.6x)")
    p.add_argument("--unstructured", type=float, default=0.0, metavar="F",
                   help="fraction of smallest weights removed from 1x1 convs and FC layers")
    p.add_argument("--prune-first-conv", action="store_true", help="also prune the first conv")
    p.add_argument("--kernel-groups", type=int, default=1, metavar="G",
                   help="G consecutive filters keep or drop each input channel's kernel together, with one "
                        "pattern, so kernels walk G filters at once (default 1; `inspect` reports the cost)")


def cmd_prune(args) -> int:
    from sparsec.frontend import load_onnx
    from sparsec.prune import prune_model, save_masks

    check_paths([args.output], [args.model])
    model = load_onnx(args.model)
    masks = prune_model(model, patterns=args.patterns, keep_kernels=args.keep_kernels,
                        unstructured=args.unstructured, prune_first_conv=args.prune_first_conv,
                        kernel_groups=args.kernel_groups)
    save_masks(masks, args.output)
    return 0


def _inspect_parser(jobs) -> None:
    p = jobs.add_parser("inspect", help="per-layer sparsity report of a model and its masks")
    p.add_argument("model", type=Path)
    p.add_argument("--masks", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--target", help="a GPU target (mali, opencl): the static GPU report of its compiled kernels "
                   "instead (work-groups, work-items, local memory, global loads per useful FMA, divergence)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224")
    p.set_defaults(command=cmd_inspect)


def cmd_inspect(args) -> int:
    import json

    if args.target:
        return _inspect_gpu(args)
    from sparsec.frontend import load_onnx
    from sparsec.lower.target import resolve_target
    from sparsec.prune import load_masks
    from sparsec.report import format_report, inspect_model, report_json

    model = load_onnx(args.model)
    masks = load_masks(args.masks, model) if args.masks else {}
    stats = inspect_model(model, masks, resolve_target("host"))
    print(json.dumps(report_json(stats), indent=2) if args.json else format_report(stats))
    return 0


def _inspect_gpu(args) -> int:
    import json

    from sparsec.driver import import_model, optimize
    from sparsec.lower.gpu.report import format_gpu_report, gpu_report
    from sparsec.lower.target import resolve_target

    target = resolve_target(args.target)
    if target.kind != "gpu":
        raise UserError(f"inspect --target {args.target}: the static report is for GPU targets (mali, opencl)")
    module = optimize(import_model(args.model, args.masks, parse_input_shapes(args.input_shape)), target=target)
    reports = gpu_report(module, target)
    print(json.dumps([r.to_json() for r in reports], indent=1) if args.json else format_gpu_report(reports, target))
    return 0


# --- sparsec demo --------------------------------------------------------------------------------


def _demo_parser(jobs) -> None:
    p = jobs.add_parser("demo", help="the main job on an embedded default model (VGG-16)")
    p.add_argument("--resolution", type=int, default=224)
    p.set_defaults(command=cmd_demo)


def cmd_demo(args) -> int:
    from sparsec.demo import run_demo

    return run_demo(args.resolution)


# --- sparsec bench -------------------------------------------------------------------------------


def _bench_parser(jobs) -> None:
    p = jobs.add_parser("bench", help="time sparsec vs onnxruntime (and sparsec's dense path) on one model")
    p.add_argument("model", type=Path)
    p.add_argument("--masks", type=Path, help="pruning masks .npz keyed by initializer name")
    p.add_argument("--threads", type=int, default=2, help="threads for every engine (default 2)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; medians are reported (default 7)")
    p.add_argument("--min-time", type=float, default=0.2, metavar="S", help="seconds per engine per round")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224",
                   help="bind an input's shape (symbolic batch defaults to 1)")
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    _target_arguments(p)
    p.add_argument("--count-instructions", action="store_true",
                   help="arm64: per layer, dynamic aarch64 instructions and vector FMAs under qemu (a proxy "
                        "for speed, not a time), against sparsec's dense schedule of the same weights")
    p.set_defaults(command=cmd_bench)


def cmd_bench(args) -> int:
    import os

    if args.count_instructions or args.target != "host" or args.cpu:
        return _bench_counts(args)

    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # TVM reads it once, when its pool starts
    target = local_target_args(args, "bench")  # checked before any work
    from sparsec.frontend import load_onnx
    from sparsec.ir.files import write_atomically
    from sparsec.prune import load_masks
    from sparsec.runtime.bench import bench_model

    if args.json:
        _check_suffix(args.json, ".json")
        check_paths([args.json], [args.model, args.masks])  # before minutes of timing, not after
    model = load_onnx(args.model)
    masks = load_masks(args.masks, model) if args.masks else None
    report = bench_model(model, masks, threads=args.threads, rounds=args.rounds, min_time_s=args.min_time,
                         input_shapes=parse_input_shapes(args.input_shape), name=args.model.stem, target=target)
    print(report.format_report())
    if args.json:
        write_atomically(args.json, lambda path: path.write_text(report.to_json()))
    return 0


def _bench_counts(args) -> int:
    """`bench --target arm64 --count-instructions`: the ARM cost proxy, per layer."""
    import json

    from sparsec.driver import optimize
    from sparsec.ir.files import write_atomically

    target = resolve_target_args(args)
    if not args.count_instructions:
        raise UserError(f"bench times engines on this machine; for {target.name} add --count-instructions "
                        "(instruction counts under qemu: a proxy, since emulated timings are not a phone's)")
    if target.arch != "aarch64":
        raise UserError(f"--count-instructions counts aarch64 instructions under qemu; {target.name} is {target.arch}")
    if args.json:
        _check_suffix(args.json, ".json")
        check_paths([args.json], [args.model, args.masks])
    from sparsec.runtime.insn_count import count_model, counts_json, format_counts

    module = optimize(load_model(args), target=target)
    rows = count_model(module, target)
    print(format_counts(rows, target, f"{args.model.stem} ({'masked' if args.masks else 'dense'})"))
    if args.json:
        write_atomically(args.json, lambda path: path.write_text(json.dumps(counts_json(rows, target), indent=1)))
    return 0


# --- sparsec zoo --------------------------------------------------------------------------------


def _zoo_parser(jobs) -> None:
    from sparsec.models import ZOO

    p = jobs.add_parser("zoo", help="write a zoo model (VGG-16, ResNet-18/50, MobileNet-V2, ...) and its PCONV masks")
    p.add_argument("name", help=f"one of: {', '.join(ZOO)}")
    p.add_argument("-o", "--output", type=Path, required=True, help="ONNX model to write (model.onnx)")
    p.add_argument("--masks", type=Path, help="also write PCONV masks here (masks.npz)")
    p.add_argument("--resolution", type=int, help="input height = width (default: the network's, 224; tiny_cnn 32)")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: the network's, 1000; tiny_cnn 10)")
    _pruning_arguments(p, keep_kernels=0.278)
    p.set_defaults(command=cmd_zoo)


def cmd_zoo(args) -> int:
    from sparsec.ir.files import write_atomically
    from sparsec.models import ZOO
    from sparsec.prune import prune_model, save_masks

    if args.name not in ZOO:
        raise UserError(f"unknown zoo model {args.name!r}; the zoo has: {', '.join(ZOO)}")
    too_small = args.resolution is not None and args.resolution < 32
    if too_small or (args.num_classes is not None and args.num_classes < 1):
        raise UserError(f"--resolution must be >= 32 and --num-classes >= 1 (got {args.resolution}, "
                        f"{args.num_classes})")
    _check_suffix(args.output, ".onnx")
    if args.masks:
        _check_suffix(args.masks, ".npz")
    check_paths([args.output, args.masks], [])
    shape = {k: v for k, v in (("resolution", args.resolution), ("num_classes", args.num_classes)) if v is not None}
    model = ZOO[args.name](**shape)
    masks = None
    if args.masks:
        masks = prune_model(model, patterns=args.patterns, keep_kernels=args.keep_kernels,
                            unstructured=args.unstructured, prune_first_conv=args.prune_first_conv,
                            kernel_groups=args.kernel_groups)
    write_atomically(args.output, lambda path: path.write_bytes(model.SerializeToString()))
    if masks is not None:
        save_masks(masks, args.masks)
    dims = lambda v: "x".join(str(d.dim_value) for d in v.type.tensor_type.shape.dim)  # noqa: E731
    print(f"wrote {args.output} ({args.name}: {dims(model.graph.input[0])} -> {dims(model.graph.output[0])})"
          + (f" and {args.masks} ({len(masks)} masked weights)" if masks is not None else ""))
    return 0


# --- sparsec targets ----------------------------------------------------------------------------


def _targets_parser(jobs) -> None:
    p = jobs.add_parser("targets", help="the targets sparsec compiles for and what each implies")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(command=cmd_targets)


def cmd_targets(args) -> int:
    import json

    from sparsec import target as targets
    from sparsec.lower.target import host

    listed = {"host": host(), "arm64": targets.arm64(), "mali": targets.gpu("mali"), "opencl": targets.gpu("opencl")}
    if args.json:
        print(json.dumps({name: t.to_dict() for name, t in listed.items()} | {"arm64 --cpu": list(targets.ARM_CPUS)},
                         indent=1))
        return 0
    for name, target in listed.items():
        title = {"host": f"host: this machine ({target.arch}, {target.cpu})",
                 "arm64": f"arm64: aarch64 + NEON, cross-compiled (--cpu, default {targets.ARM64_BASELINE})",
                 "mali": "mali: OpenCL kernels for a Mali GPU + aarch64 host code (kernels checked on PoCL)",
                 "opencl": "opencl: OpenCL 1.2 kernels for any OpenCL GPU + aarch64 host code"}[name]
        print(title)
        print("\n".join(f"  {line}" for line in targets.describe(target)))
    print("arm64 --cpu choices (core: ISA, L1d/L2, emulated as):")
    for cpu, core in targets.ARM_CPUS.items():
        print(f"  {cpu:12} {core.isa}, {core.l1d_kb}/{core.l2_kb} KiB, qemu {core.qemu_cpu}")
    print("--target-json JSON|FILE: sparsec's fields (isa, tvm, vector_registers, threads, cc, ...) "
          "or a raw TVM target")
    return 0


# --- sparsec farm -------------------------------------------------------------------------------


def _farm_parser(jobs) -> None:
    p = jobs.add_parser("farm", help="a local device farm: a TVM tracker and RPC servers on 127.0.0.1")
    actions = p.add_subparsers(required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start a tracker and N host / M emulated arm64 RPC servers")
    up.add_argument("--host", type=int, default=1, metavar="N", help="RPC servers on this CPU (default 1)")
    up.add_argument("--arm64", type=int, default=0, metavar="M", help="emulated arm64 servers (qemu-user)")
    up.add_argument("--tracker-port", type=int, metavar="P", help="the tracker's port (default: a free one)")
    up.add_argument("--host-key", default="host", help="key of the host servers (default host)")
    up.add_argument("--arm64-key", default="arm64", help="key of the arm64 servers (default arm64)")
    up.add_argument("--threads", type=int, help="threads per server (default: every core)")
    up.set_defaults(command=cmd_farm_up)
    status = actions.add_parser("status", help="the devices per key as the tracker sees them")
    status.set_defaults(command=cmd_farm_status)
    down = actions.add_parser("down", help="stop exactly what `farm up` started")
    down.set_defaults(command=cmd_farm_down)
    for action in (up, status, down):
        action.add_argument("--state-dir", type=Path, help="where the farm's state and logs live "
                            "(default $SPARSEC_FARM_DIR or build/farm)")


def _farm_dir(args) -> Path:
    from sparsec.runtime.farm import default_state_dir

    return args.state_dir or default_state_dir()


def cmd_farm_up(args) -> int:
    from sparsec.runtime import farm

    if args.host < 0 or args.arm64 < 0 or args.host + args.arm64 < 1:
        raise UserError("farm up: --host N and --arm64 M are counts, at least one device in all")
    counts = {kind: n for kind, n in (("host", args.host), ("arm64", args.arm64)) if n}
    state = farm.up(_farm_dir(args), counts, {"host": args.host_key, "arm64": args.arm64_key}, args.tracker_port,
                    args.threads)
    print(f"tracker 127.0.0.1:{state.tracker_port}")
    for proc in state.procs:
        if proc.role != "tracker":
            print(f"{proc.role} server key {proc.key} on 127.0.0.1:{proc.port} (pid {proc.pid})")
    print(f"tune with: sparsec tune MODEL.onnx --tracker 127.0.0.1:{state.tracker_port} --key KEY ...; "
          "stop with: sparsec farm down")
    return 0


def cmd_farm_status(args) -> int:
    from sparsec.runtime import farm

    print("\n".join(farm.status(_farm_dir(args))))
    return 0


def cmd_farm_down(args) -> int:
    from sparsec.runtime import farm

    stopped = farm.down(_farm_dir(args))
    print(f"stopped {len(stopped)} process group(s)")
    return 0


# --- sparsec tune --------------------------------------------------------------------------------


def _tune_parser(jobs) -> None:
    p = jobs.add_parser("tune", help="tune each layer's kernel knobs on the devices of a TVM tracker")
    p.add_argument("model", type=Path, help="ONNX model, or IR text (.sir)")
    p.add_argument("--masks", type=Path, help="pruning masks .npz keyed by initializer name")
    _target_arguments(p)
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224")
    p.add_argument("--tracker", required=True, metavar="HOST:PORT", help="the TVM tracker (`sparsec farm up`)")
    p.add_argument("--key", required=True, help="the devices' key at the tracker")
    p.add_argument("--trials", type=int, default=64, metavar="N",
                   help="trials per task in all, counting those the log holds (default 64)")
    p.add_argument("--log", type=Path, default=Path("tune.jsonl"), help="the tuning log (default tune.jsonl)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="seconds one trial may take on a device (default 60; phones: 60-180)")
    p.add_argument("--search", choices=("evolutionary", "random"), default="evolutionary")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--builders", type=int, metavar="J", help="candidates built at once here (default: cores, <= 4)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per trial (the median is kept; default 5)")
    p.add_argument("--min-repeat-ms", type=int, default=40, help="each timed run lasts at least this long")
    p.add_argument("--cooldown-ms", type=int, default=0, help="idle device time between runs (phones throttle)")
    p.add_argument("--confirm", type=int, default=3, metavar="K",
                   help="re-measure the K fastest and the default at the end of each task (default 3; 0: never)")
    p.add_argument("--no-overlap", action="store_true",
                   help="never build while devices measure (for devices that share this machine's cores)")
    p.add_argument("--plot", type=Path, metavar="TUNE.png", help="draw the best-so-far curve of each task")
    p.set_defaults(command=cmd_tune)


def cmd_tune(args) -> int:
    from sparsec.driver import optimize
    from sparsec.runtime.device import parse_tracker
    from sparsec.tuning.session import TuneOptions, plot, summary, tune_module

    target = resolve_target_args(args)
    if args.plot:
        _check_suffix(args.plot, ".png")
        check_paths([args.plot], [args.model, args.masks])
    options = TuneOptions(parse_tracker(args.tracker), args.key, args.trials, args.timeout, args.search, args.seed,
                          args.builders, args.repeat, args.min_repeat_ms, args.cooldown_ms, overlap=not args.no_overlap,
                          confirm=args.confirm)
    module = optimize(_load_source(args), target=target)
    try:
        results = tune_module(module, target, args.log, options)
    except KeyboardInterrupt:
        print(f"\nsparsec: interrupted; {args.log} holds every finished trial: run the same command again to "
              "continue", file=sys.stderr)
        return 130
    print(summary(results))
    if args.plot:
        plot(results, args.plot, f"sparsec tune {args.model.name} on {args.key} ({target.name})")
    print(f"apply with: sparsec compile {args.model} ... --target {target.name} --tuning-log {args.log} "
          f"--key {args.key}", file=sys.stderr)
    return 0


# --- sparsec calibrate --------------------------------------------------------------------------


def _calibrate_parser(jobs) -> None:
    p = jobs.add_parser("calibrate", help="measure the cost model's kernel throughputs on this machine")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per layer; medians (default 5)")
    p.add_argument("--threads", type=int, help="threads (default: TVM_NUM_THREADS, else every core)")
    p.add_argument("--target-json", metavar="JSON|FILE", help="calibrate another vector shape of this CPU "
                   "(e.g. '{\"isa\": \"avx2\"}'); default: the host target")
    p.set_defaults(command=cmd_calibrate)


def cmd_calibrate(args) -> int:
    import os

    if args.threads:
        os.environ["TVM_NUM_THREADS"] = str(args.threads)  # TVM reads it once, when its pool starts
    from sparsec.lower.target import host
    from sparsec.runtime.calibrate import calibrate

    calibrate(local_target_args(args, "calibrate") or host(args.threads), rounds=args.rounds)
    return 0


# --- sparsec fuzz --------------------------------------------------------------------------------


def _fuzz_parser(jobs) -> None:
    p = jobs.add_parser("fuzz", help="differential fuzzing: random small CNNs + masks, compiled and "
                        "compared with onnxruntime")
    p.add_argument("--seeds", type=int, default=100, metavar="N", help="how many cases (default 100)")
    p.add_argument("--start", type=int, default=0, metavar="S", help="first seed (default 0)")
    p.add_argument("--out", type=Path, default=Path("build/fuzz"),
                   help="folder for the failing cases' reproducers, OUT/seed-N/ (default build/fuzz)")
    p.add_argument("--target-json", metavar="JSON|FILE",
                   help="compile the cases for this target, one this machine runs (another vector shape of it: "
                        "AVX2 code on an AVX-512 CPU)")
    p.set_defaults(command=cmd_fuzz)


def cmd_fuzz(args) -> int:
    from sparsec.fuzz.runner import fuzz

    if args.seeds < 1 or args.start < 0:
        raise UserError(f"--seeds {args.seeds} --start {args.start}: need at least one seed and a start >= 0")
    summary = fuzz(range(args.start, args.start + args.seeds), args.out, log=lambda line: print(line, flush=True),
                   target=local_target_args(args, "fuzz"), target_json=args.target_json)
    for line in summary.causes():
        print(line)
    kept = summary.count("ok") < len(summary.outcomes)
    print(f"fuzz: {summary.seconds:.0f} s ({summary.seconds / len(summary.outcomes):.2f} s per case)"
          + (f"; reproducers in {args.out}/seed-N/" if kept else ""))
    print(summary.line())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
