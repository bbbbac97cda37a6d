"""The GPU decoding kernels (numba.cuda), beside the CPU ones: rANS chunks, raw and constant planes,
plane merging, and the stripes' XXH64 checks. The host side (what to launch, on which bytes) is
``gpu.py``; the format is the CPU decoder's (``rans.py``), bit for bit.

- ``decode_rans``: a chunk is decoded by as many threads as it has coder lanes (16, or 4 for a
  narrow chunk: they are launched apart), thread ``t`` being lane ``t``; several chunks share a block.
  At each step every lane decodes one symbol; the lanes that must renormalise take the next words
  of the stream in lane order, so each finds its word at ``p + (how many lanes below it need one)``,
  counted from flags in shared memory between two barriers (the same count a warp ballot gives).
- ``unpack_raw``: one thread per symbol of a bit-packed (or constant) chunk.
- ``merge_planes``: one thread per element, rebuilding each word from its planes (``planes.py``).
- ``check_stripes``: four threads per stripe (XXH64's four accumulators), XXH64 of the decoded
  bytes against the recorded value, from the same steps as the CPU's (``checksum.py``).

Memory safety on any bytes: every kernel checks each index it derives from a chunk's description
against the size of the array it reads or writes, and reports a chunk it cannot decode in
``status`` instead of touching memory outside it; rANS states stay in ``[L, 2**31)`` as on the CPU.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .checksum import P1, P2, finish, le, xxh_round
from .rans import MAX_PRECISION, STATE_BITS, STATE_LOW, WIDE_LANES, WIDE_MIN

BLOCK_THREADS = 64  # threads per block of decode_rans at most: 4 wide or 16 narrow chunks
THREADS = 256  # threads per block of the element-wise kernels
STRIPES_PER_BLOCK = 64  # check_stripes: four threads a stripe


@cuda.jit
def decode_rans(payload, src, size, count, dst, table, precision, entries, out, status, width):
    """Decode rANS chunk ``c`` (``count[c]`` symbols, ``size[c]`` stored bytes at ``payload[src[c]:]``,
    table of ``1 << precision[c]`` entries at ``entries[table[c]:]``) into ``out[dst[c]:]``;
    ``status[c]`` becomes 1 if the stream was consistent, else 0.

    ``width`` threads decode each chunk, so every chunk of a launch must have ``width`` lanes (the
    host launches narrow and wide chunks apart); a block holds ``blockDim.x // width`` chunks.
    """
    need = cuda.shared.array(BLOCK_THREADS, np.int32)
    bad = cuda.shared.array(BLOCK_THREADS, np.int32)
    steps = cuda.shared.array(1, np.int64)
    tid = cuda.threadIdx.x
    per_block = cuda.blockDim.x // width
    group, lane = tid // width, tid % width
    c = cuda.blockIdx.x * per_block + group
    n = count[c] if c < count.size else 0
    nbytes = size[c] if c < count.size else 0
    prec = precision[c] if c < count.size else 1
    start = src[c] if c < count.size else 0
    ok = (c < count.size and (width == WIDE_LANES) == (n >= WIDE_MIN) and nbytes >= 4 * width
          and nbytes % 2 == 0 and start >= 0 and start + nbytes <= payload.size and 1 <= prec <= MAX_PRECISION
          and table[c] >= 0 and table[c] + (1 << prec) <= entries.size and dst[c] >= 0 and dst[c] + n <= out.size)
    if lane == 0:
        bad[group] = 0 if ok else 1
    if tid == 0:
        most = 0
        for g in range(per_block):
            k = cuda.blockIdx.x * per_block + g
            if k < count.size:
                most = max(most, (count[k] + width - 1) // width)
        steps[0] = most
    cuda.syncthreads()  # bad[] set before any lane reports a bad state into it
    x = 0
    if ok:
        for k in range(4):
            x |= np.int64(payload[start + 4 * lane + k]) << (8 * k)
        if x < STATE_LOW or x >= (1 << STATE_BITS):
            bad[group] = 1
    cuda.syncthreads()
    mine = ok and bad[group] == 0
    mask = (1 << prec) - 1
    last = nbytes // 2 - 1
    p = 2 * width
    for step in range(steps[0]):
        i = step * width + lane
        active = mine and i < n
        flag = 0
        symbol = 0
        if active:
            e = entries[table[c] + (x & mask)]
            symbol = e & 0xFFFF
            x = (e >> 32) * (x >> prec) + ((e >> 16) & 0xFFFF)
            if x < STATE_LOW:
                flag = 1
        need[tid] = flag
        cuda.syncthreads()
        before = 0
        total = 0
        for j in range(width):
            f = need[group * width + j]
            total += f
            if j < lane:
                before += f
        if active:
            if flag:
                q = min(p + before, last)
                x = (x << 16) | (np.int64(payload[start + 2 * q]) | (np.int64(payload[start + 2 * q + 1]) << 8))
            out[dst[c] + i] = symbol
        p += total
        cuda.syncthreads()
    if mine and x != STATE_LOW:
        bad[group] = 1
    cuda.syncthreads()
    if lane == 0 and c < count.size:
        status[c] = 1 if bad[group] == 0 and 2 * p == nbytes else 0


@cuda.jit
def unpack_raw(payload, src, size, count, dst, bits, value, out, status):
    """Chunk ``c`` (grid row ``c``): ``count[c]`` symbols of ``bits[c]`` bits packed LSB first at
    ``payload[src[c]:]``, or all equal to ``value[c]`` if ``bits[c]`` is 0, into ``out[dst[c]:]``."""
    c = cuda.blockIdx.y
    n, b, start, first = count[c], bits[c], src[c], dst[c]
    stored = (n * b + 7) // 8
    ok = (0 <= b <= 16 and first >= 0 and first + n <= out.size
          and (b == 0 or (size[c] == stored and start >= 0 and start + stored <= payload.size)))
    if cuda.blockIdx.x == 0 and cuda.threadIdx.x == 0:
        status[c] = 1 if ok else 0
    if not ok:
        return
    mask = (1 << b) - 1
    for i in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, n, cuda.gridDim.x * cuda.blockDim.x):
        if b == 0:
            out[first + i] = value[c]
            continue
        bit = i * b
        a = bit >> 3
        v = np.int64(0)
        for k in range(3):  # a symbol of up to 16 bits spans at most 3 bytes
            if a + k < stored:
                v |= np.int64(payload[start + a + k]) << (8 * k)
        out[first + i] = (v >> (bit & 7)) & mask


@cuda.jit
def merge_planes(symbols, plane_start, seg_dst, seg_count, seg_planes, itemsize, exponent, rest, out):
    """Segment ``s`` (grid row ``s``): rebuild ``seg_count[s]`` words of ``itemsize[s]`` bytes at
    ``out[seg_dst[s]:]`` from its planes, plane ``j`` starting at ``symbols[plane_start[seg_planes[s] + j]]``.

    ``exponent[s]`` 0: the planes are the word's bytes, most significant first. Else a float: plane 0
    is the exponent with the top mantissa bits (stored from bit ``rest``), plane 1 the sign above the
    next ``rest % 8`` mantissa bits, then the low mantissa bytes, most significant first.
    """
    s = cuda.blockIdx.y
    n, width, first, planes = seg_count[s], itemsize[s], seg_dst[s], seg_planes[s]
    if first < 0 or first + n * width > out.size:
        return
    low_bits = rest[s] % 8
    n_low = rest[s] // 8
    for i in range(cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x, n, cuda.gridDim.x * cuda.blockDim.x):
        word = np.uint64(0)
        if exponent[s] == 0:
            for j in range(width):
                word |= np.uint64(symbols[plane_start[planes + j] + i]) << np.uint64(8 * (width - 1 - j))
        else:
            sm = np.uint64(symbols[plane_start[planes + 1] + i])
            word = ((sm >> np.uint64(low_bits)) << np.uint64(8 * width - 1)) \
                | (np.uint64(symbols[plane_start[planes] + i]) << np.uint64(rest[s])) \
                | ((sm & np.uint64((1 << low_bits) - 1)) << np.uint64(8 * n_low))
            for j in range(n_low):
                word |= np.uint64(symbols[plane_start[planes + 2 + j] + i]) << np.uint64(8 * (n_low - 1 - j))
        for k in range(width):
            out[first + i * width + k] = (word >> np.uint64(8 * k)) & np.uint64(0xFF)


@cuda.jit(device=True)
def _accumulator(data, start, blocks, j, seed):
    """XXH64's accumulator ``j`` (0-3) after the ``blocks`` whole 32-byte blocks at ``data[start:]``:
    it reads word ``j`` of each block only, so the four run on four threads."""
    if j == 0:
        v = seed + P1 + P2
    elif j == 1:
        v = seed + P2
    elif j == 2:
        v = seed
    else:
        v = seed - P1
    for b in range(blocks):
        v = xxh_round(v, le(data, start + 32 * b + 8 * j, 8))
    return v


@cuda.jit
def check_stripes(out, start, length, seed, expected, status):
    """Stripe ``k``: ``status[k]`` is 1 if the XXH64 of ``out[start[k]:][:length[k]]`` (seeded with
    ``seed[k]``, its offset in the original file) is ``expected[k]``.

    XXH64 is serial within a stripe except for its four accumulators: four threads run one each
    (``STRIPES_PER_BLOCK`` stripes to a block), then the first merges them and hashes the tail.
    """
    acc = cuda.shared.array((STRIPES_PER_BLOCK, 4), np.uint64)
    tid = cuda.threadIdx.x
    local, j = tid // 4, tid % 4
    k = cuda.blockIdx.x * STRIPES_PER_BLOCK + local
    ok = k < start.size and start[k] >= 0 and length[k] >= 0 and start[k] + length[k] <= out.size
    if ok:
        acc[local, j] = _accumulator(out, start[k], length[k] // 32, j, seed[k])
    cuda.syncthreads()
    if ok and j == 0:
        n, first = length[k], start[k]
        h = finish(out, first + n // 32 * 32, first + n, n, acc[local, 0], acc[local, 1], acc[local, 2],
                   acc[local, 3], seed[k])
        status[k] = 1 if h == expected[k] else 0
    elif j == 0 and k < start.size:
        status[k] = 0
