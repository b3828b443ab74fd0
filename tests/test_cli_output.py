"""What `tp-rag ingest` and `tp-rag query` print: user text shown as text (never as rich
markup), paths that keep their file name, chunks made by other tools, and a path that does not
exist refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tp_rag.cli import main
from tp_rag.store import connect

# Strings that rich would read as markup tags (closing tags that close nothing).
INST = "[INST] Summarise the tides. [/INST] Tides follow the Moon."
Y2 = "The ratio y[/2] is halved at each step."
QUERY = "what is [/x] here"


@pytest.fixture
def bracket_corpus(tmp_path: Path) -> Path:
    """A folder named `[` holding documents whose text looks like markup."""
    folder = tmp_path / "["
    folder.mkdir()
    (folder / "inst.txt").write_text(INST, encoding="utf-8")
    (folder / "ratio[x].md").write_text(Y2, encoding="utf-8")
    return folder


def test_markup_like_text_is_printed_as_text(
    tmp_path: Path,
    bracket_corpus: Path,
    tiny_llama: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Documents with `[INST] … [/INST]` and `y[/2]` under a folder named `[`, a query
    `what is [/x] here`, a skipped file `notes[bold]x.xyz`: ingest's skipped-files table, the
    query table and --prune's list print them literally, with exit status 0."""
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps to the terminal width
    db = str(tmp_path / "db")
    common = ["--collection", "docs", "--db", db]
    model = ["--model", str(tiny_llama), "--device", "cpu"]
    odd = bracket_corpus / "notes[bold]x.xyz"  # named explicitly: skipped for its type
    odd.write_text("x", encoding="utf-8")

    assert main(["ingest", str(bracket_corpus), str(odd), *common, *model]) == 0
    out = capsys.readouterr().out
    assert "notes[bold]x.xyz" in out  # the skipped-files table

    assert main(["query", QUERY, *common, "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert QUERY in out
    assert "[INST] Summarise the tides. [/INST]" in out
    assert "y[/2]" in out
    assert "ratio[x].md" in out

    (bracket_corpus / "inst.txt").unlink()
    odd.unlink()
    assert main(["ingest", str(bracket_corpus), *common, "--prune"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 chunks of 1 file" in out
    assert str((bracket_corpus / "inst.txt").resolve()) in out


def test_a_missing_path_anywhere_exits_2_before_anything_is_written(
    tmp_path: Path, tiny_llama: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tp-rag ingest docs/ report.pdf` with report.pdf missing is an error (exit 2) naming
    it, as when the only path is missing; no collection is created."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Tides follow the Moon.", encoding="utf-8")
    db = tmp_path / "db"
    common = ["--collection", "docs", "--db", str(db), "--model", str(tiny_llama)]
    for paths in ([str(docs), str(tmp_path / "report.pdf")], [str(tmp_path / "typo")]):
        assert main(["ingest", *paths, *common]) == 2
        error = capsys.readouterr().err
        assert "no such file or folder" in error and paths[-1] in error
    assert not db.exists() or connect(db).list_collections() == []


def test_query_shows_chunks_added_without_tp_rag_metadata(
    tmp_path: Path, tiny_llama: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Documents added to the collection by Chroma's own API, without metadata (as in the
    README's Chroma example), are shown by their id and text instead of crashing `query`."""
    import tp_rag.chroma  # noqa: F401  (registers the embedding function Chroma rebuilds)

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Tides follow the Moon.", encoding="utf-8")
    db = tmp_path / "db"
    common = ["--collection", "docs", "--db", str(db)]
    assert main(["ingest", str(docs), *common, "--model", str(tiny_llama)]) == 0
    collection = connect(db).get_collection("docs")
    collection.add(ids=["paris"], documents=["Paris is in France."])
    capsys.readouterr()
    assert main(["query", "Paris is in France.", *common, "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "paris" in out and "Paris is in France." in out


def test_query_keeps_file_names_at_80_columns(
    tmp_path: Path,
    tiny_llama: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At 80 columns, a deep absolute path loses folders from the left, not its file name."""
    monkeypatch.setenv("COLUMNS", "80")
    deep = tmp_path.joinpath(*(f"folder-number-{i}" for i in range(6)))
    deep.mkdir(parents=True)
    (deep / "glaciers-and-valleys.txt").write_text("Glaciers carve valleys.", encoding="utf-8")
    common = ["--collection", "docs", "--db", str(tmp_path / "db")]
    assert main(["ingest", str(deep), *common, "--model", str(tiny_llama)]) == 0
    capsys.readouterr()
    assert main(["query", "glaciers", *common]) == 0
    out = capsys.readouterr().out
    assert "glaciers-and-valleys.txt #0" in out
    assert "…/" in out
    assert max(map(len, out.splitlines())) <= 80


@pytest.mark.parametrize("data", ["sample", "tp_rag/demo/sample"])
def test_eval_retrieval_on_the_bundled_sample(
    data: str, tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tp-rag eval retrieval --data sample` (or the sample's folder) scores the demo's set:
    13 queries over 32 documents."""
    root = Path(__file__).resolve().parents[1]
    path = data if data == "sample" else str(root / data)
    args = ["eval", "retrieval", "--data", path, "--model", str(tiny_llama), "--no-cache"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "13 queries" in out and "32 documents" in out


def render(renderable: object, width: int) -> str:
    import io

    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False).print(renderable)
    return out.getvalue()


def test_tune_grid_reads_at_80_columns() -> None:
    """A Qwen-sized search (9 tp_stops x 24 layers) fits 80 columns with no cell cut to `…`:
    every layer is a row, the best cell is marked, and the caption says how many tp_stop
    columns are left out and where the full grid is."""
    import numpy as np

    from tp_rag.cli.tune import grid_table
    from tp_rag.tuning import TuneResult

    rng = np.random.default_rng(0)
    stops, layers = tuple(range(2, 11)), tuple(range(1, 25))
    grid = rng.uniform(0.2, 0.5, (len(stops), len(layers)))
    grid[5, 7] = 0.9  # the best cell: tp_stop 7, layer 8
    result = TuneResult("nDCG@10", 1, stops, layers, grid, rng.uniform(0.1, 0.3, len(layers)))
    text = render(grid_table(result, width=80, output="tuned.json"), 80)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in text
    assert "0.900*" in text and "stop 7" in text
    assert sum(1 for line in lines if line.strip().startswith("│") or "│" in line) >= 24
    assert "not shown: all in tuned.json (grid)" in " ".join(text.split())
    wide = render(grid_table(result, width=200), 200)
    assert all(f"stop {stop}" in wide for stop in stops) and "not shown" not in wide


def test_eval_tables_show_names_as_text() -> None:
    """Task, file, data and column names that look like markup print as written."""
    from tp_rag.cli.evaluate import retrieval_table, sts_table
    from tp_rag.metrics import RETRIEVAL_METRICS

    sts = {
        "systems": {"TP on": {}, "y[/2]": {}},
        "tasks": [
            {
                "name": "t[/x]",
                "pairs": 3,
                "spearman": {"TP on": 1.0, "y[/2]": 2.0},
                "files": [{"name": "[INST]", "pairs": 3, "spearman": {"TP on": 1.0, "y[/2]": 2.0}}],
            }
        ],
    }
    text = render(sts_table(sts), 120)
    assert "t[/x]" in text and "y[/2]" in text and "[INST]" in text
    retrieval = {
        "systems": {"[/b]": {}},
        "data": "what is [/x] here",
        "queries": 1,
        "documents": 2,
        "metrics": {"[/b]": dict.fromkeys(RETRIEVAL_METRICS, 0.5)},
    }
    text = render(retrieval_table(retrieval), 120)
    assert "what is [/x] here" in " ".join(text.split()) and "[/b]" in text  # title wraps
