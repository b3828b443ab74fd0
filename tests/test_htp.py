"""Hierarchical Token Prepending (``method="htp"``) and the query side, against a hand-written
reference.

The reference embeds one text at a time with no padding: it splits the text with sentencex
itself, tokenizes the filled template, appends the model's EOS, inserts the placeholder ids by
hand (``<B-PST>`` x n where the text starts, ``<PST>`` before each sentence), takes each
sentence's source by the rule of the HTP paper (its own last token; the last sentence's: the
first token after the text, the EOS), calls the decoder layers one by one and does the
overwrites by hand. It shares with tp_rag only the
tokenizer object (tp_rag's tokenization of whole prompt strings is pinned to the TP authors'
ids by tests/test_real_tokenizers.py) and the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import sentencex
import torch
from transformers import AutoModelForCausalLM

from tp_rag import TPConfig, TPEncoder
from tp_rag.presets import htp_depth_rule
from tp_rag.prompts import BUILTIN_PROMPTS, HTP_PROMPTS

VOCABULARIES = (
    "meta-llama--Llama-2-7b-hf",  # SentencePiece, BOS, <PST> and <B-PST> need new rows
    "Qwen--Qwen2.5-0.5B-Instruct",  # byte-level BPE, no BOS, untrained padding rows
    "google--gemma-2-9b-it",  # SentencePiece, BOS, tied embeddings
    "mistralai--Mistral-7B-v0.1",
)
PASSAGES = [
    "The wing stalls at high angles of attack. Lift then drops sharply. Pilots recover by "
    "lowering the nose.",
    "Stocks fell.",
    "Boundary layers thicken downstream! Do they separate? Sometimes they do, near the edge.",
    "no sentence punctuation at all in this one",
    "Dr. Smith met Mr. Jones at 5 p.m. yesterday. They talked about jet engines.",
    "Line one of a list\n\nLine two of the list.",
    "今天天气很好。我们去公园吧！",
    "",
]
TP_START, TP_STOP = 1, 3
QUERY = "Retrieve relevant document. Text:{text}"


def sentences(text: str) -> list[str]:
    """The reference's own split: sentencex's sentences, blank ones dropped."""
    return [s for s in sentencex.segment("en", text) if s.strip()]


def reference_model(model_dir: Path, encoder: TPEncoder) -> torch.nn.Module:
    """The checkpoint with the documented rule for new placeholder rows: the mean of the rows
    below the first new id."""
    pst, bpst = encoder.tokenizer.convert_tokens_to_ids(["<PST>", "<B-PST>"])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        if bpst >= model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(bpst + 1, mean_resizing=False)
        weight = model.get_input_embeddings().weight
        weight[pst : bpst + 1] = weight[:pst].mean(0)
    return model


@torch.no_grad()
def reference_states(
    model: torch.nn.Module, ids: list[int], pairs: list[tuple[int, int]]
) -> list[torch.Tensor]:
    """``hidden_states`` of one prompt, walking the decoder layers by hand; before each TP
    layer every placeholder gets its source's state (all sources read first)."""
    tokens = torch.tensor([ids])
    seq = tokens.shape[1]
    positions = torch.arange(seq)[None]
    base = model.base_model
    hidden = base.get_input_embeddings()(tokens)  # (Gemma's table scales its own rows)
    causal = torch.full((seq, seq), float("-inf")).triu(1)[None, None]
    rotary = base.rotary_emb(hidden, positions)
    states = [hidden]
    for index, layer in enumerate(base.layers):
        if pairs and TP_START <= index < TP_STOP:
            hidden = hidden.clone()
            copies = {source: hidden[0, source].clone() for _, source in pairs}
            for placeholder, source in pairs:
                hidden[0, placeholder] = copies[source]
        hidden = layer(
            hidden, attention_mask=causal, position_embeddings=rotary, position_ids=positions
        )
        if isinstance(hidden, tuple):
            hidden = hidden[0]
        states.append(hidden)
    states[-1] = base.norm(hidden)
    return states


