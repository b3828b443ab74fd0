"""tp-rag encode vs. sentence-transformers over the same decoder, at equal batch size.

The sentence-transformers side is what a user would write without this package: the decoder
loaded as a ``Transformer`` module with ``Pooling(pooling_mode="lasttoken")``, and the paper's
PromptEOL prompt filled in by hand (the same cleaned sentence, no placeholder). It runs every
layer; tp-rag stops at ``output_layer`` (early exit) and, with TP on, adds the placeholder.

Prints, per batch size, seconds and the ratio sentence-transformers / tp-rag (goal: > 1 for
tp-rag with TP on), plus a check that tp-rag with TP off read at the last layer gives the same
vectors as sentence-transformers (so both sides do the same work).

Usage: python benchmarks/bench_vs_sentence_transformers.py [--shape small] [--texts 128]
       [--batch-sizes 8,32] [--repeats 5] [--device cpu] [--dtype float32] [--model DIR] [--record]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHAPES, interleaved_best, machine, make_model, markdown, record, sentences

from tp_rag import TPEncoder
from tp_rag.prompts import clean_sentence, render


def sentence_transformers_model(model_dir: Path, device: str, dtype: str, max_length: int):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    transformer = Transformer(
        str(model_dir), max_seq_length=max_length, model_kwargs={"dtype": getattr(torch, dtype)}
    )
    if transformer.tokenizer.pad_token is None:
        transformer.tokenizer.pad_token = transformer.tokenizer.eos_token
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[transformer, pooling], device=device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--model", type=Path, default=None, help="a real local model instead")
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    where = machine()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or make_model(
            Path(tmp) / "model", args.shape, device=args.device, dtype=args.dtype
        )
        encoder = TPEncoder.from_pretrained(model_dir, device=args.device, dtype=args.dtype)
        config = encoder.config
        st = sentence_transformers_model(model_dir, args.device, args.dtype, config.max_length)
        last_layer = encoder.with_settings(output_layer=-1)
        texts = sentences(args.texts)
        template = config.templates[0]
        prompts = [render(template, clean_sentence(t), tp=False).text for t in texts]
        tokens = sum(len(encoder.tokenizer(p)["input_ids"]) for p in prompts)

        same = np.abs(
            last_layer.encode(texts[:8], tp=False)
            - st.encode(prompts[:8], normalize_embeddings=True, convert_to_numpy=True)
        ).max()

        rows = []
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            encoder.encode(texts[:batch], batch_size=batch, show_progress=False)  # warm-up
            seconds = interleaved_best(
                {
                    "on": lambda b=batch: encoder.encode(texts, batch_size=b, show_progress=False),
                    "off": lambda b=batch: encoder.encode(
                        texts, tp=False, batch_size=b, show_progress=False
                    ),
                    "off_last": lambda b=batch: last_layer.encode(
                        texts, tp=False, batch_size=b, show_progress=False
                    ),
                    "st": lambda b=batch: st.encode(
                        prompts, batch_size=b, normalize_embeddings=True, show_progress_bar=False
                    ),
                },
                args.repeats,
            )
            st_time = seconds["st"]
            for label, key in (
                (f"tp-rag TP on, output_layer {config.output_layer}", "on"),
                (f"tp-rag TP off, output_layer {config.output_layer}", "off"),
                ("tp-rag TP off, last layer", "off_last"),
                ("sentence-transformers, last token, last layer", "st"),
            ):
                rows.append(
                    [
                        str(batch),
                        label,
                        f"{seconds[key]:.2f}",
                        f"{len(texts) / seconds[key]:.1f}",
                        f"{st_time / seconds[key]:.2f}",
                    ]
                )

    layers = SHAPES[args.shape][0] if args.model is None else "?"
    model = str(args.model) if args.model else f"random Llama shaped '{args.shape}'"
    lines = [
        f"Machine: {where}",
        f"Model: {model} ({layers} layers), {args.dtype}; TP layers [{config.tp_start}, "
        f"{config.tp_stop}), output_layer {config.output_layer}, prompt {config.prompt}; "
        f"{len(texts)} texts, {tokens} prompt tokens (TP off), best of {args.repeats} "
        "interleaved rounds",
        f"Same work: max |tp-rag TP off at the last layer - sentence-transformers| = {same:.1e}",
        "",
        *markdown(
            ["batch", "encoder", "seconds", "texts/s", "sentence-transformers / this (goal > 1)"],
            rows,
        ),
    ]
    print("\n".join(lines))
    if args.record:
        record("bench_vs_sentence_transformers.py", lines)


if __name__ == "__main__":
    main()
