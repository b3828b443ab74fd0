"""Ingestion into the TP-on/TP-off pair and the ``tp-rag ingest`` / ``query`` commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import servers
from corpus import CHUNKING, DOCS, expected_ids, ids, write_corpus

from tp_rag import TPEncoder
from tp_rag.cli import main
from tp_rag.documents import read_document
from tp_rag.ingest import IngestSummary, ingest
from tp_rag.store import TPStore, connect


@pytest.fixture(scope="module")
def encoder(tiny_llama: Path) -> TPEncoder:
    return TPEncoder.from_pretrained(tiny_llama, device="cpu")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus")


def test_ingest_writes_every_chunk_with_metadata_to_both_collections(
    tmp_path: Path, corpus: Path, encoder: TPEncoder
) -> None:
    """Each chunk lands in NAME and NAME-tp-off under the same id, with its source path,
    chunk index and character span into the document's text."""
    store = TPStore(connect(tmp_path / "db"), "docs", encoder)
    summary = ingest([corpus], store, **CHUNKING)

    want = set().union(*(expected_ids(corpus / n, encoder, **CHUNKING) for n in DOCS))
    assert summary.files == summary.updated == 3
    assert summary.chunks == len(want) > 3
    assert ids(store.on) == ids(store.off) == want
    records = store.on.get(include=["documents", "metadatas"])
    for text, meta in zip(records["documents"], records["metadatas"], strict=True):
        document = read_document(meta["source"])
        assert Path(meta["source"]).parent == corpus.resolve()
        assert document[meta["start"] : meta["end"]] == text
        assert isinstance(meta["chunk_index"], int)


def test_reingesting_the_same_files_adds_nothing(
    tmp_path: Path, corpus: Path, encoder: TPEncoder
) -> None:
    """A second run over unchanged files embeds nothing and leaves exactly the same chunks
    (0 duplicates), also when the chunk sizes are not repeated (they are recorded)."""
    store = TPStore(connect(tmp_path / "db"), "docs", encoder)
    first = ingest([corpus], store, **CHUNKING)
    before = ids(store.on), ids(store.off)

    again = ingest([corpus, corpus / "bread.txt"], store)

    assert (again.files, again.unchanged, again.updated) == (3, 3, 0)
    assert again.chunks == again.removed == 0
    assert (ids(store.on), ids(store.off)) == before
    assert store.count() == (first.chunks, first.chunks)


def test_a_changed_file_replaces_its_old_chunks(
    tmp_path: Path, corpus: Path, encoder: TPEncoder
) -> None:
    """Editing a file and re-ingesting leaves exactly the new file's chunks for it (old ones
    removed from both collections); other files are untouched."""
    store = TPStore(connect(tmp_path / "db"), "docs", encoder)
    ingest([corpus], store, **CHUNKING)
    tides, bread = str((corpus / "tides.md").resolve()), str((corpus / "bread.txt").resolve())
    bread_before = ids(store.on, bread)
    (corpus / "tides.md").write_text(
        "# Tides\n\nTwo high waters a day come from the Moon's pull on the sea.", encoding="utf-8"
    )

    summary = ingest([corpus], store)

    want = expected_ids(corpus / "tides.md", encoder, **CHUNKING)
    assert (summary.updated, summary.unchanged) == (1, 2)
    assert summary.removed > 0
    assert ids(store.on, tides) == ids(store.off, tides) == want
    texts = store.on.get(where={"source": tides}, include=["documents"])["documents"]
    assert not any("Spring tides" in text for text in texts)
    assert ids(store.on, bread) == ids(store.off, bread) == bread_before


