"""Fuzz the decoder with damaged real archives for as long as you like.

    python tools/fuzz.py --seconds 600 [--seed N]
    NUMBA_BOUNDSCHECK=1 NUMBA_CACHE_DIR=/tmp/nb python tools/fuzz.py --seconds 600   # bounds-checked kernels

Each iteration damages an archive of a small real checkpoint (tests/fuzzing.py: bit flips,
truncation, garbage, and edits behind recomputed checksums that reach the rANS decoder) and checks
that unpacking either restores the original exactly or refuses with a WeightpackError and leaves
nothing behind. Any other outcome is printed with the seed that reproduces it; exit status 1.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import weightpack
from tests.fuzzing import check, mutate, small_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = small_checkpoint(tmp / "small.safetensors")
        original, archive = src.read_bytes(), weightpack.pack(src, tmp / "small.wpk").read_bytes()
        counts, failures, iteration = {"refused": 0, "restored": 0}, 0, 0
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            case_seed = seed * 1_000_003 + iteration
            iteration += 1
            try:
                counts[check(mutate(archive, random.Random(case_seed)), original, tmp)] += 1
            except Exception:  # anything but a clean refusal or an exact restore is a bug
                failures += 1
                print(f"FAILURE with case seed {case_seed}:\n{traceback.format_exc()}")
    print(f"{iteration} cases: {counts['refused']} refused, {counts['restored']} restored exactly, "
          f"{failures} failures (seed {seed})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
