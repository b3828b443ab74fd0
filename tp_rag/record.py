"""A collection's record of its encoder: the one place that says how its vectors were made.

Every collection tp-rag writes (the two of a ``TPStore``, or one made with
``TPEmbeddingFunction``) holds one record: its embedding function's configuration, which Chroma
stores with the collection and hands back to ``TPEmbeddingFunction.build_from_config``.
``encoder_record`` writes it, ``collection_record`` reads it from a collection, and
``open_encoder`` turns it back into an encoder, for Chroma's rebuild, ``TPStore.open`` and the
Ray workers alike; ``check_space`` is the one fingerprint check.

A record holds the model (a local folder by its absolute path), how it was loaded
(``revision``, ``trust_remote_code``, ``model_kwargs``), every ``TPConfig`` setting (``tp``
and ``query_prompt`` included), the fingerprint, and the record's format and method version
(``scheme``). A
record of another format or method version, or one that does not parse, is refused with the
advice to re-ingest: its vectors cannot be checked against a model.

Stored loading options are an allowlist: without the reader's opt-in, a record loads its model
only with a string ``revision``, ``trust_remote_code=False`` and the ``model_kwargs`` in
``SAFE_MODEL_KWARGS``.

>>> record = encoder_record(encoder, tp=True)  # doctest: +SKIP
>>> open_encoder(record).config.fingerprint() == record["fingerprint"]  # doctest: +SKIP
True
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tp_rag.config import RUNTIME_FIELDS, TPConfig
from tp_rag.errors import ConfigMismatchError, UntrustedConfigError

if TYPE_CHECKING:
    from tp_rag.encoder import TPEncoder

RECORD_FORMAT = 1
"""The layout of the records this tp-rag writes and reads."""

TRUST_REMOTE_CODE_ENV = "TP_RAG_TRUST_REMOTE_CODE"
"""Set to ``1`` to let records opened in this process load their model with any stored loading
options, ``trust_remote_code=True`` included."""

SAFE_MODEL_KWARGS: dict[str, tuple[Any, ...]] = {
    # transformers' built-in attention; any other value names a kernel to fetch and run
    "attn_implementation": ("eager", "sdpa"),
    "use_safetensors": (True,),
}
"""The ``model_kwargs`` a stored record may use without the reader's opt-in, each with its
allowed values."""

_SAFE_DESCRIPTION = "revision (a string), trust_remote_code=False and model_kwargs " + ", ".join(
    f"{key} in ({', '.join(repr(value) for value in values)})"
    for key, values in SAFE_MODEL_KWARGS.items()
)

LOADING_KEYS = ("revision", "trust_remote_code", "model_kwargs")
"""The record's loading options (``TPEncoder.from_pretrained`` keywords)."""

_RUNTIME = tuple(sorted(RUNTIME_FIELDS - {"model"}))
_KNOWN = {"format", "scheme", "model", "fingerprint", *LOADING_KEYS}
_KNOWN |= set(TPConfig.field_names())

# Models this process loaded with trust_remote_code=True by its own choice (``trust_model``):
# records that name them may use their stored loading options here.
_trusted_models: set[str] = set()


def trust_model(name_or_path: str) -> None:
    """Let records naming this model load it with their stored options in this process (call it
    when the process loads the model with ``trust_remote_code=True`` of its own accord)."""
    from tp_rag.loading import model_key

    _trusted_models.add(model_key(name_or_path))


def encoder_record(encoder: TPEncoder, *, tp: bool | None = None) -> dict[str, Any]:
    """The record of ``encoder`` (with ``tp`` instead of its own, if given): JSON values only.

    The settings are the resolved ones (layers included), so a later tp-rag with other defaults
    rebuilds the same encoder.

    >>> encoder_record(encoder, tp=False)["tp"]  # doctest: +SKIP
    False
    """
    from tp_rag.loading import model_key

    config = encoder.config if tp is None else encoder.config.replace(tp=tp)
    settings = config.to_dict()
    model = model_key(settings.pop("model"))  # a relative path breaks when reopened elsewhere
    # How the encoder was loaded, so a rebuild loads the same weights. A preset file's settings
    # are already in `settings`: the file is not needed again.
    loading = {k: v for k, v in encoder.load_kwargs.items() if v not in (None, {})}
    record = {
        "format": RECORD_FORMAT,
        "scheme": _scheme(),
        "model": model,
        **settings,
        **loading,
        "fingerprint": config.fingerprint(),
    }
    try:
        json.dumps(record)
    except TypeError as error:
        raise ValueError(
            f"model_kwargs={loading.get('model_kwargs')!r} cannot be stored with a Chroma "
            f"collection ({error}); pass only JSON values (strings, numbers, booleans, lists, "
            "dicts), e.g. a path as a string"
        ) from None
    return record


