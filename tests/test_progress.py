"""Long commands say what they do before the first slow step ends, then keep saying how far
they are while it runs. A fake slow encoder (the real one, with a pause and markers around each
call) makes one step last; the tests check the order of the lines, not how fast anything is."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from tp_rag import progress
from tp_rag.cli import main
from tp_rag.encoder import TPEncoder
from tp_rag.progress import Estimate, Heartbeat, IngestCounts

SLOW = "FAKE-ENCODER: slow call begins"
DONE = "FAKE-ENCODER: slow call done"


@pytest.fixture
def slow_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `TPEncoder.encode` call pauses a second, marked on stderr; heartbeats are made
    frequent so that one pause is enough for a heartbeat line."""
    real = TPEncoder.encode

    def slow(self: TPEncoder, *args: object, **kwargs: object) -> object:
        print(SLOW, file=sys.stderr, flush=True)
        time.sleep(1.0)
        print(DONE, file=sys.stderr, flush=True)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TPEncoder, "encode", slow)
    monkeypatch.setattr(progress, "BEAT_SECONDS", 0.05)
    monkeypatch.setattr(progress, "QUIET_SECONDS", 0.3)


def lines_around_the_first_call(err: str) -> tuple[list[str], list[str]]:
    """The lines before the first slow call begins, and those printed while it runs."""
    lines = err.splitlines()
    first = lines.index(SLOW)
    return lines[:first], lines[first + 1 : lines.index(DONE)]


def test_eval_says_what_it_does_then_keeps_counting(
    slow_encoder: None, tiny_llama: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tp-rag eval retrieval` (no terminal): the model line and what it will embed come
    before the first encoder call; during a call that outlasts the quiet time, a line with
    texts done out of the total."""
    data = Path(__file__).resolve().parents[1] / "tp_rag" / "demo" / "sample"
    args = ["eval", "retrieval", "--data", str(data), "--model", str(tiny_llama), "--no-cache"]
    assert main([*args, "--device", "cpu"]) == 0
    before, during = lines_around_the_first_call(capsys.readouterr().err)
    assert any(line.startswith("loading ") and " done in " in line for line in before)
    assert "embedding 32 documents and 13 queries with TP on, TP off" in before
    assert any(line.startswith("embedding: 0/90 texts, ") for line in during), during


def test_ingest_says_what_it_does_then_keeps_counting(
    slow_encoder: None, tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tp-rag ingest` (no terminal): the files are listed before the first encoder call; a
    call that outlasts the quiet time gets a line saying which chunks are being embedded."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Tides follow the Moon.", encoding="utf-8")
    args = ["ingest", str(docs), "--collection", "docs", "--db", str(tmp_path / "db")]
    assert main([*args, "--model", str(tiny_llama), "--device", "cpu"]) == 0
    before, during = lines_around_the_first_call(capsys.readouterr().err)
    assert "reading 1 file" in before
    assert any(line.startswith("file 1/1: ") for line in before)
    assert any(line.startswith("embedding the first batch of 1 chunk") for line in during)


def test_tune_says_what_it_does_before_embedding(
    slow_encoder: None, tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tp-rag tune` says what it will do before it embeds anything, and counts texts over
    all its passes as it goes."""
    from synthetic import write_stsb

    data = write_stsb(tmp_path / "sts-dev.csv", pairs=12, seed=1)
    args = ["tune", "--data", str(data), "--tp-stops", "2-3", "--layers", "1-2"]
    args += ["--model", str(tiny_llama), "--device", "cpu", "--output", str(tmp_path / "p.json")]
    assert main(args) == 0
    err = capsys.readouterr().err
    said = err.splitlines()
    start = next(i for i, line in enumerate(said) if line.startswith("tune: embedding"))
    assert "(3 passes)" in said[start]
    counts = [line for line in said if line.startswith("embedding tp_stop=2: ")]
    assert counts and "/" in counts[0] and "texts" in counts[0]
    assert any(line.startswith("embedding TP off: ") for line in said)


def test_heartbeat_runs_between_reports_and_stops() -> None:
    """A Heartbeat calls its function repeatedly while open and never after it is closed."""
    beats: list[float] = []
    with Heartbeat(lambda: beats.append(time.monotonic()), every=0.01):
        time.sleep(0.3)
    count = len(beats)
    time.sleep(0.1)
    assert count >= 2 and len(beats) == count


def test_ingest_time_left_needs_a_finished_batch() -> None:
    """No time left is claimed before a batch is embedded; afterwards it is there, and it is
    gone once every chunk is embedded with TP on and off."""
    counts = IngestCounts()
    counts.files_found(2)
    counts.file_read("a.txt", 4)
    counts.file_read("b.txt", 4)
    assert counts.time_left() == "" and counts.describe().startswith("embedding the first batch")
    counts.chunks_embedded(4, True)
    assert counts.time_left().startswith("about ") and counts.time_left().endswith(" left")
    for tp in (False, True, False):
        counts.chunks_embedded(4, tp)
    assert counts.finished and counts.time_left() == ""


def test_estimate_without_a_rate_gives_no_time_left() -> None:
    """Before one unit is done, only the time so far."""
    estimate = Estimate("texts")
    estimate.update(0, 10)
    assert str(estimate).startswith("0/10 texts, 00:00 so far") and "left" not in str(estimate)


def test_terminal_bars_show_our_time_left_on_the_chunk_bars_only() -> None:
    """On a terminal, the TP bars show the time left from chunks per second once a batch is
    done; the files bar, which ends long before the embedding, shows none."""
    import io

    from rich.console import Console

    from tp_rag.cli.ingest import BarProgress

    out = io.StringIO()
    bars = BarProgress(Console(file=out, width=150, force_terminal=True))
    bars.files_found(2)
    bars.file_read("a.txt", 4)
    bars.file_read("b.txt", 4)
    table = bars._progress.make_tasks_table(bars._progress.tasks)  # what the bars render now
    assert "left" not in render(table)
    bars.chunks_embedded(4, True)
    rows = render(bars._progress.make_tasks_table(bars._progress.tasks)).splitlines()
    files, on, off = (
        next(r for r in rows if r.startswith(name)) for name in ("files", "TP on", "TP off")
    )
    assert "left" not in files and "-:--:--" not in files
    assert "about" in on and on.rstrip().endswith("left") and "about" in off


def render(renderable: object) -> str:
    import io

    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=150, force_terminal=False).print(renderable)
    return out.getvalue()


def test_the_demos_sample_ingest_moves_during_its_first_batch(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's bar says which chunks it embeds while the first batch runs, instead of
    sitting at 0.0% (the bar is gr.Progress in the page; here a recorder of its calls)."""
    from tp_rag.demo.app import Demo
    from tp_rag.store import connect

    events: list[str] = []
    real = TPEncoder.encode

    def slow(self: TPEncoder, *args: object, **kwargs: object) -> object:
        events.append(SLOW)
        time.sleep(0.5)
        events.append(DONE)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(progress, "BEAT_SECONDS", 0.05)
    encoder = TPEncoder.from_pretrained(tiny_llama, device="cpu")
    demo = Demo(encoder, connect(tmp_path / "db"))
    monkeypatch.setattr(TPEncoder, "encode", slow)
    demo.ingest_sample(lambda fraction, desc="": events.append(desc))
    during = events[events.index(SLOW) + 1 : events.index(DONE)]
    assert any(desc.startswith("embedding the first batch of ") for desc in during), during
