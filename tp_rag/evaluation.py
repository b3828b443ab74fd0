"""Evaluation: STS and retrieval, TP on against TP off, with optional baseline models.

One model load gives two columns, ``TP on`` and ``TP off`` (the same prompt without the
placeholder, on the same weights); ``--baseline sentence-transformers:PATH_OR_NAME`` adds a
dedicated embedding model as a further column. Every column goes through the same metric code:

- STS: Spearman correlation x100 between the cosine similarity of each pair and its gold score.
  A task made of several files (SentEval's STS12-16 folders) is scored on all its pairs pooled,
  SentEval's ``all`` Spearman as reported by SimCSE, PromptEOL and the Token Prepending paper
  (not SentEval's ``mean``/``wmean`` of the per-file figures); each file is listed as well.
- Retrieval: exact cosine search over a BEIR collection (documents are ``title + " " + text``),
  scored by ``pytrec_eval`` (trec_eval): nDCG@10 (``ndcg_cut.10``), Recall@100 (``recall.100``;
  ``recall_at`` sets the cutoff, the demo's small sets use 10) and MRR@10 (``recip_rank`` over
  each query's top 10), averaged over the judged queries.

>>> from tp_rag.datasets import read_sts
>>> report = evaluate_sts(tp_systems(enc), [read_sts("sts-test.csv")])  # doctest: +SKIP
>>> report["tasks"][0]["spearman"]  # doctest: +SKIP
{'TP on': 70.1, 'TP off': 65.3}
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tp_rag.datasets import PAPER_TASKS, RetrievalSet, StsPairs, StsTask

if TYPE_CHECKING:
    from tp_rag.config import TPConfig
    from tp_rag.encoder import TPEncoder

Embed = Callable[[Sequence[str]], np.ndarray]
"""Texts in, one vector per text out (``(n, d)``)."""

RETRIEVAL_METRICS: tuple[str, ...] = ("nDCG@10", "Recall@100", "MRR@10")
"""The retrieval figures, in table order."""

BASELINE_PREFIX = "sentence-transformers:"
RETRIEVAL_DEPTH = 100  # documents kept per query: enough for Recall@100 (more for a deeper cutoff)


@dataclass
class System:
    """One column of a results table: a name and a function from texts to vectors."""

    name: str
    embed: Embed
    description: dict[str, Any] = field(default_factory=dict)


def tp_systems(encoder: TPEncoder) -> list[System]:
    """``TP on`` and ``TP off`` columns over one loaded ``TPEncoder``."""
    on, off = encoder.config.replace(tp=True), encoder.config.replace(tp=False)

    def describe(config: TPConfig) -> dict[str, Any]:
        return {"kind": "tp-rag", "settings": config.to_dict(), "fingerprint": config.fingerprint()}

    return [
        System("TP on", lambda texts: encoder.encode(list(texts), tp=True), describe(on)),
        System("TP off", lambda texts: encoder.encode(list(texts), tp=False), describe(off)),
    ]


def baseline_system(
    spec: str, *, device: str | None = None, batch_size: int | None = None
) -> System:
    """A ``sentence-transformers:PATH_OR_NAME`` baseline column (needs the ``baseline`` extra).

    >>> baseline_system("sentence-transformers:all-MiniLM-L6-v2").name  # doctest: +SKIP
    'all-MiniLM-L6-v2'
    """
    if not spec.startswith(BASELINE_PREFIX) or not spec[len(BASELINE_PREFIX) :]:
        raise ValueError(
            f"baseline {spec!r} is not of the form {BASELINE_PREFIX}PATH_OR_NAME, e.g. "
            f"{BASELINE_PREFIX}sentence-transformers/all-MiniLM-L6-v2"
        )
    name_or_path = spec[len(BASELINE_PREFIX) :]
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ImportError(
            "a sentence-transformers baseline needs the package: pip install 'tp-rag[baseline]'"
        ) from None
    try:
        model = SentenceTransformer(
            name_or_path, device=None if device in (None, "auto") else device
        )
    except (OSError, ValueError) as error:
        raise OSError(f"could not load baseline {name_or_path!r}: {error}") from error

    def embed(texts: Sequence[str]) -> np.ndarray:
        return model.encode(
            list(texts), batch_size=batch_size or 32, convert_to_numpy=True, show_progress_bar=None
        )

    path = Path(name_or_path)
    label = f"{path.parent.name}/{path.name}" if path.is_dir() and path.parent.name else path.name
    return System(label, embed, {"kind": "sentence-transformers", "model": name_or_path})


# ---- metrics, shared by every column, by `eval` and by `tune` ---------------------------------


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), so dot products are cosines."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def text_index(texts: Iterable[str]) -> tuple[list[str], dict[str, int]]:
    """Unique texts in first-seen order and each text's row among them."""
    index: dict[str, int] = {}
    for text in texts:
        index.setdefault(text, len(index))
    return list(index), index


