"""Shared fixtures: tiny random-weight models (built once per session) and the shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tp_rag.testing import ARCHITECTURES, save_tiny_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True)
def _private_vector_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands that cache vectors by default (``tp-rag eval``) write under the test's own
    folder, never into the user's ~/.cache, and no test sees another's vectors."""
    monkeypatch.setenv("TP_RAG_CACHE_DIR", str(tmp_path / "vector-cache"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Architecture name -> directory of a tiny random model saved with ``save_pretrained``."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: save_tiny_model(root / arch, arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models: dict[str, Path]) -> Path:
    """A 4-layer Llama-shaped model with a BOS-adding BPE tokenizer."""
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout; tests that need it skip in a user's clone."""
    if not SHARED.is_dir():
        pytest.skip("../shared is absent (it exists only on the project's machines)")
    return SHARED


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir(shared_dir: Path) -> Path:
    """The real GPT-2 byte-level BPE tokenizer."""
    path = shared_dir / "tokenizers" / "gpt2"
    if not path.is_dir():
        pytest.skip("../shared/tokenizers/gpt2 is absent")
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_real_tokenizer(
    tmp_path_factory: pytest.TempPathFactory, gpt2_tokenizer_dir: Path
) -> Path:
    """A tiny random GPT-2 model with the real GPT-2 tokenizer (vocab 50,257)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gpt2_tokenizer_dir)
    return save_tiny_model(
        tmp_path_factory.mktemp("tiny-gpt2-real") / "gpt2", "gpt2", tokenizer=tokenizer
    )
