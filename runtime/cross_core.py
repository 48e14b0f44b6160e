"""How far apart the cores a run uses are: the round trip of one cache line between two of them.

On this project's VM (2 vCPUs of an AMD EPYC Zen 4) the host moves the vCPUs: for tens of seconds at a
time they sit on cores close together (a round trip of ~55-90 ns: one L3, we take it), then far apart
(~320-380 ns: a guess, cores on different CCDs; the VM shows no topology or counters). Memory latency and
bandwidth per core and one-thread runs do not change, but 2-thread runs slow down: ResNet-50 (M2) took
36.4 ms instead of 29.5 (onnxruntime 42.0 instead of 38.2: 1.15x instead of 1.29x), on 1 thread 55.9 ms
either way. A benchmark run records this round trip, so a reader can tell which placement a figure was
measured in.

The probe is a small C program (built once per process with the machine's C compiler): one thread
pinned to each of the first two CPUs this process may use hands a flag back and forth.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

FAR_NS = 200.0  # between the two placements measured on znver4: 55-90 ns near, 320-380 ns far

_SOURCE = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static _Atomic int flag __attribute__((aligned(64)));
static long trips;

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *answer(void *cpu) {
    pin((int)(long)cpu);
    for (long i = 0; i < trips; i++) {
        while (atomic_load_explicit(&flag, memory_order_acquire) != 1) {}
        atomic_store_explicit(&flag, 0, memory_order_release);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int first = atoi(argv[1]), second = atoi(argv[2]);
    trips = atol(argv[3]);
    pin(first);
    pthread_t other;
    pthread_create(&other, NULL, answer, (void *)(long)second);
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < trips; i++) {
        atomic_store_explicit(&flag, 1, memory_order_release);
        while (atomic_load_explicit(&flag, memory_order_acquire) != 0) {}
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    pthread_join(other, NULL);
    printf("%.1f\n", ((end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec)) / trips);
    return 0;
}
"""


@lru_cache(maxsize=1)
def _probe_binary() -> Path | None:
    """The compiled probe, or None without a C compiler."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="sparsec-cross-core-"))
    atexit.register(shutil.rmtree, folder, True)  # nothing left behind in /tmp
    source, binary = folder / "probe.c", folder / "probe"
    source.write_text(_SOURCE)
    built = subprocess.run([compiler, "-O2", "-pthread", str(source), "-o", str(binary)], capture_output=True)
    return binary if built.returncode == 0 else None


def round_trip_ns(cpus: tuple[int, ...] | None = None, trips: int = 50_000, repeats: int = 3) -> float | None:
    """Nanoseconds for a cache line to go from the first of `cpus` to the second and back (default: the
    first two CPUs this process may use), the least of `repeats` runs (a thread sharing either core only
    adds to it); None with fewer than two CPUs or no C compiler."""
    allowed = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    binary = _probe_binary() if len(allowed) >= 2 else None
    if binary is None:
        return None
    times = []
    for _ in range(repeats):
        run = subprocess.run([str(binary), str(allowed[0]), str(allowed[1]), str(trips)], capture_output=True,
                             text=True, timeout=60)
        if run.returncode != 0:
            return None
        times.append(float(run.stdout))
    return min(times)


def is_far(ns: float | None) -> bool:
    """Whether a round trip says the two cores are far apart."""
    return ns is not None and ns > FAR_NS


def describe(ns: float | None) -> str:
    """'65 ns (near)' / '340 ns (far)' / '-'."""
    if ns is None:
        return "-"
    return f"{ns:.0f} ns ({'far' if is_far(ns) else 'near'})"
