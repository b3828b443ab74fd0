"""Chroma collections for comparing retrieval with TP on and off.

A store named ``NAME`` is two collections: ``NAME`` holds chunks embedded with Token Prepending
on, ``NAME-tp-off`` the same chunks embedded with it off. Each carries a ``TPEmbeddingFunction``,
so Chroma users can query it by text, and the function's stored configuration is the
collection's one record of its encoder (``tp_rag.record``). ``TPStore.open`` rebuilds the encoder
from that record; opening a store with an encoder whose embedding space differs from the
recorded one raises ``ConfigMismatchError``: vectors from different spaces never mix.

>>> store = TPStore.open("chroma_db", "docs")  # the recorded model and settings  # doctest: +SKIP
>>> on, off = store.search("Who plays music?", k=3)  # doctest: +SKIP
>>> [hit.source for hit in on]  # doctest: +SKIP
['/data/music.md', '/data/guitar.txt', '/data/band.md']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tp_rag.errors import ConfigMismatchError as ConfigMismatchError  # raised by TPStore
from tp_rag.errors import StoreBusyError, StoreUnavailableError

if TYPE_CHECKING:
    import numpy as np

    from tp_rag.documents import Chunk
    from tp_rag.encoder import TPEncoder

DEFAULT_DB = "chroma_db"
"""Where ``connect`` keeps an embedded Chroma database when no folder is given."""
TWIN_SUFFIX = "-tp-off"
"""``NAME + TWIN_SUFFIX`` is the collection of the same chunks embedded with TP off."""

WRITE_LOCK = "tp-rag-write.lock"
"""The lock file in an embedded database's folder that one writer at a time holds."""
_WRITER_PID = "tp-rag-write.pid"  # beside the lock: who holds it, for the error message
_OPEN_LOCK = "tp-rag-open.lock"  # held while Chroma creates or migrates a folder's tables
_OPEN_TIMEOUT = 120.0

