"""Readers for the evaluation data: STS sentence pairs and BEIR retrieval collections.

STS formats (``read_sts``):

- STS Benchmark ``sts-*.csv``: tab-separated ``genre, file, year, id, score, sentence1,
  sentence2``; some rows carry extra trailing columns (ignored) and quotes are literal text, not
  CSV quoting, so the file is split on tabs, never parsed as CSV.
- SICK ``SICK_*.txt``: tab-separated with a header; the ``sentence_A``, ``sentence_B`` and
  ``relatedness_score`` columns are found by name.
- SentEval STS12-16: a folder of ``STS.input.<name>.txt`` (two tab-separated sentences per line)
  and ``STS.gs.<name>.txt`` (one gold score per line; an empty line means the pair has no gold
  score and is skipped, as SentEval does).

Sentences have their whitespace collapsed (``" ".join(s.split())``), as SentEval's readers and
batchers do.

>>> task = read_sts("../shared/data/sts/stsbenchmark/sts-test.csv")  # doctest: +SKIP
>>> task.name, len(task)  # doctest: +SKIP
('sts-test', 1379)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAPER_TASKS: tuple[str, ...] = ("STS12", "STS13", "STS14", "STS15", "STS16", "STS-B", "SICK-R")
"""The paper's STS table, in its column order."""

SENTEVAL_STS_FILES: dict[str, tuple[str, ...]] = {
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    "STS13": ("FNWN", "headlines", "OnWN"),  # SentEval ships STS13 without SMT (licence)
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}
"""The files of each SentEval STS12-16 folder (``STS/STS12-en-test`` etc.)."""

_STSB_FILE = "sts-test.csv"
_SICK_FILE = "SICK_test_annotated.txt"
_SICK_COLUMNS = ("sentence_A", "sentence_B", "relatedness_score")


@dataclass(frozen=True)
class StsPairs:
    """Sentence pairs with gold similarity scores, from one file."""

    name: str
    sentences1: tuple[str, ...]
    sentences2: tuple[str, ...]
    scores: np.ndarray  # (n,) float64 gold scores

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class StsTask:
    """One STS task: one file, or a SentEval folder of several.

    A task of several files is scored like the paper (after SimCSE and PromptEOL): Spearman over
    the pairs of all files pooled (SentEval's ``all``); each file is also scored on its own.
    """

    name: str
    parts: tuple[StsPairs, ...]
    source: str = ""

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts)

    def pooled(self) -> StsPairs:
        """All pairs of all parts as one set."""
        if len(self.parts) == 1:
            return self.parts[0]
        return StsPairs(
            self.name,
            tuple(s for part in self.parts for s in part.sentences1),
            tuple(s for part in self.parts for s in part.sentences2),
            np.concatenate([part.scores for part in self.parts]),
        )


