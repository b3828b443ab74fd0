"""Fault injection for the Ray tests, importable by Ray's worker processes (the cluster fixture
puts this folder on their path)."""

from __future__ import annotations

import os
from typing import Any

from tp_rag.distributed import _Embedder

KILL_FILE_ENV = "TP_RAG_TEST_KILL_EMBEDDER"
"""Names a file; while it exists, the next ``DyingEmbedder`` to embed a batch removes it and
dies. Set in the test cluster's ``runtime_env``."""


class DyingEmbedder(_Embedder):
    """The real embedding actor, except that the first one to find the kill file, after
    embedding a batch and before handing it on, exits abruptly as a crashed node would (Ray
    restarts the actor and retries the batch)."""

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        embedded = super().__call__(batch)
        try:
            os.remove(os.environ[KILL_FILE_ENV])  # only one actor gets to remove it
        except (KeyError, FileNotFoundError):
            return embedded
        os._exit(1)
