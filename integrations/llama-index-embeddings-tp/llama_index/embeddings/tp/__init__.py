"""LlamaIndex integration for tp-rag: Token Prepending sentence embeddings from decoder LLMs."""

from llama_index.embeddings.tp.base import TPEmbedding

__all__ = ["TPEmbedding"]