def collection_record(collection: Any) -> dict[str, Any]:
    """The record of a Chroma collection's encoder.

    Raises ``ValueError`` when tp-rag did not make the collection, and ``ConfigMismatchError``
    (with the advice to re-ingest) when its record is of another tp-rag or does not parse.
    """
    function = (collection.configuration_json or {}).get("embedding_function") or {}
    if function.get("name") != "tp_rag":
        raise ValueError(
            f"collection {collection.name!r} was not made by tp-rag (it records no tp-rag "
            "encoder); pick another collection name"
        )
    return _readable(function.get("config"), collection.name)


def recorded_runtime(record: Mapping[str, Any]) -> dict[str, Any]:
    """The runtime settings (``device``, ``dtype``, batch sizes) a record was written with.

    ``open_encoder`` leaves them to the reader; pass these to reuse the writer's.
    """
    return {key: record[key] for key in _RUNTIME if key in record}


def open_encoder(
    record: Mapping[str, Any], *, collection: str | None = None, **overrides: Any
) -> TPEncoder:
    """The encoder ``record`` describes: its model, loaded as it was, with its settings.

    ``overrides`` are ``TPEncoder.from_pretrained`` keywords that replace the record's (``None``
    values are ignored): runtime settings (``device``, ``dtype``, ``batch_size``,
    ``max_batch_tokens``) are the reader's, the library's defaults unless given; an embedding-space
    setting may differ only if the space stays the same; loading options given here are the
    reader's own. ``trust_remote_code=True`` is also the reader's opt-in to stored loading options
    beyond the safe ones, as is ``TP_RAG_TRUST_REMOTE_CODE=1``; without it they raise
    ``PermissionError`` before anything is loaded. ``collection`` names the collection in errors.

    Raises ``ConfigMismatchError`` (see ``check_space``) unless the encoder gives the recorded
    embedding space.

    >>> open_encoder(record, device="cpu")  # doctest: +SKIP
    """
    from tp_rag.encoder import TPEncoder
    from tp_rag.loading import model_key

    record = _readable(record, collection)
    # None, and trust_remote_code=False, mean "not given": the reader does not opt in.
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides.get("trust_remote_code") is False:
        del overrides["trust_remote_code"]
    stored = {key: record[key] for key in LOADING_KEYS if key in record and key not in overrides}
    opted_in = (
        overrides.get("trust_remote_code") is True
        or os.environ.get(TRUST_REMOTE_CODE_ENV) == "1"
        or model_key(record["model"]) in _trusted_models
    )
    unsafe = _unsafe_options(stored)
    if unsafe and not opted_in:
        raise UntrustedConfigError(
            f"the record of {_where(collection)} loads model {record['model']!r} with "
            f"{', '.join(unsafe)}; from a stored collection tp-rag accepts only "
            f"{_SAFE_DESCRIPTION}, because other loading options can run the model's own Python "
            "code or fetch code and files from elsewhere. If you trust this model, opt in: set "
            f"{TRUST_REMOTE_CODE_ENV}=1 in your environment, pass trust_remote_code=True when "
            "you open the store (--trust-remote-code on the command line), or load it yourself "
            "in this process, e.g. get_collection(name, embedding_function="
            f"TPEmbeddingFunction({record['model']!r}, trust_remote_code=True))."
        )
    settings = {**TPConfig.reusable_settings(record), "tp": record["tp"]}
    encoder = TPEncoder.from_pretrained(record["model"], **stored, **{**settings, **overrides})
    check_space(record, encoder.config, collection)
    return encoder


