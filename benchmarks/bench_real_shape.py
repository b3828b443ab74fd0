"""Real shapes: random weights with a real model's exact config and tokenizer, on real text.

A model is built from a folder of ../shared/models (``--shape``; the default model
Qwen2.5-0.5B-Instruct on CPU, Llama-2-7B and Qwen2-7B in bfloat16 on a GPU) and run on STS-B
dev sentences and Cranfield passages. Rows, timed in interleaved rounds after a warm-up
(best round; ``--repeats``):

- tp-rag, TP on and TP off (early exit at ``output_layer``);
- sentence-transformers over the same decoder, last-token pooling, the same prompt (TP off),
  every layer;
- the authors' style: the causal LM's full forward (every layer and the LM head) with
  ``output_hidden_states=True``, TP by the same overwrite, then ``hidden_states[output_layer]``.

Printed per data set: seconds, texts/s, prompt tokens/s, sentence-transformers' time over the
row's (goal > 1 for TP on), and on a GPU the achieved matrix throughput as a fraction of the
card's dense bf16 peak (``PEAK_TFLOPS``; FLOPs per token as in bench_throughput.py, plus the LM
head for the authors' style). Also: TP on / TP off time against its prompt-token ratio; the
share of tp-rag's encode time spent outside the model's forward (tokenizing, padding, copies),
timed around ``model.forward``; and the default model's load time, peak memory and texts/s,
measured in a fresh process.

CPU (the default model):  python benchmarks/bench_real_shape.py --record
GPU:  python benchmarks/bench_real_shape.py --device cuda --dtype bfloat16 \\
          --shape meta-llama--Llama-2-7b-hf --sentences 2048 --passages 512 --record
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED, build_real_shape, machine, markdown, record, timed
from bench_encoder import authors_style
from bench_throughput import flops_per_token
from bench_vs_sentence_transformers import sentence_transformers_model

from tp_rag import TPEncoder
from tp_rag.prompts import clean_sentence, render

MODELS = SHARED / "models"
DEFAULT_SHAPE = "Qwen--Qwen2.5-0.5B-Instruct"

PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0))
"""Dense bf16 tensor-core peaks (TFLOP/s) by device-name fragment, first match wins: NVIDIA's
H100 and H200 datasheets list bf16 with sparsity (SXM 1,979; PCIe 1,513; NVL 1,671); dense is
half of that."""


def peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def sts_dev_sentences(count: int) -> list[str]:
    """The first ``count`` distinct sentences of STS-B dev, in file order."""
    path = SHARED / "data" / "sts" / "stsbenchmark" / "sts-dev.csv"
    seen: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        for sentence in line.split("\t")[5:7]:
            seen.setdefault(sentence, None)
    return list(seen)[:count]


def cranfield_passages(count: int) -> list[str]:
    """The first ``count`` Cranfield abstracts as ``title + " " + text`` (as ``eval`` reads)."""
    path = SHARED / "data" / "retrieval" / "cranfield" / "corpus.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [f"{row['title']} {row['text']}".strip() for row in rows[:count]]


class ForwardClock:
    """Seconds spent inside ``model.forward`` (early exit included) while the block runs."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.seconds = model, 0.0

    def __enter__(self) -> ForwardClock:
        inner = self.model.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.seconds += time.perf_counter() - start

        self.model.forward = forward
        return self

    def __exit__(self, *exc: object) -> None:
        del self.model.forward  # back to the class's method


