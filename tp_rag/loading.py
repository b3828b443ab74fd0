"""Loading a decoder-only model once per process, with the ``<PST>`` placeholder token added.

Models are shared: every encoder that asks for the same weights on the same device and dtype
gets the same ``LoadedModel`` (TP settings do not matter, they live in hooks). The cache holds
weak references, so a model is freed when the last encoder using it is gone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import try_to_load_from_cache
from tokenizers import Tokenizer
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from tp_rag.prompts import BOUNDARY_PLACEHOLDER, PLACEHOLDER

PLACEHOLDER_INIT = "mean-of-vocabulary-rows"
"""How newly added ``<PST>`` and ``<B-PST>`` rows are initialised: the mean of the checkpoint's
input-embedding rows below the first added id, computed in float32. Deterministic, so separate
processes give identical vectors; the paper finds the initialisation does not matter."""


@dataclass(eq=False)
class LoadedModel:
    """A model, its tokenizer and the placeholder, shared by all encoders over the same weights."""

    model: nn.Module
    tokenizer: Any
    layers: nn.ModuleList
    placeholder_id: int
    boundary_id: int
    """The id of HTP's ``<B-PST>``."""
    digest: str
    """``model_digest``: the checkpoint's weights and tokenizer (see ``model_digest``)."""
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


def model_key(name_or_path: str) -> str:
    """How a model is named wherever it must be recognised again (the model cache, a stored
    collection): a local folder by its absolute path, a hub model by its name as given.

    >>> model_key("gpt2")
    'gpt2'
    """
    local = Path(name_or_path).expanduser()
    return str(local.resolve()) if local.is_dir() else name_or_path


def num_decoder_layers(config: PretrainedConfig) -> int:
    """The number of decoder layers of a Hugging Face model config."""
    return int(config.get_text_config().num_hidden_layers)


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


def _add_placeholders(model: nn.Module, tokenizer: Any) -> tuple[int, int]:
    """Add ``<PST>`` and ``<B-PST>`` as tokens (``tokenizer.add_tokens`` semantics) and set
    their embedding rows; a model that already ships one keeps its row."""
    tokens = (PLACEHOLDER, BOUNDARY_PLACEHOLDER)
    missing = [token for token in tokens if token not in tokenizer.get_vocab()]
    tokenizer.add_tokens(missing)  # <PST> first: its id is the one TP has always had
    ids = tuple(int(tokenizer.convert_tokens_to_ids(token)) for token in tokens)
    if missing:
        first = min(int(tokenizer.convert_tokens_to_ids(token)) for token in missing)
        last = max(ids)
        embeddings = model.get_input_embeddings()
        checkpoint_rows = embeddings.weight.shape[0]
        if last >= checkpoint_rows:
            model.resize_token_embeddings(last + 1, mean_resizing=False)
            embeddings = model.get_input_embeddings()
        with torch.no_grad():
            weight = embeddings.weight
            mean = weight[: min(first, checkpoint_rows)].float().mean(0)
            # Rows the resize added (normally just the placeholders') get the same value.
            weight[min(first, checkpoint_rows) : last + 1] = mean.to(weight.dtype)
    return ids[0], ids[1]


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


def weights_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over every value of every tensor, floating-point values rounded to bfloat16.

    The rounding makes the digest the same whether a checkpoint is loaded in float32 or
    bfloat16, on any device: a bfloat16 checkpoint loaded in float32 holds exactly its bfloat16
    values, and a float32 checkpoint loaded in bfloat16 holds them rounded the same way. Any
    change that alters a bfloat16 value changes the digest (a fine-tune, a merged LoRA at 1e-3
    relative size, one edited embedding row); only a change below bfloat16's resolution in every
    value (relative 2**-9) goes unseen, and such weights are identical in bfloat16. A float16
    load of a checkpoint stored in another precision can differ (float16 cannot hold every
    bfloat16 value). Tensors are hashed in parallel threads; the result does not depend on how
    many.

    >>> weights_digest(model.state_dict().items())  # doctest: +SKIP
    '3f2a...'
    """

    def tensor_hash(item: tuple[str, torch.Tensor]) -> bytes:
        name, tensor = item
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = tensor.to("cpu", torch.bfloat16).view(torch.int16)
        digest = hashlib.sha256(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.to("cpu").contiguous().flatten().numpy().view("uint8"))
        return digest.digest()  # hashlib and the conversion release the GIL

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        hashes = pool.map(tensor_hash, sorted(named_tensors, key=lambda item: item[0]))
        return hashlib.sha256(b"".join(hashes)).hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 of the tokenizer's whole pipeline as serialised by the tokenizers library
    (``tokenizer.json``: vocabulary, merges, added tokens, normalizer, pre-tokenizer,
    post-processor, decoder). Take it right after loading: calls can change its padding and
    truncation state."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()


def model_digest(model: nn.Module, tokenizer: Any) -> str:
    """The checkpoint's identity for ``TPConfig.model_digest`` (32 hex characters): its weights
    (``weights_digest``) and its tokenizer (``tokenizer_digest``), before ``<PST>`` is added."""
    weights = weights_digest(model.state_dict().items())
    combined = f"weights:{weights}|tokenizer:{tokenizer_digest(tokenizer)}"
    return hashlib.sha256(combined.encode()).hexdigest()[:32]


def _tokenizer_file(name_or_path: str, revision: str | None) -> str | None:
    """The checkpoint's ``tokenizer.json``, if it has one (hub files: from the local cache,
    where ``AutoTokenizer`` has just put it)."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        path = local / "tokenizer.json"
        return str(path) if path.is_file() else None
    cached = try_to_load_from_cache(name_or_path, "tokenizer.json", revision=revision)
    return cached if isinstance(cached, str) else None


