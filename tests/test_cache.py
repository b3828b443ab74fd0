"""Do not embed the same text twice: the vector cache, its use by evaluation and the demo, and
tune's bounded memory. Encoder work is counted on a real tiny encoder (texts entering layer 0)."""

from __future__ import annotations

import hashlib
import json
import logging
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from synthetic import write_beir, write_stsb

from tp_rag import TPEncoder
from tp_rag.cache import (
    EmbedCounts,
    EmbeddingCache,
    cached_embed,
    default_cache_dir,
    text_key,
)
from tp_rag.cli import main
from tp_rag.datasets import read_beir, read_sts
from tp_rag.evaluation import evaluate_retrieval, evaluate_sts, tp_systems
from tp_rag.testing import save_tiny_model
from tp_rag.tuning import tune

SETTINGS = {"device": "cpu", "dtype": "float32"}


@pytest.fixture(scope="module")
def encoder(tiny_llama: Path) -> TPEncoder:
    return TPEncoder.from_pretrained(tiny_llama, **SETTINGS)


@contextmanager
def texts_run(encoder: TPEncoder) -> Iterator[list[int]]:
    """Counts the prompts that enter the model's first decoder layer (one entry per batch)."""
    rows: list[int] = []

    def count(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        rows.append(int((args[0] if args else kwargs["hidden_states"]).shape[0]))

    handle = encoder._loaded.layers[0].register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()


TEXTS = [f"Sentence number {i} talks about {w}." for i, w in enumerate("abcdefghijkl")]


# ---- the cache itself ---------------------------------------------------------------------------


def test_put_then_get_in_a_new_cache_object(tmp_path: Path) -> None:
    """Vectors come back exactly, from another object over the same folder (another process);
    a text never stored and another fingerprint are misses."""
    vectors = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    EmbeddingCache(tmp_path).put("ab12" * 4, ["a", "b", "c"], vectors)
    found, got = EmbeddingCache(tmp_path).get("ab12" * 4, ["c", "x", "a"])
    assert found.tolist() == [True, False, True]
    np.testing.assert_array_equal(got[[0, 2]], vectors[[2, 0]])
    assert EmbeddingCache(tmp_path).get("cd34" * 4, ["a"]) is None
    assert len(EmbeddingCache(tmp_path)) == 3
    # A text whose raw digest ends in a NUL byte round-trips too.
    nul = next(f"t{i}" for i in range(10_000) if hashlib.sha256(f"t{i}".encode()).digest()[-1] == 0)
    EmbeddingCache(tmp_path).put("ab12" * 4, [nul], vectors[:1])
    assert EmbeddingCache(tmp_path).get("ab12" * 4, [nul])[0].tolist() == [True]
    with pytest.raises(ValueError, match="hex digest"):
        EmbeddingCache(tmp_path).get("../escape", ["a"])


def test_half_written_and_damaged_shards_are_never_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A temporary file left by a crash is ignored; a damaged shard is skipped with a warning
    and its texts are misses; the good shards still serve."""
    fingerprint = "0f" * 8
    cache = EmbeddingCache(tmp_path)
    cache.put(fingerprint, ["good"], np.ones((1, 4), np.float32))
    cache.put(fingerprint, ["bad"], np.ones((1, 4), np.float32))
    folder = tmp_path / fingerprint
    shards = sorted(folder.glob("*.npz"), key=lambda p: p.stat().st_mtime_ns)
    shards[1].write_bytes(shards[1].read_bytes()[:40])  # truncated
    (folder / ".half.npz.tmp").write_bytes(b"PK\x03\x04 half")
    with caplog.at_level(logging.WARNING, logger="tp_rag.cache"):
        found, vectors = EmbeddingCache(tmp_path).get(fingerprint, ["good", "bad"])
    assert found.tolist() == [True, False] and vectors[0].tolist() == [1, 1, 1, 1]
    assert "skipping cache shard" in caplog.text


def _bad_vectors(kind: str, rows: int, width: int) -> np.ndarray:
    if kind == "wrong-width":
        return np.ones((rows, width + 3), np.float32)
    if kind == "nan":
        vectors = np.ones((rows, width), np.float32)
        vectors[0, 1] = np.nan
        return vectors
    if kind == "rank-1":
        return np.ones(rows, np.float32)
    if kind == "rank-3":
        return np.ones((rows, width, 2), np.float32)
    assert kind == "float64"
    return np.ones((rows, width), np.float64)


@pytest.mark.parametrize("kind", ["wrong-width", "nan", "rank-1", "rank-3", "float64"])
def test_bad_shards_are_skipped_with_a_warning_and_re_embedded(
    encoder: TPEncoder, tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """A shard in an encoder's cache folder whose vectors are not a finite float32 matrix of
    the encoder's width (another width, a NaN, another rank or dtype) is not used: a warning
    names it, its texts are embedded again, and the evaluation reports the figures it reports
    without any cache."""
    task = read_sts(write_stsb(tmp_path / "sts.csv", pairs=12))
    expected = evaluate_sts(tp_systems(encoder), [task])
    texts = sorted({*task.pooled().sentences1, *task.pooled().sentences2})
    for tp in (True, False):
        folder = tmp_path / "c" / encoder.config.replace(tp=tp).fingerprint()
        folder.mkdir(parents=True)
        keys = np.array([text_key(t) for t in texts[:5]], dtype="S64")
        np.savez(folder / "bad.npz", keys=keys, vectors=_bad_vectors(kind, 5, encoder.dimension))
    with caplog.at_level(logging.WARNING, logger="tp_rag.cache"):
        got = evaluate_sts(tp_systems(encoder, cache=EmbeddingCache(tmp_path / "c")), [task])
    assert got["tasks"] == expected["tasks"]
    assert caplog.text.count("skipping cache shard") == 2  # once per folder (TP on, TP off)


def test_cached_embed_checks_the_requested_width(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With the width given, a shard of another width is skipped even when it is the only one
    (nothing else would tell it is wrong) and the texts are embedded again; the good shards of
    the same folder still serve."""
    cache, fingerprint = EmbeddingCache(tmp_path), "ab" * 8
    cache.put(fingerprint, ["narrow"], np.ones((1, 3), np.float32))
    cache.put(fingerprint, ["right"], np.full((1, 4), 2.0, np.float32))
    embedded: list[str] = []

    def embed(texts: list[str]) -> np.ndarray:
        embedded.extend(texts)
        return np.full((len(texts), 4), 7.0, np.float32)

    with caplog.at_level(logging.WARNING, logger="tp_rag.cache"):
        vectors = cached_embed(embed, fingerprint, cache=cache, width=4)(["narrow", "right"])
    assert embedded == ["narrow"]
    assert vectors.tolist() == [[7.0] * 4, [2.0] * 4]
    assert "3 wide, requested 4" in caplog.text


def _disk_full(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    import errno
    import os

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)


def _file_in_the_way(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    cache_dir.write_text("not a folder")


def _read_only(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    import os

    cache_dir.mkdir()
    cache_dir.chmod(0o555)
    if os.access(cache_dir, os.W_OK):  # root writes anyway
        pytest.skip("this user can write into a read-only folder (root)")


@pytest.mark.parametrize(
    "make_unwritable", [_disk_full, _file_in_the_way, _read_only], ids=lambda f: f.__name__[1:]
)
def test_an_unwritable_cache_warns_once_and_eval_goes_on(
    tiny_llama: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    make_unwritable: Any,
) -> None:
    """`eval` with a cache it cannot write (disk full, a file where the folder should be, a
    read-only folder) finishes with the figures of a run without cache, after one warning."""
    data = write_stsb(tmp_path / "sts.csv", pairs=20)
    args = ["eval", "sts", "--data", str(data), "--model", str(tiny_llama), "--device", "cpu"]
    args += ["--dtype", "float32"]
    plain = tmp_path / "plain.json"
    assert main([*args, "--no-cache", "--json", str(plain)]) == 0
    cache_dir = tmp_path / "cache"
    make_unwritable(monkeypatch, cache_dir)
    out = tmp_path / "cached.json"
    with caplog.at_level(logging.WARNING, logger="tp_rag.cache"):
        assert main([*args, "--cache-dir", str(cache_dir), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["tasks"] == json.loads(plain.read_text())["tasks"]
    assert caplog.text.count("cannot be written") == 1
    assert "continuing without caching" in caplog.text


def test_default_folder_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """$TP_RAG_CACHE_DIR wins, then $XDG_CACHE_HOME/tp-rag/embeddings, then ~/.cache."""
    monkeypatch.delenv("TP_RAG_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "tp-rag" / "embeddings"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "tp-rag" / "embeddings"
    monkeypatch.setenv("TP_RAG_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_cached_vectors_equal_the_encoders(encoder: TPEncoder, tmp_path: Path) -> None:
    """What the cache gives back is what the encoder computes, in the caller's order, with
    repeated texts embedded once."""
    cache = EmbeddingCache(tmp_path)
    fingerprint = encoder.config.fingerprint()
    counts = EmbedCounts()
    embed = cached_embed(encoder.encode, fingerprint, cache=cache, counts=counts)
    first = embed([*TEXTS, TEXTS[0]])
    assert counts.embedded == len(TEXTS)
    again = cached_embed(encoder.encode, fingerprint, cache=EmbeddingCache(tmp_path))
    reordered = again(TEXTS[::-1])
    np.testing.assert_allclose(reordered, first[: len(TEXTS)][::-1], atol=1e-6)
    np.testing.assert_allclose(first[-1], first[0])
    np.testing.assert_allclose(reordered[::-1], encoder.encode(TEXTS), atol=1e-5)
    assert embed([]).shape == (0, encoder.dimension)


def test_an_interrupted_run_keeps_what_it_finished(encoder: TPEncoder, tmp_path: Path) -> None:
    """A run killed in its third slice leaves two slices in the cache; the rerun embeds only
    the rest."""
    fingerprint = encoder.config.fingerprint()
    calls = 0

    def dies_on_the_third_slice(texts: list[str]) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return encoder.encode(texts)

    cache = EmbeddingCache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cached_embed(dies_on_the_third_slice, fingerprint, cache=cache, step=4)(TEXTS)
    assert len(EmbeddingCache(tmp_path)) == 8
    with texts_run(encoder) as rows:
        vectors = cached_embed(encoder.encode, fingerprint, cache=EmbeddingCache(tmp_path))(TEXTS)
    assert sum(rows) == 4
    np.testing.assert_allclose(vectors, encoder.encode(TEXTS), atol=1e-5)


# ---- evaluation, the command line and the demo --------------------------------------------------


def test_second_retrieval_eval_costs_only_new_queries(encoder: TPEncoder, tmp_path: Path) -> None:
    """First evaluation: every document and query, TP on and off. The same data again: nothing.
    New queries over the same corpus: only those. Another output layer (another space): all."""
    data = read_beir(write_beir(tmp_path / "beir", queries=5))
    texts = len(data.documents) + len(data.queries)
    with texts_run(encoder) as rows:
        first = evaluate_retrieval(tp_systems(encoder, cache=EmbeddingCache(tmp_path)), data)
    assert sum(rows) == 2 * texts
    with texts_run(encoder) as rows:
        second = evaluate_retrieval(tp_systems(encoder, cache=EmbeddingCache(tmp_path)), data)
    assert sum(rows) == 0
    for system in ("TP on", "TP off"):
        for metric, value in first["metrics"][system].items():
            assert second["metrics"][system][metric] == pytest.approx(value, abs=1e-9)

    more = read_beir(write_beir(tmp_path / "beir-more", queries=8))  # 3 new queries
    counts = {True: EmbedCounts(), False: EmbedCounts()}
    with texts_run(encoder) as rows:
        evaluate_retrieval(tp_systems(encoder, cache=EmbeddingCache(tmp_path), counts=counts), more)
    assert sum(rows) == 2 * 3 and counts[True].embedded == counts[False].embedded == 3

    other = encoder.with_settings(output_layer=encoder.config.output_layer - 1)
    with texts_run(encoder) as rows:
        evaluate_retrieval(tp_systems(other, cache=EmbeddingCache(tmp_path)), data)
    assert sum(rows) == 2 * texts


def test_cli_eval_caches_unless_told_not_to(
    encoder: TPEncoder, tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`eval sts --cache-dir` twice: the second run embeds nothing and reports the same
    figures; `--no-cache` embeds everything again and writes no cache."""
    data = write_stsb(tmp_path / "sts.csv", pairs=20)
    cache_dir = tmp_path / "cache"
    args = ["eval", "sts", "--data", str(data), "--model", str(tiny_llama), "--device", "cpu"]
    args += ["--dtype", "float32"]
    reports = []
    for extra, expected_texts in (([], None), ([], 0)):
        with texts_run(encoder) as rows:
            out = tmp_path / f"r{len(reports)}.json"
            assert main([*args, "--cache-dir", str(cache_dir), *extra, "--json", str(out)]) == 0
        if expected_texts is not None:
            assert sum(rows) == expected_texts
        else:
            distinct = len(
                {*read_sts(data).pooled().sentences1, *read_sts(data).pooled().sentences2}
            )
            assert sum(rows) == 2 * distinct
        reports.append(json.loads(out.read_text()))
    assert reports[0]["tasks"] == reports[1]["tasks"]
    assert "vector cache" in capsys.readouterr().err

    no_cache_dir = tmp_path / "unused"
    with texts_run(encoder) as rows:
        assert main([*args, "--cache-dir", str(no_cache_dir), "--no-cache"]) == 0
    assert sum(rows) > 0 and not no_cache_dir.exists()


@pytest.fixture(scope="module")
def app_module() -> ModuleType:
    from tp_rag.demo import app

    return app


def test_demo_evaluate_after_ingest_embeds_only_the_queries(
    app_module: ModuleType, tiny_gpt2_real_tokenizer: Path, tmp_path: Path
) -> None:
    """After the sample corpus is ingested, Evaluate reuses its stored vectors: the model sees
    the 13 queries (TP on and off), not the 32 documents; the scores equal a fresh evaluation.
    (A real BPE tokenizer, so each sample document is one chunk, as with the default model.)"""

    from tp_rag.datasets import read_labelled_documents, relevant_only
    from tp_rag.store import connect

    encoder = TPEncoder.from_pretrained(tiny_gpt2_real_tokenizer, **SETTINGS)
    demo: Any = app_module.Demo(encoder, connect(tmp_path / "db"))
    demo.ingest_sample()
    queries = len(relevant_only(read_labelled_documents(demo.sample)).queries)
    with texts_run(encoder) as rows:
        table, _, _ = demo.evaluate()
    assert sum(rows) == 2 * queries
    data = relevant_only(read_labelled_documents(demo.sample))
    fresh = evaluate_retrieval(tp_systems(encoder), data, recall_at=app_module.RECALL_AT)
    for _, row in table.iterrows():
        for side in ("TP on", "TP off"):
            assert float(row[side]) == pytest.approx(
                fresh["metrics"][side][row["metric"]], abs=1e-3
            )


def test_sts_eval_holds_one_column_at_a_time(encoder: TPEncoder, tmp_path: Path) -> None:
    """evaluate_sts with a cache embeds each distinct sentence once per column."""
    task = read_sts(write_stsb(tmp_path / "s.csv", pairs=20))
    counts = {True: EmbedCounts(), False: EmbedCounts()}
    evaluate_sts(tp_systems(encoder, cache=EmbeddingCache(tmp_path / "c"), counts=counts), [task])
    distinct = len({*task.pooled().sentences1, *task.pooled().sentences2})
    assert counts[True].embedded == counts[False].embedded == distinct


# ---- tune's memory ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory: pytest.TempPathFactory) -> TPEncoder:
    """16 layers of width 128: 300 texts at every layer are 2.5 MB, at one layer 0.15 MB."""
    path = save_tiny_model(
        tmp_path_factory.mktemp("deep") / "llama", "llama", num_layers=16, hidden_size=128
    )
    return TPEncoder.from_pretrained(path, **SETTINGS, batch_size=16)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared, oversubscribed machine two spinning threads make these
    small matrices ten times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_tune_memory_does_not_grow_with_layers_times_texts(
    deep_model: TPEncoder, tmp_path: Path
) -> None:
    """Peak numpy/Python memory while tuning 16 layers over 300 distinct sentences stays well
    below the ``texts x layers x d`` floats of holding every layer at once, which the same
    measure does see when ``encode_layers`` holds them; the slices on disk equal that."""
    from tp_rag.tuning import layer_vectors

    rng = np.random.default_rng(0)
    words = [*"man woman dog cat plays guitar piano runs park kitchen cooks food".split()]
    lines = [
        f"g\tf\t2012\t{i:04d}\t{i % 6:.1f}\tA {' '.join(rng.choice(words, 6))} {i}."
        f"\tThe {' '.join(rng.choice(words, 5))} {i + 1000}."
        for i in range(150)
    ]
    (tmp_path / "dev.csv").write_text("\n".join(lines) + "\n")
    task = read_sts(tmp_path / "dev.csv")
    texts = [*task.pooled().sentences1, *task.pooled().sentences2]
    layers = list(range(1, 17))
    all_layers = len(texts) * len(layers) * deep_model.dimension * 4

    import scipy.stats  # noqa: F401  (imported before measuring: modules are not vectors)

    def peak_of(run: Any) -> tuple[Any, int]:
        tracemalloc.start()
        try:
            return run(), tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    result, peak = peak_of(
        lambda: tune(deep_model, task, tp_stops=[2], layers=layers, chunk_size=16)
    )
    assert result.grid.shape == (1, 16)
    print(f"peak {peak / 2**20:.2f} MiB, all layers {all_layers / 2**20:.2f} MiB")
    assert peak < all_layers / 2, (peak, all_layers)
    held, held_peak = peak_of(
        lambda: deep_model.with_settings(tp_stop=2).encode_layers(texts, layers)
    )
    assert held_peak > all_layers, (held_peak, all_layers)

    files = layer_vectors(
        deep_model.with_settings(tp_stop=2), texts, layers, tmp_path, tp=True, chunk_size=16
    )
    for layer in (1, 8, 16):
        np.testing.assert_allclose(np.load(files[layer]), held[layer], atol=1e-5)
