"""Write a large synthetic checkpoint (several GB) for memory and throughput tests, in bounded memory.

    python tools/make_large_checkpoint.py OUT.safetensors [--gib 4] [--dtype BF16] [--seed 0]

Weights look like a trained transformer's: Gaussian, with a scale per row drawn log-normally (rows
differ in scale as embedding rows and attention heads do), rounded to nearest even into the dtype.
The layout is a decoder-only model: one large embedding matrix (the largest tensor), then blocks of
attention and MLP matrices with their norms, until the size is reached. Tensors are generated and
written a slice of rows at a time, so memory stays small whatever the size. Synthetic data is for
memory and speed measurements; ratios are quoted on the real MiniLM.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from weightpack.dtypes import itemsize
from weightpack.minilm import convert

ROWS_PER_SLICE = 1024


def plan(total_bytes: int, dtype: str, hidden: int = 4096, vocab: int = 32000) -> list[tuple[str, tuple[int, int]]]:
    """Tensor names and shapes adding up to about ``total_bytes``."""
    size = itemsize(dtype)
    tensors = [("model.embed_tokens.weight", (vocab, hidden))]
    layer_shapes = [("self_attn.q_proj.weight", (hidden, hidden)), ("self_attn.k_proj.weight", (hidden, hidden)),
                    ("self_attn.v_proj.weight", (hidden, hidden)), ("self_attn.o_proj.weight", (hidden, hidden)),
                    ("mlp.gate_proj.weight", (2 * hidden, hidden)), ("mlp.up_proj.weight", (2 * hidden, hidden)),
                    ("mlp.down_proj.weight", (hidden, 2 * hidden)), ("input_layernorm.weight", (1, hidden))]
    used, layer = vocab * hidden * size, 0
    while used < total_bytes:
        for name, shape in layer_shapes:
            tensors.append((f"model.layers.{layer}.{name}", shape))
            used += shape[0] * shape[1] * size
        layer += 1
    return tensors


def rows(rng: np.random.Generator, n_rows: int, cols: int, norm: bool) -> np.ndarray:
    if norm:
        return (1 + 0.05 * rng.standard_normal((n_rows, cols))).astype(np.float32)
    scale = 0.02 * np.exp(0.3 * rng.standard_normal((n_rows, 1)))
    return (scale * rng.standard_normal((n_rows, cols))).astype(np.float32)


def write(path: Path, total_bytes: int, dtype: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tensors = plan(total_bytes, dtype)
    size = itemsize(dtype)
    header, offset = {"__metadata__": {"format": "pt", "generator": "weightpack tools/make_large_checkpoint.py"}}, 0
    for name, (r, c) in tensors:
        header[name] = {"dtype": dtype, "shape": [r, c] if r > 1 else [c],
                        "data_offsets": [offset, offset + r * c * size]}
        offset += r * c * size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, (r, c) in tensors:
            for start in range(0, r, ROWS_PER_SLICE):
                block = rows(rng, min(ROWS_PER_SLICE, r - start), c, name.endswith("norm.weight"))
                f.write(convert(("F32", block.shape, block.tobytes()), dtype)[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--gib", type=float, default=4.0)
    parser.add_argument("--dtype", default="BF16", choices=["BF16", "F16", "F32"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write(args.out, int(args.gib * 2**30), args.dtype, args.seed)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
