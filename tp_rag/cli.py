"""The ``tp-rag`` command line: ``tp-rag embed``, plus the commands other modules register.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)`` and must stay cheap to
import (heavy imports go inside the command functions), so ``tp-rag --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from tp_rag import DEFAULT_MODEL
from tp_rag.config import DTYPES, POOLINGS

COMMAND_MODULES: tuple[str, ...] = ("tp_rag.ingest", "tp_rag.evaluation")
"""Modules that add subcommands (``register(subparsers)``)."""

_ENCODER_OPTIONS = (
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


def encoder_from_args(args: argparse.Namespace, **overrides: Any) -> Any:
    """Build a ``TPEncoder`` from the options of ``add_encoder_options``."""
    from tp_rag.encoder import TPEncoder

    settings = {
        name: getattr(args, name)
        for name in _ENCODER_OPTIONS
        if getattr(args, name, None) is not None
    }
    settings.update(overrides)
    return TPEncoder.from_pretrained(
        args.model, preset=args.preset, trust_remote_code=args.trust_remote_code, **settings
    )


def _embed(args: argparse.Namespace) -> int:
    encoder = encoder_from_args(args)
    texts = args.texts
    print(encoder)
    for label, tp in (("TP on", True), ("TP off", False)):
        vectors = encoder.encode(texts, tp=tp)
        similarity = vectors @ vectors.T
        fingerprint = encoder.config.replace(tp=tp).fingerprint()
        print(f"\ncosine similarity, {label} (fingerprint {fingerprint})")
        for i, text in enumerate(texts):
            cells = " ".join(f"{value:6.3f}" for value in similarity[i])
            print(f"{cells}  {text[:60]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full ``tp-rag`` parser."""
    parser = argparse.ArgumentParser(
        prog="tp-rag",
        description="Token Prepending sentence embeddings from decoder-only LLMs.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    embed = subparsers.add_parser("embed", help="embed a few texts and print their similarities")
    embed.add_argument("texts", nargs="+", help="texts to embed")
    add_encoder_options(embed)
    embed.set_defaults(func=_embed)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tp-rag``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError, FileNotFoundError) as error:
        print(f"tp-rag {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
