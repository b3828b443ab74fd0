"""Loading a decoder-only model once per process, with the ``<PST>`` placeholder token added.

Models are shared: every encoder that asks for the same weights on the same device and dtype
gets the same ``LoadedModel`` (TP settings do not matter, they live in hooks). The cache holds
weak references, so a model is freed when the last encoder using it is gone.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from tp_rag.presets import num_decoder_layers
from tp_rag.prompts import PLACEHOLDER

PLACEHOLDER_INIT = "mean-of-vocabulary-rows"
"""How a newly added ``<PST>`` row is initialised: the mean of the checkpoint's input-embedding
rows below the ``<PST>`` id, computed in float32. Deterministic, so separate
processes give identical vectors; the paper finds the initialisation does not matter."""


@dataclass(eq=False)
class LoadedModel:
    """A model, its tokenizer and the placeholder, shared by all encoders over the same weights."""

    model: nn.Module
    tokenizer: Any
    layers: nn.ModuleList
    placeholder_id: int
    digest: str
    device: torch.device
    dtype: torch.dtype
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held during a forward pass: hooks live on the shared modules."""


_cache: weakref.WeakValueDictionary[tuple[Any, ...], LoadedModel] = weakref.WeakValueDictionary()
_cache_lock = threading.Lock()
load_count = 0
"""How many times weights were actually read (not served from the cache); for tests."""


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; other values are checked to exist."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use 'cpu' or 'auto'")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps' but MPS is not available here; use 'cpu' or 'auto'")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA and float32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


class ModelUnavailableError(OSError):
    """A model could not be loaded (hub unreachable, unknown name, missing files).

    The message says how to pass a local copy instead. ``hint`` is how the caller names a model,
    with ``{path}`` for the folder: the Python call by default; the command line swaps in its own
    option (``--model {path}``, ``make demo MODEL={path}``) before printing.
    """

    def __init__(self, name_or_path: str, reason: str) -> None:
        super().__init__(name_or_path)
        self.name_or_path = name_or_path
        self.reason = reason
        self.hint = "TPEncoder.from_pretrained('{path}')"

    def __str__(self) -> str:
        example = self.hint.replace("{path}", "/models/Qwen2.5-0.5B-Instruct")
        return (
            f"could not load model {self.name_or_path!r}: {self.reason}\n"
            "Pass a local directory that holds the model's config.json, tokenizer and weights "
            f"instead, e.g. {example}"
        )


HUB_PROBE_SECONDS = 3.0
"""How long the hub probe waits before calling the hub unreachable."""
_hub_probe: tuple[float, bool] | None = None  # (when, reachable), reused for a minute


def _hub_reachable() -> bool:
    """Whether the Hugging Face Hub answers at all: one quick request, instead of
    huggingface_hub's backoff (six tries over about 30 s) for every file when it does not."""
    global _hub_probe
    if _hub_probe is not None and time.monotonic() - _hub_probe[0] < 60:
        return _hub_probe[1]
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_SECONDS)
        reachable = True
    except Exception:  # the HTTP client's own transport errors (DNS, refused, timeout, proxy)
        reachable = False
    _hub_probe = (time.monotonic(), reachable)
    return reachable


def _hub_options(name_or_path: str) -> dict[str, Any]:
    """``local_files_only=True`` for a hub name when the hub cannot be reached: the local cache
    is used if it has the model, and otherwise the load fails at once."""
    from huggingface_hub import constants

    if Path(name_or_path).expanduser().is_dir() or constants.HF_HUB_OFFLINE:
        return {}
    return {} if _hub_reachable() else {"local_files_only": True}


def _unavailable(name_or_path: str, options: dict[str, Any], error: Exception) -> OSError:
    if options.get("local_files_only"):
        from huggingface_hub import constants

        reason = (
            f"the Hugging Face Hub ({constants.ENDPOINT}) cannot be reached and the model is "
            f"not in the local cache ({constants.HF_HUB_CACHE})"
        )
        return ModelUnavailableError(name_or_path, reason)
    return ModelUnavailableError(name_or_path, str(error))


def load_config(
    name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False
) -> PretrainedConfig:
    """Read a model's config and check that it is a decoder-only causal language model.

    Without a network, a hub name is read from the local cache, or fails at once with a
    ``ModelUnavailableError`` that says how to pass a local directory.
    """
    options = _hub_options(name_or_path)
    try:
        config = AutoConfig.from_pretrained(
            name_or_path, revision=revision, trust_remote_code=trust_remote_code, **options
        )
    except (OSError, ValueError) as error:
        raise _unavailable(name_or_path, options, error) from error
    check_decoder_only(config, name_or_path)
    return config


def check_decoder_only(config: PretrainedConfig, name_or_path: str) -> None:
    """Raise ``ValueError`` unless ``config`` is a decoder-only causal LM."""
    model_type = getattr(config.get_text_config(), "model_type", config.model_type)
    is_decoder_only = (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        and not getattr(config, "is_encoder_decoder", False)
    )
    if not is_decoder_only:
        raise ValueError(
            f"model {name_or_path!r} (model_type={model_type!r}) is not a decoder-only causal "
            "language model. Token Prepending needs one, e.g. llama, mistral, qwen2, gemma2, "
            "phi3 or gpt2 checkpoints; encoders such as BERT and encoder-decoders such as T5 "
            "are not supported."
        )