def load_child(args: argparse.Namespace) -> None:
    """In a fresh process: load time, encode speed (TP on) and peak memory of the default path."""
    start = time.perf_counter()
    encoder = TPEncoder.from_pretrained(args.model_dir, device=args.device, dtype=args.dtype)
    load = time.perf_counter() - start
    texts = sts_dev_sentences(args.sentences)
    encoder.encode(texts[:16], show_progress=False)
    seconds = timed(lambda: encoder.encode(texts, show_progress=False))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB -> MiB
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    print(json.dumps({"load": load, "texts_per_s": len(texts) / seconds, "rss": peak, "gpu": cuda}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default=DEFAULT_SHAPE, help="folder name in ../shared/models")
    parser.add_argument("--model", type=Path, default=None, help="an already built model folder")
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--passages", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds (best)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        load_child(args)
        return
    where = machine()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = Path(tmp) / "model"
            build_real_shape(
                MODELS / args.shape,
                model_dir,
                dtype="bfloat16" if args.dtype == "float32" else args.dtype,
                device=args.device,
            )
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--model-dir",
                str(model_dir),
                "--device",
                args.device,
                "--dtype",
                args.dtype,
                "--sentences",
                str(args.sentences),
                *(["--threads", str(args.threads)] if args.threads else []),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        loading = json.loads(child.stdout.strip().splitlines()[-1])
        lines = run_rows(args, model_dir, where, loading)
    print("\n".join(lines))
    if args.record:
        record("bench_real_shape.py", lines)


def run_rows(
    args: argparse.Namespace, model_dir: Path, where: str, loading: dict[str, float]
) -> list[str]:
    encoder = TPEncoder.from_pretrained(
        model_dir, device=args.device, dtype=args.dtype, batch_size=args.batch_size
    )
    config = encoder.config
    model_config = encoder._loaded.model.config
    text_config = model_config.get_text_config()
    depth, vocab = encoder.num_layers, text_config.vocab_size
    readout = config.output_layer % (depth + 1)
    st = sentence_transformers_model(model_dir, args.device, args.dtype, config.max_length)
    authors = authors_style(encoder, model_dir)
    template = config.templates[0]
    peak = peak_tflops()

    def prompt_tokens(texts: list[str], tp: bool) -> list[int]:
        return [
            len(encoder.tokenizer(render(template, clean_sentence(t), tp=tp).text).input_ids)
            for t in texts
        ]

    def flops(tokens: list[int], layers: int, head: bool) -> float:
        per = [flops_per_token(model_config, layers, n) for n in tokens]
        return float(
            sum(
                n * (f + (2 * text_config.hidden_size * vocab if head else 0))
                for n, f in zip(tokens, per, strict=True)
            )
        )

    lines = [
        f"Machine: {where}; torch threads {torch.get_num_threads()}",
        f"Model: random weights, exact config and tokenizer of `{args.shape}` ({depth} layers, "
        f"hidden {text_config.hidden_size}, vocab {vocab}), {args.dtype} on {args.device}; "
        f"TP layers [{config.tp_start}, {config.tp_stop}), output_layer {config.output_layer}, "
        f"prompt {config.prompt}, batch {args.batch_size}; best of {args.repeats} interleaved "
        "rounds after a warm-up",
        "",
        f"Default path, fresh process: load {loading['load']:.1f} s, "
        f"{loading['texts_per_s']:.1f} texts/s (TP on, {args.sentences} STS-B dev sentences), "
        f"peak RSS {loading['rss']:.0f} MiB"
        + (f", peak GPU memory {loading['gpu']:.0f} MiB" if loading["gpu"] else ""),
    ]
    for label, texts in (
        (f"{args.sentences} STS-B dev sentences", sts_dev_sentences(args.sentences)),
        (f"{args.passages} Cranfield passages", cranfield_passages(args.passages)),
    ):
        on_tokens, off_tokens = prompt_tokens(texts, True), prompt_tokens(texts, False)
        prompts = [render(template, clean_sentence(t), tp=False).text for t in texts]
        warm = texts[: args.batch_size]
        encoder.encode(warm, show_progress=False)
        st.encode(prompts[: args.batch_size], batch_size=args.batch_size, show_progress_bar=False)
        authors(warm)
        runs = {
            "on": lambda t=texts: encoder.encode(t, show_progress=False),
            "off": lambda t=texts: encoder.encode(t, tp=False, show_progress=False),
            "st": lambda p=prompts: st.encode(
                p, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False
            ),
            "authors": lambda t=texts: authors(t),
        }
        best = dict.fromkeys(runs, float("inf"))
        outside = 0.0
        for _ in range(args.repeats):  # rows alternate within a round: load hits them alike
            for key, run in runs.items():
                with ForwardClock(encoder._loaded.model) as clock:
                    seconds = timed(run)
                if seconds < best[key]:
                    best[key] = seconds
                    if key == "on":
                        outside = 1 - clock.seconds / seconds
        t_on, t_off, t_st, t_authors = best["on"], best["off"], best["st"], best["authors"]
        rows = []
        for name, seconds, tokens, layers, head in (
            ("tp-rag TP on", t_on, on_tokens, readout, False),
            ("tp-rag TP off", t_off, off_tokens, readout, False),
            ("sentence-transformers, last token, TP off prompt", t_st, off_tokens, depth, False),
            (
                "authors' style (all layers, LM head, all hidden states)",
                t_authors,
                on_tokens,
                depth,
                True,
            ),
        ):
            achieved = flops(tokens, layers, head) / seconds / 1e12
            rows.append(
                [
                    name,
                    f"{seconds:.2f}",
                    f"{len(texts) / seconds:.1f}",
                    f"{sum(tokens) / seconds:.0f}",
                    f"{t_st / seconds:.2f}",
                    f"{achieved:.3g}",
                    f"{achieved / peak:.1%}" if peak else "n/a",
                ]
            )
        lines += [
            "",
            f"**{label}** ({sum(on_tokens)} prompt tokens with TP on, {sum(off_tokens)} off): "
            f"TP on / TP off time {t_on / t_off:.3f} vs tokens "
            f"{sum(on_tokens) / sum(off_tokens):.3f}; "
            f"tp-rag TP on spends {outside:.1%} of encode time outside the model's forward",
            "",
            *markdown(
                [
                    "encoder",
                    "seconds",
                    "texts/s",
                    "tokens/s",
                    "sentence-transformers / this",
                    "TFLOP/s",
                    "of bf16 peak",
                ],
                rows,
            ),
        ]
    return lines


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
