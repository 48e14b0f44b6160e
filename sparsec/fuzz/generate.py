"""Random small CNNs with pruning masks: the cases of the differential fuzzer (no TVM here).

`random_case(seed)` draws an opset, an input `[1, C, H, W]` (C 1-8, H and W 5-20), a body of
1-5 blocks (conv units, pools, residual adds, concats, squeeze-excite gates, elementwise ops with
constants, standalone activations / batch norms / aliases) and a head (none, global pool or
flatten + fully connected layers, softmax, a matmul of two computed tensors), then masks for
its weights (`sparsec.fuzz.masks`). Every choice comes from `numpy.random.default_rng(seed)`,
so a seed is a complete reproducer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from sparsec.fuzz.graph import ALIASES, Net, conv_out, pool_out
from sparsec.fuzz.masks import random_masks

# Opsets where an op the frontend reads changed form: 11 (Clip bounds as inputs), 13 (Softmax
# axis, Squeeze axes as input), 14 (HardSwish), 18 (ReduceMean axes as input), 21 the newest.
OPSETS = (11, 12, 13, 14, 17, 18, 21)
MAX_FC_INPUT = 2048  # a flattened tensor bigger than this is pooled first: small cases compile fast


@dataclass(frozen=True)
class Case:
    """One generated model, the masks to compile it with, the seed that made both, the shape of
    its input (batch 1, even where the model leaves the batch symbolic) and of each output (the
    model does not declare them, see `Net.finish`)."""

    seed: int
    model: onnx.ModelProto
    masks: dict[str, np.ndarray]
    input_shape: tuple[int, ...]
    shapes: dict[str, tuple[int, ...]]


def random_case(seed: int) -> Case:
    """The case of `seed`: the same seed always gives the same model and masks."""
    rng = np.random.default_rng(seed)
    opset = OPSETS[int(rng.integers(len(OPSETS)))]
    h = int(rng.integers(5, 21))
    w = h if rng.random() < 0.5 else int(rng.integers(5, 21))
    net = Net(rng, opset, (1, int(rng.integers(1, 9)), h, w))
    net.symbolic_batch = bool(rng.random() < 0.1)
    x = "input"
    for _ in range(int(rng.integers(1, 6))):
        x = net.pick(BLOCKS, BLOCK_WEIGHTS)(net, x)
    outputs = [head(net, x)]
    extra = _extra_output(net, outputs[0])
    if extra is not None:
        outputs.append(extra)
    model = net.finish(f"fuzz_{seed}", outputs)
    masks = random_masks(model, rng, net.hidden_weights)
    return Case(seed, model, masks, net.shapes["input"], {name: net.shapes[name] for name in outputs})


# ---- conv units and their windows ----------------------------------------------------------


def _channels(net: Net) -> int:
    """Mostly 4-24; sometimes 1-3, sometimes past the 64-channel blocks of the kernels."""
    low, high = net.pick([(4, 25), (1, 4), (65, 81)], (17, 2, 1))
    return int(net.rng.integers(low, high))


def _axis_window(net: Net, size: int, k: int) -> tuple[int, int, int, int]:
    """(stride, dilation, pad_begin, pad_end) for one axis; the window always fits."""
    stride = int(net.pick((1, 2, 3), (6, 3, 1))) if size >= 6 else 1
    dilation = 2 if k > 1 and net.chance(0.2) else 1
    if net.chance(0.4):  # "same"-style symmetric pads
        begin = end = dilation * (k - 1) // 2
    else:
        top = k // 2 + 1 if k > 1 else int(net.chance(0.3))
        begin, end = (int(net.rng.integers(0, top + 1)) for _ in range(2))
    while conv_out(size, k, stride, begin, end, dilation) < 1:
        end += 1
    return stride, dilation, begin, end


def conv_unit(net: Net, x: str) -> str:
    """A Conv of a random kind (3x3, 1x1, depthwise, grouped, other kernel sizes) and window, then
    maybe BatchNormalization and an activation, in either order."""
    cin, h, w = net.shapes[x][1:]
    kind = net.pick(("3x3", "1x1", "depthwise", "grouped", "other"), (4, 3, 2, 1 if _divisor(cin) else 0, 1))
    groups, kernel, cout = 1, (3, 3), _channels(net)
    if kind == "1x1":
        kernel = (1, 1)
    elif kind == "depthwise":
        groups, cout = cin, cin * int(net.pick((1, 2), (3, 1)))
        kernel = net.pick([(3, 3), (5, 5), (2, 2), (3, 1)], (8, 1, 0.5, 0.5))
    elif kind == "grouped":
        groups = _divisor(cin)
        cout = groups * int(net.rng.integers(1, 5))
        kernel = net.pick([(3, 3), (1, 1)])
    elif kind == "other":
        kernel = net.pick([(5, 5), (2, 2), (1, 3), (3, 1), (4, 4)])
    strides, pads, dilations, auto = _window(net, (h, w), kernel)
    y = net.conv(x, cout, kernel, strides, pads, dilations, groups, bias=net.chance(0.7), auto_pad=auto)
    return _epilogue(net, y)


def _window(net: Net, size: tuple[int, int], kernel: tuple[int, int]):
    """strides, pads, dilations and (sometimes) auto_pad of a conv: mostly the same on both axes."""
    (h, w), same_both = size, net.chance(0.85)
    first = _axis_window(net, h, kernel[0])
    second = _axis_window(net, w, kernel[1])
    if same_both and kernel[0] == kernel[1] and conv_out(w, kernel[1], first[0], first[2], first[3], first[1]) >= 1:
        second = first
    (sh, dh, pt, pb), (sw, dw, pl, pr) = first, second
    auto = None
    if (dh, dw) == (1, 1) and net.chance(0.1):
        valid = conv_out(h, kernel[0], sh, 0, 0, 1) >= 1 and conv_out(w, kernel[1], sw, 0, 0, 1) >= 1
        auto = net.pick(["SAME_UPPER", "SAME_LOWER"] + ["VALID"] * valid)
    return (sh, sw), (pt, pl, pb, pr), (dh, dw), auto


def _divisor(c: int) -> int:
    """A divisor of c strictly between 1 and c (0 when there is none): a grouped conv's groups."""
    return max((d for d in range(2, c) if c % d == 0), default=0)


