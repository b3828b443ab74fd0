"""A Chroma embedding function over ``TPEncoder``, registered so Chroma can rebuild it.

A collection created with ``TPEmbeddingFunction`` stores the function's configuration; reopening
it later (another process, no ``embedding_function=`` argument) makes Chroma call
``build_from_config``, which loads the same model with the same settings and checks the
embedding-space fingerprint, so a query can never be embedded differently from the documents.

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

import json
import os
import threading
from collections import OrderedDict
from typing import Any

try:
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
    from chromadb.utils.embedding_functions import register_embedding_function
except ImportError as error:  # chromadb is the optional extra "chroma"
    raise ImportError(
        'tp_rag.chroma needs chromadb, which is not installed: pip install "tp-rag[chroma]"'
    ) from error

from tp_rag.adapters import LOADING_OPTIONS, load_encoder
from tp_rag.encoder import TPEncoder
from tp_rag.loading import model_key

_STORED_LOADING = frozenset(LOADING_OPTIONS) - {"preset"}
"""Loading options stored with a collection (a preset's settings are stored as settings)."""

TRUST_REMOTE_CODE_ENV = "TP_RAG_TRUST_REMOTE_CODE"
"""Set to ``1`` to let collections opened in this process load their model with the stored
``trust_remote_code=True`` (and the other stored options in ``UNTRUSTED_MODEL_KWARGS``)."""

UNTRUSTED_MODEL_KWARGS = frozenset(
    {
        # run code: the repository's own Python, pickled weights, kernels from the hub
        "trust_remote_code",
        "code_revision",
        "weights_only",
        "use_kernels",
        "allow_all_kernels",
        "kernel_config",
        # change where files come from
        "revision",
        "subfolder",
        "gguf_file",
        "adapter_kwargs",
        "adapter_name",
        "cache_dir",
        "proxies",
        "token",
    }
)
"""``model_kwargs`` a stored collection config may only use with the reader's opt-in."""

# Models this process loaded with trust_remote_code=True itself (its own explicit choice), so
# Chroma's rebuild of the same function from a collection's config is allowed for them.
_trusted_models: set[str] = set()

# Chroma rebuilds the function from its stored config every time it reads a collection's
# configuration (on every add and query of a reopened collection). The core's model cache holds
# weak references, so without a strong one here each rebuild would read the weights again.
_REBUILT_MAX = 4
_rebuilt: OrderedDict[str, TPEmbeddingFunction] = OrderedDict()
_rebuilt_lock = threading.Lock()


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

    def _setup(
        self,
        encoder: TPEncoder,
        *,
        tp: bool,
    ) -> None:
        self._encoder = encoder
        self._tp = tp
        if encoder.load_kwargs.get("trust_remote_code"):
            _trusted_models.add(model_key(encoder.config.model))

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
        """Everything needed to rebuild this function, as JSON-serialisable values.

        The settings are the resolved ones (layers included), so a later tp_rag with other
        defaults rebuilds the same function; ``fingerprint`` lets ``build_from_config`` check it.
        """
        settings = self._encoder.config.to_dict()
        del settings["model_digest"]
        model = model_key(settings.pop("model"))  # a relative path breaks when reopened elsewhere
        # How the encoder was loaded, so a rebuild loads the same weights. A preset file's
        # settings are already in `settings`: the file is not needed again.
        loading = {k: v for k, v in self._encoder.load_kwargs.items() if v not in (None, {})}
        config = {
            "model": model,
            **settings,
            "tp": self._tp,
            **loading,
            "fingerprint": self.fingerprint(),
        }
        try:
            json.dumps(config)
        except TypeError as error:
            raise ValueError(
                f"model_kwargs={loading.get('model_kwargs')!r} cannot be stored with a Chroma "
                "collection "
                f"({error}); pass only JSON values (strings, numbers, booleans, lists, dicts), "
                "e.g. a path as a string"
            ) from None
        return config

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> TPEmbeddingFunction:
        """Rebuild a function from ``get_config()``; raise if the embedding space changed."""
        key = json.dumps(config, sort_keys=True)
        with _rebuilt_lock:
            if key in _rebuilt:
                _rebuilt.move_to_end(key)
                return _rebuilt[key]
        settings = dict(config)
        expected = settings.pop("fingerprint", None)
        nested = dict(settings.get("model_kwargs") or {})
        if set(nested) & _STORED_LOADING:
            # tp-rag 0.1 stored the loading options inside model_kwargs: lift them out.
            settings.update({k: v for k, v in nested.items() if k != "model_kwargs"})
            settings["model_kwargs"] = nested.get("model_kwargs") or {}
        _check_trusted(settings)
        function = TPEmbeddingFunction(**settings)
        if expected is not None and function.fingerprint() != expected:
            raise ValueError(
                f"model {settings.get('model')!r} with these settings no longer gives the "
                f"embedding space the collection was built with (fingerprint "
                f"{function.fingerprint()}, stored {expected}): the weights or tp_rag's method "
                "changed. Point the model at the original weights, or re-embed the collection."
            )
        with _rebuilt_lock:
            _rebuilt[key] = function
            while len(_rebuilt) > _REBUILT_MAX:
                _rebuilt.popitem(last=False)
        return function


def _check_trusted(settings: dict[str, Any]) -> None:
    """Refuse a stored config that would run code or fetch other files, unless the reader of
    the collection opted in (``TP_RAG_TRUST_REMOTE_CODE=1``, or loading that model with
    ``trust_remote_code=True`` in this process)."""
    asks = []
    if settings.get("trust_remote_code"):
        asks.append("trust_remote_code=True")
    flat = set(settings) & UNTRUSTED_MODEL_KWARGS - {"revision", "trust_remote_code"}
    asks += [f"{key}={settings[key]!r}" for key in sorted(flat)]
    kwargs = settings.get("model_kwargs") or {}
    asks += [
        f"model_kwargs[{key!r}]={kwargs[key]!r}"
        for key in sorted(set(kwargs) & UNTRUSTED_MODEL_KWARGS)
    ]
    if not asks:
        return
    model = str(settings.get("model"))
    if os.environ.get(TRUST_REMOTE_CODE_ENV) == "1" or model_key(model) in _trusted_models:
        return
    raise PermissionError(
        f"this collection's stored embedding function loads model {model!r} with "
        f"{', '.join(asks)}, which can run the model's own Python code or fetch files from "
        "elsewhere; tp-rag does not enable that from a stored collection. If you trust this "
        f"model, opt in: set {TRUST_REMOTE_CODE_ENV}=1 in your environment, or load it "
        "yourself in this process, e.g. get_collection(name, embedding_function="
        f"TPEmbeddingFunction({model!r}, trust_remote_code=True))."
    )


def _documents(input: Documents) -> Documents:
    if isinstance(input, str):  # the encoder would give one 1-D vector, not a list of vectors
        raise TypeError(f"expected a list of texts, got one string; pass [{input[:40]!r}]")
    return input
