"""Benchmark: what weightpack gains beyond one checkpoint, on the real all-MiniLM-L6-v2.

    pip install torch==2.13.0 -e ".[bench]" && python benchmarks/bench_references.py

Scenarios (all from the real model, byte-identical round trips checked):
- a fine-tune: every weight times 1 + s * N(0, 1), rounded back to the dtype, for s = 0.1% and 1%,
  packed alone and with ``--base`` (the original);
- an F32 checkpoint upcast from BF16 (low 16 mantissa bits zero), beside the BF16 one;
- tied embeddings saved twice (``lm_head.weight`` = the word embeddings), packed with dedup.
The order-0 bound is the per-tensor, per-plane entropy of what is coded (for a delta: of the
chosen XOR/difference planes; copies cost nothing), non-tensor bytes counted at their original size.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import weightpack
from weightpack import minilm
from weightpack.safetensors_layout import write


def measure(src: Path, tmp: Path, name: str, base: Path | None = None) -> dict:
    packed = weightpack.pack(src, tmp / f"{name}.wpk", base=base, overwrite=True)
    restored = weightpack.unpack(packed, tmp / f"{name}.restored", base=base, overwrite=True)
    assert restored.read_bytes() == src.read_bytes(), f"{name}: not byte-identical"
    report = weightpack.info(packed)
    size = src.stat().st_size
    bound = (size - report["tensor_bytes"] + report["tensor_bound_bytes"]) / size
    return {"ratio": packed.stat().st_size / size, "bound": bound, "size": size}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for dtype in ("BF16", "F32"):
            base_dir = minilm.write_variant(tmp / f"base-{dtype}", dtype, with_extras=False)
            base = base_dir / minilm.CHECKPOINT
            tensors = minilm.load(base)
            for step in (0.001, 0.01):
                ft = tmp / f"ft-{dtype}-{step}.safetensors"
                write(ft, minilm.finetune(tensors, step), {"format": "pt"})
                label = f"fine-tune {dtype}, step {100 * step:g}%"
                rows.append((label, "alone", measure(ft, tmp, "alone")))
                rows.append((label, "--base original", measure(ft, tmp, "delta", base)))
        bf16 = minilm.load(minilm.write_variant(tmp / "bf16", "BF16", with_extras=False) / minilm.CHECKPOINT)
        upcast = tmp / "upcast.safetensors"
        write(upcast, minilm.upcast(bf16), {"format": "pt"})
        rows.append(("BF16 checkpoint", "alone", measure(tmp / "bf16" / minilm.CHECKPOINT, tmp, "bf16")))
        rows.append(("F32 upcast from BF16", "alone (constant planes)", measure(upcast, tmp, "upcast")))
        tied = dict(bf16)
        tied["lm_head.weight"] = bf16["embeddings.word_embeddings.weight"]
        tied_path = tmp / "tied.safetensors"
        write(tied_path, tied, {"format": "pt"})
        rows.append(("BF16 + tied lm_head saved twice", "dedup", measure(tied_path, tmp, "tied")))
    print(f"| {'checkpoint':<34} | {'packed':<24} | {'size MB':>7} | {'packed/original':>15} | {'order-0 bound':>13} |")
    print(f"|{'-' * 36}|{'-' * 26}|{'-' * 9}|{'-' * 17}|{'-' * 15}|")
    for label, how, r in rows:
        print(f"| {label:<34} | {how:<24} | {r['size'] / 1e6:7.1f} | {100 * r['ratio']:14.2f}% | "
              f"{100 * r['bound']:12.2f}% |")


if __name__ == "__main__":
    main()