def _epilogue(net: Net, y: str) -> str:
    bn, act = net.chance(0.35), net.chance(0.6)
    if bn and act and net.chance(0.15):  # ReLU then BN: a BN that cannot fold into the conv
        return net.batchnorm(net.activation(y))
    y = net.batchnorm(y) if bn else y
    return net.activation(y) if act else y


def project(net: Net, x: str, target: tuple[int, ...]) -> str | None:
    """A value of shape `target` from x: x itself, or a conv whose window lands exactly on the
    target's H, W (None when no small window does)."""
    n, c, h, w = net.shapes[x]
    if net.shapes[x] == tuple(target) and net.chance(0.7):
        return x
    choices = []
    for k in (1, 3):
        for d in (1, 2) if k > 1 else (1,):
            rows = _solve_axis(h, target[2], k, d)
            cols = _solve_axis(w, target[3], k, d)
            choices += [(k, d, r, q) for r in rows for q in cols]
    if not choices:
        return None
    k, d, (sh, pt, pb), (sw, pl, pr) = net.pick(choices)
    y = net.conv(x, target[1], (k, k), (sh, sw), (pt, pl, pb, pr), (d, d), bias=net.chance(0.5))
    return net.batchnorm(y) if net.chance(0.3) else y


def _solve_axis(size: int, target: int, k: int, d: int) -> list[tuple[int, int, int]]:
    return [(s, b, e) for s in (1, 2, 3) for b in range(3) for e in range(3)
            if conv_out(size, k, s, b, e, d) == target]


# ---- body blocks ---------------------------------------------------------------------------


def conv_block(net: Net, x: str) -> str:
    return conv_unit(net, x)


def pool_block(net: Net, x: str) -> str:
    kind = net.pick(("MaxPool", "AveragePool", "global"), (3, 3, 1))
    if kind == "global":
        return net.global_pool(x)
    h, w = net.shapes[x][2:]
    k = int(net.pick((1, 2, 3), (1, 3, 3)))
    kernel = (k, k) if net.chance(0.8) else (k, int(net.pick((1, 2, 3))))
    strides = (int(net.pick((1, 2, 3), (2, 3, 1))),) * 2
    dilations = (2, 2) if kind == "MaxPool" and net.chance(0.15) else (1, 1)
    pads = tuple(int(net.rng.integers(0, kernel[a % 2])) if net.chance(0.5) else 0 for a in range(4))
    axes = [(s, kk, st, pads[a], pads[a + 2], d) for a, (s, kk, st, d) in enumerate(zip((h, w), kernel, strides,
                                                                                          dilations))]
    # Where onnx and onnxruntime count ceil-mode windows differently, onnxruntime may refuse the
    # model (see `pool_out`): such a model has no reference result to compare with.
    ceil = net.chance(0.3) and all(pool_out(*a, True) == pool_out(*a, True, window_in_right_pad=True) for a in axes)
    if min(pool_out(*a, ceil) for a in axes) < 1:
        kernel, strides, pads, dilations = (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)  # the window does not fit
    return net.pool(x, kind, kernel, strides, pads, ceil, dilations, count_include_pad=net.chance(0.5))


