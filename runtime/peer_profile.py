"""sparsec's layers against onnxruntime's own per-node times: where the peer engine is faster.

onnxruntime's profiler times each node it runs after its graph fusions (a conv with its batch
norm, activation and residual add is one node, in NCHWc on x86); sparsec's VM instrument hook
times each kernel (`bench.profile_layers`). The two graphs differ in names and fusions, so layers
are matched by kind in execution order: the k-th conv or fully connected layer of one is the
k-th of the other, pools likewise, and a layer count that differs is an error, not a guess.

    rows = compare_layers(model, masks, inputs, threads=2, runs=25)
    print(format_comparison(rows))

`python benchmarks/compare_layers.py M2` prints it for a benchmark case.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from sparsec.check import onnxruntime_session
from sparsec.errors import UserError
from sparsec.prune import apply_masks
from sparsec.sparsity import useful_gflops

# onnxruntime op names (after its fusions) and sparsec's manifest ops, by the kind they match on
_ORT_KINDS = {"Conv": "conv", "FusedConv": "conv", "NchwcConv": "conv", "Gemm": "fc", "FusedGemm": "fc",
              "MatMul": "fc", "FusedMatMul": "fc", "MaxPool": "pool", "AveragePool": "pool",
              "GlobalAveragePool": "pool", "GlobalMaxPool": "pool", "NchwcMaxPool": "pool",
              "NchwcAveragePool": "pool", "NchwcGlobalAveragePool": "pool"}
_SPARSEC_KINDS = {"conv2d": "conv", "linear": "fc", "max_pool": "pool", "avg_pool": "pool", "global_avg_pool": "pool"}
WARMUP_RUNS = 3  # onnxruntime's first runs allocate: left out of its medians


@dataclass(frozen=True)
class PeerNode:
    """One node onnxruntime ran: its median time and what it computed."""

    name: str
    op: str
    ms: float
    weight_shape: tuple[int, ...] | None  # a conv's or FC's second input
    out_shape: tuple[int, ...]
    in_shape: tuple[int, ...] = ()

    @property
    def kind(self) -> str:
        return _ORT_KINDS.get(self.op, "other")

    def describe(self) -> str:
        """e.g. "conv 3x3 s2 -> 28x28": what groups layers of one sort."""
        if self.kind == "conv" and self.weight_shape and len(self.weight_shape) == 4:
            kh, kw = self.weight_shape[2:]
            planes = len(self.in_shape) == len(self.out_shape) == 4
            stride = self.in_shape[2] // max(1, self.out_shape[2]) if planes else 1
            return f"conv {kh}x{kw}{f' s{stride}' if stride > 1 else ''} -> {'x'.join(map(str, self.out_shape[2:]))}"
        return self.kind


@dataclass(frozen=True)
class LayerPair:
    """A sparsec layer and the onnxruntime node it was matched with (None for kinds not matched)."""

    layer: str
    format: str
    sparsec_ms: float | None  # None: not called (a pool fused into its conv)
    peer: PeerNode | None
    kept_macs: int = 0  # the layer's useful multiply-adds (nonzero weights x output positions)


@dataclass(frozen=True)
class LayerGroup:
    """The matched layers of one sort (`PeerNode.describe` and sparsec's format), summed."""

    sort: str
    count: int
    sparsec_ms: float
    peer_ms: float
    kept_macs: int


def peer_nodes(events: list[dict], warmup: int = WARMUP_RUNS) -> list[PeerNode]:
    """The nodes of an onnxruntime profile (its JSON events) in execution order, each with the
    median of its kernel times after the first `warmup` runs."""
    times: dict[str, list[float]] = {}
    info: dict[str, dict] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        times.setdefault(node, []).append(event["dur"] / 1e3)
        info.setdefault(node, event.get("args", {}))
    nodes = []
    for node, durations in times.items():
        args = info[node]
        inputs = [next(iter(shape.values())) for shape in args.get("input_type_shape", [])]
        outputs = [next(iter(shape.values())) for shape in args.get("output_type_shape", [])]
        kept = durations[warmup:] or durations
        nodes.append(PeerNode(node, args.get("op_name", ""), statistics.median(kept),
                              tuple(inputs[1]) if len(inputs) > 1 else None, tuple(outputs[0]) if outputs else (),
                              tuple(inputs[0]) if inputs else ()))
    return nodes


def match_layers(layers: list[dict], nodes: list[PeerNode]) -> list[LayerPair]:
    """Each sparsec layer (manifest rows with `median_ms`) with the onnxruntime node of the same
    kind and rank; layers of other kinds (reshapes, adds) get none."""
    by_kind: dict[str, list[PeerNode]] = {}
    for node in nodes:
        by_kind.setdefault(node.kind, []).append(node)
    ranks: dict[str, int] = {}
    pairs = []
    for row in layers:
        kind = _SPARSEC_KINDS.get(row["op"])
        peer = None
        if kind:
            rank = ranks[kind] = ranks.get(kind, -1) + 1
            peers = by_kind.get(kind, [])
            if rank >= len(peers):
                raise UserError(f"layer %{row['result']}: onnxruntime ran {len(peers)} {kind} node(s) and sparsec "
                                "more; the two graphs cannot be matched layer by layer")
            peer = peers[rank]
        pairs.append(LayerPair(row["result"], row["format"], row["median_ms"], peer, row.get("kept_macs") or 0))
    for kind, peers in by_kind.items():
        if kind != "other" and len(peers) != ranks.get(kind, -1) + 1:
            raise UserError(f"onnxruntime ran {len(peers)} {kind} node(s), sparsec {ranks.get(kind, -1) + 1}; "
                            "the two graphs cannot be matched layer by layer")
    return pairs


def group_totals(pairs: list[LayerPair]) -> list[LayerGroup]:
    """The matched layers per sort: a conv's kernel size and output plane with sparsec's format, an FC
    or pool with its format; in order of first use."""
    groups: dict[str, list] = {}
    for pair in pairs:
        if pair.peer is None:
            continue
        fmt = "fused into its conv" if pair.format.startswith("fused into") else pair.format
        key = f"{pair.peer.describe()}, {fmt}"
        total = groups.setdefault(key, [0, 0.0, 0.0, 0])
        total[0] += 1
        total[1] += pair.sparsec_ms or 0.0
        total[2] += pair.peer.ms
        total[3] += pair.kept_macs
    return [LayerGroup(key, *total) for key, total in groups.items()]


def _profiled_session(model: onnx.ModelProto, masks, threads: int, folder: str):
    from sparsec.runtime.bench import onnxruntime_options

    options = onnxruntime_options(threads, "comparing layers needs onnxruntime")
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(folder) / "ort")
    return onnxruntime_session(apply_masks(model, masks) if masks else model, "comparing layers", options)


