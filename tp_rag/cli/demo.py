"""``tp-rag demo``: the Gradio app of ``tp_rag.demo.app``, over one loaded encoder."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

from tp_rag.cli.options import (
    add_store_options,
    client_from_args,
    encoder_from_args,
    encoder_options,
)

DEMO_DB = ".tp-rag/demo"
"""Where ``tp-rag demo`` keeps its Chroma database unless ``--db`` is given."""


def server_address(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> tuple[str, int]:
    """``(host, port)``: ``--host`` / ``--port`` if given, else Gradio's own variables
    ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``, else 127.0.0.1:7860."""
    host = args.host or environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = args.port
    if port is None:
        value = environ.get("GRADIO_SERVER_PORT", "7860")
        try:
            port = int(value)
        except ValueError:
            raise ValueError(
                f"GRADIO_SERVER_PORT={value!r} is not a port number; set it to one (e.g. 7860) "
                "or pass --port"
            ) from None
    return host, port


def run_demo(args: argparse.Namespace) -> int:
    """Load the encoder and serve the demo until interrupted."""
    host, port = server_address(args)
    from tp_rag.store import TPStore, check_name, write_lock

    client = client_from_args(args)
    if args.collection is not None:  # an existing collection brings its own encoder
        store = TPStore.open(
            client, check_name(args.collection), args.model, **encoder_options(args)
        )
        encoder = store.encoder
    else:
        encoder = encoder_from_args(args)
    print(f"loaded {encoder}", file=sys.stderr)
    # Embedded Chroma is one process's: the demo is the folder's writer while it runs, so an
    # `ingest` into the same folder is refused (with the advice to use a server) instead of
    # writing chunks the demo would never see.
    with write_lock(client):
        from tp_rag.demo import app as app_module  # gradio takes seconds: after the model's checks

        demo = app_module.Demo(encoder, client, collection=args.collection)
        app = app_module.build_app(demo)
        app_module.launch(app, host=host, port=port, max_file_size=args.max_file_size)
    return 0


def register(subparsers: Any) -> None:
    """Add ``tp-rag demo``."""
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
        "--host",
        default=None,
        help="address to bind (default: $GRADIO_SERVER_NAME, else 127.0.0.1)",
    )
    demo_parser.add_argument(
        "--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT, else 7860)"
    )
    demo_parser.add_argument(
        "--max-file-size",
        default="20mb",
        help="largest upload accepted (default %(default)s)",
    )
    add_store_options(demo_parser, default_db=DEMO_DB)
    demo_parser.set_defaults(func=run_demo)
