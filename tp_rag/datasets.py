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

Retrieval sets (``RetrievalSet``) all go through one BEIR parser: ``read_beir`` reads a BEIR
folder, ``read_beir_upload`` the same files uploaded loose or zipped (the demo), and
``read_labelled_documents`` a ``docs/`` folder of files with BEIR queries and qrels (the demo's
sample set). ``relevant_only`` keeps the queries with a positive label.

Classification tasks (``read_classification``, SentEval's transfer tasks) are folders of
``label<TAB>sentence`` files: ``all.tsv`` (cross-validation), or ``train.tsv`` and ``test.tsv``
with an optional ``dev.tsv``.

>>> task = read_sts("../shared/data/sts/stsbenchmark/sts-test.csv")  # doctest: +SKIP
>>> task.name, len(task)  # doctest: +SKIP
('sts-test', 1379)
"""

from __future__ import annotations

import json
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

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

MAX_UNZIPPED = 512 * 1024**2
"""The most an uploaded zip may unpack to (``read_beir_upload``), in bytes."""


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
    corpus_path, queries_path, qrels_path = _beir_paths(folder, "corpus.jsonl", split)
    return _labelled_set(
        folder.name, _corpus(*_read(corpus_path)), _read(queries_path), _read(qrels_path)
    )


def read_labelled_documents(folder: str | Path, split: str = "test") -> RetrievalSet:
    """Read a folder of documents labelled the BEIR way: ``docs/`` in place of ``corpus.jsonl``.

    Each file of ``docs/`` that ``tp_rag.documents.read_document`` reads is one document, its id
    the file name without the extension, its text without surrounding whitespace (as ``ingest``
    stores a chunk, so an ingested copy's vectors can be reused); ``queries.jsonl`` and
    ``qrels/<split>.tsv`` are BEIR's.

    >>> data = read_labelled_documents("tp_rag/demo/sample")  # doctest: +SKIP
    >>> len(data.documents), len(data.queries)  # doctest: +SKIP
    (32, 13)
    """
    from tp_rag.documents import SUFFIXES, read_document

    folder = Path(folder)
    docs, queries_path, qrels_path = _beir_paths(folder, "docs", split)
    corpus = {
        path.stem: read_document(path).strip()
        for path in sorted(docs.iterdir())
        if path.is_file() and path.suffix.lower() in SUFFIXES
    }
    return _labelled_set(folder.name, corpus, _read(queries_path), _read(qrels_path))


def read_beir_upload(
    paths: Sequence[str | Path], split: str = "test", *, max_unzipped: int | None = None
) -> RetrievalSet:
    """Read a BEIR split from uploaded files: a zip of a BEIR folder, the folder, or its files.

    The files are found by name anywhere among the upload: ``corpus.jsonl``, ``queries.jsonl``
    and ``qrels/<split>.tsv`` (else ``<split>.tsv``, else any ``.tsv``). A zip that unpacks to
    more than ``max_unzipped`` bytes (default ``MAX_UNZIPPED``) is refused, whatever sizes it
    declares: it is decompressed a chunk at a time and never held beyond that limit. Errors
    name the file as uploaded.

    >>> data = read_beir_upload(["scifact.zip"])  # doctest: +SKIP
    >>> data.name, len(data.queries)  # doctest: +SKIP
    ('scifact', 300)
    """
    sources: dict[str, Callable[[], bytes | bytearray]] = {}  # name in the upload -> its bytes
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file():
                    sources[child.relative_to(path).as_posix()] = child.read_bytes
        elif path.suffix.lower() == ".zip":
            sources.update(_zip_members(path, max_unzipped or MAX_UNZIPPED))
        else:
            sources[path.name] = path.read_bytes

    def find(description: str, *tests: Callable[[PurePosixPath], bool]) -> tuple[str, str]:
        for test in tests:
            names = sorted(
                (n for n in sources if test(PurePosixPath(n))), key=lambda n: (n.count("/"), n)
            )
            if names:
                return names[0], _decode(names[0], sources[names[0]]())
        raise ValueError(
            f"no {description} among the uploaded files ({', '.join(sorted(sources)) or 'none'})"
            f"; a BEIR folder has corpus.jsonl, queries.jsonl and qrels/{split}.tsv"
        )

    corpus = find("corpus.jsonl", lambda p: p.name == "corpus.jsonl")
    queries = find("queries.jsonl", lambda p: p.name == "queries.jsonl")
    qrels = find(
        "qrels .tsv file",
        lambda p: p.match(f"qrels/{split}.tsv"),
        lambda p: p.name == f"{split}.tsv",
        lambda p: p.suffix == ".tsv",
    )
    name = Path(paths[0]).stem if len(paths) == 1 else "BEIR upload"
    return _labelled_set(name, _corpus(*corpus), queries, qrels)


def relevant_only(data: RetrievalSet) -> RetrievalSet:
    """Only the positive labels (gain > 0) and the queries that have at least one.

    BEIR keeps every judged query, so a query judged only non-relevant scores 0 on every metric
    and pulls the average down; this drops such queries before they are embedded (the demo's
    choice). Raises ``ValueError`` when no query is left.

    >>> relevant_only(read_beir_upload(["mine.zip"])).qrels  # doctest: +SKIP
    {'q1': {'d7': 2}}
    """
    positive = {
        q: {d: gain for d, gain in docs.items() if gain > 0} for q, docs in data.qrels.items()
    }
    qrels = {q: docs for q, docs in positive.items() if docs}
    if not qrels:
        raise ValueError(f"{data.name}: no query has a positive relevance label")
    present = set(data.doc_ids)
    if not any(doc in present for docs in qrels.values() for doc in docs):
        check_judged_documents(data.name, present, qrels, "its positive labels")
    kept = [(q, text) for q, text in zip(data.query_ids, data.queries, strict=True) if q in qrels]
    return replace(
        data,
        query_ids=tuple(q for q, _ in kept),
        queries=tuple(text for _, text in kept),
        qrels={q: qrels[q] for q, _ in kept},
    )


def _beir_paths(folder: Path, corpus: str, split: str) -> tuple[Path, Path, Path]:
    """``folder``'s ``corpus`` (a file or folder), ``queries.jsonl`` and ``qrels/<split>.tsv``,
    which must exist."""
    corpus_path, queries_path = folder / corpus, folder / "queries.jsonl"
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for path in (corpus_path, queries_path):
        if not path.exists():
            raise FileNotFoundError(
                f"{path} does not exist; is {folder} a BEIR folder ({corpus}, queries.jsonl, "
                f"qrels/{split}.tsv)?"
            )
    if not qrels_path.is_file():
        splits = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise FileNotFoundError(
            f"{qrels_path} does not exist; splits here: {', '.join(splits) or 'none'}"
        )
    return corpus_path, queries_path, qrels_path


def _zip_members(path: Path, limit: int) -> dict[str, Callable[[], bytes | bytearray]]:
    """Each file of a zip by its name inside, read on demand; refuses a zip bomb.

    The sizes a zip declares may lie, so members are decompressed in bounded chunks and
    counted: the whole archive may unpack to at most ``limit`` bytes, whatever it declares.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            members = [member for member in archive.infolist() if not member.is_dir()]
    except zipfile.BadZipFile:
        raise ValueError(f"{path.name}: not a valid zip file") from None
    if sum(member.file_size for member in members) > limit:
        raise ValueError(f"{path.name}: unpacks to more than {_megabytes(limit)}")
    budget = [limit]  # bytes the archive may still unpack to, shared by its members
    return {
        member.filename: partial(_unzip, path, member.filename, budget, limit) for member in members
    }


def _megabytes(size: int) -> str:
    return f"{size / 1024**2:g} MB"


_UNZIP_CHUNK = 1024**2


def _unzip(path: Path, member: str, budget: list[int], limit: int) -> bytearray:
    """``member``'s bytes, decompressed a chunk at a time; stops once ``budget`` is spent."""
    data = bytearray()
    try:
        with zipfile.ZipFile(path) as archive, archive.open(member) as stream:
            while chunk := stream.read(_UNZIP_CHUNK):
                budget[0] -= len(chunk)
                if budget[0] < 0:
                    raise ValueError(
                        f"{path.name}: unpacks to more than {_megabytes(limit)} "
                        f"(reading {member}, whatever sizes the zip declares)"
                    )
                data += chunk
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as error:
        raise ValueError(f"{path.name}: {member} is corrupt ({error})") from None
    return data


def _decode(name: str, data: bytes | bytearray) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{name}: not UTF-8 text (byte {error.start})") from None


def _read(path: Path) -> tuple[str, str]:
    """A file's name for messages and its text."""
    return str(path), _decode(str(path), path.read_bytes())


def _labelled_set(
    name: str, corpus: dict[str, str], queries: tuple[str, str], qrels: tuple[str, str]
) -> RetrievalSet:
    """The set of ``corpus`` (document id -> text) and the parsed ``(name, text)`` label files."""
    if not corpus:
        raise ValueError(f"{name}: the corpus is empty")
    texts = {record["_id"]: str(record.get("text") or "") for record in _jsonl(*queries)}
    judged = _qrels(*qrels)
    unknown = sorted(set(judged) - set(texts))
    if unknown:
        raise ValueError(
            f"{qrels[0]} judges {len(unknown)} query id(s) missing from {queries[0]}, "
            f"e.g. {', '.join(unknown[:5])}"
        )
    check_judged_documents(name, corpus, judged, qrels[0])
    query_ids = tuple(q for q in texts if q in judged)
    return RetrievalSet(
        name=name,
        doc_ids=tuple(corpus),
        documents=tuple(corpus.values()),
        query_ids=query_ids,
        queries=tuple(texts[q] for q in query_ids),
        qrels=judged,
    )


def check_judged_documents(
    name: str, doc_ids: Iterable[str], qrels: dict[str, dict[str, int]], qrels_name: str = "qrels"
) -> None:
    """Warn when qrels judge documents missing from the corpus; refuse when none is there.

    A missing document can never be retrieved, so it scores as a miss: a few of them shift
    the figures (``UserWarning`` with the count and examples), all of them make every score 0
    (``ValueError``: the corpus and the qrels do not belong together).
    """
    present = set(doc_ids)
    judged = {doc for docs in qrels.values() for doc in docs}
    missing = sorted(judged - present)
    if not missing:
        return
    examples = ", ".join(missing[:5])
    if len(missing) == len(judged):
        raise ValueError(
            f"{name}: none of the {len(judged)} documents judged in {qrels_name} is in the "
            f"corpus (e.g. {examples}); do the corpus and the qrels belong together?"
        )
    warnings.warn(
        f"{name}: {qrels_name} judges {len(missing)} of {len(judged)} documents that are "
        f"missing from the corpus (e.g. {examples}); they count as never retrieved",
        UserWarning,
        stacklevel=2,
    )


def _corpus(name: str, text: str) -> dict[str, str]:
    """Document id -> ``title + " " + text``, stripped, from a ``corpus.jsonl``."""
    return {
        record["_id"]: (
            str(record.get("title") or "") + " " + str(record.get("text") or "")
        ).strip()
        for record in _jsonl(name, text)
    }


def _qrels(name: str, text: str) -> dict[str, dict[str, int]]:
    """Query id -> document id -> gain, from a qrels file (tab-separated; a header is skipped)."""
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("\t") if "\t" in line else line.split()
        if not fields:
            continue
        if number == 1 and not fields[-1].strip().lstrip("-").isdigit():
            continue  # header
        try:
            query_id, doc_id, gain = fields[0], fields[1], int(fields[2])
        except (IndexError, ValueError):
            raise ValueError(
                f"{name}:{number}: expected query-id, corpus-id, score (an integer), found "
                f"{line[:80]!r}"
            ) from None
        if not -(2**31) <= gain < 2**31:  # pytrec_eval keeps gains in a C int
            raise ValueError(
                f"{name}:{number}: score {gain} is out of range; relevance scores are small "
                "integers (0, 1, 2, ...)"
            )
        qrels.setdefault(query_id, {})[doc_id] = gain
    return qrels


def _jsonl(name: str, text: str) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; each must be an object with an ``_id`` (made a str)."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{name}:{number}: not valid JSON: {error}") from None
        except RecursionError:
            raise ValueError(
                f"{name}:{number}: not valid JSON for a record: nested too deeply"
            ) from None
        if not isinstance(record, dict) or "_id" not in record:
            raise ValueError(f"{name}:{number}: a record has no '_id' field ({line[:80]})")
        records.append({**record, "_id": str(record["_id"])})
    return records


# ---- classification (SentEval transfer tasks) --------------------------------------------------

CLASSIFICATION_SPLITS: tuple[str, ...] = ("all", "train", "dev", "test")
"""The files a classification folder may hold, ``<split>.tsv``."""

MIN_PER_CLASS = 10
"""Fewest lines per label in the file the classifier is cross-validated on (``all.tsv``, or
``train.tsv`` without ``dev.tsv``): enough for 10-fold stratified cross-validation."""


@dataclass(frozen=True)
class LabelledTexts:
    """One ``label<TAB>sentence`` file: a label (as written, a string) per sentence."""

    path: str
    texts: tuple[str, ...]
    labels: tuple[str, ...]
    first_lines: dict[str, int]  # label -> the line it first appears on (for messages)

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class ClassificationTask:
    """A classification task: ``splits`` is ``{"all": ...}`` (cross-validation), or
    ``{"train": ..., "test": ...}`` with an optional ``"dev"``."""

    name: str
    source: str
    splits: dict[str, LabelledTexts]

    @property
    def protocol(self) -> str:
        """``cv`` (``all.tsv``), ``dev`` (train/dev/test) or ``train-cv`` (train/test)."""
        if "all" in self.splits:
            return "cv"
        return "dev" if "dev" in self.splits else "train-cv"

    @property
    def classes(self) -> list[str]:
        """The labels, sorted (numerically when they are all integers)."""
        labels = {label for split in self.splits.values() for label in split.labels}
        return sorted(labels, key=_label_order)

    def __len__(self) -> int:
        return sum(len(split) for split in self.splits.values())


def _label_order(label: str) -> tuple[int, int | str]:
    try:
        return (0, int(label))
    except ValueError:
        return (1, label)


def read_labelled_texts(path: str | Path) -> LabelledTexts:
    """Read one ``label<TAB>sentence`` file; refuses a line that is not one, naming it.

    A label is one word (``0``, ``1``, ``POS``, ``NUM:dist``...): a line without a tab, an empty
    label or a label with spaces in it (a sentence in the label column) is an error. Blank lines
    are skipped; the sentence's whitespace is collapsed. A label with an empty sentence is kept,
    as SentEval keeps it (CR has four).

    >>> read_labelled_texts("../shared/data/transfer/cr/all.tsv").labels[:2]  # doctest: +SKIP
    ('0', '0')
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    texts: list[str] = []
    labels: list[str] = []
    first_lines: dict[str, int] = {}
    expected = "expected one label<TAB>sentence per line"
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        label, tab, sentence = line.partition("\t")
        label = label.strip()
        where = f"{path}:{number}"
        if not tab:
            raise ValueError(f"{where}: no tab in {line[:60]!r}; {expected}")
        if not label:
            raise ValueError(f"{where}: the label is empty; {expected}")
        if len(label.split()) > 1:
            raise ValueError(
                f"{where}: the label column holds {label[:60]!r}, which is not a label (a label "
                f"is one word, e.g. 0, 1 or POS); {expected}"
            )
        texts.append(_collapse(sentence))
        labels.append(label)
        first_lines.setdefault(label, number)
    if not texts:
        raise ValueError(f"{path} is empty; {expected}")
    return LabelledTexts(str(path), tuple(texts), tuple(labels), first_lines)


def read_classification(folder: str | Path) -> ClassificationTask:
    """Read a classification folder: ``all.tsv``, or ``train.tsv`` + ``test.tsv`` (+ ``dev.tsv``).

    Refuses, naming the file (and line): a missing or mixed-up split, an empty file, a line that
    is not ``label<TAB>sentence``, a single class, a label of ``dev``/``test`` absent from
    ``train``, and a label too rare for cross-validation (fewer than ``MIN_PER_CLASS`` lines in
    the file the classifier is cross-validated on).

    >>> task = read_classification("../shared/data/transfer/sst2")  # doctest: +SKIP
    >>> task.protocol, len(task.splits["train"])  # doctest: +SKIP
    ('dev', 6920)
    """
    folder = Path(folder)
    layout = (
        "a classification folder holds all.tsv (10-fold cross-validation), or train.tsv and "
        "test.tsv (and optionally dev.tsv), each one label<TAB>sentence per line"
    )
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; {layout}")
    present = [s for s in CLASSIFICATION_SPLITS if (folder / f"{s}.tsv").is_file()]
    if "all" in present and len(present) > 1:
        others = ", ".join(f"{s}.tsv" for s in present if s != "all")
        raise ValueError(f"{folder} holds both all.tsv and {others}: keep one layout; {layout}")
    if "all" not in present:
        missing = [s for s in ("train", "test") if s not in present]
        if missing:
            found = ", ".join(f"{s}.tsv" for s in present) or "none of them"
            raise FileNotFoundError(
                f"{folder / (missing[0] + '.tsv')} does not exist (found: {found}); {layout}"
            )
    splits = {split: read_labelled_texts(folder / f"{split}.tsv") for split in present}
    task = ClassificationTask(folder.name, str(folder), splits)
    fitted = splits["all" if "all" in splits else "train"]
    if len(fitted.first_lines) < 2:
        (label,) = fitted.first_lines
        raise ValueError(
            f"{fitted.path}: every line has the label {label!r}; a classifier needs at least "
            "two classes"
        )
    for split in ("dev", "test"):
        if split in splits:
            unseen = [
                label for label in splits[split].first_lines if label not in fitted.first_lines
            ]
            if unseen:
                line = splits[split].first_lines[unseen[0]]
                raise ValueError(
                    f"{splits[split].path}:{line}: the label {unseen[0]!r} does not occur in "
                    f"{fitted.path}; the classifier can only predict the labels it was trained on"
                )
    if task.protocol != "dev":
        counts = Counter(fitted.labels)
        rare = [label for label, count in counts.items() if count < MIN_PER_CLASS]
        if rare:
            label = rare[0]
            raise ValueError(
                f"{fitted.path}:{fitted.first_lines[label]}: the label {label!r} is on "
                f"{counts[label]} line(s); cross-validation needs at least {MIN_PER_CLASS} lines "
                "per label (is this line a header?)"
            )
    return task
