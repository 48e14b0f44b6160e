"""`sparsec run --emulate` / `compile --check` for GPU models: every layer's OpenCL kernels on PoCL
against the reference interpreter, layer by layer (each layer reads what the previous layers
computed on PoCL, so errors accumulate as they would on the device).

PoCL runs the kernels on this machine's CPU: the check is about correctness; PoCL timings are not
Mali timings and none are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparsec.check import TOLERANCE, CheckFailed, relative_error
from sparsec.ir.parser import parse_module
from sparsec.reference import reference_values
from sparsec.runtime import opencl
from sparsec.runtime.gpu_program import GpuBundle


@dataclass(frozen=True)
class LayerCheck:
    result: str
    op: str
    kernels: int
    error: float  # max |pocl - reference| / max |reference|


@dataclass(frozen=True)
class GpuCheck:
    device: str
    layers: tuple[LayerCheck, ...]
    outputs: dict[str, np.ndarray]

    @property
    def worst(self) -> LayerCheck:
        return max(self.layers, key=lambda c: c.error)

    @property
    def passed(self) -> bool:
        return all(c.error <= TOLERANCE for c in self.layers)

    def format(self) -> str:
        lines = [f"layer-by-layer on {self.device} (correctness only: PoCL timings are not Mali timings)",
                 f"{'layer':24} {'op':16} {'kernels':>7}  max rel error"]
        lines += [f"%{c.result:23} {c.op:16} {c.kernels:7d}  {c.error:.2e}{'' if c.error <= TOLERANCE else '  FAIL'}"
                  for c in self.layers]
        verdict = "all within" if self.passed else "NOT within"
        lines.append(f"{len(self.layers)} layers, {verdict} {TOLERANCE:g}; worst %{self.worst.result} "
                     f"({self.worst.error:.2e})")
        return "\n".join(lines)


def check_bundle(bundle: GpuBundle, inputs: dict[str, np.ndarray]) -> GpuCheck:
    """Run the bundle's kernels on the OpenCL device and compare every layer with the reference."""
    module = parse_module(bundle.ir_text, "<gpu bundle>", arrays=bundle.weights)
    want = reference_values(module, inputs)
    checks: list[LayerCheck] = []

    def compare(layer, value, env) -> None:
        checks.append(LayerCheck(layer.result, layer.op, len(layer.launches),
                                 relative_error(value, want[f"%{layer.result}"])))

    env = opencl.emulate(bundle, inputs, compare)
    outputs = {name: env[f"%{name}"] for name in module.outputs}
    return GpuCheck(opencl.device().name, tuple(checks), outputs)


def require_passed(check: GpuCheck) -> None:
    if not check.passed:
        worst = check.worst
        raise CheckFailed(f"layer %{worst.result} ({worst.op}) differs from the reference on PoCL: max relative "
                          f"error {worst.error:.2e} > {TOLERANCE:g}\n{check.format()}")
