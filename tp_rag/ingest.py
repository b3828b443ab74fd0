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
from typing import TYPE_CHECKING, Any, Protocol

from tp_rag.documents import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_CHUNK_SIZE,
    Chunk,
    DocumentError,
    check_chunking,
    find_files,
    read_document,
    split_text,
)

if TYPE_CHECKING:
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
class PruneSummary:
    """What one ``prune`` call removed (or, with ``dry_run``, would remove)."""

    sources: list[str] = field(default_factory=list)
    """Sources whose files are gone, sorted."""
    chunks: int = 0
    """Their chunks (each one is removed from both collections)."""
    dry_run: bool = False

    def __str__(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        files = f"{len(self.sources)} file{'' if len(self.sources) == 1 else 's'}"
        return f"{verb} {self.chunks} chunks of {files} no longer found"


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

    Writing to an embedded Chroma folder takes its writer lock (``tp_rag.store.write_lock``):
    a second writer is refused with ``StoreBusyError``. A Chroma server that stops answering
    raises ``StoreUnavailableError``; running again resumes.
    """
    from tp_rag.store import server_errors, write_lock

    with write_lock(store.client), server_errors(store.client):
        return _ingest(
            paths,
            store,
            chunk_size=chunk_size,
            chunk_overlap=chunk_overlap,
            source_name=source_name,
            progress=progress,
        )


def _ingest(
    paths: Iterable[str | Path],
    store: TPStore,
    *,
    chunk_size: int | None,
    chunk_overlap: int | None,
    source_name: Callable[[Path], str],
    progress: IngestProgress | None,
) -> IngestSummary:
    started = time.perf_counter()
    encoder = store.encoder
    chunk_size, chunk_overlap = settle_chunking(store, chunk_size, chunk_overlap)
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
        chunks, reason = read_chunks(path, encoder.tokenizer, chunk_size, chunk_overlap)
        if reason is not None:
            count_file(summary, progress, str(path), source, reason=reason)
            continue
        if any(item.source == source for item in pending):
            flush()  # two files with one source name: the later one replaces the earlier
        missing, stale = plan_source(source, chunks, *store.source_ids(source))
        changed = bool(missing or stale)
        count_file(summary, progress, str(path), source, missing=len(missing), changed=changed)
        if not changed:
            continue
        pending.append(_Pending(source, missing, stale))
        if sum(len(item.chunks) for item in pending) >= encoder.config.batch_size:
            flush()
    flush()
    summary.seconds = time.perf_counter() - started
    return summary


def count_file(
    summary: IngestSummary,
    progress: IngestProgress | None,
    path: str,
    source: str,
    *,
    reason: str | None = None,
    missing: int = 0,
    changed: bool = False,
) -> None:
    """Record one file in ``summary`` and ``progress``: skipped for ``reason``, or read with
    ``missing`` chunks to write, ``changed`` when it has chunks to write or outdated ones."""
    if reason is not None:
        summary.skipped.append((path, reason))
        if progress is not None:
            progress.file_read(source, 0)
        return
    summary.files += 1
    if progress is not None:
        progress.file_read(source, missing)
    if changed:
        summary.updated += 1
    else:
        summary.unchanged += 1


def settle_chunking(
    store: TPStore, chunk_size: int | None, chunk_overlap: int | None
) -> tuple[int, int]:
    """The ``(chunk_size, chunk_overlap)`` an ingestion into ``store`` uses, checked, and
    recorded with the store when they differ from what it recorded before.

    Sizes not given come from the store's record, else from ``DEFAULT_CHUNK_SIZE`` and
    ``DEFAULT_CHUNK_OVERLAP`` (at most an eighth of the chunk size).
    """
    recorded = store.chunking()
    if chunk_size is None:
        chunk_size = recorded[0] if recorded else DEFAULT_CHUNK_SIZE
    if chunk_overlap is None:
        same_size = recorded is not None and recorded[0] == chunk_size
        chunk_overlap = recorded[1] if same_size else min(DEFAULT_CHUNK_OVERLAP, chunk_size // 8)
    check_chunking(chunk_size, chunk_overlap)
    if chunk_size >= store.encoder.config.max_length:
        raise ValueError(
            f"chunk_size={chunk_size} tokens does not fit the encoder's max_length="
            f"{store.encoder.config.max_length} with its prompt; use a smaller chunk_size"
        )
    if recorded != (chunk_size, chunk_overlap):
        store.record_chunking(chunk_size, chunk_overlap)
    return chunk_size, chunk_overlap


def read_chunks(
    path: Path, tokenizer: Any, chunk_size: int, chunk_overlap: int
) -> tuple[list[Chunk], str | None]:
    """A file's chunks and ``None``, or ``([], reason)`` when the file cannot be ingested."""
    try:
        text = read_document(path)
    except DocumentError as error:
        return [], str(error).removeprefix(f"{path}: ")
    chunks = split_text(text, tokenizer, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    return chunks, None


def plan_source(
    source: str, chunks: Sequence[Chunk], have_on: set[str], have_off: set[str]
) -> tuple[list[Chunk], set[str]]:
    """What to do for ``source``, given the ids of it the TP-on and TP-off collections hold:
    ``(missing, stale)``, its chunks still to write and the ids of its outdated chunks.

    A chunk counts as written only when it is in both collections (a run killed between the two
    upserts leaves it in one); an id stored for ``source`` that none of ``chunks`` has is stale.
    """
    from tp_rag.store import chunk_id

    ids = [chunk_id(source, chunk) for chunk in chunks]
    complete = have_on & have_off
    missing = [c for c, i in zip(chunks, ids, strict=True) if i not in complete]
    stale = (have_on | have_off) - set(ids)
    return missing, stale


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


def prune_scope(paths: Iterable[str | Path]) -> tuple[list[Path], set[str]]:
    """What ``prune`` mirrors: the resolved ``paths`` and the files found under them now.

    Against a typo, every path must exist and hold at least one file tp-rag reads, else
    ``ValueError`` (call it first to refuse a bad path before anything is written).
    """
    roots = []
    found: set[str] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ValueError(f"{raw} does not exist; nothing pruned (is the path mistyped?)")
        files, _ = find_files([path])
        if not files:
            raise ValueError(
                f"no files tp-rag reads under {raw}; nothing pruned (is it the right folder?)"
            )
        roots.append(path.resolve())
        found.update(str(file) for file in files)
    if not roots:
        raise ValueError("no paths given; nothing pruned")
    return roots, found


def prune(paths: Iterable[str | Path], store: TPStore, *, dry_run: bool = False) -> PruneSummary:
    """Make ``store`` mirror ``paths``: remove the chunks of files that are no longer there.

    A source is pruned when it is recorded as a path equal to or under one of ``paths`` and
    no file is there any more (deleted, moved or renamed; a link whose target went), from both
    collections. A file that is there is never pruned, whether or not a folder walk lists it
    (such as a hidden file named on an earlier command line). Sources recorded under other
    names (the demo's ``sample/NAME`` and upload names) are never pruned. Against a typo,
    every path must exist and hold at least one file tp-rag reads, else ``ValueError`` and
    nothing is removed.
    ``dry_run=True`` only says what would be removed.

    >>> print(prune(["notes/"], store, dry_run=True))  # doctest: +SKIP
    would remove 4 chunks of 1 file no longer found
    """
    from tp_rag.store import server_errors, write_lock

    roots, found = prune_scope(paths)

    def under_roots(source: str) -> bool:
        candidate = Path(source)
        return candidate.is_absolute() and any(
            candidate == root or root in candidate.parents for root in roots
        )

    with write_lock(store.client), server_errors(store.client):
        gone = {
            source: ids
            for source, ids in store.chunks_by_source().items()
            if under_roots(source) and source not in found and not Path(source).is_file()
        }
        summary = PruneSummary(
            sources=sorted(gone), chunks=sum(map(len, gone.values())), dry_run=dry_run
        )
        if not dry_run:
            store.delete(sorted(set().union(*gone.values())))
    return summary
