"""Fixtures: a tiny random Llama-shaped model, built once per session; the hub stays offline."""

from __future__ import annotations

import os

# Before transformers is imported: no test may reach the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Iterator
from pathlib import Path

import pytest

from tp_rag.testing import save_tiny_model

TINY_MODEL_ENV = "LANGCHAIN_TP_TEST_MODEL"
"""Where the standard suites' ``embedding_model_params`` find the tiny model (a property cannot
take fixtures)."""


@pytest.fixture(scope="session", autouse=True)
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Directory of a 4-layer random Llama model and its BPE tokenizer (``save_pretrained``)."""
    path = save_tiny_model(tmp_path_factory.mktemp("tiny-model") / "llama", "llama")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TINY_MODEL_ENV, str(path))
        yield path
