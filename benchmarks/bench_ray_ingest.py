"""Ingestion on Ray against the single-machine path: chunks/s, same corpus, same Chroma server.

Starts a `chroma run` server and a local Ray (``--cpus``, default all cores), then ingests one
folder of text files three times into fresh collections of that server:

- ``tp_rag.ingest.ingest`` in this process with ``--cpus`` torch threads (the single-machine
  path),
- ``tp_rag.distributed.ingest_ray`` with 1 embedding actor, and with ``--cpus`` actors, one
  torch thread each.

Times are end to end, including Ray's start of its actors (each loads the model). Documents are
Cranfield abstracts from ../shared when present, else synthetic paragraphs.

Usage: python benchmarks/bench_ray_ingest.py [--shape small] [--docs 200] [--chunk-size 64]
       [--cpus 2] [--model DIR] [--record]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHAPES, machine, make_model, markdown, record
from bench_ingest import write_documents

from tp_rag import TPEncoder
from tp_rag.ingest import ingest
from tp_rag.store import TPStore, connect


def start_chroma(path: Path) -> tuple[subprocess.Popen[bytes], int]:
    chroma = shutil.which("chroma", path=str(Path(sys.executable).parent)) or "chroma"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [chroma, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            connect(host="127.0.0.1", port=port).heartbeat()
            return server, port
        except Exception:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.2)


def main() -> None:
    import ray
    import torch

    from tp_rag.distributed import DEFAULT_RAY_BATCH_SIZE, ingest_ray, start_local_ray

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--model", type=Path, default=None, help="a real local model instead")
    parser.add_argument("--docs", type=int, default=200)
    parser.add_argument("--chunk-size", type=int, default=64, help="tokens per chunk")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    where = machine()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = args.model or make_model(root / "model", args.shape)
        characters = write_documents(root / "docs", args.docs)
        server, port = start_chroma(root / "chroma")
        try:
            encoder = TPEncoder.from_pretrained(model_dir, device="cpu")
            client = connect(host="127.0.0.1", port=port)
            rows = []

            torch.set_num_threads(args.cpus)
            store = TPStore(client, "single", encoder)
            started = time.perf_counter()
            summary = ingest([root / "docs"], store, chunk_size=args.chunk_size)
            single = time.perf_counter() - started
            chunks = summary.chunks
            rows.append(
                [
                    f"single machine, {args.cpus} torch thread{'s' if args.cpus > 1 else ''}",
                    f"{single:.1f}",
                    chunks / single,
                ]
            )

            start_local_ray(num_cpus=args.cpus, include_dashboard=False)  # on 127.0.0.1 only
            try:
                for actors in sorted({1, args.cpus}):
                    store = TPStore(client, f"ray-{actors}", encoder)
                    started = time.perf_counter()
                    summary = ingest_ray(
                        [root / "docs"], store, chunk_size=args.chunk_size, actors=actors, threads=1
                    )
                    seconds = time.perf_counter() - started
                    assert summary.chunks == chunks and store.count() == (chunks, chunks)
                    label = f"Ray, {actors} embedding actor{'s' if actors > 1 else ''} x 1 thread"
                    rows.append([label, f"{seconds:.1f}", chunks / seconds])
            finally:
                ray.shutdown()
        finally:
            server.terminate()
            server.wait(timeout=30)

    config = encoder.config
    model = str(args.model) if args.model else f"random Llama shaped '{args.shape}'"
    table = [
        [name, seconds, f"{rate:.2f}", f"{rate / rows[0][2]:.2f}"] for name, seconds, rate in rows
    ]
    lines = [
        f"Machine: {where}",
        f"Model: {model}, float32 on cpu; TP layers [{config.tp_start}, {config.tp_stop}), "
        f"output_layer {config.output_layer}, batch {config.batch_size}; {args.docs} files "
        f"({characters} characters), chunk size {args.chunk_size} tokens, {chunks} chunks, each "
        f"embedded with TP on and off; one `chroma run` server on 127.0.0.1 for all runs; Ray "
        f"{ray.__version__}, local, {args.cpus} CPUs, {DEFAULT_RAY_BATCH_SIZE} chunks per actor "
        "call; one run each, end to end (Ray's times include starting its actors, each loading "
        "the model)",
        "",
        *markdown(["path", "seconds", "chunks/s", "vs single machine"], table),
    ]
    print("\n".join(lines))
    if args.record:
        record("bench_ray_ingest.py", lines)


if __name__ == "__main__":
    main()