def test_bad_files_are_reported_and_nothing_of_them_is_written(
    tmp_path: Path, corpus: Path, encoder: TPEncoder
) -> None:
    """Empty, binary, corrupt, non-UTF-8, unsupported and missing inputs are listed by name
    with a reason; none of them has a chunk in either collection; good files still go in."""
    (corpus / "empty.md").write_bytes(b"")
    (corpus / "photo.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj <<")
    (corpus / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "sheet.xlsx").write_bytes(b"PK\x03\x04")
    inputs = [corpus, tmp_path / "sheet.xlsx", tmp_path / "missing.txt"]
    store = TPStore(connect(tmp_path / "db"), "docs", encoder)

    summary = ingest(inputs, store, **CHUNKING)

    reasons = {Path(path).name: reason for path, reason in summary.skipped}
    assert set(reasons) == {
        "empty.md",
        "photo.txt",
        "broken.pdf",
        "latin1.txt",
        "sheet.xlsx",
        "missing.txt",
    }
    assert "empty" in reasons["empty.md"]
    assert "binary" in reasons["photo.txt"]
    assert "corrupt PDF" in reasons["broken.pdf"]
    assert "UTF-8" in reasons["latin1.txt"]
    sources = {meta["source"] for meta in store.on.get(include=["metadatas"])["metadatas"]}
    assert {Path(s).name for s in sources} == set(DOCS)
    assert ids(store.on) == ids(store.off)
    assert summary.files == 3


def test_the_later_of_two_files_with_one_source_name_wins(
    tmp_path: Path, encoder: TPEncoder
) -> None:
    """When two files map to the same source (demo uploads are known by file name), the
    later one replaces the earlier, even within one run."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("First version about comets.")
    (tmp_path / "b" / "notes.txt").write_text("Second version about volcanoes.")
    store = TPStore(connect(tmp_path / "db"), "docs", encoder)

    ingest([tmp_path / "a", tmp_path / "b"], store, source_name=lambda path: path.name)

    texts = store.on.get(include=["documents"])["documents"]
    assert texts == ["Second version about volcanoes."]
    assert store.count() == (1, 1)


def test_chunks_longer_than_the_encoder_input_are_refused(
    tmp_path: Path, corpus: Path, encoder: TPEncoder
) -> None:
    """chunk_size must leave room for the prompt within the encoder's max_length."""
    store = TPStore(connect(tmp_path / "db"), "docs", encoder)
    with pytest.raises(ValueError, match="max_length"):
        ingest([corpus], store, chunk_size=encoder.config.max_length)
    assert store.count() == (0, 0)


def test_summary_reads_as_a_sentence() -> None:
    """The end-of-run summary names files, chunks, skipped and seconds."""
    summary = IngestSummary(files=3, updated=2, unchanged=1, chunks=9, skipped=[("x", "y")])
    summary.seconds = 1.25
    assert str(summary) == (
        "3 files (2 new or changed, 1 unchanged), 9 chunks written, 0 removed, 1 skipped, 1.2 s"
    )


