"""``TPEmbeddings``: LangChain embeddings backed by a Token Prepending ``TPEncoder``."""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import ConfigDict, PrivateAttr

from tp_rag.adapters import TPSettings, load_encoder
from tp_rag.encoder import TPEncoder
from tp_rag.loading import model_hint


class TPEmbeddings(TPSettings, Embeddings):
    """Training-free sentence embeddings from a decoder-only LLM with Token Prepending.

    The fields are ``TPEncoder.from_pretrained``'s: ``model``, the ``TPConfig`` settings (left at
    ``None``, each takes the encoder's default for the model: the paper's settings where the
    authors published them, else a depth rule), ``query_prompt`` (a prompt for ``embed_query``
    only), and the loading options ``preset``, ``revision``, ``trust_remote_code`` and
    ``model_kwargs``. Instances over the same model, device and dtype share one copy of the
    weights, whatever their TP settings. ``aembed_documents`` and ``aembed_query`` run the model
    in a worker thread.

    Example:
        .. code-block:: python

            from langchain_tp import TPEmbeddings

            embeddings = TPEmbeddings(model="Qwen/Qwen2.5-0.5B-Instruct")
            vectors = embeddings.embed_documents(["A man is playing a guitar."])
            query = embeddings.embed_query("Who plays music?")
    """

    # TPSettings' configuration (extra="forbid", ...), and: the encoder is built from the fields
    # once, so changing them later would lie.
    model_config = ConfigDict(frozen=True)

    show_progress: bool | None = None
    """Progress bar while embedding; ``None`` shows one for long jobs only."""

    _encoder: TPEncoder = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        """Validate the fields, then load the model (or reuse one already loaded)."""
        super().__init__(**kwargs)
        with model_hint("TPEmbeddings(model='{path}')"):  # the model-unavailable error's hint
            self._encoder = load_encoder(self.model_name, **self.encoder_settings())

    @property
    def encoder(self) -> TPEncoder:
        """The ``TPEncoder`` doing the work, e.g. to reuse it in a Chroma embedding function."""
        return self._encoder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents with ``prompt``; one list of floats per text."""
        if isinstance(texts, str):
            raise TypeError("embed_documents takes a list of strings; use embed_query for one text")
        return self._encoder.encode(texts, show_progress=self.show_progress).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed a query with ``query_prompt`` (or ``prompt`` when none is set)."""
        if not isinstance(text, str):  # a list would come back as a list of vectors
            raise TypeError(
                f"embed_query takes one string, not {type(text).__name__}; for several texts "
                "use embed_documents"
            )
        return self._encoder.encode(text, query=True, show_progress=False).tolist()
