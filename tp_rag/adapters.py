"""What the framework adapters share: their settings, written out once, and one constructor.

The LangChain, LlamaIndex and Chroma adapters take the same settings as
``TPEncoder.from_pretrained``: the model, the loading options (``preset``, ``revision``,
``trust_remote_code``, ``model_kwargs`` for ``AutoModel``) and every ``TPConfig`` field
(``method`` and ``query_prompt`` among them: queries are embedded with ``encode(...,
query=True)``). ``TPSettings`` holds them as pydantic fields (the pydantic adapters subclass
it); ``tests/test_adapters.py`` keeps its fields equal to ``TPConfig``'s.

>>> TPSettings(model="/models/qwen", tp_stop=3).encoder_settings()["tp_stop"]
3
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from tp_rag.config import DEFAULT_MODEL, DType, Method, Pooling, TPConfig

if TYPE_CHECKING:
    from tp_rag.encoder import TPEncoder

LOADING_OPTIONS: tuple[str, ...] = ("preset", "revision", "trust_remote_code", "model_kwargs")
"""``TPEncoder.from_pretrained``'s options for loading, beside the model and the settings."""


def load_encoder(
    model: str | Path | None,
    *,
    preset: str | Path | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    **settings: Any,
) -> TPEncoder:
    """Check the loading options, then load (or reuse) the encoder.

    ``settings`` are ``TPConfig`` fields (checked before any loading); ``None`` values mean
    "the encoder's default".

    >>> load_encoder("/models/qwen", query_prompt="pcot", tp=False)  # doctest: +SKIP
    """
    from tp_rag.encoder import TPEncoder

    misplaced = sorted(set(model_kwargs or {}) & set(LOADING_OPTIONS))
    if misplaced:
        raise TypeError(
            f"model_kwargs holds {', '.join(misplaced)}, which are options of their own: pass "
            f"them directly (e.g. {misplaced[0]}=...); model_kwargs is only for "
            "transformers.AutoModel.from_pretrained"
        )
    return TPEncoder.from_pretrained(
        model,
        preset=preset,
        revision=revision,
        trust_remote_code=trust_remote_code,
        model_kwargs=model_kwargs,
        **{name: value for name, value in settings.items() if value is not None},
    )


class EncoderSettings(BaseModel):
    """An adapter's settings: the model, the loading options and every
    ``TPConfig`` setting except ``batch_size`` (``TPSettings`` adds it; LlamaIndex has its own
    ``embed_batch_size``).

    A setting left at ``None`` takes the encoder's default for the model: the authors' preset
    where they published one, else the depth rule (see ``tp_rag.presets``), else ``TPConfig``'s
    default. ``encoder_settings()`` gives the keyword arguments of ``load_encoder``.
    """

    model_config = ConfigDict(
        extra="forbid",  # a misspelt setting fails loudly
        populate_by_name=True,
        protected_namespaces=(),  # model_name, model_kwargs
        use_attribute_docstrings=True,
    )

    model_name: str = Field(default=DEFAULT_MODEL, alias="model")
    """Hugging Face hub name or local directory of a decoder-only LLM."""

    # The loading options (LOADING_OPTIONS)
    preset: str | None = None
    """JSON preset file (e.g. written by ``tp-rag tune``) with settings for this model."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of the model."""
    trust_remote_code: bool = False
    """Run the model repository's own Python code (off unless you set it)."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for ``transformers.AutoModel.from_pretrained``, e.g.
    ``{'attn_implementation': 'sdpa'}``."""

    # TPConfig's settings (model and model_digest aside); None: the encoder's default
    method: Method | None = None
    """``tp``: Token Prepending, one placeholder for the whole text (sentences); ``htp``:
    hierarchical Token Prepending, one per sentence (passages). None: 'tp'."""
    prompt: str | None = None
    """TP: a built-in name (``prompteol``, ``pcot``, ``ke``, ``metaeol``) or a template with
    ``{text}`` and ``{pst}``; HTP: ``htp-document`` or a template with ``{text}``. None: from
    the model's preset, else 'prompteol' for TP, 'htp-document' for HTP."""
    query_prompt: str | None = None
    """The prompt for queries, as ``prompt``. None: 'htp-query' for HTP; for TP, queries are
    embedded like documents."""
    clean_text: bool | None = None
    """Apply the paper's sentence clean-up. None: on for built-in prompts, off for templates."""
    tp: bool | None = None
    """Token Prepending on (the placeholder is overwritten) or off. None: True."""
    tp_start: int | None = None
    """First decoder layer (0-based) before which the placeholder is overwritten. None: from
    the model's preset."""
    tp_stop: int | None = None
    """TP runs before decoder layers ``tp_start <= i < tp_stop``. None: from the model's
    preset."""
    output_layer: int | None = None
    """Readout layer in Hugging Face ``hidden_states`` indexing (0 = embeddings, -1 = last).
    None: from the model's preset."""
    pooling: Pooling | None = None
    """``last``: the prompt's last token (the TP paper); ``mean``: the text's own tokens (the
    HTP paper). None: 'last' for TP, 'mean' for HTP."""
    normalize: bool | None = None
    """L2-normalise the vectors. None: True."""
    max_length: int | None = None
    """Longest prompt in tokens; longer texts are cut, the template always survives. None:
    512."""
    max_batch_tokens: int | None = None
    """Most tokens per forward pass, padding included. None: the device's default (at least
    ``max_length``)."""
    device: str | None = None
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``. None: 'auto'."""
    dtype: DType | None = None
    """``auto`` (bfloat16 on CUDA and on CPUs that compute it natively, float32 elsewhere),
    ``float32``, ``bfloat16``, ``float16``. None: 'auto'."""

    def encoder_settings(self) -> dict[str, Any]:
        """The keyword arguments of ``load_encoder`` (model excluded): the ``TPConfig``
        settings that are set and the loading options."""
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        loading = {name: fields[name] for name in LOADING_OPTIONS}
        return {**TPConfig.pick(fields), **loading}


class TPSettings(EncoderSettings):
    """``EncoderSettings`` and ``batch_size``: every ``TPConfig`` setting.

    >>> TPSettings(pooling="mean").encoder_settings()["pooling"]
    'mean'
    """

    batch_size: int | None = None
    """Most prompts per forward pass. None: 32."""
