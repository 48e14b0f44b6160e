"""The PCONV pruner: pattern sets, connectivity, unstructured pruning, and the masks file."""

from __future__ import annotations

import zipfile

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import numpy_helper

from sparsec.errors import UserError
from sparsec.models import conv_layer, fc_layer, mobilenet_v2, tiny_cnn, vgg16
from sparsec.prune import (
    CANDIDATE_PATTERNS,
    _keep_largest,
    load_masks,
    pattern_set,
    prune_model,
    save_masks,
    top4_patterns,
    weight_layers,
)
from sparsec.sparsity import empty_kernels, pattern_histogram, total_kernels

KEEP = 0.278  # PCONV's 3.6x connectivity pruning on VGG-16


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


@pytest.fixture(scope="module")
def vgg() -> onnx.ModelProto:
    return vgg16(resolution=32)


@pytest.fixture(scope="module")
def vgg_masks(vgg) -> dict[str, np.ndarray]:
    return prune_model(vgg, keep_kernels=KEEP)


VGG_STAGES = ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))  # (stage, convs in it)
PRUNED_CONVS = [f"conv{s}_{i}.weight" for s, n in VGG_STAGES for i in range(1, n + 1)][1:]  # all but conv1_1


def test_candidates_are_the_56_centre_patterns():
    assert len(CANDIDATE_PATTERNS) == len(set(CANDIDATE_PATTERNS)) == 56
    assert all(len(p) == 4 and 4 in p for p in CANDIDATE_PATTERNS)
    assert list(CANDIDATE_PATTERNS) == sorted(CANDIDATE_PATTERNS)


def test_masks_cover_every_weight_and_nothing_else(vgg, vgg_masks):
    shapes = {init.name: tuple(init.dims) for init in vgg.graph.initializer}
    assert list(vgg_masks) == [layer.weight for layer in weight_layers(vgg)]
    assert len(vgg_masks) == 16 and not any(k.endswith(".bias") for k in vgg_masks)
    assert all(m.dtype == bool and m.shape == shapes[k] for k, m in vgg_masks.items())


def test_vgg16_gets_exactly_8_patterns_with_the_centre(vgg_masks):
    seen = set()
    for name in PRUNED_CONVS:
        seen |= set(pattern_histogram(vgg_masks[name]))
    assert len(seen) == 8
    assert all(len(p) == 4 and 4 in p for p in seen)


def test_each_pruned_layer_keeps_its_fraction_of_kernels(vgg_masks):
    for name in PRUNED_CONVS:
        mask = vgg_masks[name]
        kernels = total_kernels(mask)
        assert kernels - empty_kernels(mask) == round(KEEP * kernels), name


def test_first_conv_stays_dense_unless_asked(vgg, vgg_masks):
    assert vgg_masks["conv1_1.weight"].all()
    pruned = prune_model(vgg, keep_kernels=KEEP, prune_first_conv=True)["conv1_1.weight"]
    histogram = pattern_histogram(pruned)
    assert len(histogram) <= 8 and all(p in CANDIDATE_PATTERNS for p in histogram)
    assert total_kernels(pruned) - empty_kernels(pruned) == round(KEEP * 192)


def test_fc_layers_untouched_by_default(vgg_masks):
    assert all(vgg_masks[f"fc{i}.weight"].all() for i in (6, 7, 8))


def test_kernels_keep_the_set_pattern_with_most_norm():
    model = tiny_cnn()
    weights = _weights(model)
    masks = prune_model(model, patterns=4)
    chosen = pattern_set([weights["features.2.weight"], weights["features.3.weight"]], 4)
    members = np.array([[t in p for t in range(9)] for p in chosen])
    for name in ("features.2.weight", "features.3.weight"):
        squares = weights[name].reshape(-1, 9).astype(np.float64) ** 2
        kept = (squares * masks[name].reshape(-1, 9)).sum(axis=1)
        np.testing.assert_allclose(kept, (squares @ members.T).max(axis=1))
        assert set(pattern_histogram(masks[name])) <= set(chosen)


