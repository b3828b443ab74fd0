"""``tp-rag eval sts``, ``retrieval`` and ``classification``: the evaluation library's reports as
tables."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tp_rag import progress
from tp_rag.cache import EmbeddingCache, default_cache_dir
from tp_rag.cli.options import add_encoder_options, console, encoder_from_args, note
from tp_rag.config import DEFAULT_MODEL
from tp_rag.datasets import PAPER_TASKS
from tp_rag.evaluation import (
    BASELINE_PREFIX,
    System,
    baseline_system,
    evaluate_classification,
    evaluate_retrieval,
    evaluate_sts,
    paper_summary,
    tp_systems,
    write_json,
)
from tp_rag.metrics import RETRIEVAL_METRICS
from tp_rag.progress import Estimate, Heartbeat

if TYPE_CHECKING:
    from tp_rag.datasets import RetrievalSet


class LineNotes:
    """``EvalProgress`` as stderr lines: texts embedded out of the total with an estimate of the
    time left, when a column moves to another set of texts and at least every ``every`` s; and,
    through ``beat`` (a ``Heartbeat``), a line at least every ``quiet`` s while a slice of texts
    takes long (the first one on a CPU can take minutes)."""

    def __init__(self, every: float = 10.0, quiet: float | None = None) -> None:
        self._what = ""
        self._every = every
        self._quiet = progress.QUIET_SECONDS if quiet is None else quiet
        self._said = time.monotonic()
        self._estimate = Estimate("texts")

    def _say(self, line: str) -> None:
        self._said = time.monotonic()
        note(line)

    def start(self, line: str, total: int = 0) -> None:
        """Say what the command is about to do (``total`` texts, if known), and start the
        clock of the estimate."""
        self._estimate = Estimate("texts")
        self._estimate.update(0, total)
        self._say(line)

    def beat(self) -> None:
        """Say how far it is when nothing was said for ``quiet`` seconds."""
        if time.monotonic() - self._said >= self._quiet:
            what = f"embedding {self._what}" if self._what else "embedding"
            counts = str(self._estimate) if self._estimate.total else self._estimate.timing()
            self._say(f"{what}: {counts}")

    def __call__(self, done: int, total: int, what: str) -> None:
        self._estimate.update(done, total)
        now = time.monotonic()
        if what != self._what or now - self._said >= self._every or done >= total:
            self._what = what
            self._say(f"embedding {what}: {self._estimate}")


class ClassificationNotes:
    """The two counts of ``evaluate_classification`` (texts embedded, model selections run) as
    stderr lines, with one estimate of the time left for both.

    Embedding and classifying alternate (task by task, column by column), so each kind of work
    gets its own rate: the time since the previous report of either kind is credited to the kind
    just reported (a report comes right after the work it counts).
    """

    def __init__(self, every: float = 10.0) -> None:
        self._every = every
        self._said = 0.0
        self._what = ""
        self._started = self._last = time.monotonic()
        self._counts = {"texts": (0, 0), "folds": (0, 0)}  # kind -> (done, total)
        self._seconds = {"texts": 0.0, "folds": 0.0}

    def texts(self, done: int, total: int, what: str) -> None:
        """``EvalProgress`` for the texts embedded."""
        self._update("texts", done, total, f"embedding {what}")

    def folds(self, done: int, total: int, what: str) -> None:
        """``EvalProgress`` for the model selections run."""
        self._update("folds", done, total, f"classifying {what}")

    def seconds_left(self, kind: str | None = None) -> float | None:
        """Time left at each kind's own rate (or for ``kind`` alone); ``None`` while a rate
        needed is unknown."""
        left = 0.0
        for name, (done, total) in self._counts.items():
            if done < total and kind in (None, name):
                if done == 0:
                    return None
                left += self._seconds[name] / done * (total - done)
        return left

    def _update(self, kind: str, done: int, total: int, what: str) -> None:
        from tqdm import tqdm

        now = time.monotonic()
        self._seconds[kind] += now - self._last
        self._last = now
        self._counts[kind] = (done, total)
        finished = all(d >= t for d, t in self._counts.values())
        if done == 0 or (what == self._what and now - self._said < self._every and not finished):
            return
        self._what, self._said = what, now
        (texts, all_texts), (folds, all_folds) = self._counts.values()
        line = f"{what}: {texts}/{all_texts} texts, {folds}/{all_folds} model selections, "
        line += f"{tqdm.format_interval(now - self._started)}"
        left, embedding_left = self.seconds_left(), self.seconds_left("texts")
        if not finished and left is not None:
            line += f" so far, about {tqdm.format_interval(left)} left"
        elif not finished and embedding_left:  # no model selection timed yet
            line += f" so far, about {tqdm.format_interval(embedding_left)} left to embed"
        note(line)


def sts_table(report: dict[str, Any]) -> Any:
    """Rows: tasks (and their files, indented); columns: systems. Spearman x100."""
    from rich.markup import escape  # file, task and model names are text, not markup
    from rich.table import Table

    systems = list(report["systems"])
    table = Table(title="STS: Spearman x100 of cosine similarity")
    table.add_column("task")
    table.add_column("pairs", justify="right")
    for name in systems:
        table.add_column(escape(name), justify="right")
    for task in report["tasks"]:
        for file in task["files"]:
            table.add_row(
                escape(f"  {task['name']} / {file['name']}"),
                str(file["pairs"]),
                *(f"{file['spearman'][s]:.2f}" for s in systems),
                style="dim",
            )
        label = f"{task['name']} (all)" if task["files"] else task["name"]
        table.add_row(
            escape(label), str(task["pairs"]), *(f"{task['spearman'][s]:.2f}" for s in systems)
        )
    return table


def paper_table(summary: dict[str, Any]) -> Any:
    """The paper's layout: rows are systems; columns STS12-16, STS-B, SICK-R and Avg."""
    from rich.markup import escape  # file, task and model names are text, not markup
    from rich.table import Table

    complete = not summary["missing"]
    table = Table(title="STS (Spearman x100), the Token Prepending paper's layout")
    table.add_column("")
    for task in summary["tasks"]:
        table.add_column(task, justify="right")
    table.add_column("Avg" if complete else f"Avg ({len(summary['present'])}/7)", justify="right")
    for system, row in summary["rows"].items():
        cells = [f"{row['scores'][t]:.2f}" if t in row["scores"] else "-" for t in summary["tasks"]]
        average = row["average"] if complete else row["average_of_present"]
        table.add_row(escape(system), *cells, "-" if average is None else f"{average:.2f}")
    return table


