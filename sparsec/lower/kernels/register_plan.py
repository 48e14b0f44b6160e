"""Register plans: how wide and how many accumulators each kernel's inner loop keeps, derived from
the target's vector lanes, vector registers and L1 size. One place for every plan, each with the
reason (or the measurement) behind it; the generators' knobs default to these.
"""

from __future__ import annotations

from sparsec.target import Target


def _pow2_floor(n: int) -> int:
    return 1 << max(0, n.bit_length() - 1)


def pattern_vector_choices(t: Target) -> tuple[int, ...]:
    """Pattern conv: output vectors per tile row to choose from (with the rows, by the padding
    they leave). x86: one vector (8 or 16 pixels); measured on znver3/znver5, wider tiles lose.
    NEON's 4-lane vectors: 1 to 4 (4 to 16 pixels), so a 28- or 56-wide plane tiles exactly."""
    return (1, 2, 3, 4) if t.isa == "neon" else (max(1, -(-8 // t.lanes())),)


def pattern_lanes(t: Target, out_width: int) -> int:
    """Pattern conv: vector width, the target's fp32 lanes halved while an output row fits in half
    of them (never below 4): a 7-wide plane fills 7 of 8 lanes instead of 7 of 16, and its input
    tiles, copies and prefetches shrink with the vectors. Measured on znver5: ResNet-50's 7x7
    pattern layers 1.4-1.8x faster with 8 lanes; 14- and 56-wide planes gain nothing (0.9-1.0x)."""
    lanes = t.lanes()
    while lanes >= 8 and out_width <= lanes // 2:
        lanes //= 2
    return lanes


def pattern_accumulators(t: Target, filters: int = 1, tap_copies: int = 1, shift_sums: bool = False) -> int:
    """Pattern conv: accumulators (rows x vectors x filters) the hot loop keeps in registers.

    x86 keeps 4 broadcast tap weights and ~4 loaded input rows live: 16 registers leave 8
    accumulators (8 FMA chains cover the FMA latency; measured on znver3, 10 won nothing, 12-14
    lost to spills); 32 registers leave room for more independent chains: 14 (measured on
    AVX-512: 14 rows +8-20% over 8; no spills up to ~20). NEON holds the 4 tap weights in one
    register (used by lane) but loads each input row once per vector: 16 accumulators; 24
    spilled (instruction counts under qemu: 12 rows x 2 vectors ran 1.3x the instructions of
    8 x 2 on the same padded area).
    With filter groups (F > 1 filters share each loaded row) on 32 registers: 4 filters 16 (the
    F x 4 tap weights fold into the FMAs as broadcast operands; measured on znver5, L1 with kernel
    groups of 4: 4 filters x 4 rows 1.34x faster than x 2 rows, x 5 rows 0.6x: spills); 2 filters
    14, 7 rows each (`pattern_group_filters`; 8 rows, which pad no plane more, ran 0.89-0.95x on
    znver4).
    Three aligned tap copies (`pattern_tap_copies`: strided layers; on AVX-512 stride-1 ones too)
    on 32 registers: 7, so a channel block of the 3x larger tiles stays in L1
    (`pattern_channel_block`) and each block carries half the partial sums: measured on znver4
    (AVX-512), 7 rows against 14, each with its best block: 256x28 stride 2 1.5-2.2x, 128x56
    1.05x; 4 rows 0.8x (too few FMA chains). Zen 4 runs one 512-bit FMA a cycle; an Intel core with
    two 512-bit FMA pipes wants 8 or more chains (not measured there).
    Shifted sums (`pattern_shift_sums`) on 32 registers: 21, three sets (tap columns) of 7 rows; the
    other 11 hold the loaded row, the 4 tap weights and room to spare (no stack traffic in the kernel
    loops: `test_shifted_sums_leave_the_rotations_out_of_the_kernel_loops`).
    """
    if t.isa == "neon":
        return t.vector_registers // 2
    if t.vector_registers <= 16:
        return 8
    if shift_sums:
        return t.vector_registers - 11  # 21 of 32: three sets (tap columns) of 7 rows
    if filters > 1:
        return 14 if filters == 2 else 16
    return 7 if tap_copies == 3 else 14


def pattern_sum_chains(t: Target, accumulators: int) -> int:
    """Pattern conv: chains of sums per accumulator. Each output row's sum takes the kernel's 4 tap
    products one after the other, so a tile of few rows is bound by the FMA latency, not its
    throughput; 2 (the odd taps into a second set of sums, added at the end of a block) where the
    two sets fit the accumulators the plain plan keeps (`pattern_accumulators`: 7-row tiles on
    AVX-512). Measured on znver4, kernels alone, 2 sets against 1 on 7-row tiles: 256x56 (L1) 1.047x,
    64x56 1.019x, 256x14 (L3) 1.026x, 512x7 (8 lanes) 1.028x, stride 2 0.996-1.006x; on 14-row
    tiles (28 sums: spills) 512x28 0.97x and 128x28 0.77x. AVX2 and NEON not measured."""
    return 2 if 2 * accumulators <= pattern_accumulators(t) else 1


def pattern_group_filters(t: Target, group: int) -> int:
    """Pattern conv: filters that share each loaded input row, where the IR groups `group` filters
    whose kernels coincide (eliminate-redundant-loads; a pair of such a group shares them too).
    AVX-512: at most 2, so the pair's 7-row tiles keep 14 FMA chains and its 8 tap weights in
    registers, where 4 filters x 4 rows keep 16 sums and 16 weights (in its znver4 assembly a
    fifth of the FMAs take their weight as a broadcast memory operand, a load each; the pair's
    none). Measured on znver4, 2 threads, interleaved, kernel groups of 4 at 50% kept, 2 x 7
    against 4 x 4: 256x56 (L1G4) 1.045-1.07x, 128x56 1.07-1.08x, 64x56 1.15-1.23x, 256x14
    1.08-1.12x, 512x7 1.00-1.05x; 512x28 at 27.8% 1.01x. Elsewhere the whole group (AVX2: 4
    filters x 2 rows, measured on znver5 as `pattern_accumulators` says; NEON not measured on a
    phone)."""
    return min(group, 2) if _x86_wide(t) else group


def pattern_prefetch(t: Target, filters: int = 1, tap_copies: int = 1, tile_bytes: int | None = None) -> int:
    """Pattern conv: how many kernels ahead the next channel's input tile is prefetched into L1.
    x86 with one filter per group and one tile copy: 2 (measured on znver5, interleaved with the
    unprefetched kernel: L1 1.10x on one core and 1.43x on two, L2 1.02-1.11x, L3 1.09-1.12x; 1
    and 3 within a few percent of 2). Filter groups: none (4-filter groups of L1 ran 0.6x: the
    prefetch addresses push the group's broadcast weights out of the registers). Three tap
    copies: none (a prefetch per line of a 3x larger tile takes the load ports the aligned copies
    free: on znver5's stride-2 layers 0.86-1.0x of not prefetching them). A task's input tile
    (`tile_bytes`, every channel) that fits in L1 stays there: none (64-channel layers on znver3,
    64x56 and 64x112 at 50% kept, 64x224 at 27.8%: 1.06-1.08x without; 128 channels, 46-51 KB:
    within 3% either way). NEON: none, not measured on a phone (qemu's timings say nothing about
    caches)."""
    fits_l1 = tile_bytes is not None and tile_bytes <= t.l1d_bytes
    return 2 if t.isa != "neon" and filters == 1 and tap_copies != 3 and not fits_l1 else 0


def pattern_next_tile_prefetch(t: Target, copies_own_tile: bool, input_bytes: int) -> int:
    """Pattern conv: 1 where the input lines that the next task's tile copy reads first are
    prefetched into L1 during each task's filters: x86, where a task copies its own tile and the
    input is over 8x the L2 (its rows then come from L3 or memory). The copy otherwise waits on
    them: on znver3 (512 KB L2, 2 threads, interleaved) VGG-16's 64x224 layer at 27.8% kept
    (12.8 MB) spent 1.36 ms of 5.3 in its copies alone, and the prefetch ran it 1.09-1.19x;
    128x112 (6.4 MB) 1.09-1.16x at 27.8% kept, 1.07x at 50%. Smaller inputs lost: 256x56
    and 64x112 (3.2 MB) 0.86-0.99x, 128x56, 64x56 and 128x28 0.96-0.98x (the prefetched lines
    evict the task's own tile; the copy's misses are short). Into L2 instead: half the gain; all
    of the next tile in one burst after the copy: 0.96-1.06x (the misses then stall the task).
    NEON: none, not measured on a phone (qemu's timings say nothing about caches)."""
    far = input_bytes > 8 * t.l2_bytes
    return 1 if copies_own_tile and far and t.isa != "neon" else 0


def pattern_channel_block(t: Target, channels: int, kept: float, channel_tile_bytes: int, sums_bytes: int,
                          tap_copies: int = 1, channel_line_bytes: int = 0, out_width: int = 0,
                          runtime_taps: bool = False) -> int:
    """Pattern conv: input channels per block (0: one block of all). A block's input tiles stay in
    L1 while every filter uses them (one-copy rows padded to a line, so no load splits), for the
    price of partial sums carried between blocks and 8 more pattern loops per block. AVX2 and
    AVX-512 only (NEON not measured on a phone, SSE not at all: one block):
    - one tile copy (stride 1), AVX2 only (measured on znver3 against one block), where the whole
      tile (`channel_tile_bytes` a channel) overflows L1 and tile plus partial sums (`sums_bytes`)
      fit half of L2 (the streaming weights take the rest; 512-channel layers 0.74-0.91x with
      blocks): on planes wider than 28 columns the
      largest power of two (>= 32) whose padded lines (`channel_line_bytes` a channel) fit in L1,
      each filter keeping >= 8 kernels a block: blocks of 32 (20 KB of 8-row tiles) against 64
      (40 KB): L1 1.04-1.06x, 128x56 1.04x; at 27.8% kept against one block: 256x56 1.05x,
      128x112 1.05x. Planes up to 28 columns: the smallest power of two giving each filter 32 kept
      kernels, if its tile fits in L1 (L3 64: 32 there 0.97-0.98x; 28x28 at 50% kept: 32 within 2%
      of 64; at 27.8% kept against one block, 32 runs 128x28 0.96x, 256x28 1.04x; 256x14 0.97x).
    - three aligned copies (strided layers, 1.4-1.6 KB a channel): every load is its own, so the
      tile's residency is all that counts: the largest power of two whose tile fits in 1.5x L1.
      ResNet-50's stride-2 shapes at 50% kept: 128x56 1.39x (blocks of 16: 1.49x), 256x28 1.45x,
      512x14 1.56x (16: 1.30x); 64x112 with blocks of 16 1.42x (32: 1.22x); 256x28 at 27.8% 1.30x.
      On znver4 (AVX-512, 7-row tiles: `pattern_accumulators`) against one block: 256x28 1.9-2.1x
      (blocks of 16; 8 and 32 0.8-0.9x of 16), 128x56 1.29x (16), 512x14 1.25x (32; 16 1.17x).
      With `runtime_taps` (one loop a block, `pattern_runtime_taps`) a block costs no pattern loops,
      so the tile fits in L1 itself: 512x14 on znver4 blocks of 16 1.15-1.16x of 32, 8 0.94-0.95x of 16."""
    if t.isa not in ("avx2", "avx512") or kept <= 0:
        return 0
    if tap_copies == 3:
        room = t.l1d_bytes if runtime_taps else 3 * t.l1d_bytes // 2
        block = 8
        while 2 * block * channel_tile_bytes <= room:
            block *= 2
        return block if block < channels and block * channel_tile_bytes <= room else 0
    tile_bytes = channels * channel_tile_bytes
    if t.isa != "avx2" or tile_bytes <= t.l1d_bytes or tile_bytes + sums_bytes > t.l2_bytes // 2:
        return 0
    if out_width > 28:
        block = 32
        while 2 * block * channel_line_bytes <= t.l1d_bytes:
            block *= 2
        fits = block * channel_line_bytes <= t.l1d_bytes and block * kept >= 8
    else:
        block = 32
        while block * kept < 32:
            block *= 2
        fits = block * channel_tile_bytes <= t.l1d_bytes
    return block if block < channels and fits else 0


def pattern_runtime_taps(t: Target, strides: tuple[int, int], lanes: int) -> bool:
    """Pattern conv: one loop over a block's kernels whatever their pattern, each tap's input address
    read from a per-kernel table, instead of one loop per pattern with the taps' offsets compiled in.
    Each pattern loop of a (filter, block) runs ~1-2 kernels, so its exit branch is a coin toss: with
    16 channels a block on 512x7x7, trip counts made predictable (one kernel of each pattern a block)
    ran 1.57x faster than random ones. One loop drops that cost but loads every tap's rows itself, so
    it pays where the pattern loops share few loads and a kernel's FMAs are short: layers strided down
    the plane (rows shared only between the first and last tap row) in vectors narrower than the target's
    (half the FMA time a kernel). AVX-512 (half vectors: 8 lanes), measured on znver4, 2 threads,
    interleaved, kernels alone, against the plan before (one loop per pattern, blocks of 32): 512x14
    stride 2 (a 7x7 output) 1.12-1.22x with blocks of 16 (0.97x with 32); in ResNet-50 1.005x (near
    1.005x, far 1.006x; an earlier run 1.002x / 1.004x). Not where the pattern loops pay: 16-lane
    stride-2 layers (128x56 0.97-1.01x, 256x28 0.98x), 512x7 stride 1 (0.95-0.99x: its loops share
    vertical rows). AVX2 and NEON (whose 7-wide planes fill whole vectors) not measured."""
    return t.isa == "avx512" and strides[0] > 1 and lanes < t.lanes()


def pattern_tap_copies(t: Target, strides: tuple[int, int] = (1, 1), kept: float = 0.0, filters: int = 1,
                       lanes: int = 0) -> int:
    """Pattern conv: copies of each input tile row. NEON: one aligned copy per tap column (3), so
    every input load is a 16-byte-aligned offset from one base (`ldr q`/`ldp q`, no address
    arithmetic; the unaligned single copy cost ~10% more instructions on VGG layers). x86, stride
    1: one copy (its loads take any offset; the 3x larger copy streams from L2 slower than the
    line-crossing loads it saves, 0.8-1.08x on L1-L3). x86, stride 2: 3. A strided layer shares
    almost no input row between taps, so each FMA carries its own load, most crossing a cache line
    in the single copy (2 load slots each); aligned copies halve that, and its tile (already 2
    phase copies) only grows 1.5x. Measured on znver5, interleaved, 3 copies without prefetch
    against 1 with: ResNet-50's stride-2 shapes 128x56 1.41-1.46x, 256x28 1.35-1.41x, 512x14
    (7-wide output, 8 lanes) 0.99-1.13x, 64x112 1.33x; compiled for AVX2 1.07x / 1.12x / 0.99x.
    AVX-512, stride 1, one filter a group, vectors of a whole cache line (`lanes`: 16; a 7-wide
    plane's 8 lanes split fewer loads: 512x7 0.92-1.03x), where the layer keeps at least 40% of its
    kernels (`kept`): 3 as well. In the single copy 2 of every 3 tap columns' loads then split two
    lines; 7-row tiles of aligned copies, in blocks of 16 channels that stay in L1, leave each
    filter 8 kernels a block at 50% kept. Measured on znver4, 2 threads, interleaved, at 50% kept:
    256x14 (L3) 1.24-1.31x, 256x56 (L1) 0.95-1.15x (one thread 1.09-1.23x), 128x28 1.04-1.10x,
    64x56 1.04-1.08x, 128x112 1.04x, 64x224 1.03x; at 27.8% kept (4.4 kernels a block) 512x28 (L2) 0.78-0.90x;
    filter groups (`filters` > 1: each loaded row feeds 4 filters, the loads no longer bound the
    loop) lost: L1 with kernel groups of 4 at 62% of the peak against 75% with one copy."""
    if t.isa == "neon" or max(strides) >= 2:
        return 3
    whole_lines = lanes * 4 == t.cache_line_bytes
    return 3 if t.isa == "avx512" and whole_lines and kept >= 0.4 and filters == 1 else 1


def pattern_register_shifts(t: Target, tap_copies: int, lanes: int, column_tiles: int) -> bool:
    """Pattern conv: one tile copy whose rows are each one aligned vector, the taps right of the
    first reading it rotated in registers (a permute each) instead of loaded at a shifted address
    (one copy: each such load splits two cache lines, 2 load slots) or from three aligned copies
    (3x the tile). The vector holds the tile's columns and their halo (16 lanes: 14 output
    columns), so a tile row is one cache line: 16 lines of a 14-row tile to prefetch and fetch
    from L2 where the one copy's 18-float rows take 18. AVX-512 where a vector is a cache line,
    over the plan's one copy (`tap_copies`), or over its three copies where the plane has more
    than one column of shifted tiles (`column_tiles`); the generator keeps it to planes whose
    rows take no more vectors shifted (`_auto_shifts`: 28 and 14 columns). Measured on znver4, 2
    threads, interleaved, kernels alone: over one copy (27.8% kept) 512x28 (L2) 1.13x (after a
    40 MB write 1.04x), 256x28 1.06-1.08x, 512x14 1.16x; over three copies (50% kept) 512x28
    1.12x, 128x28 1.05-1.06x, but 256x14 (L3, one column tile) 0.90-0.95x; where the 14-column
    tiles take more vectors: 256x56 (L1) 0.91x, 128x112 0.82x, 64x224 0.82x. AVX2 (6 of 8 lanes)
    and NEON not measured."""
    copies_ok = tap_copies == 1 or column_tiles > 1
    return t.isa == "avx512" and lanes * 4 == t.cache_line_bytes and copies_ok


def pattern_shift_sums(t: Target, lanes: int, filters: int = 1) -> bool:
    """Pattern conv, on tile rows shifted in registers (`pattern_register_shifts`): the shift moves
    from the rows to the sums. Each tap column's products go to a set of sums of its own from the
    row loaded unshifted, and the sets join rotated once a block: 2 rotations per tile row and
    block, where rotating the rows took 1-2 permutes per input row and kernel (34 of 136
    instructions a kernel on L2's shape: 56 FMAs). The 3 sets keep 7-row tiles (21 sums,
    `pattern_accumulators`). Measured on znver4, 2 threads, interleaved, kernels alone, 7 rows
    against the plan before (rotated rows, 14 rows; three copies where one column tile): 512x28 at
    27.8% (L2) 1.06x, 128x28 1.09-1.12x, 256x14 (L3) 1.10x. AVX-512 where a vector is a cache
    line, as the shifted rows, without filter groups (a pair's 3 sets would leave it 3 rows: not
    measured); AVX2 and NEON not measured."""
    return t.isa == "avx512" and lanes * 4 == t.cache_line_bytes and filters == 1


def weights_by_lane(t: Target, filters: int = 1) -> bool:
    """Pattern conv: load a kernel's 4 tap weights as one 128-bit vector and take each FMA's
    weight from a lane: NEON's by-element FMLA; on x86 one 128-bit load broadcast to every
    128-bit part and an in-part shuffle per tap instead of four broadcast loads. The loop is bound
    by the load pipes (2 x 256-bit loads a cycle on Zen 3 for ~0.9 loads per FMA: an assembly
    replica of L1's loop ran 25 cycles per 32 FMAs, 15.6 without its loads; Zen 4 loads one
    512-bit vector a cycle), so 3 fewer loads a kernel pay: measured on znver3 (AVX2), L1-L3
    1.05-1.07x; on znver4 (AVX-512), 2 threads, interleaved, kernels alone: 256x56 (L1) 1.10-1.12x,
    512x28 at 27.8% kept (L2) 1.07-1.27x, 256x14 1.01x, 64x224 and 128x112 at 27.8% 1.01-1.03x,
    512x7 1.01x, 256x28 stride 2 1.02x (after a 40 MB write, L1 and L2 0.99x); inside the
    models, L1 1.10x (A B A B), L2 1.03x, VGG-16 (M1) and ResNet-50 (M2) within their noise (+-2%).
    Not with filter groups: on AVX2 4 filters x 2 rows make 16 shuffles per 32 FMAs, and the
    shuffles share a pipe with the FMAs (L1G4 0.87x); AVX-512's pairs gain nothing (L1G4's shape
    1.01x: their 8 weights already stay in registers)."""
    return t.isa == "neon" or (t.isa in ("avx2", "avx512") and filters == 1)


def gemm_tile(t: Target) -> tuple[int, int]:
    """Dense conv / matmul: (broadcast rows, vectors) of the register tile. The tile takes all
    registers but ~4 (one per loaded vector plus a broadcast): 16 registers -> 6 x 2 (12
    accumulators, the classic AVX2 sgemm tile); 32 -> 7 x 4 on NEON (4 narrow vectors per row),
    14 x 2 on AVX-512 (28 accumulators, as OpenBLAS's skylakex sgemm keeps)."""
    vectors = 2 if t.lanes() >= 8 else 4
    return max(1, (t.vector_registers - vectors - 2) // vectors), vectors


def depthwise_rows(t: Target) -> int:
    """Depthwise 3x3 in registers (`depthwise_conv`): output rows per band, their accumulators
    beside the three tap columns, the loaded vectors and the nine weights: 4 with 32 registers, 2
    with 16."""
    return 4 if t.vector_registers >= 32 else 2


def gemm_channel_block(taps: int) -> int:
    """Dense direct conv: input channels per block of the reduction (its partial sums go to memory
    between blocks). 1x1 convs: 256 (on znver3, AVX2, ResNet-50's ten 1x1 shapes 1.01-1.07x over
    64, one 0.98x; znver5 found 128 within 2% of 64; measured when 1x1s ran this GEMM: unpadded
    ones now run `pointwise_pixels`, one block). Wider kernels: 64, their 9 taps already make a long
    reduction per block (3x3 direct convs with 256: 0.91-1.0x)."""
    return 256 if taps == 1 else 64


def gemm_tiles(t: Target) -> tuple[tuple[int, int], ...]:
    """Dense conv (direct): the register tiles (filters, vectors) its plan chooses among, by the
    padding each leaves on the layer. x86 with 32 registers: 2 or 3 vectors with at least 3/4 of
    `gemm_tile`'s accumulators (11-13 x 2, 7-9 x 3): measured on znver5 over ResNet-50's 1x1
    convs, 14 x 2 pads 64 filters to 84 where 11 x 2 pads to 66, 8 x 3 fits 28x28 planes and
    12 x 2 the 14x14 and 7x7 ones (1.05-1.3x per layer); 1 vector (22-26 filters) ran up to 1.6x
    slower, 7 x 4 spills. Elsewhere (not measured there): `gemm_tile` alone."""
    rows, vectors = gemm_tile(t)
    if not _x86_wide(t):
        return ((rows, vectors),)
    budget = rows * vectors
    tiles = []
    for v in (2, 3):
        most = (t.vector_registers - v - 2) // v  # the accumulators plus v loaded vectors and a broadcast
        tiles += [(ob, v) for ob in range(1, most + 1) if 4 * ob * v >= 3 * budget]
    return tuple(tiles)


def pointwise_across_filters(t: Target, channels: int, strides: tuple[int, int] = (1, 1), plane: int = 0,
                             filters: int = 0) -> bool:
    """Unpadded dense 1x1 convs: vectors across filters (pixels broadcast) rather than across
    pixels. AVX-512 with at least 256 input channels: measured on znver5 over ResNet-50's 1x1
    convs, 1.05-1.85x faster (7x7 planes no longer pad 49 pixels to 64, strided ones read their
    pixels directly); with 64-128 channels 0.7-0.9x (the per-tile epilogue weighs). AVX2 (16
    registers: 6 pixels x 2 vectors, channel blocks of 64), measured on znver3 inside ResNet-50:
    with 256+ channels, stride 1 and the output plane's partial sums (`plane` pixels x 16 filters)
    in L1: the 14x14 and 7x7 layers 1.02-1.22x; 28x28 planes (50 KB of sums) 0.94-1.01x, 56x56
    0.88-0.98x, strided 0.72-0.86x (a block's pixels, every other one of whole rows, leave L1).
    AVX-512 with fewer channels on small planes too (at most `SMALL_PLANE` output pixels: 14x14, 7x7)
    where the filters give every thread two tiles, measured on znver4, kernels alone, 32-192 channels
    expanded 4-6x: 14x14 1.6-2.2x, 7x7 1.4-2.5x (the pixel GEMM pads 196 pixels to 240 and 49 to 64,
    and splits the plane between the threads, so every filter's row has a cache line both write);
    28x28 0.9-1.1x, 56x56 0.65-0.85x; 128 -> 32 at 14x14 (one filter tile, one thread busy) 0.88x.
    NEON and SSE not measured: vectors across pixels."""
    if t.isa == "avx2":
        sums = plane * pointwise_tile(t)[0] * t.lanes() * 4
        return channels >= 256 and tuple(strides) == (1, 1) and 0 < sums <= t.l1d_bytes
    few_pixels = 0 < plane <= SMALL_PLANE and filters >= 2 * t.threads * pointwise_tile(t)[0] * t.lanes()
    return t.isa == "avx512" and (channels >= 256 or few_pixels)


SMALL_PLANE = 196  # output pixels (14x14): see `pointwise_across_filters`


def pointwise_tile(t: Target) -> tuple[int, int]:
    """Vectors across filters: (filter vectors, accumulators) of the register tile: 2 vectors and
    all registers but 4 (measured on znver5: 2 x 14 pixels 1.3-2x faster than 4 x 7; on znver3
    2 x 6: 3 x 4 and 2 x 7 (a spill) ran 0.5x)."""
    return 2, t.vector_registers - 4


def pointwise_weight_lead(t: Target) -> int:
    """Vectors across filters: how many input channels ahead each block's first pixel tile prefetches
    its weights. Measured on znver4 with the weights out of the caches (7x7 planes, where each weight
    serves 49 pixels): 32 and 64 alike (1.13-1.15x), 8 half the gain. Elsewhere not measured: the
    same 32 until a target measures its own."""
    return 32


def pointwise_busy_accumulators(t: Target) -> int:
    """Vectors across filters: the fewest accumulators a tile of pixels dividing the plane must keep
    busy; below that the tile takes the most pixels and the plane's last tile is partial. AVX2: 3/4
    of its 12 (a 14x14 plane's divisor 4 leaves 8 sums, too few FMA chains with the loads between
    them: 6 pixels and a partial last tile ran ResNet-50 (M2) 1.022x and 1.067x on znver3, two
    interleaved runs). Elsewhere half (AVX-512 takes 7 pixels of a 7x7 plane: 14 of 28, as chosen
    on znver5; 14 not measured there)."""
    accumulators = pointwise_tile(t)[1]
    return -(-3 * accumulators // 4) if t.isa == "avx2" else -(-accumulators // 2)


def pointwise_ranges(t: Target, plane: int, filters: int) -> int:
    """Vectors across filters: the output plane's pixel ranges, one a thread, where the input
    outweighs the weights (more pixels than filters): each thread then reads its share of the input
    (and all the weights) rather than all of it, and writes the part of the plane the next layer's
    thread reads. Otherwise one range (the threads split the filters). Measured on znver4, ResNet-50
    (56x56 and 28x28 layers split): 1.006x with the cores near, 1.032x far; kernels alone 0.99x."""
    return t.threads if plane > filters else 1


def pointwise_channel_block(t: Target, channels: int) -> int:
    """Vectors across filters: input channels per block (0: one). AVX2: 64, so a block's weights
    (64 x 2 vectors) and inputs stay in L1 while every pixel tile of the plane uses them (znver3:
    unblocked 0.66-0.8x of the pixel-vector GEMM, blocks of 64 1.07-1.25x; 32 and 128 within 5%).
    AVX-512: one block, as measured on znver5 (blocks not measured there)."""
    return 64 if t.isa == "avx2" and channels > 64 else 0


def _x86_wide(t: Target) -> bool:
    """x86 with 32 vector registers (AVX-512)."""
    return t.isa != "neon" and t.vector_registers >= 32


def csr_vectors(t: Target) -> int:
    """CSR 1x1 conv: pixel vectors per tile (one accumulator each, plus one broadcast weight);
    half the registers, so the loads of the next nonzero overlap the FMAs of this one. AVX-512:
    8 (a quarter), so twice the channels fit a block and each output channel's pass over a
    block (its sums loaded and stored once) covers twice the nonzeros: measured on znver5,
    8 vectors x 64-channel blocks ran 1.2-2.5x faster than 16 x 16 on four 80-90% sparse
    1x1 layers (L4 1.6x)."""
    return 8 if _x86_wide(t) else t.vector_registers // 2


def csr_channel_block(t: Target, tile_pixels: int) -> int:
    """CSR 1x1 conv: input channels per block, so one block's input tile fills half of L1
    (64 channels of a 64-pixel tile on a 32 KiB L1); AVX-512: two thirds (measured with
    `csr_vectors`: 32 KiB of a 48 KiB L1 beat 16 and 64 KiB)."""
    share = t.l1d_bytes * 2 // 3 if _x86_wide(t) else t.l1d_bytes // 2
    return max(8, min(256, _pow2_floor(share // (4 * tile_pixels))))


def csr_dense_columns(t: Target) -> int:
    """Sparse FC: input columns per block, so a block's inputs (one row of them per batch row)
    fill a third of L1 and the gathers of every output row find them there (a whole VGG fc6 input
    is 100 KB)."""
    return max(256, _pow2_floor(t.l1d_bytes // 3 // 4))
