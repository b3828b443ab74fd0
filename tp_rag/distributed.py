"""Ingestion on a Ray cluster into a Chroma server (``tp-rag ingest --ray``).

``ingest_ray`` builds the same store as ``tp_rag.ingest.ingest``: the same chunk ids in the same
two collections (TP on, TP off), the same recorded chunking, the same refusal of another
encoder configuration, the same summary. The work runs as a Ray Data pipeline:

1. list files (the driver; it only holds paths),
2. read, split and compare with the store (CPU tasks, one row per file),
3. embed (an actor pool: one ``TPEncoder`` per actor, TP on and TP off over one loaded model,
   ``num_gpus`` per actor on GPU nodes, ``threads`` torch threads per actor otherwise),
4. write (writer actors that upsert both collections under deterministic ids, in pieces of
   the server's ``get_max_batch_size()``).

Vectors go from the actors to the writers through Ray's object store, never to the driver. Like
the single-machine path, outdated chunks of edited files are removed only after every new chunk
is written, and a chunk counts as written only once it is in both collections: a run stopped at
any point (a killed actor, whose batch Ray retries; a killed driver) loses nothing and
duplicates nothing, and the next run finishes the job.

The writers are several processes, so the store must be a Chroma server (``chroma run``,
``connect(host=...)``); an embedded ``PersistentClient`` folder is refused.

>>> from tp_rag.distributed import ingest_ray
>>> from tp_rag.store import TPStore, connect
>>> store = TPStore(connect(host="localhost"), "docs", encoder)  # doctest: +SKIP
>>> summary = ingest_ray(["/shared/corpus"], store, actors=4, gpus_per_actor=1)  # doctest: +SKIP
>>> print(summary)  # the line `ingest` prints  # doctest: +SKIP

This module stays cheap to import: ray is imported when ``ingest_ray`` runs.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tp_rag.ingest import (
    IngestProgress,
    IngestSummary,
    count_file,
    plan_source,
    read_chunks,
    settle_chunking,
)

if TYPE_CHECKING:
    from types import ModuleType

    import numpy as np

    from tp_rag.store import TPStore

DEFAULT_RAY_BATCH_SIZE = 64
"""Chunks per call into an embedding actor (it encodes them ``batch_size`` at a time). A batch
is also what Ray retries when an actor dies."""

PIP_HINT = 'pip install "tp-rag[ray]"'

LOOPBACK = "127.0.0.1"
"""The only address a Ray started by ``start_local_ray`` binds and advertises."""


def import_ray() -> ModuleType:
    """``ray`` with Ray Data, or an ``ImportError`` that says what to install."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ImportError(
            f"ingestion on Ray needs Ray Data, which is not installed: {PIP_HINT}"
        ) from None
    return ray


def start_local_ray(**options: Any) -> Any:
    """Start a Ray instance on this machine for this process, reachable on 127.0.0.1 only.

    On Linux, Ray's own default advertises the machine's external address and binds its servers
    (GCS, raylet, object manager, workers) to it or to every interface; here every one of them,
    and the dashboard if it runs, binds and advertises ``LOOPBACK``, so nothing on the network
    can submit work to it.
    ``options`` go to ``ray.init`` (e.g. ``num_cpus``). To use several machines, start a
    cluster yourself (``ray start``) and connect to it (``ingest_ray(address=...)``). Another
    process on this machine joins this Ray by its address with
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in its environment. Returns ``ray.init``'s context.

    >>> start_local_ray(num_cpus=2).address_info["node_ip_address"]  # doctest: +SKIP
    '127.0.0.1'
    """
    ray = import_ray()
    from ray._private import ray_constants

    # Ray's single-machine mode (its default on macOS and Windows, where its processes use the
    # loopback address; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 asks for it on Linux too). Ray reads
    # that variable once, when it is imported, hence the module attribute, for this start only.
    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        context = ray.init(address="local", **{"dashboard_host": LOOPBACK, **options})
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode
    exposed = sorted({node["NodeManagerAddress"] for node in ray.nodes()} - {LOOPBACK})
    if exposed:  # a Ray version that no longer honours the switch: stop rather than expose it
        ray.shutdown()
        raise RuntimeError(
            f"this Ray ({ray.__version__}) started on {', '.join(exposed)} instead of {LOOPBACK}; "
            "start Ray yourself (`ray start --head --node-ip-address ADDRESS`) and pass its "
            "address (--ray ADDRESS)"
        )
    return context


