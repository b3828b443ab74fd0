"""``tp-rag ingest`` and ``tp-rag query``: files into a store, and a query against it."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tp_rag import progress
from tp_rag.cli.display import describe_change, rank_change, short_path
from tp_rag.cli.options import add_store_options, open_store
from tp_rag.documents import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE, SUFFIXES
from tp_rag.ingest import ingest, prune, prune_scope
from tp_rag.progress import Heartbeat, IngestCounts


class BarProgress(IngestCounts):
    """Rich progress bars on a terminal: files read, chunks embedded with TP on and with TP off.

    The time left is ``IngestCounts``' own estimate (chunks embedded per second once the first
    batch is done), on the chunk bars only: reading the files is quick, and the files bar
    finishing says nothing about when the embedding will.
    """

    def __init__(self, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        super().__init__()
        self._progress = Progress(
            TextColumn("{task.description:<6}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}", style="dim", markup=False),
            console=console,
        )
        self._files = self._progress.add_task("files", total=None, note="")
        self._tp = {
            True: self._progress.add_task("TP on", total=0, note=""),
            False: self._progress.add_task("TP off", total=0, note=""),
        }

    def __enter__(self) -> BarProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def beat(self) -> None:
        """Refresh the time left (a ``Heartbeat`` calls it between batches)."""
        self.on_update("chunks_embedded")

    def on_update(self, event: str) -> None:
        if event == "files_found":
            self._progress.update(self._files, total=self.files)
            return
        if event == "file_read":
            self._progress.update(self._files, completed=self.read, note=self.last_file)
        notes = [] if self.read >= self.files else ["total so far"]
        if self.time_left():
            notes.append(self.time_left())
        for tp, task in self._tp.items():
            self._progress.update(
                task, completed=self.embedded[tp], total=self.queued, note=", ".join(notes)
            )


class LineProgress(IngestCounts):
    """Plain progress lines for logs (when stderr is not a terminal): each file, then the chunks
    embedded with TP on and off after every batch, with an estimate of the time left; between
    batches, a line at least every ``every`` seconds (``beat``)."""

    def __init__(self, stream: Any, every: float | None = None) -> None:
        super().__init__()
        self._stream = stream
        self._every = progress.QUIET_SECONDS if every is None else every
        self._said = time.monotonic()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _say(self, line: str) -> None:
        self._said = time.monotonic()
        print(line, file=self._stream, flush=True)

    def beat(self) -> None:
        """Say how far it is when nothing was said for ``every`` seconds."""
        if self.queued and time.monotonic() - self._said >= self._every:
            self._say(self.describe())

    def on_update(self, event: str) -> None:
        if event == "files_found":
            self._say(f"reading {self.files} file{'' if self.files == 1 else 's'}")
        elif event == "file_read":
            chunks = self.last_chunks
            to_embed = f"{chunks} chunk{'' if chunks == 1 else 's'} to embed"
            self._say(f"file {self.read}/{self.files}: {self.last_file} ({to_embed})")
        elif event == "chunks_embedded":
            self._say(self.describe())
        else:
            self._say(f"chunks written: {self.written}/{self.total}")


def check_paths(paths: Sequence[str], *, prune: bool = False) -> None:
    """Refuse a named path that does not exist, whichever its position, before anything is
    written (``tp-rag`` exits 2)."""
    missing = [path for path in paths if not Path(path).exists()]
    if missing:
        undone = "nothing ingested, nothing pruned" if prune else "nothing ingested"
        raise FileNotFoundError(
            f"{', '.join(missing)}: no such file or folder; {undone} (is the path mistyped?)"
        )


def run_ingest(args: argparse.Namespace) -> int:
    """Ingest ``args.paths`` into the store; print the summary and the skipped files."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out, err = Console(), Console(stderr=True)
    if args.dry_run and not args.prune:
        raise ValueError("--dry-run goes with --prune: it lists what --prune would remove")
    if args.ray is not None:
        _check_ray_options(args)
    check_paths(args.paths, prune=args.prune)
    store = open_store(args, create=True)
    if args.prune and args.dry_run:
        _print_pruned(out, prune(args.paths, store, dry_run=True))
        return 0
    if args.prune:
        prune_scope(args.paths)  # a mistyped path is refused before anything is written
    if args.ray is not None:
        summary = _ingest_on_ray(args, store, err)
    else:
        bars = BarProgress(err) if err.is_terminal else LineProgress(sys.stderr)
        with bars, Heartbeat(bars.beat):
            summary = ingest(
                args.paths,
                store,
                chunk_size=args.chunk_size,
                chunk_overlap=args.chunk_overlap,
                progress=bars,
            )
    if args.prune:
        _print_pruned(out, prune(args.paths, store))
    on, off = store.count()
    out.print(Text.assemble((store.name, "bold"), f": {summary}"))
    out.print(f"collection {store.on.name!r}: {on} chunks; {store.off.name!r}: {off} chunks")
    if summary.skipped:
        table = Table("skipped", "reason", title="not ingested", title_justify="left")
        for path, reason in summary.skipped:
            table.add_row(Text(path), Text(reason))  # user text, not rich markup
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
            "run on Ray: without ADDRESS start a local Ray on 127.0.0.1 only; 'auto' or "
            "ray://HOST:PORT for a cluster (put --ray after the paths)"
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