def retrieval_table(report: dict[str, Any]) -> Any:
    """Rows: metrics; columns: systems."""
    from rich.markup import escape  # file, task and model names are text, not markup
    from rich.table import Table

    systems = list(report["systems"])
    table = Table(
        title=escape(
            f"Retrieval on {report['data']} ({report['queries']} queries, "
            f"{report['documents']} documents)"
        )
    )
    table.add_column("metric")
    for name in systems:
        table.add_column(escape(name), justify="right")
    for metric in RETRIEVAL_METRICS:
        table.add_row(metric, *(f"{report['metrics'][s][metric]:.4f}" for s in systems))
    return table


def _cache(args: argparse.Namespace) -> EmbeddingCache | None:
    """The vector cache ``--cache-dir`` names (default ``default_cache_dir()``), or ``None``
    with ``--no-cache``."""
    if args.no_cache:
        return None
    cache = EmbeddingCache(args.cache_dir or default_cache_dir())
    note(f"vector cache: {cache.directory} (--no-cache to embed everything again)")
    return cache


def _systems(args: argparse.Namespace, *, normalize: bool | None = None) -> list[System]:
    """TP on/off over one model load (unless ``--no-tp``), then the baselines, in order.

    ``normalize`` (``None``: the configuration's) sets the TP columns' L2 normalisation;
    ``True`` also normalises the baselines, which otherwise give their vectors as their model
    ships them."""
    systems: list[System] = []
    if not args.no_tp:
        cache = _cache(args)
        extra = {} if normalize is None else {"normalize": normalize}
        for method in _methods(args):  # the weights load once; each method gives on and off
            encoder = encoder_from_args(args, **extra, **({"method": method} if method else {}))
            note(repr(encoder))
            systems += tp_systems(encoder, cache=cache)
    for spec in args.baseline:
        systems.append(
            baseline_system(
                spec, device=args.device, batch_size=args.batch_size, normalize=normalize or None
            )
        )
    if not systems:
        raise ValueError("--no-tp leaves nothing to evaluate; add --baseline")
    return systems