@contextmanager
def _ray_session(ray: ModuleType, address: str | None) -> Iterator[None]:
    """Ray for one run: the one this process is connected to, else a local Ray on 127.0.0.1
    (``address=None``) or the cluster at ``address``, disconnected from at the end."""
    if ray.is_initialized():
        yield
        return
    if address is None:
        start_local_ray()
    else:
        ray.init(address=address)
    try:
        yield
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class _Server:
    """Where the workers find the store: a Chroma server and the two collections' names."""

    host: str
    port: int
    ssl: bool
    headers: tuple[tuple[str, str], ...]
    tenant: str
    database: str
    on: str
    off: str

    @classmethod
    def of(cls, store: TPStore) -> _Server:
        settings = store.client.get_settings()
        if settings.chroma_api_impl != "chromadb.api.fastapi.FastAPI":
            raise ValueError(
                "ingestion on Ray writes from several processes, and an embedded Chroma "
                "database folder is safe for one process only; start a Chroma server "
                "(`chroma run --path DIR`) and connect to it (connect(host=...), or "
                "--chroma-host HOST --chroma-port PORT on the command line)"
            )
        return cls(
            host=str(settings.chroma_server_host),
            port=int(settings.chroma_server_http_port or 8000),
            ssl=bool(settings.chroma_server_ssl_enabled),
            headers=tuple(sorted((settings.chroma_server_headers or {}).items())),
            tenant=store.client.tenant,
            database=store.client.database,
            on=store.on.name,
            off=store.off.name,
        )

    def open(self) -> tuple[Any, Any, Any]:
        """``(client, TP-on collection, TP-off collection)``, one connection per process."""
        if self not in _OPEN:
            import chromadb
            from chromadb.config import Settings

            client = chromadb.HttpClient(
                host=self.host,
                port=self.port,
                ssl=self.ssl,
                headers=dict(self.headers) or None,
                settings=Settings(anonymized_telemetry=False),
                tenant=self.tenant,
                database=self.database,
            )
            names = (self.on, self.off)
            # Vectors come from the actors: the collections' own embedding function (which
            # would load the model) is not wanted in this worker process, and Chroma says at
            # every upsert that it cannot rebuild it.
            warnings.filterwarnings("ignore", "Could not reconstruct embedding function tp_rag")
            on, off = (client.get_collection(n, embedding_function=None) for n in names)
            _OPEN[self] = (client, on, off)
        return _OPEN[self]


_OPEN: dict[_Server, tuple[Any, Any, Any]] = {}
_TOKENIZERS: dict[str, Any] = {}  # object id -> the tokenizer, in each worker process


def _plan_file(
    row: dict[str, Any], *, tokenizer: Any, chunk_size: int, chunk_overlap: int, server: _Server
) -> dict[str, Any]:
    """Stage 2 (a CPU task): read and split one file, and compare its chunks with the store.

    ``tokenizer`` is the driver's, in Ray's object store (a ``[ref]``): each worker process
    loads it once, not once per task.
    """
    _, on, off = server.open()
    (ref,) = tokenizer
    if ref.hex() not in _TOKENIZERS:
        import ray

        _TOKENIZERS.clear()
        _TOKENIZERS[ref.hex()] = ray.get(ref)
    path, source = Path(row["path"]), row["source"]
    chunks, reason = read_chunks(path, _TOKENIZERS[ref.hex()], chunk_size, chunk_overlap)
    missing, stale = [], set()
    if reason is None:
        from tp_rag.store import source_ids

        missing, stale = plan_source(source, chunks, *source_ids(on, off, source))
    return {
        **row,
        "reason": reason or "",
        "missing": len(missing),
        "stale": json.dumps(sorted(stale)),
        "chunks": json.dumps([[c.text, c.index, c.start, c.end] for c in missing]),
    }


