"""Text shown to people by the command line and the demo: rank-change labels, short paths and
the model-loading line.

Both top layers (``tp_rag.cli`` and ``tp_rag.demo``) show search results side by side; the
library's ``Hit`` carries only what was found, and how it is labelled lives here.

>>> describe_change(2, "TP on"), describe_change(None, "TP off")
('▲2', 'only TP off')
>>> short_path("/home/me/notes/2024/glaciers.txt", 20)
'…/2024/glaciers.txt'
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tp_rag.store import Hit


def rank_change(hit: Hit, other: Sequence[Hit]) -> int | None:
    """How many places higher ``hit`` ranks than the same chunk in ``other`` (negative: lower);
    ``None`` when ``other`` does not have it."""
    for candidate in other:
        if candidate.id == hit.id:
            return candidate.rank - hit.rank
    return None


def describe_change(change: int | None, side: str) -> str:
    """``rank_change`` as a short label: ``only TP on``, ``=``, ``▲2`` or ``▼1``."""
    if change is None:
        return f"only {side}"
    if change == 0:
        return "="
    return f"▲{change}" if change > 0 else f"▼{-change}"


def short_path(path: str, width: int) -> str:
    """``path`` in at most ``width`` characters, cut from the left so the file name stays:
    whole folders are dropped first, then the name itself is cut from its left."""
    if len(path) <= width:
        return path
    parts = path.replace("\\", "/").split("/")
    for first in range(1, len(parts)):
        candidate = "…/" + "/".join(parts[first:])
        if len(candidate) <= width:
            return candidate
    return "…" + path[len(path) - max(width - 1, 1) :]


@contextlib.contextmanager
def loading_line(model: str, *, verbose: bool = False, stream: Any = None) -> Iterator[None]:
    """One line of ours for a model load, ``loading MODEL … done in 6.1 s`` on stderr, instead
    of transformers' own "Loading weights" bar (kept with ``verbose=True``)."""
    from transformers.utils import logging as hf_logging

    stream = stream or sys.stderr
    print(f"loading {model} …", end="", file=stream, flush=True)
    started = time.monotonic()
    bars = hf_logging.is_progress_bar_enabled()
    if bars and not verbose:
        hf_logging.disable_progress_bar()
    outcome = "failed"
    try:
        yield
        outcome = "done"
    finally:
        if bars and not verbose:
            hf_logging.enable_progress_bar()
        print(f" {outcome} in {time.monotonic() - started:.1f} s", file=stream, flush=True)