def residual_block(net: Net, x: str) -> str:
    """Two paths from x joined by Add: 1-2 conv units, and x itself or a projection conv."""
    a = x
    for _ in range(int(net.rng.integers(1, 3))):
        a = conv_unit(net, a)
    b = project(net, x, net.shapes[a])
    if b is None:
        return a
    y = net.binary("Add", *((a, b) if net.chance(0.5) else (b, a)))
    return net.activation(y) if net.chance(0.5) else y


def concat_block(net: Net, x: str) -> str:
    """Branches of equal H, W joined along channels (or, rarely, along H or W)."""
    first = conv_unit(net, x) if net.chance(0.8) else pool_block(net, x)
    if net.chance(0.15):  # along a spatial axis: the other branch keeps every other dim
        other = net.activation(first) if net.chance(0.5) else net.pool(first, "MaxPool", (3, 3), (1, 1),
                                                                        (1, 1, 1, 1), False)
        return net.concat([first, other], int(net.pick((2, 3, -1))))
    parts = [first]
    for _ in range(int(net.rng.integers(1, 3))):
        target = (1, _channels(net), *net.shapes[first][2:])
        use_x = net.shapes[x][2:] == target[2:] and net.chance(0.3)
        part = x if use_x else project(net, x, target)
        if part is not None:
            parts.append(net.activation(part) if part != x and net.chance(0.4) else part)
    order = net.rng.permutation(len(parts))
    return net.concat([parts[i] for i in order], int(net.pick((1, -3), (3, 1))))


def gate_block(net: Net, x: str) -> str:
    """Squeeze-and-excite: x * gate(fc(relu(fc(mean over H, W)))), the gate broadcast over H, W;
    the fcs are 1x1 convs or Gemm / MatMul between a squeeze and an unsqueeze."""
    c = net.shapes[x][1]
    hidden = max(1, c // int(net.pick((1, 2, 4))))
    s = net.global_pool(x)
    if net.chance(0.5):
        s = net.conv(s, hidden, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), bias=net.chance(0.8))
        s = net.conv(net.activation(s), c, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), bias=net.chance(0.8))
    else:
        s = net.squeeze("Squeeze", s, [2, 3], (1, c)) if net.chance(0.5) else net.flatten(s, 1)
        s = _fc(net, net.activation(_fc(net, s, hidden)), c)
        s = net.squeeze("Unsqueeze", s, [2, 3], (1, c, 1, 1)) if net.chance(0.5) else \
            net.reshape(s, [1, c, 1, 1], (1, c, 1, 1))
    s = net.node(net.pick(("Sigmoid", "HardSigmoid")), [s], net.shapes[s])
    op = "Mul" if net.chance(0.8) else "Add"
    return net.binary(op, *((x, s) if net.chance(0.5) else (s, x)))


def constant_block(net: Net, x: str) -> str:
    """Add / Mul by a constant that broadcasts (per channel, per column, scalar...)."""
    _, c, h, w = net.shapes[x]
    shape = net.pick([(c, 1, 1), (1, c, 1, 1), (1,), (), (w,), (1, 1, h, w), (c, h, w)])
    const = net.const("k", net.normal(shape, 0.5) + (1.0 if net.chance(0.5) else 0.0))
    op = net.pick(("Add", "Mul"))
    return net.binary(op, *((x, const) if net.chance(0.7) else (const, x)))


