"""Options and helpers shared by the commands: the encoder options, the Chroma options, and
turning them into a ``TPEncoder`` or a ``TPStore``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from tp_rag.config import DEFAULT_MODEL, DTYPES, POOLINGS, TPConfig

if TYPE_CHECKING:
    from tp_rag.encoder import TPEncoder
    from tp_rag.store import TPStore

ENCODER_OPTIONS = (
    "method",
    "prompt",
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
        help="prompteol, pcot, ke, metaeol, or a template with {text} and {pst}",
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


def encoder_from_args(args: argparse.Namespace, **overrides: Any) -> TPEncoder:
    """Build a ``TPEncoder`` from the options of ``add_encoder_options``."""
    from tp_rag.encoder import TPEncoder

    settings = {
        name: getattr(args, name)
        for name in ENCODER_OPTIONS
        if getattr(args, name, None) is not None
    }
    settings.update(overrides)
    return TPEncoder.from_pretrained(
        args.model, preset=args.preset, trust_remote_code=args.trust_remote_code, **settings
    )


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


def encoder_for(args: argparse.Namespace, recorded: dict[str, Any] | None) -> TPEncoder:
    """The encoder the options ask for; without ``--model`` or ``--preset``, an existing
    collection's own model and settings (options given still override them)."""
    if args.model is not None:
        from tp_rag.loading import model_key

        # A folder named by its absolute path, as the collection's embedding function records
        # it, so Chroma's rebuild of that function finds this model already loaded.
        args = argparse.Namespace(**{**vars(args), "model": model_key(args.model)})
    if recorded is None or args.model is not None or args.preset is not None:
        return encoder_from_args(args)
    settings = {
        key: value
        for key, value in TPConfig.reusable_settings(recorded).items()
        if getattr(args, key, None) is None
    }
    return encoder_from_args(
        argparse.Namespace(**{**vars(args), "model": recorded["model"]}), **settings
    )


def open_store(args: argparse.Namespace, *, create: bool) -> TPStore:
    """The store ``--collection`` names, with the encoder ``encoder_for`` picks."""
    from tp_rag.store import TPStore, check_name, stored_settings

    check_name(args.collection)
    client = client_from_args(args)
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
    encoder = encoder_for(args, recorded)
    return TPStore(client, args.collection, encoder, create=create)
