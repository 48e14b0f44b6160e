"""The tuning loop over a builder and a runner (the TVM shape), one task after another.

Per task: 1. rebuild the search from the log's records of the task and device key (resume:
`trials` counts them, configurations already there are never measured again)  2. measure the
default (the reference output every candidate must match; on resume it is run again, unlogged)
3. keep the builder and every device busy: propose, build locally, measure remotely, append each
record to the log as it lands  4. stop at `trials` records, or when the space is exhausted
5. if this run measured anything, re-measure the few fastest and the default, interleaved
(`confirm` records, not trials): one lucky measurement on a noisy device does not win alone.
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparsec.ir.knobs import Knobs
from sparsec.tuning.log import Record, TuningLog, best, matching
from sparsec.tuning.search import SEARCHES
from sparsec.tuning.space import Space
from sparsec.tuning.task import Task

POLL_S = 0.25


@dataclass
class TaskResult:
    """How one task went: its trials in log order (best so far after each), default and best."""

    task: Task
    trials: int = 0
    failed: int = 0
    default_s: float | None = None
    best_s: float | None = None
    best: Knobs | None = None
    curve: list[float] = field(default_factory=list)  # best seconds so far after each successful trial
    new: int = 0  # trials measured by this run

    def add(self, record: Record, space: Space) -> None:
        self.trials += 1
        if not record.ok:
            self.failed += 1
            return
        if record.config == space.default:
            self.default_s = record.median_s
        if self.best_s is None or record.median_s < self.best_s:
            self.best_s, self.best = record.median_s, record.config
        self.curve.append(self.best_s)


class Tuner:
    """Tunes `tasks` (with their spaces) through `builder` and `runner`, logging to `log`."""

    def __init__(self, log: TuningLog, builder, runner, trials: int, search: str = "evolutionary", seed: int = 0,
                 progress=None, check: bool = True, overlap: bool = True, confirm: int = 3):
        self.log, self.builder, self.runner = log, builder, runner
        self.trials, self.search, self.seed, self.check = trials, search, seed, check
        self.overlap = overlap  # build while devices measure (devices that share this CPU: don't)
        self.confirm = confirm  # the best few re-measured with the default at the end of a task
        self.progress = progress

    def run(self, tasks: list[tuple[Task, Space]]) -> list[TaskResult]:
        results = []
        for index, (task, space) in enumerate(tasks):
            results.append(self.tune_task(task, space, index, len(tasks)))
        return results

    def tune_task(self, task: Task, space: Space, index: int = 0, count: int = 1) -> TaskResult:
        result, search = TaskResult(task), SEARCHES[self.search](space, self.seed)
        for record in matching(self.log.records(), task.key, self.runner.device_key):  # 1. resume
            if not record.confirm and record.config not in search.seen():
                search.observe(record.config, record.median_s if record.ok else None)
                result.add(record, space)
        if result.trials < self.trials and search.propose(1):
            self._show(result, index, count)
            reference = self._reference(task, space, search, result, index, count)  # 2. the default
            self._pipeline(task, space, search, result, reference, index, count)  # 3.
            if result.new and self.confirm:
                self._confirm(task, space, result)  # 5.
        self._show(result, index, count, final=True)
        return result

    def _confirm(self, task: Task, space: Space, result: TaskResult, rounds: int = 2) -> None:
        """5. The `confirm` fastest configurations and the default measured again, interleaved
        (records marked confirm): the best of the log is then a median over several measurements."""
        records = [r for r in matching(self.log.records(), task.key, self.runner.device_key) if r.ok]
        ranked = sorted({r.config: r.median_s for r in records if not r.confirm}.items(), key=lambda kv: kv[1])
        configs = [c for c, _ in ranked[: self.confirm]]
        configs += [space.default] if space.default not in configs and any(r.config == space.default
                                                                           for r in records) else []
        builds = [_result(self.builder.submit(task, c)) for c in configs]
        for _ in range(rounds):
            for build in builds:
                if build.error is None:
                    measured = _result(self.runner.submit(build))
                    if measured.error is None:
                        self.log.append(Record(task.key, task.generator, task.target.name, self.runner.device_key,
                                               build.config.as_dict(), measured.median, measured.spread,
                                               len(measured.times), measured.device, confirm=True,
                                               baseline=build.config == space.default))
        for build in builds:
            _remove(build)
        final = matching(self.log.records(), task.key, self.runner.device_key)
        top = best(final)
        result.best, result.best_s = top.config, top.median_s
        default = best([r for r in final if r.config == space.default])
        result.default_s = default.median_s if default else result.default_s

    def _reference(self, task, space, search, result, index, count) -> np.ndarray | None:
        """The default's output, measuring (and logging) the default if the log lacks it."""
        if space.default in search.seen() and not self.check:
            return None
        build = _result(self.builder.submit(task, space.default))
        if build.error:
            self._record(task, space, search, result, build.config, error=build.error)
            return None
        measured = _result(self.runner.submit(build))
        _remove(build)
        if space.default not in search.seen():
            self._record(task, space, search, result, build.config, measured, measured.error)
            self._show(result, index, count)
        return measured.output if measured.error is None and self.check else None

    def _pipeline(self, task, space, search, result, reference, index, count) -> None:
        capacity = self.runner.slots + self.builder.workers
        pending: dict[Future, tuple[str, Knobs, object]] = {}
        built: list = []  # built candidates waiting for a device (without overlap: for the batch's last build)
        while True:
            in_flight = {c for _, c, _ in pending.values()} | {c for c, _ in built}
            room = min(self.trials - result.trials, capacity) - len(in_flight)
            if room > 0 and (self.overlap or not in_flight):
                for config in search.propose(room, in_flight):
                    pending[self.builder.submit(task, config)] = ("build", config, None)
            if not pending and not built:
                return  # 4. done, or the space holds nothing left to try
            if built and (self.overlap or not any(stage == "build" for stage, _, _ in pending.values())):
                for config, build in built:
                    pending[self.runner.submit(build)] = ("run", config, build)
                built.clear()
            finished, _ = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for future in finished:
                stage, config, build = pending.pop(future)
                if stage == "build":
                    build = future.result()
                    if build.error:
                        self._record(task, space, search, result, config, error=build.error)
                    else:
                        built.append((config, build))
                    continue
                measured = future.result()
                _remove(build)
                error = measured.error or _mismatch(measured.output, reference)
                self._record(task, space, search, result, config, measured, error)
            self._show(result, index, count)

    def _record(self, task, space, search, result, config: Knobs, measured=None, error: str | None = None) -> None:
        ok = error is None and measured is not None
        record = Record(task.key, task.generator, task.target.name, self.runner.device_key, config.as_dict(),
                        measured.median if ok else None, measured.spread if ok else None,
                        len(measured.times) if ok else 0, measured.device if measured else "", error=error)
        self.log.append(record)
        search.observe(config, record.median_s)
        result.add(record, space)
        result.new += 1

    def _show(self, result: TaskResult, index: int, count: int, final: bool = False) -> None:
        if self.progress is not None:
            self.progress.update(result, index, count, self.trials, final)


