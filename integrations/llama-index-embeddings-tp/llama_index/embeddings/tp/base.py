"""``TPEmbedding``: a LlamaIndex embedding model backed by a Token Prepending ``TPEncoder``."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr

from tp_rag.adapters import EncoderSettings, load_encoder
from tp_rag.config import TPConfig
from tp_rag.encoder import TPEncoder
from tp_rag.loading import model_hint


class TPEmbedding(EncoderSettings, BaseEmbedding):
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
        with model_hint("TPEmbedding(model_name='{path}')"):  # the model-unavailable error's hint
            self._encoder = load_encoder(self.model_name, **settings)

    @classmethod
    def class_name(cls) -> str:
        return "TPEmbedding"

    @property
    def encoder(self) -> TPEncoder:
        """The ``TPEncoder`` doing the work, e.g. to reuse it in a Chroma embedding function."""
        return self._encoder

    # LlamaIndex's public methods take one string or a list of strings and do not check which
    # they got: a string given as a batch would be embedded character by character.
    def get_query_embedding(self, query: str) -> Embedding:
        """Embed one query (with ``query_prompt``)."""
        return super().get_query_embedding(_one_text(query, "get_query_embedding"))

    async def aget_query_embedding(self, query: str) -> Embedding:
        """Embed one query (with ``query_prompt``), asynchronously."""
        return await super().aget_query_embedding(_one_text(query, "aget_query_embedding"))

    def get_text_embedding(self, text: str) -> Embedding:
        """Embed one text."""
        return super().get_text_embedding(_one_text(text, "get_text_embedding"))

    async def aget_text_embedding(self, text: str) -> Embedding:
        """Embed one text, asynchronously."""
        return await super().aget_text_embedding(_one_text(text, "aget_text_embedding"))

    def get_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[Embedding]:
        """Embed a list of texts, ``embed_batch_size`` at a time."""
        texts = _text_list(texts, "get_text_embedding_batch")
        return super().get_text_embedding_batch(texts, show_progress, **kwargs)

    async def aget_text_embedding_batch(
        self, texts: list[str], show_progress: bool = False, **kwargs: Any
    ) -> list[Embedding]:
        """Embed a list of texts, asynchronously."""
        texts = _text_list(texts, "aget_text_embedding_batch")
        return await super().aget_text_embedding_batch(texts, show_progress, **kwargs)

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._encoder.encode(query, query=True, show_progress=False).tolist()

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


def _one_text(value: Any, method: str) -> str:
    if not isinstance(value, str):
        batch = "get_text_embedding_batch" if "text" in method else "one call per query"
        raise TypeError(
            f"{method} takes one string, not {type(value).__name__}; for several texts use {batch}"
        )
    return value


def _text_list(value: Any, method: str) -> list[str]:
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{method} takes a list of strings, not one {type(value).__name__} (it would embed "
            f"each character); pass [text], or use get_text_embedding(text)"
        )
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{method} takes a list of strings, not {type(value).__name__}")
    for index, text in enumerate(value):
        if not isinstance(text, str):
            raise TypeError(f"{method}: texts[{index}] is {type(text).__name__}, not str")
    return list(value)
