"""What the framework adapters share: one description of their settings, and one constructor.

The LangChain, LlamaIndex and Chroma adapters take the same settings as
``TPEncoder.from_pretrained``: the model, the loading options (``preset``, ``revision``,
``trust_remote_code``, ``model_kwargs`` for ``AutoModel``) and every ``TPConfig`` field
(``method`` and ``query_prompt`` among them: queries are embedded with ``encode(...,
query=True)``). ``settings_model`` turns ``TPConfig`` itself (its fields, types, defaults and
attribute docstrings) into pydantic fields, so no adapter restates a field or a default.

>>> Settings = settings_model()
>>> Settings.model_fields["tp_stop"].default is None
True
>>> "batch_size" in settings_model(exclude=("batch_size",)).model_fields
False
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import typing
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tp_rag.config import DEFAULT_MODEL, TPConfig

if TYPE_CHECKING:
    from tp_rag.encoder import TPEncoder

LOADING_OPTIONS: tuple[str, ...] = ("preset", "revision", "trust_remote_code", "model_kwargs")
"""``TPEncoder.from_pretrained``'s options for loading, beside the model and the settings."""

_LOADING_DOCS = {
    "preset": "JSON preset file (e.g. written by ``tp-rag tune``) with settings for this model.",
    "revision": "Hub revision (branch, tag or commit) of the model.",
    "trust_remote_code": "Run the model repository's own Python code (off unless you set it).",
    "model_kwargs": "Keyword arguments for ``transformers.AutoModel.from_pretrained``, e.g. "
    "``{'attn_implementation': 'sdpa'}``.",
}


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


def _attribute_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` from the string literals written under a class's fields."""
    try:
        tree = ast.parse(inspect.getsource(cls)).body[0]
    except (OSError, TypeError, SyntaxError):  # no source (frozen app): fields stay undocumented
        return {}
    assert isinstance(tree, ast.ClassDef)
    docs = {}
    for node, following in zip(tree.body, tree.body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


@functools.cache
def settings_model(*, exclude: Collection[str] = ()) -> type[Any]:
    """A pydantic model holding an adapter's settings, built from ``TPConfig``.

    Fields: ``model_name`` (alias ``model``), the loading options, and every
    ``TPConfig`` setting as an optional field whose ``None`` means the encoder's default (the
    description says what that default is). ``exclude`` leaves settings out (an adapter that
    has its own name for one). ``encoder_settings()`` gives the keyword arguments of
    ``load_encoder``.
    """
    from pydantic import BaseModel, Field

    hints = typing.get_type_hints(TPConfig)
    docs = _attribute_docs(TPConfig)
    fields: dict[str, Any] = {
        "model_name": (
            str,
            Field(
                default=DEFAULT_MODEL,
                alias="model",
                description="Hugging Face hub name or local directory of a decoder-only LLM.",
            ),
        ),
        "preset": (str | None, Field(default=None, description=_LOADING_DOCS["preset"])),
        "revision": (str | None, Field(default=None, description=_LOADING_DOCS["revision"])),
        "trust_remote_code": (
            bool,
            Field(default=False, description=_LOADING_DOCS["trust_remote_code"]),
        ),
        "model_kwargs": (
            dict[str, Any],
            Field(default_factory=dict, description=_LOADING_DOCS["model_kwargs"]),
        ),
    }
    names = []
    for field in dataclasses.fields(TPConfig):
        if field.name in ("model", "model_digest") or field.name in exclude:
            continue
        names.append(field.name)
        default = (
            "from the model's preset" if field.default is None else f"TPConfig's {field.default!r}"
        )
        description = f"{docs.get(field.name, '')} None: {default}.".strip()
        field_type = hints[field.name] | None
        fields[field.name] = (field_type, Field(default=None, description=description))
    tp_fields = tuple(names)

    class AdapterSettings(BaseModel):
        def encoder_settings(self) -> dict[str, Any]:
            """The keyword arguments of ``load_encoder`` (model excluded): the settings that
            are set and the loading options."""
            settings = TPConfig.pick({name: getattr(self, name) for name in tp_fields})
            loading = {name: getattr(self, name) for name in LOADING_OPTIONS}
            return {**settings, **loading}

    from pydantic import create_model

    return create_model("TPSettings", __base__=AdapterSettings, **fields)