def reference_htp(
    model: torch.nn.Module,
    tokenizer: object,
    template: str,
    text: str,
    *,
    on: bool,
    layers: tuple[int, ...],
) -> dict[int, np.ndarray]:
    """Mean over the text's own tokens at each layer of ``layers``.

    The prompt is the template filled with the text, tokenized whole, with the EOS after it;
    with HTP on, n ``<B-PST>`` ids go before the text's first token and a ``<PST>`` id before
    the first token of each sentence (sentence k starts where sentence k-1's last non-blank
    character ends)."""
    before, after = template.split("{text}")
    prompt = before + text + after
    encoding = tokenizer(prompt, return_offsets_mapping=True)  # type: ignore[operator]
    tokens = [*encoding["input_ids"], tokenizer.eos_token_id]  # type: ignore[attr-defined]
    spans = [*encoding["offset_mapping"], (len(prompt), len(prompt))]
    pst, bpst = tokenizer.convert_tokens_to_ids(["<PST>", "<B-PST>"])  # type: ignore[attr-defined]
    ends, position = [], len(before)
    for segment in sentencex.segment("en", text):
        if segment.strip():
            ends.append(position + len(segment.rstrip()))
        position += len(segment)
    starts = [len(before), *ends[:-1]] if on and ends else []
    # Insert by hand: before the first token with a character at or past each start.
    ids: list[int] = []
    is_text: list[bool] = []
    psts: list[int] = []
    for token, (s, e) in zip(tokens, spans, strict=True):
        starting = [k for k, start in enumerate(starts) if e > start and k >= len(psts)]
        if starting and not psts:
            ids += [bpst] * len(starts)
            is_text += [False] * len(starts)
        for _ in starting:
            psts.append(len(ids))
            ids.append(pst)
            is_text.append(False)
        ids.append(token)
        is_text.append(s < len(before) + len(text) and e > len(before))
    assert len(psts) == len(starts) == (len(sentences(text)) if on else 0)
    last_text = max(i for i, t in enumerate(is_text) if t) if any(is_text) else 0
    assert not psts or ids[last_text + 1] == tokenizer.eos_token_id  # type: ignore[attr-defined]
    sources = [p - 1 for p in psts[1:]] + [last_text + 1] if psts else []
    bpsts = [i for i, t in enumerate(ids) if t == bpst]
    pairs = list(zip(psts, sources, strict=True)) + list(zip(bpsts, sources, strict=True))
    states = reference_states(model, ids, pairs)
    rows = [i for i, t in enumerate(is_text) if t]
    out = {}
    for layer in layers:
        hidden = states[layer][0]
        out[layer] = (hidden[rows].mean(0) if rows else torch.zeros(hidden.shape[1])).numpy()
    return out


@pytest.fixture(scope="module")
def htp_encoders(real_tokenizer_model: Callable[[str], Path]) -> Callable[[str], TPEncoder]:
    cache: dict[str, TPEncoder] = {}

    def get(folder: str) -> TPEncoder:
        if folder not in cache:
            cache[folder] = TPEncoder.from_pretrained(
                real_tokenizer_model(folder),
                method="htp",
                tp_start=TP_START,
                tp_stop=TP_STOP,
                normalize=False,
                device="cpu",
                dtype="float32",
            )
        return cache[folder]

    return get


@pytest.mark.parametrize("folder", VOCABULARIES)
def test_htp_equals_hand_written_reference(
    folder: str,
    real_tokenizer_model: Callable[[str], Path],
    htp_encoders: Callable[[str], TPEncoder],
) -> None:
    """Batched HTP (mixed lengths, left padding, several token-budget batches, early exit and
    the final norm) equals the per-text reference, HTP on and off, documents and queries,
    max abs diff <= 1e-5 (float32)."""
    encoder = htp_encoders(folder)
    model = reference_model(real_tokenizer_model(folder), encoder)
    layers = (3, 2, -1)  # HTP's default (L-1 of 4: before the last layer), early exit, last
    for query, template in ((False, "{text}"), (True, QUERY)):
        for on in (True, False):
            got = encoder.encode_layers(
                PASSAGES, layers, tp=on, query=query, batch_size=3, show_progress=False
            )
            alone = encoder.encode(PASSAGES[0], tp=on, query=query)
            for row, text in enumerate(PASSAGES):
                expected = reference_htp(
                    model, encoder.tokenizer, template, text, on=on, layers=layers
                )
                for layer in layers:
                    case = (folder, query, on, layer, text)
                    assert np.abs(got[layer][row] - expected[layer]).max() <= 1e-5, case
            assert np.abs(alone - got[3][0]).max() <= 1e-5


