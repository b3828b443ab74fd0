"""A Chroma embedding function over ``TPEncoder``, registered so Chroma can rebuild it.

A collection created with ``TPEmbeddingFunction`` stores the function's configuration, which is
the collection's record of its encoder (``tp_rag.record``). Reopening it later (another process,
no ``embedding_function=`` argument) makes Chroma call ``build_from_config``, which opens the
record as ``TPStore.open`` does: the same model with the same settings, the embedding-space
fingerprint checked, so a query can never be embedded differently from the documents, and no
stored loading option outside the allowlist used without the reader's opt-in.

>>> import chromadb
>>> from tp_rag.chroma import TPEmbeddingFunction
>>> client = chromadb.PersistentClient("chroma_db")  # doctest: +SKIP
>>> ef = TPEmbeddingFunction()  # doctest: +SKIP
>>> docs = client.create_collection("docs", embedding_function=ef)  # doctest: +SKIP
>>> docs.add(ids=["1"], documents=["A man is playing a guitar."])  # doctest: +SKIP
>>> docs.query(query_texts=["Who plays music?"], n_results=1)["ids"]  # doctest: +SKIP
[['1']]
"""

from __future__ import annotations

from typing import Any

try:
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
    from chromadb.utils.embedding_functions import register_embedding_function
except ImportError as error:  # chromadb is the optional extra "chroma"
    raise ImportError(
        'tp_rag.chroma needs chromadb, which is not installed: pip install "tp-rag[chroma]"'
    ) from error

from tp_rag.adapters import load_encoder
from tp_rag.encoder import TPEncoder
from tp_rag.record import (
    TRUST_REMOTE_CODE_ENV,
    encoder_record,
    open_encoder,
    recorded_runtime,
    trust_model,
)

__all__ = ["TRUST_REMOTE_CODE_ENV", "TPEmbeddingFunction"]


@register_embedding_function
class TPEmbeddingFunction(EmbeddingFunction[Documents]):
    """Chroma embedding function: Token Prepending sentence embeddings from a decoder-only LLM.

    The arguments are those of every tp-rag adapter (``tp_rag.adapters``): ``model`` is a hub
    name or a local directory (default: ``tp_rag.DEFAULT_MODEL``); ``settings`` are
    ``TPConfig`` fields (``method``, ``prompt``, ``query_prompt``, ``tp_start``,
    ``output_layer``, ...; ``embed_query`` uses ``query_prompt``); ``preset``, ``revision``,
    ``trust_remote_code`` and ``model_kwargs`` (for ``AutoModel``) are
    ``TPEncoder.from_pretrained``'s loading options.

    >>> ef = TPEmbeddingFunction("/models/Qwen2.5-0.5B-Instruct", tp=True)  # doctest: +SKIP
    >>> len(ef(["A man is playing a guitar."])[0])  # doctest: +SKIP
    896
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        tp: bool = True,
        preset: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        """Load (or reuse) the model; see the class docstring for the arguments."""
        encoder = load_encoder(
            model,
            preset=preset,
            revision=revision,
            trust_remote_code=trust_remote_code,
            model_kwargs=model_kwargs,
            **settings,
            tp=tp,
        )
        self._setup(encoder, tp=tp)

    @classmethod
    def from_encoder(
        cls, encoder: TPEncoder, *, tp: bool | None = None, query_prompt: str | None = None
    ) -> TPEmbeddingFunction:
        """Wrap an encoder you already have (no second load); ``tp`` overrides its setting.

        >>> encoder = TPEncoder.from_pretrained()  # doctest: +SKIP
        >>> ef = TPEmbeddingFunction.from_encoder(encoder, tp=False)  # doctest: +SKIP
        """
        if not isinstance(encoder, TPEncoder):
            raise TypeError(f"encoder must be a TPEncoder, not {type(encoder).__name__}")
        if query_prompt is not None:
            encoder = encoder.with_settings(query_prompt=query_prompt)
        function = cls.__new__(cls)
        function._setup(encoder, tp=encoder.config.tp if tp is None else bool(tp))
        return function

    def _setup(self, encoder: TPEncoder, *, tp: bool) -> None:
        self._encoder = encoder
        self._tp = tp
        if encoder.load_kwargs.get("trust_remote_code"):
            trust_model(encoder.config.model)

    @property
    def encoder(self) -> TPEncoder:
        """The ``TPEncoder`` doing the work (shared with other adapters over the same model)."""
        return self._encoder

    def __call__(self, input: Documents) -> Embeddings:
        """Embed documents: one float32 vector per text."""
        return list(self._encoder.encode(_documents(input), tp=self._tp))

    def embed_query(self, input: Documents) -> Embeddings:
        """Embed query texts with the encoder's query prompt (``query=True``)."""
        return list(self._encoder.encode(_documents(input), tp=self._tp, query=True))

    def __repr__(self) -> str:
        return (
            f"TPEmbeddingFunction(encoder={self._encoder!r}, tp={self._tp}, "
            f"query_prompt={self._encoder.config.query_prompt!r})"
        )

    @staticmethod
    def name() -> str:
        """The name Chroma stores with a collection to find this class again."""
        return "tp_rag"

    def default_space(self) -> Space:
        """Cosine: TP vectors are compared by angle (and are unit length by default)."""
        return "cosine"

    def fingerprint(self) -> str:
        """The document embedding space (``TPConfig.fingerprint`` with this function's ``tp``)."""
        return self._encoder.config.replace(tp=self._tp).fingerprint()

    def get_config(self) -> dict[str, Any]:
        """The collection's record of this function (``tp_rag.record.encoder_record``): the
        model, how it was loaded, the resolved settings (``tp`` and ``query_prompt`` among them)
        and the fingerprint, as JSON values."""
        return encoder_record(self._encoder, tp=self._tp)

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> TPEmbeddingFunction:
        """Rebuild a function from its record (``tp_rag.record.open_encoder``, with the
        runtime settings it was written with); raise if the embedding space changed, or if the
        record would load its model with options the reader has not opted in to."""
        encoder = open_encoder(config, **recorded_runtime(config))
        return TPEmbeddingFunction.from_encoder(encoder)


def _documents(input: Documents) -> Documents:
    if isinstance(input, str):  # the encoder would give one 1-D vector, not a list of vectors
        raise TypeError(f"expected a list of texts, got one string; pass [{input[:40]!r}]")
    return input