def _conv_with_kernels(kernels: list[np.ndarray]) -> onnx.ModelProto:
    """A dense first conv, then a 3x3 conv whose kernels are the given 3x3 arrays (one filter)."""
    model = conv_layer((1, len(kernels), 5, 5), 1, bias=False)
    weight = np.stack(kernels)[None].astype(np.float32)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "conv.weight"))
    return model


def _kernel(taps: tuple[int, ...], big: float = 2.0) -> np.ndarray:
    k = np.full(9, 0.1, np.float32)
    k[list(taps)] = big
    return k.reshape(3, 3)


def test_pattern_set_is_most_frequent_top4_sets_ties_by_taps():
    a, b, c = (0, 1, 2, 4), (4, 6, 7, 8), (1, 3, 4, 5)
    kernels = [_kernel(a)] * 3 + [_kernel(b)] * 3 + [_kernel(c)] * 2 + [np.zeros((3, 3))]
    weight = np.stack(kernels)[None]
    assert pattern_set([weight], 1) == (a,)  # a and b tie at 3; (0,1,2,4) < (4,6,7,8)
    assert pattern_set([weight], 3) == (a, b, c)
    # Unseen candidates fill the set in tap order; the zero kernel does not vote.
    assert pattern_set([weight], 4)[3] == (0, 1, 3, 4)
    assert CANDIDATE_PATTERNS[top4_patterns(_kernel(c)[None, None])[0]] == c


def test_projection_and_first_conv_rule_on_a_crafted_layer():
    a, b = (0, 1, 2, 4), (4, 6, 7, 8)
    model = _conv_with_kernels([_kernel(a), _kernel(a), _kernel(b), _kernel(b), _kernel((0, 1, 4, 8))])
    assert prune_model(model, patterns=1)["conv.weight"].all()  # the only conv is the first
    mask = prune_model(model, patterns=2, prune_first_conv=True)["conv.weight"][0]
    # The set is {a, b} (2 votes each); (0,1,4,8) keeps more of its norm on a (0, 1, 4) than on b (4, 8).
    assert [tuple(np.flatnonzero(k).tolist()) for k in mask.reshape(-1, 9)] == [a, a, b, b, a]


def test_keep_kernels_zero_keeps_one_kernel_per_layer():
    masks = prune_model(tiny_cnn(), keep_kernels=0.0)
    for name in ("features.2.weight", "features.3.weight"):
        assert total_kernels(masks[name]) - empty_kernels(masks[name]) == 1


def test_unstructured_fraction_is_exact_and_drops_the_smallest():
    model = tiny_cnn()
    weights = _weights(model)
    masks = prune_model(model, unstructured=0.3)
    for name in ("features.4.weight", "classifier.weight"):  # the 1x1 conv and the FC
        mask, mags = masks[name], np.abs(weights[name])
        assert np.count_nonzero(~mask) == int(0.3 * mask.size + 0.5)
        assert mags[~mask].max() <= mags[mask].min()
    # 3x3 convs get patterns, not unstructured pruning: 4 taps in every kernel.
    assert (masks["features.2.weight"].reshape(-1, 9).sum(axis=1) == 4).all()


def test_unstructured_on_vgg_fc_layers(vgg):
    masks = prune_model(vgg, unstructured=0.9)
    for i in (6, 7, 8):
        mask = masks[f"fc{i}.weight"]
        assert np.count_nonzero(~mask) == round(0.9 * mask.size)


def test_matmul_weights_are_pruned_in_their_own_layout():
    mask = prune_model(fc_layer(64, 10, matmul=True), unstructured=0.5)["fc.weight"]
    assert mask.shape == (64, 10) and np.count_nonzero(mask) == 320


def test_depthwise_convs_stay_dense():
    model = mobilenet_v2(resolution=32)
    masks = prune_model(model, keep_kernels=0.5, unstructured=0.5)
    dw = [k for k in masks if ".dw." in k]
    assert len(dw) == 17 and all(masks[k].all() for k in dw)


def test_deterministic(vgg, vgg_masks):
    again = prune_model(vgg, keep_kernels=KEEP)
    assert list(again) == list(vgg_masks)
    assert all(np.array_equal(again[k], vgg_masks[k]) for k in again)


