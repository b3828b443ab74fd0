"""TPEncoder behaviour: the encode() contract, batching, truncation, early exit, determinism."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from tp_rag import TPEncoder
from tp_rag.prompts import BUILTIN_PROMPTS
from tp_rag.testing import ARCHITECTURES

SHORT = ["Stocks fell.", "A cat sleeps.", "Is it raining?"]
LONG = [
    "The committee approved the new budget for schools and hospitals after a long debate "
    "that lasted well into the night, with many amendments proposed and rejected. " * 4,
    "Photosynthesis converts light energy into chemical energy in plants, algae and some "
    "bacteria, releasing oxygen as a by-product of splitting water molecules. " * 3,
]


@pytest.fixture(scope="module")
def encoder(tiny_llama: Path) -> TPEncoder:
    return TPEncoder.from_pretrained(tiny_llama, device="cpu", dtype="float32")


def test_encode_shapes_and_types(encoder: TPEncoder) -> None:
    """A string gives (d,), a list gives (n, d), float32, unit length by default."""
    one = encoder.encode("A man plays a guitar.")
    many = encoder.encode(["A man plays a guitar.", "Is it raining?"])
    assert one.shape == (encoder.dimension,) and one.dtype == np.float32
    assert many.shape == (2, encoder.dimension) and many.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(one, many[0], atol=1e-6)


def test_empty_list_gives_empty_array(encoder: TPEncoder) -> None:
    """[] gives a (0, d) float32 array, not an error."""
    empty = encoder.encode([])
    assert empty.shape == (0, encoder.dimension) and empty.dtype == np.float32


@pytest.mark.parametrize(
    ("texts", "index"), [(["ok", None], 1), (["ok", "fine", 3], 2), ([b"bytes"], 0)]
)
def test_non_string_items_are_named(encoder: TPEncoder, texts: list, index: int) -> None:
    """A non-string item raises TypeError naming its index."""
    with pytest.raises(TypeError, match=rf"texts\[{index}\]"):
        encoder.encode(texts)


def test_none_is_a_type_error(encoder: TPEncoder) -> None:
    """encode(None) raises TypeError that says what to pass."""
    with pytest.raises(TypeError, match="string or a list of strings"):
        encoder.encode(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("texts", "name"),
    [({"a": 1}, "dict"), (b"some bytes", "bytes"), (bytearray(b"x"), "bytearray")],
)
def test_mappings_and_bytes_are_refused_naming_the_type(
    encoder: TPEncoder, texts: object, name: str
) -> None:
    """A dict is not a list of its keys and bytes are not a list of ints: both are refused
    with a TypeError naming the type and what to pass."""
    with pytest.raises(TypeError, match=rf"not {name}; (decode|pass list)"):
        encoder.encode(texts)  # type: ignore[arg-type]


def test_a_lone_surrogate_is_refused_naming_the_text(encoder: TPEncoder) -> None:
    """A lone surrogate (not valid Unicode) is named with its text's index and position."""
    with pytest.raises(
        ValueError,
        match=r"texts\[2\] holds a lone surrogate '\\ud800' at "
        r"character 3",
    ):
        encoder.encode(["fine", "also fine", "bad\ud800 text"])


