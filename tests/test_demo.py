"""The Gradio demo (tp_rag/demo/app.py): its handlers called directly, and the served app driven
through gradio_client."""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import servers

import tp_rag
from tp_rag import TPEncoder
from tp_rag.cli import build_parser
from tp_rag.cli.demo import server_address
from tp_rag.cli.display import describe_change
from tp_rag.datasets import read_labelled_documents, relevant_only
from tp_rag.demo import app as demo_app
from tp_rag.store import connect

COLUMNS = ["#", "similarity", "vs other", "source", "snippet"]

FILES = {
    "comets.txt": "Comets are balls of ice and dust that grow tails near the Sun.",
    "volcanoes.md": "# Volcanoes\n\nSticky magma traps gas, so some volcanoes explode.",
}


@pytest.fixture(scope="module")
def app_module() -> ModuleType:
    return demo_app


@pytest.fixture(scope="module")
def encoder(tiny_llama: Path) -> TPEncoder:
    return TPEncoder.from_pretrained(tiny_llama, device="cpu")


@pytest.fixture
def demo(app_module: ModuleType, encoder: TPEncoder, tmp_path: Path) -> Any:
    return app_module.Demo(encoder, connect(tmp_path / "db"))


@pytest.fixture
def uploads(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "uploads"
    folder.mkdir()
    paths = []
    for name, text in FILES.items():
        (folder / name).write_text(text, encoding="utf-8")
        paths.append(folder / name)
    return paths


def write_beir(folder: Path, corpus: dict[str, str], queries: dict[str, str], qrels: str) -> None:
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as out:
        for doc_id, text in corpus.items():
            out.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as out:
        for query_id, text in queries.items():
            out.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)


# Queries identical to their relevant document: any deterministic encoder ranks it first.
EXACT_CORPUS = {f"d{i}": f"Topic number {i} is about {w}." for i, w in enumerate("abcdefgh")}
EXACT_QUERIES = {"q1": EXACT_CORPUS["d2"], "q2": EXACT_CORPUS["d5"]}
EXACT_QRELS = "q1\td2\t1\nq2\td5\t2\n"


def test_demo_locates_its_folder_and_sample_corpus(app_module: ModuleType) -> None:
    """The demo is a module of the package and its sample corpus package data beside it; the
    sample has a few dozen documents and a dozen labelled queries, every label pointing at a
    real document."""
    package = Path(tp_rag.__file__).parent
    assert Path(app_module.__file__).parent == package / "demo" == app_module.SAMPLE.parent
    sample = read_labelled_documents(app_module.SAMPLE)
    assert 24 <= len(sample.documents) <= 48
    assert 10 <= len(sample.queries) <= 16
    assert all(doc in sample.doc_ids for docs in sample.qrels.values() for doc in docs)
    assert relevant_only(sample) == sample  # every sample query has a relevant document
    assert len({path.suffix for path in (app_module.SAMPLE / "docs").iterdir()}) >= 3


def test_ingest_handler_reports_counts(demo: Any, uploads: list[Path], tmp_path: Path) -> None:
    """Uploading files ingests them under their file names and reports files, chunks and the
    collection sizes; a bad file is named as skipped; uploading nothing is an error."""
    bad = tmp_path / "uploads" / "empty.txt"
    bad.write_bytes(b"")
    report = demo.ingest_files([str(p) for p in [*uploads, bad]])
    on, off = demo.store.count()
    assert on == off > 0
    assert f"**{on}** chunk{'' if on == 1 else 's'} embedded with TP on" in report
    assert "2 files (2 new or changed" in report
    assert "`empty.txt`: empty file" in report
    sources = {m["source"] for m in demo.store.on.get(include=["metadatas"])["metadatas"]}
    assert sources == set(FILES)
    again = demo.ingest_files([str(p) for p in uploads])
    assert "0 chunks written" in again and demo.store.count() == (on, off)
    with pytest.raises(ValueError, match="no files"):
        demo.ingest_files([])


