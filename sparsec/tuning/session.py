"""`sparsec tune` as a library call: a module's tasks tuned on the devices of one key at a tracker,
every trial in the log; plus the summary table and the best-so-far plot."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sparsec.errors import UserError
from sparsec.ir.module import Module
from sparsec.target import Target
from sparsec.tuning.log import TuningLog
from sparsec.tuning.task import extract_tasks
from sparsec.tuning.tuner import Progress, TaskResult, Tuner


@dataclass(frozen=True)
class TuneOptions:
    """What `sparsec tune` was asked: devices, budget, search, timing."""

    tracker: tuple[str, int]
    key: str
    trials: int = 64
    timeout_s: float = 60.0
    search: str = "evolutionary"
    seed: int = 0
    builders: int | None = None
    repeat: int = 5
    min_repeat_ms: int = 40
    cooldown_ms: int = 0
    check: bool = True
    overlap: bool = True  # build while devices measure (False: devices sharing this machine's cores)
    confirm: int = 3  # the fastest few re-measured with the default at the end of each task


def tune_module(module: Module, target: Target, log_path: Path, options: TuneOptions,
                progress: Progress | None = None) -> list[TaskResult]:
    """Tune every task of an optimised module (see `sparsec.tuning.tuner`); Ctrl-C stops it with
    a valid log (KeyboardInterrupt propagates after the workers are stopped)."""
    from sparsec.lower.spaces import space_for
    from sparsec.lower.tuning_build import LocalBuilder
    from sparsec.runtime.rpc_runner import RpcRunner, RunnerConfig

    if options.trials < 1:
        raise UserError(f"--trials {options.trials}: must be at least 1")
    log = TuningLog(log_path)
    log.records()  # a log that is not one fails before any work
    tasks = [(task, space_for(task.call, target)) for task in extract_tasks(module, target)]
    config = RunnerConfig(*options.tracker, options.key, options.timeout_s, options.repeat, options.min_repeat_ms,
                          options.cooldown_ms)
    runner = RpcRunner(config)  # an unreachable tracker or an unknown key is one clear error here
    # the builders are stopped before the folder goes; a linker they started may still write a file
    # into it, which must not replace the run's own outcome (Ctrl-C's message) with a cleanup error
    with tempfile.TemporaryDirectory(prefix="sparsec-tune-", ignore_cleanup_errors=True) as tmp:
        builder = LocalBuilder(Path(tmp), options.builders)
        try:
            tuner = Tuner(log, builder, runner, options.trials, options.search, options.seed,
                          progress or Progress(sys.stderr), options.check, options.overlap, options.confirm)
            return tuner.run(tasks)
        finally:
            try:
                runner.close()
            finally:
                builder.close()


def summary(results: list[TaskResult]) -> str:
    """One line per task: layers, trials, default and best time, gain."""
    lines = ["task              generator     layers  trials  failed  default ms   best ms  gain"]
    for r in results:
        default = f"{r.default_s * 1e3:.4f}" if r.default_s else "-"
        best = f"{r.best_s * 1e3:.4f}" if r.best_s else "-"
        gain = f"{r.default_s / r.best_s:.2f}x" if r.default_s and r.best_s else "-"
        lines.append(f"{r.task.key}  {r.task.generator:12}  {len(r.task.layers):6}  {r.trials:6}  {r.failed:6}  "
                     f"{default:>10}  {best:>8}  {gain}")
    return "\n".join(lines)


def plot(results: list[TaskResult], path: Path, title: str = "") -> None:
    """The best-so-far time per task (relative to the task's default) against successful trials."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'sparsec[tune]'") from None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for r in results:
        if r.curve:
            base = r.default_s or r.curve[0]
            ax.plot(range(1, len(r.curve) + 1), [base / t for t in r.curve], label=f"%{r.task.layers[0]} "
                    f"({r.task.generator})")
    ax.set_xlabel("successful trials")
    ax.set_ylabel("best so far: speed-up over the default")
    ax.set_title(title or "sparsec tune: best so far per task")
    ax.grid(alpha=0.3)
    if len(results) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
