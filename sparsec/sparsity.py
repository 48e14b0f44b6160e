"""Sparsity statistics of weight tensors, pure NumPy: tap sets, pattern histograms, MACs.

A 3x3 kernel's taps are numbered 0..8 row-major (centre = 4); its tap set is a 9-bit mask with
bit t set when tap t is nonzero. Every function accepts a bool mask or a (masked) weight: zero
means pruned. The inspect report and the `analyze-sparsity` pass both build on this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CENTRE_TAP = 4
N_TAPS = 9
LAYER_KINDS = ("conv3x3", "conv", "fc")


def taps_of(bits: int) -> tuple[int, ...]:
    """The tap ids set in a 9-bit tap mask, ascending: taps_of(0b10011) == (0, 1, 4)."""
    return tuple(t for t in range(N_TAPS) if bits >> t & 1)


def bits_of(taps: tuple[int, ...]) -> int:
    """The 9-bit mask of a tap tuple (the inverse of `taps_of`)."""
    return sum(1 << t for t in taps)


def kernel_tap_sets(weight: np.ndarray) -> np.ndarray:
    """(O, I) int array: the 9-bit mask of nonzero taps of each 3x3 kernel of weight[O, I, 3, 3]."""
    weight = np.asarray(weight)
    if weight.ndim != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"kernel_tap_sets needs a [O, I, 3, 3] weight, got shape {weight.shape}")
    nonzero = weight.reshape(*weight.shape[:2], N_TAPS) != 0
    return nonzero.astype(np.int64) @ (1 << np.arange(N_TAPS, dtype=np.int64))


def pattern_histogram(mask_or_weight: np.ndarray) -> dict[tuple[int, ...], int]:
    """Distinct tap sets of the non-empty 3x3 kernels and their counts, most frequent first.

    Ties are ordered by tap tuple, so the dict's order is deterministic.
    """
    sets = kernel_tap_sets(mask_or_weight).ravel()
    values, counts = np.unique(sets[sets != 0], return_counts=True)
    pairs = [(taps_of(int(v)), int(c)) for v, c in zip(values, counts)]
    return dict(sorted(pairs, key=lambda pc: (-pc[1], pc[0])))


def _kernels(mask_or_weight: np.ndarray) -> np.ndarray:
    """View as (kernels, taps): a conv kernel is weight[o, i]; an FC weight is one tap each."""
    x = np.asarray(mask_or_weight)
    if x.ndim < 2:
        raise ValueError(f"a weight has at least 2 dimensions, got shape {x.shape}")
    return x.reshape(x.shape[0] * x.shape[1], -1)


def total_kernels(mask_or_weight: np.ndarray) -> int:
    """Number of kernels: O * I for a conv weight [O, I, kh, kw], every entry of an FC weight."""
    return _kernels(mask_or_weight).shape[0]


def empty_kernels(mask_or_weight: np.ndarray) -> int:
    """Number of kernels whose taps are all zero (removed by connectivity pruning)."""
    return int(np.count_nonzero(~(_kernels(mask_or_weight) != 0).any(axis=1)))


def density(mask_or_weight: np.ndarray) -> float:
    """Fraction of nonzero entries, in [0, 1] (1.0 for an empty tensor: nothing was pruned)."""
    x = np.asarray(mask_or_weight)
    return float(np.count_nonzero(x) / x.size) if x.size else 1.0


def conv_macs(
    weight_shape: tuple[int, ...], out_shape: tuple[int, ...], groups: int = 1, nonzeros: int | None = None
) -> tuple[int, int]:
    """(dense MACs, kept MACs) of a conv with weight [O, I/groups, kh, kw] and output [N, O, ...].

    Every weight is used once per output position (N * Ho * Wo of them), so dense MACs are
    weights x positions and kept MACs are nonzeros x positions (dense when `nonzeros` is None).
    """
    if weight_shape[0] != out_shape[1] or weight_shape[0] % groups:
        shapes = f"weight {tuple(weight_shape)} with groups={groups}"
        raise ValueError(f"{shapes} does not give output {tuple(out_shape)}")
    positions = int(np.prod(out_shape, dtype=np.int64)) // out_shape[1]
    return _macs(weight_shape, positions, nonzeros)


def fc_macs(
    weight_shape: tuple[int, int], out_shape: tuple[int, ...], nonzeros: int | None = None
) -> tuple[int, int]:
    """(dense MACs, kept MACs) of a fully connected layer with output [..., out_features]."""
    positions = int(np.prod(out_shape[:-1], dtype=np.int64))
    return _macs(weight_shape, positions, nonzeros)


def useful_gflops(kept_macs: int, ms: float | None) -> float | None:
    """Useful GFLOP/s of a layer or model: 2 FLOPs per kept MAC over its time in milliseconds."""
    return 2 * kept_macs / (ms * 1e-3) / 1e9 if ms else None


def _macs(weight_shape: tuple[int, ...], positions: int, nonzeros: int | None) -> tuple[int, int]:
    size = int(np.prod(weight_shape, dtype=np.int64))
    kept = size if nonzeros is None else int(nonzeros)
    assert 0 <= kept <= size, "more nonzeros than weights"
    return size * positions, kept * positions


@dataclass(frozen=True, slots=True)
class LayerStats:
    """The sparsity of one weight layer (conv or fully connected) after masking.

    `histogram` holds (tap tuple, count) pairs, most frequent first, for 3x3 kernels only; a
    kernel is weight[o, i] for a conv and a single weight for an FC layer.
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    groups: int
    nonzeros: int
    density: float
    n_patterns: int
    histogram: tuple[tuple[tuple[int, ...], int], ...]
    empty_kernels: int
    total_kernels: int
    macs_dense: int
    macs_kept: int

    def __post_init__(self) -> None:
        assert self.kind in LAYER_KINDS, f"unknown layer kind {self.kind!r}"
        assert 0 <= self.nonzeros <= self.params
        assert self.n_patterns == len(self.histogram)
        assert 0 <= self.empty_kernels <= self.total_kernels
        assert 0 <= self.macs_kept <= self.macs_dense

    @property
    def params(self) -> int:
        """Number of weights in the dense layer."""
        return int(np.prod(self.weight_shape, dtype=np.int64))