def sts_spearman(pairs: StsPairs, vectors: np.ndarray, index: dict[str, int]) -> float:
    """Spearman x100 of pair cosines against gold; ``vectors[index[text]]`` embeds ``text``."""
    from scipy.stats import spearmanr

    unit = unit_rows(vectors)
    first = unit[[index[s] for s in pairs.sentences1]]  # (n, d)
    second = unit[[index[s] for s in pairs.sentences2]]  # (n, d)
    cosines = (first * second).sum(axis=1)
    return float(spearmanr(cosines, pairs.scores).statistic * 100)


def rank_documents(
    query_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    depth: int = RETRIEVAL_DEPTH,
) -> dict[str, dict[str, float]]:
    """Exact cosine search: the top ``depth`` documents of each query with their scores."""
    queries, docs = unit_rows(query_vectors), unit_rows(doc_vectors)
    depth = min(depth, len(doc_ids))
    run: dict[str, dict[str, float]] = {}
    for start in range(0, len(query_ids), 256):
        scores = queries[start : start + 256] @ docs.T  # (queries, docs)
        top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        for row, columns in enumerate(top):
            run[query_ids[start + row]] = {
                doc_ids[c]: float(scores[row, c])
                for c in columns[np.argsort(-scores[row, columns])]
            }
    return run


def retrieval_metrics(
    run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], recall_at: int = 100
) -> dict[str, float]:
    """nDCG@10, Recall@``recall_at`` and MRR@10 by ``pytrec_eval``, averaged over the queries of
    ``qrels`` (one missing from ``run`` scores 0, as ``trec_eval -c`` counts it).

    >>> retrieval_metrics({"q": {"d2": 0.9, "d1": 0.8}}, {"q": {"d1": 1}}, recall_at=10)
    {'nDCG@10': 0.6309297535714575, 'Recall@10': 1.0, 'MRR@10': 0.5}
    """
    if isinstance(recall_at, bool) or not isinstance(recall_at, int) or recall_at < 1:
        raise ValueError(f"recall_at must be a positive number of documents, not {recall_at!r}")
    try:
        import pytrec_eval
    except ImportError:
        raise ImportError(
            "retrieval metrics need pytrec_eval: pip install 'tp-rag[eval]'"
        ) from None
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", f"recall.{recall_at}"})
    per_query = per_query.evaluate(run)
    # trec_eval's recip_rank has no cutoff: rank each query's top 10 only to get MRR@10.
    top10 = {
        q: dict(sorted(docs.items(), key=lambda item: -item[1])[:10]) for q, docs in run.items()
    }
    reciprocal = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)

    def mean(results: dict[str, dict[str, float]], measure: str) -> float:
        return sum(results.get(q, {}).get(measure, 0.0) for q in qrels) / max(len(qrels), 1)

    return {
        "nDCG@10": mean(per_query, "ndcg_cut_10"),
        f"Recall@{recall_at}": mean(per_query, f"recall_{recall_at}"),
        "MRR@10": mean(reciprocal, "recip_rank"),
    }


def score_retrieval(
    data: RetrievalSet, query_vectors: np.ndarray, doc_vectors: np.ndarray, recall_at: int = 100
) -> dict[str, float]:
    """The retrieval figures (``retrieval_metrics``) of one column's query and document vectors."""
    depth = max(RETRIEVAL_DEPTH, recall_at)
    run = rank_documents(query_vectors, doc_vectors, data.query_ids, data.doc_ids, depth)
    return retrieval_metrics(run, data.qrels, recall_at)


