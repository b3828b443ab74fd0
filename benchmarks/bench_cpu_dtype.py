"""float32 against ``dtype="auto"`` on the default model's real shape, each measured against the
machine's own matrix-multiply peak in that number format, in the same run.

A random-weight model with Qwen2.5-0.5B-Instruct's exact config and tokenizer is built with
``build_random_model.py`` (bfloat16 weights, as the published checkpoint stores them) and
loaded twice: ``dtype="float32"`` and ``dtype="auto"`` (bfloat16 where the CPU computes it
natively, see ``tp_rag.loading.choose_dtype``; bfloat16 on CUDA). Each round times, in turn,
the matmul peak of both formats and both encoders on STS-B dev sentences and Cranfield
passages (TP on, the default settings); the best round counts, so load from other work hits
every row alike and the least disturbed round is kept.

FLOPs per text (``bench_throughput.flops_per_token``, written out):

    sum over prompt tokens of  2 * N_used + 4 * L_used * d * s

N_used: the weights of the L_used decoder layers that run (early exit stops after
``output_layer``: 20 of Qwen2.5-0.5B's 24), i.e. the q, k, v, o projections and the gated MLP,
multiplied and added once per token (2 FLOPs per weight); the attention term counts the scores
and the weighted sum of one token against all s prompt tokens (4 * d * s per layer, the full
square, as the kernels compute it under a causal mask). Padding tokens, norms, rotary
embeddings, the embedding lookup and pooling are not counted, so the fraction is a lower bound.

Peak: the best sustained rate (repeated for >= ``--peak-seconds``) of the model's own matmul
shapes and a square one, in that format, on the same device and threads.

Also reported: how close the ``auto`` vectors are to float32 (cosine, every timed text) and the
top-10 agreement of a retrieval run over Cranfield (the first ``--queries`` queries against
``--documents`` abstracts, relevant ones included, cut to ``--retrieval-max-length`` tokens).
The weights are random, so this measures the number format's rounding, not retrieval quality.

CPU:  python benchmarks/bench_cpu_dtype.py --record
GPU:  python benchmarks/bench_cpu_dtype.py --device cuda --sentences 1024 --passages 256 --record
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED, build_real_shape, machine, markdown, record, timed
from bench_real_shape import cranfield_passages, sts_dev_sentences
from bench_throughput import flops_per_token

from tp_rag import TPEncoder
from tp_rag.datasets import read_beir
from tp_rag.prompts import clean_sentence, render

SHAPE = "Qwen--Qwen2.5-0.5B-Instruct"


def matmul_shapes(hidden: int, inner: int, device: str) -> list[tuple[int, int, int]]:
    """(m, k, n) products to find the peak: the model's MLP and attention projections over a
    batch of tokens, and a square one."""
    tokens, square = (2048, 2048) if device == "cpu" else (16384, 8192)
    return [
        (tokens, hidden, inner),  # MLP gate and up projections
        (tokens, inner, hidden),  # MLP down projection
        (tokens, hidden, hidden),  # attention q and o projections
        (square, square, square),
    ]


def matmul_rate(
    shape: tuple[int, int, int], dtype: torch.dtype, device: str, seconds: float
) -> float:
    """FLOP/s of ``shape`` repeated for at least ``seconds`` (after one warm-up product)."""
    m, k, n = shape
    a = torch.randn(m, k, device=device).to(dtype)
    b = torch.randn(k, n, device=device).to(dtype)
    a @ b
    count, elapsed = 0, 0.0
    while elapsed < seconds:
        elapsed += timed(lambda: a @ b)
        count += 1
    return 2 * m * k * n * count / elapsed


def retrieval_subset(queries: int, documents: int) -> tuple[list[str], list[str]]:
    """The first ``queries`` Cranfield queries and ``documents`` abstracts: every one judged
    relevant to those queries, then the corpus in order."""
    data = read_beir(SHARED / "data" / "retrieval" / "cranfield")
    chosen = data.query_ids[:queries]
    relevant = {doc for q in chosen for doc in data.qrels.get(q, {})}
    index = {doc: i for i, doc in enumerate(data.doc_ids)}
    picked = sorted(index[d] for d in relevant if d in index)[:documents]
    rest = [i for i in range(len(data.doc_ids)) if i not in set(picked)]
    picked += rest[: documents - len(picked)]
    return list(data.queries[:queries]), [data.documents[i] for i in picked]


def top10(queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
    return np.argsort(-(queries @ documents.T), axis=1, kind="stable")[:, :10]


def min_cosines(full: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """The smallest cosine between matching rows; and the same after removing the float32 mean
    vector (which random models share strongly), so that only what tells texts apart counts."""
    mean = full.mean(0)
    a, b = full - mean, other - mean
    centred = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float((full * other).sum(1).min()), float(centred.min())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="an already built model folder")
    parser.add_argument("--sentences", type=int, default=64, help="STS-B dev sentences")
    parser.add_argument("--passages", type=int, default=8, help="Cranfield passages")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds (best)")
    parser.add_argument("--peak-seconds", type=float, default=1.0, help="per matmul shape")
    parser.add_argument("--queries", type=int, default=50, help="retrieval check queries")
    parser.add_argument("--documents", type=int, default=200, help="retrieval check abstracts")
    parser.add_argument("--retrieval-max-length", type=int, default=128)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    where = machine()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = Path(tmp) / "model"
            build_real_shape(SHARED / "models" / SHAPE, model_dir, dtype="bfloat16")
        described = (
            f"the model in `{args.model}`"
            if args.model
            else f"random weights (bfloat16 file), exact config and tokenizer of `{SHAPE}`"
        )
        lines = run(args, model_dir, described)
    lines.insert(
        0,
        f"Machine: {where}; torch threads {torch.get_num_threads()}; "
        f"load average {os.getloadavg()[0]:.1f} at end",
    )
    print("\n".join(lines))
    if args.record:
        record("bench_cpu_dtype.py", lines)


def run(args: argparse.Namespace, model_dir: Path, model_name: str) -> list[str]:
    encoders = {
        "float32": TPEncoder.from_pretrained(model_dir, device=args.device, dtype="float32"),
        "auto": TPEncoder.from_pretrained(model_dir, device=args.device, dtype="auto"),
    }
    reference = encoders["float32"]
    config, model_config = reference.config, reference._loaded.model.config
    text = model_config.get_text_config()
    used_layers = config.output_layer % (reference.num_layers + 1)
    template = config.templates[0]
    formats = {name: encoder._loaded.dtype for name, encoder in encoders.items()}
    shapes = matmul_shapes(text.hidden_size, text.intermediate_size, args.device)

    data = {
        f"{args.sentences} STS-B dev sentences": sts_dev_sentences(args.sentences),
        f"{args.passages} Cranfield passages": cranfield_passages(args.passages),
    }
    tokens = {
        label: [
            len(reference.tokenizer(render(template, clean_sentence(t), tp=True).text).input_ids)
            for t in texts
        ]
        for label, texts in data.items()
    }
    flops = {
        label: float(sum(n * flops_per_token(model_config, used_layers, n) for n in counts))
        for label, counts in tokens.items()
    }

    runs: dict[tuple[str, str], Callable[[], object]] = {}
    for dtype in dict.fromkeys(formats.values()):
        for shape in shapes:
            runs[("peak", f"{dtype}|{shape}")] = lambda s=shape, d=dtype: matmul_rate(
                s, d, args.device, args.peak_seconds
            )
    for label, texts in data.items():
        for name, encoder in encoders.items():
            encoder.encode(texts[:8], show_progress=False)  # warm-up
            runs[(label, name)] = lambda e=encoder, t=texts: e.encode(t, show_progress=False)

    best: dict[tuple[str, str], float] = {}
    vectors: dict[tuple[str, str], np.ndarray] = {}
    for _ in range(args.repeats):  # every row once per round: load hits them alike
        for key, call in runs.items():
            if key[0] == "peak":
                best[key] = max(best.get(key, 0.0), float(call()))  # type: ignore[arg-type]
            else:
                start = time.perf_counter()
                result = call()
                seconds = time.perf_counter() - start
                if seconds < best.get(key, float("inf")):
                    best[key] = seconds
                vectors[key] = result  # type: ignore[assignment]
    peaks = {
        dtype: max(best[("peak", f"{dtype}|{shape}")] for shape in shapes)
        for dtype in dict.fromkeys(formats.values())
    }

    unit, scale = ("GFLOP/s", 1e9) if args.device == "cpu" else ("TFLOP/s", 1e12)
    lines = [
        f"Model: {model_name} "
        f"({reference.num_layers} layers, hidden {text.hidden_size}, MLP {text.intermediate_size}"
        f"), on {args.device}; TP on, layers [{config.tp_start}, {config.tp_stop}), "
        f"output_layer {config.output_layer} ({used_layers} layers run), prompt {config.prompt}, "
        f"batch {config.batch_size}; best of {args.repeats} interleaved rounds after a warm-up",
        f"`auto` resolved to {encoders['auto'].dtype} ({encoders['auto'].dtype_reason})",
        "Matmul peak, best sustained rate of "
        + ", ".join("x".join(map(str, s)) for s in shapes)
        + ": "
        + ", ".join(
            f"{str(d).removeprefix('torch.')} {p / scale:.3g} {unit}" for d, p in peaks.items()
        ),
        "FLOPs per text: sum over its prompt tokens of 2 * N_used + 4 * L_used * d * s "
        "(weights of the layers that run; attention over the s prompt tokens; no padding)",
        "",
    ]
    rows = []
    for label in data:
        for name, encoder in encoders.items():
            seconds = best[(label, name)]
            achieved = flops[label] / seconds
            peak = peaks[formats[name]]
            rows.append(
                [
                    label,
                    f"{name} ({encoder.dtype})",
                    f"{1000 * seconds / len(data[label]):.0f}",
                    f"{sum(tokens[label]) / seconds:.0f}",
                    f"{achieved / scale:.3g}",
                    f"{peak / scale:.3g}",
                    f"{achieved / peak:.2f}",
                    f"{best[(label, 'float32')] / seconds:.2f}",
                ]
            )
    lines += markdown(
        [
            "texts",
            "dtype",
            "ms/text",
            "tokens/s",
            f"model {unit}",
            f"matmul peak {unit}",
            "of peak (goal >= 0.6)",
            "speed-up vs float32",
        ],
        rows,
    )

    quality = []
    for label in data:
        plain, centred = min_cosines(vectors[(label, "float32")], vectors[(label, "auto")])
        quality.append(f"{label}: min cosine {plain:.5f} (centred {centred:.4f})")
    queries, documents = retrieval_subset(args.queries, args.documents)
    ranked = {}
    for name, encoder in encoders.items():
        short = encoder.with_settings(max_length=args.retrieval_max_length)
        ranked[name] = top10(
            short.encode(queries, show_progress=False), short.encode(documents, show_progress=False)
        )
    overlap = np.mean(
        [len(set(a) & set(b)) / 10 for a, b in zip(ranked["float32"], ranked["auto"], strict=True)]
    )
    first = np.mean(ranked["float32"][:, 0] == ranked["auto"][:, 0])
    lines += [
        "",
        f"`auto` ({encoders['auto'].dtype}) against float32 vectors: " + "; ".join(quality) + ". "
        f"Cranfield retrieval, {len(queries)} queries x {len(documents)} abstracts "
        f"(max_length {args.retrieval_max_length}): top-10 overlap {overlap:.3f}, "
        f"same first document {first:.3f}",
    ]
    return lines


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
