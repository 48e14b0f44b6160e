"""Search strategies over a knob space: what to measure next, given what was measured.

- `RandomSearch`: the default first, then uniformly random unmeasured configurations.
- `EvolutionarySearch`: the default and a few random ones first; then children of the fastest
  configurations (mutations, crossovers), ranked by a cheap cost model (ridge regression on
  quadratic features of the knobs, predicting log time) fitted to every measurement so far,
  with a share of random picks so the model's blind spots still get measured.
Both are deterministic for a seed and rebuilt from a log on resume (`observe` each record).
"""

from __future__ import annotations

import numpy as np

from sparsec.ir.knobs import Knobs
from sparsec.tuning.space import Space


class RandomSearch:
    """See the module docstring."""

    name = "random"

    def __init__(self, space: Space, seed: int = 0):
        self.space, self.rng = space, np.random.default_rng(seed)
        self.times: dict[Knobs, float] = {}  # measured successfully
        self.failed: set[Knobs] = set()

    def observe(self, config: Knobs, time_s: float | None) -> None:
        """A measurement (None: the configuration failed; it is never proposed again)."""
        if time_s is None:
            self.failed.add(config)
        else:
            self.times[config] = time_s

    def seen(self) -> set[Knobs]:
        return set(self.times) | self.failed

    def propose(self, n: int, pending: set[Knobs] = frozenset()) -> list[Knobs]:
        """Up to `n` configurations never measured, failed or pending."""
        taken = self.seen() | set(pending)
        picks: list[Knobs] = []
        if self.space.default not in taken:
            picks.append(self.space.default)
        self._fill_random(picks, n, taken)
        return picks

    def _fill_random(self, picks: list[Knobs], n: int, taken: set[Knobs]) -> None:
        for _ in range(50 * n):
            if len(picks) >= n:
                return
            config = self.space.sample(self.rng)
            if config not in taken and config not in picks:
                picks.append(config)
        if len(picks) < n and self.space.product <= 200_000:  # nearly exhausted: enumerate the rest
            rest = [c for c in self.space.configs() if c not in taken and c not in picks]
            order = self.rng.permutation(len(rest))
            picks.extend(rest[i] for i in order[: n - len(picks)])


class CostModel:
    """Ridge regression of log(time) on [1, x, x_i * x_j] of the knob features."""

    def __init__(self, space: Space, alpha: float = 1.0):
        self.space, self.alpha, self.weights = space, alpha, None

    def _design(self, configs: list[Knobs]) -> np.ndarray:
        x = np.array([self.space.features(c) for c in configs])
        pairs = [x[:, i] * x[:, j] for i in range(x.shape[1]) for j in range(i, x.shape[1])]
        return np.column_stack([np.ones(len(x)), x, *pairs])

    def fit(self, times: dict[Knobs, float]) -> None:
        configs = list(times)
        a, y = self._design(configs), np.log([times[c] for c in configs])
        self.mean = y.mean()
        reg = self.alpha * np.eye(a.shape[1])
        reg[0, 0] = 0.0
        self.weights = np.linalg.solve(a.T @ a + reg, a.T @ (y - self.mean))

    def predict(self, configs: list[Knobs]) -> np.ndarray:
        return self._design(configs) @ self.weights + self.mean


class EvolutionarySearch(RandomSearch):
    """See the module docstring."""

    name = "evolutionary"

    def __init__(self, space: Space, seed: int = 0, initial: int = 8, parents: int = 8, children: int = 256,
                 explore: float = 0.15):
        super().__init__(space, seed)
        self.initial, self.parents, self.children, self.explore = initial, parents, children, explore

    def propose(self, n: int, pending: set[Knobs] = frozenset()) -> list[Knobs]:
        taken = self.seen() | set(pending)
        if len(self.times) < self.initial:  # too little to learn from
            return super().propose(n, pending)
        model = CostModel(self.space)
        model.fit(self.times)
        pool = self._offspring(taken)
        picks: list[Knobs] = []
        if pool:
            ranked = [pool[i] for i in np.argsort(model.predict(pool), kind="stable")]
            for config in ranked:
                if len(picks) >= n:
                    break
                if self.rng.random() < self.explore:
                    continue  # leave the slot to a random pick
                picks.append(config)
        self._fill_random(picks, n, taken)
        return picks

    def _offspring(self, taken: set[Knobs]) -> list[Knobs]:
        """Children of the fastest configurations: mutations (one or two knobs) and crossovers."""
        best = sorted(self.times, key=self.times.get)[: self.parents]
        found: set[Knobs] = set()
        for _ in range(self.children):
            parent = best[self.rng.integers(len(best))]
            if self.rng.random() < 0.3 and len(best) > 1:
                child = self.space.crossover(parent, best[self.rng.integers(len(best))], self.rng)
            else:
                child = self.space.mutate(parent, self.rng)
                if self.rng.random() < 0.4:
                    child = self.space.mutate(child, self.rng)
            if child not in taken:
                found.add(child)
        return sorted(found, key=lambda c: c.pairs)


SEARCHES = {"evolutionary": EvolutionarySearch, "random": RandomSearch}
