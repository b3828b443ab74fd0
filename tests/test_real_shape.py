"""The default model's real shape end to end (slow: run with ``pytest -m slow``).

A random-weight model with the exact Qwen2.5-0.5B-Instruct config and tokenizer (built once by
``benchmarks/build_random_model.py``, about 1 GB in bfloat16) goes through every entry point a
user meets: ``TPEncoder``, ``tp-rag ingest`` / ``query``, ``tp-rag demo`` (what ``make demo
MODEL=DIR`` runs), and the README's LangChain, LlamaIndex and Chroma snippets.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import servers

from tp_rag import TPEncoder
from tp_rag.cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SHAPE = "Qwen--Qwen2.5-0.5B-Instruct"


@pytest.fixture(scope="module")
def qwen_shape(shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random Qwen2.5-0.5B-Instruct-shaped model folder, built once for the module."""
    spec = importlib.util.spec_from_file_location(
        "build_random_model", ROOT / "benchmarks" / "build_random_model.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_random_model(
        shared_dir / "models" / SHAPE, tmp_path_factory.mktemp("qwen") / "model"
    )


@pytest.fixture(scope="module")
def encoder(qwen_shape: Path) -> TPEncoder:
    return TPEncoder.from_pretrained(qwen_shape, device="cpu")


def test_the_encoder_has_the_default_models_shape(encoder: TPEncoder) -> None:
    """24 layers, 896 dimensions, the depth rule's TP layers [1, 5) and readout 20; the real
    tokenizer keeps <PST> as one token; vectors are unit length and batch-independent."""
    assert (encoder.num_layers, encoder.dimension) == (24, 896)
    c = encoder.config
    assert (c.tp_start, c.tp_stop, c.output_layer, c.prompt) == (1, 5, 20, "prompteol")
    texts = ["A man is playing a guitar.", "Is it raining in Paris?", "x"]
    vectors = encoder.encode(texts)
    assert vectors.shape == (3, 896)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(vectors[1], encoder.encode(texts[1]), atol=1e-4)


def test_ingest_and_query_commands(
    qwen_shape: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tp-rag ingest` then `tp-rag query` (which reuses the collection's model) on files."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tides.md").write_text("# Tides\n\nThe Moon's gravity raises the tides twice a day.")
    (docs / "comets.txt").write_text("Comets are balls of ice and dust with long tails.")
    db = ["--db", str(tmp_path / "db"), "--collection", "docs"]
    assert main(["ingest", str(docs), *db, "--model", str(qwen_shape), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["query", "What raises the tides?", *db, "-k", "2"]) == 0
    printed = capsys.readouterr().out
    assert "TP on" in printed and "gravity" in printed and "Comets" in printed  # both chunks


def test_demo_command_serves_the_app(qwen_shape: Path, tmp_path: Path) -> None:
    """`tp-rag demo --model DIR` (= `make demo MODEL=DIR`) serves; the sample corpus ingests,
    Compare answers and Evaluate scores, through gradio_client."""
    from gradio_client import Client

    port = servers.free_port()
    args = ["--model", str(qwen_shape), "--db", str(tmp_path / "db"), "--port", str(port)]
    with servers.demo([*args, "--device", "cpu"], port, timeout=300) as url:
        client = Client(url, verbose=False)
        assert "32" in client.predict(api_name="/ingest_sample")
        on, off, _ = client.predict("How do tides work?", 3, api_name="/compare")
        assert len(on["data"]) == len(off["data"]) == 3
        table, _, note = client.predict(
            "Bundled sample set (32 documents, 13 queries)", [], api_name="/evaluate"
        )
        assert [row[0] for row in table["data"]] == ["nDCG@10", "Recall@10", "MRR@10"]
        assert "13 queries" in note


def test_readme_adapter_snippets(qwen_shape: Path, tmp_path: Path, encoder: TPEncoder) -> None:
    """The README's LangChain, LlamaIndex and Chroma snippets, with ``model=DIR``."""
    model = str(qwen_shape)
    settings = {"device": "cpu"}
    texts = ["Paris is in France.", "Cairo is in Egypt."]

    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_tp import TPEmbeddings

    db = InMemoryVectorStore.from_texts(texts, TPEmbeddings(model=model, **settings))
    prompt = ChatPromptTemplate.from_template("Context: {context}\nQuestion: {question}")
    chain = {"context": db.as_retriever(search_kwargs={"k": 1}), "question": lambda q: q} | prompt
    assert (
        "Question: Which country is Paris in?"
        in chain.invoke("Which country is Paris in?").to_string()
    )

    from llama_index.core import Document, VectorStoreIndex
    from llama_index.embeddings.tp import TPEmbedding

    index = VectorStoreIndex.from_documents(
        [Document(text=t) for t in texts], embed_model=TPEmbedding(model=model, **settings)
    )
    hits = index.as_retriever(similarity_top_k=1).retrieve("Which country is Paris in?")
    assert hits[0].text in texts

    import chromadb

    from tp_rag.chroma import TPEmbeddingFunction

    client = chromadb.PersistentClient(str(tmp_path / "chroma_db"))
    docs = client.get_or_create_collection(
        "docs", embedding_function=TPEmbeddingFunction(model, **settings)
    )
    docs.add(ids=["paris", "cairo"], documents=texts)
    found = docs.query(query_texts=["Which country is Paris in?"], n_results=1)["documents"]
    assert found[0][0] in texts
    stored = docs.get(ids=["paris"], include=["embeddings"])["embeddings"][0]
    np.testing.assert_allclose(stored, encoder.encode(texts[0]), atol=1e-4)
