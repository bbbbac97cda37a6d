"""XXH64 in numba: the checksum of every decoded stripe, computed by the worker that decoded it.

Why not the file's sha256: a sha256 is one serial pass over the whole file (about 1.6 GB/s on one
core here), so checking it caps unpacking at that speed however many cores decode. A 64-bit hash
per stripe (256 Ki elements) is computed where the stripe is decoded, while it is still in cache,
at about 8 GB/s a core, and detects any corruption with probability 1 - 2**-64 per stripe. The
file's sha256 is still recorded (it is what the Hub's LFS pointers name) and checked by ``verify``
and ``unpack --sha256``.

This is Yann Collet's XXH64, bit for bit, so any xxhash library can check a stripe:
``XXH64(b"") == 0xEF46DB3751D8E999``, ``XXH64(b"abc") == 0x44BC2CF5AD770999`` (seed 0). The five
primes and the rotation counts are the algorithm's published constants. The seed of a stripe's
hash is its byte offset in the original file, so that a stripe is only accepted in its own place:
an index whose segments were reordered restores every stripe intact, but not where it belongs.
"""

from __future__ import annotations

import numpy as np

from .jit import njit, register_jitable

P1 = np.uint64(0x9E3779B185EBCA87)
P2 = np.uint64(0xC2B2AE3D27D4EB4F)
P3 = np.uint64(0x165667B19E3779F9)
P4 = np.uint64(0x85EBCA77C2B2AE63)
P5 = np.uint64(0x27D4EB2F165667C5)


# The steps are ``register_jitable``: compiled into whichever target calls them, this module's CPU
# function below and the GPU's stripe check (``rans_cuda.check_stripes``), from this one source.

@register_jitable
def rotl(x: np.uint64, r: int) -> np.uint64:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@register_jitable
def xxh_round(acc: np.uint64, lane: np.uint64) -> np.uint64:
    return rotl(acc + lane * P2, 31) * P1


@register_jitable
def le(data: np.ndarray, p: int, n: int) -> np.uint64:
    """``n`` bytes at ``p`` as a little-endian integer (any alignment)."""
    v = np.uint64(0)
    for k in range(n):
        v |= np.uint64(data[p + k]) << np.uint64(8 * k)
    return v


@register_jitable
def finish(data: np.ndarray, p: int, end: int, n: int, v1: np.uint64, v2: np.uint64, v3: np.uint64,
           v4: np.uint64, seed: np.uint64) -> np.uint64:
    """XXH64 of ``n`` bytes ending at ``end``, from its four accumulators (after every whole 32-byte
    block; unused when ``n < 32``) and the tail starting at ``p``."""
    if n >= 32:
        h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)
        for v in (v1, v2, v3, v4):
            h = (h ^ xxh_round(np.uint64(0), v)) * P1 + P4
    else:
        h = seed + P5
    h += np.uint64(n)
    while p + 8 <= end:
        h = rotl(h ^ xxh_round(np.uint64(0), le(data, p, 8)), 27) * P1 + P4
        p += 8
    if p + 4 <= end:
        h = rotl(h ^ (le(data, p, 4) * P1), 23) * P2 + P3
        p += 4
    while p < end:
        h = rotl(h ^ (np.uint64(data[p]) * P5), 11) * P1
        p += 1
    h ^= h >> np.uint64(33)
    h *= P2
    h ^= h >> np.uint64(29)
    h *= P3
    return h ^ (h >> np.uint64(32))


@njit(cache=True, nogil=True)
def _xxh64(data: np.ndarray, words: np.ndarray, seed: int) -> np.uint64:
    """XXH64 of a contiguous uint8 array, given its whole 32-byte blocks as ``words`` (uint64, read as
    native words: weightpack runs on little-endian machines)."""
    n = data.size
    seed = np.uint64(seed)
    v1, v2, v3, v4 = seed + P1 + P2, seed + P2, seed, seed - P1
    blocks = n // 32
    for b in range(blocks):
        v1 = xxh_round(v1, words[4 * b])
        v2 = xxh_round(v2, words[4 * b + 1])
        v3 = xxh_round(v3, words[4 * b + 2])
        v4 = xxh_round(v4, words[4 * b + 3])
    return finish(data, 32 * blocks, n, n, v1, v2, v3, v4, seed)


def chunk_checksum(stored: np.ndarray | bytes) -> int:
    """The checksum recorded for a chunk's stored bytes: the low 32 bits of their XXH64 (seed 0).

    Checked before a chunk reaches a decoder, by the thread that reads it. XXH64 rather than zlib's
    CRC-32: ~8 GB/s a core here against ~2.5, which was a tenth of a BF16 decode.
    """
    return _xxh64_of(np.frombuffer(stored, np.uint8) if isinstance(stored, bytes) else stored, 0) & 0xFFFFFFFF


def stripe_hash(data: np.ndarray, offset: int) -> int:
    """The checksum recorded for a stripe's bytes (uint8, contiguous) found at ``offset`` in the file."""
    return _xxh64_of(data, offset)


def _xxh64_of(data: np.ndarray, seed: int) -> int:
    """XXH64 of ``data``'s bytes. Its byte and word views are made here, in numpy, not in the kernel (a
    start-up rule: see ``jit``)."""
    data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    return int(_xxh64(data, data[:data.size - data.size % 32].view(np.uint64), seed))
