"""The cores' round-trip probe a benchmark run records (runtime/cross_core.py)."""

import os

import pytest

from sparsec.runtime import cross_core


def test_two_cores_give_a_round_trip_in_nanoseconds():
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.fail("this suite runs on machines with at least two cores (the CI's have two)")
    ns = cross_core.round_trip_ns(tuple(cpus[:2]), trips=20_000)
    assert ns is not None and 5 < ns < 100_000  # a cache line's trip: tens to hundreds of ns, not a timeout


def test_one_core_has_no_round_trip():
    assert cross_core.round_trip_ns((sorted(os.sched_getaffinity(0))[0],)) is None


def test_without_a_c_compiler_there_is_no_probe(monkeypatch):
    monkeypatch.setattr(cross_core.shutil, "which", lambda name: None)
    cross_core._probe_binary.cache_clear()
    try:
        assert cross_core.round_trip_ns() is None
    finally:
        cross_core._probe_binary.cache_clear()


@pytest.mark.parametrize("ns, text", [(65.2, "65 ns (near)"), (340.0, "340 ns (far)"), (None, "-")])
def test_describe_names_the_placement(ns, text):
    assert cross_core.describe(ns) == text