@pytest.mark.parametrize("folder", VOCABULARIES)
def test_tp_query_prompt_equals_hand_written_reference(
    folder: str, real_tokenizer_model: Callable[[str], Path]
) -> None:
    """TP with a query prompt: ``query=True`` embeds with it, documents keep ``prompt``; both
    equal the reference (one pair: <PST> <- the last token, last-token readout)."""
    model_dir = real_tokenizer_model(folder)
    encoder = TPEncoder.from_pretrained(
        model_dir,
        prompt="prompteol",
        query_prompt="pcot",
        tp_start=TP_START,
        tp_stop=TP_STOP,
        output_layer=2,
        normalize=False,
        device="cpu",
    )
    model = reference_model(model_dir, encoder)
    texts = ["A man is playing a guitar.", "Stocks fell sharply after the central bank acted."]
    pst = encoder.tokenizer.convert_tokens_to_ids("<PST>")
    for query, name in ((False, "prompteol"), (True, "pcot")):
        for on in (True, False):
            got = encoder.encode(texts, tp=on, query=query)
            for row, text in enumerate(texts):
                template = BUILTIN_PROMPTS[name][0]
                prompt = template.replace("{pst}", "<PST> " if on else "").replace("{text}", text)
                ids = encoder.tokenizer(prompt)["input_ids"]
                pairs = [(ids.index(pst), len(ids) - 1)] if on else []
                expected = reference_states(model, ids, pairs)[2][0, -1].numpy()
                assert np.abs(got[row] - expected).max() <= 1e-5, (folder, query, on, text)


@pytest.mark.parametrize("folder", VOCABULARIES)
def test_htp_token_structure(folder: str, htp_encoders: Callable[[str], TPEncoder]) -> None:
    """Per sentence one <PST> before it and one <B-PST> at the start of the text; sentence k's
    source is its last token, the last sentence's is the EOS; the mask is the text alone."""
    encoder = htp_encoders(folder)
    tokenizer = encoder.tokenizer
    pst, bpst = tokenizer.convert_tokens_to_ids(["<PST>", "<B-PST>"])
    passage = "The wing stalls at high angles. Lift drops sharply! Why does it happen? It is drag."
    parts = ["The wing stalls at high angles.", "Lift drops sharply!", "Why does it happen?"]
    parts.append("It is drag.")
    for query in (False, True):
        f = encoder.tokenize(passage, query=query)[0]
        ids = f.input_ids
        n = len(parts)
        assert len(f.placeholders) == len(f.sources) == 2 * n
        assert (ids[f.placeholders[:n]] == pst).all() and (ids[f.placeholders[n:]] == bpst).all()
        assert (ids == pst).sum() == n and (ids == bpst).sum() == n
        bpsts, psts = f.placeholders[n:], f.placeholders[:n]
        assert bpsts.tolist() == list(range(bpsts[0], bpsts[0] + n))  # together, at the start
        assert psts[0] == bpsts[-1] + 1  # ... right before the first sentence
        assert (f.sources[:n] == f.sources[n:]).all()
        assert f.sources[: n - 1].tolist() == (psts[1:] - 1).tolist()
        assert f.sources[n - 1] == len(ids) - 1 and ids[-1] == tokenizer.eos_token_id
        ends = [*psts[1:].tolist(), len(ids) - 1]
        for k, part in enumerate(parts):
            # (Qwen's pre-tokenizer joins the template's ":" to the text's first word.)
            decoded = tokenizer.decode(ids[psts[k] + 1 : ends[k]]).strip()
            assert decoded == part or (query and k == 0 and decoded == ":" + part), decoded
        assert not f.text_mask[f.placeholders].any() and not f.text_mask[-1]
        masked = tokenizer.decode(ids[f.text_mask]).replace(" ", "")
        assert masked.removeprefix(":" if query else "") == passage.replace(" ", "")
        if query:
            assert "Retrieve relevant document" in tokenizer.decode(ids[: bpsts[0]])
        off = encoder.tokenize(passage, query=query, tp=False)[0]
        assert len(off.placeholders) == 0 and len(off.input_ids) == len(ids) - 2 * n


