"""``TPEmbedding``: a LlamaIndex embedding model backed by a Token Prepending ``TPEncoder``."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr

from tp_rag.adapters import load_encoder, settings_model
from tp_rag.config import TPConfig
from tp_rag.encoder import TPEncoder


class TPEmbedding(settings_model(exclude=("batch_size",)), BaseEmbedding):  # type: ignore[misc]
    """Training-free sentence embeddings from a decoder-only LLM with Token Prepending.

    The fields are ``TPEncoder.from_pretrained``'s: ``model_name`` (or ``model``, or the first
    positional argument), the ``TPConfig`` settings (left at ``None``, each takes the encoder's
    default for the model), ``query_prompt`` and the loading options ``preset``, ``revision``,
    ``trust_remote_code`` and ``model_kwargs``. They are read once, when the model loads; make
    a new ``TPEmbedding`` to change them. ``embed_batch_size`` is both how many texts LlamaIndex
    hands over per call and how many go through the model at once (``TPConfig.batch_size``).
    Instances over the same model, device and dtype share one copy of the weights.

    Examples:
        `pip install llama-index-embeddings-tp`

        ```python
        from llama_index.core import Settings
        from llama_index.embeddings.tp import TPEmbedding

        Settings.embed_model = TPEmbedding("Qwen/Qwen2.5-0.5B-Instruct")
        ```
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    embed_batch_size: int = Field(
        default=TPConfig.batch_size,
        gt=0,
        description="Texts per call from LlamaIndex, and per forward pass of the model.",
    )
    show_progress: bool | None = Field(
        default=None,
        description="Progress bar inside one call; None shows one for long calls only.",
    )

    _encoder: TPEncoder = PrivateAttr()

    def __init__(self, model_name: str | None = None, **kwargs: Any) -> None:
        """Validate the fields, then load the model (or reuse one already loaded)."""
        if model_name is not None:
            kwargs["model_name"] = model_name
        super().__init__(**kwargs)
        settings = {**self.encoder_settings(), "batch_size": self.embed_batch_size}
        self._encoder = load_encoder(self.model_name, **settings)

    @classmethod
    def class_name(cls) -> str:
        return "TPEmbedding"

    @property
    def encoder(self) -> TPEncoder:
        """The ``TPEncoder`` doing the work, e.g. to reuse it in a Chroma embedding function."""
        return self._encoder

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._encoder.encode(query, prompt=self.query_prompt, show_progress=False).tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._encoder.encode(text, show_progress=False).tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        # The base class embeds one text at a time; the encoder batches, so hand it all of them.
        return self._encoder.encode(texts, show_progress=self.show_progress).tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