def check_space(record: Mapping[str, Any], config: TPConfig, collection: str | None = None) -> None:
    """Raise ``ConfigMismatchError`` unless ``config`` gives the embedding space of ``record``'s
    vectors (equal fingerprints), naming both configurations and the settings that differ."""
    from tp_rag.loading import model_key

    fingerprint = config.fingerprint()
    if fingerprint == record["fingerprint"]:
        return
    settings = {**config.to_dict(), "model": model_key(config.model)}
    differ = [
        f"{key} {record.get(key)!r} vs {settings.get(key)!r}"
        for key in ("model", *TPConfig.space_fields())
        if record.get(key) != settings.get(key)
    ]
    raise ConfigMismatchError(
        f"{_where(collection)} holds vectors of encoder configuration {record['fingerprint']} "
        f"({describe_settings(record)}), but this encoder's configuration is {fingerprint} "
        f"({describe_settings(settings)}); they differ in "
        f"{'; '.join(differ) or 'how tp-rag computes vectors'}. Vectors from different embedding "
        "spaces must not mix: use the model and settings the collection was built with, or "
        "re-embed the collection (ingest into another collection name)."
    )


def describe_settings(settings: Mapping[str, Any]) -> str:
    """One line naming the model and the settings that define an embedding space."""
    keys = ("model", *TPConfig.space_fields())
    return ", ".join(f"{key}={settings.get(key)!r}" for key in keys if key in settings)


def _unsafe_options(stored: Mapping[str, Any]) -> list[str]:
    """The stored loading options outside the allowlist, each described."""
    found = []
    revision = stored.get("revision")
    if revision is not None and not isinstance(revision, str):
        found.append(f"revision={revision!r} (not a string)")
    if stored.get("trust_remote_code", False) is not False:
        found.append(f"trust_remote_code={stored['trust_remote_code']!r}")
    kwargs = stored.get("model_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        return [*found, f"model_kwargs={kwargs!r} (not a mapping)"]
    for key in sorted(kwargs, key=str):
        value = kwargs[key]
        allowed = SAFE_MODEL_KWARGS.get(key)
        if allowed is None:
            found.append(f"model_kwargs[{key!r}]={value!r} (not a known-safe option)")
        elif not any(type(value) is type(ok) and value == ok for ok in allowed):
            choices = ", ".join(repr(ok) for ok in allowed)
            found.append(f"model_kwargs[{key!r}]={value!r} (allowed: {choices})")
    return found


def _readable(record: Any, collection: str | None) -> dict[str, Any]:
    """``record`` as a dict if this tp-rag reads it; else ``ConfigMismatchError`` saying to
    re-ingest."""
    if not isinstance(record, Mapping):
        problem = f"no record it can read ({type(record).__name__})"
    elif (record.get("format"), record.get("scheme")) != (RECORD_FORMAT, _scheme()):
        problem = (
            f"a record of another tp-rag (format {record.get('format')!r}, method version "
            f"{record.get('scheme')!r}; this one reads format {RECORD_FORMAT}, method version "
            f"{_scheme()!r})"
        )
    elif set(record) - _KNOWN:
        problem = (
            f"a record with entries this tp-rag does not know ({sorted(set(record) - _KNOWN)})"
        )
    elif not (
        isinstance(record.get("model"), str)
        and isinstance(record.get("fingerprint"), str)
        and isinstance(record.get("tp"), bool)
    ):
        problem = "a record without a model, a fingerprint and a tp setting"
    else:
        return dict(record)
    raise ConfigMismatchError(
        f"{_where(collection)} holds {problem}, so its vectors cannot be checked against a "
        "model. Re-ingest the documents: `tp-rag ingest PATH... --collection NEW_NAME`, or delete "
        f"the old collections (chromadb: client.delete_collection({collection or 'NAME'!r}), "
        "and its TP-off twin for a tp-rag store) and ingest again under the same name."
    )


def _where(collection: str | None) -> str:
    return f"collection {collection!r}" if collection else "this collection"


def _scheme() -> str:
    """The method version of the vectors this tp-rag computes (part of every fingerprint)."""
    return str(TPConfig().space()["scheme"])
