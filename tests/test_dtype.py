"""The number format: ``dtype="auto"`` on a CPU is bfloat16 where the processor computes it
natively and float32 elsewhere; bfloat16 vectors stay in the float32 embedding space.

The capability tests fake what torch reports (``torch.cpu.get_capabilities``), never time
anything, so they hold on any machine.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest
import torch

from tp_rag import TPEncoder, loading
from tp_rag.cli import main
from tp_rag.datasets import read_beir, read_stsbenchmark
from tp_rag.documents import Chunk
from tp_rag.store import TPStore, connect

X86_WITHOUT_BF16 = {"architecture": "x86_64", "avx2": True, "avx512_f": True, "avx512_bw": True}
"""An AVX-512 CPU without bfloat16 instructions (e.g. Skylake-SP): torch emulates bfloat16."""


@pytest.fixture
def cpu_reports(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``cpu_reports(avx512_bf16=True, ...)``: torch reports these CPU capabilities."""

    def fake(base: dict[str, Any] = X86_WITHOUT_BF16, **flags: Any) -> None:
        reported = MappingProxyType({**base, **flags})
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: reported)

    return fake


def weights_dtype(encoder: TPEncoder) -> torch.dtype:
    """The dtype the loaded model's weights really have."""
    return next(encoder._loaded.model.parameters()).dtype


def test_auto_keeps_float32_on_a_cpu_without_native_bfloat16(
    tiny_llama: Path, cpu_reports: Callable[..., None]
) -> None:
    """Where torch reports neither avx512_bf16 nor amx_bf16, auto loads float32 weights."""
    cpu_reports(avx512_bf16=False, amx_bf16=False)
    encoder = TPEncoder.from_pretrained(tiny_llama, device="cpu")
    assert encoder.config.dtype == "auto"
    assert encoder.dtype == "float32" and weights_dtype(encoder) == torch.float32
    assert "no native bfloat16" in encoder.dtype_reason
    assert "dtype='float32'" in repr(encoder) and encoder.dtype_reason in repr(encoder)


@pytest.mark.parametrize("feature", ["avx512_bf16", "amx_bf16"])
def test_auto_picks_bfloat16_where_the_cpu_has_it(
    tiny_llama: Path, cpu_reports: Callable[..., None], feature: str
) -> None:
    """AVX512-BF16 or AMX: bfloat16 weights, float32 vectors, the feature named as the reason."""
    cpu_reports(**{feature: True})
    encoder = TPEncoder.from_pretrained(tiny_llama, device="cpu")
    assert encoder.dtype == "bfloat16" and weights_dtype(encoder) == torch.bfloat16
    assert feature in encoder.dtype_reason
    vectors = encoder.encode(["A man plays a guitar.", "Is it raining?"])
    assert vectors.dtype == np.float32 and vectors.shape == (2, encoder.dimension)
    assert encoder.encode("one").dtype == np.float32