def tied_block(net: Net, x: str) -> str:
    """One conv weight used by two layers in a row (one initializer, one mask, two windows)."""
    c = net.shapes[x][1]
    k = int(net.pick((3, 1), (3, 1)))
    first = net.conv(x, c, (k, k), (1, 1), (k // 2,) * 4, (1, 1), bias=net.chance(0.5))
    shared = net.nodes[-1].input[1]
    y = _epilogue(net, first)
    stride, dilation, begin, end = _axis_window(net, min(net.shapes[y][2:]), k)
    return net.conv(y, c, (k, k), (stride, stride), (begin, begin, end, end), (dilation, dilation),
                    bias=net.chance(0.5), weight=shared)


def activation_block(net: Net, x: str) -> str:
    return net.activation(x)


def batchnorm_block(net: Net, x: str) -> str:
    return net.batchnorm(x)


def alias_block(net: Net, x: str) -> str:
    return net.alias(x)


BLOCKS = (conv_block, pool_block, residual_block, concat_block, gate_block, tied_block, constant_block,
          activation_block, batchnorm_block, alias_block)
BLOCK_WEIGHTS = (5, 2, 2, 1.5, 0.7, 0.4, 0.7, 0.5, 0.4, 0.3)


# ---- heads ---------------------------------------------------------------------------------


def head(net: Net, x: str) -> str:
    """The part after the body; returns the graph's (main) output, never an alias's output."""
    kind = net.pick(("none", "pool_fc", "flatten_fc", "softmax", "matmul"), (2, 4, 3, 0.7, 0.7))
    if kind == "none":
        y = x if x != "input" and net.nodes[-1].op_type not in ALIASES else conv_unit(net, x)
    elif kind == "softmax":
        y = net.softmax(x, int(net.pick((1, -1, -3))))
    elif kind == "matmul":
        y = _matmul_head(net, x)
    else:
        if kind == "pool_fc" or net.shapes[x][1] * net.shapes[x][2] * net.shapes[x][3] > MAX_FC_INPUT:
            x = net.global_pool(x) if net.chance(0.8) else net.reduce_mean(x, keepdims=False)
        y = _fc_stack(net, _to_matrix(net, x))
    if net.nodes[-1].op_type in ALIASES:
        y = net.activation(y)
    return y


def _to_matrix(net: Net, x: str) -> str:
    """A rank-2 view of x, written in one of the ways exporters write it."""
    if len(net.shapes[x]) == 2:
        return x
    n, c, h, w = net.shapes[x]
    way = net.pick(("flatten", "flatten_axis", "reshape", "shape_subgraph", "squeeze"),
                   (4, 1, 2, 1, 1 if (h, w) == (1, 1) else 0))
    if way == "flatten":
        return net.flatten(x, 1)
    if way == "flatten_axis":
        return net.flatten(x, int(net.pick((0, 2, -1))))
    if way == "reshape":
        return net.reshape(x, net.pick([[1, -1], [0, -1], [1, c * h * w]]), (1, c * h * w))
    if way == "shape_subgraph":
        return net.shape_flatten(x)
    return net.squeeze("Squeeze", x, net.pick([[2, 3], [-1, -2]]), (n, c))


def _fc(net: Net, x: str, n_out: int) -> str:
    return net.gemm(x, n_out) if net.chance(0.6) else net.matmul(x, n_out)


def _fc_stack(net: Net, x: str) -> str:
    for _ in range(int(net.rng.integers(1, 3))):
        x = _fc(net, x, int(net.rng.integers(2, 17)))
        if net.chance(0.5):
            x = net.activation(x)
    return net.softmax(x, int(net.pick((-1, 1)))) if net.chance(0.4) else x


def _matmul_head(net: Net, x: str) -> str:
    """A product of two computed tensors: Reshape(x)[C, HW] @ Reshape(conv1x1(x))[HW, C2], as
    MatMul or as Gemm (alpha, beta, a constant C) with its B computed."""
    _, c, h, w = net.shapes[x]
    c2 = _channels(net)
    y = net.conv(x, c2, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), bias=net.chance(0.5))
    a = net.reshape(x, [c, h * w], (c, h * w))
    b = net.reshape(y, [h * w, -1], (h * w, c2))
    if net.chance(0.5):
        out = net.node("MatMul", [a, b], (c, c2))
    else:
        attrs = {"alpha": float(net.pick((1.0, 0.5))), "beta": float(net.pick((1.0, 2.0)))}
        bias = net.const("gemm.c", net.normal(net.pick([(c2,), (c, c2)]), 0.1))
        out = net.node("Gemm", [a, b, bias], (c, c2), **attrs)
    return net.softmax(out, int(net.pick((-1, 0)))) if net.chance(0.3) else out


def _extra_output(net: Net, main: str) -> str | None:
    """Sometimes a second graph output: an intermediate float value (that other ops also read)."""
    if not net.chance(0.15):
        return None
    alias_sources = {n.input[0] for n in net.nodes if n.op_type in ALIASES}
    candidates = [n.output[0] for n in net.nodes if n.op_type not in ALIASES and n.output[0] != main
                  and n.output[0] not in alias_sources | net.constants]
    return net.pick(candidates) if candidates else None
