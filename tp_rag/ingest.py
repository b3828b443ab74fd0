"""Ingesting documents into a ``TPStore`` (the library behind ``tp-rag ingest`` and the demo).

Every chunk is embedded with TP on and with TP off in the same pass, on one loaded model, and
written to both collections of the store. Chunk ids come from source, position and text, so
re-ingesting is idempotent, an edited file replaces its old chunks, and an interrupted run
finishes on the next one: each file's missing chunks are written, its outdated ones removed.

>>> from tp_rag.ingest import ingest
>>> from tp_rag.store import TPStore, connect
>>> store = TPStore(connect("chroma_db"), "docs", TPEncoder.from_pretrained())  # doctest: +SKIP
>>> print(ingest(["notes/"], store))  # doctest: +SKIP
12 files (12 new or changed, 0 unchanged), 85 chunks written, 0 removed, 0 skipped, 41.2 s

This module stays cheap to import (the command line loads it): chromadb is imported inside the
functions that use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tp_rag.documents import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE

if TYPE_CHECKING:
    from tp_rag.documents import Chunk
    from tp_rag.store import TPStore


@dataclass
class IngestSummary:
    """What one ``ingest`` call did."""

    files: int = 0
    """Files read and split."""
    updated: int = 0
    """Files whose chunks were (partly) written: new, edited, or left unfinished before."""
    unchanged: int = 0
    """Files already in the store exactly as they are."""
    chunks: int = 0
    """Chunks embedded (TP on and off) and written."""
    removed: int = 0
    """Outdated chunks of edited files deleted."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """``(path, reason)`` of every input that was not ingested."""
    seconds: float = 0.0

    def __str__(self) -> str:
        files = f"{self.files} file{'' if self.files == 1 else 's'}"
        chunks = f"{self.chunks} chunk{'' if self.chunks == 1 else 's'}"
        return (
            f"{files} ({self.updated} new or changed, {self.unchanged} unchanged), "
            f"{chunks} written, {self.removed} removed, {len(self.skipped)} skipped, "
            f"{self.seconds:.1f} s"
        )


class IngestProgress(Protocol):
    """Receives progress from ``ingest`` (a terminal's bars, a log, the demo's gr.Progress)."""

    def files_found(self, total: int) -> None:
        """``total`` files are about to be read."""

    def file_read(self, name: str, chunks: int) -> None:
        """One file was read (or skipped); ``chunks`` of its chunks are queued for embedding."""

    def chunks_embedded(self, count: int, tp: bool) -> None:
        """``count`` more chunks were embedded with TP on (``tp=True``) or off; not yet written.
        Optional: a progress object without this method gets only ``chunks_written``."""

    def chunks_written(self, count: int) -> None:
        """``count`` more chunks were embedded (TP on and off) and written."""


@dataclass
class _Pending:
    source: str
    chunks: list[Chunk]
    stale: set[str]


def ingest(
    paths: Iterable[str | Path],
    store: TPStore,
    *,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
    source_name: Callable[[Path], str] = str,
    progress: IngestProgress | None = None,
) -> IngestSummary:
    """Read files and folders, split them, embed each chunk with TP on and off, write to ``store``.

    ``source_name`` turns a file's absolute path into the ``source`` recorded with its chunks
    (the path itself by default); chunks are replaced per source. Files that cannot be read are
    listed in ``IngestSummary.skipped`` and nothing of them is written.

    ``chunk_size`` and ``chunk_overlap`` (tokens) default to what the store recorded at its last
    ingestion, else to ``DEFAULT_CHUNK_SIZE`` and ``DEFAULT_CHUNK_OVERLAP``: re-running with no
    sizes given cuts files as before, so unchanged files stay unchanged.
    """
    from tp_rag.documents import (
        DocumentError,
        check_chunking,
        find_files,
        read_document,
        split_text,
    )
    from tp_rag.store import chunk_id

    started = time.perf_counter()
    encoder = store.encoder
    recorded = store.chunking()
    if chunk_size is None:
        chunk_size = recorded[0] if recorded else DEFAULT_CHUNK_SIZE
    if chunk_overlap is None:
        same_size = recorded is not None and recorded[0] == chunk_size
        chunk_overlap = recorded[1] if same_size else min(DEFAULT_CHUNK_OVERLAP, chunk_size // 8)
    check_chunking(chunk_size, chunk_overlap)
    if chunk_size >= encoder.config.max_length:
        raise ValueError(
            f"chunk_size={chunk_size} tokens does not fit the encoder's max_length="
            f"{encoder.config.max_length} with its prompt; use a smaller chunk_size"
        )
    if recorded != (chunk_size, chunk_overlap):
        store.record_chunking(chunk_size, chunk_overlap)
    files, skipped = find_files(paths)
    summary = IngestSummary(skipped=list(skipped))
    if progress is not None:
        progress.files_found(len(files))
    pending: list[_Pending] = []

    def flush() -> None:
        _write(pending, store, summary, progress)
        pending.clear()

    for path in files:
        source = source_name(path)
        try:
            text = read_document(path)
        except DocumentError as error:
            summary.skipped.append((str(path), str(error).removeprefix(f"{path}: ")))
            if progress is not None:
                progress.file_read(source, 0)
            continue
        chunks = split_text(
            text, encoder.tokenizer, chunk_size=chunk_size, chunk_overlap=chunk_overlap
        )
        if any(item.source == source for item in pending):
            flush()  # two files with one source name: the later one replaces the earlier
        have_on, have_off = store.source_ids(source)
        ids = [chunk_id(source, chunk) for chunk in chunks]
        complete = have_on & have_off  # written to both collections
        missing = [c for c, i in zip(chunks, ids, strict=True) if i not in complete]
        stale = (have_on | have_off) - set(ids)
        summary.files += 1
        if progress is not None:
            progress.file_read(source, len(missing))
        if not missing and not stale:
            summary.unchanged += 1
            continue
        summary.updated += 1
        pending.append(_Pending(source, missing, stale))
        if sum(len(item.chunks) for item in pending) >= encoder.config.batch_size:
            flush()
    flush()
    summary.seconds = time.perf_counter() - started
    return summary


def _write(
    pending: Sequence[_Pending],
    store: TPStore,
    summary: IngestSummary,
    progress: IngestProgress | None,
) -> None:
    """Embed the pending chunks (TP on and off, batch by batch), write them, then drop stale ones.

    Stale chunks go last, so a run killed at any point leaves each file either as it was, or
    with some new chunks already in: the next run writes the rest and then removes the old.
    """
    encoder = store.encoder
    entries = [(item.source, chunk) for item in pending for chunk in item.chunks]
    step = encoder.config.batch_size
    embedded = getattr(progress, "chunks_embedded", None)
    for begin in range(0, len(entries), step):
        part = entries[begin : begin + step]
        texts = [chunk.text for _, chunk in part]
        on = encoder.encode(texts, tp=True, show_progress=False)
        if embedded is not None:
            embedded(len(part), True)
        off = encoder.encode(texts, tp=False, show_progress=False)
        if embedded is not None:
            embedded(len(part), False)
        store.upsert(part, on, off)
        summary.chunks += len(part)
        if progress is not None:
            progress.chunks_written(len(part))
    for item in pending:
        store.delete(sorted(item.stale))
        summary.removed += len(item.stale)
