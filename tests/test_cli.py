"""The tp-rag command line: the embed smoke command, error reporting, progress in logs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tp_rag.cli import main


def test_embed_prints_similarities_for_tp_on_and_off(
    tiny_llama: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tp-rag embed` prints a similarity matrix with a unit diagonal for TP on and off."""
    assert main(["embed", "--model", str(tiny_llama), "A cat.", "A dog."]) == 0
    out = capsys.readouterr().out
    assert "TP on" in out and "TP off" in out
    assert out.count(" 1.000") == 4  # two diagonals of two


def test_bad_option_is_a_clean_error(tiny_llama: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad setting exits with status 2 and a one-line message, not a traceback."""
    assert (
        main(["embed", "--model", str(tiny_llama), "--tp-start", "5", "--tp-stop", "2", "x"]) == 2
    )
    assert "error: tp_start=5 must be smaller than tp_stop=2" in capsys.readouterr().err


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m tp_rag ARGS` as a log would run it: stderr is a pipe, not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "tp_rag", *args], capture_output=True, text=True, timeout=300
    )


def test_ingest_logs_chunk_counts_and_time_left(tiny_llama: Path, tmp_path: Path) -> None:
    """Without a terminal, `tp-rag ingest` logs each file ("1 chunk", not "1 chunks"), then the
    chunks embedded with TP on and off out of the total with the time left, then the writes."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Short.")
    (docs / "b.txt").write_text(" ".join(f"Sentence number {i} about tides." for i in range(80)))
    result = run_cli(
        "ingest", str(docs), "--collection", "docs", "--db", str(tmp_path / "db"),
        "--model", str(tiny_llama), "--device", "cpu", "--chunk-size", "32",
        "--chunk-overlap", "4", "--batch-size", "4",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    lines = lines[lines.index("reading 2 files") :]  # after transformers' own loading bar
    assert "file 1/2: " in lines[1] and lines[1].endswith("(1 chunk to embed)")
    total = int(re.search(r"\((\d+) chunks to embed\)", lines[2]).group(1)) + 1
    embedded = [line for line in lines if line.startswith("embedded ")]
    assert embedded[0].startswith(f"embedded 4/{total} chunks with TP on, 0 with TP off, ")
    assert "so far, about" in embedded[0] and embedded[0].endswith(" left")
    assert embedded[-1].startswith(f"embedded {total}/{total} chunks with TP on, {total} with")
    assert lines[-1] == f"chunks written: {total}/{total}"


def test_eval_logs_texts_done_with_time_left(tiny_llama: Path, tmp_path: Path) -> None:
    """Without a terminal, `tp-rag eval retrieval` first says what it will embed, then logs
    texts embedded out of the total with the time left as it moves through documents and
    queries, TP on and off."""
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    docs = [json.dumps({"_id": f"d{i}", "title": "", "text": f"Doc {i}."}) for i in range(6)]
    (folder / "corpus.jsonl").write_text("\n".join(docs) + "\n")
    (folder / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "Doc 1."}) + "\n")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\td1\t1\n")
    result = run_cli(
        "eval", "retrieval", "--data", str(folder), "--model", str(tiny_llama), "--device", "cpu"
    )
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("embedding ")]
    assert notes[0] == "embedding 6 documents and 1 queries with TP on, TP off"  # what, first
    notes = notes[1:]
    assert notes[0].startswith("embedding documents, TP on: 6/14 texts, ")
    assert notes[0].endswith(" left")
    assert notes[-1].startswith("embedding queries, TP off: 14/14 texts, ")
