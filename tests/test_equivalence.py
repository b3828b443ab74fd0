"""The encoder computes exactly the paper's Token Prepending, checked against a hand-written loop.

The reference below does not use tp_rag's loading, tokenization, batching or hooks: it follows
the recipe literally (``tokenizer.add_tokens(["<PST>"])``, resize the embeddings, set the new
row by the documented rule), tokenizes the whole prompt string at once, and walks the decoder
layers itself, overwriting the placeholder's hidden state with the last token's before each TP
layer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tp_rag import BUILTIN_PROMPTS, TPEncoder
from tp_rag.testing import ARCHITECTURES

REAL_VOCABULARIES = (
    "meta-llama--Llama-2-7b-hf",  # 32,000 rows: <PST> needs a new one
    "Qwen--Qwen2.5-0.5B-Instruct",  # 151,936 rows: <PST> (151,665) is an untrained padding row
    "google--gemma-2-9b-it",  # 256,000 rows, tied embeddings
    "meta-llama--Meta-Llama-3-8B",  # 128,256 rows
    "mistralai--Mistral-7B-v0.1",  # 32,000 rows
)

TEXTS = [
    "A man is playing a guitar on the stage.",
    "Stocks fell.",
    "The boundary layer thickens downstream of the leading edge of the wing.",
]
TP_START, TP_STOP = 1, 3


def load_reference(model_dir: Path) -> tuple[torch.nn.Module, object, int]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.add_tokens(["<PST>"])
    pst_id = tokenizer.convert_tokens_to_ids("<PST>")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():  # the documented rule: mean of the rows before <PST>
        weight = model.get_input_embeddings().weight
        weight[pst_id] = weight[:pst_id].mean(0)
    return model, tokenizer, pst_id


@torch.no_grad()
def reference_vector(
    model: torch.nn.Module,
    tokenizer: object,
    pst_id: int,
    prompt: str,
    *,
    tp: bool,
    output_layer: int,
    mean_over: tuple[int, int] | None = None,
) -> np.ndarray:
    """The last token's state, or with ``mean_over=(start, end)`` (a character span of the
    prompt) the mean over the tokens that overlap it."""
    encoding = tokenizer(prompt, return_offsets_mapping=True)  # type: ignore[operator]
    states = hidden_states_loop(model, encoding["input_ids"], pst_id, tp=tp)
    if mean_over is None:
        return states[output_layer][0, -1].numpy()
    start, end = mean_over
    rows = [i for i, (s, e) in enumerate(encoding["offset_mapping"]) if s < end and e > start]
    return states[output_layer][0, rows].mean(0).numpy()


@torch.no_grad()
def hidden_states_loop(
    model: torch.nn.Module, input_ids: list[int], pst_id: int, *, tp: bool
) -> list[torch.Tensor]:
    """``hidden_states`` of one prompt by walking the decoder layers by hand, overwriting the
    placeholder's state with the last token's before each TP layer."""
    ids = torch.tensor([input_ids])
    seq = ids.shape[1]
    positions = torch.arange(seq)[None]
    base = model.base_model
    is_gpt2 = hasattr(base, "wpe")
    hidden = base.get_input_embeddings()(ids)
    if is_gpt2:
        hidden = hidden + base.wpe(positions)
    causal = torch.full((seq, seq), float("-inf")).triu(1)[None, None]
    rotary = base.rotary_emb(hidden, positions) if hasattr(base, "rotary_emb") else None
    layers = base.h if is_gpt2 else base.layers
    states = [hidden]
    for index, layer in enumerate(layers):
        if tp and TP_START <= index < TP_STOP:
            placeholder = int((ids[0] == pst_id).nonzero()[0])
            hidden = hidden.clone()
            hidden[0, placeholder] = hidden[0, -1]
        if is_gpt2:
            hidden = layer(hidden, None, causal)
        else:
            hidden = layer(
                hidden, attention_mask=causal, position_embeddings=rotary, position_ids=positions
            )
        states.append(hidden)
    states[-1] = (base.ln_f if is_gpt2 else base.norm)(hidden)
    return states


def fill(template: str, text: str, *, tp: bool) -> str:
    return template.replace("{pst}", "<PST> " if tp else "").replace("{text}", text)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_encoder_equals_hand_written_tp(tiny_models: dict[str, Path], architecture: str) -> None:
    """Every built-in prompt, TP on and off, two readout layers: max abs diff <= 1e-5 (fp32)."""
    model_dir = tiny_models[architecture]
    model, tokenizer, pst_id = load_reference(model_dir)
    base = TPEncoder.from_pretrained(
        model_dir,
        tp_start=TP_START,
        tp_stop=TP_STOP,
        normalize=False,
        device="cpu",
        dtype="float32",
    )
    for prompt in sorted(BUILTIN_PROMPTS):
        for output_layer in (2, -1):  # early exit inside the stack; the final norm's output
            encoder = base.with_settings(prompt=prompt, output_layer=output_layer)
            for tp in (True, False):
                got = encoder.encode(TEXTS, tp=tp)  # texts need no clean-up: they end in "."
                for row, text in enumerate(TEXTS):
                    vectors = [
                        reference_vector(
                            model,
                            tokenizer,
                            pst_id,
                            fill(template, text, tp=tp),
                            tp=tp,
                            output_layer=output_layer,
                        )
                        for template in BUILTIN_PROMPTS[prompt]
                    ]
                    expected = np.mean(vectors, axis=0)  # MetaEOL averages its 8 prompts
                    case = (prompt, output_layer, tp, text)
                    assert np.abs(got[row] - expected).max() <= 1e-5, case


def test_tp_changes_the_vector_and_off_equals_no_placeholder(tiny_llama: Path) -> None:
    """TP on differs from TP off (the overwrite is live); TP off has no <PST> in its prompt."""
    model, tokenizer, pst_id = load_reference(tiny_llama)
    encoder = TPEncoder.from_pretrained(
        tiny_llama, tp_start=TP_START, tp_stop=TP_STOP, output_layer=-1, normalize=False
    )
    on = encoder.encode(TEXTS[0])
    off = encoder.encode(TEXTS[0], tp=False)
    assert np.abs(on - off).max() > 1e-3
    template = BUILTIN_PROMPTS["prompteol"][0]
    # Same prompt with the placeholder but no overwrite: differs from TP on, so the hooks matter.
    no_overwrite = reference_vector(
        model, tokenizer, pst_id, fill(template, TEXTS[0], tp=True), tp=False, output_layer=-1
    )
    assert np.abs(on - no_overwrite).max() > 1e-4


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_mean_pooling_equals_mean_over_the_texts_tokens(
    tiny_models: dict[str, Path], architecture: str
) -> None:
    """pooling='mean' averages the readout over the sentence's own tokens only."""
    model_dir = tiny_models[architecture]
    model, tokenizer, pst_id = load_reference(model_dir)
    encoder = TPEncoder.from_pretrained(
        model_dir,
        tp_start=TP_START,
        tp_stop=TP_STOP,
        output_layer=2,
        pooling="mean",
        normalize=False,
    )
    template = BUILTIN_PROMPTS["prompteol"][0]
    for tp in (True, False):
        got = encoder.encode(TEXTS, tp=tp)
        for row, text in enumerate(TEXTS):
            prompt = fill(template, text, tp=tp)
            start = prompt.index(text)
            expected = reference_vector(
                model,
                tokenizer,
                pst_id,
                prompt,
                tp=tp,
                output_layer=2,
                mean_over=(start, start + len(text)),
            )
            assert np.abs(got[row] - expected).max() <= 1e-5, (tp, text)