@pytest.mark.parametrize("folder", VOCABULARIES)
def test_htp_truncation_keeps_every_placeholder_with_its_source(
    folder: str, htp_encoders: Callable[[str], TPEncoder]
) -> None:
    """For every max_length from the shortest possible to the full length: the text is cut at
    its end, the template and EOS stay, <B-PST> count = <PST> count = sentences kept, each
    source is a kept sentence's last token (or the EOS), and a sentence longer than max_length
    is cut inside itself."""
    base = htp_encoders(folder)
    tokenizer = base.tokenizer
    pst, bpst = tokenizer.convert_tokens_to_ids(["<PST>", "<B-PST>"])
    passage = (
        "Short one. A much longer second sentence about the boundary layer of a wing at "
        "speed. Third sentence here. And a fourth one to end."
    )
    for query in (False, True):
        full = base.tokenize(passage, query=query)[0]
        # The encoder checks both templates, so the query's sets the floor.
        shortest = len(base.tokenize("", query=True, tp=False)[0].input_ids) + 3
        for max_length in range(shortest, len(full.input_ids) + 1):
            encoder = base.with_settings(max_length=max_length)
            f = encoder.tokenize(passage, query=query)[0]
            ids, n = f.input_ids, len(f.placeholders) // 2
            assert len(ids) <= max_length and f.truncated == (max_length < len(full.input_ids))
            assert n >= 1 and (ids == pst).sum() == n and (ids == bpst).sum() == n
            assert ids[-1] == tokenizer.eos_token_id and f.sources[n - 1] == len(ids) - 1
            assert ids[: f.placeholders[n]].tolist() == full.input_ids[: f.placeholders[n]].tolist()
            shift = len(full.placeholders) // 2 - n  # <B-PST> dropped before every sentence
            for k in range(n - 1):  # sources: kept sentences' last tokens, as in the full prompt
                assert f.sources[k] == full.sources[k] - shift
                assert f.placeholders[k] == full.placeholders[k] - shift
            # A cut never leaves a sentence without text: its <PST> is followed by text.
            assert f.text_mask[f.placeholders[:n] + 1].all()
            # What is kept of the text is a prefix of the full prompt's text.
            kept = ids[f.text_mask].tolist()
            assert kept == full.input_ids[full.text_mask].tolist()[: len(kept)]
    encoder = base.with_settings(max_length=shortest + 4)
    long = encoder.tokenize("word " * 50 + "end.")[0]  # one sentence longer than max_length
    assert long.truncated and len(long.input_ids) == shortest + 4 and len(long.placeholders) == 2


def test_htp_edge_cases(tiny_llama: Path) -> None:
    """Empty and blank text: no placeholder; one sentence: one pair each; encode
    gives finite vectors for all; no punctuation is one sentence."""
    encoder = TPEncoder.from_pretrained(tiny_llama, method="htp", device="cpu")
    eos = encoder.tokenizer.eos_token_id
    for text in ("", "   ", "\n\n"):
        f = encoder.tokenize(text)[0]
        assert len(f.placeholders) == 0 and f.input_ids[-1] == eos
        assert f.text_mask.sum() == len(f.input_ids) - 2  # the blanks' own tokens, no BOS/EOS
    assert len(encoder.tokenize("Just one sentence.")[0].placeholders) == 2
    assert len(encoder.tokenize("no punctuation here at all")[0].placeholders) == 2
    assert len(encoder.tokenize("Dr. Smith arrived. He sat.")[0].placeholders) == 4
    assert len(encoder.tokenize("First line.\nSecond line.")[0].placeholders) == 4
    vectors = encoder.encode(
        ["", "   ", "One.", "One. Two? Three!", "今天天气很好。我们去公园吧！"]
    )
    assert np.isfinite(vectors).all() and vectors.shape[0] == 5


def test_htp_on_differs_from_off_and_query_from_document(tiny_llama: Path) -> None:
    """The overwrites are live, and queries get their own template."""
    encoder = TPEncoder.from_pretrained(
        tiny_llama, method="htp", tp_start=1, tp_stop=3, output_layer=3
    )
    text = "The wing stalls. Lift drops. The nose goes down."
    on, off = encoder.encode(text), encoder.encode(text, tp=False)
    assert np.abs(on - off).max() > 1e-4
    assert np.abs(encoder.encode(text, query=True) - on).max() > 1e-4
    # Placeholders in the prompt but no overwrite (tp_layers empty) differs from HTP on.
    untouched = encoder.with_settings(tp_start=3, tp_stop=4)  # the overwrite runs past readout
    assert np.abs(untouched.encode(text) - on).max() > 1e-4


