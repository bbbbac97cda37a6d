"""Probe: how much would an AVX2 (gather) rANS decoder gain over weightpack's numba decoder on this CPU?

    python benchmarks/probe_simd.py        (needs gcc and an x86-64 CPU with AVX2)

Before writing the explicit-SIMD decoder issue 9 allows (numba ``@intrinsic`` emitting LLVM gathers),
this measures its ceiling with a C prototype. The prototype decodes weightpack's exact stream format
(16 interleaved lanes, 16-bit renormalisation words read in lane order) with two 8-lane AVX2
vectors: table lookups by ``vpgatherdd``, renormalisation by a movemask and a shuffle table, as in
ryg_rans's SIMD decoder. A naive scalar C loop runs too, for scale. All three decode the same
chunk in one run: the exponent plane of a real MiniLM BF16 tensor, 256 Ki symbols. Each
prints ns a symbol, best of 20 batches, and whether its output equals the symbols coded.

A probe, not a decoder: it reads up to 16 bytes past the stream's end (the buffer is padded),
which weightpack's decoder never does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from weightpack import planes, rans
from weightpack.entropy import FrequencyTable, histogram
from weightpack.minilm import CHECKPOINT, convert, load, model_dir

PROTOTYPE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void *slurp(const char *f, long *n) {
  FILE *fp = fopen(f, "rb"); fseek(fp, 0, SEEK_END); *n = ftell(fp); fseek(fp, 0, SEEK_SET);
  void *b = calloc(*n + 64, 1); if (fread(b, 1, *n, fp) != (size_t)*n) exit(1); fclose(fp); return b;
}

/* For each 8-lane mask: the bytes that move consecutive 16-bit words into the lanes whose bit is set. */
static __m256i shuffles[256]; static int taken[256];
static void init(void) {
  for (int m = 0; m < 256; m++) {
    int8_t s[32]; int k = 0;
    for (int l = 0; l < 8; l++) {
      s[4 * l] = (m >> l & 1) ? 2 * k : -1; s[4 * l + 1] = (m >> l & 1) ? 2 * k + 1 : -1;
      s[4 * l + 2] = s[4 * l + 3] = -1; k += m >> l & 1;
    }
    shuffles[m] = _mm256_loadu_si256((void *)s); taken[m] = k;
  }
}

/* Renormalise 8 lanes: those below L take the next words, in lane order; returns the new position. */
static long renormalise(__m256i *x, const uint16_t *w, long p) {
  __m256i low = _mm256_cmpgt_epi32(_mm256_set1_epi32(1 << 15), *x);
  int m = _mm256_movemask_ps(_mm256_castsi256_ps(low));
  __m256i words = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((void *)(w + p))), shuffles[m]);
  *x = _mm256_blendv_epi8(*x, _mm256_or_si256(_mm256_slli_epi32(*x, 16), words), low);
  return p + taken[m];
}

/* A: freq | bias << 16 per slot; S: symbol per slot (both uint32, 2^precision slots). */
static long simd(const uint16_t *w, int precision, const uint32_t *A, const uint32_t *S, uint16_t *out, long n) {
  const __m256i mask = _mm256_set1_epi32((1 << precision) - 1), low16 = _mm256_set1_epi32(0xFFFF);
  const __m128i shift = _mm_cvtsi32_si128(precision);
  __m256i x0 = _mm256_loadu_si256((void *)w), x1 = _mm256_loadu_si256((void *)(w + 16));
  long p = 32;
  for (long i = 0; i + 16 <= n; i += 16) {
    __m256i s0 = _mm256_and_si256(x0, mask), s1 = _mm256_and_si256(x1, mask);
    __m256i a0 = _mm256_i32gather_epi32((const int *)A, s0, 4), a1 = _mm256_i32gather_epi32((const int *)A, s1, 4);
    __m256i y0 = _mm256_i32gather_epi32((const int *)S, s0, 4), y1 = _mm256_i32gather_epi32((const int *)S, s1, 4);
    x0 = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_and_si256(a0, low16), _mm256_srl_epi32(x0, shift)),
                          _mm256_srli_epi32(a0, 16));
    x1 = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_and_si256(a1, low16), _mm256_srl_epi32(x1, shift)),
                          _mm256_srli_epi32(a1, 16));
    _mm256_storeu_si256((void *)(out + i), _mm256_permute4x64_epi64(_mm256_packus_epi32(y0, y1), 0xD8));
    p = renormalise(&x0, w, p);
    p = renormalise(&x1, w, p);
  }
  return p;
}

/* E: weightpack's own decoder entries (freq << 32 | bias << 16 | symbol), the plain scalar loop. */
static long scalar(const uint16_t *w, int precision, const uint64_t *E, uint16_t *out, long n) {
  uint32_t x[16]; memcpy(x, w, 64); long p = 32; uint32_t mask = (1u << precision) - 1;
  for (long i = 0; i + 16 <= n; i += 16) {
    for (int l = 0; l < 16; l++) {
      uint64_t e = E[x[l] & mask]; out[i + l] = (uint16_t)e;
      x[l] = (uint32_t)(e >> 32) * (x[l] >> precision) + (uint32_t)((e >> 16) & 0xFFFF);
    }
    for (int l = 0; l < 16; l++) { int need = x[l] < (1u << 15); x[l] = need ? (x[l] << 16) | w[p] : x[l]; p += need; }
  }
  return p;
}

static double best_ns(int which, const uint16_t *w, int precision, const void *t1, const void *t2, uint16_t *out,
                      long n) {
  double best = 1e9; struct timespec a, b;
  for (int r = 0; r < 20; r++) {
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int k = 0; k < 10; k++)
      which ? simd(w, precision, t1, t2, out, n) : scalar(w, precision, t1, out, n);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) * 1e-9;
    if (s < best) best = s;
  }
  return best / 10 / n * 1e9;
}

int main(int argc, char **argv) {
  long size; int64_t *meta = slurp(argv[1], &size);
  uint16_t *w = slurp(argv[2], &size), *symbols = slurp(argv[3], &size);
  uint32_t *A = slurp(argv[4], &size), *S = slurp(argv[5], &size); uint64_t *E = slurp(argv[6], &size);
  int precision = (int)meta[0]; long n = meta[1]; uint16_t *out = malloc(n * 2 + 64);
  init();
  simd(w, precision, A, S, out, n); int simd_ok = memcmp(out, symbols, n * 2) == 0;
  scalar(w, precision, E, out, n); int scalar_ok = memcmp(out, symbols, n * 2) == 0;
  printf("%.3f %d %.3f %d\n", best_ns(1, w, precision, A, S, out, n), simd_ok, best_ns(0, w, precision, E, E, out, n),
         scalar_ok);
  return 0;
}
"""