def test_compare_handler_gives_two_marked_columns(demo: Any, uploads: list[Path]) -> None:
    """Compare returns a TP-on and a TP-off table (rank, similarity, source, snippet); a query
    equal to a document tops both; each row's mark agrees with the other table."""
    demo.ingest_files([str(p) for p in uploads])
    on, off, note = demo.compare(FILES["comets.txt"], k=5)
    assert list(on.columns) == list(off.columns) == COLUMNS
    assert on["source"][0] == off["source"][0] == "comets.txt #0"
    assert float(on["similarity"][0]) == pytest.approx(1.0, abs=1e-3)
    assert all(re.fullmatch(r"-?\d\.\d{4}", value) for value in on["similarity"])  # aligned
    assert list(on["#"]) == list(range(1, len(on) + 1))
    for table, other, side in ((on, off, "TP on"), (off, on, "TP off")):
        ranks = dict(zip(other["source"], other["#"], strict=True))
        for source, rank, mark in zip(table["source"], table["#"], table["vs other"], strict=True):
            change = ranks[source] - rank if source in ranks else None
            assert mark == describe_change(change, side)
    assert "found by both" in note


def test_compare_on_an_empty_collection_and_an_empty_query(demo: Any) -> None:
    """An empty collection gives empty tables and says so; an empty query is an error."""
    on, off, note = demo.compare("anything", k=3)
    assert on.empty and off.empty and "the collection is empty" in note and "Ingest" in note
    with pytest.raises(ValueError, match="empty"):
        demo.compare("   ", k=3)


def test_sample_corpus_loads_once(demo: Any, app_module: ModuleType) -> None:
    """Loading the sample corpus ingests all its documents; loading it again adds nothing."""
    report = demo.ingest_sample()
    count = len(list((app_module.SAMPLE / "docs").iterdir()))
    assert f"{count} files ({count} new or changed" in report
    assert "0 chunks written" in demo.ingest_sample()


def test_evaluate_handler_on_the_sample_set(demo: Any) -> None:
    """Evaluate (sample set) returns nDCG@10, Recall@10, MRR@10 for TP on and off, in [0, 1],
    a six-bar chart frame, and a note with the set's size."""
    table, chart, note = demo.evaluate()
    assert list(table["metric"]) == ["nDCG@10", "Recall@10", "MRR@10"]
    for column in ("TP on", "TP off"):
        assert all(0.0 <= float(value) <= 1.0 for value in table[column])
        assert all(re.fullmatch(r"\d\.\d{4}", value) for value in table[column])  # aligned
    assert len(chart) == 6 and set(chart["setting"]) == {"TP on", "TP off"}
    assert "13 queries over 32 documents" in note


def test_evaluate_an_uploaded_beir_zip_and_loose_files(
    demo: Any, app_module: ModuleType, tmp_path: Path
) -> None:
    """An uploaded BEIR dataset (zip, or its loose files) is loaded and scored; queries equal to
    their relevant document score 1.0 on every metric with TP on and off."""
    folder = tmp_path / "beir"
    write_beir(folder, EXACT_CORPUS, EXACT_QUERIES, EXACT_QRELS)
    archive = tmp_path / "beir.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in folder.rglob("*"):
            if path.is_file():
                zipped.write(path, Path("mydata") / path.relative_to(folder))
    loose = [folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / "test.tsv"]
    for upload in ([archive], loose):
        table, _, note = demo.evaluate(app_module.UPLOAD_CHOICE, [str(p) for p in upload])
        assert table[["TP on", "TP off"]].astype(float).to_numpy().tolist() == [[1.0, 1.0]] * 3
        assert "2 queries over 8 documents" in note


def test_evaluate_averages_over_queries_with_a_relevant_document(
    demo: Any, app_module: ModuleType, tmp_path: Path
) -> None:
    """A query judged only non-relevant (gain 0) is left out of the average rather than
    scored 0; a set where no query has a relevant document is refused."""
    folder = tmp_path / "beir"
    queries = {**EXACT_QUERIES, "q3": "A question nothing answers."}
    write_beir(folder, EXACT_CORPUS, queries, EXACT_QRELS + "q3\td1\t0\n")
    table, _, note = demo.evaluate(app_module.UPLOAD_CHOICE, [str(folder)])
    assert table[["TP on", "TP off"]].astype(float).to_numpy().tolist() == [[1.0, 1.0]] * 3
    assert "2 queries over 8 documents" in note
    (folder / "qrels" / "test.tsv").write_text("q1\td2\t0\nq2\td5\t-1\n")
    with pytest.raises(ValueError, match="no query has a positive relevance label"):
        demo.evaluate(app_module.UPLOAD_CHOICE, [str(folder)])