def test_htp_settings() -> None:
    """Defaults, validation naming the valid choices, and the fingerprint."""
    config = TPConfig(method="htp", tp_start=1, tp_stop=3, output_layer=3)
    assert (config.prompt, config.query_prompt, config.pooling) == (
        "htp-document",
        "htp-query",
        "mean",
    )
    assert config.templates == HTP_PROMPTS["htp-document"] and config.query_templates == (QUERY,)
    assert not config.cleans_text
    tp = TPConfig(tp_start=1, tp_stop=3, output_layer=3)
    assert (tp.prompt, tp.query_prompt, tp.pooling) == ("prompteol", None, "last")
    assert tp.query_templates == tp.templates
    with pytest.raises(ValueError, match="tp, htp"):
        TPConfig(method="xtp")
    with pytest.raises(ValueError, match="built-in TP prompt"):
        TPConfig(method="htp", prompt="prompteol")
    with pytest.raises(ValueError, match="built-in HTP prompt"):
        TPConfig(prompt="htp-document")
    with pytest.raises(ValueError, match="no \\{pst\\}"):
        TPConfig(method="htp", prompt='S : {pst}"{text}"')
    space = config.space()
    from importlib.metadata import version

    assert space["splitter"] == f"sentencex {version('sentencex')}"
    assert "splitter" not in tp.space()
    assert config.fingerprint() != config.replace(query_prompt="htp-document").fingerprint()
    assert tp.fingerprint() == tp.replace(query_prompt="prompteol").fingerprint()
    assert htp_depth_rule(32) == {"tp_start": 1, "tp_stop": 7, "output_layer": 31}
    assert htp_depth_rule(24) == {"tp_start": 1, "tp_stop": 5, "output_layer": 23}
    assert htp_depth_rule(4)["output_layer"] == 3


def test_htp_from_pretrained_defaults_and_errors(tiny_llama: Path) -> None:
    """The HTP depth rule fills the layers; method changes need a new encoder; a max_length
    with no room for one sentence is refused."""
    encoder = TPEncoder.from_pretrained(tiny_llama, method="htp")
    c = encoder.config
    assert (c.method, c.tp_start, c.tp_stop, c.output_layer, c.pooling) == ("htp", 1, 2, 3, "mean")
    with pytest.raises(ValueError, match="from_pretrained"):
        encoder.with_settings(method="tp")
    with pytest.raises(ValueError, match="max_length"):
        TPEncoder.from_pretrained(tiny_llama, method="htp", max_length=4)


def test_adapters_embed_queries_with_the_query_template(tiny_llama: Path) -> None:
    """LangChain, LlamaIndex and Chroma take ``method`` like any TPConfig field and embed
    queries with ``encode(..., query=True)``, documents without; Chroma's stored config
    rebuilds the same HTP function."""
    from tp_rag.chroma import TPEmbeddingFunction

    langchain_tp = pytest.importorskip("langchain_tp")
    llama_tp = pytest.importorskip("llama_index.embeddings.tp")
    settings = {"method": "htp", "tp_stop": 3, "output_layer": 3}
    encoder = TPEncoder.from_pretrained(tiny_llama, **settings)
    text = "The wing stalls. Lift drops."
    query, document = encoder.encode(text, query=True), encoder.encode(text)
    assert np.abs(query - document).max() > 1e-4
    lc = langchain_tp.TPEmbeddings(model=str(tiny_llama), **settings)
    li = llama_tp.TPEmbedding(str(tiny_llama), **settings)
    ef = TPEmbeddingFunction(str(tiny_llama), **settings)
    for got_query, got_document in (
        (lc.embed_query(text), lc.embed_documents([text])[0]),
        (li.get_query_embedding(text), li.get_text_embedding(text)),
        (ef.embed_query([text])[0], ef([text])[0]),
    ):
        assert np.allclose(got_query, query, atol=1e-6)
        assert np.allclose(got_document, document, atol=1e-6)
    rebuilt = TPEmbeddingFunction.build_from_config(ef.get_config())
    assert rebuilt.encoder.config.method == "htp"
    assert np.allclose(rebuilt.embed_query([text])[0], query, atol=1e-6)


