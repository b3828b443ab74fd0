"""A small document corpus and the chunk-id checks shared by the ingestion tests (single
machine and Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tp_rag.documents import read_document, split_text
from tp_rag.encoder import TPEncoder
from tp_rag.store import chunk_id

DOCS = {
    "tides.md": "# Tides\n\nThe Moon pulls the oceans into two bulges, so most coasts see two "
    "high waters a day.\n\nSpring tides come at new and full moon.",
    "bread.txt": "Sourdough starter is flour, water, wild yeast and bacteria.\n\nFeed it "
    "daily at room temperature; in the fridge, once a week.",
    "keys.html": "<html><body><h1>Hash tables</h1><p>A hash function maps each key to a slot, "
    "so lookups take constant time on average.</p></body></html>",
}
"""Three short documents, one per format (Markdown, text, HTML)."""

CHUNKING = {"chunk_size": 24, "chunk_overlap": 4}
"""Chunks small enough that every document gives several."""


def write_corpus(folder: Path) -> Path:
    """``DOCS`` written as files into a new ``folder``."""
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def ids(collection: Any, source: str | None = None) -> set[str]:
    """The ids in a Chroma collection (of one source, if given)."""
    where = {"source": source} if source else None
    return set(collection.get(where=where, include=[])["ids"])


def expected_ids(path: Path, encoder: TPEncoder, **chunking: int) -> set[str]:
    """The chunk ids a clean ingestion of ``path`` (a file, or every file in a folder) must
    produce, computed from the documents' own text, independently of ``ingest``."""
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    want: set[str] = set()
    for file in files:
        chunks = split_text(read_document(file), encoder.tokenizer, **chunking)
        want |= {chunk_id(str(file.resolve()), chunk) for chunk in chunks}
    return want
