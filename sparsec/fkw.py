"""FKW (filter-kernel-weight) storage of a pattern-pruned 3x3 convolution weight.

PatDNN's compact format: one pattern id per kept kernel replaces CSR's per-weight column
indices. Filters are permuted so that alike filters sit together, and inside a filter the kept
kernels are sorted by pattern, so a kernel generator can emit one branch-free loop per pattern.
Pure numpy: the IR, the passes and their tests use it without TVM.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from sparsec.sparsity import kernel_tap_sets

TAPS = 9  # a 3x3 window, taps numbered row-major: tap = 3 * dy + dx


@dataclass(frozen=True, slots=True)
class FKW:
    """A pattern-pruned [O, I, 3, 3] weight in FKW form (see the module docstring).

    - `patterns` (P, T): the tap ids of each pattern, ascending.
    - `filter_order` (O,): stored filter i is original output channel `filter_order[i]`.
    - `offset` (O+1,): stored filter i owns kernels `offset[i]:offset[i+1]`.
    - `stride` (O, P+1): pattern p's run inside filter i is `stride[i, p]:stride[i, p+1]`,
      relative to `offset[i]` (so it fits a small dtype).
    - `index` (K,): the input channel of each kept kernel.
    - `weight` (K, T): float32 tap values, in the order of the kernel's pattern taps.
    """

    patterns: np.ndarray
    filter_order: np.ndarray
    offset: np.ndarray
    stride: np.ndarray
    index: np.ndarray
    weight: np.ndarray

    def __post_init__(self) -> None:
        num_filters, num_patterns = self.stride.shape[0], self.patterns.shape[0]
        assert self.filter_order.shape == (num_filters,)
        assert self.offset.shape == (num_filters + 1,)
        assert self.stride.shape == (num_filters, num_patterns + 1)
        assert self.weight.shape == (self.index.shape[0], self.patterns.shape[1])
        assert self.weight.dtype == np.float32

    @property
    def num_filters(self) -> int:
        return int(self.filter_order.shape[0])

    @property
    def num_patterns(self) -> int:
        return int(self.patterns.shape[0])

    @property
    def taps_per_pattern(self) -> int:
        return int(self.patterns.shape[1])

    @property
    def num_kernels(self) -> int:
        return int(self.index.shape[0])

    def pattern_counts(self) -> np.ndarray:
        """(O, P) number of kernels of each pattern in each stored filter."""
        return np.diff(self.stride.astype(np.int64), axis=1)


def smallest_uint(max_value: int) -> np.dtype:
    """The smallest unsigned integer dtype holding 0..max_value."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def smallest_int(min_value: int, max_value: int) -> np.dtype:
    """The smallest signed integer dtype holding min_value..max_value."""
    for dtype in (np.int8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= min_value and max_value <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _check_weight(weight: np.ndarray) -> np.ndarray:
    weight = np.asarray(weight)
    if weight.ndim != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"expected a [O, I, 3, 3] weight, got shape {weight.shape}")
    return weight.astype(np.float32, copy=False)


def _mask_taps(mask: int) -> tuple[int, ...]:
    return tuple(t for t in range(TAPS) if mask >> t & 1)


def _derive_pattern_masks(masks: np.ndarray) -> list[int]:
    """The maximal distinct tap sets: a set inside a larger one is not a pattern of its own."""
    distinct = sorted({int(m) for m in np.unique(masks) if m != 0})
    maximal = [m for m in distinct if not any(o != m and m & o == m for o in distinct)]
    return sorted(maximal, key=_mask_taps)


def _pad_taps(taps: tuple[int, ...], width: int) -> tuple[int, ...]:
    """Widen a small tap set to `width` taps with the lowest missing ids (zero weights there)."""
    missing = [t for t in range(TAPS) if t not in taps]
    return tuple(sorted(taps + tuple(missing[: width - len(taps)])))


def _patterns_array(tap_sets: list[tuple[int, ...]]) -> np.ndarray:
    """The tap sets widened to one size, each pattern once: two small sets may widen to the same
    pattern ({1} and {2} next to a 3-tap set both become {0, 1, 2}), which then covers both."""
    width = max((len(t) for t in tap_sets), default=1)
    widened = list(dict.fromkeys(_pad_taps(t, width) for t in tap_sets))
    return np.array(widened, dtype=np.uint8).reshape(-1, width)


