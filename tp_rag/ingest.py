"""Ingesting documents into a ``TPStore``; the ``tp-rag ingest``, ``query`` and ``demo`` commands.

Every chunk is embedded with TP on and with TP off in the same pass, on one loaded model, and
written to both collections of the store. Chunk ids come from source, position and text, so
re-ingesting is idempotent, an edited file replaces its old chunks, and an interrupted run
finishes on the next one: each file's missing chunks are written, its outdated ones removed.

>>> from tp_rag.ingest import ingest
>>> from tp_rag.store import TPStore, connect
>>> store = TPStore(connect("chroma_db"), "docs", TPEncoder.from_pretrained())  # doctest: +SKIP
>>> print(ingest(["notes/"], store))  # doctest: +SKIP
12 files (12 new or changed, 0 unchanged), 85 chunks written, 0 removed, 0 skipped, 41.2 s

This module stays cheap to import (``tp-rag --help`` loads it): chromadb, gradio and rich are
imported inside the functions that use them.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from tp_rag.documents import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE, SUFFIXES

if TYPE_CHECKING:
    from tp_rag.documents import Chunk
    from tp_rag.encoder import TPEncoder
    from tp_rag.store import TPStore

DEMO_DB = ".tp-rag/demo"
"""Where ``tp-rag demo`` keeps its Chroma database unless ``--db`` is given."""


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

    def chunks_written(self, count: int) -> None:
        """``count`` more chunks were embedded and written."""


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
    from tp_rag.documents import find_files

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
            summary.skipped.append((str(path), reason))
            if progress is not None:
                progress.file_read(source, 0)
            continue
        if any(item.source == source for item in pending):
            flush()  # two files with one source name: the later one replaces the earlier
        missing, stale = plan_source(source, chunks, *store.source_ids(source))
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


def settle_chunking(
    store: TPStore, chunk_size: int | None, chunk_overlap: int | None
) -> tuple[int, int]:
    """The ``(chunk_size, chunk_overlap)`` an ingestion into ``store`` uses, checked, and
    recorded with the store when they differ from what it recorded before.

    Sizes not given come from the store's record, else from ``DEFAULT_CHUNK_SIZE`` and
    ``DEFAULT_CHUNK_OVERLAP`` (at most an eighth of the chunk size).
    """
    from tp_rag.documents import check_chunking

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
    from tp_rag.documents import DocumentError, read_document, split_text

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
    for begin in range(0, len(entries), step):
        part = entries[begin : begin + step]
        texts = [chunk.text for _, chunk in part]
        on = encoder.encode(texts, tp=True, show_progress=False)
        off = encoder.encode(texts, tp=False, show_progress=False)
        store.upsert(part, on, off)
        summary.chunks += len(part)
        if progress is not None:
            progress.chunks_written(len(part))
    for item in pending:
        store.delete(sorted(item.stale))
        summary.removed += len(item.stale)


# --- command line ----------------------------------------------------------------------------


class _BarProgress:
    """Two rich progress bars (files read, chunks written) on a terminal."""

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description:<7}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}", style="dim"),
            console=console,
        )
        self._files = self._progress.add_task("files", total=None, note="")
        self._chunks = self._progress.add_task("chunks", total=0, note="")

    def __enter__(self) -> _BarProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def files_found(self, total: int) -> None:
        self._progress.update(self._files, total=total)

    def file_read(self, name: str, chunks: int) -> None:
        self._progress.update(self._files, advance=1, note=Path(name).name)
        task = self._progress.tasks[self._chunks]
        self._progress.update(self._chunks, total=(task.total or 0) + chunks)

    def chunks_written(self, count: int) -> None:
        self._progress.update(self._chunks, advance=count)


class _LineProgress:
    """Plain progress lines for logs (when stderr is not a terminal)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._files = self._read = self._queued = self._written = 0

    def __enter__(self) -> _LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _say(self, line: str) -> None:
        print(line, file=self._stream, flush=True)

    def files_found(self, total: int) -> None:
        self._files = total
        self._say(f"reading {total} files")

    def file_read(self, name: str, chunks: int) -> None:
        self._read += 1
        self._queued += chunks
        self._say(f"file {self._read}/{self._files}: {name} ({chunks} chunks to embed)")

    def chunks_written(self, count: int) -> None:
        self._written += count
        self._say(f"chunks written: {self._written}/{self._queued}")


