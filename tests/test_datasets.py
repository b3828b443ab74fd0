"""Readers of STS Benchmark, SICK, SentEval STS12-16 and BEIR data, on synthetic and real files."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tp_rag import datasets
from tp_rag.datasets import (
    PAPER_TASKS,
    SENTEVAL_STS_FILES,
    find_paper_tasks,
    read_beir,
    read_beir_upload,
    read_labelled_documents,
    read_senteval_folder,
    read_sts,
    relevant_only,
)


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_senteval(folder: Path, names: tuple[str, ...] | list[str]) -> None:
    """A SentEval STS folder with three scored pairs per file."""
    for name in names:
        _write(folder / f"STS.input.{name}.txt", [f"{name} a{i}\t{name} b{i}" for i in range(3)])
        _write(folder / f"STS.gs.{name}.txt", ["1.0", "2.5", "4.0"])


def test_stsbenchmark_extra_columns_and_literal_quotes(tmp_path: Path) -> None:
    """Fields 5-7 are score and sentences; trailing columns are ignored; quotes stay literal."""
    path = _write(
        tmp_path / "sts-test.csv",
        [
            'main-news\tMSRpar\t2012test\t0001\t2.5\tHe said "hi.\tShe  said   hi.',
            'main-forum\tdeft\t2014\t0002\t4.0\tA "quoted" one\tAnother\tsource-a\tsource-b',
        ],
    )
    task = read_sts(path)
    (pairs,) = task.parts
    assert task.name == "sts-test" and len(task) == 2
    assert pairs.sentences1 == ('He said "hi.', 'A "quoted" one')
    assert pairs.sentences2 == ("She said hi.", "Another")  # whitespace collapsed
    np.testing.assert_array_equal(pairs.scores, [2.5, 4.0])


def test_stsbenchmark_short_row_is_an_error(tmp_path: Path) -> None:
    """A row with fewer than 7 fields names the file and line."""
    path = _write(tmp_path / "bad.csv", ["a\tb\tc\td\t1.0\tonly one sentence"])
    with pytest.raises(ValueError, match=r"bad\.csv:1"):
        read_sts(path)


def test_sick_columns_found_by_header_name(tmp_path: Path) -> None:
    """SICK columns are located by name, so files with other column orders read correctly."""
    path = _write(
        tmp_path / "SICK_test_annotated.txt",
        [
            "pair_ID\trelatedness_score\tsentence_B\tsentence_A\tentailment_judgment",
            "1\t4.5\tsecond one\tfirst one\tNEUTRAL",
        ],
    )
    (pairs,) = read_sts(path).parts
    assert (pairs.sentences1, pairs.sentences2) == (("first one",), ("second one",))
    assert pairs.scores.tolist() == [4.5]


def test_senteval_skips_pairs_without_gold(tmp_path: Path) -> None:
    """Lines of STS.gs.<name>.txt that are empty drop their pair; each file is one part."""
    _write(tmp_path / "STS.input.alpha.txt", ["a1\tb1", "a2\tb2", "a3\tb3"])
    _write(tmp_path / "STS.gs.alpha.txt", ["1.0", "", "3.0"])
    write_senteval(tmp_path, ["beta"])
    task = read_sts(tmp_path)
    assert [part.name for part in task.parts] == ["alpha", "beta"]
    alpha = task.parts[0]
    assert alpha.sentences1 == ("a1", "a3") and alpha.scores.tolist() == [1.0, 3.0]
    assert len(task) == 2 + 3 and len(task.pooled()) == 5


def test_senteval_line_count_mismatch_is_an_error(tmp_path: Path) -> None:
    """Input and gold files must match line by line."""
    _write(tmp_path / "STS.input.x.txt", ["a\tb", "c\td"])
    _write(tmp_path / "STS.gs.x.txt", ["1.0"])
    with pytest.raises(ValueError, match="must match line by line"):
        read_senteval_folder(tmp_path)


def test_unknown_file_and_folder_are_refused(tmp_path: Path) -> None:
    """A file or folder of no known STS format raises ValueError listing the formats."""
    other = _write(tmp_path / "notes.txt", ["hello"])
    with pytest.raises(ValueError, match="STS Benchmark"):
        read_sts(other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="SentEval"):
        read_sts(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        read_sts(tmp_path / "absent.csv")


def test_find_paper_tasks_in_senteval_layout(tmp_path: Path) -> None:
    """SentEval's data/downstream tree is found; missing tasks and files are named."""
    sts = tmp_path / "downstream" / "STS"
    for task in ("STS12", "STS14", "STS15", "STS16"):
        write_senteval(sts / f"{task}-en-test", SENTEVAL_STS_FILES[task])
    write_senteval(sts / "STS13-en-test", ["FNWN", "headlines"])  # OnWN missing
    _write(
        sts / "STSBenchmark" / "sts-test.csv", ["g\tf\ty\t1\t3.0\ta\tb", "g\tf\ty\t2\t1.0\tc\td"]
    )
    found, missing = find_paper_tasks(tmp_path)
    assert set(found) == {"STS12", "STS14", "STS15", "STS16", "STS-B"}
    assert set(missing) == {"STS13", "SICK-R"}
    assert "STS.input.OnWN.txt" in missing["STS13"]
    assert [p.name for p in found["STS12"].parts] == list(SENTEVAL_STS_FILES["STS12"])
    assert set(found) | set(missing) == set(PAPER_TASKS)


