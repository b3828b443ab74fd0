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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every Hugging Face loader is called with trust_remote_code=False by default."""
    from tp_rag.testing import save_tiny_model

    fresh = save_tiny_model(tmp_path / "fresh", "llama")  # in no cache: every loader runs
    seen: list[tuple[str, object]] = []
    for name in ("AutoConfig", "AutoModel", "AutoTokenizer"):
        cls = getattr(loading, name)
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, _name=name, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code")))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    TPEncoder.from_pretrained(fresh, dtype="float16")
    assert {name for name, _ in seen} == {"AutoConfig", "AutoModel", "AutoTokenizer"}
    assert all(value is False for _, value in seen), seen


def test_same_weights_load_once(tiny_llama: Path, weight_reads: list[str]) -> None:
    """Encoders differing only in TP settings share one loaded model."""
    first = TPEncoder.from_pretrained(tiny_llama, dtype="float32")
    count = len(weight_reads)
    second = TPEncoder.from_pretrained(tiny_llama, dtype="float32", tp=False, tp_stop=3)
    assert len(weight_reads) == count and second._loaded is first._loaded
    other = TPEncoder.from_pretrained(tiny_llama, dtype="bfloat16")  # other weights in memory
    assert len(weight_reads) == count + 1
    assert other._loaded is not first._loaded and other._loaded.dtype == torch.bfloat16


def test_the_last_model_stays_loaded_until_another_is_requested(
    tmp_path: Path, weight_reads: list[str]
) -> None:
    """The cache's retention policy: a model nothing uses stays loaded while it is the most
    recently requested one (rebuilding its encoder reads no weights and no config file), and is
    freed once another model is requested, or by ``release_unused``."""
    import gc
    import weakref

    from tp_rag.testing import save_tiny_model

    path = save_tiny_model(tmp_path / "kept", "llama", num_layers=2, hidden_size=32)
    other = save_tiny_model(tmp_path / "other", "qwen2", num_layers=2, hidden_size=32)
    encoder = TPEncoder.from_pretrained(path, tp_stop=2)
    model = weakref.ref(encoder._loaded)
    del encoder
    gc.collect()
    assert model() is not None  # nothing uses it, but it is the most recent model
    (path / "config.json").rename(path / "config.moved")  # the cache must not need it again
    again = TPEncoder.from_pretrained(path, tp=False)
    assert again._loaded is model() and weight_reads == [str(path)]
    (path / "config.moved").rename(path / "config.json")

    del again
    kept = TPEncoder.from_pretrained(other)  # another model requested: the unused one goes
    gc.collect()
    assert model() is None
    assert weight_reads == [str(path), str(other)]

    second = weakref.ref(kept._loaded)
    del kept
    loading.release_unused()
    gc.collect()
    assert second() is None


def test_a_model_in_use_stays_shared_whatever_else_is_loaded(
    tiny_llama: Path, tmp_path: Path, weight_reads: list[str]
) -> None:
    """A model an encoder still uses is never dropped: later requests for it share it."""
    from tp_rag.testing import save_tiny_model

    first = TPEncoder.from_pretrained(tiny_llama, dtype="float16")
    for seed in (1, 2):  # other models requested in between
        TPEncoder.from_pretrained(save_tiny_model(tmp_path / f"m{seed}", "llama", seed=seed))
    reads = len(weight_reads)
    assert TPEncoder.from_pretrained(tiny_llama, dtype="float16")._loaded is first._loaded
    assert len(weight_reads) == reads


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


def test_fingerprint_is_the_same_in_every_loading_dtype(tiny_llama: Path, tmp_path: Path) -> None:
    """The documented promise: the same checkpoint loaded in float32, bfloat16 or float16 is the
    same space (the digest reads the stored tensors, not the loaded ones), also for a checkpoint
    stored in bfloat16; storing other values (the float32 weights rounded to bfloat16) is
    another checkpoint, whose float32 vectors differ."""
    dtypes = ("float32", "bfloat16", "float16")
    fp32 = TPEncoder.from_pretrained(tiny_llama, dtype="float32")
    got = {TPEncoder.from_pretrained(tiny_llama, dtype=d).config.fingerprint() for d in dtypes}
    assert got == {fp32.config.fingerprint()}

    def to_bf16(tensors: dict) -> None:
        for name, tensor in tensors.items():
            tensors[name] = tensor.to(torch.bfloat16)

    stored_bf16 = _copy_with(tiny_llama, tmp_path / "bf16", weights=to_bf16)
    encoders = [TPEncoder.from_pretrained(stored_bf16, dtype=d) for d in dtypes]
    assert len({e.config.fingerprint() for e in encoders}) == 1
    assert encoders[0].config.fingerprint() != fp32.config.fingerprint()
    text = "A man plays a guitar."
    assert not torch.equal(
        torch.from_numpy(encoders[0].encode(text)), torch.from_numpy(fp32.encode(text))
    )


def _edit_config(source: Path, target: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of a model directory whose config.json is edited."""
    import json
    import shutil

    shutil.copytree(source, target)
    state = json.loads((target / "config.json").read_text("utf-8"))
    edit(state)
    (target / "config.json").write_text(json.dumps(state), "utf-8")
    return target


