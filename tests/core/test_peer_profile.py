"""sparsec.runtime.peer_profile: onnxruntime's profile read node by node, matched to sparsec's layers by kind."""

from __future__ import annotations

import pytest

from sparsec.errors import UserError
from sparsec.runtime.peer_profile import (
    LayerGroup,
    PeerNode,
    format_comparison,
    group_totals,
    match_layers,
    peer_nodes,
)


def _event(node: str, op: str, us: float, weight=None, out=(1, 8, 4, 4), inp=(1, 8, 4, 4)) -> dict:
    inputs = [{"float": list(inp)}] + ([{"float": list(weight)}] if weight else [])
    return {"cat": "Node", "name": f"{node}_kernel_time", "dur": us,
            "args": {"op_name": op, "input_type_shape": inputs, "output_type_shape": [{"float": list(out)}]}}


def _row(result: str, op: str, fmt: str = "dense", ms: float | None = 1.0, macs: int = 0) -> dict:
    return {"result": result, "op": op, "format": fmt, "median_ms": ms, "kept_macs": macs}


def _node(name: str, op: str, ms: float = 2.0, weight=(8, 8, 3, 3), out=(1, 8, 28, 28)) -> PeerNode:
    return PeerNode(name, op, ms, weight, out)


def test_each_node_gets_the_median_of_its_runs_after_the_warmup():
    events = [{"cat": "Session", "name": "model_run", "dur": 999}]
    for us in (900, 100, 300, 200, 400):  # the first run is onnxruntime's allocating one
        events += [_event("conv_nchwc", "Conv", us, weight=(8, 8, 3, 3), inp=(1, 8, 8, 8)),
                   {"cat": "Node", "name": "conv_nchwc_fence_before", "dur": 5, "args": {}},
                   _event("pool", "MaxPool", us / 10)]
    nodes = peer_nodes(events, warmup=1)
    assert [(n.name, n.op, n.kind) for n in nodes] == [("conv_nchwc", "Conv", "conv"), ("pool", "MaxPool", "pool")]
    assert nodes[0].ms == pytest.approx(0.25)  # median of 100, 200, 300, 400 us
    assert nodes[1].ms == pytest.approx(0.025)
    assert nodes[0].weight_shape == (8, 8, 3, 3) and nodes[1].weight_shape is None
    assert nodes[0].describe() == "conv 3x3 s2 -> 4x4"  # an 8x8 input


def test_layers_match_the_nodes_of_their_kind_in_execution_order():
    layers = [_row("relu1", "conv2d"), _row("pool1", "max_pool", "fused into %relu1", None),
              _row("relu2", "conv2d", "pattern"), _row("flat", "reshape"), _row("fc", "linear", "csr")]
    nodes = [_node("a_nchwc", "Conv"), _node("pool1_nchwc", "NchwcMaxPool", weight=None), _node("b_nchwc", "FusedConv"),
             _node("reorder", "ReorderOutput", weight=None), _node("fused fc", "FusedGemm", weight=(10, 32))]
    pairs = match_layers(layers, nodes)
    assert [(p.layer, p.peer.name if p.peer else None) for p in pairs] == [
        ("relu1", "a_nchwc"), ("pool1", "pool1_nchwc"), ("relu2", "b_nchwc"), ("flat", None), ("fc", "fused fc")]


def test_more_peer_nodes_of_a_kind_than_layers_is_an_error():
    with pytest.raises(UserError) as err:
        match_layers([_row("relu1", "conv2d")], [_node("a", "Conv"), _node("b", "Conv")])
    assert str(err.value) == ("onnxruntime ran 2 conv node(s), sparsec 1; "
                              "the two graphs cannot be matched layer by layer")


def test_more_layers_of_a_kind_than_peer_nodes_is_an_error():
    with pytest.raises(UserError) as err:
        match_layers([_row("relu1", "conv2d"), _row("relu2", "conv2d")], [_node("a", "Conv")])
    assert str(err.value) == ("layer %relu2: onnxruntime ran 1 conv node(s) and sparsec more; "
                              "the two graphs cannot be matched layer by layer")