def _columns(systems: list[System]) -> str:
    return ", ".join(system.name for system in systems)


def _methods(args: argparse.Namespace) -> list[str | None]:
    """``--method tp,htp`` as a list (``[None]``, the default method, when not given)."""
    if args.method is None:
        return [None]
    methods = [m.strip() for m in args.method.split(",")]
    if len(set(methods)) != len(methods) or not all(methods):
        raise ValueError(f"--method {args.method!r}: give each method once, e.g. --method tp,htp")
    return list(methods)


_PAPER_SETTINGS = ("preset", "prompt", "tp_start", "tp_stop", "output_layer", "pooling")


def _paper_notes(args: argparse.Namespace) -> None:
    """Say whether the run uses the authors' settings for this model."""
    changed = [f"--{n.replace('_', '-')}" for n in _PAPER_SETTINGS if getattr(args, n) is not None]
    if changed:
        note(f"note: {', '.join(changed)} given: these are not the paper's settings")
    if args.no_tp:
        return
    from tp_rag.loading import load_config
    from tp_rag.presets import match_published

    published = match_published(
        load_config(args.model or DEFAULT_MODEL, trust_remote_code=args.trust_remote_code)
    )
    if published is None:
        note(
            "note: this model is not one of the paper's (Llama-2-7B/13B, Llama-3-8B, Qwen2-7B, "
            "Gemma2-9B): its TP layers come from the depth rule, not from the authors"
        )
    else:
        note(f"the authors' settings for {published.name}: {published.settings}")


def run_eval_sts(args: argparse.Namespace) -> int:
    """``tp-rag eval sts``: score the columns on STS files (or the paper's suite)."""
    from tp_rag.datasets import find_paper_tasks, read_sts

    if args.paper:
        if len(args.data) != 1:
            raise ValueError("--paper takes one --data folder (a SentEval data root)")
        found, missing = find_paper_tasks(args.data[0])
        for task, reason in missing.items():
            note(f"missing {task}: {reason}")
        if not found:
            raise ValueError(f"none of the paper's STS tasks were found under {args.data[0]}")
        tasks = [found[name] for name in PAPER_TASKS if name in found]
        _paper_notes(args)
    else:
        tasks = [read_sts(path) for path in args.data]
    systems = _systems(args)
    notes = LineNotes()
    pairs = sum(len(task) for task in tasks)
    notes.start(f"embedding the sentences of {pairs} pairs with {_columns(systems)}")
    with Heartbeat(notes.beat):
        report = evaluate_sts(systems, tasks, progress=notes)
    out = console()
    if args.paper:
        report["paper"] = paper_summary(report, missing)
        out.print(sts_table(report))
        out.print(paper_table(report["paper"]))
        if missing:
            out.print(
                f"missing: {', '.join(missing)} (Avg is over the {len(found)} tasks found, "
                "not the paper's 7-task average)"
            )
    else:
        out.print(sts_table(report))
    if args.json:
        write_json(args.json, report)
    return 0


