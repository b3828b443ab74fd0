"""Small synthetic data sets in the real formats, shared by the evaluation and tuning tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

WORDS = [
    *("man", "woman", "dog", "cat", "plays", "guitar", "piano", "runs"),
    *("park", "kitchen", "cooks", "food", "red", "blue", "sings"),
]


def write_stsb(path: Path, pairs: int = 24, seed: int = 0) -> Path:
    """A synthetic STS Benchmark file whose gold score follows word overlap."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(pairs):
        a = rng.choice(WORDS, size=5, replace=False)
        b = np.concatenate([a[: i % 6], rng.choice(WORDS, size=5 - i % 6)])
        lines.append(f"g\tf\t2012\t{i:04d}\t{i % 6:.1f}\tA {' '.join(a)}.\tA {' '.join(b)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_beir(
    folder: Path,
    *,
    queries: int = 5,
    split: str = "test",
    gain: Callable[[int], int] = lambda i: 1 + i % 2,
) -> Path:
    """A BEIR folder of 12 documents; query ``i`` is judged relevant to document ``i``."""
    corpus = [{"_id": f"d{i}", "title": WORDS[i], "text": f"about {WORDS[i]}"} for i in range(12)]
    rows = [{"_id": f"q{i}", "text": f"{WORDS[i]} question"} for i in range(queries)]
    qrels = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t{gain(i)}" for i in range(queries)]
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("\n".join(map(json.dumps, corpus)) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    (folder / "qrels" / f"{split}.tsv").write_text("\n".join(qrels) + "\n")
    return folder