def load_tokenizer(
    name_or_path: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    **hub_options: Any,
) -> Any:
    """The checkpoint's tokenizer, splitting text exactly as its own ``tokenizer.json`` says.

    transformers 5 rebuilds the text pipeline of some tokenizer classes (Llama, Gemma, ...) from
    the class's definition and keeps only the vocabulary, merges and post-processor of
    ``tokenizer.json``; transformers 4, which the authors' code pins, used the file as written.
    For files written in an older scheme this changes the ids. Llama-2's ``tokenizer.json``
    normalises with ``Prepend("▁")`` + ``Replace(" ", "▁")``; the tokenizers library
    normalises an added token's own text with the same normalizer, so ``<PST>`` is matched as
    ``"▁<PST>"`` and takes the space before it. transformers 5's rebuilt ``LlamaTokenizer`` has no
    normalizer but a ``Metaspace`` pre-tokenizer, which leaves that space as a lone ``▁`` token
    (id 29871) before ``<PST>``. So the file's normalizer, pre-tokenizer and decoder replace the
    rebuilt ones wherever they differ; this must happen before ``<PST>`` is added.
    ``hub_options`` go to ``AutoTokenizer.from_pretrained`` (e.g. ``local_files_only``).

    >>> load_tokenizer("/models/Llama-2-7b-hf")("a <PST> b")  # doctest: +SKIP
    """
    tokenizer = AutoTokenizer.from_pretrained(
        name_or_path, revision=revision, trust_remote_code=trust_remote_code, **hub_options
    )
    path = _tokenizer_file(name_or_path, revision)
    if path is None or not getattr(tokenizer, "is_fast", False):
        return tokenizer
    written = _pipeline_of(path)
    backend = tokenizer.backend_tokenizer
    for part in ("normalizer", "pre_tokenizer", "decoder"):
        ours, theirs = getattr(backend, part), getattr(written, part)
        if _component_state(ours) != _component_state(theirs):
            setattr(backend, part, theirs)  # also re-normalises the tokens added so far
    return tokenizer


def _pipeline_of(path: str) -> Tokenizer:
    """A tokenizer with the text pipeline of ``path`` and a one-token vocabulary (parsing the
    real vocabulary again would cost seconds for the large ones)."""
    with open(path, encoding="utf-8") as file:
        state = json.load(file)
    state["added_tokens"] = []
    state["model"] = {"type": "WordLevel", "vocab": {"<unk>": 0}, "unk_token": "<unk>"}
    state["post_processor"] = None  # it may name special tokens the stub vocabulary lacks
    return Tokenizer.from_str(json.dumps(state))


def _component_state(component: Any) -> Any:
    return None if component is None else json.loads(component.__getstate__())


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
    key = (
        model_key(name_or_path),  # one load per directory, however it is named
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
        tokenizer = load_tokenizer(name_or_path, **common)
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
    digest = model_digest(model, tokenizer)  # on the CPU, before moving to the device
    placeholder_id, boundary_id = _add_placeholders(model, tokenizer)
    model.to(device)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        layers=find_decoder_layers(model, num_decoder_layers(config)),
        placeholder_id=placeholder_id,
        boundary_id=boundary_id,
        digest=digest,
        device=device,
        dtype=dtype,
    )
