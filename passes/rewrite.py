"""Local rewrites as data: (producer class, consumer class, fn) rules over producer -> consumer pairs.

`fn(producer, consumer, module)` returns a `Fused` (the op replacing the consumer plus weights to add
or replace) or None when the rule does not apply. A rule is tried along every `%value` operand of the
consumer, so `fn` checks which operand the producer is (either side of an `add` may be the conv).
The producer must have the consumer as its only user and not be a graph output, so removing it
loses nothing. The fused op takes the consumer's place: every other operand of the consumer (a
residual computed after the producer, say) is defined by then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from sparsec.ir.module import Module, Weight
from sparsec.ir.ops import Conv2d, Op
from sparsec.ir.types import Pattern


@dataclass(frozen=True)
class Fused:
    """The result of a pair rule: one op replacing both, and weights it adds or replaces."""

    op: Op
    weights: tuple[Weight, ...] = field(default=())


Rule = tuple[type[Op], type[Op], Callable[[Op, Op, Module], Fused | None]]


def fuse_pairs(module: Module, rules: list[Rule]) -> Module:
    """Apply pair rules until none fires; each fire removes one op."""
    while True:
        fired = _fuse_once(module, rules)
        if fired is None:
            return module
        module = fired


def _fuse_once(module: Module, rules: list[Rule]) -> Module | None:
    producers, users = module.producers(), module.users()
    for consumer in module.ops:
        for ref in consumer.operands():  # each rule checks which operand it fuses along
            producer = producers.get(ref[1:]) if ref.startswith("%") else None
            if producer is None or len(users.get(ref, [])) != 1 or producer.result in module.outputs:
                continue
            for producer_cls, consumer_cls, fn in rules:
                if type(producer) is producer_cls and type(consumer) is consumer_cls:
                    fused = fn(producer, consumer, module)
                    if fused is not None:
                        return _replace_pair(module, producer, consumer, fused)
    return None


def _replace_pair(module: Module, producer: Op, consumer: Op, fused: Fused) -> Module:
    ops = tuple(fused.op if op is consumer else op for op in module.ops if op is not producer)
    return with_weights(module.replace(ops=ops), fused.weights).drop_unused_weights()


def with_weights(module: Module, weights: tuple[Weight, ...]) -> Module:
    """The module with `weights` added, or replacing same-named ones in place."""
    new = {w.name: w for w in weights}
    kept = tuple(new.pop(w.name, w) for w in module.weights)
    return module.replace(weights=kept + tuple(new.values()))


def fresh_weight_name(module: Module, base: str) -> str:
    """`base`, or `base.1`, `base.2`, ... whichever names no weight yet."""
    taken = module.weight_map
    name, n = base, 0
    while name in taken:
        n += 1
        name = f"{base}.{n}"
    return name


def replace_op(module: Module, old: Op, new: Op, weights: tuple[Weight, ...] = ()) -> Module:
    """The module with `old` replaced by `new` (same result) and `weights` added or replaced."""
    ops = tuple(new if op is old else op for op in module.ops)
    return with_weights(module.replace(ops=ops), weights).drop_unused_weights()


def sole_user_weight(module: Module, op: Op, ref: str) -> Weight:
    """The weight `ref` for `op` to rewrite: itself when `op` is its only reader, else a copy
    under a fresh name (so rewriting it changes no other op)."""
    weight = module.weight(ref)
    if len(module.users().get(ref, [])) == 1:
        return weight
    return dataclasses.replace(weight, name=fresh_weight_name(module, weight.name))


def pattern_convs(module: Module) -> list[Conv2d]:
    """The conv2d ops whose weight has the pattern layout."""
    return [op for op in module.ops
            if isinstance(op, Conv2d) and isinstance(module.weight(op.weight).layout, Pattern)]


def rewrite_pattern_convs(module: Module, rewrite: Callable[[Conv2d, Weight], tuple[Conv2d, Weight]]) -> Module:
    """Apply `rewrite(op, weight) -> (op, weight)` to every pattern conv and its own weight."""
    for op in pattern_convs(module):
        new_op, new_weight = rewrite(op, sole_user_weight(module, op, op.weight))
        module = replace_op(module, op, dataclasses.replace(new_op, weight=f"@{new_weight.name}"), (new_weight,))
    return module
