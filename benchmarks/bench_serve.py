"""``tp-rag serve`` under concurrent clients: 1, 8, 32 and 64 clients each sending one text per
request (STS-B sentences and Cranfield passages, mixed), against the server with dynamic batching
and against the same server with ``--max-batch-requests 1`` (batching across requests off).

Reported per row: texts/s, p50 and p99 request latency, the ratio of throughput to an in-process
``encode`` of the same texts in batches (goal >= 0.8 at 32 clients), the ratio to the unbatched
server at the same number of clients (goal >= 3 at 32 clients), and where the server's time went
(from its own /metrics: the share of wall time the worker was running jobs, requests per job,
mean wait in the queue). The clients run in this process (asyncio + httpx), the server in a
subprocess on 127.0.0.1; on a 2-core machine they share the cores.

Usage: python benchmarks/bench_serve.py [--shape small] [--texts 256] [--clients 1,8,32,64]
       [--max-length 128] [--model DIR] [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import httpx
import numpy as np
from _common import SHARED, interleaved_best, machine, make_model, markdown, record, sentences
from servers import tp_rag_serve

from tp_rag import TPEncoder


def cranfield_passages(count: int, seed: int = 0) -> list[str]:
    """Cranfield abstracts (title and text) when ../shared is present, else STS-like sentences."""
    path = SHARED / "data" / "retrieval" / "cranfield" / "corpus.jsonl"
    if not path.is_file():
        return sentences(count, seed + 1)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    pool = [f"{r.get('title', '')} {r['text']}".strip() for r in rows if r.get("text")]
    return random.Random(seed).sample(pool, count)


def metrics(url: str) -> dict[str, float]:
    """The server's counters that say where its time went."""
    wanted = (
        "tp_rag_inference_seconds_sum",
        "tp_rag_batch_requests_count",
        "tp_rag_batch_requests_sum",
        "tp_rag_queue_seconds_sum",
        "tp_rag_queue_seconds_count",
    )
    values = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            values[name] = float(value)
    return values


async def drive(url: str, texts: list[str], clients: int) -> tuple[float, list[float], list]:
    """``clients`` concurrent loops, each posting one text per request until all are sent:
    wall seconds, per-request latencies, and the vectors in text order."""
    vectors: list = [None] * len(texts)
    latencies: list[float] = []
    next_index = iter(range(len(texts)))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def loop() -> None:
            for i in next_index:
                start = time.perf_counter()
                answer = await client.post(f"{url}/embed", json={"inputs": texts[i]})
                answer.raise_for_status()
                latencies.append(time.perf_counter() - start)
                vectors[i] = answer.json()[0]

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        wall = time.perf_counter() - start
    return wall, latencies, vectors


def run_server(model: Path, texts: list[str], clients: list[int], extra: list[str], reference):
    """Per number of clients: (wall, latencies, metrics delta); checks every vector."""
    args = ["--model", str(model), "--log-level", "warning", *extra]
    results = {}
    with tp_rag_serve(args, timeout=300) as (url, _):
        asyncio.run(drive(url, texts[:16], 4))  # warm up
        for count in clients:
            before = metrics(url)
            wall, latencies, vectors = asyncio.run(drive(url, texts, count))
            after = metrics(url)
            error = float(np.abs(np.asarray(vectors) - reference).max())
            assert error <= 1e-5, f"server vectors differ from encode by {error}"
            delta = {k: after[k] - before.get(k, 0.0) for k in after}
            results[count] = (wall, latencies, delta, error)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="small")
    parser.add_argument("--model", default=None, help="a model folder (default: a random one)")
    parser.add_argument("--texts", type=int, default=256, help="half sentences, half passages")
    parser.add_argument("--clients", default="1,8,32,64")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    texts = sentences(args.texts // 2) + cranfield_passages(args.texts - args.texts // 2)
    random.Random(0).shuffle(texts)
    described = machine()

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else make_model(Path(tmp) / "model", args.shape)
        encoder = TPEncoder.from_pretrained(model, max_length=args.max_length)
        tokens = sum(len(f.input_ids) for f in encoder.tokenize(texts))
        reference = encoder.encode(texts)
        timing = interleaved_best(
            {
                "encode": lambda: encoder.encode(texts),
                "tokenize": lambda: encoder.tokenize(texts),
            },
            repeats=2,
        )
        in_process = len(texts) / timing["encode"]
        del encoder
        common = ["--max-length", str(args.max_length)]
        batched = run_server(model, texts, clients, common, reference)
        alone = run_server(model, texts, clients, [*common, "--max-batch-requests", "1"], reference)

    header = [
        "clients",
        "server",
        "texts/s",
        "p50 ms",
        "p99 ms",
        "/ in-process (goal >= 0.8 at 32)",
        "batched / unbatched (goal >= 3 at 32)",
        "worker busy",
        "requests/job",
        "mean queue ms",
    ]
    rows = []
    for count in clients:
        for label, results in (("batched", batched), ("--max-batch-requests 1", alone)):
            wall, latencies, delta, _ = results[count]
            speed = len(texts) / wall
            other = len(texts) / alone[count][0]
            p50, p99 = np.percentile(np.asarray(latencies) * 1000, [50, 99])
            jobs = delta["tp_rag_batch_requests_count"]
            rows.append(
                [
                    str(count),
                    label,
                    f"{speed:.1f}",
                    f"{p50:.0f}",
                    f"{p99:.0f}",
                    f"{speed / in_process:.2f}",
                    f"{speed / other:.2f}" if label == "batched" else "1.00",
                    f"{delta['tp_rag_inference_seconds_sum'] / wall:.0%}",
                    f"{delta['tp_rag_batch_requests_sum'] / jobs:.1f}",
                    f"{1000 * delta['tp_rag_queue_seconds_sum'] / len(texts):.0f}",
                ]
            )
    worst = max(r[3] for r in [*batched.values(), *alone.values()])
    lines = [
        f"Machine: {described}",
        f"Model: {'random Llama shaped ' + repr(args.shape) if not args.model else args.model}, "
        f"float32 on cpu, max_length {args.max_length}; {len(texts)} texts ({len(texts) // 2} "
        f"STS-B sentences, {len(texts) - len(texts) // 2} Cranfield passages), {tokens} prompt "
        f"tokens; one text per request; clients in the benchmark process (asyncio + httpx), "
        f"server in a subprocess on 127.0.0.1",
        f"In-process encode of the same texts (batch 32, best of 2): {in_process:.1f} texts/s; "
        f"tokenizing alone is {timing['tokenize'] / timing['encode']:.0%} of that time",
        f"Same vectors: max |server - encode| = {worst:.1e}",
        "",
        *markdown(header, rows),
    ]
    print("\n".join(lines))
    if args.record:
        record("bench_serve.py", lines)


if __name__ == "__main__":
    main()
