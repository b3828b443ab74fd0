"""Tiny random-weight decoder models for offline tests (no hub needed).

>>> from tp_rag.testing import save_tiny_model
>>> path = save_tiny_model("/tmp/tiny-llama", "llama")  # doctest: +SKIP
>>> TPEncoder.from_pretrained(path).encode("hello").shape  # doctest: +SKIP
(64,)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2", "mistral", "gemma2", "gpt2")
"""Architectures the equivalence tests cover; ``tiny_config`` also makes ``opt`` (whose
input embeddings are half as wide as its hidden states, as in OPT-350m)."""

_CHECKPOINT_FILES = {"config.json", "generation_config.json"}  # not part of a tokenizer

_CORPUS = [
    "A man is playing a guitar on the stage.",
    "A woman is slicing an onion in the kitchen.",
    "The cat sleeps on the warm windowsill.",
    "Is it going to rain tomorrow in the city?",
    "Stocks fell sharply after the central bank raised interest rates.",
    "The committee approved the new budget for schools and hospitals.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "The boundary layer thickens downstream of the leading edge of the wing.",
    "Children were laughing while they played football in the park.",
    'This sentence : "means in one word:" After thinking step by step , essence.',
    "In this task, you're given a review. Opinion or Fact? Education, Technology, Health.",
    "0123456789 <>[](){}!?.,;:'\"-_/\\|@#$%^&*+=~`",
]


def tiny_tokenizer(*, add_bos: bool = False, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a small fixed corpus (deterministic)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    if add_bos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def tiny_config(
    architecture: str, *, vocab_size: int, num_layers: int = 4, hidden_size: int = 64
) -> PretrainedConfig:
    """A small config of one of ``ARCHITECTURES``."""
    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    if architecture == "llama":
        return LlamaConfig(**common)
    if architecture == "qwen2":
        return Qwen2Config(**common)
    if architecture == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if architecture == "gemma2":
        return Gemma2Config(**common, head_dim=hidden_size // 4, sliding_window=1024)
    if architecture == "opt":
        return OPTConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            word_embed_proj_dim=hidden_size // 2,  # project_in / project_out, as OPT-350m
            ffn_dim=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            max_position_embeddings=1024,
            do_layer_norm_before=False,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    if architecture == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=4,
            n_positions=1024,
            bos_token_id=1,
            eos_token_id=2,
        )
    known = ", ".join((*ARCHITECTURES, "opt"))
    raise ValueError(f"architecture={architecture!r} is not one of {known}")


def save_tiny_model(
    directory: str | Path,
    architecture: str = "llama",
    *,
    num_layers: int = 4,
    hidden_size: int = 64,
    tokenizer: PreTrainedTokenizerFast | None = None,
    tokenizer_dir: str | Path | None = None,
    vocab_size: int | None = None,
    intermediate_size: int | None = None,
    tie_word_embeddings: bool | None = None,
    seed: int = 0,
) -> Path:
    """Save a random-weight causal LM and its tokenizer (safetensors) into ``directory``.

    ``tokenizer_dir`` copies a real tokenizer's files byte for byte (re-saving one with
    transformers 5 could rewrite its pipeline). ``vocab_size`` (at least the tokenizer's size)
    sizes the embedding table, as real models pad it.

    >>> save_tiny_model("/tmp/llama2", tokenizer_dir="../shared/models/meta-llama--Llama-2-7b-hf",
    ...                 vocab_size=32000)  # doctest: +SKIP
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is not None:
        for file in Path(tokenizer_dir).iterdir():
            if file.is_file() and file.name not in _CHECKPOINT_FILES:
                shutil.copyfile(file, directory / file.name)
    else:
        if tokenizer is None:
            tokenizer = tiny_tokenizer(add_bos=architecture in ("llama", "mistral", "gemma2"))
        tokenizer.save_pretrained(directory)
    # AutoTokenizer may pick an architecture's own tokenizer class, which can add tokens:
    # size the vocabulary on what loading the directory really gives.
    config = tiny_config(architecture, vocab_size=1, num_layers=num_layers, hidden_size=hidden_size)
    config.save_pretrained(directory)  # AutoTokenizer reads the model type from it
    config.vocab_size = max(len(AutoTokenizer.from_pretrained(directory)), vocab_size or 0)
    if intermediate_size is not None:
        config.intermediate_size = intermediate_size
    if tie_word_embeddings is not None:
        config.tie_word_embeddings = tie_word_embeddings
        config.get_text_config().tie_word_embeddings = tie_word_embeddings
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    return directory