def write_beir(folder: Path) -> None:
    """Three documents, three queries of which two are judged in the test split."""
    corpus = [
        {"_id": "d1", "title": "Wings", "text": "lift on a wing"},
        {"_id": "d2", "title": "", "text": "heat transfer in slabs"},
        {"_id": "d3", "title": "Shock", "text": "shock waves"},
    ]
    queries = [{"_id": "q1", "text": "wing lift"}, {"_id": "q2", "text": "heat"}]
    queries.append({"_id": "q3", "text": "unjudged"})
    _write(folder / "corpus.jsonl", [json.dumps(r) for r in corpus])
    _write(folder / "queries.jsonl", [json.dumps(r) for r in queries])
    _write(folder / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t2", "q2\td2\t1"])


def test_read_beir(tmp_path: Path) -> None:
    """Documents are title + " " + text (stripped); only judged queries; the header is skipped."""
    write_beir(tmp_path)
    data = read_beir(tmp_path)
    assert data.documents == ("Wings lift on a wing", "heat transfer in slabs", "Shock shock waves")
    assert data.query_ids == ("q1", "q2") and data.queries == ("wing lift", "heat")
    assert data.qrels == {"q1": {"d1": 2}, "q2": {"d2": 1}}


def test_read_beir_missing_split_lists_the_splits(tmp_path: Path) -> None:
    """Asking for an absent split names the splits that exist."""
    write_beir(tmp_path)
    with pytest.raises(FileNotFoundError, match="splits here: test"):
        read_beir(tmp_path, "dev")


def test_read_beir_errors_name_the_file_and_line(tmp_path: Path) -> None:
    """A record without an id, a line that is not JSON and a malformed qrels line are refused
    with the file, the line and what was expected."""
    write_beir(tmp_path)
    queries = tmp_path / "queries.jsonl"
    _write(queries, ['{"_id": "q1", "text": "a"}', '{"text": "no id"}'])
    with pytest.raises(ValueError, match=r"queries\.jsonl:2: a record has no '_id' field"):
        read_beir(tmp_path)
    _write(queries, ['{"_id": "q1", "text": "a"}', "{not json"])
    with pytest.raises(ValueError, match=r"queries\.jsonl:2: not valid JSON"):
        read_beir(tmp_path)
    write_beir(tmp_path)
    _write(tmp_path / "qrels" / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\tvery"])
    with pytest.raises(ValueError, match=r"test\.tsv:2: expected query-id, corpus-id, score"):
        read_beir(tmp_path)


def test_read_beir_upload_zip_folder_and_loose_files(tmp_path: Path) -> None:
    """A zip of a BEIR folder (inside a subfolder), the folder and its loose files all read to
    what `read_beir` reads from the folder; a zip or folder gives the set its name."""
    folder = tmp_path / "beir"
    write_beir(folder)
    expected = read_beir(folder)
    archive = tmp_path / "mydata.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in folder.rglob("*"):
            zipped.write(path, Path("mydata") / path.relative_to(folder))
    loose = [folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / "test.tsv"]
    assert read_beir_upload([archive]) == replace(expected, name="mydata")
    assert read_beir_upload([folder]) == expected
    assert read_beir_upload(loose) == replace(expected, name="BEIR upload")
    renamed = tmp_path / "labels.tsv"  # no test.tsv: any .tsv is the qrels file
    renamed.write_bytes(loose[2].read_bytes())
    assert read_beir_upload([*loose[:2], renamed]).qrels == expected.qrels


def test_read_beir_upload_errors_name_the_uploaded_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing file is named with what was uploaded; a broken zip, a zip that unpacks too big
    and a bad line inside a zip are refused with the uploaded names."""
    write_beir(tmp_path / "beir")
    corpus = tmp_path / "beir" / "corpus.jsonl"
    with pytest.raises(ValueError, match=r"no queries\.jsonl among the uploaded files \(corpus"):
        read_beir_upload([corpus])
    with pytest.raises(ValueError, match=r"no qrels \.tsv file"):
        read_beir_upload([corpus, tmp_path / "beir" / "queries.jsonl"])
    with pytest.raises(ValueError, match=r"no corpus\.jsonl among the uploaded files \(none\)"):
        read_beir_upload([])
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match=r"broken\.zip: not a valid zip file"):
        read_beir_upload([broken])
    archive = tmp_path / "beir.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(corpus, "corpus.jsonl")
        zipped.writestr("queries.jsonl", '{"_id": "q1"}\n{oops\n')
        zipped.writestr("qrels/test.tsv", "q1\td1\t1\n")
    with pytest.raises(ValueError, match=r"^queries\.jsonl:2: not valid JSON"):
        read_beir_upload([archive])
    monkeypatch.setattr(datasets, "MAX_UNZIPPED", 100)
    with pytest.raises(ValueError, match=r"beir\.zip: unpacks to more than"):
        read_beir_upload([archive])


def test_read_labelled_documents(tmp_path: Path) -> None:
    """Each readable file of docs/ is a document whose id is its stem; labels are BEIR's."""
    write_beir(tmp_path)
    _write(tmp_path / "docs" / "d1.md", ["# Wings", "", "lift on a wing"])
    _write(tmp_path / "docs" / "d2.txt", ["heat transfer in slabs"])
    _write(tmp_path / "docs" / "notes.csv", ["not a document type"])
    data = read_labelled_documents(tmp_path)
    assert data.doc_ids == ("d1", "d2")
    assert "lift on a wing" in data.documents[0]
    assert data.documents[1] == "heat transfer in slabs"  # stripped, as ingestion stores it
    assert data.query_ids == ("q1", "q2") and data.qrels == {"q1": {"d1": 2}, "q2": {"d2": 1}}
    with pytest.raises(FileNotFoundError, match="docs"):
        read_labelled_documents(tmp_path / "absent")


def test_relevant_only_keeps_queries_with_a_positive_label(tmp_path: Path) -> None:
    """Labels of gain <= 0 go, and with them the queries left without one; none left is an
    error."""
    write_beir(tmp_path)
    _write(
        tmp_path / "qrels" / "test.tsv",
        ["q1\td1\t2", "q1\td3\t0", "q2\td2\t0", "q3\td3\t-1"],
    )
    data = read_beir(tmp_path)
    assert data.query_ids == ("q1", "q2", "q3")  # BEIR keeps every judged query
    kept = relevant_only(data)
    assert kept.query_ids == ("q1",) and kept.queries == ("wing lift",)
    assert kept.qrels == {"q1": {"d1": 2}} and kept.documents == data.documents
    _write(tmp_path / "qrels" / "test.tsv", ["q1\td1\t0"])
    with pytest.raises(ValueError, match="no query has a positive relevance label"):
        relevant_only(read_beir(tmp_path))


def test_real_sts_files_have_their_documented_sizes(data_path: Callable[[str], Path]) -> None:
    """The real STS-B and SICK files read to the pair counts their READMEs give."""
    sts = data_path("sts")
    assert len(read_sts(sts / "stsbenchmark" / "sts-test.csv")) == 1379
    assert len(read_sts(sts / "stsbenchmark" / "sts-dev.csv")) == 1500
    assert len(read_sts(sts / "sick" / "SICK_test_annotated.txt")) == 4927
    found, missing = find_paper_tasks(sts)
    assert set(found) == {"STS-B", "SICK-R"} and len(missing) == 5


def test_real_cranfield_has_its_documented_size(data_path: Callable[[str], Path]) -> None:
    """Cranfield: 1,400 abstracts, 225 judged queries, 1,837 judgements."""
    data = read_beir(data_path("retrieval/cranfield"))
    assert len(data.documents) == 1400 and len(data.queries) == 225
    assert sum(len(docs) for docs in data.qrels.values()) == 1837


_RSS_SCRIPT = """
import json, resource, sys
from tp_rag.datasets import read_beir_upload

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    limit = {} if sys.argv[2] == "default" else {"max_unzipped": int(sys.argv[2])}
    read_beir_upload([sys.argv[1]], **limit)
    error = None
except ValueError as caught:
    error = str(caught)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"error": error, "grown_mib": grown / 1024}))
"""


def _zip_of_zeros(path: Path, size: int, *, declare: int | None = None) -> Path:
    """A zip whose corpus.jsonl holds ``size`` zero bytes (deflated ~1000:1), stored with
    ``declare`` as its size in both headers when given (a lying zip)."""
    import struct

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("queries.jsonl", '{"_id": "q1", "text": "q"}\n')
        archive.writestr("qrels/test.tsv", "q1\td1\t1\n")
        with archive.open("corpus.jsonl", "w") as member:
            block = bytes(1024**2)
            for _ in range(size // len(block)):
                member.write(block)
        info = archive.getinfo("corpus.jsonl")
    if declare is not None:
        data = bytearray(path.read_bytes())
        struct.pack_into("<I", data, info.header_offset + 22, declare)  # local header
        central = data.rindex(b"PK\x01\x02\x14")  # corpus.jsonl's entry: the last one written
        assert data[central + 46 : central + 46 + 12] == b"corpus.jsonl"
        struct.pack_into("<I", data, central + 24, declare)
        path.write_bytes(bytes(data))
    return path


def _read_in_subprocess(archive: Path, limit: int | None) -> dict:
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(archive), str(limit or "default")],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_zip_that_lies_about_its_size_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """A member declaring 100 bytes but holding 256 MiB is refused without being unpacked
    whole: the process grows by a few MiB, not by the member's real size."""
    archive = _zip_of_zeros(tmp_path / "liar.zip", 256 * 1024**2, declare=100)
    assert archive.stat().st_size < 2 * 1024**2
    out = _read_in_subprocess(archive, None)  # the default limit, 512 MiB
    assert out["error"] is not None and "liar.zip" in out["error"]
    assert out["grown_mib"] < 64, out


def test_a_high_ratio_zip_is_refused_at_the_limit_in_bounded_memory(tmp_path: Path) -> None:
    """An honest member over the limit is refused before unpacking; one under the limit is
    read in bounded chunks; the limit covers the whole archive, whatever the headers say."""
    archive = _zip_of_zeros(tmp_path / "bomb.zip", 64 * 1024**2)
    out = _read_in_subprocess(archive, 16 * 1024**2)
    assert "unpacks to more than 16 MB" in out["error"]
    assert out["grown_mib"] < 16, out
    # The chunked reader itself stops at the archive's budget even when headers understate.
    with pytest.raises(ValueError, match="unpacks to more than"):
        datasets._unzip(archive, "corpus.jsonl", [4 * 1024**2], 4 * 1024**2)


def test_qrels_judging_documents_missing_from_the_corpus(tmp_path: Path) -> None:
    """Judged documents absent from the corpus are warned about (count and examples); a
    set where no judged document is in the corpus is refused instead of scoring 0."""
    write_beir(tmp_path / "some")
    _write(tmp_path / "some" / "qrels" / "test.tsv", ["q1\td1\t1", "q2\tgone7\t1", "q3\tx9\t1"])
    with pytest.warns(UserWarning, match=r"judges 2 of 3 documents .*missing.*gone7, x9"):
        data = read_beir(tmp_path / "some")
    assert data.query_ids == ("q1", "q2", "q3")

    write_beir(tmp_path / "none")
    _write(tmp_path / "none" / "qrels" / "test.tsv", ["q1\tother1\t1", "q2\tother2\t1"])
    with pytest.raises(ValueError, match=r"none of the 2 documents judged .* belong together"):
        read_beir(tmp_path / "none")

    write_beir(tmp_path / "positives")  # only the non-relevant labels point into the corpus
    _write(tmp_path / "positives" / "qrels" / "test.tsv", ["q1\td1\t0", "q2\tgone\t1"])
    with pytest.warns(UserWarning):
        data = read_beir(tmp_path / "positives")
    with pytest.raises(ValueError, match="none of the 1 documents judged in its positive"):
        relevant_only(data)
