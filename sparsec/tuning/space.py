"""A kernel generator's knob space on one target: each knob's legal values, the rules a whole
configuration must keep, and the default (what the generator picks with no knobs: always measured).

Configurations are `Knobs` values (the IR attribute), so what the tuner measures is what the IR
prints and the lowering reads.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sparsec.ir.knobs import Knobs

ENUMERATE_LIMIT = 200_000  # products of knob values up to this are enumerated exactly


@dataclass(frozen=True)
class Knob:
    """One knob: its name and legal values, ascending."""

    name: str
    values: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.values or list(self.values) != sorted(set(self.values)):
            raise ValueError(f"knob {self.name}: values must be distinct and ascending, got {self.values}")


@dataclass(frozen=True)
class Space:
    """The configurations a generator accepts for one task on one target.

    `rule(config)` names the constraint a configuration breaks (None when it keeps them all);
    the default is legal by definition, whatever the rules say.
    """

    generator: str
    knobs: tuple[Knob, ...]
    default: Knobs
    rule: Callable[[dict], str | None] = field(default=lambda config: None, compare=False)

    def __post_init__(self) -> None:
        names = [k.name for k in self.knobs]
        if sorted(self.default) != sorted(names):
            raise ValueError(f"{self.generator}: the default {dict(self.default)} does not set exactly {names}")
        for knob in self.knobs:
            if self.default[knob.name] not in knob.values:
                raise ValueError(f"{self.generator}: default {knob.name}={self.default[knob.name]} "
                                 f"not in {knob.values}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.knobs)

    def problem(self, config: Knobs) -> str | None:
        """Why `config` is not in the space (None if it is)."""
        if config == self.default:
            return None
        if sorted(config) != sorted(self.names):
            return f"expected knobs {', '.join(self.names)}, got {', '.join(config) or 'none'}"
        for knob in self.knobs:
            if config[knob.name] not in knob.values:
                return f"{knob.name}={config[knob.name]} is not one of {list(knob.values)}"
        return self.rule(config.as_dict())

    def legal(self, config: Knobs) -> bool:
        return self.problem(config) is None

    @property
    def product(self) -> int:
        return math.prod(len(k.values) for k in self.knobs)

    def configs(self) -> list[Knobs]:
        """Every legal configuration (for spaces small enough to enumerate)."""
        assert self.product <= ENUMERATE_LIMIT, f"{self.generator}: {self.product} configurations"
        grid = itertools.product(*(k.values for k in self.knobs))
        found = [Knobs.of(dict(zip(self.names, point))) for point in grid]
        return [c for c in found if self.legal(c)]

    def size(self) -> int:
        return len(self.configs()) if self.product <= ENUMERATE_LIMIT else self.product

    def sample(self, rng: np.random.Generator, tries: int = 1000) -> Knobs:
        """A uniformly random legal configuration (rejection sampling; the default if none found)."""
        for _ in range(tries):
            config = Knobs.of({k.name: k.values[rng.integers(len(k.values))] for k in self.knobs})
            if self.legal(config):
                return config
        return self.default

    def mutate(self, config: Knobs, rng: np.random.Generator, tries: int = 50) -> Knobs:
        """`config` with one knob moved: to a neighbouring value mostly, anywhere sometimes."""
        for _ in range(tries):
            knob = self.knobs[rng.integers(len(self.knobs))]
            if len(knob.values) < 2:
                continue
            at = knob.values.index(config[knob.name])
            if rng.random() < 0.7:
                at = min(max(at + (1 if rng.random() < 0.5 else -1), 0), len(knob.values) - 1)
            else:
                at = int(rng.integers(len(knob.values)))
            child = Knobs.of({**config.as_dict(), knob.name: knob.values[at]})
            if child != config and self.legal(child):
                return child
        return config

    def crossover(self, a: Knobs, b: Knobs, rng: np.random.Generator) -> Knobs:
        """Each knob from one parent or the other (a parent back if the child breaks a rule)."""
        child = Knobs.of({n: (a if rng.random() < 0.5 else b)[n] for n in self.names})
        return child if self.legal(child) else a

    def features(self, config: Knobs) -> np.ndarray:
        """Where `config` sits in the space, each knob as log2(value + 1) (what the cost model reads)."""
        return np.array([math.log2(config[n] + 1) for n in self.names], dtype=np.float64)


def values(candidates, *must, low: int = 1, high: int | None = None) -> tuple[int, ...]:
    """Knob values: the candidates within [low, high] plus those that `must` be there (defaults)."""
    kept = {v for v in candidates if v >= low and (high is None or v <= high)}
    return tuple(sorted(kept | {int(m) for m in must}))
