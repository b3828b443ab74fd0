"""Benchmark the weight digest behind ``TPConfig.fingerprint()`` on a Llama-2-7B-shaped checkpoint.

The digest hashes every byte of every stored tensor, so its cost grows with the checkpoint. This
builds the 7B tensors directly (random, bfloat16, no model class) and writes them as safetensors
shards, one per decoder layer (plus embeddings and the final norm), then times over all of them:
  - the digest of the stored checkpoint (``stored_weights_digest``: the bytes as stored, whatever
    dtype the model is then loaded in; what a load of safetensors uses),
  - the fallback digest of the same tensors held in memory (``weights_digest``; for ``.bin``
    checkpoints and models built in memory),
  - reading the same shards from the page cache into memory: the floor of any load (a real load
    also reads the disk and builds the model).
The shards are read once before timing, so all three start from the page cache, as the digest
does right after a load. ``--layers`` makes the checkpoint shallower (the per-layer cost is the
same). Ratios come from this one run.

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

from tp_rag.loading import stored_weights_digest, weights_digest

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

    totals = {"bytes": 0, "params": 0, "stored": 0.0, "memory": 0.0, "read": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for index, group in enumerate(groups(args.layers)):
            totals["params"] += sum(t.numel() for t in group.values())
            totals["bytes"] += sum(t.numel() * 2 for t in group.values())
            totals["memory"] += timed(lambda g=group: weights_digest(g.items()))
            files.append(Path(tmp) / f"model-{index:05d}.safetensors")
            save_file(group, files[-1])
        for path in files:
            path.read_bytes()  # into the page cache
        totals["stored"] = timed(lambda: stored_weights_digest(files))
        # load_file maps a file lazily: copying the tensors makes it really read them.
        totals["read"] = timed(
            lambda: [[t.clone() for t in load_file(path).values()] for path in files]
        )
    gb = totals["bytes"] / 1e9
    rows = [
        [
            name,
            f"{totals[key]:.1f}",
            f"{gb / totals[key]:.2f}",
            f"{totals[key] / totals['read']:.2f}",
        ]
        for name, key in (
            ("digest of the stored checkpoint (safetensors, any loading dtype)", "stored"),
            ("fallback: digest of the tensors in memory (bfloat16)", "memory"),
            ("read from page cache (load floor)", "read"),
        )
    ]
    lines = [
        f"Machine: {machine()}",
        f"Checkpoint: Llama-2-7B shapes with {args.layers} of its 32 decoder layers, no LM head, "
        f"{totals['params'] / 1e9:.2f} B parameters, {gb:.1f} GB in bfloat16, random values, "
        f"{len(files)} safetensors shards, on the CPU",
        "",
        *markdown(["step", "seconds", "GB/s", "/ page-cache read"], rows),
    ]
    print("\n".join(lines))
    if args.record:
        record("bench_fingerprint.py", lines)


if __name__ == "__main__":
    main()
