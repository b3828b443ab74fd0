"""Loading: decoder-only check, clear errors, safe defaults, one load per set of weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel, T5Config, T5ForConditionalGeneration

from tp_rag import TPEncoder, loading


def test_encoder_models_are_refused_by_name(tmp_path: Path) -> None:
    """A BERT (encoder) or T5 (encoder-decoder) checkpoint fails, naming what is supported."""
    bert = tmp_path / "bert"
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(bert)
    t5 = tmp_path / "t5"
    T5ForConditionalGeneration(
        T5Config(d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16)
    ).save_pretrained(t5)
    for path, kind in ((bert, "bert"), (t5, "t5")):
        with pytest.raises(ValueError, match=rf"model_type='{kind}'.*decoder-only.*llama"):
            TPEncoder.from_pretrained(path)


def test_missing_model_says_how_to_use_a_local_directory(tmp_path: Path) -> None:
    """A model that cannot be found raises OSError naming it and the local-directory fix."""
    with pytest.raises(OSError, match=r"(?s)could not load model .*nowhere.*local directory"):
        TPEncoder.from_pretrained(tmp_path / "nowhere")


def test_unknown_keyword_lists_valid_settings(tiny_llama: Path) -> None:
    """A misspelt keyword fails before any loading, listing the valid settings."""
    with pytest.raises(TypeError, match=r"output_layr.*valid settings"):
        TPEncoder.from_pretrained(tiny_llama, output_layr=3)


def test_layers_out_of_range_for_this_model(tiny_llama: Path) -> None:
    """Layer settings are checked against the model's depth, with the valid range."""
    with pytest.raises(ValueError, match=r"4 decoder layers.*\[-5, 4\]"):
        TPEncoder.from_pretrained(tiny_llama, output_layer=5)
    with pytest.raises(ValueError, match="1 <= tp_stop <= 4"):
        TPEncoder.from_pretrained(tiny_llama, tp_stop=9)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_requested_without_cuda(tiny_llama: Path) -> None:
    """device='cuda' on a machine without CUDA says so and suggests cpu/auto."""
    with pytest.raises(ValueError, match="CUDA is not available"):
        TPEncoder.from_pretrained(tiny_llama, device="cuda")


