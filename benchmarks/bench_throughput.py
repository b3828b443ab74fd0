"""Encode throughput of tp-rag (TP on, the model's default settings) against batch size and text
length: texts/s, tokens/s, and the achieved matrix throughput as a fraction of the accelerator's
bf16 peak where that peak is known.

Tokens are the prompt tokens each text becomes (template, placeholder and text, after
truncation); padding is not counted. Achieved FLOP/s uses the forward-pass estimate
``2 * N + 4 * L * d * s`` per token (N: weights of the L decoder layers that run up to
``output_layer``, d: width, s: the text's prompt length), which ignores norms and rotary embeddings.

On an H200: ``python benchmarks/bench_throughput.py --device cuda --dtype bfloat16
--shape llama-2-7b --batch-sizes 8,32,128 --lengths 16,64,256 --texts 512``
(a random model shaped like Llama-2-7B; the paper's settings for it: TP layers [1, 7),
output_layer 27).

Usage: python benchmarks/bench_throughput.py [--shape small] [--batch-sizes 1,8,32]
       [--lengths 8,32,128] [--texts 32] [--repeats 2] [--device cpu] [--dtype float32]
       [--peak-tflops X] [--model DIR] [--record]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHAPES, interleaved_best, machine, make_model, markdown, record, texts_of_length
from transformers import AutoConfig

from tp_rag import TPEncoder
from tp_rag.prompts import clean_sentence, render

DENSE_BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}
"""Vendor dense (no sparsity) bf16 tensor-core peaks, by device-name fragment (SXM parts)."""


def peak_tflops(explicit: float | None) -> float | None:
    import torch

    if explicit is not None:
        return explicit
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in DENSE_BF16_PEAK_TFLOPS.items() if key in name), None)


def flops_per_token(model_config: Any, layers: int, prompt_tokens: int) -> float:
    """Forward FLOPs of one token through ``layers`` decoder layers (see the module docstring)."""
    text = model_config.get_text_config()
    d, inner = text.hidden_size, text.intermediate_size
    kv = d * text.num_key_value_heads // text.num_attention_heads
    per_layer = d * (d + 2 * kv) + d * d + 3 * d * inner  # q, k, v, o and the gated MLP
    return 2 * per_layer * layers + 4 * layers * d * prompt_tokens


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--model", type=Path, default=None, help="a real local model instead")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--lengths", default="8,32,128", help="words per text")
    parser.add_argument("--texts", type=int, default=32, help="texts per cell")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the peak")
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    where = machine()
    peak = peak_tflops(args.peak_tflops)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or make_model(
            Path(tmp) / "model", args.shape, device=args.device, dtype=args.dtype
        )
        encoder = TPEncoder.from_pretrained(model_dir, device=args.device, dtype=args.dtype)
        config = encoder.config
        model_config = AutoConfig.from_pretrained(model_dir)
        template = config.templates[0]
        rows = []
        for words in (int(w) for w in args.lengths.split(",")):
            texts = texts_of_length(words, args.texts, seed=words)
            lengths = [
                min(
                    len(
                        encoder.tokenizer(render(template, clean_sentence(t), tp=True).text)[
                            "input_ids"
                        ]
                    ),
                    config.max_length,
                )
                for t in texts
            ]
            tokens, flops = (
                sum(lengths),
                sum(flops_per_token(model_config, config.output_layer, n) * n for n in lengths),
            )
            batches = [int(b) for b in args.batch_sizes.split(",")]
            encoder.encode(texts[: max(batches)], batch_size=max(batches), show_progress=False)
            seconds = interleaved_best(
                {
                    b: (lambda b=b, t=texts: encoder.encode(t, batch_size=b, show_progress=False))
                    for b in batches
                },
                args.repeats,
            )
            for batch in batches:
                achieved = flops / seconds[batch] / 1e12
                rows.append(
                    [
                        str(words),
                        f"{tokens / len(texts):.0f}",
                        str(batch),
                        f"{len(texts) / seconds[batch]:.1f}",
                        f"{tokens / seconds[batch]:.0f}",
                        f"{achieved:.3g}",
                        f"{achieved / peak:.1%}" if peak else "n/a",
                    ]
                )

    model = str(args.model) if args.model else f"random Llama shaped '{args.shape}'"
    lines = [
        f"Machine: {where}",
        f"Model: {model}, {args.dtype} on {args.device}; TP on, TP layers [{config.tp_start}, "
        f"{config.tp_stop}), output_layer {config.output_layer}, prompt {config.prompt}; "
        f"{args.texts} texts per cell, best of {args.repeats} interleaved rounds; "
        + (f"bf16 peak {peak:.0f} TFLOP/s" if peak else "no accelerator peak known"),
        "",
        *markdown(
            [
                "words/text",
                "tokens/text",
                "batch",
                "texts/s",
                "tokens/s",
                "achieved TFLOP/s",
                "of bf16 peak",
            ],
            rows,
        ),
    ]
    print("\n".join(lines))
    if args.record:
        record("bench_throughput.py", lines)


if __name__ == "__main__":
    main()