def test_bad_beir_uploads_are_explained(app_module: ModuleType, tmp_path: Path, demo: Any) -> None:
    """No upload, or an upload without a queries file, gives an error that says what is wrong
    (the reader's other messages are tested in test_datasets.py)."""
    with pytest.raises(ValueError, match="upload"):
        demo.evaluate(app_module.UPLOAD_CHOICE, [])
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n')
    with pytest.raises(ValueError, match=r"no queries\.jsonl.*corpus\.jsonl"):
        demo.evaluate(app_module.UPLOAD_CHOICE, [str(tmp_path / "corpus.jsonl")])


@pytest.fixture(scope="module")
def served(
    app_module: ModuleType, encoder: TPEncoder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Any]]:
    """The app served on 127.0.0.1 (a free port), torn down after the module."""
    demo = app_module.Demo(encoder, connect(tmp_path_factory.mktemp("served") / "db"))
    app = app_module.build_app(demo)
    _, url, _ = app_module.launch(app, port=None, block=False)
    try:
        yield url, demo
    finally:
        app.close()


def test_launched_app_through_gradio_client(served: tuple[str, Any], uploads: list[Path]) -> None:
    """The served app binds to 127.0.0.1 and answers /status, /ingest (file upload), /compare
    and /evaluate through gradio_client like a browser would."""
    from gradio_client import Client, handle_file

    url, demo = served
    assert url.startswith("http://127.0.0.1:")
    client = Client(url, verbose=False)
    assert "holds **0** chunks" in client.predict(api_name="/status")

    report = client.predict([handle_file(str(p)) for p in uploads], api_name="/ingest")
    assert "2 files (2 new or changed" in report
    assert demo.store.count()[0] > 0

    on, off, note = client.predict(FILES["volcanoes.md"], 3, api_name="/compare")
    assert on["headers"] == off["headers"] == COLUMNS
    assert on["data"][0][3] == off["data"][0][3] == "volcanoes.md #0"

    table, _, note = client.predict(
        "Bundled sample set (32 documents, 13 queries)", [], api_name="/evaluate"
    )
    assert [row[0] for row in table["data"]] == ["nDCG@10", "Recall@10", "MRR@10"]
    assert "13 queries" in note


def test_launched_app_shows_errors_and_limits_uploads(
    served: tuple[str, Any], app_module: ModuleType
) -> None:
    """Bad input comes back as the handler's message in the status output (earlier results are
    left alone, not replaced by an error), and the server enforces the upload size limit it
    was launched with."""
    from gradio_client import Client

    url, _ = served
    client = Client(url, verbose=False)
    *_, note = client.predict("  ", 3, api_name="/compare")
    assert note == "**Not done:** the query is empty; type what you are looking for."
    *_, note = client.predict("Uploaded BEIR folder or zip", [], api_name="/evaluate")
    assert note.startswith("**Not done:** upload a BEIR folder")
    assert client.config["max_file_size"] == 20 * 1024**2
    too_big = ("big.txt", b"x" * (20 * 1024**2 + 1), "text/plain")
    response = httpx.post(f"{url}gradio_api/upload", files={"files": too_big}, timeout=60)
    assert response.status_code == 413
    small = httpx.post(f"{url}gradio_api/upload", files={"files": ("ok.txt", b"x")}, timeout=60)
    assert small.status_code == 200


def test_tp_rag_demo_command_serves_the_app(
    tmp_path: Path, tiny_llama: Path, uploads: list[Path]
) -> None:
    """`tp-rag demo` (what `make demo` runs) serves the app on 127.0.0.1, on the port in
    GRADIO_SERVER_PORT when --port is not given; given the name of a collection made by
    `tp-rag ingest`, it reuses that collection's model and settings."""
    from gradio_client import Client

    from tp_rag.cli import main

    db = tmp_path / "db"
    ingest_args = ["ingest", *map(str, uploads), "--collection", "docs", "--db", str(db)]
    assert main([*ingest_args, "--model", str(tiny_llama), "--device", "cpu"]) == 0
    port = servers.free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port)}  # the port as Gradio users give it
    args = ["--db", str(db), "--collection", "docs", "--device", "cpu"]
    with servers.demo(args, port, env=env) as url:
        status = Client(url, verbose=False).predict(api_name="/status")
        assert "Collection `docs` holds **2** chunks" in status


