"""Prompt token ids on the real tokenizers of the paper's models equal the authors' ids.

The ground truth is ``../shared/data/reference_token_ids.json``: the authors' recipe
(``AutoTokenizer`` + ``add_tokens(["<PST>"])`` + the whole prompt string) run under the
transformers version their code pins (4.46.3). transformers 5 tokenizes Llama-2's TP prompts
differently (a lone ``▁`` before ``<PST>``); tp_rag must not.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REAL_TOKENIZER_FOLDERS

from tp_rag import TPEncoder
from tp_rag.prompts import BUILTIN_PROMPTS, clean_sentence


@pytest.fixture(scope="module")
def encoders(real_tokenizer_model: Callable[[str], Path]) -> Callable[[str], TPEncoder]:
    cache: dict[str, TPEncoder] = {}

    def get(folder: str) -> TPEncoder:
        if folder not in cache:
            cache[folder] = TPEncoder.from_pretrained(
                real_tokenizer_model(folder), device="cpu", dtype="float32"
            )
        return cache[folder]

    return get


@pytest.mark.parametrize("folder", REAL_TOKENIZER_FOLDERS)
def test_prompt_ids_equal_the_authors(
    folder: str, encoders: Callable[[str], TPEncoder], reference_token_ids: dict
) -> None:
    """Every built-in prompt, TP on and off, all 24 reference sentences (before truncation)."""
    encoder = encoders(folder)
    reference = reference_token_ids["models"][folder]
    sentences = reference_token_ids["sentences"]
    assert encoder._loaded.placeholder_id == reference["placeholder_id"]
    for name, templates in BUILTIN_PROMPTS.items():
        for key, tp in (("tp_on", True), ("tp_off", False)):
            features = encoder.tokenize(sentences, tp=tp, prompt=name)
            assert not any(f.truncated for f in features)
            for s, sentence in enumerate(sentences):
                for t in range(len(templates)):
                    got = features[s * len(templates) + t].input_ids.tolist()
                    assert got == reference["prompts"][name][key][s][t], (name, key, sentence, t)


@pytest.mark.parametrize("folder", REAL_TOKENIZER_FOLDERS)
def test_placeholder_and_text_mask_on_real_tokenizers(
    folder: str, encoders: Callable[[str], TPEncoder], reference_token_ids: dict
) -> None:
    """<PST> is found (SentencePiece spans start at the ▁); the mean-pooling mask holds the
    sentence's tokens and nothing of the template beyond the quotes around it."""
    encoder = encoders(folder)
    tokenizer = encoder.tokenizer
    sentences = [s for s in reference_token_ids["sentences"] if s.strip()]
    for tp in (True, False):
        for sentence, features in zip(
            sentences, encoder.tokenize(sentences, tp=tp, prompt="pcot"), strict=True
        ):
            ids = features.input_ids
            if tp:
                assert ids[features.placeholder_index] == encoder._loaded.placeholder_id
            else:
                assert features.placeholder_index == -1
            text = clean_sentence(sentence)
            masked = tokenizer.decode(ids[features.text_mask].tolist())
            assert text.strip() in masked, (folder, tp, sentence, masked)
            assert "means" not in masked and "sentence :" not in masked


@pytest.mark.parametrize("folder", REAL_TOKENIZER_FOLDERS)
def test_truncation_cuts_only_the_end_of_the_text(
    folder: str, real_tokenizer_model: Callable[[str], Path], reference_token_ids: dict
) -> None:
    """A cut prompt is the authors' prompt with a run of tokens of the sentence removed just
    before the closing quote: template, <PST> and suffix survive; the text keeps its start."""
    long_index = 8  # "All the same methods of analysis that are used with spoken languages ..."
    sentence = reference_token_ids["sentences"][long_index]
    reference = reference_token_ids["models"][folder]["prompts"]["prompteol"]
    for key, tp in (("tp_on", True), ("tp_off", False)):
        full = reference[key][long_index][0]
        template_only = len(reference[key][21][0])  # the empty sentence
        max_length = template_only + 4
        encoder = TPEncoder.from_pretrained(real_tokenizer_model(folder), max_length=max_length)
        features = encoder.tokenize(sentence, tp=tp)[0]
        got = features.input_ids.tolist()
        assert features.truncated and len(got) == max_length
        excess = len(full) - max_length
        cuts = [i for i in range(len(full) - excess) if full[:i] + full[i + excess :] == got]
        assert cuts, (folder, tp, got, full)
        cut = cuts[-1]
        decode = encoder.tokenizer.decode
        assert decode(full[cut : cut + excess]).strip() in sentence  # only text was removed
        assert decode(full[cut + excess :]).lstrip().startswith(('."', '"'))  # up to its end
        assert "All the" in decode(got)  # the text keeps its start
        if tp:
            assert got[features.placeholder_index] == encoder._loaded.placeholder_id
            assert features.placeholder_index < cut