def compare_layers(model: onnx.ModelProto, masks, inputs: dict[str, np.ndarray], *, threads: int,
                   runs: int = 25) -> list[LayerPair]:
    """sparsec's per-layer profile matched with onnxruntime's, both on `threads` threads, their
    runs interleaved (a shared machine's speed drifts: profiles taken one after the other compared
    two machine states, 1x1 convs at 0.77x in one and 1.7x in the next)."""
    from sparsec.runtime.bench import make_engine, profile_layers

    with tempfile.TemporaryDirectory() as folder:
        session = _profiled_session(model, masks, threads, folder)
        for _ in range(WARMUP_RUNS):
            session.run(None, inputs)
        engine = make_engine("sparsec", model, masks, inputs, threads=threads)
        layers = profile_layers(engine, runs, between=lambda: session.run(None, inputs))
        events = json.loads(Path(session.end_profiling()).read_text())
    return match_layers(layers, peer_nodes(events, warmup=WARMUP_RUNS + 1))  # + sparsec's warm-up round


def _ratio(theirs: float, ours: float | None) -> str:
    return f"{theirs / ours:.2f}x" if ours else "-"


def _rate(macs: int, ms: float, peak: float | None) -> str:
    """Useful GFLOP/s and, with the FMA peak, its share: two table cells (blank without MACs)."""
    gflops = useful_gflops(macs, ms) if macs else None
    if gflops is None:
        return " | |" if peak else " |"
    return f" {gflops:.1f} |" + (f" {gflops / peak:.0%} |" if peak else "")


