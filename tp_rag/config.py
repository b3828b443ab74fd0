"""``TPConfig``: every setting of a TP encoder, validated when it is made."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from tp_rag.prompts import is_builtin, resolve_prompt

Method = Literal["tp", "htp"]
Pooling = Literal["last", "mean"]
DType = Literal["auto", "float32", "bfloat16", "float16"]

METHODS: tuple[str, ...] = get_args(Method)
POOLINGS: tuple[str, ...] = get_args(Pooling)
DTYPES: tuple[str, ...] = get_args(DType)
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
"""The model used when none is given: small, ungated, runs on a laptop CPU."""

# Bumped whenever the way vectors are computed changes, so old fingerprints stop matching.
# 2: model_digest covers every weight and the tokenizer; Llama-2-style tokenizer.json pipelines
# are used as written (one token fewer before <PST>).
# 3: model_digest also covers the model config and reads the weights as stored (safetensors),
# whatever the loading dtype; TP off no longer depends on tp_start/tp_stop.
_METHOD_VERSION = "tp-rag/3"

RUNTIME_FIELDS: frozenset[str] = frozenset(
    {"batch_size", "max_batch_tokens", "device", "dtype", "model"}
)
"""Settings that change how fast vectors come out, or their rounding, not the embedding space
(``model`` is a name; the weights themselves are in the space, as ``model_digest``)."""

DEFAULT_MAX_BATCH_TOKENS: dict[str, int] = {"cuda": 16384, "mps": 8192, "cpu": 8192}
"""``max_batch_tokens=None`` means this budget for the device type (at least ``max_length``)."""

FORWARD_PASS_TOKENS: dict[str, int] = {"cuda": 2048, "mps": 1024, "cpu": 64}
"""What one more forward pass costs on a device type, in tokens of padding: batches are cut where
the padding they save is worth more (a CPU runs a pass of a few hundred tokens near its peak; a
GPU needs thousands of tokens in a pass to be busy). The CPU value was chosen by timing 16 to
100,000 on a 2-core EPYC (docs/benchmarks.md, bench_cpu_dtype.py of 2026-12-05); the CUDA and MPS
values are estimates, not yet timed. It changes the speed, and the vectors only by rounding."""


def hidden_states_index(layer: int, num_layers: int, name: str = "layer") -> int:
    """Check a Hugging Face ``hidden_states`` index against a model's depth; make it >= 0.

    >>> hidden_states_index(-1, 24)
    24
    """
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"{name}={layer!r} must be an integer hidden_states index")
    if not -(num_layers + 1) <= layer <= num_layers:
        raise ValueError(
            f"{name}={layer} is out of range: this model has {num_layers} decoder layers, so "
            f"{name} must be in [{-(num_layers + 1)}, {num_layers}] "
            "(Hugging Face hidden_states indexing: 0 = embeddings, -1 = last)"
        )
    return layer % (num_layers + 1)


@dataclass(frozen=True)
class TPConfig:
    """Every setting of a Token Prepending encoder.

    ``TPEncoder.from_pretrained`` fills in the model-dependent defaults (``None`` here) from the
    authors' presets or the depth rule (see ``tp_rag.presets``) and resolves ``output_layer``
    to a non-negative index.

    >>> TPConfig(prompt="pcot", tp_start=1, tp_stop=3, output_layer=-2).pooling
    'last'
    """

    model: str = ""
    """Model name or local directory, as given (informational: the digest identifies weights)."""
    model_digest: str = ""
    """Content digest of the loaded weights; filled in by ``TPEncoder.from_pretrained``."""
    method: Method = "tp"
    """``tp``: Token Prepending, one placeholder for the whole text (sentences); ``htp``:
    hierarchical Token Prepending, one per sentence (passages)."""
    prompt: str | None = None
    """TP: a built-in name (``prompteol``, ``pcot``, ``ke``, ``metaeol``) or a template with
    ``{text}`` and ``{pst}``; HTP: ``htp-document`` or a template with ``{text}``. ``None``
    means ``prompteol`` for TP, ``htp-document`` for HTP."""
    query_prompt: str | None = None
    """The prompt for queries (``encode(..., query=True)``), as ``prompt``; ``None`` means
    ``htp-query`` for HTP, and for TP that queries are embedded like documents."""
    clean_text: bool | None = None
    """Apply the paper's sentence clean-up; ``None`` means on for built-in prompts, off for
    custom templates."""
    tp: bool = True
    """Token Prepending on (the placeholder is in the prompt and overwritten) or off."""
    tp_start: int | None = None
    """First decoder layer (0-based) before which the placeholder is overwritten."""
    tp_stop: int | None = None
    """TP runs before decoder layers ``tp_start <= i < tp_stop``."""
    output_layer: int | None = None
    """Readout layer in Hugging Face ``hidden_states`` indexing (0 = embeddings, -1 = last,
    after the final norm)."""
    pooling: Pooling | None = None
    """``last``: the prompt's last token (the TP paper); ``mean``: the text's own tokens (the
    HTP paper). ``None`` means ``last`` for TP, ``mean`` for HTP."""
    normalize: bool = True
    """L2-normalise the vectors."""
    max_length: int = 512
    """Longest prompt in tokens; longer texts are cut, the template always survives."""
    batch_size: int = 32
    """Most prompts per forward pass."""
    max_batch_tokens: int | None = None
    """Most tokens per forward pass, padding included (batch rows x longest prompt); ``None``
    means the device's default in ``DEFAULT_MAX_BATCH_TOKENS``. Must be >= ``max_length``."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    dtype: DType = "auto"
    """``auto`` (bfloat16 on CUDA and on CPUs that compute it natively, see
    ``loading.choose_dtype``; float32 elsewhere), ``float32``, ``bfloat16``, ``float16``."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {', '.join(METHODS)}")
        # The method's own defaults, written into the (frozen) instance so to_dict() shows them.
        htp = self.method == "htp"
        if self.prompt is None:
            object.__setattr__(self, "prompt", "htp-document" if htp else "prompteol")
        if self.query_prompt is None and htp:
            object.__setattr__(self, "query_prompt", "htp-query")
        if self.pooling is None:
            object.__setattr__(self, "pooling", "mean" if htp else "last")
        assert self.prompt is not None  # for type checkers
        resolve_prompt(self.prompt, self.method)  # raises ValueError listing the built-in names
        if self.query_prompt is not None:
            resolve_prompt(self.query_prompt, self.method)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not one of {', '.join(DTYPES)}")
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise ValueError(
                f"device={self.device!r} is not one of auto, cpu, cuda, cuda:N (N = GPU index), mps"
            )
        for name in ("max_length", "batch_size", "max_batch_tokens"):
            value = getattr(self, name)
            if name == "max_batch_tokens" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.max_batch_tokens is not None and self.max_batch_tokens < self.max_length:
            raise ValueError(
                f"max_batch_tokens={self.max_batch_tokens} is smaller than "
                f"max_length={self.max_length}: one prompt can be max_length tokens long; use "
                f"max_batch_tokens >= {self.max_length} (or None for the device default)"
            )
        for name in ("tp_start", "tp_stop", "output_layer"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{name}={value!r} must be an integer")
        if self.tp_start is not None and self.tp_start < 0:
            raise ValueError(f"tp_start={self.tp_start} must be >= 0 (0-based layer index)")
        if self.tp_start is not None and self.tp_stop is not None and self.tp_start >= self.tp_stop:
            raise ValueError(
                f"tp_start={self.tp_start} must be smaller than tp_stop={self.tp_stop}: TP runs "
                "before layers tp_start <= i < tp_stop"
            )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of all settings, e.g. to validate keyword arguments."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def space_fields(cls) -> tuple[str, ...]:
        """Names of the settings that define the embedding space: what ``fingerprint`` covers,
        what a store compares, what a reopened store reuses.

        >>> "batch_size" in TPConfig.space_fields(), "output_layer" in TPConfig.space_fields()
        (False, True)
        """
        return tuple(name for name in cls.field_names() if name not in RUNTIME_FIELDS)

    @classmethod
    def reusable_settings(cls, recorded: dict[str, Any]) -> dict[str, Any]:
        """From a recorded ``to_dict()``, the settings that rebuild that embedding space over the
        same model: the space fields except ``model_digest`` (it comes from the loaded weights)
        and ``tp`` (chosen per call).

        >>> TPConfig.reusable_settings({"tp_stop": 5, "tp": False, "batch_size": 8})
        {'tp_stop': 5}
        """
        names = set(cls.space_fields()) - {"model_digest", "tp"}
        return {key: value for key, value in recorded.items() if key in names}

    @classmethod
    def pick(cls, values: dict[str, Any]) -> dict[str, Any]:
        """The encoder settings among ``values`` (e.g. an adapter's fields), leaving out ``None``
        (use the model's default) and the model itself (passed separately).

        >>> TPConfig.pick({"tp": False, "tp_stop": None, "show_progress": True})
        {'tp': False}
        """
        names = set(cls.field_names()) - {"model", "model_digest"}
        return {k: v for k, v in values.items() if k in names and v is not None}

    @classmethod
    def check_keys(cls, settings: dict[str, Any], source: str) -> None:
        """Raise ``TypeError`` naming any key of ``settings`` that is not a TPConfig field."""
        unknown = sorted(set(settings) - set(cls.field_names()))
        if unknown:
            raise TypeError(
                f"unknown setting(s) {', '.join(unknown)} in {source}; valid settings: "
                f"{', '.join(cls.field_names())}. TPEncoder.from_pretrained also takes preset, "
                "revision, trust_remote_code and model_kwargs (options for transformers' "
                "AutoModel, e.g. model_kwargs={'attn_implementation': 'eager'})"
            )

    @property
    def templates(self) -> tuple[str, ...]:
        """The prompt's templates (one, or eight for MetaEOL)."""
        assert self.prompt is not None  # set in __post_init__
        return resolve_prompt(self.prompt, self.method)

    @property
    def query_templates(self) -> tuple[str, ...]:
        """The templates for queries: ``query_prompt``'s, else ``prompt``'s."""
        if self.query_prompt is None:
            return self.templates
        return resolve_prompt(self.query_prompt, self.method)

    def templates_for(self, *, query: bool) -> tuple[str, ...]:
        """``query_templates`` for queries, ``templates`` for documents."""
        return self.query_templates if query else self.templates

    @property
    def cleans_text(self) -> bool:
        """Whether the TP paper's sentence clean-up applies."""
        if self.clean_text is not None:
            return self.clean_text
        return self.method == "tp" and self.prompt is not None and is_builtin(self.prompt)

    def replace(self, **changes: Any) -> TPConfig:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def resolved(self, num_layers: int) -> TPConfig:
        """Check the layer settings against a model's depth; make ``output_layer`` non-negative."""
        missing = [n for n in ("tp_start", "tp_stop", "output_layer") if getattr(self, n) is None]
        if missing:
            raise ValueError(f"{', '.join(missing)} must be set before resolving")
        assert self.tp_stop is not None and self.output_layer is not None  # for type checkers
        if self.tp_stop > num_layers:
            raise ValueError(
                f"tp_stop={self.tp_stop} is out of range: this model has {num_layers} decoder "
                f"layers, so 1 <= tp_stop <= {num_layers}"
            )
        return self.replace(
            output_layer=hidden_states_index(self.output_layer, num_layers, "output_layer")
        )

    def space(self) -> dict[str, Any]:
        """The settings that define the embedding space (what ``fingerprint`` hashes)."""
        space = {name: getattr(self, name) for name in self.space_fields()}
        if not self.tp:  # TP off runs no TP layers: the same vectors whatever they are
            space["tp_start"] = space["tp_stop"] = None
        space["prompt"] = list(self.templates)
        space["query_prompt"] = list(self.query_templates)
        space["clean_text"] = self.cleans_text
        space["scheme"] = _METHOD_VERSION
        if self.method == "htp":  # where the sentences end is part of the space
            from tp_rag.sentences import splitter_id

            space["splitter"] = splitter_id()
        return space

    def fingerprint(self, *, query: bool = False) -> str:
        """A short stable string that identifies the embedding space.

        ``query=True`` identifies the vectors of queries (``encode(..., query=True)``): the
        same string unless queries have a template of their own.

        Two encoders with equal fingerprints give the same vectors up to floating-point rounding:
        the fingerprint covers the weights, model config and tokenizer (by content digest, see
        ``tp_rag.loading.model_digest``), the prompt text, clean-up, TP settings (with TP off,
        ``tp_start`` and ``tp_stop`` do nothing and are left out), readout layer, pooling,
        normalisation and ``max_length``. It ignores ``batch_size``, ``max_batch_tokens``,
        ``device`` and ``dtype``, and the model's name or path (the same weights in another
        directory are the same model).

        >>> a = TPConfig(model_digest="x", tp_start=1, tp_stop=3, output_layer=4)
        >>> a.fingerprint() == a.replace(batch_size=8).fingerprint()
        True
        >>> a.fingerprint() == a.replace(tp=False).fingerprint()
        False
        >>> off = a.replace(tp=False)
        >>> off.fingerprint() == off.replace(tp_stop=4).fingerprint()
        True
        """
        space = self.space()
        if query and self.query_templates != self.templates:
            space["side"] = "query"
        canonical = json.dumps(space, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def batch_token_budget(self, device_type: str) -> int:
        """``max_batch_tokens``, or the default for ``device_type`` (``cuda``, ``mps``, ``cpu``),
        never below ``max_length``.

        >>> TPConfig().batch_token_budget("cpu")
        8192
        """
        if self.max_batch_tokens is not None:
            return self.max_batch_tokens
        default = DEFAULT_MAX_BATCH_TOKENS.get(device_type, DEFAULT_MAX_BATCH_TOKENS["cpu"])
        return max(default, self.max_length)

    def to_dict(self) -> dict[str, Any]:
        """All settings as a JSON-serialisable dict (``TPConfig(**d)`` rebuilds it)."""
        return dataclasses.asdict(self)