def find_decoder_layers(model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The model's list of decoder layers: the shallowest ``ModuleList`` of that length."""
    candidates = [
        (name.count("."), name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == num_layers
    ]
    if not candidates:
        raise ValueError(
            f"could not find the {num_layers} decoder layers of {type(model).__name__}; "
            "tp_rag supports Hugging Face decoder-only models whose layers form a ModuleList"
        )
    return min(candidates, key=lambda c: (c[0], c[1]))[2]


def _add_placeholder(model: nn.Module, tokenizer: Any) -> int:
    """Add ``<PST>`` as a token (``tokenizer.add_tokens`` semantics) and set its embedding row."""
    if PLACEHOLDER in tokenizer.get_vocab():  # a model that already ships the token keeps its row
        return int(tokenizer.convert_tokens_to_ids(PLACEHOLDER))
    tokenizer.add_tokens([PLACEHOLDER])
    placeholder_id = int(tokenizer.convert_tokens_to_ids(PLACEHOLDER))
    embeddings = model.get_input_embeddings()
    checkpoint_rows = embeddings.weight.shape[0]
    if placeholder_id >= checkpoint_rows:
        model.resize_token_embeddings(placeholder_id + 1, mean_resizing=False)
        embeddings = model.get_input_embeddings()
    with torch.no_grad():
        weight = embeddings.weight
        mean = weight[: min(placeholder_id, checkpoint_rows)].float().mean(0)
        # Rows the resize added (normally just <PST>'s) get the same deterministic value.
        weight[min(placeholder_id, checkpoint_rows) : placeholder_id + 1] = mean.to(weight.dtype)
    return placeholder_id


class _HeadlessLoadFilter(logging.Filter):
    """Hide transformers' load report when its only finding is the LM head we chose to skip."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = [line for line in message.splitlines() if "|" in line]
        findings = [row for row in rows[1:] if not set(row) <= set("-+| ")]
        return not findings or not all(
            row.split("|")[0].strip().startswith("lm_head") and "UNEXPECTED" in row
            for row in findings
        )


def _weights_digest(model: nn.Module) -> str:
    """A content digest of the weights: the first values of every tensor, rounded to bfloat16.

    Rounding makes the digest the same whether a checkpoint is loaded in float32 or bfloat16.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        sample = tensor.detach().flatten()[:16].to("cpu", torch.bfloat16).view(torch.int16)
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def load_model(
    name_or_path: str,
    *,
    config: PretrainedConfig,
    device: torch.device,
    dtype: torch.dtype,
    revision: str | None = None,
    trust_remote_code: bool = False,
    **model_kwargs: Any,
) -> LoadedModel:
    """Load (or reuse) the base decoder, without its LM head, with ``<PST>`` added."""
    local = Path(name_or_path).expanduser()
    key = (
        str(local.resolve()) if local.is_dir() else name_or_path,  # one load per directory
        revision,
        trust_remote_code,
        str(device),
        str(dtype),
        tuple(sorted((k, repr(v)) for k, v in model_kwargs.items())),
    )
    with _cache_lock:
        cached = _cache.get(key)
        if cached is not None:
            return cached
        loaded = _load_uncached(
            name_or_path,
            config=config,
            device=device,
            dtype=dtype,
            revision=revision,
            trust_remote_code=trust_remote_code,
            **model_kwargs,
        )
        _cache[key] = loaded
        return loaded


def _load_uncached(
    name_or_path: str,
    *,
    config: PretrainedConfig,
    device: torch.device,
    dtype: torch.dtype,
    revision: str | None,
    trust_remote_code: bool,
    **model_kwargs: Any,
) -> LoadedModel:
    global load_count
    options = _hub_options(name_or_path)
    common = {"revision": revision, "trust_remote_code": trust_remote_code, **options}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **common)
        # AutoModel gives the base decoder: the LM head is never loaded, let alone run.
        report_logger = logging.getLogger("transformers.modeling_utils")
        head_filter = _HeadlessLoadFilter()
        report_logger.addFilter(head_filter)
        try:
            model = AutoModel.from_pretrained(
                name_or_path, config=config, dtype=dtype, **common, **model_kwargs
            )
        finally:
            report_logger.removeFilter(head_filter)
    except OSError as error:
        raise _unavailable(name_or_path, options, error) from error
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"model {name_or_path!r} has no fast (Rust) tokenizer; tp_rag needs one for "
            "character offsets. Convert it with tokenizers, or pick a model that ships "
            "tokenizer.json."
        )
    load_count += 1
    model.eval()
    placeholder_id = _add_placeholder(model, tokenizer)
    model.to(device)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        layers=find_decoder_layers(model, num_decoder_layers(config)),
        placeholder_id=placeholder_id,
        digest=_weights_digest(model),
        device=device,
        dtype=dtype,
    )
