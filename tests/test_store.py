"""The TP-on/TP-off collection pair in Chroma (tp_rag.store)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import servers

from tp_rag import TPConfig, TPEncoder
from tp_rag.documents import Chunk
from tp_rag.store import (
    ConfigMismatchError,
    Hit,
    TPStore,
    check_name,
    chunk_id,
    connect,
    twin_name,
)

TEXTS = [
    "The Moon pulls the oceans into two bulges.",
    "Yeast makes bread dough rise.",
    "Hash tables find values by key.",
    "Glaciers carve U-shaped valleys.",
]


@pytest.fixture(scope="module")
def encoder(tiny_llama: Path) -> TPEncoder:
    return TPEncoder.from_pretrained(tiny_llama, device="cpu")


def write(store: TPStore, source: str, texts: list[str]) -> list[Chunk]:
    chunks = [Chunk(text, i, 100 * i, 100 * i + len(text)) for i, text in enumerate(texts)]
    entries = [(source, chunk) for chunk in chunks]
    store.upsert(
        entries,
        store.encoder.encode(texts, tp=True),
        store.encoder.encode(texts, tp=False),
    )
    return chunks


def recorded(collection: Any) -> dict[str, Any]:
    """A collection's one record of its encoder: its embedding function's stored configuration."""
    return collection.configuration_json["embedding_function"]["config"]


def test_collections_record_fingerprint_settings_and_embedding_function(
    tmp_path: Path, encoder: TPEncoder
) -> None:
    """NAME holds TP-on vectors and NAME-tp-off TP-off ones; each records its fingerprint and
    the encoder settings, uses cosine distance, and carries the tp_rag embedding function."""
    store = TPStore(connect(tmp_path / "db"), "docs", encoder)
    assert (store.on.name, store.off.name) == ("docs", twin_name("docs")) == ("docs", "docs-tp-off")
    for collection, tp in ((store.on, True), (store.off, False)):
        config = encoder.config.replace(tp=tp)
        record = recorded(collection)
        assert record["fingerprint"] == config.fingerprint()
        settings = {name: record[name] for name in TPConfig.field_names()}
        assert settings == {**config.to_dict(), "model": str(Path(config.model).resolve())}
        assert collection.configuration_json["hnsw"]["space"] == "cosine"
        assert collection.configuration_json["embedding_function"]["name"] == "tp_rag"
    assert recorded(store.on)["fingerprint"] != recorded(store.off)["fingerprint"]


def test_open_rebuilds_the_recorded_encoder(
    tmp_path: Path, tiny_llama: Path, weight_reads: list[str]
) -> None:
    """``TPStore.open`` without a model gives the encoder the store records: the same model and
    settings, so the same vectors; runtime settings may be overridden, a space setting may not."""
    written = TPEncoder.from_pretrained(tiny_llama, device="cpu", tp_stop=3, output_layer=-2)
    write(TPStore(connect(tmp_path / "db"), "docs", written), "s", TEXTS)

    store = TPStore.open(tmp_path / "db", "docs", device="cpu", batch_size=2)
    assert store.encoder.config.fingerprint() == written.config.fingerprint()
    assert store.encoder.config.batch_size == 2
    assert (store.encoder.config.tp_stop, store.encoder.config.output_layer) == (3, 3)
    assert store.encoder._loaded is written._loaded  # no second load of the same weights
    on, off = store.search(TEXTS[3], k=1)
    assert on[0].text == off[0].text == TEXTS[3]
    assert on[0].similarity == pytest.approx(1.0, abs=1e-4)

    with pytest.raises(ConfigMismatchError, match="tp_stop 3 vs 2"):
        TPStore.open(connect(tmp_path / "db"), "docs", tp_stop=2)
    assert TPStore.open(tmp_path / "db", "docs").count() == (4, 4)


def test_open_with_a_model_and_for_a_new_store(tmp_path: Path, tiny_llama: Path) -> None:
    """With a model, ``open`` loads it with the options given and checks it against the
    store; a store that does not exist is made, or refused before loading with
    ``create=False``."""
    db = tmp_path / "db"
    with pytest.raises(ValueError, match=r"no tp-rag collection 'docs' in .*tp-rag ingest"):
        TPStore.open(db, "docs", tiny_llama, create=False)
    assert connect(db).list_collections() == []
    store = TPStore.open(db, "docs", tiny_llama, device="cpu", tp_stop=3)
    assert store.count() == (0, 0) and store.encoder.config.tp_stop == 3
    assert recorded(store.on)["fingerprint"] == store.encoder.config.fingerprint()
    with pytest.raises(ConfigMismatchError, match="tp_stop 3 vs 2"):
        TPStore.open(db, "docs", tiny_llama, tp_stop=2)


def test_records_of_an_earlier_tp_rag_are_refused_with_the_re_ingest_advice(
    tmp_path: Path, encoder: TPEncoder
) -> None:
    """A collection whose record an earlier tp-rag wrote (no record format, a 16-character
    digest) is not migrated: opening it, with an encoder or from its record, is refused with
    how to re-ingest, and nothing is written to it."""
    from tp_rag.chroma import TPEmbeddingFunction

    earlier = TPEmbeddingFunction.from_encoder(encoder).get_config()
    del earlier["format"], earlier["method"]
    earlier["model_digest"] = earlier["model_digest"][:16]

    class EarlierFunction(TPEmbeddingFunction):
        """Stores the record as the earlier tp-rag did."""

        def get_config(self) -> dict[str, Any]:
            return earlier

        @staticmethod
        def build_from_config(config: dict[str, Any]) -> Any:
            return config  # what Chroma's legacy check calls at creation

    client = connect(tmp_path / "db")
    client.create_collection("docs", embedding_function=EarlierFunction.from_encoder(encoder))
    for open_store in (
        lambda: TPStore(client, "docs", encoder),
        lambda: TPStore.open(client, "docs"),
    ):
        with pytest.raises(ConfigMismatchError) as error:
            open_store()
        message = str(error.value)
        assert "Re-ingest" in message and "--collection" in message and "'docs'" in message
    assert [c.name for c in client.list_collections()] == ["docs"]  # no twin was made


def test_query_equal_to_a_chunk_finds_it_first_on_both_sides(
    tmp_path: Path, encoder: TPEncoder
) -> None:
    """A query identical to a stored chunk embeds to the same vector: rank 1, similarity 1,
    with its source, index and span, in the TP-on and the TP-off list."""
    store = TPStore(connect(tmp_path / "db"), "docs", encoder)
    write(store, "/data/a.txt", TEXTS)
    on, off = store.search(TEXTS[2], k=3)
    for hits in (on, off):
        assert [h.rank for h in hits] == [1, 2, 3]
        best = hits[0]
        assert (best.text, best.source, best.chunk_index) == (TEXTS[2], "/data/a.txt", 2)
        assert (best.start, best.end) == (200, 200 + len(TEXTS[2]))
        assert best.similarity == pytest.approx(1.0, abs=1e-4)
        assert best.id == chunk_id("/data/a.txt", Chunk(TEXTS[2], 2, 200, 200 + len(TEXTS[2])))
        assert hits[0].similarity >= hits[1].similarity >= hits[2].similarity
    assert store.count() == (4, 4)


def test_k_larger_than_the_collection_and_an_empty_collection(
    tmp_path: Path, encoder: TPEncoder
) -> None:
    """Asking for more hits than chunks returns them all; an empty store returns nothing."""
    store = TPStore(connect(tmp_path / "db"), "docs", encoder)
    assert store.search("anything", k=5) == ([], [])
    write(store, "s", TEXTS[:2])
    on, off = store.search("anything", k=10)
    assert len(on) == len(off) == 2
    with pytest.raises(ValueError, match="empty"):
        store.search("  ", k=3)
    with pytest.raises(ValueError, match="k=0"):
        store.search("x", k=0)


def test_other_encoder_settings_are_refused_naming_both(tmp_path: Path, encoder: TPEncoder) -> None:
    """Opening a store with another embedding space raises ConfigMismatchError that names both
    fingerprints and the differing setting; the stored vectors are left alone."""
    client = connect(tmp_path / "db")
    write(TPStore(client, "docs", encoder), "s", TEXTS)
    other = TPEncoder.from_pretrained(encoder.config.model, device="cpu", tp_stop=3)
    assert other.config.fingerprint() != encoder.config.fingerprint()

    with pytest.raises(ConfigMismatchError) as error:
        TPStore(client, "docs", other)
    message = str(error.value)
    assert encoder.config.replace(tp=True).fingerprint() in message
    assert other.config.replace(tp=True).fingerprint() in message
    assert "tp_stop 2 vs 3" in message
    assert TPStore(client, "docs", encoder).count() == (4, 4)


def test_a_store_of_the_previous_method_version_is_refused(
    tmp_path: Path, encoder: TPEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vectors written under method tp-rag/2 (whose digest missed the model config) are not
    mixed with today's: the store is refused, naming the old method and saying to re-ingest."""
    import tp_rag.config

    client = connect(tmp_path / "db")
    with monkeypatch.context() as old:
        old.setattr(tp_rag.config, "_METHOD_VERSION", "tp-rag/2")
        write(TPStore(client, "docs", encoder), "s", TEXTS)
    with pytest.raises(ConfigMismatchError, match=r"method version 'tp-rag/2'.*Re-ingest"):
        TPStore(client, "docs", encoder)