_STORE = "tp_rag_store"
_CHUNK_SIZE = "tp_rag_chunk_size"
_CHUNK_OVERLAP = "tp_rag_chunk_overlap"
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
_NAME_MAX = 512 - len(TWIN_SUFFIX)  # Chroma's limit, minus room for the twin's suffix


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk."""

    id: str
    text: str
    source: str
    chunk_index: int
    start: int
    end: int
    similarity: float
    """Cosine similarity between the query and the chunk."""
    rank: int
    """1 for the best hit."""

    def snippet(self, width: int = 200) -> str:
        """The text on one line, cut to ``width`` characters with an ellipsis.

        >>> Hit("i", "a  long\ntext", "s", 0, 0, 13, 0.5, 1).snippet(8)
        'a long…'
        """
        flat = " ".join(self.text.split())
        return flat if len(flat) <= width else flat[: width - 1] + "…"


def connect(
    db: str | Path | None = None, *, host: str | None = None, port: int | None = None
) -> Any:
    """A Chroma client: ``HttpClient`` when ``host`` is given, else a ``PersistentClient``.

    Telemetry is off. ``db`` defaults to ``DEFAULT_DB`` in the working directory.

    >>> client = connect("chroma_db")  # doctest: +SKIP
    >>> client = connect(host="localhost", port=8000)  # doctest: +SKIP
    """
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if host:
        if db is not None:
            raise ValueError("give either a database folder (db) or a server (host), not both")
        return chromadb.HttpClient(host=host, port=port or 8000, settings=settings)
    if port is not None:
        raise ValueError(f"port={port} needs a host (the Chroma server's address)")
    from filelock import FileLock, Timeout

    folder = Path(db or DEFAULT_DB)
    folder.mkdir(parents=True, exist_ok=True)
    # Two processes opening a fresh folder at once both create Chroma's tables, and one fails.
    try:
        with FileLock(folder / _OPEN_LOCK, timeout=_OPEN_TIMEOUT):
            return chromadb.PersistentClient(path=str(folder), settings=settings)
    except Timeout:
        raise StoreBusyError(
            f"another process has been opening the Chroma database {folder} for "
            f"{_OPEN_TIMEOUT:.0f} s; try again when it is done"
        ) from None


@contextlib.contextmanager
def write_lock(client: Any) -> Iterator[None]:
    """Hold the writer lock of ``client``'s embedded database folder (a no-op for a server).

    One process at a time may write to an embedded Chroma folder; a second one is refused at
    once with ``StoreBusyError`` naming the folder and the writer's pid. The operating system
    releases the lock when its process ends, even by ``kill -9``, so it never goes stale. For
    concurrent writers, use a Chroma server (``chroma run``) instead of a folder.

    >>> with write_lock(connect("chroma_db")):  # doctest: +SKIP
    ...     store.upsert(entries, on_vectors, off_vectors)
    """
    settings = client.get_settings()
    if not settings.is_persistent:
        yield
        return
    from filelock import FileLock, Timeout

    folder = Path(settings.persist_directory)
    # One lock object per folder, shared by the threads of this process: the demo holds it
    # while it runs, and its own ingests (in Gradio's worker threads) take it again.
    lock = FileLock(folder / WRITE_LOCK, timeout=0, is_singleton=True, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        try:
            holder = f" (pid {(folder / _WRITER_PID).read_text().strip()})"
        except OSError:
            holder = ""
        raise StoreBusyError(
            f"another ingest is writing to {folder}{holder}; wait for it to finish and run "
            "again, or use a Chroma server (`chroma run --path DIR`, then --chroma-host) for "
            "writers that run at the same time"
        ) from None
    try:
        (folder / _WRITER_PID).write_text(str(os.getpid()))
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def server_errors(client: Any) -> Iterator[None]:
    """Turn a lost connection to a Chroma server into ``StoreUnavailableError``, with the
    message of a server that is down at the start and the advice to run again."""
    import httpx

    try:
        yield
    except httpx.TransportError as error:
        settings = client.get_settings()
        where = f"{settings.chroma_server_host}:{settings.chroma_server_http_port}"
        raise StoreUnavailableError(
            f"Could not connect to a Chroma server. Are you sure it is running? The server at "
            f"{where} stopped answering ({type(error).__name__}: {error}). Start it again and "
            "re-run the same command: it resumes where it stopped (what was written is kept)."
        ) from error


def check_name(name: str) -> str:
    """Raise ``ValueError`` unless ``name`` can name a store (and its TP-off twin) in Chroma."""
    if not isinstance(name, str) or not (3 <= len(name) <= _NAME_MAX and _NAME.match(name)):
        raise ValueError(
            f"collection name {name!r} is not valid: use 3 to {_NAME_MAX} characters from "
            "a-z, A-Z, 0-9, '.', '_' and '-', starting and ending with a letter or digit"
        )
    if ".." in name:
        raise ValueError(f"collection name {name!r} is not valid: it contains '..'")
    if name.endswith(TWIN_SUFFIX):
        raise ValueError(
            f"collection name {name!r} ends in {TWIN_SUFFIX!r}, which names the TP-off twin of "
            f"{name[: -len(TWIN_SUFFIX)]!r}; use that name instead"
        )
    return name


def twin_name(name: str) -> str:
    """The name of the TP-off collection of store ``name``."""
    return name + TWIN_SUFFIX


def chunk_id(source: str, chunk: Chunk) -> str:
    """A chunk's id: a digest of its source, position and text.

    Re-reading an unchanged file gives the same ids (so nothing is added twice); an edited
    file gives new ids where its chunks changed (so the old ones can be found and removed).
    """
    key = json.dumps([source, chunk.index, chunk.start, chunk.text], ensure_ascii=False)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


class TPStore:
    """Store ``name``: the collections ``name`` (TP on) and ``name-tp-off`` (TP off), embedded
    by ``encoder``; ``TPStore.open`` finds the encoder from the store's record instead.

    ``create=False`` refuses to make collections that do not exist yet (for querying).
    """

    def __init__(self, client: Any, name: str, encoder: TPEncoder, *, create: bool = True) -> None:
        from tp_rag.chroma import TPEmbeddingFunction

        self.name = check_name(name)
        self.client = client
        self.encoder = encoder
        self.functions = {
            tp: TPEmbeddingFunction.from_encoder(encoder, tp=tp) for tp in (True, False)
        }
        self.on = self._open(name, tp=True, create=create)
        self.off = self._open(twin_name(name), tp=False, create=create)

    @classmethod
    def open(
        cls,
        client_or_path: Any,
        name: str,
        model: str | Path | None = None,
        *,
        create: bool = True,
        **overrides: Any,
    ) -> TPStore:
        """Open store ``name`` with the encoder its record names, or with ``model``.

        ``client_or_path`` is a Chroma client or the folder of an embedded database. Without
        ``model`` and ``preset``, an existing store brings its own encoder: the recorded model,
        loaded as it was, with the recorded settings (``tp_rag.record.open_encoder``);
        ``overrides`` (``TPEncoder.from_pretrained`` keywords, ``None`` meaning not given)
        replace them: runtime settings such as ``device`` freely, others only where the
        embedding space stays the same, and ``trust_remote_code=True`` opts in to recorded
        loading options beyond the safe ones. With ``model`` or ``preset``, or for a new store,
        the encoder is ``TPEncoder.from_pretrained(model, **overrides)``. Either way, an encoder
        of another embedding space than the store's raises ``ConfigMismatchError``.
        ``create=False`` refuses a store that does not exist, before loading anything.

        >>> store = TPStore.open("chroma_db", "docs")  # doctest: +SKIP
        >>> client = connect(host="localhost")  # doctest: +SKIP
        >>> store = TPStore.open(client, "new", "/models/qwen", tp_stop=5)  # doctest: +SKIP
        """
        from tp_rag.record import open_encoder

        check_name(name)
        client = (
            connect(client_or_path) if isinstance(client_or_path, (str, Path)) else client_or_path
        )
        overrides = {key: value for key, value in overrides.items() if value is not None}
        record = _record(client, name)
        if record is None and not create:  # fail before loading a model
            settings = client.get_settings()
            where = (
                settings.persist_directory
                if settings.is_persistent
                else f"the Chroma server {settings.chroma_server_host}:"
                f"{settings.chroma_server_http_port}"
            )
            raise ValueError(
                f"there is no tp-rag collection {name!r} in {where}; make it with "
                f"`tp-rag ingest PATH... --collection {name}`"
            )
        if record is not None and model is None and "preset" not in overrides:
            encoder = open_encoder(record, collection=name, **overrides)
        else:
            from tp_rag.encoder import TPEncoder

            encoder = TPEncoder.from_pretrained(model, **overrides)
        return cls(client, name, encoder, create=create)

    def _open(self, name: str, *, tp: bool, create: bool) -> Any:
        from chromadb.errors import NotFoundError

        from tp_rag.record import check_space, collection_record

        function = self.functions[tp]
        if create:
            # An existing collection keeps its own record; it is checked below.
            collection = self.client.get_or_create_collection(
                name,
                metadata={_STORE: self.name},
                configuration={"hnsw": {"space": "cosine"}},
                embedding_function=function,
            )
        else:
            try:
                collection = self.client.get_collection(name, embedding_function=function)
            except NotFoundError:
                raise ValueError(
                    f"there is no collection {name!r} here; make it with "
                    f"`tp-rag ingest PATH... --collection {self.name}`"
                ) from None
        check_space(collection_record(collection), self.encoder.config.replace(tp=tp), name)
        return collection

    def __repr__(self) -> str:
        on, off = self.count()
        return f"TPStore(name={self.name!r}, chunks_tp_on={on}, chunks_tp_off={off})"

    def chunking(self) -> tuple[int, int] | None:
        """The ``(chunk_size, chunk_overlap)`` recorded by the last ingestion, if any."""
        metadata = self.on.metadata or {}
        if _CHUNK_SIZE in metadata and _CHUNK_OVERLAP in metadata:
            return int(metadata[_CHUNK_SIZE]), int(metadata[_CHUNK_OVERLAP])
        return None

    def record_chunking(self, chunk_size: int, chunk_overlap: int) -> None:
        """Remember how chunks are cut, so a later ingestion cuts the same files the same way."""
        for collection in (self.on, self.off):
            metadata = dict(collection.metadata or {})
            metadata.update({_CHUNK_SIZE: chunk_size, _CHUNK_OVERLAP: chunk_overlap})
            collection.modify(metadata=metadata)

    def count(self) -> tuple[int, int]:
        """Number of chunks in the TP-on and the TP-off collection."""
        return self.on.count(), self.off.count()

    def source_ids(self, source: str) -> tuple[set[str], set[str]]:
        """Ids of the chunks of ``source`` in the TP-on and the TP-off collection."""
        return source_ids(self.on, self.off, source)

    def chunks_by_source(self) -> dict[str, set[str]]:
        """Every source in the store and the ids of its chunks (both collections together)."""
        found: dict[str, set[str]] = {}
        page = 10_000
        for collection in (self.on, self.off):
            for offset in range(0, collection.count(), page):
                rows = collection.get(include=["metadatas"], limit=page, offset=offset)
                for id_, meta in zip(rows["ids"], rows["metadatas"], strict=True):
                    found.setdefault(str((meta or {}).get("source")), set()).add(id_)
        return found

    def upsert(
        self,
        entries: Sequence[tuple[str, Chunk]],
        on_vectors: np.ndarray,
        off_vectors: np.ndarray,
    ) -> None:
        """Write ``(source, chunk)`` entries with their TP-on and TP-off vectors (same order)."""
        upsert_chunks(
            self.on,
            self.off,
            entries,
            on_vectors,
            off_vectors,
            max_batch=self.client.get_max_batch_size(),
        )

    def delete(self, ids: Sequence[str]) -> None:
        """Remove chunks from both collections (ids absent from one are ignored there)."""
        if ids:
            for collection in (self.on, self.off):
                collection.delete(ids=list(ids))

    def search(self, query: str, k: int = 5) -> tuple[list[Hit], list[Hit]]:
        """The ``k`` chunks most similar to ``query`` with TP on, and with TP off."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("the query is empty; type what you are looking for")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r} must be a positive integer")
        return self._search(self.on, query, k), self._search(self.off, query, k)

    @staticmethod
    def _search(collection: Any, query: str, k: int) -> list[Hit]:
        size = collection.count()
        if size == 0:
            return []
        # query_texts: Chroma embeds the query with the collection's TPEmbeddingFunction.
        result = collection.query(
            query_texts=[query],
            n_results=min(k, size),
            include=["documents", "metadatas", "distances"],
        )
        rows = zip(
            result["ids"][0],
            result["documents"][0],
            result["metadatas"][0],
            result["distances"][0],
            strict=True,
        )
        return [
            Hit(
                id=id_,
                text=text or "",
                # Chunks added by other tools may lack tp-rag's metadata: shown by id and text.
                source=str((meta or {}).get("source", id_)),
                chunk_index=int((meta or {}).get("chunk_index", 0)),
                start=int((meta or {}).get("start", 0)),
                end=int((meta or {}).get("end", len(text or ""))),
                similarity=1.0 - float(distance),  # Chroma's cosine distance is 1 - cosine
                rank=rank,
            )
            for rank, (id_, text, meta, distance) in enumerate(rows, start=1)
        ]