def group_table(pairs: list[LayerPair], peak: float | None = None) -> list[str]:
    """Markdown rows per sort of layer (onnxruntime / sparsec > 1: sparsec faster), with sparsec's
    useful GFLOP/s and, given the machine's FMA `peak`, their share of it."""
    head = "| layers | count | sparsec ms | onnxruntime ms | onnxruntime / sparsec | useful GFLOP/s |"
    rule = "|---|---:|---:|---:|---:|---:|"
    lines = [head + (" of peak |" if peak else ""), rule + ("---:|" if peak else "")]
    groups = group_totals(pairs)
    for g in groups:
        lines.append(f"| {g.sort} | {g.count} | {g.sparsec_ms:.3f} | {g.peer_ms:.3f} | "
                     f"{_ratio(g.peer_ms, g.sparsec_ms)} |{_rate(g.kept_macs, g.sparsec_ms, peak)}")
    count, ours, theirs, macs = _sums(groups)
    return lines + [f"| **matched layers** | {count} | {ours:.3f} | {theirs:.3f} | {_ratio(theirs, ours)} |"
                    f"{_rate(macs, ours, peak)}"]


def _sums(groups: list[LayerGroup]) -> tuple[int, float, float, int]:
    return (sum(g.count for g in groups), sum(g.sparsec_ms for g in groups), sum(g.peer_ms for g in groups),
            sum(g.kept_macs for g in groups))


def target_lines(pairs: list[LayerPair], speedup: float, peak: float) -> list[str]:
    """What a speed-up target over onnxruntime asks of the matched layers, in roofline terms: the
    time it allows, the useful GFLOP/s and share of the FMA peak that time means, against where
    sparsec is; and the speed-up if every sort slower than onnxruntime's ran at its time."""
    groups = group_totals(pairs)
    _, ours, theirs, macs = _sums(groups)
    allowed = theirs / speedup
    at_parity = sum(min(g.sparsec_ms, g.peer_ms) for g in groups)
    target = (f"Target onnxruntime / sparsec >= {speedup:g}x: the matched layers in at most {allowed:.3f} ms "
              f"(onnxruntime's {theirs:.3f} / {speedup:g})")
    if macs and allowed and ours:  # rates need kept work and both times
        needed, now = useful_gflops(macs, allowed), useful_gflops(macs, ours)
        target += (f", {needed:.1f} useful GFLOP/s, {needed / peak:.0%} of the FMA peak ({peak:.1f} GFLOP/s); "
                   f"sparsec now {ours:.3f} ms, {now:.1f} GFLOP/s, {now / peak:.0%}.")
    else:
        target += f"; sparsec now {ours:.3f} ms."
    return [target, f"With every sort sparsec runs slower at onnxruntime's time: {at_parity:.3f} ms, "
                    f"onnxruntime / sparsec {_ratio(theirs, at_parity)}."]


def pair_table(pairs: list[LayerPair]) -> list[str]:
    """Markdown rows per matched layer."""
    lines = ["| layer | format | sparsec ms | onnxruntime node | onnxruntime ms | onnxruntime / sparsec |",
             "|---|---|---:|---|---:|---:|"]
    for pair in pairs:
        if pair.peer is not None:
            ours_text = "not called" if pair.sparsec_ms is None else f"{pair.sparsec_ms:.3f}"
            lines.append(f"| {pair.layer} | {pair.format} | {ours_text} | {pair.peer.name} ({pair.peer.op}) | "
                         f"{pair.peer.ms:.3f} | {_ratio(pair.peer.ms, pair.sparsec_ms)} |")
    return lines


def format_comparison(pairs: list[LayerPair], peak: float | None = None, speedup: float | None = None) -> str:
    """Markdown: per sort of layer (with the roofline, given the FMA `peak`), what a `speedup` target
    asks (given both), then per layer."""
    target = ["", *target_lines(pairs, speedup, peak)] if peak and speedup else []
    return "\n".join([*group_table(pairs, peak), *target, "", *pair_table(pairs)])
