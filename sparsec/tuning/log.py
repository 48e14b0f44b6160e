"""The tuning log: the database of measured trials, one JSON object per line.

    {"task": "fa67c2585e0d3b1a", "generator": "pattern_conv", "target": "host", "device_key": "host",
     "knobs": {"rows_per_step": 14, ...}, "median_s": 0.0071, "spread_s": 0.0002, "runs": 5,
     "device": "127.0.0.1:9191", "time": "2026-12-02T10:00:00Z", "error": null}

A record with `"confirm": true` re-measures a configuration already tried (the tuner's last step
per task: the few fastest and the default again, side by side); it is not a trial, and the
default's confirmations say `"baseline": true`. A configuration's time is the median over its
records. A record with an `error` is a configuration that failed (it did not build, crashed or hung on
two devices, or computed something else); it is never proposed again. Each record is appended
with one `write` of a whole line on a file opened for appending, then flushed to disk, so a crash
or Ctrl-C leaves at worst a torn last line: readers skip it with a warning, and the next writer
cuts it off before appending.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import median

from sparsec.errors import UserError
from sparsec.ir.knobs import Knobs


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Record:
    """One measured trial (see the module docstring); `median_s` is None when it failed."""

    task: str
    generator: str
    target: str
    device_key: str
    knobs: dict
    median_s: float | None = None
    spread_s: float | None = None  # max - min over the runs
    runs: int = 0
    device: str = ""  # the RPC server (host:port as the tracker knows it) that measured it
    time: str = field(default_factory=_now)
    error: str | None = None
    confirm: bool = False  # a re-measurement of a configuration already tried (not a trial)
    baseline: bool = False  # a confirmation of the generator's default configuration

    @property
    def ok(self) -> bool:
        return self.error is None and self.median_s is not None

    @property
    def config(self) -> Knobs:
        return Knobs.of(self.knobs)

    def to_line(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> Record:
        if not isinstance(data, dict) or not {"task", "generator", "target", "device_key", "knobs"} <= set(data):
            raise ValueError("not a tuning record (needs task, generator, target, device_key, knobs)")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def _warn(message: str) -> None:
    print(f"sparsec: warning: {message}", file=sys.stderr)


class TuningLog:
    """A JSON-lines tuning log at `path` (see the module docstring); safe to append from threads."""

    def __init__(self, path: str | os.PathLike, warn: Callable[[str], None] = _warn):
        self.path, self.warn = Path(path), warn
        self._lock = threading.Lock()

    def records(self) -> list[Record]:
        """Every whole record; a torn last line is skipped with a warning, any other bad line is
        a user error naming it."""
        if not self.path.exists():
            return []
        try:
            data = self.path.read_bytes()
        except OSError as err:
            raise UserError(f"{self.path}: cannot read the tuning log ({err})") from None
        lines = data.split(b"\n")
        torn = lines.pop()  # after the last newline: empty unless the last write was cut
        records = [self._parse(line, number) for number, line in enumerate(lines, 1) if line.strip()]
        if torn.strip():
            self.warn(f"{self.path}: line {len(lines) + 1} is torn (an interrupted write); skipped")
        return records

    def _parse(self, line: bytes, number: int) -> Record:
        try:
            return Record.from_dict(json.loads(line))
        except ValueError as err:
            raise UserError(f"{self.path}:{number}: not a tuning record ({err}); is this a sparsec tuning log?") \
                from None

    def append(self, record: Record) -> None:
        """Add one record: a single write of a whole line, flushed to disk before returning."""
        line = record.to_line().encode()
        with self._lock:
            if not self.path.parent.is_dir():
                raise UserError(f"{self.path}: cannot write the tuning log, "
                                f"the folder {self.path.parent} does not exist")
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                self._cut_torn_tail(fd)
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def _cut_torn_tail(self, fd: int) -> None:
        """A last line without its newline (an interrupted write) is cut off, so the new record
        starts a line of its own."""
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        at = size
        while at > 0:
            chunk = os.pread(fd, min(4096, at), max(0, at - 4096))
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                at = at - len(chunk) + newline + 1
                break
            at -= len(chunk)
        self.warn(f"{self.path}: cutting off a torn last line ({size - at} bytes) before appending")
        os.ftruncate(fd, at)


def matching(records: list[Record], task: str, device_key: str) -> list[Record]:
    """The records of one task measured on devices of one key."""
    return [r for r in records if r.task == task and r.device_key == device_key]


def trials(records: list[Record]) -> list[Record]:
    """The trials among records: confirmations left out."""
    return [r for r in records if not r.confirm]


# A candidate replaces the default only when it is this much faster in the same confirmation
# rounds: on a shared machine two equal configurations differ by a few percent round to round
# (L1 on znver5: the default re-measured 7% apart), and a tie must keep the default.
BASELINE_MARGIN = 0.03


def best(records: list[Record]) -> Record | None:
    """The fastest configuration (None if none succeeded): each configuration's time is the median
    over all its successful records (its trial and its confirmations), and once the tuner has
    confirmed some (the few fastest and the default, measured again side by side) only those
    compete: one lucky measurement on a noisy device does not win alone. The default then stays
    unless the winner's confirmations beat the default's by BASELINE_MARGIN."""
    confirmed = {r.config for r in records if r.confirm and r.ok}
    times: dict = {}
    for record in records:
        if record.ok and (not confirmed or record.config in confirmed):
            times.setdefault(record.config, []).append(record)
    if not times:
        return None
    medians = {config: float(median([r.median_s for r in rs])) for config, rs in times.items()}
    config = _keep_baseline(min(medians, key=medians.get), records)
    return replace(times[config][0], median_s=medians[config])


def _keep_baseline(winner, records: list[Record]):
    """`winner`, or the default when the winner is not clearly faster side by side."""
    side_by_side = lambda config: [r.median_s for r in records if r.confirm and r.ok and r.config == config]  # noqa: E731
    baseline = next((r.config for r in records if r.baseline and r.ok), None)
    if baseline is None or winner == baseline or not side_by_side(winner):
        return winner
    faster = median(side_by_side(winner)) <= median(side_by_side(baseline)) * (1 - BASELINE_MARGIN)
    return winner if faster else baseline