@dataclass(frozen=True)
class RetrievalSet:
    """A BEIR collection split: documents (``title + " " + text``), judged queries, qrels."""

    name: str
    doc_ids: tuple[str, ...]
    documents: tuple[str, ...]
    query_ids: tuple[str, ...]
    queries: tuple[str, ...]
    qrels: dict[str, dict[str, int]]  # query id -> document id -> graded relevance


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _gold(value: str, path: Path, line: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{path}:{line}: gold score {value!r} is not a number") from None


def _pairs(name: str, rows: list[tuple[str, str, float]], path: Path) -> StsPairs:
    if not rows:
        raise ValueError(f"{path} holds no scored sentence pairs")
    first, second, scores = zip(*rows, strict=True)
    return StsPairs(name, first, second, np.asarray(scores, dtype=np.float64))


def read_stsbenchmark(path: str | Path) -> StsPairs:
    """Read an STS Benchmark file (``sts-dev.csv``, ``sts-test.csv``)."""
    path = Path(path)
    rows = []
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 7:
            raise ValueError(
                f"{path}:{number}: expected at least 7 tab-separated fields (genre, file, year, "
                f"id, score, sentence1, sentence2), found {len(fields)}"
            )
        rows.append((_collapse(fields[5]), _collapse(fields[6]), _gold(fields[4], path, number)))
    return _pairs(path.stem, rows, path)


def read_sick(path: str | Path) -> StsPairs:
    """Read a SICK file with a header (``SICK_test_annotated.txt``, ``SICK.txt``)."""
    path = Path(path)
    lines = _lines(path)
    header = lines[0].split("\t") if lines else []
    missing = [column for column in _SICK_COLUMNS if column not in header]
    if missing:
        raise ValueError(f"{path}: the header lacks the SICK column(s) {', '.join(missing)}")
    a, b, score = (header.index(column) for column in _SICK_COLUMNS)
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if line.strip():
            fields = line.split("\t")
            rows.append(
                (_collapse(fields[a]), _collapse(fields[b]), _gold(fields[score], path, number))
            )
    return _pairs(path.stem, rows, path)


def read_senteval_file(folder: str | Path, name: str) -> StsPairs:
    """Read ``STS.input.<name>.txt`` and ``STS.gs.<name>.txt``; pairs without a gold score are
    skipped."""
    folder = Path(folder)
    inputs, gold = folder / f"STS.input.{name}.txt", folder / f"STS.gs.{name}.txt"
    for path in (inputs, gold):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
    pair_lines, gold_lines = _lines(inputs), _lines(gold)
    if len(pair_lines) != len(gold_lines):
        raise ValueError(
            f"{inputs} has {len(pair_lines)} lines but {gold} has {len(gold_lines)}; "
            "they must match line by line"
        )
    rows = []
    for number, (pair, score) in enumerate(zip(pair_lines, gold_lines, strict=True), start=1):
        if not score.strip():
            continue
        fields = pair.split("\t")
        if len(fields) < 2:
            raise ValueError(f"{inputs}:{number}: expected two tab-separated sentences")
        rows.append((_collapse(fields[0]), _collapse(fields[1]), _gold(score, gold, number)))
    return _pairs(name, rows, inputs)


def read_senteval_folder(folder: str | Path, names: Sequence[str] | None = None) -> StsTask:
    """Read a SentEval STS folder: the files ``names``, or every ``STS.input.*.txt`` in it."""
    folder = Path(folder)
    if names is None:
        names = sorted(
            p.name[len("STS.input.") : -len(".txt")] for p in folder.glob("STS.input.*.txt")
        )
    if not names:
        raise ValueError(f"{folder} holds no STS.input.<name>.txt files")
    parts = tuple(read_senteval_file(folder, name) for name in names)
    return StsTask(folder.name, parts, str(folder))


def read_sts(path: str | Path) -> StsTask:
    """Read STS pairs from an STS Benchmark file, a SICK file or a SentEval STS folder.

    >>> read_sts("data/STS/STS12-en-test").parts[0].name  # doctest: +SKIP
    'MSRpar'
    """
    path = Path(path)
    if path.is_dir():
        if any(path.glob("STS.input.*.txt")):
            return read_senteval_folder(path)
        for known in (_STSB_FILE, _SICK_FILE):
            if (path / known).is_file():
                return read_sts(path / known)
        raise ValueError(
            f"{path} is a folder without STS.input.<name>.txt files, {_STSB_FILE} or "
            f"{_SICK_FILE}; pass an STS Benchmark .csv file, a SICK .txt file or a SentEval "
            "STS12-16 folder"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.name.startswith("STS.input.") and path.suffix == ".txt":
        name = path.name[len("STS.input.") : -len(".txt")]
        return StsTask(name, (read_senteval_file(path.parent, name),), str(path))
    with path.open(encoding="utf-8") as handle:
        first = handle.readline()
    if "relatedness_score" in first.split("\t"):
        return StsTask(path.stem, (read_sick(path),), str(path))
    if path.suffix == ".csv":
        return StsTask(path.stem, (read_stsbenchmark(path),), str(path))
    raise ValueError(
        f"{path} is not a known STS format: expected an STS Benchmark .csv file, a SICK file "
        "with a relatedness_score column, or a SentEval STS.input.<name>.txt file"
    )


def _nearest(root: Path, pattern: str, *, folder: bool) -> Path | None:
    """The match of ``pattern`` under ``root`` (``root`` itself included) nearest the top."""
    candidates = [root, *root.rglob(pattern)]
    matches = [p for p in candidates if p.match(pattern) and p.is_dir() == folder]
    return min(matches, key=lambda p: (len(p.parts), str(p))) if matches else None


def find_paper_tasks(root: str | Path) -> tuple[dict[str, StsTask], dict[str, str]]:
    """Find the paper's seven STS test sets under ``root``; returns (found, missing -> reason).

    Looks anywhere under ``root`` for SentEval's ``STS12-en-test`` ... ``STS16-en-test``
    folders, ``sts-test.csv`` (STS-B) and ``SICK_test_annotated.txt`` (SICK-R), so SentEval's
    ``data/downstream`` tree and ``../shared/data/sts`` both work.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} is not a folder")
    found: dict[str, StsTask] = {}
    missing: dict[str, str] = {}
    for task, names in SENTEVAL_STS_FILES.items():
        folder = _nearest(root, f"{task}-en-test", folder=True)
        if folder is None:
            missing[task] = f"no {task}-en-test folder under {root}"
            continue
        absent = [n for n in names if not (folder / f"STS.input.{n}.txt").is_file()]
        if absent:
            missing[task] = f"{folder} lacks " + ", ".join(f"STS.input.{n}.txt" for n in absent)
            continue
        found[task] = StsTask(task, read_senteval_folder(folder, names).parts, str(folder))
    for task, filename in (("STS-B", _STSB_FILE), ("SICK-R", _SICK_FILE)):
        path = _nearest(root, filename, folder=False)
        if path is None:
            missing[task] = f"no {filename} under {root}"
        else:
            found[task] = StsTask(task, read_sts(path).parts, str(path))
    return found, missing


def read_beir(folder: str | Path, split: str = "test") -> RetrievalSet:
    """Read a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).

    Documents are ``title + " " + text`` (stripped), as BEIR embeds them; only queries judged in
    the split are kept.

    >>> data = read_beir("../shared/data/retrieval/cranfield")  # doctest: +SKIP
    >>> len(data.documents), len(data.queries)  # doctest: +SKIP
    (1400, 225)
    """
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for path in (folder / "corpus.jsonl", folder / "queries.jsonl"):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; is {folder} a BEIR folder?")
    if not qrels_path.is_file():
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise FileNotFoundError(
            f"{qrels_path} does not exist; splits here: {', '.join(splits) or 'none'}"
        )

    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(_lines(qrels_path), start=1):
        fields = line.split("\t")
        if number == 1 and not fields[-1].strip().lstrip("-").isdigit():
            continue  # header
        if len(fields) < 3:
            raise ValueError(f"{qrels_path}:{number}: expected query-id, corpus-id, score")
        qrels.setdefault(fields[0], {})[fields[1]] = int(fields[2])

    doc_ids, documents = [], []
    for record in _jsonl(folder / "corpus.jsonl"):
        doc_ids.append(str(record["_id"]))
        documents.append((record.get("title", "") + " " + record.get("text", "")).strip())
    all_queries = {str(r["_id"]): r.get("text", "") for r in _jsonl(folder / "queries.jsonl")}
    unknown = sorted(set(qrels) - set(all_queries))
    if unknown:
        raise ValueError(
            f"{qrels_path} judges {len(unknown)} query id(s) missing from queries.jsonl, "
            f"e.g. {', '.join(unknown[:5])}"
        )
    query_ids = tuple(q for q in all_queries if q in qrels)
    return RetrievalSet(
        name=folder.name,
        doc_ids=tuple(doc_ids),
        documents=tuple(documents),
        query_ids=query_ids,
        queries=tuple(all_queries[q] for q in query_ids),
        qrels=qrels,
    )


def _jsonl(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(_lines(path), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON: {error}") from None
    return records