def _chunk_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per chunk still to write."""
    return [
        {"source": row["source"], "text": text, "index": index, "start": start, "end": end}
        for text, index, start, end in json.loads(row["chunks"])
    ]


class _Embedder:
    """Stage 3 (an actor): one encoder, TP on and TP off over one loaded model."""

    def __init__(self, record: dict[str, Any], threads: int) -> None:
        import torch
        from transformers.utils import logging as hf_logging

        from tp_rag.errors import ConfigMismatchError
        from tp_rag.record import LOADING_KEYS, open_encoder, recorded_runtime

        torch.set_num_threads(threads)
        hf_logging.disable_progress_bar()  # a loading bar per actor would flood the driver's log
        # The driver's record of its own encoder: its loading options are the driver's choice.
        loading = {key: record[key] for key in LOADING_KEYS if key in record}
        try:
            self.encoder = open_encoder(record, **loading, **recorded_runtime(record))
        except ConfigMismatchError as error:
            raise ConfigMismatchError(
                f"the model {record['model']!r} loaded on this Ray node does not give the "
                "driver's encoder configuration: every node must see the same weights (the same "
                f"files, or the same hub revision). {error}"
            ) from None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(text) for text in batch["text"]]
        on = self.encoder.encode(texts, tp=True, show_progress=False)
        off = self.encoder.encode(texts, tp=False, show_progress=False)
        return {**batch, "on": on, "off": off}


class _Writer:
    """Stage 4 (an actor, no CPU reserved: it waits on the server): upsert into both
    collections; returns how many chunks it wrote."""

    def __init__(self, server: _Server) -> None:
        self.client, self.on, self.off = server.open()
        self.max_batch = self.client.get_max_batch_size()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        from tp_rag.documents import Chunk
        from tp_rag.store import upsert_chunks

        entries = [
            (str(source), Chunk(str(text), int(index), int(start), int(end)))
            for source, text, index, start, end in zip(
                batch["source"],
                batch["text"],
                batch["index"],
                batch["start"],
                batch["end"],
                strict=True,
            )
        ]
        upsert_chunks(
            self.on, self.off, entries, batch["on"], batch["off"], max_batch=self.max_batch
        )
        return {"chunks": np.array([len(entries)])}


def ingest_ray(
    paths: Iterable[str | Path],
    store: TPStore,
    *,
    chunk_size: int | None = None,
    chunk_overlap: int | None = None,
    source_name: Callable[[Path], str] = str,
    address: str | None = None,
    actors: int = 1,
    batch_size: int = DEFAULT_RAY_BATCH_SIZE,
    gpus_per_actor: float = 0.0,
    threads: int | None = None,
    writers: int = 1,
    progress: IngestProgress | None = None,
) -> IngestSummary:
    """``tp_rag.ingest.ingest`` on a Ray cluster: the same store, the same summary.

    ``store`` must be on a Chroma server (``connect(host=...)``). Ray is the one this process
    is connected to, else ``address``: ``None`` starts a Ray on this machine bound to
    127.0.0.1 only (``start_local_ray``), ``"auto"`` or ``"ray://HOST:PORT"`` reaches an
    existing cluster; a Ray connected to here is disconnected from at the end. Every node must
    be able to read the files at their paths, load the encoder's model by its name, and reach
    the Chroma server.

    ``actors`` embedding actors each take ``batch_size`` chunks at a time. With
    ``gpus_per_actor`` > 0 each actor gets that share of a GPU; otherwise each runs ``threads``
    torch threads (default: the cluster's CPUs shared among the actors) on as many reserved
    CPUs, so that actors do not oversubscribe cores. Ray shows its own progress bars;
    ``progress`` receives the same calls as in ``ingest``.

    Two files that map to one ``source_name`` cannot both be kept: only the later one is
    ingested (``ingest`` writes both, the later replacing the earlier).

    >>> ingest_ray(["corpus/"], store, address="auto", actors=8, gpus_per_actor=1)  # doctest: +SKIP
    """
    from tp_rag.documents import find_files

    started = time.perf_counter()
    _check_options(actors, batch_size, writers, gpus_per_actor, threads)
    server = _Server.of(store)
    ray = import_ray()
    chunk_size, chunk_overlap = settle_chunking(store, chunk_size, chunk_overlap)
    files, skipped = find_files(paths)
    summary = IngestSummary(skipped=list(skipped))
    if progress is not None:
        progress.files_found(len(files))
    last = {source_name(path): order for order, path in enumerate(files)}
    items = [{"order": order, "path": str(files[order]), "source": s} for s, order in last.items()]
    if items:
        with _ray_session(ray, address):
            threads = _threads_per_actor(ray, actors, gpus_per_actor, threads)
            planned = _plan(ray, items, store, server, chunk_size, chunk_overlap)
            records = sorted(planned.drop_columns(["chunks"]).take_all(), key=lambda r: r["order"])
            _tally(records, summary, progress)
            if any(record["missing"] for record in records):
                embedder = _embedder_kwargs(store, threads)
                for count in _embed_and_write(
                    ray, planned, server, embedder, gpus_per_actor, batch_size, actors, writers
                ):
                    summary.chunks += count
                    if progress is not None:
                        progress.chunks_written(count)
        # Every new chunk is in both collections now: only then go the outdated ones.
        for record in records:
            stale = json.loads(record["stale"])
            store.delete(stale)
            summary.removed += len(stale)
    summary.seconds = time.perf_counter() - started
    return summary


def _check_options(
    actors: int, batch_size: int, writers: int, gpus_per_actor: float, threads: int | None
) -> None:
    """Raise ``ValueError`` for counts that cannot work, before anything starts."""
    for name, value in (("actors", actors), ("batch_size", batch_size), ("writers", writers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if not isinstance(gpus_per_actor, (int, float)) or gpus_per_actor < 0:
        raise ValueError(f"gpus_per_actor={gpus_per_actor!r} must be >= 0")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads={threads!r} must be a positive integer")


def _plan(
    ray: ModuleType,
    items: list[dict[str, Any]],
    store: TPStore,
    server: _Server,
    chunk_size: int,
    chunk_overlap: int,
) -> Any:
    """Stages 1-2: one row per file (its chunks still to write, its outdated ids), kept in
    Ray's object store; the driver later takes only the per-file counts."""
    options = {
        "tokenizer": [ray.put(store.encoder.tokenizer)],
        "chunk_size": chunk_size,
        "chunk_overlap": chunk_overlap,
        "server": server,
    }
    return ray.data.from_items(items).map(_plan_file, fn_kwargs=options).materialize()


def _embedder_kwargs(store: TPStore, threads: int) -> dict[str, Any]:
    """What each embedding actor needs to load the store's encoder and check it is the same."""
    from tp_rag.record import encoder_record

    return {"record": encoder_record(store.encoder), "threads": threads}


def _embed_and_write(
    ray: ModuleType,
    planned: Any,
    server: _Server,
    embedder: dict[str, Any],
    gpus_per_actor: float,
    batch_size: int,
    actors: int,
    writers: int,
) -> Iterator[int]:
    """Stages 3-4: embed the chunks still to write and upsert them; yields the chunks written
    as each piece lands (counts only: the vectors never reach the driver)."""
    written = (
        # Light work: no CPU reserved (the actors may hold every core), few at once.
        planned.flat_map(_chunk_rows, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=2))
        .map_batches(
            _Embedder,
            fn_constructor_kwargs=embedder,
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=embedder["threads"] if gpus_per_actor == 0 else 1,
            num_gpus=gpus_per_actor or None,
        )
        .map_batches(
            _Writer,
            fn_constructor_kwargs={"server": server},
            batch_size=None,
            compute=ray.data.ActorPoolStrategy(size=writers),
            num_cpus=0,
        )
    )
    for batch in written.iter_batches(batch_size=None):
        yield int(batch["chunks"].sum())