def _pattern_masks(patterns: np.ndarray) -> list[int]:
    patterns = np.asarray(patterns)
    if patterns.ndim != 2 or patterns.size and (patterns.min() < 0 or patterns.max() >= TAPS):
        raise ValueError(f"patterns must be a (P, T) array of tap ids 0..8, got {patterns!r}")
    masks = [sum(1 << int(t) for t in row) for row in patterns]
    if any(bin(m).count("1") != patterns.shape[1] for m in masks):
        raise ValueError("a pattern repeats a tap")
    return masks


def _assign_patterns(masks: np.ndarray, pattern_masks: list[int]) -> np.ndarray:
    """(O, I) pattern id of each kernel, -1 if empty: the exact pattern, else the first superset."""
    ids = np.full(masks.shape, -1, dtype=np.int64)
    for mask in np.unique(masks):
        if mask == 0:
            continue
        fits = [p for p, pm in enumerate(pattern_masks) if int(mask) & pm == mask]
        exact = [p for p in fits if pattern_masks[p] == mask]
        if not fits:
            o, i = np.argwhere(masks == mask)[0]
            raise ValueError(
                f"kernel (filter {o}, input channel {i}) has taps {_mask_taps(int(mask))}, "
                "which fit no pattern"
            )
        ids[masks == mask] = (exact or fits)[0]
    return ids


def cover_patterns(mask_or_weight: np.ndarray) -> np.ndarray:
    """(P, T) the patterns of a [O, I, 3, 3] mask (or weight): its maximal distinct tap sets, so a
    kernel keeping a subset of another kernel's taps (a weight pruned inside its pattern, or
    exactly zero) takes that pattern with a zero weight, widened to one size (FKW stores T taps
    for every kernel)."""
    return _patterns_array([_mask_taps(m) for m in _derive_pattern_masks(kernel_tap_sets(mask_or_weight))])


