"""``tp-rag eval sts`` and ``tp-rag eval retrieval``: the evaluation library's reports as tables."""

from __future__ import annotations

import argparse
import time
from typing import Any

from tp_rag.cache import EmbeddingCache, default_cache_dir
from tp_rag.cli.options import add_encoder_options, console, encoder_from_args, note
from tp_rag.config import DEFAULT_MODEL
from tp_rag.datasets import PAPER_TASKS
from tp_rag.evaluation import (
    BASELINE_PREFIX,
    System,
    baseline_system,
    evaluate_retrieval,
    evaluate_sts,
    paper_summary,
    tp_systems,
    write_json,
)
from tp_rag.metrics import RETRIEVAL_METRICS
from tp_rag.progress import Estimate


class LineNotes:
    """``EvalProgress`` as stderr lines: texts embedded out of the total with an estimate of the
    time left, when a column moves to another set of texts and at least every ``every`` s."""

    def __init__(self, every: float = 10.0) -> None:
        self._what = ""
        self._every = every
        self._said = 0.0
        self._estimate = Estimate("texts")

    def __call__(self, done: int, total: int, what: str) -> None:
        self._estimate.update(done, total)
        now = time.monotonic()
        if what != self._what or now - self._said >= self._every or done >= total:
            self._what, self._said = what, now
            note(f"embedding {what}: {self._estimate}")


def sts_table(report: dict[str, Any]) -> Any:
    """Rows: tasks (and their files, indented); columns: systems. Spearman x100."""
    from rich.table import Table

    systems = list(report["systems"])
    table = Table(title="STS: Spearman x100 of cosine similarity")
    table.add_column("task")
    table.add_column("pairs", justify="right")
    for name in systems:
        table.add_column(name, justify="right")
    for task in report["tasks"]:
        for file in task["files"]:
            table.add_row(
                f"  {task['name']} / {file['name']}",
                str(file["pairs"]),
                *(f"{file['spearman'][s]:.2f}" for s in systems),
                style="dim",
            )
        label = f"{task['name']} (all)" if task["files"] else task["name"]
        table.add_row(label, str(task["pairs"]), *(f"{task['spearman'][s]:.2f}" for s in systems))
    return table


def paper_table(summary: dict[str, Any]) -> Any:
    """The paper's layout: rows are systems; columns STS12-16, STS-B, SICK-R and Avg."""
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
        table.add_row(system, *cells, "-" if average is None else f"{average:.2f}")
    return table


def retrieval_table(report: dict[str, Any]) -> Any:
    """Rows: metrics; columns: systems."""
    from rich.table import Table

    systems = list(report["systems"])
    table = Table(
        title=f"Retrieval on {report['data']} ({report['queries']} queries, "
        f"{report['documents']} documents)"
    )
    table.add_column("metric")
    for name in systems:
        table.add_column(name, justify="right")
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


def _systems(args: argparse.Namespace) -> list[System]:
    """TP on/off over one model load (unless ``--no-tp``), then the baselines, in order."""
    systems: list[System] = []
    if not args.no_tp:
        cache = _cache(args)
        for method in _methods(args):  # the weights load once; each method gives on and off
            encoder = encoder_from_args(args, **({"method": method} if method else {}))
            note(repr(encoder))
            systems += tp_systems(encoder, cache=cache)
    for spec in args.baseline:
        systems.append(baseline_system(spec, device=args.device, batch_size=args.batch_size))
    if not systems:
        raise ValueError("--no-tp leaves nothing to evaluate; add --baseline")
    return systems


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
    report = evaluate_sts(_systems(args), tasks, progress=LineNotes())
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


def run_eval_retrieval(args: argparse.Namespace) -> int:
    """``tp-rag eval retrieval``: score the columns on one BEIR split."""
    from tp_rag.datasets import read_beir

    if len(args.data) != 1:
        raise ValueError("retrieval takes one --data folder (a BEIR collection)")
    data = read_beir(args.data[0], args.split)
    report = evaluate_retrieval(_systems(args), data, progress=LineNotes())
    report["split"] = args.split
    console().print(retrieval_table(report))
    if args.json:
        write_json(args.json, report)
    return 0


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
    """Add ``tp-rag eval sts`` and ``tp-rag eval retrieval``."""
    evaluate = subparsers.add_parser(
        "eval", help="STS or retrieval scores, TP on vs off (and baselines)"
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
    retrieval.add_argument("--data", nargs=1, required=True, metavar="BEIR_DIR")
    retrieval.add_argument("--split", default="test", help="qrels/<split>.tsv (default: test)")
    add_eval_options(retrieval)
    retrieval.set_defaults(func=run_eval_retrieval)