def test_trust_remote_code_is_off_unless_asked(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every Hugging Face loader is called with trust_remote_code=False by default."""
    seen: list[tuple[str, object]] = []
    for name in ("AutoConfig", "AutoModel", "AutoTokenizer"):
        cls = getattr(loading, name)
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, _name=name, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code")))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    TPEncoder.from_pretrained(tiny_llama, dtype="float16")  # a fresh load (new cache key)
    assert {name for name, _ in seen} == {"AutoConfig", "AutoModel", "AutoTokenizer"}
    assert all(value is False for _, value in seen), seen


def test_same_weights_load_once(tiny_llama: Path) -> None:
    """Encoders differing only in TP settings share one loaded model."""
    first = TPEncoder.from_pretrained(tiny_llama, dtype="float32")
    count = loading.load_count
    second = TPEncoder.from_pretrained(tiny_llama, dtype="float32", tp=False, tp_stop=3)
    assert loading.load_count == count and second._loaded is first._loaded
    other = TPEncoder.from_pretrained(tiny_llama, dtype="bfloat16")  # other weights in memory
    assert other._loaded is not first._loaded and other._loaded.dtype == torch.bfloat16


def test_loaded_model_is_freed_with_its_last_encoder(tiny_llama: Path) -> None:
    """The cache does not keep models alive: a model goes once no encoder uses it."""
    import gc

    encoder = TPEncoder.from_pretrained(tiny_llama, dtype="float16")
    key_count = len(loading._cache)
    del encoder
    gc.collect()
    assert len(loading._cache) == key_count - 1


def test_fingerprint_uses_weights_not_path(tiny_llama: Path, tmp_path: Path) -> None:
    """The same files in another directory give the same fingerprint; other weights do not."""
    import shutil

    from tp_rag.testing import save_tiny_model

    copy = shutil.copytree(tiny_llama, tmp_path / "copy")
    other = save_tiny_model(tmp_path / "other", "llama", seed=1)
    base = TPEncoder.from_pretrained(tiny_llama).config.fingerprint()
    assert TPEncoder.from_pretrained(copy).config.fingerprint() == base
    assert TPEncoder.from_pretrained(other).config.fingerprint() != base


def test_no_argument_means_the_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """from_pretrained() asks for DEFAULT_MODEL; offline, the error names it and the fix."""
    from tp_rag import DEFAULT_MODEL

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=rf"(?s){DEFAULT_MODEL}.*local directory"):
        TPEncoder.from_pretrained()


def _copy_with(
    source: Path,
    target: Path,
    *,
    weights: Callable | None = None,
    tokenizer: Callable | None = None,
) -> Path:
    """A copy of a model directory with its weights and/or its tokenizer.json edited."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    if weights is not None:
        tensors = load_file(target / "model.safetensors")
        weights(tensors)
        save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        state = json.loads((target / "tokenizer.json").read_text("utf-8"))
        tokenizer(state)
        (target / "tokenizer.json").write_text(json.dumps(state), "utf-8")
    return target


def _lora_update(tensors: dict) -> None:
    """A merged rank-2 LoRA on one projection, 1e-3 of the matrix's size (Frobenius norm)."""
    weight = tensors["model.layers.1.self_attn.q_proj.weight"]
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(2, weight.shape[1], generator=generator)
    b = torch.randn(weight.shape[0], 2, generator=generator)
    delta = b @ a
    weight += delta * (1e-3 * weight.norm() / delta.norm())


def _one_embedding_row(tensors: dict) -> None:
    tensors["model.embed_tokens.weight"][7] *= 1.01


def _swap_two_vocab_ids(state: dict) -> None:
    vocab = state["model"]["vocab"]
    first, second = (token for token, i in vocab.items() if i in (100, 101))
    vocab[first], vocab[second] = vocab[second], vocab[first]


def _drop_last_merge(state: dict) -> None:
    state["model"]["merges"].pop()


def _add_a_token(state: dict) -> None:
    size = len(state["model"]["vocab"])
    state["added_tokens"].append(
        {
            "id": size,
            "content": "<extra>",
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": True,
            "special": False,
        }
    )


def _lowercase(state: dict) -> None:
    state["normalizer"] = {"type": "Lowercase"}


@pytest.mark.parametrize(
    ("weights", "tokenizer"),
    [
        (_lora_update, None),
        (_one_embedding_row, None),
        (None, _swap_two_vocab_ids),
        (None, _drop_last_merge),
        (None, _add_a_token),
        (None, _lowercase),
    ],
    ids=["lora-1e-3", "embedding-row", "vocab", "merges", "added-token", "normalizer"],
)
def test_fingerprint_changes_with_any_weight_or_tokenizer_change(
    tiny_llama: Path, tmp_path: Path, weights: Callable | None, tokenizer: Callable | None
) -> None:
    """A light fine-tune (merged LoRA at 1e-3), one edited embedding row, or any change to the
    tokenizer (vocabulary, merges, added tokens, normalizer) gives another fingerprint."""
    base = TPEncoder.from_pretrained(tiny_llama, dtype="float32").config.fingerprint()
    changed = _copy_with(tiny_llama, tmp_path / "changed", weights=weights, tokenizer=tokenizer)
    assert TPEncoder.from_pretrained(changed, dtype="float32").config.fingerprint() != base


def test_fingerprint_is_the_same_in_float32_and_bfloat16(tiny_llama: Path, tmp_path: Path) -> None:
    """The documented promise: the same checkpoint loaded in float32 or bfloat16 is the same
    space, also for a checkpoint stored in bfloat16."""
    fp32 = TPEncoder.from_pretrained(tiny_llama, dtype="float32").config.fingerprint()
    assert TPEncoder.from_pretrained(tiny_llama, dtype="bfloat16").config.fingerprint() == fp32

    def to_bf16(tensors: dict) -> None:
        for name, tensor in tensors.items():
            tensors[name] = tensor.to(torch.bfloat16)

    stored_bf16 = _copy_with(tiny_llama, tmp_path / "bf16", weights=to_bf16)
    got = {
        TPEncoder.from_pretrained(stored_bf16, dtype=dtype).config.fingerprint()
        for dtype in ("float32", "bfloat16")
    }
    assert got == {fp32}  # rounding the float32 weights to bfloat16 loses nothing the digest saw