def test_cli_ingest_query_and_mismatch(
    tmp_path: Path,
    corpus: Path,
    tiny_llama: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`tp-rag ingest` fills both collections and prints a summary; `tp-rag query` prints the
    TP-on and TP-off lists side by side (without --model it uses the collection's encoder);
    other encoder settings are refused with exit status 2 and both configurations named."""
    db = str(tmp_path / "db")
    common = ["--collection", "docs", "--db", db]
    model = ["--model", str(tiny_llama), "--device", "cpu"]

    assert main(["ingest", str(corpus), *common, *model, "--chunk-size", "24"]) == 0
    out = capsys.readouterr().out
    assert "3 files (3 new or changed, 0 unchanged)" in out
    on, off = TPStore(connect(db), "docs", TPEncoder.from_pretrained(tiny_llama)).count()
    assert on == off > 0

    assert main(["ingest", str(corpus), *common]) == 0  # no --model: the recorded encoder
    assert "0 chunks written" in capsys.readouterr().out

    monkeypatch.setenv("COLUMNS", "250")  # rich wraps to the terminal width
    query = "Feed it daily at room temperature; in the fridge, once a week."
    assert main(["query", query, *common, "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "TP on" in out and "TP off" in out
    assert out.count("bread.txt") >= 2  # the matching chunk heads both columns

    assert main(["ingest", str(corpus), *common, *model, "--tp-stop", "3"]) == 2
    error = capsys.readouterr().err
    assert "tp-rag ingest: error:" in error
    assert "tp_stop 2 vs 3" in error
    encoder = TPEncoder.from_pretrained(tiny_llama)
    assert encoder.config.fingerprint() in error
    assert encoder.config.replace(tp_stop=3).fingerprint() in error
    assert main(["query", query, *common, *model, "--tp-stop", "3"]) == 2
    assert "tp_stop 2 vs 3" in capsys.readouterr().err
    assert main(["query", "x", "--collection", "absent", "--db", db]) == 2
    assert "no tp-rag collection 'absent'" in capsys.readouterr().err


def test_interrupted_ingestion_completes_on_rerun(
    tmp_path: Path, tiny_llama: Path, encoder: TPEncoder
) -> None:
    """Kill `tp-rag ingest` while it writes; the re-run ends with exactly the chunks of an
    uninterrupted ingestion in both collections: nothing lost, nothing duplicated."""
    corpus = tmp_path / "many"
    corpus.mkdir()
    for i in range(16):
        text = f"Document {i}. " + " ".join(f"fact{i}-{j} is noted here." for j in range(4))
        (corpus / f"doc{i:02d}.txt").write_text(text)
    chunking = ["--chunk-size", "32", "--chunk-overlap", "0"]
    args = ["ingest", str(corpus), "--collection", "big", "--model", str(tiny_llama)]
    args += ["--device", "cpu", *chunking]
    want = expected_ids(corpus, encoder, chunk_size=32, chunk_overlap=0)
    assert len(want) > 32

    db = tmp_path / "db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        # One chunk per step, so the run is killed with most of its work ahead of it.
        [sys.executable, "-m", "tp_rag", *args, "--db", str(db), "--batch-size", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # stderr is not a terminal: one line per step
            if line.startswith("chunks written:"):
                process.kill()
                break
        else:
            pytest.fail("the ingestion ended without reporting written chunks")
    finally:
        process.kill()
        process.wait(timeout=60)
    assert process.returncode != 0  # it was killed, not finished

    partial = TPStore(connect(db), "big", encoder).count()
    assert min(partial) > 0 and max(partial) < len(want)

    assert main([*args, "--db", str(db)]) == 0  # batch size is not part of the space
    store = TPStore(connect(db), "big", encoder)
    assert store.count() == (len(want), len(want))
    assert ids(store.on) == ids(store.off) == want


def test_cli_ingest_loads_the_model_once(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, weight_reads: list[str]
) -> None:
    """One `tp-rag ingest` reads the weights once for both TP on and TP off, also when the
    model is a relative path (Chroma's stored embedding-function config uses absolute ones)."""
    from tp_rag.testing import save_tiny_model

    save_tiny_model(tmp_path / "fresh", "llama", num_layers=2, hidden_size=32, seed=7)
    monkeypatch.chdir(tmp_path)
    args = ["ingest", str(corpus), "--collection", "once", "--db", "db", "--model", "fresh"]
    assert main([*args, "--device", "cpu"]) == 0
    assert len(weight_reads) == 1


# --- several writers, a server that dies, pruning ----------------------------------------------


_HOLD_LOCK = """
import sys, time
from tp_rag.store import connect, write_lock

with write_lock(connect(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_to_a_folder_is_refused_and_a_dead_ones_lock_is_free(
    tmp_path: Path, corpus: Path, tiny_llama: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While one process writes to an embedded folder, `tp-rag ingest` on it stops at once
    with exit 2, naming the folder and the writer's pid (no embedding done twice); once that
    writer is killed with SIGKILL, its lock no longer blocks anyone."""
    db = tmp_path / "db"
    args = ["ingest", str(corpus), "--collection", "docs", "--db", str(db)]
    args += ["--model", str(tiny_llama), "--device", "cpu"]
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(db)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert main(args) == 2
        error = capsys.readouterr().err
        assert f"another ingest is writing to {db} (pid {holder.pid})" in error
        assert "Chroma server" in error
        holder.kill()
        holder.wait(timeout=30)
        assert main(args) == 0
        assert "3 files (3 new or changed" in capsys.readouterr().out
    finally:
        holder.kill()
        holder.wait(timeout=30)


@pytest.mark.slow  # two processes load torch and the model side by side: ~30-50 s on 2 cores
def test_two_ingests_started_together_on_a_fresh_folder(
    tmp_path: Path, corpus: Path, tiny_llama: Path, encoder: TPEncoder
) -> None:
    """Two `tp-rag ingest` processes on a fresh folder: no raw Chroma error; each one either
    finishes or is refused cleanly (exit 2), and the store ends up exactly complete."""
    db = tmp_path / "db"
    command = [sys.executable, "-m", "tp_rag", "ingest", str(corpus), "--collection", "docs"]
    command += ["--db", str(db), "--model", str(tiny_llama), "--device", "cpu", "--chunk-size"]
    command += ["24", "--chunk-overlap", "4"]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]  # type: ignore[union-attr]
    for code, error in results:
        assert "Traceback" not in error, error
        assert code == 0 or (code == 2 and "another ingest is writing to" in error), error
    assert any(code == 0 for code, _ in results)
    store = TPStore(connect(db), "docs", encoder)
    want = set().union(*(expected_ids(corpus / n, encoder, **CHUNKING) for n in DOCS))
    assert ids(store.on) == ids(store.off) == want


@pytest.mark.skipif(servers.CHROMA is None, reason="chromadb's `chroma` command is absent")
def test_a_server_that_dies_mid_ingest_gives_a_clean_error_and_rerun_resumes(
    tmp_path: Path, tiny_llama: Path, encoder: TPEncoder
) -> None:
    """Kill the Chroma server while `tp-rag ingest` writes to it: the command exits 2 with
    the down-server message and the advice to re-run (no traceback); after a restart, the
    re-run completes the store."""
    corpus = tmp_path / "many"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i:02d}.txt").write_text(f"Document {i}. " + "A fact is noted. " * 6)
    port = servers.free_port()
    server = servers.start(tmp_path / "srv", port)
    args = ["ingest", str(corpus), "--collection", "remote", "--model", str(tiny_llama)]
    args += ["--device", "cpu", "--chroma-host", "127.0.0.1", "--chroma-port", str(port)]
    args += ["--chunk-size", "32", "--chunk-overlap", "0"]
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "tp_rag", *args, "--batch-size", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith("chunks written:"):
                server.kill()
                server.wait(timeout=30)
                break
        error = process.stderr.read()
        assert process.wait(timeout=120) == 2, error
        assert "Traceback" not in error
        assert "Could not connect to a Chroma server" in error
        assert "re-run the same command" in error
        server = servers.start(tmp_path / "srv", port)
        assert main(args) == 0
        store = TPStore(connect(host="127.0.0.1", port=port), "remote", encoder)
        want = expected_ids(corpus, encoder, chunk_size=32, chunk_overlap=0)
        assert ids(store.on) == ids(store.off) == want
    finally:
        server.kill()
        server.wait(timeout=30)


def test_prune_removes_the_chunks_of_files_that_are_gone(
    tmp_path: Path, corpus: Path, encoder: TPEncoder
) -> None:
    """`prune` removes, from both collections, the chunks of files deleted from the folder,
    and nothing else; a dry run only lists them; sources outside the paths are kept."""
    from tp_rag.ingest import prune

    store = TPStore(connect(tmp_path / "db"), "docs", encoder)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("Elsewhere, a file that stays in the store.")
    ingest([corpus, other], store, **CHUNKING)
    ingest([corpus / "tides.md"], store, source_name=lambda p: "sample/tides.md")
    bread = str((corpus / "bread.txt").resolve())
    bread_ids = ids(store.on, bread)
    before = ids(store.on)
    (corpus / "bread.txt").unlink()

    dry = prune([corpus], store, dry_run=True)
    assert (dry.sources, dry.chunks, dry.dry_run) == ([bread], len(bread_ids), True)
    assert ids(store.on) == before

    done = prune([corpus], store)
    assert done.sources == [bread]
    assert ids(store.on) == ids(store.off) == before - bread_ids
    assert ids(store.on, str((other / "keep.txt").resolve()))  # not under the given path
    assert ids(store.on, "sample/tides.md")  # not recorded as a path: never pruned


def test_prune_refuses_a_path_that_is_missing_or_holds_no_files(
    tmp_path: Path, corpus: Path, encoder: TPEncoder
) -> None:
    """A mistyped or empty folder would make every recorded file look gone: refused, nothing
    removed."""
    from tp_rag.ingest import prune

    store = TPStore(connect(tmp_path / "db"), "docs", encoder)
    ingest([corpus], store, **CHUNKING)
    before = ids(store.on)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="does not exist; nothing pruned"):
        prune([corpus, tmp_path / "corpsu"], store)
    with pytest.raises(ValueError, match=r"no files tp-rag reads under .*nothing pruned"):
        prune([empty], store)
    assert ids(store.on) == ids(store.off) == before


