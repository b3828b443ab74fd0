"""The ``tp-rag`` command line: one module per command group, over the library's functions.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)`` and stays cheap to import
(heavy imports go inside the command functions), so ``tp-rag --help`` is fast. The library never
imports this package.

Errors the user can fix from their message are printed as one line (exit status 2); anything
else is a bug and keeps its traceback (exit status 1). ``TP_RAG_DEBUG=1`` shows the traceback of
every error.
"""

from __future__ import annotations

import argparse
import dis
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from tp_rag.errors import MODEL_HINT, ModelUnavailableError, TPRagError

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

DEBUG_ENV = "TP_RAG_DEBUG"
"""Set to ``1`` to print the traceback of every error, including those shown as one line."""

USER_ERRORS: tuple[type[BaseException], ...] = (
    TPRagError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    ConnectionError,
)
"""Errors shown as one line wherever they were raised: tp-rag's own, and the user's files or
network (a missing or unreadable path, a server that does not answer)."""

_CHECKS = (ValueError, TypeError, OSError, ImportError)
_PACKAGE = Path(__file__).resolve().parents[1]


def is_user_error(error: BaseException) -> bool:
    """Whether the command line shows ``error`` as one line: a ``USER_ERRORS`` instance, or a
    ``ValueError``, ``TypeError``, ``OSError`` or ``ImportError`` that a ``raise`` statement in
    tp-rag's own code raised (a check of the user's input, with a message that says the fix).

    The same types raised anywhere else (inside torch or transformers, or by a failed unpacking
    or a wrong call in tp-rag itself) are bugs, shown with their traceback.

    >>> from tp_rag.config import TPConfig
    >>> try:
    ...     TPConfig(pooling="max")
    ... except ValueError as error:
    ...     print(is_user_error(error))
    True
    """
    if isinstance(error, USER_ERRORS):
        return True
    if not isinstance(error, _CHECKS) or error.__traceback__ is None:
        return False
    innermost = error.__traceback__
    while innermost.tb_next is not None:
        innermost = innermost.tb_next
    code = innermost.tb_frame.f_code
    if not Path(code.co_filename).resolve().is_relative_to(_PACKAGE):
        return False
    return dis.opname[code.co_code[innermost.tb_lasti]] == "RAISE_VARARGS"


def build_parser() -> argparse.ArgumentParser:
    """The full ``tp-rag`` parser."""
    parser = argparse.ArgumentParser(
        prog="tp-rag",
        description="Token Prepending sentence embeddings from decoder-only LLMs.",
        epilog=f"Errors are shown as one line; set {DEBUG_ENV}=1 for their tracebacks.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tp-rag``; returns the exit status (2 for an error shown as one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as error:
        if not is_user_error(error):
            raise
        if isinstance(error, ModelUnavailableError) and error.hint == MODEL_HINT.get():
            # The Python call's hint, not one a caller set (a baseline's names --baseline).
            command = " ".join(filter(None, (args.command, getattr(args, "eval_command", None))))
            error.hint = os.environ.get(MODEL_HINT_ENV) or f"tp-rag {command} --model {{path}}"
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        print(f"tp-rag {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
