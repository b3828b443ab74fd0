"""Do not embed the same text twice: an on-disk vector cache and a cache-backed embed function.

Vectors are keyed by the embedding space (``TPConfig.fingerprint()``, which covers the weights,
prompt, TP layers, readout layer, pooling, normalisation and ``max_length``) and the SHA-256 of
the text, in the spirit of LangChain's ``CacheBackedEmbeddings``. ``cached_embed`` wraps any
``texts -> vectors`` function: it looks each text up in its sources (an ``EmbeddingCache``, a
``TPStore``'s collections through ``StoreVectors``), embeds only the rest, and writes what it
embedded to the cache slice by slice, so an interrupted evaluation keeps what it finished.

Layout: ``<directory>/<fingerprint>/<shard>.npz``, each shard holding ``keys`` (SHA-256 hex digests)
and ``vectors`` (float32) of one written slice. A shard is written to a temporary name, flushed
to disk and renamed into place, so a crash never leaves a half-written shard under a name that
is read back; a shard that cannot be read, or whose vectors are not a finite float32 matrix of
the requested width, is skipped with a warning (its texts are embedded again). A cache that
cannot be written (a read-only folder, a full disk, a file in the way) is warned about once and
then only read. Several processes may share a directory: each writes its own shards.

>>> cache = EmbeddingCache(default_cache_dir())  # doctest: +SKIP
>>> embed = cached_embed(enc.encode, enc.config.fingerprint(), cache=cache)  # doctest: +SKIP
>>> embed(["a text", "another"]).shape  # doctest: +SKIP
(2, 896)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from tp_rag.store import TPStore

logger = logging.getLogger(__name__)

WRITE_STEP = 256
"""Texts embedded between two cache writes: what an interrupted run loses at most."""

_FINGERPRINT = re.compile(r"^[0-9a-f]{8,64}$")


def default_cache_dir() -> Path:
    """``$TP_RAG_CACHE_DIR``, else ``$XDG_CACHE_HOME/tp-rag/embeddings``, else
    ``~/.cache/tp-rag/embeddings``."""
    if os.environ.get("TP_RAG_CACHE_DIR"):
        return Path(os.environ["TP_RAG_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "tp-rag" / "embeddings"


def text_key(text: str) -> bytes:
    """The cache key of a text: the SHA-256 of its UTF-8 bytes, as 64 ASCII hex digits (numpy's
    fixed-width bytes drop trailing NULs, so raw digests would not round-trip)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest().encode("ascii")