def _add_store_options(parser: argparse.ArgumentParser, *, default_db: str | None) -> None:
    from tp_rag.cli import add_encoder_options

    group = parser.add_argument_group("Chroma")
    where = group.add_mutually_exclusive_group()
    where.add_argument(
        "--db",
        default=None,
        help=f"folder of an embedded Chroma database (default: {default_db})",
    )
    where.add_argument("--chroma-host", default=None, help="address of a Chroma server")
    group.add_argument(
        "--chroma-port", type=int, default=None, help="port of the Chroma server (default 8000)"
    )
    add_encoder_options(parser)
    parser.set_defaults(default_db=default_db)


def _client(args: argparse.Namespace) -> Any:
    from tp_rag.store import connect

    if args.chroma_host:
        return connect(host=args.chroma_host, port=args.chroma_port)
    return connect(args.db or args.default_db, port=args.chroma_port)


# Settings recorded with a collection that configure an encoder (``tp`` is set per call).
_RECORDED = ("prompt", "clean_text", "tp_start", "tp_stop", "output_layer", "pooling")
_RECORDED += ("normalize", "max_length")


def _encoder_for(args: argparse.Namespace, recorded: dict[str, Any] | None) -> TPEncoder:
    """The encoder the options ask for; without ``--model`` or ``--preset``, an existing
    collection's own model and settings (options given still override them)."""
    from tp_rag.cli import encoder_from_args

    if args.model is not None and Path(args.model).is_dir():
        # An absolute path names the model the same way the collection's embedding function
        # records it, so Chroma's rebuild of that function finds this model already loaded.
        args = argparse.Namespace(**{**vars(args), "model": str(Path(args.model).resolve())})
    if recorded is None or args.model is not None or args.preset is not None:
        return encoder_from_args(args)
    settings = {
        k: recorded[k] for k in _RECORDED if k in recorded and getattr(args, k, None) is None
    }
    return encoder_from_args(
        argparse.Namespace(**{**vars(args), "model": recorded["model"]}), **settings
    )


def _open_store(args: argparse.Namespace, *, create: bool) -> TPStore:
    from tp_rag.store import TPStore, check_name, stored_settings

    check_name(args.collection)
    client = _client(args)
    recorded = stored_settings(client, args.collection)
    if recorded is None and not create:  # fail before loading a model
        where = (
            f"the Chroma server {args.chroma_host}:{args.chroma_port or 8000}"
            if args.chroma_host
            else str(args.db or args.default_db)
        )
        raise ValueError(
            f"there is no tp-rag collection {args.collection!r} in {where}; make it with "
            f"`tp-rag ingest PATH... --collection {args.collection}`"
        )
    encoder = _encoder_for(args, recorded)
    return TPStore(client, args.collection, encoder, create=create)