def _result(future: Future):
    """The future's result, waiting in short steps: Ctrl-C reaches the main thread at once even
    when the signal landed on another thread."""
    while True:
        try:
            return future.result(timeout=POLL_S)
        except TimeoutError:
            continue


def _mismatch(output: np.ndarray | None, reference: np.ndarray | None) -> str | None:
    """Why a candidate's output is not the default's (None when it matches or there is nothing to compare)."""
    if output is None or reference is None:
        return None
    if output.shape != reference.shape:
        return f"wrong result: shape {output.shape}, the default's is {reference.shape}"
    scale = float(np.max(np.abs(reference))) or 1.0
    worst = float(np.max(np.abs(output - reference))) / scale
    return None if worst <= 1e-4 else f"wrong result: differs from the default's by {worst:.2e} of its largest value"


def _remove(build) -> None:
    for path in (build.library, build.arrays):
        if path:
            Path(path).unlink(missing_ok=True)


def seconds(value: float) -> str:
    """A kernel time in readable units."""
    return f"{value * 1e6:.1f} us" if value < 1e-3 else f"{value * 1e3:.3f} ms"


class Progress:
    """A progress bar per task on stderr: trials done of the total, best so far against the default."""

    def __init__(self, stream, width: int = 24):
        self.stream, self.width = stream, width
        self.tty = stream.isatty()
        self._last: tuple | None = None

    def update(self, result: TaskResult, index: int, count: int, trials: int, final: bool = False) -> None:
        done = min(result.trials, trials)
        filled = self.width * done // max(trials, 1)
        bar = "#" * filled + "." * (self.width - filled)
        best = f"best {seconds(result.best_s)}" if result.best_s else "best -"
        gain = f" ({result.default_s / result.best_s:.2f}x default {seconds(result.default_s)})" \
            if result.default_s and result.best_s else ""
        failed = f", {result.failed} failed" if result.failed else ""
        exhausted = " (space exhausted)" if final and done < trials else ""
        line = f"[{index + 1}/{count}] {result.task} [{bar}] {done}/{trials}{exhausted} {best}{gain}{failed}"
        if final and self._last == (index, "final"):
            return
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        elif final or (done < trials and (self._last is None or self._last[0] != index
                                          or done - self._last[1] >= max(1, trials // 4))):
            self.stream.write(line + "\n")
        else:
            return
        self._last = (index, "final") if final else (index, done)
        self.stream.flush()

    def end(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