def test_runtime_settings_do_not_split_the_space(tmp_path: Path, encoder: TPEncoder) -> None:
    """batch_size (like device and dtype) does not change the vectors, so it is accepted."""
    client = connect(tmp_path / "db")
    write(TPStore(client, "docs", encoder), "s", TEXTS)
    other = TPEncoder.from_pretrained(encoder.config.model, device="cpu", batch_size=3)
    assert TPStore(client, "docs", other).count() == (4, 4)


def test_a_missing_store_is_not_created_for_queries(tmp_path: Path, encoder: TPEncoder) -> None:
    """create=False (querying) refuses a store that does not exist instead of making it."""
    client = connect(tmp_path / "db")
    with pytest.raises(ValueError, match="no collection 'docs'"):
        TPStore(client, "docs", encoder, create=False)
    assert client.list_collections() == []


def test_a_collection_not_made_by_tp_rag_is_refused(tmp_path: Path, encoder: TPEncoder) -> None:
    """A same-named collection without a fingerprint is never written into."""
    client = connect(tmp_path / "db")
    client.create_collection("plain", embedding_function=None)
    with pytest.raises(ValueError, match="not made by tp-rag"):
        TPStore(client, "plain", encoder)
    with pytest.raises(ValueError, match="not made by tp-rag"):
        TPStore.open(client, "plain")