def _run_ingest(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    out, err = Console(), Console(stderr=True)
    if args.ray is not None:
        store, summary = _run_ray_ingest(args, err)
    else:
        store = _open_store(args, create=True)
        bars = _BarProgress(err) if err.is_terminal else _LineProgress(sys.stderr)
        with bars:
            summary = ingest(
                args.paths,
                store,
                chunk_size=args.chunk_size,
                chunk_overlap=args.chunk_overlap,
                progress=bars,
            )
    on, off = store.count()
    out.print(f"[bold]{store.name}[/]: {summary}")
    out.print(f"collection {store.on.name!r}: {on} chunks; {store.off.name!r}: {off} chunks")
    if summary.skipped:
        table = Table("skipped", "reason", title="not ingested", title_justify="left")
        for path, reason in summary.skipped:
            table.add_row(path, reason)
        out.print(table)
    return 1 if summary.skipped and not summary.files else 0


def _add_ray_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('Ray (pip install "tp-rag[ray]"; needs --chroma-host)')
    group.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help=(
            "run on Ray: without ADDRESS start or join a local Ray; 'auto' or ray://HOST:PORT "
            "for a cluster (put --ray after the paths)"
        ),
    )
    group.add_argument("--ray-address", dest="ray", metavar="ADDRESS", help="same as --ray ADDRESS")
    group.add_argument(
        "--ray-actors", type=int, default=1, metavar="N", help="embedding actors (default 1)"
    )
    group.add_argument(
        "--ray-batch-size",
        type=int,
        default=None,
        metavar="N",
        help="chunks per call into an actor (default 64)",
    )
    group.add_argument(
        "--ray-gpus",
        type=float,
        default=0.0,
        metavar="G",
        help="GPUs per embedding actor (default 0: CPU actors)",
    )
    group.add_argument(
        "--ray-threads",
        type=int,
        default=None,
        metavar="N",
        help="torch threads (and reserved CPUs) per CPU actor (default: CPUs / actors)",
    )
    group.add_argument(
        "--ray-writers", type=int, default=1, metavar="N", help="writer actors (default 1)"
    )


def _run_ray_ingest(args: argparse.Namespace, err: Any) -> tuple[TPStore, IngestSummary]:
    """``tp-rag ingest --ray``: ``tp_rag.distributed.ingest_ray`` into a Chroma server."""
    try:
        import ray.data  # noqa: F401
    except ImportError:
        raise ValueError(
            'ingesting with --ray needs Ray Data, which is not installed: pip install "tp-rag[ray]"'
        ) from None
    if not args.chroma_host:
        raise ValueError(
            "--ray writes from several processes at once, and an embedded Chroma database "
            f"folder ({args.db or args.default_db}) is safe for one process only; start a Chroma "
            "server (`chroma run --path DIR --port 8000`) and pass --chroma-host HOST "
            "[--chroma-port PORT]"
        )
    if args.ray and Path(args.ray).exists():
        raise ValueError(
            f"--ray took {args.ray!r} as the Ray address, but it is a file or folder: put --ray "
            "after the paths, or give the address with --ray-address"
        )
    from tp_rag.distributed import DEFAULT_RAY_BATCH_SIZE, ingest_ray

    store = _open_store(args, create=True)
    summary = ingest_ray(
        args.paths,
        store,
        chunk_size=args.chunk_size,
        chunk_overlap=args.chunk_overlap,
        address=args.ray or None,
        actors=args.ray_actors,
        batch_size=args.ray_batch_size or DEFAULT_RAY_BATCH_SIZE,
        gpus_per_actor=args.ray_gpus,
        threads=args.ray_threads,
        writers=args.ray_writers,
        progress=None if err.is_terminal else _LineProgress(sys.stderr),  # else Ray's own bars
    )
    return store, summary