def _check_ray_options(args: argparse.Namespace) -> None:
    """Refuse ``--ray`` without Ray Data or without a Chroma server, before anything is made."""
    from tp_rag.distributed import import_ray

    try:
        import_ray()
    except ImportError as error:
        raise ValueError(str(error)) from None
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


def _ingest_on_ray(args: argparse.Namespace, store: Any, err: Any) -> Any:
    """``tp-rag ingest --ray``: ``tp_rag.distributed.ingest_ray`` into a Chroma server."""
    from tp_rag.distributed import DEFAULT_RAY_BATCH_SIZE, ingest_ray

    return ingest_ray(
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
        progress=None if err.is_terminal else LineProgress(sys.stderr),  # else Ray's own bars
    )


def _print_pruned(out: Any, pruning: Any) -> None:
    from rich.text import Text

    out.print(Text(f"prune: {pruning}" + (":" if pruning.sources else "")))
    for source in pruning.sources:
        out.print(Text(f"  {source}"), highlight=False)  # a path, not rich markup


def run_query(args: argparse.Namespace) -> int:
    """Print the ``k`` best chunks for ``args.text``, TP on and TP off side by side."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    store = open_store(args, create=False)
    on, off = store.search(args.text, k=args.k)
    console = Console()
    title = Text(f"{args.text!r} in {store.name}")  # the query is the user's text, not markup
    table = Table("#", "TP on", "TP off", title=title, show_lines=True)
    # Two result columns share the width left by "#" and the borders: paths are cut from the
    # left to fit, so the file name stays.
    path_width = max((console.width - 12) // 2, 16)

    def cell(hits: list[Any], other: list[Any], rank: int, side: str) -> Text:
        if rank > len(hits):
            return Text("")
        hit = hits[rank - 1]
        change = describe_change(rank_change(hit, other), side)
        where = f"{short_path(hit.source, path_width - 6)} #{hit.chunk_index}"
        return Text.assemble(
            (f"{hit.similarity:.3f}", "bold"),
            f" {change}\n",
            (where, "cyan"),
            f"\n{hit.snippet(200)}",
        )

    for rank in range(1, max(len(on), len(off)) + 1):
        table.add_row(str(rank), cell(on, off, rank, "TP on"), cell(off, on, rank, "TP off"))
    console.print(table)
    if not on:
        print(f"collection {store.name!r} is empty", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    """Add ``tp-rag ingest`` and ``tp-rag query``."""
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
    ingest_parser.add_argument(
        "--prune",
        action="store_true",
        help=(
            "also remove the chunks of files under PATH that no longer exist there, so the "
            "collection mirrors PATH (refused when a PATH is missing or holds no files)"
        ),
    )
    ingest_parser.add_argument(
        "--dry-run",
        action="store_true",
        help="with --prune: only list what would be removed; ingest and remove nothing",
    )
    add_store_options(ingest_parser, default_db="chroma_db")
    _add_ray_options(ingest_parser)
    ingest_parser.set_defaults(func=run_ingest)

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
    add_store_options(query_parser, default_db="chroma_db")
    query_parser.set_defaults(func=run_query)
