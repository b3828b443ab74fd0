"""Benchmark the weight digest behind ``TPConfig.fingerprint()`` on a Llama-2-7B-sized checkpoint.

The digest hashes every value (rounded to bfloat16) of every tensor, so its cost grows with the
checkpoint. This builds the 7B tensors directly (random, bfloat16, no model class), one decoder
layer at a time so memory stays at one layer, and times per layer:
  - the digest of the tensors as loaded in bfloat16 (the GPU default),
  - the digest of the same tensors loaded in float32 (the CPU default; includes the rounding),
  - reading the same bytes from a safetensors file already in the page cache: the floor of any
    load (a real load also reads the disk and builds the model).
Totals are summed over the whole checkpoint (embeddings, 32 layers, final norm; no LM head, which
tp-rag never loads). Ratios come from this one run.

Usage: python benchmarks/bench_fingerprint.py [--layers 32] [--record]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _common import machine, markdown, record
from safetensors.torch import load_file, save_file

from tp_rag.loading import weights_digest

HIDDEN, INTERMEDIATE, VOCAB = 4096, 11008, 32000  # Llama-2-7B


def layer_tensors(index: int) -> dict[str, torch.Tensor]:
    """One decoder layer's weights, random, bfloat16."""
    prefix = f"layers.{index}."
    shapes = {
        "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
        "self_attn.k_proj.weight": (HIDDEN, HIDDEN),
        "self_attn.v_proj.weight": (HIDDEN, HIDDEN),
        "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
        "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
        "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
        "input_layernorm.weight": (HIDDEN,),
        "post_attention_layernorm.weight": (HIDDEN,),
    }
    return {
        prefix + name: torch.empty(shape, dtype=torch.bfloat16).normal_(0, 0.02)
        for name, shape in shapes.items()
    }


def groups(layers: int):
    yield {"embed_tokens.weight": torch.empty(VOCAB, HIDDEN, dtype=torch.bfloat16).normal_()}
    for index in range(layers):
        yield layer_tensors(index)
    yield {"norm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16)}


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32, help="decoder layers (7B: 32)")
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()

    totals = {"bytes": 0, "params": 0, "bf16": 0.0, "fp32": 0.0, "read": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "group.safetensors"
        for group in groups(args.layers):
            totals["params"] += sum(t.numel() for t in group.values())
            totals["bytes"] += sum(t.numel() * 2 for t in group.values())
            totals["bf16"] += timed(lambda g=group: weights_digest(g.items()))
            as_fp32 = {name: t.float() for name, t in group.items()}
            totals["fp32"] += timed(lambda g=as_fp32: weights_digest(g.items()))
            del as_fp32
            save_file(group, path)
            path.read_bytes()  # into the page cache
            # load_file maps the file lazily: copying the tensors makes it really read them.
            totals["read"] += timed(lambda: [t.clone() for t in load_file(path).values()])
    gb = totals["bytes"] / 1e9
    rows = [
        [
            "digest, loaded in bfloat16",
            f"{totals['bf16']:.1f}",
            f"{gb / totals['bf16']:.2f}",
            f"{totals['bf16'] / totals['read']:.1f}",
        ],
        [
            "digest, loaded in float32",
            f"{totals['fp32']:.1f}",
            f"{gb / totals['fp32']:.2f}",
            f"{totals['fp32'] / totals['read']:.1f}",
        ],
        [
            "read from page cache (load floor)",
            f"{totals['read']:.1f}",
            f"{gb / totals['read']:.2f}",
            "1.0",
        ],
    ]
    lines = [
        f"Machine: {machine()}",
        f"Checkpoint: Llama-2-7B shape without LM head, {totals['params'] / 1e9:.2f} B parameters, "
        f"{gb:.1f} GB in bfloat16, random values, on the CPU",
        "",
        *markdown(["step", "seconds", "GB/s (bf16 bytes)", "/ page-cache read"], rows),
    ]
    print("\n".join(lines))
    if args.record:
        record("bench_fingerprint.py", lines)


if __name__ == "__main__":
    main()