def _snippet(text: str, width: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _run_query(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from tp_rag.store import describe_change, rank_change

    store = _open_store(args, create=False)
    on, off = store.search(args.text, k=args.k)
    table = Table("#", "TP on", "TP off", title=f"{args.text!r} in {store.name}", show_lines=True)

    def cell(hits: list[Any], other: list[Any], rank: int, side: str) -> str:
        if rank > len(hits):
            return ""
        hit = hits[rank - 1]
        change = describe_change(rank_change(hit, other), side)
        return (
            f"[bold]{hit.similarity:.3f}[/] {change}\n"
            f"[cyan]{hit.source}[/] #{hit.chunk_index}\n{_snippet(hit.text)}"
        )

    for rank in range(1, max(len(on), len(off)) + 1):
        table.add_row(str(rank), cell(on, off, rank, "TP on"), cell(off, on, rank, "TP off"))
    Console().print(table)
    if not on:
        print(f"collection {store.name!r} is empty", file=sys.stderr)
    return 0


def demo_directory() -> Path:
    """The demo's folder: ``tp_rag/_demo`` in an installed wheel, ``demo/`` in a clone."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_demo", package.parent / "demo"):
        if (candidate / "app.py").is_file():
            return candidate
    raise OSError(
        "the demo app is not installed: run `tp-rag demo` from a clone of tp-rag "
        "(it reads demo/app.py), or install a wheel that includes it"
    )


def load_demo_module() -> ModuleType:
    """Import ``demo/app.py`` (it is not a package module, so ``tp-rag demo`` finds it here)."""
    name = "tp_rag_demo_app"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, demo_directory() / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec, so dataclasses in it can find their module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _run_demo(args: argparse.Namespace) -> int:
    app_module = load_demo_module()
    from tp_rag.store import check_name, stored_settings

    client = _client(args)
    recorded = None
    if args.collection is not None:  # an existing collection brings its own encoder settings
        recorded = stored_settings(client, check_name(args.collection))
    encoder = _encoder_for(args, recorded)
    print(f"loaded {encoder}", file=sys.stderr)
    demo = app_module.Demo(encoder, client, collection=args.collection)
    app = app_module.build_app(demo)
    app_module.launch(app, host=args.host, port=args.port, max_file_size=args.max_file_size)
    return 0


def register(subparsers: Any) -> None:
    """Add ``tp-rag ingest``, ``tp-rag query`` and ``tp-rag demo``."""
    ingest_parser = subparsers.add_parser(
        "ingest",
        help="embed files into a Chroma collection and its TP-off twin",
        description=(
            f"Read {', '.join(SUFFIXES)} files and folders, split them into chunks, embed each "
            "chunk with TP on and off, and upsert them into NAME and NAME-tp-off. Re-running "
            "adds nothing new for unchanged files and replaces the chunks of changed ones. "
            "Without --model, an existing collection's own model and settings are used."
        ),
    )
    ingest_parser.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    ingest_parser.add_argument("--collection", required=True, metavar="NAME")
    ingest_parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help=(
            "chunk length in tokens of the model's tokenizer (default: the collection's, "
            f"else {DEFAULT_CHUNK_SIZE})"
        ),
    )
    ingest_parser.add_argument(
        "--chunk-overlap",
        type=int,
        default=None,
        help=(
            "tokens shared by neighbouring chunks (default: the collection's, else "
            f"{DEFAULT_CHUNK_OVERLAP}, at most chunk size / 8)"
        ),
    )
    _add_store_options(ingest_parser, default_db="chroma_db")
    _add_ray_options(ingest_parser)
    ingest_parser.set_defaults(func=_run_ingest)

    query_parser = subparsers.add_parser(
        "query",
        help="search a collection with TP on and off, side by side",
        description=(
            "Print the k best chunks for a query from NAME (TP on) and NAME-tp-off, side by "
            "side; ▲/▼ mark rank changes between them. Without --model, the collection's own "
            "model and settings are used."
        ),
    )
    query_parser.add_argument("text", help="the query")
    query_parser.add_argument("--collection", required=True, metavar="NAME")
    query_parser.add_argument("-k", type=int, default=5, help="results per side (default 5)")
    _add_store_options(query_parser, default_db="chroma_db")
    query_parser.set_defaults(func=_run_query)

    demo_parser = subparsers.add_parser(
        "demo",
        help="open the Gradio demo comparing retrieval with TP on and off",
        description=(
            "Start the Gradio demo (ingest, compare, evaluate) on http://HOST:PORT. It loads "
            "the model once; pass --model /path/to/model to run without network."
        ),
    )
    demo_parser.add_argument(
        "--collection",
        default=None,
        metavar="NAME",
        help="collection to use (default: demo-<fingerprint>, one per encoder configuration)",
    )
    demo_parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default %(default)s)"
    )
    demo_parser.add_argument("--port", type=int, default=7860, help="port (default %(default)s)")
    demo_parser.add_argument(
        "--max-file-size",
        default="20mb",
        help="largest upload accepted (default %(default)s)",
    )
    _add_store_options(demo_parser, default_db=DEMO_DB)
    demo_parser.set_defaults(func=_run_demo)