class VectorSource(Protocol):
    """Somewhere vectors of an embedding space may already be: ``get`` gives a found mask and
    the vectors (rows of ``found`` only are meaningful), or ``None`` when it has nothing (or
    nothing of ``width``, when given)."""

    def get(
        self, fingerprint: str, texts: Sequence[str], width: int | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None: ...


class EmbeddingCache:
    """Vectors on disk, keyed by ``(fingerprint, sha256(text))``; written incrementally.

    >>> cache = EmbeddingCache("/tmp/tp-rag-cache")  # doctest: +SKIP
    >>> cache.put(fp, ["a"], vectors)  # doctest: +SKIP
    >>> found, vectors = cache.get(fp, ["a", "b"])  # found = [True, False]  # doctest: +SKIP
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        # fingerprint -> (shards already read, key -> (shard path, row))
        self._index: dict[str, tuple[set[str], dict[bytes, tuple[Path, int]]]] = {}
        self._widths: dict[Path, int] = {}  # the vector width of each shard read
        self._rejected: set[Path] = set()  # shards found wrong once (warned about once)
        self.write_error: str | None = None
        """Why the cache could not be written, after the first failure (later writes are
        skipped); ``None`` while writing works."""

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.directory)!r})"

    def _folder(self, fingerprint: str) -> Path:
        if not _FINGERPRINT.match(fingerprint):
            raise ValueError(f"fingerprint {fingerprint!r} is not a hex digest")
        return self.directory / fingerprint

    def _refresh(self, fingerprint: str) -> dict[bytes, tuple[Path, int]]:
        """Read the keys of shards written since the last look (by us or another process)."""
        seen, keys = self._index.setdefault(fingerprint, (set(), {}))
        folder = self._folder(fingerprint)
        if not folder.is_dir():
            return keys
        for path in sorted(folder.glob("*.npz")):
            if path.name in seen:
                continue
            seen.add(path.name)
            try:
                with np.load(path, allow_pickle=False) as shard:
                    shard_keys = shard["keys"]
                    vectors = _checked(shard["vectors"])
                if shard_keys.shape != (len(vectors),):
                    raise ValueError(f"{shard_keys.size} keys for {len(vectors)} vectors")
            except Exception as error:  # a damaged shard costs a re-embedding, not the run
                self._reject(path, error)
                continue
            self._widths[path] = vectors.shape[1]
            for row, key in enumerate(shard_keys.tolist()):
                keys.setdefault(key, (path, row))
        return keys

    def _reject(self, path: Path, error: Exception | str) -> None:
        if path not in self._rejected:
            self._rejected.add(path)
            logger.warning(
                "skipping cache shard %s (its texts are embedded again): %s", path, error
            )

    def __len__(self) -> int:
        """Number of cached vectors over all fingerprints."""
        if not self.directory.is_dir():
            return 0
        return sum(
            len(self._refresh(folder.name))
            for folder in self.directory.iterdir()
            if folder.is_dir() and _FINGERPRINT.match(folder.name)
        )

    def get(
        self, fingerprint: str, texts: Sequence[str], width: int | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """``(found, vectors)`` for ``texts``: ``found[i]`` says whether ``vectors[i]`` is
        cached (other rows are zero); ``None`` when none of them is.

        Only finite float32 vectors of ``width`` (when given; else of the first shard's width)
        are used; a shard that differs is skipped with a warning."""
        keys = self._refresh(fingerprint)
        where = [keys.get(text_key(text)) for text in texts]
        by_shard: dict[Path, list[tuple[int, int]]] = {}
        for i, place in enumerate(where):
            if place is not None and place[0] not in self._rejected:
                by_shard.setdefault(place[0], []).append((i, place[1]))
        found = np.zeros(len(texts), dtype=bool)
        vectors: np.ndarray | None = None
        for path, pairs in by_shard.items():
            if width is None:
                width = self._widths[path]
            try:
                if self._widths[path] != width:
                    raise ValueError(f"vectors {self._widths[path]} wide, requested {width}")
                with np.load(path, allow_pickle=False) as shard:
                    stored = _checked(shard["vectors"], width)
                rows, shard_rows = zip(*pairs, strict=True)
                picked = stored[list(shard_rows)]
            except Exception as error:  # of another width, or changed since it was indexed
                self._reject(path, error)
                for key in [key for key, place in keys.items() if place[0] == path]:
                    del keys[key]  # a later shard may hold these texts right
                continue
            if vectors is None:
                vectors = np.zeros((len(texts), width), dtype=np.float32)
            vectors[list(rows)] = picked
            found[list(rows)] = True
        return None if vectors is None else (found, vectors)

    def put(self, fingerprint: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store one slice of vectors as a new shard (atomically: all of it or nothing).

        When the cache cannot be written (read-only, disk full, a file where a folder should
        be), a warning says so once, ``write_error`` records why, and this and later writes
        store nothing: a cache saves work, it never stops it."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise ValueError(f"{len(texts)} texts but vectors of shape {vectors.shape}")
        folder = self._folder(fingerprint)
        if not len(texts) or self.write_error is not None:
            return
        name = f"{uuid.uuid4().hex}.npz"
        temporary = folder / f".{name}.tmp"
        keys = np.array([text_key(text) for text in texts], dtype="S64")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with temporary.open("wb") as handle:
                np.savez(handle, keys=keys, vectors=vectors)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, folder / name)
        except OSError as error:
            self.write_error = f"{type(error).__name__}: {error}"
            logger.warning(
                "the vector cache %s cannot be written (%s); continuing without caching",
                self.directory,
                self.write_error,
            )
        finally:
            with contextlib.suppress(OSError):  # no folder to write in: nothing was left
                temporary.unlink(missing_ok=True)


def _checked(vectors: np.ndarray, width: int | None = None) -> np.ndarray:
    """``vectors`` if they are a finite float32 matrix (of ``width`` columns, when given);
    else ``ValueError`` saying what is wrong."""
    if vectors.ndim != 2:
        raise ValueError(f"vectors of rank {vectors.ndim}, not a matrix")
    if vectors.dtype != np.float32:
        raise ValueError(f"vectors of dtype {vectors.dtype}, not float32")
    if width is not None and vectors.shape[1] != width:
        raise ValueError(f"vectors {vectors.shape[1]} wide, requested {width}")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors with NaN or infinite values")
    return vectors


class StoreVectors:
    """A ``TPStore``'s vectors as a ``VectorSource``: chunks whose text equals a wanted text, in
    the collection (TP on or TP off) of the asked fingerprint.

    Each collection's texts are read once, on first use, into an index from text to chunk id:
    make a new ``StoreVectors`` (as ``tp_systems`` does per evaluation) to see later writes.

    >>> embed = cached_embed(f, fp, sources=[StoreVectors(store)])  # doctest: +SKIP
    """

    PAGE = 1000

    def __init__(self, store: TPStore) -> None:
        self.store = store
        self._indexes: dict[bool, dict[str, str]] = {}  # tp -> {text_key: chunk id}

    def _index(self, tp: bool, collection: Any) -> dict[str, str]:
        """``{text_key(chunk text): chunk id}`` of a collection (the first chunk of a text)."""
        if tp not in self._indexes:
            index: dict[str, str] = {}
            for offset in range(0, collection.count(), self.PAGE):
                page = collection.get(include=["documents"], limit=self.PAGE, offset=offset)
                for chunk_id, document in zip(page["ids"], page["documents"], strict=True):
                    index.setdefault(text_key(document or ""), chunk_id)
            self._indexes[tp] = index
        return self._indexes[tp]

    def get(
        self, fingerprint: str, texts: Sequence[str], width: int | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        side = next(
            (
                (tp, collection)
                for tp, collection in ((True, self.store.on), (False, self.store.off))
                if self.store.functions[tp].fingerprint() == fingerprint
            ),
            None,
        )
        if side is None:
            return None
        collection = side[1]
        index = self._index(*side)
        wanted = {text_key(text): i for i, text in reversed(list(enumerate(texts)))}
        ids = {index[key]: key for key in wanted if key in index}  # one chunk per wanted text
        if not ids:
            return None
        got = collection.get(ids=list(ids), include=["embeddings"])
        if width is not None and len(got["embeddings"][0]) != width:
            return None
        found = np.zeros(len(texts), dtype=bool)
        vectors = np.zeros((len(texts), len(got["embeddings"][0])), dtype=np.float32)
        for chunk_id, vector in zip(got["ids"], got["embeddings"], strict=True):
            row = wanted[ids[chunk_id]]
            vectors[row], found[row] = vector, True
        # The same text twice among ``texts``: every copy gets the vector.
        for i, text in enumerate(texts):
            first = wanted[text_key(text)]
            if found[first] and not found[i]:
                vectors[i], found[i] = vectors[first], True
        return found, vectors


@dataclass
class EmbedCounts:
    """What a cache-backed embed function did so far: texts looked up, texts embedded."""

    requested: int = 0
    embedded: int = 0


def cached_embed(
    embed: Callable[[Sequence[str]], np.ndarray],
    fingerprint: str,
    *,
    cache: EmbeddingCache | None = None,
    sources: Sequence[VectorSource] = (),
    step: int = WRITE_STEP,
    counts: EmbedCounts | None = None,
    width: int | Callable[[], int] | None = None,
) -> Callable[[Sequence[str]], np.ndarray]:
    """``embed`` that first looks texts up in ``sources`` and ``cache`` (in that order), embeds
    only the missing ones (each distinct text once), ``step`` texts at a time, and writes each
    step to ``cache`` as soon as it is done.

    ``fingerprint`` must identify the space ``embed`` maps into (for a ``TPEncoder``,
    ``encoder.config.replace(tp=...).fingerprint()``); ``width`` is the width of ``embed``'s
    vectors, or a function giving it, called once vectors are found (``lambda:
    encoder.dimension``): found vectors of another width are not used (without it, the first
    vectors found set it). Found vectors that are not finite are embedded again.
    ``counts`` (optional) is updated.
    """
    lookups: list[VectorSource] = [*sources, *([cache] if cache is not None else [])]

    def embed_cached(texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        unique: dict[str, int] = {}
        for text in texts:
            unique.setdefault(text, len(unique))
        distinct = list(unique)
        found = np.zeros(len(distinct), dtype=bool)
        vectors: np.ndarray | None = None
        wide = width if isinstance(width, int) or width is None else None
        for source in lookups:
            if found.all():
                break
            missing = np.flatnonzero(~found)
            wanted = [distinct[i] for i in missing]
            result = source.get(fingerprint, wanted, wide)
            if result is not None and wide is None and callable(width):
                wide = width()  # only now: it may cost a forward pass
                if np.ndim(result[1]) != 2 or np.shape(result[1])[1] != wide:
                    result = source.get(fingerprint, wanted, wide)  # what it has of that width
            if result is None:
                continue
            hit, got = result
            got = np.asarray(got, dtype=np.float32)
            if got.ndim != 2 or (wide is not None and got.shape[1] != wide):
                logger.warning("ignoring vectors of shape %s from %r", got.shape, source)
                continue
            hit = hit & np.isfinite(got).all(axis=1)
            wide = got.shape[1]
            if vectors is None:
                vectors = np.zeros((len(distinct), wide), dtype=np.float32)
            vectors[missing[hit]] = got[hit]
            found[missing[hit]] = True
        missing = np.flatnonzero(~found)
        for begin in range(0, len(missing), step):
            rows = missing[begin : begin + step]
            part = [distinct[i] for i in rows]
            new = np.asarray(embed(part), dtype=np.float32)
            if vectors is None:
                vectors = np.zeros((len(distinct), new.shape[1]), dtype=np.float32)
            vectors[rows] = new
            if cache is not None:
                cache.put(fingerprint, part, new)
        if counts is not None:
            counts.requested += len(texts)
            counts.embedded += len(missing)
        if vectors is None:  # no texts at all: let ``embed`` give the right width
            return np.asarray(embed([]), dtype=np.float32)
        return vectors[[unique[text] for text in texts]]

    return embed_cached
