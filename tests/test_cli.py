"""The tp-rag command line: the embed smoke command, error reporting, progress in logs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
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


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -c CODE`` in a fresh interpreter, with extra environment variables."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )


def test_a_tp_rag_error_is_one_clean_line(tmp_path: Path) -> None:
    """A model that cannot be found (a tp-rag error) exits 2 with the message and no traceback."""
    result = run_python(MAIN, TP_RAG_ARGS=json.dumps(["embed", "--model", "no-org/no-model", "x"]))
    assert result.returncode == 2, result.stderr
    assert "tp-rag embed: error: could not load model 'no-org/no-model'" in result.stderr
    assert "Traceback" not in result.stderr


def test_tp_rag_debug_shows_the_traceback_of_a_clean_error(tiny_llama: Path) -> None:
    """With TP_RAG_DEBUG=1 the same kind of error keeps its traceback, then the clean line."""
    args = ["embed", "--model", str(tiny_llama), "--tp-start", "5", "--tp-stop", "2", "x"]
    quiet = run_python(MAIN, TP_RAG_ARGS=json.dumps(args))
    debug = run_python(MAIN, TP_RAG_ARGS=json.dumps(args), TP_RAG_DEBUG="1")
    line = "tp-rag embed: error: tp_start=5 must be smaller than tp_stop=2"
    assert quiet.returncode == debug.returncode == 2
    assert line in quiet.stderr and "Traceback" not in quiet.stderr
    assert "Traceback (most recent call last)" in debug.stderr
    assert 'config.py", line' in debug.stderr  # where the check raised it
    assert debug.stderr.rstrip().splitlines()[-1].startswith(line)


def test_a_type_error_inside_torch_keeps_its_traceback(tiny_llama: Path) -> None:
    """A TypeError raised inside the model's forward pass (here: torch's embedding layer made to
    fail) is a bug, not bad input: a full traceback and exit 1, not a one-line message."""
    inject = (
        "import torch\n"
        "def broken(self, input):\n"
        "    raise TypeError('embedding() argument weight must be Tensor, not NoneType')\n"
        "torch.nn.Embedding.forward = broken\n"
    )
    args = ["embed", "--model", str(tiny_llama), "--device", "cpu", "A cat."]
    result = run_python(inject + MAIN, TP_RAG_ARGS=json.dumps(args))
    assert result.returncode == 1, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert "TypeError: embedding() argument weight must be Tensor" in result.stderr
    assert "tp-rag embed: error:" not in result.stderr


def test_which_errors_are_shown_as_one_line() -> None:
    """tp-rag's own checks and errors are one line; the same built-in types raised by a library
    underneath (json here) or by a failed operation rather than a check are bugs."""
    from tp_rag.cli import is_user_error
    from tp_rag.config import TPConfig
    from tp_rag.errors import ConfigMismatchError

    def raised(function: Callable[[], object]) -> BaseException:
        with pytest.raises(Exception) as info:
            function()
        return info.value

    assert is_user_error(raised(lambda: TPConfig(tp_start=5, tp_stop=2)))  # ValueError, a check
    assert is_user_error(raised(lambda: TPConfig.check_keys({"tp_stpo": 3}, "a preset")))
    assert is_user_error(ConfigMismatchError("raised anywhere, even unraised"))
    assert is_user_error(raised(Path("/no/such/file").read_text))  # FileNotFoundError
    bad_digest = TPConfig(model_digest=object())  # type: ignore[arg-type]
    assert not is_user_error(raised(bad_digest.fingerprint))  # TypeError inside json
    assert not is_user_error(raised(lambda: int("x")))  # ValueError, not from tp-rag


MAIN = (
    "import json, os, sys\n"
    "from tp_rag.cli import main\n"
    "sys.exit(main(json.loads(os.environ['TP_RAG_ARGS'])))\n"
)
"""The ``tp-rag`` console script's own code, with the arguments in ``TP_RAG_ARGS``."""