def test_cli_eval_retrieval_tp_and_htp_in_one_table(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--method tp,htp``: on and off columns for each method in one report, each equal to
    the metric code on that encoder's vectors (HTP queries with the query template); a second
    run takes every vector from the cache."""
    from synthetic import write_beir

    from tp_rag.cache import EmbeddingCache
    from tp_rag.cli import main
    from tp_rag.datasets import read_beir
    from tp_rag.metrics import rank_documents, retrieval_metrics

    folder = write_beir(tmp_path / "beir")
    out = tmp_path / "r.json"
    cache_dir = tmp_path / "cache"
    args = ["eval", "retrieval", "--data", str(folder), "--model", str(tiny_llama)]
    args += ["--method", "tp,htp", "--device", "cpu", "--cache-dir", str(cache_dir)]
    assert main([*args, "--json", str(out)]) == 0
    import json

    report = json.loads(out.read_text())
    assert list(report["metrics"]) == ["TP on", "TP off", "HTP on", "HTP off"]
    data = read_beir(folder)
    for method in ("tp", "htp"):
        encoder = TPEncoder.from_pretrained(tiny_llama, method=method, device="cpu")
        for tp, side in ((True, "on"), (False, "off")):
            run = rank_documents(
                encoder.encode(list(data.queries), tp=tp, query=True),
                encoder.encode(list(data.documents), tp=tp),
                data.query_ids,
                data.doc_ids,
            )
            expected = retrieval_metrics(run, data.qrels)
            for metric, value in expected.items():
                got = report["metrics"][f"{method.upper()} {side}"][metric]
                assert got == pytest.approx(value, abs=1e-6), (method, side, metric)
    cached = len(EmbeddingCache(cache_dir))
    # Four columns, each with its documents and queries (TP's queries share its documents'
    # space, HTP's have their own): nothing stored twice, nothing missing.
    assert cached == 4 * (len(data.documents) + len(data.queries))
    capsys.readouterr()
    assert main(args) == 0
    assert len(EmbeddingCache(cache_dir)) == cached
    assert main(["embed", "--model", str(tiny_llama), "--method", "tp,htp", "x"]) == 2
    assert "is not one of tp, htp" in capsys.readouterr().err


def test_tune_htp_preset_reopens_as_htp(tiny_llama: Path, tmp_path: Path) -> None:
    """``tune`` over an HTP encoder scores queries with the query template and writes a preset
    that loads an HTP encoder again."""
    from synthetic import write_beir

    from tp_rag.datasets import read_beir
    from tp_rag.tuning import tune, write_preset

    data = read_beir(write_beir(tmp_path / "beir"))
    encoder = TPEncoder.from_pretrained(tiny_llama, method="htp", device="cpu")
    result = tune(encoder, data, tp_stops=[2, 3], layers=[2, 3])
    write_preset(tmp_path / "p.json", encoder, result)
    again = TPEncoder.from_pretrained(tiny_llama, preset=tmp_path / "p.json")
    assert again.config.method == "htp" and again.config.query_prompt == "htp-query"
    best_stop, best_layer, best = result.best
    from tp_rag.metrics import rank_documents, retrieval_metrics

    cell = again.with_settings(tp_stop=best_stop, output_layer=best_layer)
    run = rank_documents(
        cell.encode(list(data.queries), query=True),
        cell.encode(list(data.documents)),
        data.query_ids,
        data.doc_ids,
    )
    assert retrieval_metrics(run, data.qrels)["nDCG@10"] == pytest.approx(best, abs=1e-6)


def test_htp_store_searches_with_the_query_template_and_reopens_as_htp(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """A TPStore over an HTP encoder: a search's similarities are the cosines of the query
    embedded with the query template against the stored passages, on both sides; the
    collection's record brings method=htp back when it is opened without settings (as
    ``tp-rag query`` does)."""
    import argparse

    from tp_rag.cli.options import ENCODER_OPTIONS, open_store
    from tp_rag.documents import Chunk
    from tp_rag.store import TPStore, connect

    encoder = TPEncoder.from_pretrained(tiny_llama, method="htp", device="cpu")
    store = TPStore(connect(tmp_path / "db"), "docs", encoder)
    texts = PASSAGES[:4]
    entries = [("s", Chunk(t, i, 0, len(t))) for i, t in enumerate(texts)]
    store.upsert(entries, encoder.encode(texts, tp=True), encoder.encode(texts, tp=False))
    query = "Why does the wing stall?"
    for hits, tp in zip(store.search(query, k=4), (True, False), strict=True):
        vector = encoder.encode(query, tp=tp, query=True)
        for hit in hits:
            expected = float(vector @ encoder.encode(hit.text, tp=tp))
            assert hit.similarity == pytest.approx(expected, abs=1e-4), (tp, hit.text)
    del store
    args = argparse.Namespace(
        collection="docs",
        db=str(tmp_path / "db"),
        default_db=None,
        chroma_host=None,
        chroma_port=None,
        model=None,
        preset=None,
        trust_remote_code=False,
        **dict.fromkeys(ENCODER_OPTIONS),
    )
    reopened = open_store(args, create=False)
    assert reopened.encoder.config.method == "htp"
    assert reopened.encoder.config.fingerprint() == encoder.config.fingerprint()
