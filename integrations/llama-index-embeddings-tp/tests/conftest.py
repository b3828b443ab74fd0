"""Fixtures: a tiny random Llama-shaped model, built once per session; the hub stays offline."""

from __future__ import annotations

import os

# Before transformers is imported: no test may reach the Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest

from tp_rag.testing import save_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a 4-layer random Llama model and its BPE tokenizer (``save_pretrained``)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model") / "llama", "llama")
