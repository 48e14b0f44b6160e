"""Activation functions, as values: what an elementwise op computes and what a kernel epilogue fuses."""

from __future__ import annotations

from dataclasses import dataclass

# kind -> names of its parameters, in order.
ACTIVATION_PARAMS: dict[str, tuple[str, ...]] = {
    "relu": (),
    "clip": ("min", "max"),
    "leaky_relu": ("alpha",),
    "sigmoid": (),
    "hard_sigmoid": ("alpha", "beta"),
    "hard_swish": (),
}


@dataclass(frozen=True, slots=True)
class Activation:
    """One activation function, e.g. `Activation("clip", (0.0, 6.0))` for ReLU6."""

    kind: str
    params: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ACTIVATION_PARAMS:
            raise ValueError(f"unknown activation {self.kind!r}")
        want = len(ACTIVATION_PARAMS[self.kind])
        if len(self.params) != want:
            raise ValueError(f"activation {self.kind} takes {want} parameters, got {len(self.params)}")
        object.__setattr__(self, "params", tuple(float(p) for p in self.params))
