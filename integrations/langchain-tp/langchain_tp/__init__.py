"""LangChain integration for tp-rag: Token Prepending sentence embeddings from decoder LLMs."""

from __future__ import annotations

from langchain_tp.embeddings import TPEmbeddings

__all__ = ["TPEmbeddings"]
__version__ = "0.1.0"