def _record(client: Any, name: str) -> dict[str, Any] | None:
    """The record of store ``name``'s TP-on collection; ``None`` when there is no such collection.

    Raises as ``tp_rag.record.collection_record`` does for a collection tp-rag did not make or
    cannot read.
    """
    import warnings

    from chromadb.errors import NotFoundError

    from tp_rag.record import collection_record

    with warnings.catch_warnings():
        # Chroma rebuilds the collection's function while reading it and only warns when that
        # fails; collection_record and open_encoder raise the same problem as an error.
        warnings.filterwarnings("ignore", "Could not reconstruct embedding function tp_rag")
        try:
            collection = client.get_collection(name, embedding_function=None)
        except NotFoundError:
            return None
    return collection_record(collection)


def source_ids(on: Any, off: Any, source: str) -> tuple[set[str], set[str]]:
    """Ids of the chunks of ``source`` in a store's TP-on and TP-off collections.

    ``TPStore.source_ids`` for code that holds the two Chroma collections but no encoder (the
    workers of ``tp_rag.distributed``).
    """
    return tuple(  # type: ignore[return-value]
        set(collection.get(where={"source": source}, include=[])["ids"]) for collection in (on, off)
    )


def upsert_chunks(
    on: Any,
    off: Any,
    entries: Sequence[tuple[str, Chunk]],
    on_vectors: np.ndarray,
    off_vectors: np.ndarray,
    *,
    max_batch: int,
) -> None:
    """Write ``(source, chunk)`` entries with their TP-on and TP-off vectors (same order) to a
    store's two collections, under ``chunk_id`` ids, ``max_batch`` (the client's
    ``get_max_batch_size()``) at a time.

    ``TPStore.upsert`` for code that holds the two collections but no encoder. Writing the
    same entries again changes nothing (upserts under deterministic ids).
    """
    if not len(entries) == len(on_vectors) == len(off_vectors):
        raise ValueError(
            f"{len(entries)} chunks but {len(on_vectors)} TP-on and {len(off_vectors)} "
            "TP-off vectors"
        )
    for begin in range(0, len(entries), max_batch):
        part = entries[begin : begin + max_batch]
        ids = [chunk_id(source, chunk) for source, chunk in part]
        documents = [chunk.text for _, chunk in part]
        metadatas = [
            {"source": source, "chunk_index": c.index, "start": c.start, "end": c.end}
            for source, c in part
        ]
        for collection, vectors in ((on, on_vectors), (off, off_vectors)):
            collection.upsert(
                ids=ids,
                embeddings=vectors[begin : begin + max_batch],
                documents=documents,
                metadatas=metadatas,
            )