def test_arm_bfloat16_counts_only_where_torch_has_onednn(
    cpu_reports: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arm's BF16 extension is used through oneDNN: without it torch emulates, so float32."""
    cpu_reports({"architecture": "aarch64", "neon": True}, bf16=True)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    assert loading.choose_dtype("auto", torch.device("cpu"))[0] == torch.bfloat16
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert loading.choose_dtype("auto", torch.device("cpu"))[0] == torch.float32


def test_a_torch_without_get_capabilities_asks_its_older_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Older torch releases lack ``get_capabilities``; their ``_is_avx512_bf16_supported``
    decides, and without either the choice is float32."""
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert loading.choose_dtype("auto", torch.device("cpu"))[0] == torch.bfloat16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert loading.choose_dtype("auto", torch.device("cpu"))[0] == torch.float32
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert loading.choose_dtype("auto", torch.device("cpu"))[0] == torch.float32


def test_a_given_dtype_wins_and_other_devices_keep_their_rule(
    cpu_reports: Callable[..., None],
) -> None:
    """An explicit dtype is used as given; auto is bfloat16 on CUDA, float32 on MPS."""
    cpu_reports(avx512_bf16=True)
    assert loading.choose_dtype("float32", torch.device("cpu")) == (
        torch.float32,
        "dtype='float32' was asked for",
    )
    assert loading.choose_dtype("auto", torch.device("cuda"))[0] == torch.bfloat16
    assert loading.choose_dtype("auto", torch.device("mps"))[0] == torch.float32
    with pytest.raises(ValueError, match="auto, float32, bfloat16, float16"):
        loading.choose_dtype("int8", torch.device("cpu"))


def test_verbose_cli_says_which_number_format_and_why(
    tiny_llama: Path, cpu_reports: Callable[..., None], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--verbose`` prints the encoder, with its resolved dtype and the reason, on stderr."""
    cpu_reports(avx512_bf16=False)
    assert main(["embed", "a cat", "--model", str(tiny_llama), "--device", "cpu", "--verbose"]) == 0
    err = capsys.readouterr().err
    assert "dtype='float32'" in err and "no native bfloat16" in err
    cpu_reports(amx_bf16=True)
    main(["embed", "a cat", "--model", str(tiny_llama), "--device", "cpu", "--verbose"])
    err = capsys.readouterr().err
    assert "dtype='bfloat16'" in err and "amx_bf16" in err


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize("architecture", ["llama", "gemma2", "gpt2"])
def test_bfloat16_vectors_stay_within_cosine_0999_of_float32(
    tiny_models: dict[str, Path], data_path: Callable[[str], Path], architecture: str
) -> None:
    """Every one of 200 STS-B sentences: cosine(bfloat16, float32) >= 0.999.

    Random tiny models map all texts to similar directions (mean cosine between different
    sentences is about 0.9 for llama), which alone would make the plain cosine high. So the
    check is also made on the vectors minus the float32 mean vector, which keeps only what
    tells texts apart: there bfloat16 must stay >= 0.998 (0.9993 measured for llama's worst
    sentence), and its error must be small against the spread between texts (< 5%; about 2%
    measured).
    """
    pairs = read_stsbenchmark(data_path("sts/stsbenchmark/sts-dev.csv"))
    texts = list(pairs.sentences1[:100]) + list(pairs.sentences2[:100])
    model = tiny_models[architecture]
    full = TPEncoder.from_pretrained(model, device="cpu", dtype="float32").encode(texts)
    half = TPEncoder.from_pretrained(model, device="cpu", dtype="bfloat16").encode(texts)
    assert half.dtype == np.float32
    assert (full * half).sum(1).min() >= 0.999
    mean = full.mean(0)
    assert (_unit(full - mean) * _unit(half - mean)).sum(1).min() >= 0.998
    error = np.linalg.norm(full - half, axis=1).mean()
    assert error < 0.05 * np.linalg.norm(full - mean, axis=1).mean()


def test_bfloat16_retrieval_top10_agrees_with_float32_on_cranfield(
    tiny_llama: Path, data_path: Callable[[str], Path]
) -> None:
    """All 225 Cranfield queries over its 1,400 abstracts (cut to 128 tokens to keep the test
    short): the bfloat16 top-10 shares >= 90% of its documents with float32's on average
    (98% measured), and the same document comes first for >= 90% of queries; so do float32
    documents searched with bfloat16 queries (a store built in one, queried in the other)."""
    data = read_beir(data_path("retrieval/cranfield"))
    vectors = {}
    for dtype in ("float32", "bfloat16"):
        encoder = TPEncoder.from_pretrained(tiny_llama, device="cpu", dtype=dtype, max_length=128)
        vectors[dtype] = (encoder.encode(list(data.queries)), encoder.encode(list(data.documents)))

    def top10(queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
        return np.argsort(-(queries @ documents.T), axis=1, kind="stable")[:, :10]

    (q32, d32), (q16, d16) = vectors["float32"], vectors["bfloat16"]
    reference = top10(q32, d32)
    for queries, documents in ((q16, d16), (q16, d32), (q32, d16)):
        ranked = top10(queries, documents)
        overlap = np.mean(
            [len(set(a) & set(b)) / 10 for a, b in zip(reference, ranked, strict=True)]
        )
        assert overlap >= 0.9, overlap
        assert np.mean(reference[:, 0] == ranked[:, 0]) >= 0.9


TEXTS = [
    "The Moon pulls the oceans into two bulges.",
    "Yeast makes bread dough rise.",
    "Hash tables find values by key.",
    "Glaciers carve U-shaped valleys.",
]


@pytest.mark.parametrize(("built", "queried"), [("float32", "bfloat16"), ("bfloat16", "float32")])
def test_a_store_built_in_one_dtype_answers_queries_in_the_other(
    tiny_llama: Path, tmp_path: Path, built: str, queried: str
) -> None:
    """dtype is not part of the embedding space: a store made in one format opens with an
    encoder in the other (no mismatch error), and a stored text found by itself comes first."""
    writer = TPEncoder.from_pretrained(tiny_llama, device="cpu", dtype=built)
    store = TPStore(connect(tmp_path / "db"), "docs", writer)
    chunks = [Chunk(text, i, 100 * i, 100 * i + len(text)) for i, text in enumerate(TEXTS)]
    store.upsert(
        [("/data/a.txt", chunk) for chunk in chunks],
        writer.encode(TEXTS, tp=True),
        writer.encode(TEXTS, tp=False),
    )
    reader = TPEncoder.from_pretrained(tiny_llama, device="cpu", dtype=queried)
    assert reader.dtype == queried and reader._loaded is not writer._loaded
    reopened = TPStore(connect(tmp_path / "db"), "docs", reader, create=False)
    for index, text in enumerate(TEXTS):
        for hits in reopened.search(text, k=4):
            assert hits[0].text == text and hits[0].chunk_index == index
            assert hits[0].similarity == pytest.approx(1.0, abs=1e-3)
