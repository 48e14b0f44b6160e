"""A real CPU schedule for the PrimFuncs that Relax legalisation produces (pooling fallbacks,
elementwise ops, softmax, concat, reshape copies): TVM's default CPU build leaves them
single-threaded and unscheduled.

Rule per block, outermost first: fuse its leading spatial loops, split off a parallel outer
loop when the work is large enough to pay for waking the thread pool, and vectorise the
innermost spatial loop when it is a clean multiple of the target's vector width.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from sparsec.lower.kernels.common import has_block
from sparsec.target import Target

SCHEDULED_ATTR = "sparsec.scheduled"
MIN_PARALLEL_WORK = 16384  # elements; below this the thread-pool wake-up costs more than it saves
DATA_PARALLEL, REDUCE = 0, 2  # tirx.IterVar kinds


def schedule_unscheduled(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """Schedule every PrimFunc of `mod` that no kernel generator has scheduled."""
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or (func.attrs and SCHEDULED_ATTR in func.attrs):
            continue
        mod[gv] = schedule_func(func.with_attr("global_symbol", gv.name_hint), target)
    return mod


def schedule_func(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    sch = s_tir.Schedule(func)
    for block in _top_level_blocks(sch):
        _schedule_block(sch, block, target.lanes())
    return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)


def _top_level_blocks(sch: s_tir.Schedule) -> list:
    if not has_block(sch, "root"):  # a PrimFunc without blocks has nothing to schedule
        return []
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _spatial_prefix(sch: s_tir.Schedule, block) -> list:
    """The block's outer loops up to its first reduction iterator (safe to parallelise);
    legalised TOPI blocks have one loop per iterator, in order."""
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    if any(k not in (DATA_PARALLEL, REDUCE) for k in kinds):
        return []
    loops = sch.get_loops(block)
    if len(loops) != len(kinds):
        return []
    first_reduce = next((i for i, k in enumerate(kinds) if k == REDUCE), len(kinds))
    return list(loops[:first_reduce])


def _schedule_block(sch: s_tir.Schedule, block, vector: int) -> None:
    loops = _spatial_prefix(sch, block)
    if not loops:
        return
    extents = [_extent(sch, loop) for loop in loops]
    if any(e is None for e in extents):
        return
    work = 1
    for e in extents:
        work *= e
    all_spatial = len(loops) == len(sch.get_loops(block))
    if all_spatial and extents[-1] % vector == 0 and extents[-1] >= vector:
        _, inner = sch.split(loops[-1], factors=[None, vector])
        sch.vectorize(inner)
    if work >= MIN_PARALLEL_WORK:
        outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        sch.parallel(outer)


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None