# ---- running the columns ----------------------------------------------------------------------


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def evaluate_sts(systems: Sequence[System], tasks: Sequence[StsTask]) -> dict[str, Any]:
    """Score every system on every task; each text is embedded once per system.

    Returns a JSON-ready report: ``tasks[i]["spearman"][system]`` is the task's figure (all
    pairs pooled) and ``tasks[i]["files"]`` the per-file figures of a multi-file task.
    """
    texts, index = text_index(
        s for task in tasks for part in task.parts for s in (*part.sentences1, *part.sentences2)
    )
    report_tasks = [
        {
            "name": task.name,
            "source": task.source,
            "pairs": len(task),
            "spearman": {},
            "files": [
                {"name": part.name, "pairs": len(part), "spearman": {}} for part in task.parts
            ]
            if len(task.parts) > 1
            else [],
        }
        for task in tasks
    ]
    for system in systems:
        _note(f"embedding {len(texts)} sentences: {system.name}")
        vectors = system.embed(texts)
        for task, entry in zip(tasks, report_tasks, strict=True):
            entry["spearman"][system.name] = sts_spearman(task.pooled(), vectors, index)
            for part, file_entry in zip(task.parts, entry["files"], strict=False):
                file_entry["spearman"][system.name] = sts_spearman(part, vectors, index)
    return {
        "kind": "sts",
        "systems": {s.name: s.description for s in systems},
        "tasks": report_tasks,
    }


def evaluate_retrieval(systems: Sequence[System], data: RetrievalSet) -> dict[str, Any]:
    """nDCG@10, Recall@100 and MRR@10 of every system on one BEIR split (JSON-ready report)."""
    metrics: dict[str, dict[str, float]] = {}
    for system in systems:
        _note(
            f"embedding {len(data.documents)} documents, {len(data.queries)} queries: {system.name}"
        )
        doc_vectors = system.embed(data.documents)
        query_vectors = system.embed(data.queries)
        metrics[system.name] = score_retrieval(data, query_vectors, doc_vectors)
    return {
        "kind": "retrieval",
        "data": data.name,
        "documents": len(data.documents),
        "queries": len(data.queries),
        "systems": {s.name: s.description for s in systems},
        "metrics": metrics,
    }


def paper_summary(report: dict[str, Any], missing: dict[str, str]) -> dict[str, Any]:
    """The paper's table from an STS report over ``PAPER_TASKS``: scores per system, the 7-task
    average (``None`` unless all seven tasks ran) and the missing tasks with reasons."""
    by_name = {task["name"]: task for task in report["tasks"]}
    present = [task for task in PAPER_TASKS if task in by_name]
    rows = {}
    for system in report["systems"]:
        scores = {task: by_name[task]["spearman"][system] for task in present}
        rows[system] = {
            "scores": scores,
            "average": float(np.mean(list(scores.values())))
            if len(present) == len(PAPER_TASKS)
            else None,
            "average_of_present": float(np.mean(list(scores.values()))) if scores else None,
        }
    return {"tasks": list(PAPER_TASKS), "present": present, "missing": missing, "rows": rows}


# ---- tables -----------------------------------------------------------------------------------


def _console() -> Any:
    from rich.console import Console

    return Console(width=max(Console().width, 100))


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


def write_json(path: str | Path, report: dict[str, Any]) -> None:
    """Write a report as indented JSON (a NaN score, e.g. from constant vectors, becomes null)."""
    Path(path).write_text(json.dumps(_no_nan(report), indent=2) + "\n", encoding="utf-8")


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _no_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(item) for item in value]
    return value


# ---- command line -----------------------------------------------------------------------------


def _systems(args: argparse.Namespace) -> list[System]:
    """TP on/off over one model load (unless ``--no-tp``), then the baselines, in order."""
    from tp_rag.cli import encoder_from_args

    systems: list[System] = []
    if not args.no_tp:
        encoder = encoder_from_args(args)
        _note(repr(encoder))
        systems += tp_systems(encoder)
    for spec in args.baseline:
        systems.append(baseline_system(spec, device=args.device, batch_size=args.batch_size))
    if not systems:
        raise ValueError("--no-tp leaves nothing to evaluate; add --baseline")
    return systems


_PAPER_SETTINGS = ("preset", "prompt", "tp_start", "tp_stop", "output_layer", "pooling")


def _paper_notes(args: argparse.Namespace) -> None:
    """Say whether the run uses the authors' settings for this model."""
    changed = [f"--{n.replace('_', '-')}" for n in _PAPER_SETTINGS if getattr(args, n) is not None]
    if changed:
        _note(f"note: {', '.join(changed)} given: these are not the paper's settings")
    if args.no_tp:
        return
    from tp_rag import DEFAULT_MODEL
    from tp_rag.loading import load_config
    from tp_rag.presets import match_published

    published = match_published(
        load_config(args.model or DEFAULT_MODEL, trust_remote_code=args.trust_remote_code)
    )
    if published is None:
        _note(
            "note: this model is not one of the paper's (Llama-2-7B/13B, Llama-3-8B, Qwen2-7B, "
            "Gemma2-9B): its TP layers come from the depth rule, not from the authors"
        )
    else:
        _note(f"the authors' settings for {published.name}: {published.settings}")


