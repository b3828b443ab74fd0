"""``TPEmbedding``: a LlamaIndex embedding model backed by a Token Prepending ``TPEncoder``."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr

from tp_rag import DEFAULT_MODEL, TPConfig, TPEncoder
from tp_rag.config import DType, Pooling
from tp_rag.prompts import resolve_prompt


class TPEmbedding(BaseEmbedding):
    """Training-free sentence embeddings from a decoder-only LLM with Token Prepending.

    Settings left at ``None`` take the encoder's defaults for the model (the paper's settings
    where the authors published them, else a depth rule). They are read once, when the model
    loads; make a new ``TPEmbedding`` to change them. Instances over the same model, device and
    dtype share one copy of the weights. ``embed_batch_size`` is how many texts LlamaIndex hands
    over per call; ``batch_size`` is how many prompts go through the model at once.

    Examples:
        `pip install llama-index-embeddings-tp`

        ```python
        from llama_index.core import Settings
        from llama_index.embeddings.tp import TPEmbedding

        Settings.embed_model = TPEmbedding("Qwen/Qwen2.5-0.5B-Instruct")
        ```
    """

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(
        default=DEFAULT_MODEL,
        description="Hugging Face hub name or local directory of a decoder-only LLM.",
    )
    tp: bool = Field(
        default=True,
        description="Token Prepending on; False gives the same prompt without the placeholder.",
    )
    prompt: str | None = Field(
        default=None,
        description="Built-in prompt (prompteol, pcot, ke, metaeol) or a template with {text} "
        "and {pst}, used for texts (and for queries unless query_prompt is set).",
    )
    query_prompt: str | None = Field(
        default=None,
        description="A different prompt for queries; None embeds queries like texts.",
    )
    clean_text: bool | None = Field(
        default=None,
        description="The paper's sentence clean-up; None: on for built-in prompts, off for "
        "templates.",
    )
    tp_start: int | None = Field(
        default=None,
        description="First decoder layer (0-based) before which the placeholder is overwritten.",
    )
    tp_stop: int | None = Field(
        default=None, description="TP runs before decoder layers tp_start <= i < tp_stop."
    )
    output_layer: int | None = Field(
        default=None,
        description="Readout layer in Hugging Face hidden_states indexing (-1 = last).",
    )
    pooling: Pooling | None = Field(
        default=None,
        description="last (the prompt's last token, as in the paper) or mean (the text's tokens).",
    )
    normalize: bool | None = Field(
        default=None, description="L2-normalise the vectors (None: yes)."
    )
    max_length: int | None = Field(
        default=None,
        description="Longest prompt in tokens; longer texts are cut, the template is kept "
        "(None: 512).",
    )
    batch_size: int | None = Field(default=None, description="Prompts per forward pass (None: 32).")
    device: str | None = Field(
        default=None, description="auto, cpu, cuda, cuda:N or mps (None: auto)."
    )
    dtype: DType | None = Field(
        default=None,
        description="auto (bfloat16 on CUDA, float32 elsewhere), float32, bfloat16 or float16.",
    )
    show_progress: bool | None = Field(
        default=None,
        description="Progress bar inside one call; None shows one for long calls only.",
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for TPEncoder.from_pretrained: revision, "
        "trust_remote_code (off unless set), preset (a JSON settings file) or model_kwargs "
        "(for transformers.AutoModel.from_pretrained).",
    )

    _encoder: TPEncoder = PrivateAttr()

    def __init__(self, model_name: str = DEFAULT_MODEL, **kwargs: Any) -> None:
        """Validate the fields, then load the model (or reuse one already loaded)."""
        super().__init__(model_name=model_name, **kwargs)
        if self.query_prompt is not None:
            resolve_prompt(self.query_prompt)  # a bad template fails before any loading
        settings = TPConfig.pick(dict(self))
        self._encoder = TPEncoder.from_pretrained(self.model_name, **self.model_kwargs, **settings)

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