def test_cli_prune_and_dry_run(
    tmp_path: Path, corpus: Path, tiny_llama: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ingest --prune --dry-run` lists what would go and changes nothing; `--prune` removes
    it; a missing path is refused with exit 2 before anything is written."""
    db = str(tmp_path / "db")
    args = ["ingest", str(corpus), "--collection", "docs", "--db", db]
    model = ["--model", str(tiny_llama), "--device", "cpu"]
    assert main([*args, *model]) == 0
    capsys.readouterr()
    (corpus / "keys.html").unlink()
    gone = str((corpus / "keys.html").resolve())

    assert main([*args, "--prune", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove" in out and gone in out
    assert main([*args, "--prune"]) == 0
    out = capsys.readouterr().out
    assert "removed" in out and gone in out
    assert main([*args, "--prune"]) == 0
    assert "removed 0 chunks of 0 files" in capsys.readouterr().out
    typo = ["ingest", str(corpus), str(tmp_path / "typo"), *args[2:], "--prune"]
    assert main(typo) == 2
    assert "nothing pruned" in capsys.readouterr().err


def test_prune_keeps_a_present_file_that_a_folder_walk_does_not_list(
    tmp_path: Path, corpus: Path, encoder: TPEncoder
) -> None:
    """`ingest P P/.hid/h.txt`, then `prune P`: the hidden file is still there, so its chunks
    stay; once it is deleted they go."""
    from tp_rag.ingest import prune

    hidden = corpus / ".hid" / "h.txt"
    hidden.parent.mkdir()
    hidden.write_text("A hidden note, named on the command line, that still exists.")
    store = TPStore(connect(tmp_path / "db"), "docs", encoder)
    ingest([corpus, hidden], store, **CHUNKING)
    source = str(hidden.resolve())
    kept = ids(store.on, source)
    assert kept
    assert prune([corpus], store).sources == []
    assert ids(store.on, source) == ids(store.off, source) == kept
    hidden.unlink()
    assert prune([corpus], store).sources == [source]
    assert not ids(store.on, source) and not ids(store.off, source)


def test_a_linked_file_is_recorded_and_pruned_under_the_folders_path(
    tmp_path: Path, corpus: Path, encoder: TPEncoder
) -> None:
    """A link inside the folder to a file outside it is recorded under the link's path in the
    folder (not its target's), and `prune` removes its chunks when the link goes, while the
    target stays."""
    from tp_rag.ingest import prune

    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "target.txt"
    target.write_text("Linked in from elsewhere: a note about lighthouses and their keepers.")
    link = corpus / "linked.txt"
    link.symlink_to(target)
    store = TPStore(connect(tmp_path / "db"), "docs", encoder)
    ingest([corpus], store, **CHUNKING)
    source = str(corpus.resolve() / "linked.txt")
    assert ids(store.on, source) and not ids(store.on, str(target.resolve()))
    link.unlink()
    assert prune([corpus], store).sources == [source]
    assert not ids(store.on, source) and not ids(store.off, source)
    assert target.exists()
