"""``TPEmbeddings``: LangChain embeddings backed by a Token Prepending ``TPEncoder``."""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from tp_rag import DEFAULT_MODEL, TPConfig, TPEncoder
from tp_rag.config import DType, Pooling
from tp_rag.prompts import resolve_prompt


class TPEmbeddings(BaseModel, Embeddings):
    """Training-free sentence embeddings from a decoder-only LLM with Token Prepending.

    Settings left at ``None`` take the encoder's defaults for the model (the paper's settings
    where the authors published them, else a depth rule). Models are shared: instances over the
    same model, device and dtype use one copy of the weights, whatever their TP settings.
    ``aembed_documents`` and ``aembed_query`` run the model in a worker thread.

    Example:
        .. code-block:: python

            from langchain_tp import TPEmbeddings

            embeddings = TPEmbeddings(model="Qwen/Qwen2.5-0.5B-Instruct")
            vectors = embeddings.embed_documents(["A man is playing a guitar."])
            query = embeddings.embed_query("Who plays music?")
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,  # the encoder is built from the fields once; changing them later would lie
        populate_by_name=True,
        protected_namespaces=(),
        use_attribute_docstrings=True,
    )

    model_name: str = Field(default=DEFAULT_MODEL, alias="model")
    """Hugging Face hub name or local directory of a decoder-only LLM."""
    tp: bool = True
    """Token Prepending on; ``False`` gives the same prompt without the placeholder."""
    prompt: str | None = None
    """Built-in prompt (``prompteol``, ``pcot``, ``ke``, ``metaeol``) or a template with
    ``{text}`` and ``{pst}``, used for documents (and for queries unless ``query_prompt``)."""
    query_prompt: str | None = None
    """A different prompt for ``embed_query``; ``None`` embeds queries like documents."""
    clean_text: bool | None = None
    """The paper's sentence clean-up; ``None``: on for built-in prompts, off for templates."""
    tp_start: int | None = None
    """First decoder layer (0-based) before which the placeholder is overwritten."""
    tp_stop: int | None = None
    """TP runs before decoder layers ``tp_start <= i < tp_stop``."""
    output_layer: int | None = None
    """Readout layer in Hugging Face ``hidden_states`` indexing (-1 = last)."""
    pooling: Pooling | None = None
    """``last`` (the prompt's last token, as in the paper) or ``mean`` (the text's tokens)."""
    normalize: bool | None = None
    """L2-normalise the vectors (``None``: yes)."""
    max_length: int | None = None
    """Longest prompt in tokens; longer texts are cut, the template is kept (``None``: 512)."""
    batch_size: int | None = None
    """Prompts per forward pass (``None``: 32)."""
    device: str | None = None
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (``None``: auto)."""
    dtype: DType | None = None
    """``auto`` (bfloat16 on CUDA, float32 elsewhere), ``float32``, ``bfloat16``, ``float16``."""
    show_progress: bool | None = None
    """Progress bar while embedding; ``None`` shows one for long jobs only."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for ``TPEncoder.from_pretrained``: ``revision``, ``trust_remote_code``
    (off unless you set it), ``preset`` (a JSON settings file) or ``model_kwargs`` (for
    ``transformers.AutoModel.from_pretrained``)."""

    _encoder: TPEncoder = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        """Validate the fields, then load the model (or reuse one already loaded)."""
        super().__init__(**kwargs)
        if self.query_prompt is not None:
            resolve_prompt(self.query_prompt)  # a bad template fails before any loading
        settings = TPConfig.pick(dict(self))
        self._encoder = TPEncoder.from_pretrained(self.model_name, **self.model_kwargs, **settings)

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
        return self._encoder.encode(text, prompt=self.query_prompt, show_progress=False).tolist()
