"""Loading a decoder-only model once per process, with the ``<PST>`` placeholder token added.

Models are shared: every encoder that asks for the same weights (the same folder or hub name,
revision, ``trust_remote_code`` and ``model_kwargs``) on the same device and dtype gets the same
``LoadedModel`` (TP settings do not matter, they live in hooks).

Retention, the one policy of the one model cache: a loaded model stays in memory while any
encoder uses it, and the most recently requested model also stays when none does, until another
model is requested. So code that drops an encoder and builds it again reads the weights once
(Chroma rebuilds a collection's embedding function from its stored configuration on every add and
query), and at most one model that nothing uses is held; it is released before other weights are
read, never alongside them. ``release_unused()`` frees it at once. A model in the cache also
answers ``load_config`` for its name, so rebuilding an encoder reads no file and asks no hub.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
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

from tp_rag.errors import MODEL_HINT, ModelUnavailableError
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
    """``model_digest``: the checkpoint's weights, model config and tokenizer."""
    device: torch.device
    dtype: torch.dtype
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held during a forward pass: hooks live on the shared modules."""
    widths: tuple[int, ...] = ()
    """The width of each ``hidden_states`` index (0 = the embeddings' output, the last = the
    model's output), read at load: a fact of the weights (OPT-350m: 1024 inside, 512 out)."""
    config: PretrainedConfig | None = None
    """The model's configuration as ``load_config`` read it (shared: do not modify)."""


# The model cache (see the module docstring): the models encoders use, by weak reference, and
# the most recently requested one held strongly in `_kept`.
_cache: weakref.WeakValueDictionary[tuple[Any, ...], LoadedModel] = weakref.WeakValueDictionary()
_kept: LoadedModel | None = None
_cache_lock = threading.Lock()


def release_unused() -> None:
    """Free the model the cache keeps for reuse when no encoder uses it (see the module
    docstring); models that encoders still use stay loaded.

    >>> release_unused()
    """
    global _kept
    with _cache_lock:
        _kept = None


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


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_X86_NATIVE_BFLOAT16 = ("amx_bf16", "avx512_bf16")  # AMX tiles; AVX-512 dot products (VDPBF16PS)
_ARM_NATIVE_BFLOAT16 = ("sve_bf16", "bf16")  # Armv8.6 BFMMLA/BFDOT, which oneDNN (ACL) uses


def native_cpu_bfloat16() -> str | None:
    """The bfloat16 instructions this CPU has and torch computes bfloat16 matmuls with, as torch
    reports them (``torch.cpu.get_capabilities()``), or ``None``: x86 ``amx_bf16`` or
    ``avx512_bf16``; Arm ``sve_bf16`` or ``bf16`` where torch has oneDNN (its bfloat16 matmul
    path there). Without them torch emulates bfloat16 with float32 arithmetic plus conversions,
    which is slower than float32 itself. An older torch without ``get_capabilities`` is asked
    ``torch.cpu._is_avx512_bf16_supported()`` if it has that, and otherwise gives ``None``.

    >>> native_cpu_bfloat16()  # doctest: +SKIP
    'avx512_bf16'
    """
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is None:
        older = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        return "avx512_bf16" if older is not None and older() else None
    capabilities = get_capabilities()  # x86 and Arm name their features differently
    found = [name for name in _X86_NATIVE_BFLOAT16 if capabilities.get(name)]
    if torch.backends.mkldnn.is_available():
        found += [name for name in _ARM_NATIVE_BFLOAT16 if capabilities.get(name)]
    return found[0] if found else None


def choose_dtype(dtype: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The number format the model computes in, and why (shown by ``repr(encoder)``).

    ``auto`` is bfloat16 on CUDA, bfloat16 on a CPU that computes it natively
    (``native_cpu_bfloat16``), and float32 elsewhere (other CPUs, MPS). Only the weights and
    the forward pass use it: tokenization, pooling and normalisation run in float32, and the
    vectors come out in float32 either way.

    >>> choose_dtype("auto", torch.device("cpu"))  # doctest: +SKIP
    (torch.bfloat16, 'auto: this CPU computes bfloat16 natively (avx512_bf16)')
    """
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of auto, {', '.join(_DTYPES)}")
        return _DTYPES[dtype], f"dtype={dtype!r} was asked for"
    if device.type == "cuda":
        return torch.bfloat16, "auto: bfloat16 on CUDA"
    if device.type == "cpu":
        native = native_cpu_bfloat16()
        if native is not None:
            return torch.bfloat16, f"auto: this CPU computes bfloat16 natively ({native})"
        names = ", ".join(_X86_NATIVE_BFLOAT16 + _ARM_NATIVE_BFLOAT16)
        return torch.float32, f"auto: float32, as torch finds no native bfloat16 (none of {names})"
    return torch.float32, f"auto: float32 on {device.type}"


@contextlib.contextmanager
def model_hint(hint: str) -> Iterator[None]:
    """Name the model the caller's way in a ``ModelUnavailableError`` raised inside: ``hint``
    with ``{path}`` for the folder (an adapter: ``TPEmbeddings(model='{path}')``).

    >>> with model_hint("TPEmbeddings(model='{path}')"):  # doctest: +SKIP
    ...     encoder = load_encoder(model)
    """
    token = MODEL_HINT.set(hint)
    try:
        yield
    finally:
        MODEL_HINT.reset(token)


def looks_like_path(name_or_path: str) -> bool:
    """Whether ``name_or_path`` names a folder rather than a hub model: absolute, starting with
    ``./``, ``../`` or ``~``, or holding the OS separator below a folder that exists (a hub
    name ``org/model`` has no such folder ``org``)."""
    if name_or_path.startswith(("~", "./", "../", ".\\", "..\\")):
        return True
    path = Path(name_or_path)
    return path.is_absolute() or (os.sep in name_or_path and path.parent.is_dir())


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

    local = Path(name_or_path).expanduser()
    if not local.is_dir() and looks_like_path(name_or_path):
        raise ModelUnavailableError(name_or_path, f"no such model directory: {local.absolute()}")
    if local.is_dir() or constants.HF_HUB_OFFLINE:
        return {}
    return {} if _hub_reachable() else {"local_files_only": True}


def hub_options(name_or_path: str) -> dict[str, Any]:
    """The hub options any loader of ``name_or_path`` should pass (``local_files_only=True``
    when the hub cannot be reached), after refusing a path-like name that does not exist;
    for models loaded by other libraries (sentence-transformers baselines).

    >>> SentenceTransformer(name, **hub_options(name))  # doctest: +SKIP
    """
    return _hub_options(name_or_path)


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
    ``ModelUnavailableError`` that says how to pass a local directory. A model in the cache
    loaded with the same name, revision and ``trust_remote_code`` answers from memory (the
    configuration it was loaded with, shared: do not modify it).
    """
    wanted = (model_key(name_or_path), revision, trust_remote_code)
    with _cache_lock:
        for key, loaded in list(_cache.items()):
            if key[:3] == wanted and loaded.config is not None:
                return loaded.config
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


MODEL_CONFIG_OUTSIDE_THE_SPACE: frozenset[str] = frozenset(
    {
        # Names and provenance: where the files came from, which transformers wrote them.
        "_name_or_path",
        "transformers_version",
        # The head classes and pipelines built on top of the base model, which tp-rag never
        # loads: AutoModel picks the base model from model_type, not from architectures.
        "architectures",
        "id2label",
        "label2id",
        "problem_type",
        "finetuning_task",
        "task_specific_params",
        # What a forward pass returns or keeps, not the values it computes: tp-rag runs each
        # prompt once (no generation, so no key/value cache) and reads hidden states by hooks.
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        # The stored dtype (the weight digest reads the stored tensors themselves) and the
        # loading dtype (transformers writes it here; like the device, it changes rounding).
        "dtype",
        "torch_dtype",
    }
)
"""Model-config keys that ``config_digest`` leaves out, because they provably do not change
the vectors. Every other key is in (norm epsilons, activation, rope settings and scaling,
sliding window, soft-capping, attention and residual multipliers, layer types, quantization, a
key a future transformers adds, ...): a value that does not matter costs at worst a re-embedding,
a value left out that does matter would mix spaces. Generation settings (``temperature``,
``max_length``, ...) never reach the model config in transformers 5 (it moves them to
``generation_config.json``, which is not read); the choice of attention kernel
(``attn_implementation``) is a loading option that, like the dtype, changes only rounding."""


def config_digest(config: PretrainedConfig) -> str:
    """sha256 of a model config's values (``config.to_dict()``, nested configs included)
    without ``MODEL_CONFIG_OUTSIDE_THE_SPACE``.

    >>> config_digest(AutoConfig.from_pretrained("/models/llama"))  # doctest: +SKIP
    '9c1e...'
    """

    def space_part(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                str(key): space_part(item)
                for key, item in value.items()
                if key not in MODEL_CONFIG_OUTSIDE_THE_SPACE
            }
        if isinstance(value, (list, tuple)):
            return [space_part(item) for item in value]
        return value

    values = space_part(config.to_dict())
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


_SAFETENSORS, _SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"


def checkpoint_files(
    name_or_path: str,
    config: PretrainedConfig,
    *,
    revision: str | None = None,
    **model_kwargs: Any,
) -> list[str] | None:
    """The safetensors files transformers loads the weights from (after loading: hub files are
    then in the local cache), in transformers' own order of preference (one file, then a
    sharded index), honouring ``subfolder``, ``variant`` and a config's ``transformers_weights``.
    ``None`` when the weights come from elsewhere (``.bin``, ``gguf_file``, ``use_safetensors=
    False``, a file not found where expected)."""
    if model_kwargs.get("use_safetensors") is False or model_kwargs.get("gguf_file"):
        return None
    subfolder = str(model_kwargs.get("subfolder") or "")
    variant = model_kwargs.get("variant")

    def named(name: str) -> str:
        if not variant:
            return name
        stem, _, extension = name.partition(".")
        return f"{stem}.{variant}.{extension}"

    explicit = getattr(config, "transformers_weights", None)
    names = [explicit] if explicit else [named(_SAFETENSORS), named(_SAFETENSORS_INDEX)]
    local = Path(name_or_path).expanduser()

    def find(name: str) -> Path | None:
        if local.is_dir():
            path = local / subfolder / name
            return path if path.is_file() else None
        cached = try_to_load_from_cache(
            name_or_path, str(Path(subfolder) / name), revision=revision
        )
        return Path(cached) if isinstance(cached, str) else None

    for name in names:
        path = find(name)
        if path is None:
            continue
        if name.endswith(".safetensors"):
            return [str(path)]
        if name.endswith(".safetensors.index.json"):
            weight_map = json.loads(path.read_text("utf-8")).get("weight_map", {})
            shards = [find(shard) for shard in sorted(set(weight_map.values()))]
            if shards and all(shards):
                return [str(shard) for shard in shards if shard is not None]
        return None
    return None


def _hash_tensor(name: str, tensor: torch.Tensor) -> bytes:
    """sha256 of one tensor: its name, dtype, shape and raw bytes (as held, no conversion)."""
    tensor = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # releases the GIL
    return digest.digest()


def _combine(hashes: Iterable[bytes]) -> str:
    return hashlib.sha256(b"".join(hashes)).hexdigest()


def stored_weights_digest(files: Iterable[str | Path]) -> str:
    """sha256 over every tensor of safetensors ``files`` exactly as stored (name, stored dtype,
    shape, bytes), whatever dtype or device the model is loaded in. The files are memory-mapped
    (just read by the load, so normally in the page cache); tensors are hashed in parallel
    threads and the result does not depend on how many, nor on how the tensors are sharded.

    >>> stored_weights_digest(["/models/llama/model.safetensors"])  # doctest: +SKIP
    '5d0b...'
    """
    from safetensors import safe_open

    handles = [safe_open(str(path), framework="pt") for path in files]
    where: dict[str, Any] = {}
    for handle in handles:
        for name in handle.keys():  # noqa: SIM118 (a safetensors file is not iterable)
            if where.setdefault(name, handle) is not handle:
                raise ValueError(f"two safetensors shards hold tensor {name!r}: corrupt checkpoint")
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        hashes = pool.map(
            lambda name: _hash_tensor(name, where[name].get_tensor(name)), sorted(where)
        )
        return _combine(hashes)


def weights_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over every tensor as held in memory (name, dtype, shape, bytes): the fallback for
    weights that do not come from safetensors files (a ``.bin`` checkpoint, a model built in
    memory). The same weights held in another dtype give another digest, so for these a
    float32 and a bfloat16 load count as two spaces (they cannot be traced to stored bytes).

    >>> weights_digest(model.state_dict().items())  # doctest: +SKIP
    '3f2a...'
    """
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        ordered = sorted(named_tensors, key=lambda item: item[0])
        return _combine(pool.map(lambda item: _hash_tensor(*item), ordered))


def tokenizer_digest(tokenizer: Any) -> str:
    """sha256 of the tokenizer's whole pipeline as serialised by the tokenizers library
    (``tokenizer.json``: vocabulary, merges, added tokens, normalizer, pre-tokenizer,
    post-processor, decoder). Take it right after loading: calls can change its padding and
    truncation state."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()


def model_digest(
    model: nn.Module, tokenizer: Any, files: Iterable[str | Path] | None = None
) -> str:
    """The embedding space's model part, for ``TPConfig.model_digest`` (32 hex characters):
    the weights, the model config (``config_digest``) and the tokenizer (``tokenizer_digest``),
    before ``<PST>`` is added.

    The weights are digested from the safetensors ``files`` they were loaded from
    (``stored_weights_digest``: independent of the loading dtype and device); without files
    (``None``), from the tensors in memory (``weights_digest``), which names the dtype they are
    held in, so the fallback's digest changes with the loading dtype.

    >>> model_digest(model, tokenizer, checkpoint_files(path, model.config))  # doctest: +SKIP
    """
    files = list(files) if files is not None else None
    if files:
        weights = "stored:" + stored_weights_digest(files)
    else:
        weights = "in-memory:" + weights_digest(model.state_dict().items())
    combined = (
        f"weights:{weights}|config:{config_digest(model.config)}"
        f"|tokenizer:{tokenizer_digest(tokenizer)}"
    )
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


def _hidden_state_widths(model: nn.Module, device: torch.device) -> tuple[int, ...]:
    """The width of every ``hidden_states`` index, from one forward pass of one token."""
    with torch.inference_mode():
        out = model(
            input_ids=torch.zeros((1, 1), dtype=torch.long, device=device),
            output_hidden_states=True,
        )
    return tuple(int(hidden.shape[-1]) for hidden in out.hidden_states)


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
    """Load (or reuse, see the module docstring) the base decoder, without its LM head, with
    ``<PST>`` added."""
    global _kept
    key = (
        model_key(name_or_path),  # one load per directory, however it is named
        revision,
        trust_remote_code,
        str(device),
        str(dtype),
        tuple(sorted((k, repr(v)) for k, v in model_kwargs.items())),
    )
    with _cache_lock:
        loaded = _cache.get(key)
        if loaded is None:
            if _kept is not None:  # an unused model is released before other weights are read
                _kept = None
                gc.collect()  # a model's modules can hold reference cycles
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
        _kept = loaded
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
    model.eval()
    files = checkpoint_files(name_or_path, config, revision=revision, **model_kwargs)
    digest = model_digest(model, tokenizer, files)  # before the placeholders and before moving
    placeholder_id, boundary_id = _add_placeholders(model, tokenizer)
    model.to(device)
    return LoadedModel(
        widths=_hidden_state_widths(model, device),
        model=model,
        tokenizer=tokenizer,
        layers=find_decoder_layers(model, num_decoder_layers(config)),
        placeholder_id=placeholder_id,
        boundary_id=boundary_id,
        digest=digest,
        device=device,
        dtype=dtype,
        config=config,
    )
