"""Ingestion throughput into Chroma, end to end: chunks/s, and where the time goes.

Runs ``tp_rag.ingest.ingest`` (read, split, embed each chunk with TP on and off, write both
collections) over a folder of text files into a fresh embedded Chroma database, timing the
encoder's ``encode`` calls (embedding) and the store's ``upsert``/``delete`` calls (writing)
inside the same run; the rest is reading, splitting and Chroma look-ups. Documents are Cranfield
abstracts from ../shared when present, else synthetic paragraphs.

Usage: python benchmarks/bench_ingest.py [--shape small] [--docs 200] [--chunk-size 64]
       [--device cpu] [--dtype float32] [--model DIR] [--record]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHAPES, SHARED, machine, make_model, markdown, record, texts_of_length

from tp_rag import TPEncoder
from tp_rag.ingest import ingest
from tp_rag.store import TPStore, connect


def write_documents(folder: Path, count: int) -> int:
    """``count`` .txt files; returns their total characters."""
    corpus = SHARED / "data" / "retrieval" / "cranfield" / "corpus.jsonl"
    if corpus.is_file():
        records = [json.loads(line) for line in corpus.read_text().splitlines()[:count]]
        texts = [f"{r['title']}\n\n{r['text']}" for r in records]
    else:
        texts = [" ".join(texts_of_length(40, 5, seed=i)) for i in range(count)]
    folder.mkdir(parents=True)
    for i, text in enumerate(texts):
        (folder / f"doc{i:05d}.txt").write_text(text, encoding="utf-8")
    return sum(len(t) for t in texts)


class Timed:
    """Wraps a bound method, adding its wall time to ``seconds``."""

    def __init__(self, method: Callable[..., Any]) -> None:
        self.method = method
        self.seconds = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.method(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--model", type=Path, default=None, help="a real local model instead")
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--chunk-size", type=int, default=64, help="tokens per chunk")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    where = machine()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = args.model or make_model(
            root / "model", args.shape, device=args.device, dtype=args.dtype
        )
        encoder = TPEncoder.from_pretrained(model_dir, device=args.device, dtype=args.dtype)
        characters = write_documents(root / "docs", args.docs)
        store = TPStore(connect(root / "db"), "bench", encoder)
        # Instance attributes shadow the methods that ingest() calls.
        encode = encoder.encode = Timed(encoder.encode)  # type: ignore[method-assign]
        upsert = store.upsert = Timed(store.upsert)  # type: ignore[method-assign]
        delete = store.delete = Timed(store.delete)  # type: ignore[method-assign]
        started = time.perf_counter()
        summary = ingest([root / "docs"], store, chunk_size=args.chunk_size)
        total = time.perf_counter() - started
        chunks_on, chunks_off = store.count()

    embedding, writing = encode.seconds, upsert.seconds + delete.seconds
    config = encoder.config
    model = str(args.model) if args.model else f"random Llama shaped '{args.shape}'"
    rows = [
        ["chunks/s, end to end", f"{summary.chunks / total:.2f}"],
        ["embedding share (TP on + TP off)", f"{embedding / total:.1%}"],
        ["writing share (Chroma upsert/delete, both collections)", f"{writing / total:.1%}"],
        ["other (read, split, look-ups)", f"{(total - embedding - writing) / total:.1%}"],
    ]
    lines = [
        f"Machine: {where}",
        f"Model: {model}, {args.dtype} on {args.device}; TP layers [{config.tp_start}, "
        f"{config.tp_stop}), output_layer {config.output_layer}, batch {config.batch_size}; "
        f"{summary.files} files ({characters} characters), chunk size {args.chunk_size} tokens, "
        f"{summary.chunks} chunks -> {chunks_on} + {chunks_off} vectors; embedded Chroma "
        f"(PersistentClient); {total:.1f} s in all",
        "",
        *markdown(["measure", "value"], rows),
    ]
    print("\n".join(lines))
    if args.record:
        record("bench_ingest.py", lines)


if __name__ == "__main__":
    main()