def kernel_patterns(
    weight: np.ndarray, patterns: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The pattern set (derived if not given) and each kernel's pattern id (-1 = empty kernel)."""
    weight = _check_weight(weight)
    masks = kernel_tap_sets(weight)
    if patterns is None:
        patterns = cover_patterns(weight)
    else:
        patterns = np.sort(np.asarray(patterns), axis=1).astype(np.uint8)
    ids = _assign_patterns(masks, _pattern_masks(patterns))
    return patterns, ids.astype(smallest_int(-1, max(len(patterns) - 1, 0)))


def _pattern_histograms(ids: np.ndarray, num_patterns: int) -> np.ndarray:
    """(O, P) count of kernels of each pattern in each filter."""
    hist = np.zeros((ids.shape[0], num_patterns), np.int64)
    for p in range(num_patterns):
        hist[:, p] = (ids == p).sum(axis=1)
    return hist


def default_filter_order(weight: np.ndarray, patterns: np.ndarray | None = None) -> np.ndarray:
    """Filters sorted by (kept-kernel count, pattern histogram), descending, stable.

    Neighbouring filters then do the same amount of work and have alike pattern-loop trip
    counts, which is what a group of filters processed together (or a thread's share of
    filters) wants.
    """
    patterns, ids = kernel_patterns(weight, patterns)
    hist = _pattern_histograms(ids, len(patterns))
    keys = np.concatenate([(ids >= 0).sum(axis=1, keepdims=True), hist], axis=1)
    # np.lexsort sorts by the last key first and is stable; negate for descending order.
    order = np.lexsort(tuple(-keys[:, j] for j in reversed(range(keys.shape[1]))))
    return order.astype(smallest_uint(max(weight.shape[0] - 1, 0)))


def _check_order(order: np.ndarray, num_filters: int) -> np.ndarray:
    order = np.asarray(order)
    if order.shape != (num_filters,) or not np.array_equal(np.sort(order), np.arange(num_filters)):
        raise ValueError(f"filter_order must be a permutation of 0..{num_filters - 1}")
    return order.astype(smallest_uint(max(num_filters - 1, 0)))


def _filter_kernels(ids_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One filter's kept input channels sorted by (pattern, channel), and their pattern ids."""
    kept = np.nonzero(ids_row >= 0)[0]
    kept = kept[np.argsort(ids_row[kept], kind="stable")]
    return kept, ids_row[kept]


def _kernel_taps(weight_row: np.ndarray, kept: np.ndarray, pids: np.ndarray, patterns) -> np.ndarray:
    flat = weight_row.reshape(weight_row.shape[0], TAPS)
    return flat[kept[:, None], patterns[pids].astype(np.int64)]


def build_fkw(
    weight: np.ndarray,
    patterns: np.ndarray | None = None,
    filter_order: np.ndarray | None = None,
) -> FKW:
    """Compress a [O, I, 3, 3] float32 weight (zeros outside the kept taps) into FKW form.

    Empty (all-zero) kernels are not stored. A kernel must fit a pattern (raises ValueError
    naming the filter and channel otherwise); `filter_order` defaults to `default_filter_order`.
    """
    weight = _check_weight(weight)
    patterns, ids = kernel_patterns(weight, patterns)
    num_filters, num_patterns = weight.shape[0], len(patterns)
    if filter_order is None:
        filter_order = default_filter_order(weight, patterns)
    order = _check_order(filter_order, num_filters)
    channels, taps, counts = [], [], np.zeros((num_filters, num_patterns + 1), dtype=np.int64)
    for slot, filt in enumerate(order):
        kept, pids = _filter_kernels(ids[filt])
        channels.append(kept)
        taps.append(_kernel_taps(weight[filt], kept, pids, patterns))
        counts[slot, 1:] = np.cumsum(np.bincount(pids, minlength=num_patterns))
    return _assemble(patterns, order, counts, channels, taps, weight.shape[1])


def _assemble(patterns, order, stride, channels, taps, in_channels) -> FKW:
    index = np.concatenate(channels) if channels else np.zeros(0, np.int64)
    weight = np.concatenate(taps) if taps else np.zeros((0, patterns.shape[1]), np.float32)
    offset = np.concatenate([[0], np.cumsum(stride[:, -1])])
    return FKW(
        patterns=patterns,
        filter_order=order,
        offset=offset.astype(smallest_uint(int(offset[-1]))),
        stride=stride.astype(smallest_uint(int(stride.max(initial=0)))),
        index=index.astype(smallest_uint(max(in_channels - 1, 0))),
        weight=np.ascontiguousarray(weight, dtype=np.float32).reshape(-1, patterns.shape[1]),
    )


def fkw_to_dense(fkw: FKW, in_channels: int) -> np.ndarray:
    """The [O, I, 3, 3] weight again, in the original filter order (the exact inverse)."""
    dense = np.zeros((fkw.num_filters, in_channels, TAPS), dtype=np.float32)
    offset, stride = fkw.offset.astype(np.int64), fkw.stride.astype(np.int64)
    for slot, filt in enumerate(fkw.filter_order.astype(np.int64)):
        for p in range(fkw.num_patterns):
            run = slice(offset[slot] + stride[slot, p], offset[slot] + stride[slot, p + 1])
            chans = fkw.index[run].astype(np.int64)
            dense[filt, chans[:, None], fkw.patterns[p].astype(np.int64)] = fkw.weight[run]
    return dense.reshape(fkw.num_filters, in_channels, 3, 3)


def fkw_nbytes(fkw: FKW) -> int:
    """Bytes of all FKW arrays together."""
    return sum(getattr(fkw, f.name).nbytes for f in fields(fkw))


@dataclass(frozen=True, slots=True)
class KernelTable:
    """FKW re-cut for a kernel schedule: filters taken `filters_per_group` at a time, input
    channels in blocks of `channel_block` (so a block's input tile stays in the L1 cache while
    every filter uses it).

    Kernels are sorted by (channel block, group, pattern, channel): with row = b * G + g, the run
    of block b, group g and pattern p is `offset[row] + stride[row, p] : offset[row] +
    stride[row, p + 1]`, so a pass over one block (every group) reads the table front to back and
    weights coming from memory stream. (Group-major, each block pass read G strided pieces: on
    ResNet-50's 256x14 layers inside the model, weights cold, 0.9x of one block.) A group's kernel
    is the union over its filters (filter-level load sharing): `weight` (Kg, F, T) holds zeros
    where a filter of the group lacks it. With one filter per group and one block the arrays
    are the FKW's own.

    The union only pays when the filters of a group share (channel, pattern) kernels: on
    randomly pruned filters two filters share ~3% of them (L1 layer: 32768 kernels become
    31741 pair-kernels of 2 filters each, so the FMAs almost double).
    """

    patterns: np.ndarray
    filter_order: np.ndarray
    offset: np.ndarray  # (B*G+1,)
    stride: np.ndarray  # (B*G, P+1), relative to offset
    index: np.ndarray  # (Kg,)
    weight: np.ndarray  # (Kg, F, T)
    channel_block: int
    num_blocks: int

    @property
    def filters_per_group(self) -> int:
        return int(self.weight.shape[1])

    @property
    def num_groups(self) -> int:
        return int(self.stride.shape[0]) // self.num_blocks

    @property
    def num_filters(self) -> int:
        return int(self.filter_order.shape[0])

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays a kernel reads, in parameter order."""
        return (self.offset, self.stride, self.index, self.weight, self.filter_order)

    def runs(self) -> tuple[np.ndarray, np.ndarray]:
        """(first kernel, kernel count) of every run, both (G, B*P): group g's run b * P + p."""
        groups, patterns = self.num_groups, len(self.patterns)
        stride = self.stride.astype(np.int64).reshape(self.num_blocks, groups, patterns + 1)
        starts = self.offset[:-1].astype(np.int64).reshape(self.num_blocks, groups, 1) + stride[:, :, :-1]
        counts = np.diff(stride, axis=2)
        as_groups = lambda a: a.transpose(1, 0, 2).reshape(groups, -1)  # noqa: E731
        return as_groups(starts), as_groups(counts)


def _kernel_coords(fkw: FKW) -> tuple[np.ndarray, np.ndarray]:
    """(stored filter, pattern) of every kernel, in storage order."""
    num_filters, num_patterns = fkw.num_filters, fkw.num_patterns
    counts = fkw.pattern_counts()
    slot = np.repeat(np.arange(num_filters), counts.sum(axis=1))
    pattern = np.repeat(np.tile(np.arange(num_patterns), num_filters), counts.ravel())
    return slot, pattern


def kernel_table(
    fkw: FKW, in_channels: int, filters_per_group: int = 1, channel_block: int = 0
) -> KernelTable:
    """Re-cut `fkw` into groups of filters and blocks of channels (see `KernelTable`).

    `channel_block` 0 means one block of all channels; the last group may be short.
    """
    width, num_patterns = filters_per_group, fkw.num_patterns
    block = channel_block if 0 < channel_block < in_channels else in_channels
    num_blocks = -(-in_channels // block)
    num_groups = -(-fkw.num_filters // width)
    slot, pattern = _kernel_coords(fkw)
    chan = fkw.index.astype(np.int64)
    run = (chan // block * num_groups + slot // width) * num_patterns + pattern
    keys, pos = np.unique(run * in_channels + chan, return_inverse=True)
    weight = np.zeros((len(keys), width, fkw.taps_per_pattern), np.float32)
    weight[pos, slot % width] = fkw.weight
    runs = np.bincount(keys // in_channels, minlength=num_blocks * num_groups * num_patterns)
    runs = runs.reshape(num_blocks * num_groups, num_patterns)
    stride = np.concatenate([np.zeros((len(runs), 1), np.int64), np.cumsum(runs, 1)], axis=1)
    offset = np.concatenate([[0], np.cumsum(stride[:, -1])])
    return KernelTable(
        patterns=fkw.patterns,
        filter_order=fkw.filter_order,
        offset=offset.astype(smallest_uint(int(offset[-1]))),
        stride=stride.astype(smallest_uint(int(stride.max(initial=0)))),
        index=(keys % in_channels).astype(fkw.index.dtype),
        weight=weight,
        channel_block=block,
        num_blocks=num_blocks,
    )