@given(arrays(np.float32, st.integers(1, 40), elements=st.sampled_from([0.0, 1.0, -1.0, 2.0, 0.5])),
       st.integers(0, 40))  # fmt: skip
def test_keep_largest_matches_a_stable_sort(values, n_keep):
    n_keep = min(n_keep, values.size)
    expected = np.zeros(values.size, dtype=bool)
    expected[np.argsort(-values, kind="stable")[:n_keep]] = True
    np.testing.assert_array_equal(_keep_largest(values, n_keep), expected)


@settings(max_examples=30, deadline=None)
@given(arrays(np.float32, (2, 6, 6, 3, 3), elements=st.floats(-4, 4, width=32)), st.integers(1, 56))
def test_every_pruned_kernel_is_a_set_pattern(weight, patterns):
    chosen = pattern_set([weight[1]], patterns)
    model = _conv_with_kernels(list(weight[0].reshape(-1, 3, 3)))  # a first conv to skip
    # The shapes need not chain: the pruner reads weights and node order only.
    model.graph.node.append(onnx.helper.make_node("Conv", ["output", "w2"], ["out2"], name="conv2", pads=[1] * 4))
    model.graph.initializer.append(numpy_helper.from_array(weight[1], "w2"))
    mask = prune_model(model, patterns=patterns, keep_kernels=0.5)["w2"]
    assert set(pattern_histogram(mask)) <= set(chosen)
    assert total_kernels(mask) - empty_kernels(mask) == 18


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"patterns": 0}, "patterns=0: use an integer from 1 to 56 (the 4-tap patterns with the centre)"),
        ({"patterns": 57}, "patterns=57: use an integer from 1 to 56 (the 4-tap patterns with the centre)"),
        ({"patterns": 2.0}, "patterns=2.0: use an integer from 1 to 56 (the 4-tap patterns with the centre)"),
        ({"keep_kernels": 1.5}, "keep_kernels=1.5: use a fraction from 0 to 1"),
        ({"keep_kernels": "half"}, "keep_kernels='half': use a fraction from 0 to 1"),
        ({"unstructured": -0.1}, "unstructured=-0.1: use a fraction from 0 to 1"),
        ({"unstructured": float("nan")}, "unstructured=nan: use a fraction from 0 to 1"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(UserError) as err:
        prune_model(tiny_cnn(), **options)
    assert str(err.value) == message


# ---- masks files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> onnx.ModelProto:
    return tiny_cnn()


def test_save_load_round_trip(tmp_path, tiny):
    masks = prune_model(tiny, keep_kernels=0.5, unstructured=0.5)
    path = tmp_path / "masks"  # no suffix: save_masks writes exactly here, numpy would add .npz
    save_masks(masks, path)
    loaded = load_masks(path, tiny)
    assert list(loaded) == list(masks)
    assert all(loaded[k].dtype == bool and np.array_equal(loaded[k], masks[k]) for k in masks)


def test_save_load_round_trip_of_no_masks(tmp_path, tiny):
    # found by sparsec fuzz: an empty .npz (a zip without members) has no local file header to recognise
    save_masks({}, tmp_path / "none.npz")
    assert load_masks(tmp_path / "none.npz", tiny) == {}


def test_load_accepts_0_1_numbers_and_partial_masks(tmp_path, tiny):
    path = tmp_path / "m.npz"
    np.savez(path, **{"classifier.weight": np.ones((10, 32), np.float32)})
    loaded = load_masks(path, tiny)
    assert list(loaded) == ["classifier.weight"] and loaded["classifier.weight"].dtype == bool


FIX = "save masks as bool arrays with numpy.savez"


def _load_error(path, model) -> str:
    with pytest.raises(UserError) as err:
        load_masks(path, model)
    return str(err.value)


def test_load_errors_for_files_that_are_not_npz(tmp_path, tiny):
    missing = tmp_path / "missing.npz"
    assert _load_error(missing, tiny) == f"{missing}: cannot read the masks file (No such file or directory)"
    cases = {
        b"": "empty",
        b"hello, masks": "no zip signature",
        b"PK\x03\x04 truncated": "File is not a zip file",
    }
    for i, (content, reason) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.npz"
        path.write_bytes(content)
        assert _load_error(path, tiny) == f"{path}: not a NumPy .npz file ({reason}); {FIX}"
    npy = tmp_path / "single.npz"
    with open(npy, "wb") as f:
        np.save(f, np.ones(3, bool))
    expected = f"{npy}: not a NumPy .npz file (a single .npy array); save masks as bool arrays with numpy.savez"
    assert _load_error(npy, tiny) == expected


def test_load_errors_name_the_key(tmp_path, tiny):
    path = tmp_path / "masks.npz"
    where = f"{path}: mask"

    def error(**arrays) -> str:
        np.savez(path, **arrays)
        return _load_error(path, tiny)

    objects = np.array([None, 1], dtype=object)
    assert error(**{"features.0.weight": objects}) == (
        f"{where} 'features.0.weight' is an object (pickled) array, which sparsec does not load; "
        "save masks as bool arrays with numpy.savez"
    )
    assert error(**{"features.0.weights": np.ones(3, bool)}) == (
        f"{where} 'features.0.weights' names no initializer of the model (did you mean 'features.0.weight'?); "
        "list the weight names with `sparsec inspect MODEL`"
    )
    assert error(zzz=np.ones(3, bool)) == (
        f"{where} 'zzz' names no initializer of the model; list the weight names with `sparsec inspect MODEL`"
    )
    assert error(**{"features.0.weight": np.ones((8, 3), bool)}) == (
        f"{where} 'features.0.weight' has shape (8, 3) but the initializer has shape (8, 3, 3, 3); "
        "regenerate the masks for this model"
    )
    half = np.full((10, 32), 0.5, np.float32)
    assert error(**{"classifier.weight": half}) == (
        f"{where} 'classifier.weight' holds 0.5, not 0 or 1; save masks as bool or 0/1 arrays"
    )
    text = np.full((10, 32), "1")
    assert error(**{"classifier.weight": text}) == (
        f"{where} 'classifier.weight' has dtype <U1; save masks as bool or 0/1 arrays"
    )


def test_load_error_for_a_non_npy_member(tmp_path, tiny):
    path = tmp_path / "masks.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("features.0.weight", b"not an array")
    assert _load_error(path, tiny) == (
        f"{path}: mask 'features.0.weight' is not a NumPy array (a plain zip member); {FIX}"
    )


# --- kernel groups ---------------------------------------------------------------------------------


def test_kernel_groups_share_kernels_and_patterns_across_consecutive_filters():
    from sparsec.models import conv_layer
    from sparsec.report import inspect_model, kernel_groups_of

    model = conv_layer((1, 16, 8, 8), 12)
    masks = prune_model(model, patterns=4, keep_kernels=0.5, prune_first_conv=True, kernel_groups=4)
    mask = masks["conv.weight"]
    groups = mask.reshape(3, 4, 16, 3, 3)
    assert (groups == groups[:, :1]).all()  # the 4 filters of a group keep the same taps of the same channels
    assert mask.reshape(12, 16, 9).any(axis=2).sum() == 96  # half the kernels, as asked
    assert kernel_groups_of(mask) == 4
    plain = prune_model(model, patterns=4, keep_kernels=0.5, prune_first_conv=True)["conv.weight"]
    assert kernel_groups_of(plain) == 1
    cost = inspect_model(model, masks).group_costs[0]
    weight = onnx.numpy_helper.to_array(model.graph.initializer[0])
    total = float(np.square(weight, dtype=np.float64).sum())
    assert cost.kernel_groups == 4
    assert cost.kept_norm == pytest.approx(float(np.square(weight[mask], dtype=np.float64).sum()) / total)
    assert cost.ungrouped_kept_norm == pytest.approx(float(np.square(weight[plain], dtype=np.float64).sum()) / total)
    assert cost.kept_norm < cost.ungrouped_kept_norm  # sharing costs norm; the ungrouped choice is the best


def test_kernel_groups_must_be_a_positive_whole_number():
    from sparsec.models import conv_layer

    with pytest.raises(UserError, match=r"kernel_groups=0: use a whole number of filters >= 1"):
        prune_model(conv_layer((1, 4, 4, 4), 4), kernel_groups=0)
