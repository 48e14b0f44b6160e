"""The tuning figures of RESULTS.md, each from the real commands (`sparsec farm`, `sparsec tune`,
`sparsec compile --tuning-log`) on farms of this machine's 127.0.0.1:

    python benchmarks/bench_tuning.py quality gain scaling kill arm64      # each writes benchmarks/tuning/NAME.json
    python benchmarks/bench_tuning.py --write                              # the section of RESULTS.md from them

- quality: L1 and L2, 64 evolutionary trials vs 64 and 512 random (the 512 resume the 64's log); the
  winners and the default re-measured interleaved on the same device. One host device using both
  cores, builds never overlapping measurements (`--no-overlap`): the devices share this CPU.
- gain: L1 and L2 from `quality`; M1 (VGG-16) tuned with `--trials 16` per task, then the whole
  model compiled with and without `--tuning-log`, timed interleaved.
- scaling: wall time per trial with 1 and 3 host devices (one thread each) and a 250 ms cooldown
  between timed runs, as phones need: device time dominates, as on a farm of phones.
- kill: 3 devices, one killed (SIGKILL of its process group) mid-run; every trial must be logged once.
- arm64: the same flow against the emulated arm64 device (mechanics only: qemu's timings).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
OUT = HERE / "tuning"
PY = [sys.executable, "-m", "sparsec.cli"]
BEGIN, END = "<!-- tuning figures: benchmarks/bench_tuning.py --write -->", "<!-- /tuning -->"


def sh(args: list[str], **kw) -> tuple[float, subprocess.CompletedProcess]:
    print("$ sparsec " + " ".join(args), file=sys.stderr, flush=True)
    start = time.monotonic()
    done = subprocess.run([*PY, *args], text=True, capture_output=True, **kw)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.monotonic() - start, done


def records(log: Path) -> list[dict]:
    """The trials of a log in order (the tuner's confirmations left out)."""
    lines = log.read_text().splitlines() if log.exists() else []
    return [r for line in lines if not (r := json.loads(line)).get("confirm")]


class Farm:
    def __init__(self, folder: Path, *args: str):
        self.folder, self.args = folder, args

    def __enter__(self):
        _, done = sh(["farm", "up", "--state-dir", str(self.folder), *self.args])
        self.tracker = done.stdout.split()[1]
        self.state = json.loads((self.folder / "farm.json").read_text())
        return self

    def __exit__(self, *exc):
        sh(["farm", "down", "--state-dir", str(self.folder)])


def case_files(key: str, folder: Path) -> tuple[Path, Path]:
    from cases import CASE_BY_KEY

    from sparsec.prune import save_masks

    case = CASE_BY_KEY[key]
    model, masks = folder / f"{key}.onnx", folder / f"{key}.npz"
    if not model.exists():
        model.write_bytes(case.model.SerializeToString())
        save_masks(case.masks, masks)
    return model, masks


def remeasure(key: str, tracker: str, configs: dict[str, dict], rounds: int = 5) -> dict[str, float]:
    """Median over interleaved rounds of each named configuration of the case's one task."""
    import numpy as np
    from cases import CASE_BY_KEY

    from sparsec.driver import import_model, optimize
    from sparsec.ir.knobs import Knobs
    from sparsec.lower.target import host
    from sparsec.lower.tuning_build import LocalBuilder
    from sparsec.runtime.rpc_runner import RpcRunner, RunnerConfig
    from sparsec.tuning.task import extract_tasks

    target = host()
    case = CASE_BY_KEY[key]
    (task,) = extract_tasks(optimize(import_model(case.model, case.masks), target=target), target)
    host_, port = tracker.rsplit(":", 1)
    runner = RpcRunner(RunnerConfig(host_, int(port), "host", repeat=5, min_repeat_ms=100))
    times: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        builder = LocalBuilder(Path(tmp), 2)
        builds = {name: builder.submit(task, Knobs.of(knobs)).result() for name, knobs in configs.items()}
        for _ in range(rounds):
            for name, build in builds.items():
                times[name].append(runner.submit(build).result().median)
                time.sleep(0.2)
        builder.close()
    runner.close()
    return {name: float(np.median(t)) for name, t in times.items()}


def _ok(rs: list[dict]) -> list[dict]:
    return [x for x in rs if x["error"] is None]


def _best(rs: list[dict]) -> dict:
    return min(_ok(rs), key=lambda x: x["median_s"])


def _applied(log: Path, first: int | None = None) -> dict:
    """The record `compile --tuning-log` would apply from a log (or from its first trials only,
    with their confirmations when those trials were a whole run)."""
    from dataclasses import asdict

    from sparsec.tuning.log import TuningLog, best

    rs = TuningLog(log).records()
    if first is not None:
        cut = [i for i, r in enumerate(rs) if not r.confirm][first - 1] + 1 if len(records(log)) >= first else len(rs)
        while cut < len(rs) and rs[cut].confirm:  # the 64-trial run's own confirmations
            cut += 1
        rs = rs[:cut]
    return asdict(best(rs))


def quality(work: Path) -> dict:
    result = _load("quality") or {}  # cases measured by earlier runs stay
    with Farm(work / "farm-q", "--host", "1") as farm:
        for key in SETTINGS["cases"]:
            model, masks = case_files(key, work)
            base = [str(model), "--masks", str(masks), "--tracker", farm.tracker, "--key", "host", "--no-overlap",
                    "--repeat", "7"]
            evo, rnd = work / f"{key}-evo.jsonl", work / f"{key}-random.jsonl"
            t_evo, _ = sh(["tune", *base, "--trials", "64", "--log", str(evo), "--plot", str(OUT / f"{key}-evo.png")])
            t_r64, _ = sh(["tune", *base, "--search", "random", "--trials", "64", "--log", str(rnd)])
            t_r512 = 0.0
            if key in SETTINGS["reference"]:
                t_r512, _ = sh(["tune", *base, "--search", "random", "--trials", str(SETTINGS["reference_trials"]),
                                "--log", str(rnd)])
            e, r = records(evo), records(rnd)
            # what `compile --tuning-log` applies: the median over each configuration's trial and confirmations
            picks = {"default": e[0], "evolutionary-64": _applied(evo), "random-64": _applied(rnd, 64)}
            if len(r) > 64:
                picks["random-512"] = _applied(rnd)
            again = remeasure(key, farm.tracker, {name: rec["knobs"] for name, rec in picks.items()})
            result[key] = {"logged_ms": {name: rec["median_s"] * 1e3 for name, rec in picks.items()},
                           "remeasured_ms": {k: v * 1e3 for k, v in again.items()},
                           "knobs": {name: rec["knobs"] for name, rec in picks.items()},
                           "failed": {"evolutionary": len(e) - len(_ok(e)), "random": len(r) - len(_ok(r))},
                           "wall_s": {"evolutionary-64": t_evo, "random-64": t_r64, "random-512 (resumed)": t_r512},
                           "trials": {"evolutionary": len(e), "random": len(r)}, "reference_trials": len(r)}
            (OUT / "quality.json").write_text(json.dumps(result, indent=1))
    return result


def _time_models(paths: dict[str, Path], rounds: int = 9) -> dict[str, float]:
    os.environ["TVM_NUM_THREADS"] = "2"
    import numpy as np

    import sparsec

    models = {name: sparsec.load(path) for name, path in paths.items()}
    spec = next(iter(models.values())).manifest.inputs[0]
    x = {spec.name: np.random.default_rng(0).standard_normal(spec.shape).astype(np.float32)}
    times: dict[str, list[float]] = {name: [] for name in models}
    for m in models.values():
        m.run(x)
    for _ in range(rounds):
        for name, m in models.items():
            start = time.perf_counter()
            for _ in range(3):
                m.run(x)
            times[name].append((time.perf_counter() - start) / 3)
            time.sleep(0.3)
    return {name: float(np.median(t)) * 1e3 for name, t in times.items()}


def gain(work: Path) -> dict:
    result = {}
    model, masks = case_files("M1", work)
    log = work / "M1.jsonl"
    with Farm(work / "farm-g", "--host", "1") as farm:
        wall, _ = sh(["tune", str(model), "--masks", str(masks), "--tracker", farm.tracker, "--key", "host",
                      "--no-overlap", "--trials", str(SETTINGS["m1_trials"]), "--log", str(log),
                      "--plot", str(OUT / "M1.png")])
    default, tuned = work / "M1-default.so", work / "M1-tuned.so"
    sh(["compile", str(model), "--masks", str(masks), "-o", str(default)])
    _, done = sh(["compile", str(model), "--masks", str(masks), "-o", str(tuned), "--tuning-log", str(log),
                  "--key", "host"])
    result["M1"] = {"tune_wall_s": wall, "trials": len(records(log)), "trials_per_task": SETTINGS["m1_trials"],
                    "compile_message": done.stderr.strip()
                    .splitlines()[0], "ms": _time_models({"default": default, "tuned": tuned})}
    (OUT / "gain.json").write_text(json.dumps(result, indent=1))
    return result


def _layer(work: Path) -> tuple[Path, Path]:
    from sparsec.models import conv_layer
    from sparsec.prune import prune_model, save_masks

    model, masks = work / "small.onnx", work / "small.npz"
    onnx_model = conv_layer((1, 64, 14, 14), 64)
    model.write_bytes(onnx_model.SerializeToString())
    save_masks(prune_model(onnx_model, keep_kernels=0.5, prune_first_conv=True), masks)
    return model, masks


def scaling(work: Path) -> dict:
    model, masks = _layer(work)
    result = {}
    for devices in (1, 3):
        with Farm(work / f"farm-s{devices}", "--host", str(devices), "--threads", "1") as farm:
            log = work / f"scaling-{devices}.jsonl"
            log.unlink(missing_ok=True)  # a fresh run: a finished log would measure nothing
            wall, _ = sh(["tune", str(model), "--masks", str(masks), "--tracker", farm.tracker, "--key", "host",
                          "--trials", "30", "--repeat", "3", "--cooldown-ms", "1000", "--log", str(log)])
            rs = records(log)
            stamps = [time.mktime(time.strptime(r["time"], "%Y-%m-%dT%H:%M:%SZ")) for r in rs]
            result[devices] = {"wall_s": wall, "trials": len(rs), "per_trial_s": wall / len(rs),
                               "steady_per_trial_s": (stamps[-1] - stamps[5]) / (len(rs) - 6),
                               "devices_used": len({r["device"] for r in rs})}
    result["speedup"] = result[1]["per_trial_s"] / result[3]["per_trial_s"]
    result["steady_speedup"] = result[1]["steady_per_trial_s"] / result[3]["steady_per_trial_s"]
    (OUT / "scaling.json").write_text(json.dumps(result, indent=1))
    return result


def kill(work: Path) -> dict:
    model, masks = _layer(work)
    log = work / "kill.jsonl"
    log.unlink(missing_ok=True)
    with Farm(work / "farm-k", "--host", "3", "--threads", "1") as farm:
        args = [*PY, "tune", str(model), "--masks", str(masks), "--tracker", farm.tracker, "--key", "host",
                "--trials", "30", "--cooldown-ms", "150", "--log", str(log)]
        proc = subprocess.Popen(args, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while len(records(log)) < 10:
            time.sleep(0.1)
        victim = next(p for p in farm.state["procs"] if p["role"] == "host")
        os.killpg(victim["pid"], signal.SIGKILL)
        killed_at = len(records(log))
        _, err = proc.communicate()
    rs = records(log)
    keys = [(r["task"], json.dumps(r["knobs"], sort_keys=True)) for r in rs]
    result = {"trials": len(rs), "distinct": len(set(keys)), "errors": sum(r["error"] is not None for r in rs),
              "killed_after": killed_at, "exit": proc.returncode, "killed_device": f"127.0.0.1:{victim['port']}",
              "trials_per_device": {d: sum(r["device"] == d for r in rs) for d in sorted({r["device"] for r in rs})}}
    (OUT / "kill.json").write_text(json.dumps(result, indent=1))
    return result


def arm64(work: Path) -> dict:
    model, masks = _layer(work)
    log = work / "arm64.jsonl"
    log.unlink(missing_ok=True)
    with Farm(work / "farm-a", "--arm64", "1", "--host", "0", "--threads", "1") as farm:
        args = [str(model), "--masks", str(masks), "--target", "arm64"]
        wall, _ = sh(["tune", *args, "--tracker", farm.tracker, "--key", "arm64", "--trials", "8", "--timeout", "180",
                      "--log", str(log)])
        _, done = sh(["compile", *args, "--tuning-log", str(log), "--tracker", farm.tracker, "--key", "arm64",
                      "-o", str(work / "arm64.so"), "--check"])
    rs = records(log)
    result = {"trials": len(rs), "errors": sum(r["error"] is not None for r in rs), "wall_s": wall,
              "check": [line for line in done.stdout.splitlines() if line.startswith("check")],
              "best_ms": min(r["median_s"] for r in rs if r["error"] is None) * 1e3,
              "default_ms": rs[0]["median_s"] * 1e3}
    (OUT / "arm64.json").write_text(json.dumps(result, indent=1))
    return result


# --- RESULTS.md ----------------------------------------------------------------------------------


def _load(name: str) -> dict | None:
    path = OUT / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _quality_lines(q: dict) -> list[str]:
    lines = ["### Search quality: 64 trials per task (L1, L2)", "",
             "`sparsec tune CASE.onnx --masks CASE.npz --tracker T --key host --no-overlap --repeat 7 --trials 64 "
             "[--search random] --log LOG` on one host device (both cores); random 512 resumes random 64's log "
             "(`--trials 512`). Each search's winner is what `compile --tuning-log` applies (the median over a "
             "configuration's trial and the tuner's confirmations); the winners and the default re-measured "
             "interleaved (medians of 5 rounds, or of the rounds a row names):", "",
             "| case | default | evolutionary 64 | random 64 | random reference (N trials) | evo vs reference | "
             "gain over default |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key, r in q.items():
        m = r["remeasured_ms"]
        ref = f"{m['random-512']:.2f} ms ({r['reference_trials']})" if "random-512" in m else "not run"
        versus = f"{m['evolutionary-64'] / m['random-512'] - 1:+.1%}" if "random-512" in m else "-"
        rounds = f" ({r['remeasure_rounds']} rounds)" if "remeasure_rounds" in r else ""
        lines.append(f"| {key}{rounds} | {m['default']:.2f} ms | {m['evolutionary-64']:.2f} ms | "
                     f"{m['random-64']:.2f} ms | {ref} | {versus} | {m['default'] / m['evolutionary-64']:.2f}x |")
    lines += ["", "As the log holds them (the median over each configuration's records, as `compile --tuning-log` "
              "reads them):", "",
              "| case | default | evolutionary 64 | random 64 | random reference | wall time evo 64 / random |",
              "|---|---:|---:|---:|---:|---|"]
    for key, r in q.items():
        m, w = r["logged_ms"], r["wall_s"]
        ref = f"{m['random-512']:.2f} ms" if "random-512" in m else "not run"
        lines.append(f"| {key} | {m['default']:.2f} ms | {m['evolutionary-64']:.2f} ms | {m['random-64']:.2f} ms | "
                     f"{ref} | {w['evolutionary-64']:.0f} s / {w['random-64'] + w['random-512 (resumed)']:.0f} s |")
    lines += [""] + [f"- {key} winners: evolutionary `{r['knobs']['evolutionary-64']}`, best random "
                     f"`{r['knobs'].get('random-512', r['knobs']['random-64'])}`, default `{r['knobs']['default']}`"
                     for key, r in q.items()]
    return lines + [""]


def _other_lines(gain: dict | None, scaling: dict | None, kill: dict | None, arm: dict | None) -> list[str]:
    lines = []
    if gain:
        g = gain["M1"]
        lines += ["### Whole model: M1 (VGG-16 224, PCONV masks)", "",
                  f"`sparsec tune M1.onnx --masks M1.npz --tracker T --key host --no-overlap --trials "
                  f"{g['trials_per_task']}` "
                  f"({g['trials']} trials over its tasks, {g['tune_wall_s'] / 60:.0f} min), then `sparsec compile` "
                  f"with and without `--tuning-log` ({g['compile_message']}); the two libraries timed interleaved "
                  f"(9 rounds, median): default {g['ms']['default']:.1f} ms, tuned {g['ms']['tuned']:.1f} ms "
                  f"({g['ms']['default'] / g['ms']['tuned']:.2f}x).", ""]
    if scaling:
        one, three = scaling["1"], scaling["3"]
        lines += ["### Devices in parallel", "",
                  "`sparsec farm up --host N --threads 1`, then `sparsec tune small.onnx --trials 30 --repeat 3 "
                  "--cooldown-ms 1000` (a 64->64 3x3 pattern layer at 14x14; a second of idle device between timed "
                  "runs stands for a phone's cooldown and slow link): device time dominates, as on a farm of phones. "
                  "Devices that share this 2-core CPU cannot time CPU-bound kernels in parallel without disturbing "
                  "each other, so the idle time is what scales here; the builds (2 at a time, here) are the other "
                  "half of a trial. Steady state: from the 6th record to the last.", "",
                  "| devices | trials | wall time of `tune` | per trial | per trial, steady state |",
                  "|---:|---:|---:|---:|---:|",
                  f"| 1 | {one['trials']} | {one['wall_s']:.1f} s | {one['per_trial_s']:.2f} s | "
                  f"{one['steady_per_trial_s']:.2f} s |",
                  f"| 3 | {three['trials']} | {three['wall_s']:.1f} s | {three['per_trial_s']:.2f} s | "
                  f"{three['steady_per_trial_s']:.2f} s |", "",
                  f"3 devices: {scaling['speedup']:.2f}x less wall time per trial ({scaling['steady_speedup']:.2f}x "
                  "in the steady state).", ""]
    if kill:
        lines += ["### A device killed mid-run", "",
                  f"3 devices, `--trials 30 --cooldown-ms 150`; after {kill['killed_after']} records the server "
                  f"{kill['killed_device']} was killed (SIGKILL of its process group). The run exited "
                  f"{kill['exit']} with {kill['trials']} records, {kill['distinct']} distinct configurations, "
                  f"{kill['errors']} errors; trials per device: {kill['trials_per_device']}.", ""]
    if arm:
        lines += ["### The emulated arm64 device (mechanics only)", "",
                  "`sparsec farm up --arm64 1`, `sparsec tune small.onnx --target arm64 --key arm64 --trials 8`, "
                  f"`sparsec compile --target arm64 --tuning-log ... --check`: {arm['trials']} trials, "
                  f"{arm['errors']} errors, {arm['wall_s']:.0f} s; default {arm['default_ms']:.2f} ms, best "
                  f"{arm['best_ms']:.2f} ms under qemu (emulation speed, not a phone's); "
                  f"{'; '.join(arm['check'])}.", ""]
    return lines


def _verdicts(q: dict | None, gain: dict | None, scaling: dict | None, kill: dict | None) -> list[str]:
    """The issue's targets, each with what was measured (met, not met, or not run)."""
    lines = ["### Against the targets", ""]
    if q:
        for key, r in q.items():
            m = r["remeasured_ms"]
            ref = (f"{m['evolutionary-64'] / m['random-512'] - 1:+.1%} against the best of {r['reference_trials']} "
                   "random") if "random-512" in m else "the 512-random reference was not run (`--reference L1,L2`)"
            same = [name for name in ("random-64", "random-512", "default")
                    if r["knobs"].get(name) == r["knobs"]["evolutionary-64"]]
            alike = (f" (evolutionary 64 applies the same configuration as {', '.join(same)}: their difference "
                     "is re-measurement noise)") if same else ""
            lines.append(f"- {key}: evolutionary 64 vs random 64, re-measured side by side: "
                         f"{m['random-64'] / m['evolutionary-64']:.2f}x faster; {ref}; tuned vs default "
                         f"{m['default'] / m['evolutionary-64']:.2f}x{alike}.")
    if gain:
        g = gain["M1"]["ms"]
        lines.append(f"- M1: tuned vs default {g['default'] / g['tuned']:.2f}x (whole model).")
    if scaling:
        verdict = "met" if scaling["speedup"] >= 2 else "NOT met"
        lines.append(f"- 3 devices vs 1: {scaling['speedup']:.2f}x per trial "
                     f"({scaling['steady_speedup']:.2f}x steady): the 2x target {verdict}.")
    if kill:
        ok = kill["trials"] == kill["distinct"] == 30 and kill["errors"] == 0 and kill["exit"] == 0
        lines.append(f"- A server killed mid-run: {'every trial logged once' if ok else 'NOT clean'} "
                     f"({kill['trials']} trials, {kill['distinct']} distinct, {kill['errors']} errors).")
    return lines + [""]


def write_section(path: Path) -> None:
    """Replace (or add) the tuning section of RESULTS.md from benchmarks/tuning/*.json."""
    import platform

    cpu = "AMD EPYC, AVX-512, 2 cores, shared with other engineers' builds (noisy)"
    lines = [BEGIN, "", "## Tuning (`sparsec tune`)", "",
             f"Written by `python benchmarks/bench_tuning.py --write` from `benchmarks/tuning/*.json` "
             f"(`python benchmarks/bench_tuning.py quality gain scaling kill arm64`). Machine: {cpu}; "
             f"{platform.platform()}. Devices are TVM RPC servers on 127.0.0.1 (`sparsec farm up`).", ""]
    quality_data = _load("quality")
    if quality_data:
        lines += _quality_lines(quality_data)
    lines += _other_lines(_load("gain"), _load("scaling"), _load("kill"), _load("arm64"))
    lines += _verdicts(quality_data, _load("gain"), _load("scaling"), _load("kill"))
    notes = HERE / "tuning" / "NOTES.md"  # what the numbers mean on this machine, by hand
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    section = "\n".join(lines + [END])
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


SETTINGS = {"cases": ("L1", "L2"), "reference": ("L1", "L2"), "m1_trials": 16, "reference_trials": 512}
FIGURES = {"quality": quality, "gain": gain, "scaling": scaling, "kill": kill, "arm64": arm64}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("figures", nargs="*", help=f"any of {', '.join(FIGURES)}")
    p.add_argument("--write", action="store_true", help="write RESULTS.md's tuning section from benchmarks/tuning/")
    p.add_argument("--work", type=Path, help="where logs and farms go (default: a temporary folder)")
    p.add_argument("--cases", default="L1,L2", help="quality: the cases (default L1,L2)")
    p.add_argument("--reference", default="L1,L2", help="quality: the cases that also get 512 random trials")
    p.add_argument("--reference-trials", type=int, default=512, help="quality: random trials of the reference")
    p.add_argument("--m1-trials", type=int, default=16, help="gain: trials per task of M1 (default 16)")
    args = p.parse_args()
    SETTINGS.update(cases=tuple(args.cases.split(",")), reference=tuple(args.reference.split(",")),
                    m1_trials=args.m1_trials, reference_trials=args.reference_trials)
    unknown = sorted(set(args.figures) - set(FIGURES))
    if unknown:
        p.error(f"unknown figures {unknown}; choose from {', '.join(FIGURES)}")
    OUT.mkdir(exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="sparsec-bench-tuning-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in args.figures:
        print(json.dumps(FIGURES[name](work), indent=1))
    if args.write:
        write_section(HERE / "RESULTS.md")


if __name__ == "__main__":
    main()