@pytest.mark.parametrize(
    ("name", "problem"),
    [("ab", "not valid"), ("-docs", "not valid"), ("a..b", "'..'"), ("docs-tp-off", "twin")],
)
def test_bad_names_are_refused(name: str, problem: str) -> None:
    """Names Chroma would reject, and names of twins, fail with an explanation."""
    with pytest.raises(ValueError, match=problem):
        check_name(name)
    assert check_name("my.docs_2") == "my.docs_2"


def test_chunk_ids_depend_on_source_position_and_text() -> None:
    """Equal chunks of one source get equal ids; any change of source, index, span or text
    gives another id."""
    chunk = Chunk("text", 0, 0, 4)
    assert chunk_id("a", chunk) == chunk_id("a", Chunk("text", 0, 0, 4))
    variants = [("b", chunk), ("a", Chunk("text", 1, 0, 4)), ("a", Chunk("text", 0, 5, 9))]
    variants.append(("a", Chunk("text!", 0, 0, 5)))
    assert len({chunk_id(s, c) for s, c in variants} | {chunk_id("a", chunk)}) == 5


def hit(id_: str, rank: int) -> Hit:
    return Hit(id_, "t", "s", 0, 0, 1, 0.5, rank)


def test_connect_arguments() -> None:
    """A database folder and a server address exclude each other; a port needs a host."""
    with pytest.raises(ValueError, match="not both"):
        connect("db", host="localhost")
    with pytest.raises(ValueError, match="needs a host"):
        connect("db", port=8000)


@pytest.mark.skipif(servers.CHROMA is None, reason="chromadb's `chroma` command is absent")
def test_store_through_a_chroma_server(tmp_path: Path, encoder: TPEncoder) -> None:
    """With a host, the store talks to a Chroma server (HttpClient) and works the same."""
    with servers.running(tmp_path / "server") as (host, port):
        client = connect(host=host, port=port)
        store = TPStore(client, "remote", encoder)
        write(store, "s", TEXTS)
        on, off = store.search(TEXTS[1], k=2)
        assert on[0].text == off[0].text == TEXTS[1]
        other = TPEncoder.from_pretrained(encoder.config.model, device="cpu", tp_stop=3)
        with pytest.raises(ConfigMismatchError):
            TPStore(connect(host=host, port=port), "remote", other)