def _threads_per_actor(ray: ModuleType, actors: int, gpus: float, threads: int | None) -> int:
    """Torch threads per embedding actor; raises ``ValueError`` if the cluster lacks room."""
    resources = ray.cluster_resources()
    if gpus > 0:
        have = resources.get("GPU", 0)
        if actors * gpus > have:
            raise ValueError(
                f"{actors} embedding actor(s) with {gpus:g} GPU each need {actors * gpus:g} "
                f"GPUs, the Ray cluster has {have:g}; use fewer actors, a smaller GPU share, "
                "or no GPUs (CPU actors)"
            )
        return threads or 1
    cpus = int(resources.get("CPU", 0))
    node_cpus = max(
        (int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node["Alive"]),
        default=0,
    )
    threads = threads or max(1, min(cpus // actors, node_cpus))
    if actors * threads > cpus or threads > node_cpus:
        raise ValueError(
            f"{actors} embedding actor(s) with {threads} torch thread(s) each need "
            f"{actors * threads} CPUs, {threads} of them on one node; the Ray cluster has {cpus} "
            f"(at most {node_cpus} on a node); use fewer actors or threads"
        )
    return threads


def _tally(
    records: list[dict[str, Any]], summary: IngestSummary, progress: IngestProgress | None
) -> None:
    """Count the read files into ``summary`` as ``ingest`` does, in the order of the files."""
    for record in records:
        count_file(
            summary,
            progress,
            record["path"],
            record["source"],
            reason=record["reason"] or None,
            missing=record["missing"],
            changed=bool(record["missing"]) or record["stale"] != "[]",
        )