def test_groups_sum_layers_of_one_plane_kernel_and_format():
    layers = [_row("a", "conv2d", "pattern", 1.0), _row("b", "conv2d", "pattern", 3.0),
              _row("c", "conv2d", "dense", 2.0), _row("p", "max_pool", "fused into %b", None)]
    nodes = [_node("a", "Conv", 4.0), _node("b", "Conv", 8.0), _node("c", "Conv", 1.0, weight=(8, 8, 1, 1)),
             _node("p", "MaxPool", 0.5, weight=None, out=(1, 8, 14, 14))]
    groups = group_totals(match_layers(layers, nodes))
    assert groups == [LayerGroup("conv 3x3 -> 28x28, pattern", 2, 4.0, 12.0, 0),
                      LayerGroup("conv 1x1 -> 28x28, dense", 1, 2.0, 1.0, 0),
                      LayerGroup("pool, fused into its conv", 1, 0.0, 0.5, 0)]
    text = format_comparison(match_layers(layers, nodes))
    assert "| conv 3x3 -> 28x28, pattern | 2 | 4.000 | 12.000 | 3.00x |" in text
    assert "| **matched layers** | 4 | 6.000 | 13.500 | 2.25x |" in text
    assert "| p | fused into %b | not called | p (MaxPool) | 0.500 | - |" in text


def test_sorts_carry_their_useful_rate_and_the_target_is_put_in_roofline_terms():
    # a: 1e9 useful MACs in 20 ms = 100 GFLOP/s; c: 0.5e9 in 5 ms = 200 GFLOP/s; the peak 250
    layers = [_row("a", "conv2d", "pattern", 20.0, macs=10**9), _row("c", "conv2d", "dense", 5.0, macs=5 * 10**8),
              _row("p", "max_pool", "dense", 1.0)]
    nodes = [_node("a", "Conv", 60.0), _node("c", "Conv", 4.0, weight=(8, 8, 1, 1)),
             _node("p", "MaxPool", 0.5, weight=None, out=(1, 8, 14, 14))]
    pairs = match_layers(layers, nodes)
    assert [g.kept_macs for g in group_totals(pairs)] == [10**9, 5 * 10**8, 0]
    text = format_comparison(pairs, peak=250.0, speedup=4.0)
    assert "| conv 3x3 -> 28x28, pattern | 1 | 20.000 | 60.000 | 3.00x | 100.0 | 40% |" in text
    assert "| conv 1x1 -> 28x28, dense | 1 | 5.000 | 4.000 | 0.80x | 200.0 | 80% |" in text
    assert "| pool, dense | 1 | 1.000 | 0.500 | 0.50x | | |" in text
    # 3e9 useful FLOP over 26 ms = 115.4 GFLOP/s; 64.5 / 4 = 16.125 ms asks 186.0 GFLOP/s
    assert "| **matched layers** | 3 | 26.000 | 64.500 | 2.48x | 115.4 | 46% |" in text
    assert ("Target onnxruntime / sparsec >= 4x: the matched layers in at most 16.125 ms (onnxruntime's 64.500 / 4), "
            "186.0 useful GFLOP/s, 74% of the FMA peak (250.0 GFLOP/s); "
            "sparsec now 26.000 ms, 115.4 GFLOP/s, 46%.") in text
    # c and p at onnxruntime's 4.0 and 0.5 ms: 20 + 4 + 0.5
    assert "With every sort sparsec runs slower at onnxruntime's time: 24.500 ms, onnxruntime / sparsec 2.63x." in text


def test_without_the_peak_the_tables_have_no_share_and_no_target():
    pairs = match_layers([_row("a", "conv2d", "pattern", 2.0, macs=10**9)], [_node("a", "Conv", 6.0)])
    text = format_comparison(pairs)
    assert "| conv 3x3 -> 28x28, pattern | 1 | 2.000 | 6.000 | 3.00x | 1000.0 |" in text
    assert "of peak" not in text and "Target" not in text


def test_a_target_over_layers_without_kept_work_gives_its_time_but_no_rate():
    pairs = match_layers([_row("p", "max_pool", "dense", 1.0)], [_node("p", "MaxPool", 0.5, weight=None)])
    text = format_comparison(pairs, peak=250.0, speedup=2.0)
    assert ("Target onnxruntime / sparsec >= 2x: the matched layers in at most 0.250 ms (onnxruntime's 0.500 / 2); "
            "sparsec now 1.000 ms.") in text