@pytest.mark.parametrize("folder", REAL_VOCABULARIES)
def test_encoder_equals_hand_written_tp_on_real_vocabularies(
    folder: str, real_tokenizer_model: Callable[[str], Path], reference_token_ids: dict
) -> None:
    """Tiny models carrying the paper's real tokenizers and vocabulary sizes: the encoder's
    vectors equal the hand-written loop fed the authors' own prompt ids (transformers 4.46.3),
    every built-in prompt, TP on and off, two readout layers (max abs diff <= 1e-5, fp32)."""
    model_dir = real_tokenizer_model(folder)
    reference = reference_token_ids["models"][folder]
    pst_id = reference["placeholder_id"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():  # the documented rule, for a new row and for a padding row alike
        if pst_id >= model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(pst_id + 1, mean_resizing=False)
        weight = model.get_input_embeddings().weight
        weight[pst_id] = weight[:pst_id].mean(0)
    sentence_ids = (0, 12, 16)  # plain; quotes inside; leading and trailing spaces
    sentences = [reference_token_ids["sentences"][i] for i in sentence_ids]
    base = TPEncoder.from_pretrained(
        model_dir, tp_start=TP_START, tp_stop=TP_STOP, normalize=False, device="cpu"
    )
    for prompt, templates in BUILTIN_PROMPTS.items():
        for key, tp in (("tp_on", True), ("tp_off", False)):
            states = {
                (s, t): hidden_states_loop(
                    model, reference["prompts"][prompt][key][s][t], pst_id, tp=tp
                )
                for s in sentence_ids
                for t in range(len(templates))
            }
            for output_layer in (2, -1):
                encoder = base.with_settings(prompt=prompt, output_layer=output_layer)
                got = encoder.encode(sentences, tp=tp)
                for row, s in enumerate(sentence_ids):
                    expected = np.mean(
                        [states[s, t][output_layer][0, -1].numpy() for t in range(len(templates))],
                        axis=0,
                    )
                    case = (folder, prompt, key, output_layer, s)
                    assert np.abs(got[row] - expected).max() <= 1e-5, case
