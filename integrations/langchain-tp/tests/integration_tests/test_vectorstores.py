"""``TPEmbeddings`` inside LangChain: vector stores and a retrieval chain find the right text.

The model is tiny and random, so a query only means something when it repeats a document:
then that document must come first (cosine 1). That still checks everything the adapter does:
documents and queries are embedded the same way and each vector stays with its text.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_chroma import Chroma
from langchain_core.documents import Document
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.vectorstores import InMemoryVectorStore
from langchain_tp import TPEmbeddings

TEXTS = [
    "A man is playing a guitar on the stage.",
    "A woman is slicing an onion in the kitchen.",
    "Stocks fell sharply after the central bank raised interest rates.",
    "Photosynthesis converts light energy into chemical energy in plants.",
]


@pytest.fixture(scope="module")
def embeddings(tiny_model: Path) -> TPEmbeddings:
    return TPEmbeddings(model=str(tiny_model), device="cpu")


def _documents() -> list[Document]:
    return [Document(page_content=text, metadata={"index": i}) for i, text in enumerate(TEXTS)]


def test_in_memory_vector_store_returns_the_expected_document(embeddings: TPEmbeddings) -> None:
    """``InMemoryVectorStore`` (langchain-core) ranks the matching document first."""
    store = InMemoryVectorStore.from_documents(_documents(), embeddings)
    for index, text in enumerate(TEXTS):
        (hit,) = store.similarity_search(text, k=1)
        assert hit.metadata["index"] == index


async def test_in_memory_vector_store_async(embeddings: TPEmbeddings) -> None:
    """The async path (``aembed_*``) retrieves the same documents as the sync one."""
    store = await InMemoryVectorStore.afrom_documents(_documents(), embeddings)
    for index, text in enumerate(TEXTS):
        (hit,) = await store.asimilarity_search(text, k=1)
        assert hit.metadata["index"] == index


def test_chroma_vector_store_returns_the_expected_document(
    embeddings: TPEmbeddings, tmp_path: Path
) -> None:
    """``langchain_chroma.Chroma`` with ``TPEmbeddings`` ranks the matching document first."""
    store = Chroma.from_documents(
        _documents(),
        embeddings,
        collection_name="tp-docs",
        persist_directory=str(tmp_path / "chroma"),
        collection_metadata={"hnsw:space": "cosine"},
    )
    for index, text in enumerate(TEXTS):
        ((hit, distance),) = store.similarity_search_with_score(text, k=1)
        assert hit.metadata["index"] == index
        assert distance == pytest.approx(0.0, abs=1e-4)


def test_retriever_in_a_chain(embeddings: TPEmbeddings) -> None:
    """A retriever over ``TPEmbeddings`` feeds the matching document into a prompt (LCEL)."""
    store = InMemoryVectorStore.from_texts(TEXTS, embeddings)
    prompt = ChatPromptTemplate.from_template("Context: {context}\nQuestion: {question}")
    chain = {
        "context": store.as_retriever(search_kwargs={"k": 1}),
        "question": lambda question: question,
    } | prompt
    message = chain.invoke(TEXTS[2]).to_messages()[0].content
    assert f"page_content='{TEXTS[2]}'" in message
    assert all(text not in message.split("Question:")[0] for text in TEXTS if text != TEXTS[2])