def layer_kind(weight_shape: tuple[int, ...], groups: int = 1) -> str:
    """"conv3x3" for a dense-grouped 3x3 conv (the pattern-prunable kind), "conv", or "fc"."""
    if len(weight_shape) == 2:
        return "fc"
    return "conv3x3" if tuple(weight_shape[2:]) == (3, 3) and groups == 1 else "conv"


def layer_stats(name: str, masked_weight: np.ndarray, out_shape: tuple[int, ...], groups: int = 1) -> LayerStats:
    """Statistics of one layer from its masked weight (zeros = pruned) and its output shape.

    A conv weight is [O, I/groups, kh, kw] with output [N, O, ...]; an FC weight is 2-D (either
    orientation) with output [..., out_features].
    """
    w = np.asarray(masked_weight)
    kind = layer_kind(w.shape, groups)
    nonzeros = int(np.count_nonzero(w))
    if kind == "fc":
        dense, kept = fc_macs(w.shape, out_shape, nonzeros)
    else:
        dense, kept = conv_macs(w.shape, out_shape, groups, nonzeros)
    hist = pattern_histogram(w) if w.shape[2:] == (3, 3) else {}
    return LayerStats(
        name=name, kind=kind, weight_shape=tuple(w.shape), groups=groups, nonzeros=nonzeros,
        density=density(w),
        n_patterns=len(hist), histogram=tuple(hist.items()), empty_kernels=empty_kernels(w),
        total_kernels=total_kernels(w), macs_dense=dense, macs_kept=kept,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Totals:
    """Whole-model sums over the weight layers."""

    layers: int
    params: int
    params_kept: int
    macs_dense: int
    macs_kept: int

    @property
    def density(self) -> float:
        """Fraction of weights kept over all layers."""
        return self.params_kept / self.params if self.params else 1.0

    @property
    def mac_reduction(self) -> float:
        """Dense MACs / kept MACs: how many times less arithmetic the pruned model needs."""
        return self.macs_dense / self.macs_kept if self.macs_kept else float("inf")


def totals_of(layers: list[LayerStats] | tuple[LayerStats, ...]) -> Totals:
    """Sums the per-layer statistics."""
    return Totals(
        layers=len(layers),
        params=sum(s.params for s in layers),
        params_kept=sum(s.nonzeros for s in layers),
        macs_dense=sum(s.macs_dense for s in layers),
        macs_kept=sum(s.macs_kept for s in layers),
    )