def numba_ns(stream: np.ndarray, table: FrequencyTable, n: int) -> float:
    """weightpack's decoder on the same chunk: ns a symbol, best of 20 batches of 10."""
    entries, out = table.decoder_entries(), np.empty(n, np.uint16)
    rans.decode(stream, table.precision, entries, out)
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        for _ in range(10):
            rans.decode(stream, table.precision, entries, out)
        best = min(best, (time.perf_counter() - start) / 10)
    return best / n * 1e9


def main() -> None:
    if shutil.which("gcc") is None:
        sys.exit("probe_simd: needs gcc")
    _, _, data = convert(load(model_dir() / CHECKPOINT)["encoder.layer.0.intermediate.dense.weight"], "BF16")
    symbols = planes.split(np.frombuffer(data, np.uint8), "BF16")[0][:1 << 18].copy()
    table = FrequencyTable.fit(histogram(symbols, 10))
    buffer = np.empty(rans.max_stream_bytes(symbols.size), np.uint8)
    stream = buffer[rans.encode(symbols, table.encoder_table, buffer):].copy()
    entries = table.decoder_entries()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {"meta": np.array([table.precision, symbols.size], np.int64), "stream": stream, "symbols": symbols,
                 "A": ((entries >> 32) | (((entries >> 16) & 0xFFFF) << 16)).astype(np.uint32),
                 "S": (entries & 0xFFFF).astype(np.uint32), "E": entries}
        for name, array in files.items():
            array.tofile(tmp / f"{name}.bin")
        (tmp / "probe.c").write_text(PROTOTYPE)
        subprocess.run(["gcc", "-O3", "-mavx2", "-o", str(tmp / "probe"), str(tmp / "probe.c")], check=True)
        result = subprocess.run([str(tmp / "probe"), *(str(tmp / f"{name}.bin") for name in files)],
                                capture_output=True, text=True, check=True).stdout.split()
    simd_ns, simd_ok, scalar_ns, scalar_ok = float(result[0]), result[1] == "1", float(result[2]), result[3] == "1"
    ours = numba_ns(stream, table, symbols.size)
    print(f"rANS decode of {symbols.size} BF16 exponent symbols (precision {table.precision}), ns a symbol:")
    print(f"  weightpack (numba, scalar, 16 lanes)  {ours:.2f}")
    print(f"  C prototype, AVX2 gathers             {simd_ns:.2f}   output equal: {simd_ok}")
    print(f"  C, plain scalar loop                  {scalar_ns:.2f}   output equal: {scalar_ok}")


if __name__ == "__main__":
    main()