def test_the_running_demo_is_the_folders_only_writer(
    tmp_path: Path, tiny_llama: Path, uploads: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """While `tp-rag demo --db DIR` runs, `tp-rag ingest` into DIR is refused (exit 2) with the
    advice to use a Chroma server, since the demo would never see its chunks; the demo's own
    ingest still writes."""
    from gradio_client import Client, handle_file

    from tp_rag.cli import main

    db = tmp_path / "db"
    port = servers.free_port()
    args = ["--db", str(db), "--model", str(tiny_llama), "--device", "cpu", "--port", str(port)]
    with servers.demo(args, port) as url:
        ingest_args = ["ingest", str(uploads[0]), "--collection", "docs", "--db", str(db)]
        assert main([*ingest_args, "--model", str(tiny_llama), "--device", "cpu"]) == 2
        error = capsys.readouterr().err
        assert f"writing to {db}" in error and "Chroma server" in error
        report = Client(url, verbose=False).predict(
            [handle_file(str(uploads[1]))], api_name="/ingest"
        )
        assert "1 file (1 new or changed" in report


def test_a_second_ingest_of_removed_uploads_asks_for_new_ones(
    demo: Any, uploads: list[Path]
) -> None:
    """Uploads are deleted once ingested; pressing Ingest again with the old list (files that
    are gone) asks for a new upload instead of failing on a missing file, and files that are
    still there are ingested."""
    paths = [str(p) for p in uploads]
    demo.ingest_files(paths)
    for path in uploads:
        path.unlink()
    with pytest.raises(ValueError, match=r"uploaded files are gone.*upload them again"):
        demo.ingest_files(paths)
    fresh = uploads[0].parent / "fresh.txt"
    fresh.write_text("Tides follow the Moon.", encoding="utf-8")
    assert "1 file (1 new or changed" in demo.ingest_files([*paths, str(fresh)])


def test_any_broken_beir_upload_is_a_not_done_message(
    app_module: ModuleType, demo: Any, tmp_path: Path
) -> None:
    """A qrels score too large for any relevance label and a corpus line of 100,000 nested
    `[` are explained as problems of the upload (ValueError, shown as "Not done"), not raised
    as a raw SystemError or RecursionError."""
    huge = tmp_path / "huge"
    write_beir(huge, EXACT_CORPUS, EXACT_QUERIES, "q1\td2\t99999999999999999999\n")
    with pytest.raises(ValueError, match=r"test\.tsv:2: score 99999999999999999999 is out of"):
        demo.evaluate(app_module.UPLOAD_CHOICE, [str(huge)])
    nested = tmp_path / "nested"
    write_beir(nested, EXACT_CORPUS, EXACT_QUERIES, EXACT_QRELS)
    with open(nested / "corpus.jsonl", "a", encoding="utf-8") as out:
        out.write("[" * 100_000 + "\n")
    with pytest.raises(ValueError, match=r"corpus\.jsonl:9: not valid JSON"):
        demo.evaluate(app_module.UPLOAD_CHOICE, [str(nested)])


def test_sample_queries_only_for_the_sample(
    app_module: ModuleType, encoder: TPEncoder, uploads: list[Path], tmp_path: Path
) -> None:
    """The sample's queries are offered as examples for an empty collection or one holding
    the sample corpus, not for a collection of other documents."""
    client = connect(tmp_path / "db")
    mine = app_module.Demo(encoder, client, collection="mine")
    assert len(mine.sample_queries()) == 13  # empty: the sample is what it suggests loading
    mine.ingest_files([str(p) for p in uploads])
    assert mine.sample_queries() == []
    sample = app_module.Demo(encoder, client, collection="sample")
    sample.ingest_sample()
    assert len(sample.sample_queries()) == 13


def test_uploads_are_deleted_once_processed(
    served: tuple[str, Any], uploads: list[Path], tmp_path: Path
) -> None:
    """Files uploaded for /ingest and /evaluate do not stay in Gradio's upload folder after
    the request (up to 20 MB each would pile up otherwise)."""
    import uuid
    import zipfile

    from gradio.utils import get_upload_folder
    from gradio_client import Client, handle_file

    url, _ = served
    client = Client(url, verbose=False)
    tag = uuid.uuid4().hex[:12]  # names no other run has uploaded
    marker = tmp_path / f"upload-{tag}.md"
    marker.write_text(uploads[0].read_text())
    client.predict([handle_file(str(marker))], api_name="/ingest")
    archive = tmp_path / f"beir-{tag}.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("corpus.jsonl", '{"_id": "d1", "text": "about wings"}\n')
        zipped.writestr("queries.jsonl", '{"_id": "q1", "text": "wings"}\n')
        zipped.writestr("qrels/test.tsv", "q1\td1\t1\n")
    client.predict("Uploaded BEIR folder or zip", [handle_file(str(archive))], api_name="/evaluate")
    left = [p.name for p in Path(get_upload_folder()).rglob(f"*{tag}*")]
    assert left == []


def test_demo_address_flags_then_gradio_variables_then_loopback() -> None:
    """--host/--port win; without them GRADIO_SERVER_NAME/GRADIO_SERVER_PORT (Gradio's own
    conventions) are honoured; with neither, 127.0.0.1:7860; a bad port variable is explained."""
    plain = build_parser().parse_args(["demo"])
    flags = build_parser().parse_args(["demo", "--host", "0.0.0.0", "--port", "9000"])
    gradio_env = {"GRADIO_SERVER_NAME": "192.168.1.5", "GRADIO_SERVER_PORT": "8111"}
    assert server_address(plain, {}) == ("127.0.0.1", 7860)
    assert server_address(plain, gradio_env) == ("192.168.1.5", 8111)
    assert server_address(flags, gradio_env) == ("0.0.0.0", 9000)
    with pytest.raises(ValueError, match="GRADIO_SERVER_PORT='http' is not a port number"):
        server_address(plain, {"GRADIO_SERVER_PORT": "http"})


def test_status_and_reports_say_what_to_do_next(demo: Any, uploads: list[Path]) -> None:
    """An empty collection's status says to ingest files or the sample corpus; after an
    ingest, the report points to the Compare tab."""
    assert "Load the sample corpus" in demo.status()
    report = demo.ingest_files([str(p) for p in uploads])
    assert "**Next:** search your documents on the **Compare** tab" in report
    assert "Load the sample corpus" not in demo.status()


class RecordedProgress:
    """Stands in for gr.Progress (a callable taking a fraction and a description)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    def __call__(self, fraction: float, desc: str = "") -> None:
        self.calls.append((fraction, desc))


def test_ingest_progress_counts_chunks_with_time_left(demo: Any) -> None:
    """Loading the sample corpus reports chunks embedded with TP on and off out of the total
    (estimated while files remain), with the time left; the bar never moves back."""
    progress = RecordedProgress()
    demo.ingest_sample(progress)
    lines = [desc for _, desc in progress.calls if desc.startswith("embedded")]
    total = demo.store.count()[0]
    assert lines[-1].startswith(f"embedded {total}/{total} chunks with TP on, {total} with TP off")
    assert any(" left" in line for line in lines)
    assert any(re.search(r"/~\d+ chunks", line) for line in lines)  # while files remain
    fractions = [fraction for fraction, _ in progress.calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_evaluate_progress_counts_texts_with_time_left(demo: Any) -> None:
    """Evaluate reports what it embeds, in texts done out of the total, before and during."""
    progress = RecordedProgress()
    demo.evaluate(progress=progress)
    first, *rest = [desc for _, desc in progress.calls]
    assert first == "embedding 32 documents and 13 queries with TP on and off"
    assert rest[0].startswith("embedding documents, TP on: 32/90 texts")
    assert "about" in rest[0] and "left" in rest[0]
    assert rest[-1].startswith("embedding queries, TP off: 90/90 texts")


def test_the_method_choice_switches_to_htp_over_the_same_weights(
    app_module: ModuleType, tiny_gpt2_real_tokenizer: Path, tmp_path: Path
) -> None:
    """The settings' method choice: HTP gets its own encoder (HTP settings, the same loaded
    weights) and its own collections; ingest, compare and evaluate work on it, with the page's
    TP on / TP off columns; switching back returns to the TP encoder and its collections."""
    tp_encoder = TPEncoder.from_pretrained(tiny_gpt2_real_tokenizer, device="cpu")
    demo: Any = app_module.Demo(tp_encoder, connect(tmp_path / "db"))
    tp_store = demo.store.on.name

    assert "Collection" in demo.set_method("htp")
    htp = demo.encoder
    assert htp.config.method == "htp" and htp.config.pooling == "mean"
    assert htp._loaded is tp_encoder._loaded  # no second copy of the weights
    assert demo.store.on.name != tp_store
    assert "HTP" in "\n".join(app_module.settings_lines(demo))

    demo.ingest_sample()
    on, off, _ = demo.compare("How do tides work?", k=3)
    assert len(on) == len(off) == 3
    table, _, _ = demo.evaluate()
    assert list(table.columns)[1:3] == ["TP on", "TP off"]
    assert table["TP on"].map(float).between(0, 1).all()

    demo.set_method("tp")
    assert demo.encoder is tp_encoder and demo.store.on.name == tp_store
    with pytest.raises(ValueError, match="tp, htp"):
        demo.set_method("bert")