def read_retrieval_data(path: str, split: str) -> RetrievalSet:
    """What ``--data`` of ``eval retrieval`` names: a BEIR folder, a folder of labelled
    documents (``docs/`` in place of ``corpus.jsonl``, as the demo's sample), or ``sample``,
    the bundled sample set the demo evaluates."""
    from tp_rag.datasets import read_beir, read_labelled_documents
    from tp_rag.demo import SAMPLE

    folder = Path(path)
    if path == "sample" and not folder.exists():
        folder = SAMPLE
    elif not folder.exists():
        raise FileNotFoundError(
            f"--data {path}: no such folder (the demo's bundled set is `--data sample`)"
        )
    if not (folder / "corpus.jsonl").exists() and (folder / "docs").is_dir():
        return read_labelled_documents(folder, split)
    return read_beir(folder, split)


def run_eval_retrieval(args: argparse.Namespace) -> int:
    """``tp-rag eval retrieval``: score the columns on one BEIR split."""
    if len(args.data) != 1:
        raise ValueError("retrieval takes one --data folder (a BEIR collection)")
    data = read_retrieval_data(args.data[0], args.split)
    systems = _systems(args)
    notes = LineNotes()
    notes.start(
        f"embedding {len(data.documents)} documents and {len(data.queries)} queries with "
        f"{_columns(systems)}",
        total=(len(data.documents) + len(data.queries)) * len(systems),
    )
    with Heartbeat(notes.beat):
        report = evaluate_retrieval(systems, data, progress=notes)
    report["split"] = args.split
    console().print(retrieval_table(report))
    if args.json:
        write_json(args.json, report)
    return 0


def classification_table(report: dict[str, Any]) -> Any:
    """Rows: tasks (and the average); columns: systems. Accuracy %."""
    from rich.table import Table

    systems = list(report["systems"])
    table = Table(title="Classification: accuracy % of a logistic regression on the vectors")
    table.add_column("task")
    table.add_column("sentences", justify="right")
    table.add_column("protocol")
    for name in systems:
        table.add_column(name, justify="right")
    for task in report["tasks"]:
        table.add_row(
            task["name"],
            str(sum(task["sizes"].values())),
            task["protocol"],
            *(f"{task['accuracy'][s]:.2f}" for s in systems),
        )
    if len(report["tasks"]) > 1:
        table.add_row(
            f"average ({len(report['tasks'])} tasks)",
            "",
            "",
            *(f"{report['average'][s]:.2f}" for s in systems),
        )
    return table


def run_eval_classification(args: argparse.Namespace) -> int:
    """``tp-rag eval classification``: SentEval's transfer protocol on the columns."""
    from tp_rag.datasets import read_classification

    tasks = [read_classification(path) for path in args.data]  # refuse bad data before loading
    _paper_notes(args)
    systems = _systems(args, normalize=args.normalize)
    notes = ClassificationNotes()
    report = evaluate_classification(
        systems, tasks, progress=notes.texts, fold_progress=notes.folds
    )
    report["normalize"] = args.normalize
    for task in report["tasks"]:
        for system, count in task["unconverged_fits"].items():
            if count:
                note(
                    f"note: {count} logistic-regression fit(s) of {system} on {task['name']} "
                    "stopped at the iteration limit before converging"
                )
    console().print(classification_table(report))
    if args.json:
        write_json(args.json, report)
    return 0


CLASSIFICATION_HELP = """\
SentEval's transfer-task protocol (the Token Prepending paper's second table): a logistic
regression (scikit-learn, L2) is trained on the frozen sentence vectors and scored by accuracy %.
Each --data folder holds one task as label<TAB>sentence files (labels: any one-word integers
or strings, two or more classes):
  all.tsv                    10-fold stratified shuffled cross-validation; in each training
                             part C is chosen from {0.25, 0.5, 1, 2, 4, 8} by an inner 5-fold
                             stratified shuffled cross-validation (MR, CR, SUBJ, MPQA)
  train.tsv dev.tsv test.tsv C chosen on dev (fitted on train), accuracy on test (SST-2)
  train.tsv test.tsv         C chosen by 5-fold cross-validation on train, accuracy on test
                             (TREC)
Folds and classifiers use the seed 1111. The TP on and TP off vectors are raw (not
L2-normalised), as the authors' SentEval runs feed them; a --baseline gives its vectors as the
model ships them (all-MiniLM-L6-v2 ends in a Normalize module). --normalize L2-normalises every
column.
"""


