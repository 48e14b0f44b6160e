"""Each kernel generator's knob space for one task on one target (`sparsec.tuning.space.Space`).

The default of every space is what the generator picks with no knobs (its register plan for the
target), so the default is always a point of the space and always measured. The rules keep the
register tiles within the target's vector registers (a tile that spills is legal code, but never
the fastest: it is not worth a trial) and the tiles within the output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from sparsec.ir.knobs import Knobs
from sparsec.lower.kernels import dense_conv, depthwise_conv, pattern_conv, pointwise_conv, winograd_plan
from sparsec.lower.kernels.common import ceil_div, conv_output_size
from sparsec.lower.layers import generator_knobs
from sparsec.target import Target
from sparsec.tuning.space import Knob, Space, values
from sparsec.tuning.task import KernelCall


def _resolved(call: KernelCall, knobs, target: Target):
    if call.generator == "pattern_conv":
        p, filters = call.params, len(call.structure["filter_order"])
        kept = len(call.structure["index"]) / max(1, filters * p["in_shape"][1])
        return pattern_conv.resolve_knobs(tuple(p["in_shape"]), tuple(p["strides"]), tuple(p["pads"]),
                                          tuple(p["dilations"]), knobs, target=target, filters=filters, kept=kept)
    if call.generator == "dense_conv":
        p = call.params
        return dense_conv.resolve_knobs(tuple(p["weight_shape"]), tuple(p["in_shape"]), tuple(p["strides"]),
                                        tuple(p["pads"]), tuple(p["dilations"]), p["groups"], knobs, target=target)
    return knobs.resolved(target)


def knobs_used(call: KernelCall, knobs: Mapping | None, target: Target, names: tuple[str, ...]) -> Knobs:
    """The values of `names` the generator really uses for `call` with `knobs` (0 = auto resolved)."""
    resolved = dataclasses.asdict(_resolved(call, generator_knobs(call, knobs, target), target))
    return Knobs.of({n: resolved[n] for n in names})


def _out_hw(call: KernelCall, kernel: tuple[int, int]) -> tuple[int, int]:
    p = call.params
    (_, _, h, w), (sh, sw) = p["in_shape"], p["strides"]
    pads, dil = p.get("pads", [0, 0, 0, 0]), p.get("dilations", [1, 1])
    return (conv_output_size(h, pads[0], pads[2], kernel[0], sh, dil[0]),
            conv_output_size(w, pads[1], pads[3], kernel[1], sw, dil[1]))


def _space(call: KernelCall, target: Target, knobs: list[tuple[str, tuple[int, ...]]], rule) -> Space:
    """The space of (knob name, candidate values) pairs, each widened by the generator's default
    (so a knob whose candidates all fall outside a small layer keeps its default)."""
    default = knobs_used(call, None, target, tuple(name for name, _ in knobs))
    # (candidates already within their bounds: a second `values` would drop 0, "none", from every knob)
    widened = [Knob(name, tuple(sorted(set(candidates) | {int(default[name])}))) for name, candidates in knobs]
    return Space(call.generator, tuple(widened), default, rule)


def pattern_conv_space(call: KernelCall, target: Target) -> Space:
    """Rows x vectors x filters of the register tile, vector width, channel blocks, tap copies,
    prefetch distance, filter slices per tile, the next tile's prefetch, the last column's row pairs,
    tile rows shifted in registers, one loop with the taps read at run time, chains of sums."""
    oh, ow = _out_hw(call, (3, 3))
    p = call.params
    channels, filters, lanes = p["in_shape"][1], len(call.structure["filter_order"]), target.lanes()
    accumulators = target.vector_registers - 4  # ~4 registers hold the tap weights and input rows
    conv_geometry = (tuple(p["in_shape"]), tuple(p["strides"]), tuple(p["pads"]), tuple(p["dilations"]))

    def rule(c: dict) -> str | None:
        sets = pattern_conv.SHIFTED_SUM_SETS if c["register_shifts"] == 2 else c["sum_chains"]
        if c["filters_per_group"] * c["rows_per_step"] * c["vectors_per_step"] * sets > accumulators:
            return f"more than {accumulators} accumulators"
        if c["register_shifts"] == 2 and c["sum_chains"] == 2:
            return "two chains of sums with the sums shifted (their tap columns' sets are the chains)"
        if c["vector_width"] * (c["vectors_per_step"] - 1) >= ow:
            return "a tile vector lies wholly past the output width"
        if c["prefetch_next_tile"] and c["filter_splits"] != 1:
            return "the next tile's prefetch with filters sliced across tasks (no task copies a tile)"
        if c["pair_rows"]:
            knobs = pattern_conv.PatternConvKnobs(**{k: v for k, v in c.items() if k != "pair_rows"})
            if problem := pattern_conv.pair_rows_problem(*conv_geometry, knobs, target=target):
                return f"row pairs in the last column: {problem}"
        if c["runtime_taps"] and (c["register_shifts"] or c["pair_rows"]):
            return "one loop with the taps read at run time on shifted tile rows or paired rows"
        if c["register_shifts"]:
            knobs = pattern_conv.PatternConvKnobs(**c)
            if problem := pattern_conv.register_shifts_problem(*conv_geometry, knobs, target=target):
                return f"tile rows shifted in registers: {problem}"
        return None

    return _space(call, target, [
        ("filters_per_group", values((1, 2, 4), high=filters)),
        ("rows_per_step", values((1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16), high=oh)),
        ("vector_width", values((lanes // 2, lanes), low=4)),
        ("vectors_per_step", values((1, 2, 3, 4))),
        ("channel_block", values((0, 16, 32, 64, 128), low=0, high=channels - 1)),
        ("tap_copies", values((1, 3))),
        ("prefetch", values((0, 1, 2, 4), low=0)),
        ("filter_splits", values((1, 2, 4, 8), high=filters)),
        ("prefetch_next_tile", values((0, 1), low=0)),
        ("pair_rows", values((0, 1), low=0)),
        ("register_shifts", values((0, 1, 2), low=0)),
        ("runtime_taps", values((0, 1), low=0)),
        ("sum_chains", values((1, 2))),
    ], rule)


def csr_conv1x1_space(call: KernelCall, target: Target) -> Space:
    """Pixel vectors per tile (the accumulators), lanes, output-channel groups, channel blocks."""
    channels, lanes = call.params["in_shape"][1], target.lanes()
    oh, ow = _out_hw(call, (1, 1))

    def rule(c: dict) -> str | None:
        if c["vectors"] > target.vector_registers - 2:
            return f"more than {target.vector_registers - 2} accumulators"
        if c["lanes"] * (c["vectors"] - 1) >= oh * ow:
            return "a tile vector lies wholly past the pixels"
        return None

    return _space(call, target, [
        ("vectors", values((2, 4, 6, 8, 12, 16, 24))),
        ("lanes", values((lanes // 2, lanes), low=4)),
        ("out_groups", values((1, 2, 4, 8), high=call.params["weight_shape"][0])),
        # a block may hold more channels than there are (as the default does): never no value at all
        ("channel_block", values((16, 32, 64, 128, 256), high=max(16, channels))),
    ], rule)


def csr_dense_space(call: KernelCall, target: Target) -> Space:
    """Nonzeros per step of the sparse dot products, input columns per block."""
    columns = call.params["in_shape"][1]
    return _space(call, target, [("chunk", values((2, 4, 8, 16, 32))),
                                 ("columns", values((1024, 2048, 4096, 8192, 16384), high=columns))], lambda c: None)


def dense_conv_space(call: KernelCall, target: Target) -> Space:
    """Register tile (filters x vectors), tiles per work item, channel blocks, filter groups, and
    for 3x3 stride-1 convs the algorithm (direct or Winograd F(2x2) / F(4x4)), for unpadded 1x1
    convs the vector direction (pixels or filters) and, across filters, the plane in one range or one
    a thread; depthwise convs: vectors of one output row, and
    for square ones of stride 1 or 2 the kernel (direct or tap columns in registers) and its band rows."""
    p = call.params
    o, cg = p["weight_shape"][:2]
    if cg == 1:
        return _depthwise_space(call, target)
    algorithms = (1, *winograd_plan.TRANSFORMS) if winograd_plan.supports(
        tuple(p["weight_shape"][2:]), p["strides"], p["dilations"], p["groups"]) else (1,)
    pointwise = (1, 2) if pointwise_conv.supports(tuple(p["weight_shape"][2:]), p["pads"], p["groups"]) else (1,)

    # the direct conv's own knobs at their defaults for this layer (as resolved: 0 where the default
    # algorithm leaves them unused); Winograd ignores them all, vectors across filters block channels
    names = ("tiles_per_block", "channel_block", "out_groups")
    defaults = knobs_used(call, None, target, names + ("ranges",))
    ignored = {"Winograd ignores": names, "vectors across filters ignore": ("tiles_per_block", "out_groups"),
               "the 1x1 GEMM ignores": ("channel_block",)}

    def rule(c: dict) -> str | None:
        if c["out_block"] * c["vectors"] > target.vector_registers - c["vectors"] - 2:
            return "the register tile takes more than the vector registers"
        other = "Winograd ignores" if c["winograd"] > 1 else "vectors across filters ignore" \
            if c["pointwise"] == 2 else "the 1x1 GEMM ignores" if len(pointwise) == 2 else None
        if other and any(c[name] != defaults[name] for name in ignored[other]):
            return f"{other} the direct conv's blocks (one point of them is enough)"
        if c["pointwise"] != 2 and c["ranges"] != defaults["ranges"]:
            return "only vectors across filters take the plane in ranges (one point of them is enough)"
        return None

    return _space(call, target, [
        ("out_block", values((1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14), high=o)),
        ("vectors", values((1, 2, 3, 4))),
        ("tiles_per_block", values((1, 2, 4, 8))),
        ("channel_block", values((8, 16, 32, 64, 128), high=max(8, cg))),
        ("out_groups", values((1, 2, 4))),
        ("winograd", algorithms),
        ("pointwise", pointwise),
        ("ranges", values((1, target.threads)) if len(pointwise) == 2 else (0,)),
    ], rule)


def _depthwise_space(call: KernelCall, target: Target) -> Space:
    p = call.params
    vectors = ("dw_vectors", values((1, 2, 4, 8, 16)))
    if not depthwise_conv.supports(p["weight_shape"], p["in_shape"], p["strides"], p["dilations"], p["groups"]):
        return _space(call, target, [vectors], lambda c: None)
    defaults = knobs_used(call, None, target, ("dw_vectors", "dw_rows"))

    def rule(c: dict) -> str | None:
        kernel, ignored = ("tap columns in registers", "dw_vectors") if c["depthwise"] == 2 else \
            ("the direct conv", "dw_rows")
        if c[ignored] != defaults[ignored]:
            return f"{kernel} ignores {ignored} (one point of it is enough)"
        return None

    rows = values((1, 2, 3, 4, 6, 8), high=_out_hw(call, tuple(p["weight_shape"][2:]))[0])
    return _space(call, target, [("depthwise", (1, 2)), ("dw_rows", rows), vectors], rule)


def dense_space(call: KernelCall, target: Target) -> Space:
    """One-row products (batch 1): vectors per step; else the register tile, k blocks, column tiles."""
    m, k = call.params["in_shape"]
    n = call.params["weight_shape"][0]
    if m == 1:
        return _space(call, target, [("gemv_vectors", values((1, 2, 4, 8, 16), high=ceil_div(n, target.lanes())))],
                      lambda c: None)

    def rule(c: dict) -> str | None:
        if c["row_block"] * c["vectors"] > target.vector_registers - c["vectors"] - 2:
            return "the register tile takes more than the vector registers"
        return None

    return _space(call, target, [
        ("row_block", values((1, 2, 4, 6, 8, 10, 12, 14), high=m)),
        ("vectors", values((1, 2, 3, 4))),
        ("k_block", values((64, 128, 256, 512), high=max(64, k))),
        ("col_tiles", values((1, 2, 4, 8))),
    ], rule)


SPACES: dict[str, Callable[[KernelCall, Target], Space]] = {
    "pattern_conv": pattern_conv_space,
    "csr_conv1x1": csr_conv1x1_space,
    "csr_dense": csr_dense_space,
    "dense_conv": dense_conv_space,
    "dense": dense_space,
}


def space_for(call: KernelCall, target: Target) -> Space:
    """The knob space of `call`'s generator on `target`."""
    return SPACES[call.generator](call, target)
