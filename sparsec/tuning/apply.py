"""Apply a tuning log to a module: the best record of each op's task (for the target and the
device key) becomes the op's `knobs`; ops whose task has no record keep the generator's defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sparsec.errors import UserError
from sparsec.ir.module import Module
from sparsec.target import Target
from sparsec.tuning.log import Record, best, matching
from sparsec.tuning.task import kernel_call, structural_key


@dataclass(frozen=True)
class Applied:
    """What applying a log did: the layers tuned (with their record) and those without a record."""

    tuned: tuple[tuple[str, Record], ...]
    untuned: tuple[str, ...]

    def summary(self, device_key: str) -> str:
        text = f"tuning log: {len(self.tuned)} layers tuned for key {device_key!r}"
        if self.untuned:
            text += f"; no record for {len(self.untuned)} (defaults): {', '.join('%' + r for r in self.untuned)}"
        return text


def device_key_of(records: list[Record], target: Target, key: str | None) -> str:
    """The device key whose records apply: `key`, or the log's only key for this target."""
    if key is not None:
        return key
    keys = sorted({r.device_key for r in records if r.target == target.name})
    if len(keys) > 1:
        raise UserError(f"the tuning log holds records of several device keys for target {target.name} "
                        f"({', '.join(keys)}): choose one with --key")
    return keys[0] if keys else ""


def apply_records(module: Module, records: list[Record], target: Target, device_key: str) -> tuple[Module, Applied]:
    """The module with each tunable op's knobs set from its task's best record."""
    ops, tuned, untuned = [], [], []
    for op in module.ops:
        call = kernel_call(op, module)
        if call is None:
            ops.append(op)
            continue
        record = best(matching(records, structural_key(call, target), device_key))
        if record is None:
            untuned.append(op.result)
            ops.append(op)
        else:
            tuned.append((op.result, record))
            ops.append(dataclasses.replace(op, knobs=record.config))
    return module.replace(ops=tuple(ops)), Applied(tuple(tuned), tuple(untuned))
