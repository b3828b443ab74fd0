"""``tp-rag serve``: the embedding server (TEI and OpenAI routes) over one loaded model."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from tp_rag.cli.options import add_encoder_options, encoder_from_args, note

_SERVER_MODULES = ("starlette", "uvicorn", "prometheus_client")  # the `serve` extra

_LIMIT_HELP = {
    "max_concurrent_requests": "requests handled at once; more get 429 with Retry-After",
    "max_client_batch_size": "texts in one request; more get 413",
    "max_payload_bytes": "bytes in one request body; more get 413",
    "max_batch_requests": "requests run together in one job (none: all those "
    "waiting; 1 turns batching across requests off)",
    "retry_after_seconds": "the Retry-After header of a 429 answer",
}


def served_name(model: str | None) -> str:
    """The name clients use: a hub name as it is, a local folder by its last part."""
    from tp_rag.config import DEFAULT_MODEL

    name = model or DEFAULT_MODEL
    path = Path(name).expanduser()
    return path.resolve().name if path.exists() else name


def run_serve(args: argparse.Namespace) -> int:
    """Check the options, then serve until SIGTERM or Ctrl-C."""
    import importlib.util

    missing = [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        note(
            f"tp-rag serve: error: {', '.join(missing)} not installed; install the server's "
            "dependencies with: pip install 'tp-rag[serve]'"
        )
        return 2
    from tp_rag.config import TPConfig
    from tp_rag.serve import API_KEY_ENV, ServeLimits, serve

    limits = ServeLimits(**{name: getattr(args, name) for name in _LIMIT_HELP})
    if args.max_length is not None or args.max_batch_tokens is not None:
        TPConfig(  # e.g. max_batch_tokens < max_length, before loading
            **{
                k: v
                for k, v in {
                    "max_length": args.max_length,
                    "max_batch_tokens": args.max_batch_tokens,
                }.items()
                if v is not None
            }
        )
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    name = args.served_model_name or served_name(args.model)
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        note(
            f"warning: serving on {args.host} without --api-key: anyone who reaches this port "
            "can use the model"
        )
    note(
        f"tp-rag serve: loading {args.model or 'the default model'}; serving {name}:tp-on and "
        f"{name}:tp-off on http://{args.host}:{args.port} (GET /health says 200 once loaded)"
    )
    return serve(
        lambda: encoder_from_args(args),
        served_name=name,
        host=args.host,
        port=args.port,
        limits=limits,
        api_key=api_key,
        log_level=args.log_level,
    )


def register(subparsers: Any) -> None:
    """Add ``tp-rag serve``."""
    from tp_rag.serve import API_KEY_ENV, ServeLimits

    defaults = ServeLimits()
    parser = subparsers.add_parser(
        "serve",
        help="serve embeddings over HTTP (Hugging Face TEI and OpenAI APIs)",
        description="Serve TP-on and TP-off embeddings from one loaded model over the Hugging "
        "Face text-embeddings-inference routes (/embed, /info, /health, /metrics) and the OpenAI "
        "routes (/v1/embeddings, /v1/models). Binds 127.0.0.1 unless --host says otherwise.",
    )
    group = parser.add_argument_group("server")
    group.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    group.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    group.add_argument(
        "--api-key",
        default=None,
        help=f"require Authorization: Bearer KEY on every route but /health (default: "
        f"${API_KEY_ENV} when set)",
    )
    group.add_argument(
        "--served-model-name",
        default=None,
        help="the model name clients send (default: the hub name, or the model folder's name)",
    )
    group.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    limits = parser.add_argument_group("limits")
    for name, text in _LIMIT_HELP.items():
        default = getattr(defaults, name)
        limits.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=default,
            help=f"{text} (default {default if default is not None else 'none'})",
        )
    add_encoder_options(parser)
    parser.set_defaults(func=run_serve)