@pytest.mark.parametrize(
    "change",
    [
        {"rms_norm_eps": 0.5},
        {"hidden_act": "gelu"},
        {"rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}},
        {"rope_theta": 5e5, "rope_parameters": None},  # the older spelling, as Llama-2 has it
    ],
    ids=["rms_norm_eps", "hidden_act", "rope_parameters", "rope_theta"],
)
def test_fingerprint_changes_with_the_model_config(
    tiny_llama: Path, tmp_path: Path, change: dict
) -> None:
    """A copy of a model whose config changes the forward pass (its vectors differ) is
    another space, although its weights and tokenizer are the same bytes."""

    def edit(state: dict) -> None:
        state.update(change)
        if state.get("rope_parameters") is None:
            state.pop("rope_parameters")

    texts = ["A man plays a guitar.", "The cat sleeps on the warm windowsill."]
    base = TPEncoder.from_pretrained(tiny_llama, dtype="float32")
    changed = TPEncoder.from_pretrained(
        _edit_config(tiny_llama, tmp_path / "c", edit), dtype="float32"
    )
    assert not torch.allclose(
        torch.from_numpy(changed.encode(texts)), torch.from_numpy(base.encode(texts)), atol=1e-4
    )  # the config really changes the vectors
    assert changed.config.fingerprint() != base.config.fingerprint()
    assert (
        changed.config.replace(tp=False).fingerprint()
        != base.config.replace(tp=False).fingerprint()
    )


def test_fingerprint_ignores_config_values_that_do_not_change_vectors(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """Provenance, the cache switch, the stored dtype label and generation settings in
    config.json change no vector, so they keep the fingerprint."""

    def edit(state: dict) -> None:
        state.update(
            transformers_version="4.46.3",
            _name_or_path="someone/else",
            use_cache=False,
            architectures=["LlamaModel"],
            temperature=0.3,
            max_length=77,
            do_sample=True,
        )

    texts = ["A man plays a guitar.", "The cat sleeps on the warm windowsill."]
    base = TPEncoder.from_pretrained(tiny_llama, dtype="float32")
    same = TPEncoder.from_pretrained(
        _edit_config(tiny_llama, tmp_path / "s", edit), dtype="float32"
    )
    assert torch.equal(torch.from_numpy(same.encode(texts)), torch.from_numpy(base.encode(texts)))
    assert same.config.fingerprint() == base.config.fingerprint()


def test_tp_off_fingerprint_does_not_depend_on_the_tp_layers(tiny_llama: Path) -> None:
    """TP off runs no TP layer: other tp_start/tp_stop give the same vectors and fingerprint
    (TP on they differ)."""
    encoder = TPEncoder.from_pretrained(tiny_llama, dtype="float32", tp_start=0, tp_stop=2)
    other = encoder.with_settings(tp_start=1, tp_stop=4)
    texts = ["A man plays a guitar.", "Is it raining?"]
    off, other_off = encoder.encode(texts, tp=False), other.encode(texts, tp=False)
    assert torch.equal(torch.from_numpy(off), torch.from_numpy(other_off))
    assert (
        encoder.config.replace(tp=False).fingerprint()
        == other.config.replace(tp=False).fingerprint()
    )
    assert encoder.config.fingerprint() != other.config.fingerprint()


def _as_bin_checkpoint(source: Path, target: Path) -> Path:
    """A copy whose weights are a pytorch_model.bin (no safetensors)."""
    import shutil

    from safetensors.torch import load_file

    shutil.copytree(source, target)
    torch.save(load_file(target / "model.safetensors"), target / "pytorch_model.bin")
    (target / "model.safetensors").unlink()
    return target


def test_checkpoints_without_safetensors_are_digested_as_loaded(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """The fallback for a .bin checkpoint (or a model built in memory): the loaded tensors,
    dtype included. Stable across loads, sensitive to a weight, and a float32 and a bfloat16
    load count as two spaces (nothing proves they come from the same stored values)."""
    import shutil

    binary = _as_bin_checkpoint(tiny_llama, tmp_path / "bin")
    assert loading.checkpoint_files(str(binary), loading.load_config(str(binary))) is None
    fp32 = TPEncoder.from_pretrained(binary, dtype="float32").config.fingerprint()
    again = shutil.copytree(binary, tmp_path / "bin-again")  # another path: a second load
    assert TPEncoder.from_pretrained(again, dtype="float32").config.fingerprint() == fp32
    assert TPEncoder.from_pretrained(binary, dtype="bfloat16").config.fingerprint() != fp32

    edited = _copy_with(tiny_llama, tmp_path / "edited", weights=_one_embedding_row)
    edited_bin = _as_bin_checkpoint(edited, tmp_path / "edited-bin")
    assert TPEncoder.from_pretrained(edited_bin, dtype="float32").config.fingerprint() != fp32

    # A model built in memory: the same digest function, no files.
    model = TPEncoder.from_pretrained(tiny_llama, dtype="float32")._loaded.model
    tokenizer = loading.load_tokenizer(str(tiny_llama))
    digest = loading.model_digest(model, tokenizer)
    assert len(digest) == 32 and digest == loading.model_digest(model, tokenizer, files=None)


def test_sharded_safetensors_digest_every_shard(tiny_llama: Path, tmp_path: Path) -> None:
    """A checkpoint split into shards (model.safetensors.index.json) is digested from all its
    shards: the same tensors sharded are the same space, a change in the second shard is
    another."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    def shard(target: Path, scale: float) -> Path:
        shutil.copytree(tiny_llama, target)
        tensors = load_file(target / "model.safetensors")
        (target / "model.safetensors").unlink()
        names = sorted(tensors)
        halves = {
            "model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2],
        }
        for file, part in halves.items():
            save_file({n: tensors[n] for n in part}, target / file, metadata={"format": "pt"})
        last = halves["model-00002-of-00002.safetensors"][-1]
        second = load_file(target / "model-00002-of-00002.safetensors")
        second[last] = second[last] * scale
        save_file(second, target / "model-00002-of-00002.safetensors", metadata={"format": "pt"})
        weight_map = {n: f for f, part in halves.items() for n in part}
        index = {"metadata": {}, "weight_map": weight_map}
        (target / "model.safetensors.index.json").write_text(json.dumps(index), "utf-8")
        return target

    same, changed = shard(tmp_path / "same", 1.0), shard(tmp_path / "changed", 1.5)
    files = loading.checkpoint_files(str(same), loading.load_config(str(same)))
    assert files is not None and len(files) == 2
    base, sharded, other = (
        TPEncoder.from_pretrained(p, dtype="float32").config.fingerprint()
        for p in (tiny_llama, same, changed)
    )
    assert sharded == base and other != base