def test_order_is_restored_after_length_sorting(encoder: TPEncoder) -> None:
    """Batches are sorted by length internally; results come back in input order."""
    texts = [SHORT[0], LONG[0], SHORT[1], LONG[1], SHORT[2]]
    together = encoder.encode(texts, batch_size=2)
    alone = np.stack([encoder.encode(t) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_batch_invariance_under_left_padding(
    tiny_models: dict[str, Path], architecture: str
) -> None:
    """A text's vector does not depend on its batch: alone == beside much longer texts (fp32)."""
    encoder = TPEncoder.from_pretrained(
        tiny_models[architecture], normalize=False, dtype="float32", device="cpu"
    )
    for tp in (True, False):
        batched = encoder.encode(SHORT + LONG, tp=tp, batch_size=8)
        for row, text in enumerate(SHORT):
            alone = encoder.encode(text, tp=tp)
            assert np.abs(batched[row] - alone).max() <= 1e-5, (architecture, tp, text)


def test_batch_invariance_mean_pooling(tiny_models: dict[str, Path]) -> None:
    """Mean pooling over the text's tokens is also independent of padding (GPT-2 positions)."""
    encoder = TPEncoder.from_pretrained(tiny_models["gpt2"], pooling="mean", normalize=False)
    batched = encoder.encode(SHORT + LONG)
    for row, text in enumerate(SHORT):
        assert np.abs(batched[row] - encoder.encode(text)).max() <= 1e-5


def test_tp_off_shares_the_loaded_weights(tiny_llama: Path, weight_reads: list[str]) -> None:
    """encode(tp=False) needs no second load; TP on and off give different vectors."""
    encoder = TPEncoder.from_pretrained(tiny_llama)
    before = len(weight_reads)
    on, off = encoder.encode(SHORT), encoder.encode(SHORT, tp=False)
    twin = TPEncoder.from_pretrained(tiny_llama, tp=False)  # another config, same weights
    assert len(weight_reads) == before
    assert twin._loaded is encoder._loaded
    np.testing.assert_allclose(twin.encode(SHORT), off, atol=1e-6)
    assert np.abs(on - off).max() > 1e-3


class _CallCounter:
    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.calls = [0] * len(modules)
        self.handles = [
            module.register_forward_hook(self._hook(i)) for i, module in enumerate(modules)
        ]

    def _hook(self, index: int):
        def count(*_: object) -> None:
            self.calls[index] += 1

        return count

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_early_exit_runs_no_layer_after_the_readout(
    tiny_models: dict[str, Path], architecture: str
) -> None:
    """Layers after output_layer and the final norm never run; no hooks are left behind."""
    encoder = TPEncoder.from_pretrained(
        tiny_models[architecture], tp_start=0, tp_stop=3, output_layer=2, batch_size=2
    )
    model = encoder._loaded.model
    layers = list(encoder._loaded.layers)
    final_norm = model.norm if hasattr(model, "norm") else model.ln_f
    counter = _CallCounter([*layers, final_norm])
    try:
        encoder.encode(SHORT)  # 3 texts, batch_size 2 -> 2 batches
        assert counter.calls == [2, 2, 0, 0, 0]
        counter.calls = [0] * 5
        encoder.with_settings(output_layer=-1).encode(SHORT)
        assert counter.calls == [2, 2, 2, 2, 2]
    finally:
        counter.remove()
    assert all(not layer._forward_pre_hooks for layer in layers)


def test_hooks_are_removed_on_error(encoder: TPEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure inside the forward pass leaves no TP or readout hook on the model."""
    layers = list(encoder._loaded.layers)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    handle = layers[0].register_forward_hook(broken)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            encoder.encode(SHORT)
    finally:
        handle.remove()
    assert all(not layer._forward_pre_hooks for layer in layers)
    assert encoder.encode(SHORT).shape == (3, encoder.dimension)  # and it still works


def test_all_layer_hidden_states_are_never_requested(encoder: TPEncoder) -> None:
    """The model is never asked for output_hidden_states (memory for every layer)."""
    seen: list[dict] = []
    handle = encoder._loaded.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(dict(kwargs)), with_kwargs=True
    )
    try:
        encoder.encode(SHORT)
    finally:
        handle.remove()
    assert seen and not any(kwargs.get("output_hidden_states") for kwargs in seen)


def test_truncation_keeps_template_and_warns_once(
    tiny_llama: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the text is cut: prefix, placeholder and suffix survive; one warning per call."""
    encoder = TPEncoder.from_pretrained(tiny_llama, max_length=40)
    template = BUILTIN_PROMPTS["prompteol"][0]
    tokenizer = encoder.tokenizer
    for tp in (True, False):
        features = encoder.tokenize(LONG[0], tp=tp, prompt=template)[0]
        assert features.truncated and len(features.input_ids) == 40
        decoded = tokenizer.decode(features.input_ids.tolist(), skip_special_tokens=True)
        prefix = template.split("{text}")[0].replace("{pst}", "<PST> " if tp else "")
        assert decoded.startswith(prefix + LONG[0][:5])
        assert decoded.endswith('" means in one word:"')
        assert len(decoded) < len(prefix) + len(LONG[0])  # the text was cut, from its end
        if tp:
            assert features.input_ids[features.placeholder_index] == encoder._loaded.placeholder_id
    with caplog.at_level(logging.WARNING, logger="tp_rag"):
        vectors = encoder.encode([*LONG, SHORT[0]])
    warnings = [r for r in caplog.records if "max_length" in r.getMessage()]
    assert len(warnings) == 1 and "2 of 3 texts" in warnings[0].getMessage()
    assert np.isfinite(vectors).all()


def test_template_longer_than_max_length_is_refused(tiny_llama: Path) -> None:
    """A max_length that cannot hold the template fails up front, saying what is needed."""
    with pytest.raises(ValueError, match="max_length=5 leaves no room"):
        TPEncoder.from_pretrained(tiny_llama, max_length=5)


def test_encode_layers_equals_encode_per_layer(encoder: TPEncoder) -> None:
    """One pass read out at several layers == encode() with each output_layer."""
    layers = [1, 2, -1]
    together = encoder.encode_layers(SHORT, layers)
    for layer in layers:
        alone = encoder.with_settings(output_layer=layer).encode(SHORT)
        np.testing.assert_allclose(together[layer], alone, atol=1e-6)


def test_metaeol_averages_its_eight_prompts(tiny_llama: Path) -> None:
    """MetaEOL's vector is the mean of the 8 prompts' vectors (then normalised)."""
    encoder = TPEncoder.from_pretrained(tiny_llama, prompt="metaeol", normalize=False)
    each = [encoder.encode(SHORT, prompt=template) for template in BUILTIN_PROMPTS["metaeol"]]
    np.testing.assert_allclose(encoder.encode(SHORT), np.mean(each, axis=0), atol=1e-6)


def test_query_prompt_override(encoder: TPEncoder) -> None:
    """encode(prompt=...) uses another template for this call only."""
    pcot = encoder.encode(SHORT, prompt="pcot")
    assert np.abs(pcot - encoder.encode(SHORT)).max() > 1e-4
    np.testing.assert_allclose(encoder.with_settings(prompt="pcot").encode(SHORT), pcot, atol=1e-6)


def test_vectors_identical_across_processes(tiny_llama: Path) -> None:
    """Another Python process gives bit-identical vectors (the <PST> row is not random)."""
    script = (
        "import json, sys; from tp_rag import TPEncoder; "
        "enc = TPEncoder.from_pretrained(sys.argv[1], dtype='float32'); "
        "print(json.dumps(enc.encode(json.loads(sys.argv[2])).tolist()))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(tiny_llama), json.dumps(SHORT)],
        capture_output=True,
        text=True,
        check=True,
    )
    there = np.array(json.loads(run.stdout.strip().splitlines()[-1]), dtype=np.float32)
    here = TPEncoder.from_pretrained(tiny_llama, dtype="float32").encode(SHORT)  # both CPUs alike
    assert np.array_equal(there, here)


def test_placeholder_row_follows_the_documented_rule(tiny_llama: Path) -> None:
    """<PST>'s embedding is the mean of the checkpoint's rows below its id (float32)."""
    from safetensors.torch import load_file

    encoder = TPEncoder.from_pretrained(tiny_llama)
    weights = load_file(tiny_llama / "model.safetensors")
    table = weights["model.embed_tokens.weight"]
    expected = table[: encoder._loaded.placeholder_id].mean(0)
    torch.testing.assert_close(encoder.placeholder_embedding, expected)


def test_token_ids_equal_the_add_tokens_recipe(tiny_gpt2_real_tokenizer: Path) -> None:
    """With the real GPT-2 BPE, every prompt's ids equal tokenizer.add_tokens(['<PST>'])'s."""
    encoder = TPEncoder.from_pretrained(tiny_gpt2_real_tokenizer, clean_text=False)
    recipe = AutoTokenizer.from_pretrained(tiny_gpt2_real_tokenizer)
    recipe.add_tokens(["<PST>"])
    assert encoder._loaded.placeholder_id == recipe.convert_tokens_to_ids("<PST>") == 50257
    texts = ["A man plays a guitar.", " leading space.", "quote's end'", "naïve café — ok."]
    for name, templates in BUILTIN_PROMPTS.items():
        for template in templates:
            for text in texts:
                for tp in (True, False):
                    prompt = template.replace("{pst}", "<PST> " if tp else "").replace(
                        "{text}", text
                    )
                    got = encoder.tokenize(text, tp=tp, prompt=template)[0].input_ids
                    assert got.tolist() == recipe(prompt)["input_ids"], (name, text, tp)


def test_placeholder_spacing_with_real_gpt2(tiny_gpt2_real_tokenizer: Path) -> None:
    """As with the recipe, the space before <PST> stays a token (Ġ) and the one after joins the
    quote (Ġ"): the added token splits the string and each side is BPE-encoded on its own."""
    encoder = TPEncoder.from_pretrained(tiny_gpt2_real_tokenizer)
    template = BUILTIN_PROMPTS["prompteol"][0]
    features = encoder.tokenize("Hi.", tp=True, prompt=template)[0]
    tokens = encoder.tokenizer.convert_ids_to_tokens(features.input_ids.tolist())
    at = features.placeholder_index
    assert tokens[at - 2 : at + 2] == ["Ġ:", "Ġ", "<PST>", 'Ġ"']


def test_progress_bar_follows_the_logging_level(
    encoder: TPEncoder, capsys: pytest.CaptureFixture[str]
) -> None:
    """As sentence-transformers: no bar by default (logging at WARNING), a bar when tp_rag's
    encoder logs at INFO or DEBUG; show_progress=True/False overrides either way."""
    import logging

    encoder.encode(SHORT)
    assert "Batches" not in capsys.readouterr().err
    encoder.encode(SHORT, show_progress=True)
    assert "Batches" in capsys.readouterr().err
    logger = logging.getLogger("tp_rag.encoder")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        encoder.encode(SHORT)
        assert "Batches" in capsys.readouterr().err
        encoder.encode(SHORT, show_progress=False)
        assert "Batches" not in capsys.readouterr().err
    finally:
        logger.setLevel(level)


def test_dimension_is_the_width_read_out(tmp_path: Path) -> None:
    """OPT-350m-shaped: embeddings 32 wide, hidden states 64 inside, 32 after project_out.
    dimension follows the readout layer, and empty input gets that width too."""
    from tp_rag.testing import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "opt", "opt", hidden_size=64)
    encoder = TPEncoder.from_pretrained(model_dir, tp_start=1, tp_stop=2, output_layer=2)
    assert encoder._loaded.model.get_input_embeddings().weight.shape[1] == 32
    assert encoder.dimension == 64 and encoder.encode(SHORT).shape == (3, 64)
    last = encoder.with_settings(output_layer=-1)
    assert last.dimension == 32 and last.encode(SHORT).shape == (3, 32)
    assert last.encode([]).shape == (0, 32) and encoder.encode([]).shape == (0, 64)
    layers = encoder.encode_layers(SHORT[0], [1, -1])
    assert layers[1].shape == (64,) and layers[-1].shape == (32,)


def _forward_shapes(encoder: TPEncoder, texts: list[str], **kwargs: object) -> list[tuple]:
    shapes: list[tuple] = []
    handle = encoder._loaded.model.register_forward_pre_hook(
        lambda module, args, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        encoder.encode(texts, **kwargs)
    finally:
        handle.remove()
    return shapes


def test_token_budget_bounds_every_batch_and_keeps_the_vectors(tiny_llama: Path) -> None:
    """No forward pass sees more than max_batch_tokens (rows x width, padding included); short
    texts still fill batches up to batch_size; vectors equal one-text-at-a-time encoding."""
    texts = [*SHORT, *LONG, *[f"Short text number {i}." for i in range(20)]]
    encoder = TPEncoder.from_pretrained(tiny_llama, max_length=128, max_batch_tokens=160)
    shapes = _forward_shapes(encoder, texts, batch_size=16)
    assert sum(rows for rows, _ in shapes) == len(texts)
    assert max(rows * width for rows, width in shapes) <= 160
    short = max(len(f.input_ids) for f in encoder.tokenize(texts[-20:]))
    assert max(rows for rows, _ in shapes) == 160 // short  # short prompts fill the budget
    assert min(rows for rows, _ in shapes) == 1  # a 128-token prompt goes alone
    alone = np.stack([encoder.encode(text) for text in texts])
    np.testing.assert_allclose(encoder.encode(texts, batch_size=16), alone, atol=1e-5)


def test_batch_size_still_caps_the_rows(tiny_llama: Path) -> None:
    """With a budget that never binds, batches have batch_size rows, as before."""
    encoder = TPEncoder.from_pretrained(tiny_llama, max_batch_tokens=100_000)
    texts = [f"Short text number {i}." for i in range(10)]
    assert [rows for rows, _ in _forward_shapes(encoder, texts, batch_size=4)] == [4, 4, 2]


def _set_partitions(items: list[int]) -> Iterator[list[list[int]]]:
    """Every way to split ``items`` into groups (Bell-number many; small lists only)."""
    if not items:
        yield []
        return
    head, rest = items[0], items[1:]
    for partition in _set_partitions(rest):
        yield [[head], *partition]
        for k in range(len(partition)):
            yield [*partition[:k], [head, *partition[k]], *partition[k + 1 :]]


def test_token_budget_batches_least_work() -> None:
    """The batches are the least work (padded tokens + pass_tokens per pass) of every way to
    group the prompts within the limits, checked against all groupings of small random inputs
    (not only runs of the sorted order); each batch is listed longest first."""
    from tp_rag.encoder import token_budget_batches

    rng = random.Random(7)
    for _ in range(150):
        lengths = [rng.choice([3, 5, 8, 20, 40, 41, 90]) for _ in range(rng.randint(1, 7))]
        limits = {
            "max_texts": rng.randint(1, 4),
            "max_tokens": rng.choice([60, 100, 200, 1000]),
            "pass_tokens": rng.choice([0, 10, 64, 500]),
        }
        got = token_budget_batches(lengths, **limits)
        assert sorted(i for batch in got for i in batch) == list(range(len(lengths)))
        assert all(_allowed(batch, lengths, **limits) for batch in got)
        for batch in got:
            assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
        best = min(
            _work(p, lengths, limits["pass_tokens"])
            for p in _set_partitions(list(range(len(lengths))))
            if all(_allowed(batch, lengths, **limits) for batch in p)
        )
        assert _work(got, lengths, limits["pass_tokens"]) == best, (lengths, limits, got)


def _allowed(
    batch: list[int], lengths: list[int], *, max_texts: int, max_tokens: int, pass_tokens: int
) -> bool:
    rows, width = len(batch), max(lengths[i] for i in batch)
    return rows <= max_texts and (rows == 1 or rows * width <= max_tokens)


def _work(batches: list[list[int]], lengths: list[int], pass_tokens: int) -> int:
    return sum(len(b) * max(lengths[i] for i in b) + pass_tokens for b in batches)


def test_token_budget_batches_cpu_and_gpu_costs() -> None:
    """A cheap pass (a CPU) keeps passages and sentences apart; a costly one (a GPU) runs them
    together when the budget allows; the limits always hold; ties go to fewer, fuller batches,
    longest first."""
    from tp_rag.encoder import token_budget_batches

    lengths = [10, 300, 12, 290]
    cheap = token_budget_batches(lengths, max_texts=32, max_tokens=1200, pass_tokens=64)
    assert cheap == [[1, 3], [2, 0]]
    costly = token_budget_batches(lengths, max_texts=32, max_tokens=1200, pass_tokens=2048)
    assert costly == [[1, 3, 2, 0]]
    assert token_budget_batches(lengths, max_texts=32, max_tokens=599, pass_tokens=2048) == [
        [1],
        [3],
        [2, 0],
    ]
    assert token_budget_batches([300], max_texts=8, max_tokens=100, pass_tokens=64) == [[0]]
    assert token_budget_batches([], max_texts=8, max_tokens=100, pass_tokens=64) == []
    equal = token_budget_batches([7] * 10, max_texts=4, max_tokens=1000, pass_tokens=64)
    assert equal == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_vectors_do_not_depend_on_the_order_of_the_texts(encoder: TPEncoder) -> None:
    """A text's vector is bit for bit the same whatever the order of the texts in the call
    (equal-length prompts join batches in one canonical order), so an evaluation that embeds
    the same texts in another order (tune, then eval with its preset) scores them alike."""
    # batch_size 2: the longest text (34 tokens in the tiny tokenizer) shares a batch, and its
    # padding, with one of the three of 23 tokens; the other two go together.
    texts = ["cats and dogs sleep in the sun", "a red kite", "a red kits", "a tan kite"]
    assert [len(f.input_ids) for f in encoder.tokenize(texts)] == [34, 23, 23, 23]
    for order in ([0, 1, 2, 3], [0, 3, 2, 1], [0, 2, 1, 3], [3, 1, 0, 2]):
        alone = encoder.encode([texts[i] for i in order], batch_size=2)
        vectors = np.empty_like(alone)
        vectors[order] = alone
        if order == [0, 1, 2, 3]:
            first = vectors
        assert np.array_equal(vectors, first), order


def test_encode_layers_reports_each_batch(encoder: TPEncoder) -> None:
    """``progress`` hears of every batch (what tune shows while one slice is embedded), in
    counts that add up to the texts; MetaEOL's 8 prompts a text count as one text."""
    texts = [f"Sentence {i} is about {'word ' * i}." for i in range(10)]
    reports: list[int] = []
    encoder.encode_layers(texts, [1, -1], batch_size=2, progress=reports.append)
    assert reports == [2] * 5
    metaeol: list[int] = []
    encoder.with_settings(prompt="metaeol").encode_layers(
        texts[:3], [1], batch_size=4, progress=metaeol.append
    )
    assert sum(metaeol) == 3 and len(metaeol) >= 3