def add_eval_options(
    parser: argparse.ArgumentParser, *, baseline: bool = True, cache: bool = True
) -> None:
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    if cache:
        parser.add_argument(
            "--cache-dir",
            default=None,
            metavar="DIR",
            help="reuse and keep TP vectors here, keyed by encoder fingerprint and text "
            "(default: $TP_RAG_CACHE_DIR, else $XDG_CACHE_HOME/tp-rag/embeddings, else "
            "~/.cache/tp-rag/embeddings)",
        )
        parser.add_argument(
            "--no-cache", action="store_true", help="embed every text again; write no cache"
        )
    if baseline:
        parser.add_argument(
            "--baseline",
            action="append",
            default=[],
            metavar=f"{BASELINE_PREFIX}PATH_OR_NAME",
            help="add a sentence-transformers model as a column (repeatable)",
        )
        parser.add_argument(
            "--no-tp", action="store_true", help="skip the TP on/off columns (baselines only)"
        )
    add_encoder_options(parser)


def register(subparsers: Any) -> None:
    """Add ``tp-rag eval sts``, ``tp-rag eval retrieval`` and ``tp-rag eval classification``."""
    evaluate = subparsers.add_parser(
        "eval", help="STS, retrieval or classification scores, TP on vs off (and baselines)"
    )
    kinds = evaluate.add_subparsers(dest="eval_command", required=True, metavar="KIND")

    sts = kinds.add_parser(
        "sts",
        help="Spearman x100 on STS pairs",
        description="Spearman x100 of cosine similarity against gold scores, TP on and off. "
        "--data takes STS Benchmark .csv files, SICK .txt files and SentEval STS12-16 folders.",
    )
    sts.add_argument("--data", nargs="+", required=True, metavar="FILE_OR_DIR")
    sts.add_argument(
        "--paper",
        action="store_true",
        help="the paper's suite (STS12-16, STS-B, SICK-R) with the paper's settings; --data is "
        "a data root holding SentEval's STS12-en-test ... folders, sts-test.csv and "
        "SICK_test_annotated.txt",
    )
    add_eval_options(sts)
    sts.set_defaults(func=run_eval_sts)

    retrieval = kinds.add_parser(
        "retrieval",
        help="nDCG@10, Recall@100, MRR@10 on a BEIR folder",
        description="Exact cosine search over a BEIR collection (title + ' ' + text), TP on "
        "and off, scored by pytrec_eval.",
    )
    retrieval.add_argument(
        "--data",
        nargs=1,
        required=True,
        metavar="BEIR_DIR",
        help="a BEIR folder, a folder with docs/ in place of corpus.jsonl, or 'sample' (the "
        "demo's bundled set: 32 documents, 13 queries)",
    )
    retrieval.add_argument("--split", default="test", help="qrels/<split>.tsv (default: test)")
    add_eval_options(retrieval)
    retrieval.set_defaults(func=run_eval_retrieval)

    classification = kinds.add_parser(
        "classification",
        help="accuracy % of a logistic regression on the vectors (SentEval transfer tasks)",
        description=CLASSIFICATION_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    classification.add_argument("--data", nargs="+", required=True, metavar="DIR")
    classification.add_argument(
        "--normalize",
        action="store_true",
        help="L2-normalise every column's vectors (default: TP vectors raw, as the paper's "
        "SentEval runs; baselines as their model ships them)",
    )
    add_eval_options(classification)
    classification.set_defaults(func=run_eval_classification)