def _eval_sts(args: argparse.Namespace) -> int:
    from tp_rag.datasets import find_paper_tasks, read_sts

    if args.paper:
        if len(args.data) != 1:
            raise ValueError("--paper takes one --data folder (a SentEval data root)")
        found, missing = find_paper_tasks(args.data[0])
        for task, reason in missing.items():
            _note(f"missing {task}: {reason}")
        if not found:
            raise ValueError(f"none of the paper's STS tasks were found under {args.data[0]}")
        tasks = [found[name] for name in PAPER_TASKS if name in found]
        _paper_notes(args)
    else:
        tasks = [read_sts(path) for path in args.data]
    report = evaluate_sts(_systems(args), tasks)
    console = _console()
    if args.paper:
        report["paper"] = paper_summary(report, missing)
        console.print(sts_table(report))
        console.print(paper_table(report["paper"]))
        if missing:
            console.print(
                f"missing: {', '.join(missing)} (Avg is over the {len(found)} tasks found, "
                "not the paper's 7-task average)"
            )
    else:
        console.print(sts_table(report))
    if args.json:
        write_json(args.json, report)
    return 0


def _eval_retrieval(args: argparse.Namespace) -> int:
    from tp_rag.datasets import read_beir

    if len(args.data) != 1:
        raise ValueError("retrieval takes one --data folder (a BEIR collection)")
    data = read_beir(args.data[0], args.split)
    report = evaluate_retrieval(_systems(args), data)
    report["split"] = args.split
    _console().print(retrieval_table(report))
    if args.json:
        write_json(args.json, report)
    return 0


def _tune(args: argparse.Namespace) -> int:
    from tp_rag.tuning import run_tune_command

    return run_tune_command(args)


def _add_common(parser: argparse.ArgumentParser, *, baseline: bool = True) -> None:
    from tp_rag.cli import add_encoder_options

    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
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
    """Add ``tp-rag eval sts``, ``tp-rag eval retrieval`` and ``tp-rag tune``."""
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
    _add_common(sts)
    sts.set_defaults(func=_eval_sts)

    retrieval = kinds.add_parser(
        "retrieval",
        help="nDCG@10, Recall@100, MRR@10 on a BEIR folder",
        description="Exact cosine search over a BEIR collection (title + ' ' + text), TP on "
        "and off, scored by pytrec_eval.",
    )
    retrieval.add_argument("--data", nargs=1, required=True, metavar="BEIR_DIR")
    retrieval.add_argument("--split", default="test", help="qrels/<split>.tsv (default: test)")
    _add_common(retrieval)
    retrieval.set_defaults(func=_eval_retrieval)

    tune = subparsers.add_parser(
        "tune",
        help="pick tp_stop and output_layer on a labelled dev set; write a preset",
        description="Grid over tp_stop x output_layer on an STS file or a BEIR split: one "
        "forward pass per text per tp_stop reads out every candidate layer at once. Writes the "
        "best cell as a JSON preset for --preset / from_pretrained(preset=...).",
    )
    tune.add_argument("--data", required=True, metavar="FILE_OR_DIR", help="STS file or BEIR dir")
    tune.add_argument("--split", default="dev", help="BEIR qrels split (default: dev)")
    tune.add_argument(
        "--tp-stops",
        default=None,
        metavar="LIST",
        help="tp_stop candidates, e.g. 2-8 or 3,5,7 (default: tp_start+1 .. ceil(layers/3))",
    )
    tune.add_argument(
        "--layers",
        default=None,
        metavar="LIST",
        help="output_layer candidates (hidden_states indices), e.g. 10-24 (default: 1 .. layers)",
    )
    tune.add_argument(
        "--metric",
        default="nDCG@10",
        choices=RETRIEVAL_METRICS,
        help="retrieval metric to maximise (STS data always uses Spearman)",
    )
    tune.add_argument("--output", required=True, metavar="FILE", help="preset file to write")
    _add_common(tune, baseline=False)
    tune.set_defaults(func=_tune)
