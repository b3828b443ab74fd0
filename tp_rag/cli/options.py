"""Options and helpers shared by the commands: the encoder options, the Chroma options, and
turning them into a ``TPEncoder`` or a ``TPStore``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from tp_rag.config import DEFAULT_MODEL, DTYPES, POOLINGS

if TYPE_CHECKING:
    from tp_rag.encoder import TPEncoder
    from tp_rag.store import TPStore

ENCODER_OPTIONS = (
    "method",
    "prompt",
    "query_prompt",
    "tp_start",
    "tp_stop",
    "output_layer",
    "pooling",
    "max_length",
    "batch_size",
    "max_batch_tokens",
    "device",
    "dtype",
)
"""The ``TPConfig`` fields that have a command-line option."""


def note(message: str) -> None:
    """A progress or context line on stderr (stdout keeps the results)."""
    print(message, file=sys.stderr, flush=True)


def console() -> Any:
    """A rich console at least 100 columns wide, for result tables."""
    from rich.console import Console

    return Console(width=max(Console().width, 100))


def add_encoder_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--preset`` and the TPConfig options shared by all commands."""
    group = parser.add_argument_group("encoder")
    group.add_argument(
        "--model",
        default=None,
        help=f"hub name or local model directory (default: {DEFAULT_MODEL})",
    )
    group.add_argument("--preset", default=None, help="JSON preset file (e.g. from tp-rag tune)")
    group.add_argument(
        "--method",
        default=None,
        help="tp: Token Prepending, for sentences (default); htp: hierarchical TP, one "
        "placeholder per sentence, for passages (tp-rag eval takes both: tp,htp)",
    )
    group.add_argument(
        "--prompt",
        default=None,
        help="TP: prompteol, pcot, ke, metaeol, or a template with {text} and {pst}; "
        "HTP: htp-document or a template with {text}",
    )
    group.add_argument(
        "--query-prompt",
        default=None,
        help="the prompt for queries (query, serve's query inputs), as --prompt "
        "(default: HTP's htp-query; TP embeds queries like documents)",
    )
    group.add_argument("--tp-start", type=int, default=None, help="first TP layer (0-based)")
    group.add_argument("--tp-stop", type=int, default=None, help="TP runs before layers < this")
    group.add_argument(
        "--output-layer",
        type=int,
        default=None,
        help="readout layer, Hugging Face hidden_states indexing",
    )
    group.add_argument("--pooling", choices=POOLINGS, default=None)
    group.add_argument("--max-length", type=int, default=None)
    group.add_argument("--batch-size", type=int, default=None)
    group.add_argument(
        "--max-batch-tokens", type=int, default=None, help="tokens per batch (default: device's)"
    )
    group.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps")
    group.add_argument("--dtype", choices=DTYPES, default=None)
    group.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the model repository's own Python code (off by default)",
    )
    group.add_argument(
        "--verbose",
        action="store_true",
        help="show transformers' own loading bars, and say which model, settings, device and "
        "number format (and why) were chosen",
    )


def encoder_options(args: argparse.Namespace) -> dict[str, Any]:
    """``TPEncoder.from_pretrained``'s keywords (the model aside) that the options of
    ``add_encoder_options`` give: the settings given, ``preset`` and ``trust_remote_code``."""
    settings = {
        name: getattr(args, name)
        for name in ENCODER_OPTIONS
        if getattr(args, name, None) is not None
    }
    return {**settings, "preset": args.preset, "trust_remote_code": args.trust_remote_code}


def encoder_from_args(args: argparse.Namespace, **overrides: Any) -> TPEncoder:
    """Build a ``TPEncoder`` from the options of ``add_encoder_options``."""
    from tp_rag.cli.display import loading_line
    from tp_rag.encoder import TPEncoder

    with loading_line(args.model or DEFAULT_MODEL, verbose=getattr(args, "verbose", False)):
        encoder = TPEncoder.from_pretrained(args.model, **{**encoder_options(args), **overrides})
    if getattr(args, "verbose", False):
        note(f"encoder: {encoder!r}")
    return encoder


def add_store_options(parser: argparse.ArgumentParser, *, default_db: str | None) -> None:
    """Add ``--db`` / ``--chroma-host`` / ``--chroma-port`` and the encoder options."""
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


def client_from_args(args: argparse.Namespace) -> Any:
    """The Chroma client the store options name."""
    from tp_rag.store import connect

    if args.chroma_host:
        return connect(host=args.chroma_host, port=args.chroma_port)
    return connect(args.db or args.default_db, port=args.chroma_port)


def open_store(args: argparse.Namespace, *, create: bool) -> TPStore:
    """The store ``--collection`` names (``TPStore.open``): without ``--model`` or ``--preset``,
    an existing store's own model and settings, which the options given override."""
    from tp_rag.cli.display import loading_line
    from tp_rag.store import TPStore, check_name

    check_name(args.collection)  # before connecting makes a database folder
    client = client_from_args(args)
    model = args.model or f"the model of collection {args.collection!r}"
    with loading_line(model, verbose=getattr(args, "verbose", False)):
        store = TPStore.open(
            client, args.collection, args.model, create=create, **encoder_options(args)
        )
    if getattr(args, "verbose", False):
        note(f"encoder: {store.encoder!r}")
    return store
