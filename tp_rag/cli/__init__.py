"""The ``tp-rag`` command line: one module per command group, over the library's functions.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)`` and stays cheap to import
(heavy imports go inside the command functions), so ``tp-rag --help`` is fast. The library never
imports this package.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

COMMAND_MODULES: tuple[str, ...] = (
    "tp_rag.cli.embed",
    "tp_rag.cli.ingest",
    "tp_rag.cli.demo",
    "tp_rag.cli.evaluate",
    "tp_rag.cli.tune",
    "tp_rag.cli.serve",
)
"""Modules that add subcommands (``register(subparsers)``), in ``--help`` order."""

MODEL_HINT_ENV = "TP_RAG_MODEL_HINT"
"""How the user names a model where ``tp-rag`` was started, ``{path}`` for the folder (``make demo``
sets ``make demo MODEL={path}``); by default the command's own ``--model {path}``."""


def build_parser() -> argparse.ArgumentParser:
    """The full ``tp-rag`` parser."""
    parser = argparse.ArgumentParser(
        prog="tp-rag",
        description="Token Prepending sentence embeddings from decoder-only LLMs.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
        loading = sys.modules.get("tp_rag.loading")  # loaded iff a model was asked for
        if loading is not None and isinstance(error, loading.ModelUnavailableError):
            command = " ".join(filter(None, (args.command, getattr(args, "eval_command", None))))
            error.hint = os.environ.get(MODEL_HINT_ENV) or f"tp-rag {command} --model {{path}}"
        print(f"tp-rag {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
