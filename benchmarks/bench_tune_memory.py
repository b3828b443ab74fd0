"""Peak host memory of ``tune``: layer vectors streamed to disk vs every layer held at once.

Runs ``tune`` (one tp_stop candidate + the TP off row, every layer a candidate) on STS-B dev
sentences over a random Llama of ``--shape``, each variant in a fresh process, and reports the
growth of resident memory while it runs (sampled every 2 ms) next to the sizes that bound it:
``texts x layers x d x 4`` bytes (all layers at once, what tune held before) and
``texts x d x 4`` (one layer). "streamed" uses slices of ``--chunk-size`` texts (tune's default
slice is what fits 256 MiB at every layer, larger than this whole run); "held" is the same code
with one slice as large as the data, which holds every layer of every text, as the old ``tune``
did. Two measures: tracemalloc's peak (numpy arrays and Python objects: where the vectors live)
and the growth of resident memory (also torch's activations and allocator caches, which depend
on the batch, not on the number of texts).

Usage: python benchmarks/bench_tune_memory.py [--shape small] [--texts 1000] [--record]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHAPES, machine, make_model, markdown, record, sentences
from bench_encoder import PeakRSS


def child(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from tp_rag import TPEncoder
    from tp_rag.datasets import StsPairs, StsTask
    from tp_rag.tuning import tune

    torch.set_num_threads(args.threads)
    encoder = TPEncoder.from_pretrained(args.model_dir, device="cpu", dtype="float32")
    texts = sentences(args.texts)
    half = len(texts) // 2
    pairs = StsPairs(
        "dev",
        tuple(texts[:half]),
        tuple(texts[half : 2 * half]),
        np.arange(half, dtype=float) % 6,
    )
    task = StsTask("dev", (pairs,))
    layers = list(range(encoder.num_layers + 1))
    import scipy.stats  # noqa: F401  (loaded before measuring)

    chunk = len(texts) if args.child == "held" else args.chunk_size
    start = time.perf_counter()
    tracemalloc.start()
    with PeakRSS() as peak:
        tune(encoder, task, tp_stops=[encoder.config.tp_start + 1], layers=layers, chunk_size=chunk)
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(
        json.dumps(
            {
                "traced": traced,
                "mib": peak.mib,
                "seconds": time.perf_counter() - start,
                "layers": len(layers),
                "d": encoder.dimension,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    where = machine()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model(Path(tmp) / "llama", args.shape)
        for variant in ("streamed", "held"):
            run = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    variant,
                    "--model-dir",
                    str(model_dir),
                    "--texts",
                    str(args.texts),
                    "--threads",
                    str(args.threads),
                    "--chunk-size",
                    str(args.chunk_size),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[variant] = json.loads(run.stdout.strip().splitlines()[-1])
    layers, d = results["held"]["layers"], results["held"]["d"]
    texts = 2 * (args.texts // 2)
    all_layers = texts * layers * d * 4 / 2**20
    one_layer = texts * d * 4 / 2**20
    rows = [
        [
            name,
            f"{r['traced']:.2f}",
            f"{r['traced'] / all_layers:.2f}",
            f"{r['mib']:.1f}",
            f"{r['seconds']:.1f}",
        ]
        for name, r in (
            (f"streamed to disk, slices of {args.chunk_size} texts", results["streamed"]),
            ("every layer held (the old tune)", results["held"]),
        )
    ]
    lines = [
        f"Machine: {where}; torch threads {args.threads}",
        f"Model: random Llama shaped '{args.shape}' ({layers - 1} layers, d = {d}), float32; "
        f"{texts} STS-B sentences, {layers} candidate layers, 1 tp_stop + TP off; "
        f"all layers = {all_layers:.1f} MiB, one layer = {one_layer:.2f} MiB",
        "",
        *markdown(
            [
                "tune",
                "tracemalloc peak (MiB)",
                "/ all layers",
                "peak RSS growth (MiB)",
                "seconds",
            ],
            rows,
        ),
    ]
    print("\n".join(lines))
    if args.record:
        record("bench_tune_memory.py", lines)


if __name__ == "__main__":
    main()
