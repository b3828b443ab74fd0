"""The tp-rag demo: ingest documents, compare retrieval with TP on and off, evaluate both.

Start it with ``make demo`` or ``tp-rag demo [--model M] [--db DIR]`` (``tp-rag demo`` finds
this file). In code, ``Demo`` holds the handlers and ``build_app`` lays them out::

    demo = Demo(TPEncoder.from_pretrained(), connect(".tp-rag/demo"))
    launch(build_app(demo))

Three tabs: **Ingest** uploads files (or the bundled sample corpus) into a ``TPStore``;
**Compare** searches it with TP on and off side by side; **Evaluate** scores both on labelled
queries (the bundled set, or an uploaded BEIR folder) with nDCG@10, Recall@10 and MRR@10.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported

import gradio as gr
import numpy as np
import pandas as pd

from tp_rag.documents import SUFFIXES, read_document
from tp_rag.encoder import TPEncoder
from tp_rag.ingest import IngestSummary, ingest
from tp_rag.store import Hit, TPStore, describe_change, rank_change

SAMPLE = Path(__file__).resolve().parent / "sample"
"""The bundled sample corpus (``docs/``) and its labelled queries (BEIR ``queries.jsonl``,
``qrels/test.tsv``), written for this project."""

SAMPLE_CHOICE = "Bundled sample set (32 documents, 13 queries)"
UPLOAD_CHOICE = "Uploaded BEIR folder or zip"
METRICS = {"nDCG@10": "ndcg_cut_10", "Recall@10": "recall_10", "MRR@10": "recip_rank"}
"""Displayed name -> pytrec_eval result key. MRR@10 is trec_eval's reciprocal rank computed on
runs cut to their 10 best documents."""
_MEASURES = {"ndcg_cut.10", "recall.10", "recip_rank"}  # what pytrec_eval is asked for
_CUTOFF = 10
_MAX_UNZIPPED = 512 * 1024 * 1024  # refuse zips that would unpack to more than this
_COLUMNS = ["rank", "similarity", "vs other", "source", "snippet"]
_WIDTHS = ["8%", "14%", "14%", "22%", "42%"]


# --- labelled query sets ---------------------------------------------------------------------


@dataclass
class LabelledSet:
    """Documents, queries and graded relevance labels (``qrels[query_id][doc_id] = gain``)."""

    name: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _jsonl(name: str, data: bytes) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(data.decode("utf-8-sig").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{name}, line {number}: not JSON ({error.msg})") from None
    return rows


def _field(row: dict[str, Any], key: str, name: str) -> str:
    if key not in row:
        raise ValueError(f"{name}: a record has no {key!r} field ({json.dumps(row)[:80]})")
    return str(row[key] or "")


def _parse_labels(
    queries_file: tuple[str, bytes], qrels_file: tuple[str, bytes]
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    queries = {
        _field(row, "_id", queries_file[0]): _field(row, "text", queries_file[0])
        for row in _jsonl(*queries_file)
    }
    qrels: dict[str, dict[str, int]] = {}
    name, data = qrels_file
    for number, line in enumerate(data.decode("utf-8-sig").splitlines(), start=1):
        fields = line.split("\t") if "\t" in line else line.split()
        if not fields:
            continue
        try:
            query_id, doc_id, score = fields[0], fields[1], int(float(fields[2]))
        except (IndexError, ValueError):
            if number == 1:
                continue  # the header: query-id, corpus-id, score
            raise ValueError(
                f"{name}, line {number}: expected query-id, corpus-id, score"
            ) from None
        if score > 0:
            qrels.setdefault(query_id, {})[doc_id] = score
    return queries, qrels


def _labelled(
    name: str, corpus: dict[str, str], queries: dict[str, str], qrels: Any
) -> LabelledSet:
    qrels = {q: docs for q, docs in qrels.items() if q in queries}
    if not corpus:
        raise ValueError(f"{name}: the corpus is empty")
    if not qrels:
        raise ValueError(f"{name}: no query has a positive relevance label")
    return LabelledSet(name, corpus, {q: queries[q] for q in qrels}, qrels)


def load_sample_set(folder: Path = SAMPLE) -> LabelledSet:
    """The bundled sample: each document of ``docs/`` is one corpus entry, id = file stem."""
    if not (folder / "docs").is_dir():
        raise OSError(f"the sample corpus is missing ({folder / 'docs'} does not exist)")
    corpus = {
        path.stem: read_document(path)
        for path in sorted((folder / "docs").iterdir())
        if path.suffix.lower() in SUFFIXES
    }
    queries_path, qrels_path = folder / "queries.jsonl", folder / "qrels" / "test.tsv"
    queries, qrels = _parse_labels(
        (queries_path.name, queries_path.read_bytes()), (qrels_path.name, qrels_path.read_bytes())
    )
    return _labelled("sample set", corpus, queries, qrels)


def load_beir(paths: Sequence[str | Path]) -> LabelledSet:
    """A BEIR dataset from a folder, a zip of one, or its loose files.

    Needs ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
    ``text``) and a qrels file (``qrels/test.tsv`` preferred, else any ``.tsv``).
    """
    files: dict[str, bytes] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file():
                    files[child.relative_to(path).as_posix()] = child.read_bytes()
        elif path.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(path) as archive:
                    members = [m for m in archive.infolist() if not m.is_dir()]
                    if sum(m.file_size for m in members) > _MAX_UNZIPPED:
                        raise ValueError(f"{path.name}: unpacks to more than 512 MB")
                    for member in members:
                        files[member.filename] = archive.read(member)
            except zipfile.BadZipFile:
                raise ValueError(f"{path.name}: not a valid zip file") from None
        else:
            files[path.name] = path.read_bytes()

    def find(description: str, *candidates: Callable[[str], bool]) -> tuple[str, bytes]:
        for matches in candidates:
            names = sorted(name for name in files if matches(name))
            if names:
                return names[0], files[names[0]]
        raise ValueError(
            f"no {description} among the uploaded files ({', '.join(sorted(files)) or 'none'}); "
            "a BEIR folder has corpus.jsonl, queries.jsonl and qrels/test.tsv"
        )

    corpus_file = find("corpus.jsonl", lambda n: Path(n).name == "corpus.jsonl")
    queries_file = find("queries.jsonl", lambda n: Path(n).name == "queries.jsonl")
    qrels_file = find(
        "qrels .tsv file",
        lambda n: n.endswith("qrels/test.tsv") or n == "test.tsv",
        lambda n: n.endswith(".tsv"),
    )
    corpus = {
        _field(row, "_id", corpus_file[0]): " ".join(
            filter(None, (row.get("title"), _field(row, "text", corpus_file[0])))
        ).strip()
        for row in _jsonl(*corpus_file)
    }
    queries, qrels = _parse_labels(queries_file, qrels_file)
    return _labelled("BEIR upload", {k: v for k, v in corpus.items() if v}, queries, qrels)


def retrieval_metrics(
    qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]
) -> dict[str, float]:
    """nDCG@10, Recall@10 and MRR@10, averaged over the queries of ``qrels``, by pytrec_eval.

    ``run[query_id][doc_id]`` is a score; each query's run must hold its 10 best documents
    only (that makes trec_eval's reciprocal rank MRR@10). Queries missing from ``run`` count 0.
    """
    import pytrec_eval

    evaluator = pytrec_eval.RelevanceEvaluator(qrels, _MEASURES)
    per_query = evaluator.evaluate(run)
    return {
        label: sum(per_query.get(q, {}).get(measure, 0.0) for q in qrels) / len(qrels)
        for label, measure in METRICS.items()
    }


def _encode(
    encoder: TPEncoder,
    texts: list[str],
    *,
    tp: bool,
    report: Callable[[int, str], None],
    what: str,
) -> np.ndarray:
    """Encode in batches, reporting progress; unit-length rows (cosine similarity by dot)."""
    step = encoder.config.batch_size
    parts = []
    for begin in range(0, len(texts), step):
        parts.append(encoder.encode(texts[begin : begin + step], tp=tp, show_progress=False))
        report(min(begin + step, len(texts)), f"{what}, TP {'on' if tp else 'off'}")
    vectors = np.concatenate(parts) if parts else np.zeros((0, encoder.dimension), np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def evaluate(
    encoder: TPEncoder,
    labelled: LabelledSet,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Exact (brute-force) retrieval of ``labelled.queries`` over its corpus, TP on and off.

    Returns ``{"TP on": {"nDCG@10": ...}, "TP off": {...}}``.
    """
    doc_ids, query_ids = list(labelled.corpus), list(labelled.queries)
    total = 2 * (len(doc_ids) + len(query_ids))
    done = 0

    def report(count: int, what: str) -> None:
        if progress is not None:
            progress(done + count, total, what)

    results = {}
    for tp in (True, False):
        docs = _encode(
            encoder, list(labelled.corpus.values()), tp=tp, report=report, what="documents"
        )
        done += len(doc_ids)
        queries = _encode(
            encoder, list(labelled.queries.values()), tp=tp, report=report, what="queries"
        )
        done += len(query_ids)
        scores = queries @ docs.T  # (queries, documents)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :_CUTOFF]
        run = {
            query_id: {doc_ids[j]: float(scores[i, j]) for j in top[i]}
            for i, query_id in enumerate(query_ids)
        }
        results["TP on" if tp else "TP off"] = retrieval_metrics(labelled.qrels, run)
    return results


# --- the handlers ----------------------------------------------------------------------------


class _IngestBar:
    """``IngestProgress`` onto a ``gr.Progress``."""

    def __init__(self, progress: Any) -> None:
        self._progress = progress
        self._files = self._read = self._queued = self._written = 0

    def files_found(self, total: int) -> None:
        self._files = total
        self._progress((0, total), desc="reading files")

    def file_read(self, name: str, chunks: int) -> None:
        self._read += 1
        self._queued += chunks
        self._progress((self._read, self._files), desc=f"read {Path(name).name}")

    def chunks_written(self, count: int) -> None:
        self._written += count
        self._progress((self._written, self._queued), desc="embedding chunks, TP on and off")


def _snippet(text: str, width: int = 240) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _hits_frame(hits: list[Hit], other: list[Hit], side: str) -> pd.DataFrame:
    rows = [
        [
            hit.rank,
            round(hit.similarity, 4),
            describe_change(rank_change(hit, other), side),
            f"{hit.source} #{hit.chunk_index}",
            _snippet(hit.text),
        ]
        for hit in hits
    ]
    return pd.DataFrame(rows, columns=_COLUMNS)


class Demo:
    """The demo's state (encoder, store) and its handlers, callable without a browser.

    ``collection`` defaults to ``demo-`` plus the encoder's fingerprint, so each encoder
    configuration gets its own pair of collections in a shared database.
    """

    def __init__(
        self,
        encoder: TPEncoder,
        client: Any,
        *,
        collection: str | None = None,
        sample: Path = SAMPLE,
    ) -> None:
        name = collection or f"demo-{encoder.config.replace(tp=True).fingerprint()[:12]}"
        self.encoder = encoder
        self.store = TPStore(client, name, encoder)
        self.sample = sample

    def status(self) -> str:
        """The collection's size, as Markdown."""
        on, off = self.store.count()
        return (
            f"Collection `{self.store.on.name}` holds **{on}** chunks embedded with TP on, "
            f"`{self.store.off.name}` **{off}** with TP off."
        )

    def _report(self, summary: IngestSummary) -> str:
        lines = [f"**Ingested:** {summary}.", "", self.status()]
        if summary.skipped:
            lines += ["", "**Skipped:**"]
            lines += [f"- `{Path(path).name}`: {reason}" for path, reason in summary.skipped]
        return "\n".join(lines)

    def ingest_files(self, files: Sequence[str | Path] | None, progress: Any = None) -> str:
        """Ingest uploaded files; each is known by its file name (re-uploading replaces it)."""
        if not files:
            raise ValueError("no files to ingest: upload some first")
        summary = ingest(
            [Path(f) for f in files],
            self.store,
            source_name=lambda path: path.name,
            progress=_IngestBar(progress) if progress is not None else None,
        )
        return self._report(summary)

    def ingest_sample(self, progress: Any = None) -> str:
        """Ingest the bundled sample corpus (a no-op when it is already in)."""
        docs = self.sample / "docs"
        if not docs.is_dir():
            raise OSError(f"the sample corpus is missing ({docs} does not exist)")
        summary = ingest(
            [docs],
            self.store,
            source_name=lambda path: f"sample/{path.name}",
            progress=_IngestBar(progress) if progress is not None else None,
        )
        return self._report(summary)

    def compare(self, query: str, k: int = 5) -> tuple[pd.DataFrame, pd.DataFrame, str]:
        """The ``k`` best chunks with TP on and with TP off, and a status line."""
        on, off = self.store.search(query, k=int(k))
        if not on:
            note = "The collection is empty: ingest some files (or the sample corpus) first."
        else:
            shared = len({h.id for h in on} & {h.id for h in off})
            note = (
                f"{shared} of the top {len(on)} are found by both; {len(on) - shared} only with "
                f"TP on, {len(off) - shared} only with TP off. {self.status()}"
            )
        return _hits_frame(on, off, "TP on"), _hits_frame(off, on, "TP off"), note

    def evaluate(
        self,
        choice: str = SAMPLE_CHOICE,
        files: Sequence[str | Path] | None = None,
        progress: Any = None,
    ) -> tuple[pd.DataFrame, pd.DataFrame, str]:
        """Score TP on and off on labelled queries: a metrics table, chart data and a summary."""
        if choice == UPLOAD_CHOICE:
            if not files:
                raise ValueError("upload a BEIR folder's files or a zip of it first")
            labelled = load_beir(files)
        else:
            labelled = load_sample_set(self.sample)
        started = time.perf_counter()

        def report(done: int, total: int, what: str) -> None:
            if progress is not None:
                progress((done, total), desc=f"embedding {what}")

        scores = evaluate(self.encoder, labelled, report)
        table = pd.DataFrame(
            [
                [
                    metric,
                    round(scores["TP on"][metric], 4),
                    round(scores["TP off"][metric], 4),
                    round(scores["TP on"][metric] - scores["TP off"][metric], 4),
                ]
                for metric in METRICS
            ],
            columns=["metric", "TP on", "TP off", "TP on − TP off"],
        )
        chart = pd.DataFrame(
            [
                {"bar": f"{metric} {side}", "score": scores[side][metric], "setting": side}
                for metric in METRICS
                for side in ("TP on", "TP off")
            ]
        )
        note = (
            f"{labelled.name}: {len(labelled.queries)} queries over {len(labelled.corpus)} "
            f"documents, exact search, {time.perf_counter() - started:.1f} s. "
            "Metrics by pytrec_eval; higher is better."
        )
        return table, chart, note


# --- the app ---------------------------------------------------------------------------------


def _user_errors(function: Callable[..., Any]) -> Callable[..., Any]:
    """Show expected problems (bad input, missing files) in the page, not as a crash."""

    @functools.wraps(function)  # gradio reads the signature (inputs, gr.Progress)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (ValueError, OSError) as error:
            raise gr.Error(str(error), print_exception=False) from error

    return wrapped


def build_app(demo: Demo) -> gr.Blocks:
    """The ``gr.Blocks`` app: tabs Ingest, Compare and Evaluate over ``demo``'s handlers.

    API names (for ``gradio_client``): ``/ingest``, ``/ingest_sample``, ``/compare``,
    ``/evaluate``, ``/status``.
    """
    config = demo.encoder.config
    queries_file = demo.sample / "queries.jsonl"
    sample_queries = []
    if queries_file.is_file():
        sample_queries = [
            row["text"] for row in _jsonl(queries_file.name, queries_file.read_bytes())
        ]

    @_user_errors
    def on_ingest(files: list[str] | None, progress: gr.Progress = gr.Progress()) -> str:  # noqa: B008
        return demo.ingest_files(files, progress)

    @_user_errors
    def on_sample(progress: gr.Progress = gr.Progress()) -> str:  # noqa: B008
        return demo.ingest_sample(progress)

    @_user_errors
    def on_compare(query: str, k: float) -> tuple[pd.DataFrame, pd.DataFrame, str]:
        return demo.compare(query, int(k))

    @_user_errors
    def on_evaluate(
        choice: str,
        files: list[str] | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[pd.DataFrame, pd.DataFrame, str]:
        return demo.evaluate(choice, files, progress)

    last_tp = config.tp_stop - 1
    layers = (
        f"TP before layer {config.tp_start}"
        if last_tp == config.tp_start
        else f"TP before layers {config.tp_start}–{last_tp}"
    )

    with gr.Blocks(title="tp-rag: retrieval with Token Prepending on and off") as app:
        gr.Markdown(
            "# tp-rag: retrieval with Token Prepending on and off\n"
            f"Model `{config.model}` · {layers} · readout layer {config.output_layer} · "
            f"prompt `{config.prompt}` · "
            f"collections `{demo.store.on.name}` (TP on) and `{demo.store.off.name}` (TP off)"
        )
        with gr.Tabs():
            with gr.Tab("Ingest", id="ingest"):
                upload = gr.File(
                    label=f"Documents ({', '.join(SUFFIXES)})",
                    file_count="multiple",
                    file_types=list(SUFFIXES),
                    elem_id="upload",
                )
                with gr.Row():
                    ingest_button = gr.Button("Ingest files", variant="primary", elem_id="ingest")
                    sample_button = gr.Button("Load the sample corpus", elem_id="load-sample")
                ingest_status = gr.Markdown(elem_id="ingest-status")
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    query = gr.Textbox(
                        label="Query",
                        placeholder="Ask something about your documents",
                        scale=4,
                        elem_id="query",
                    )
                    k = gr.Slider(1, 20, value=5, step=1, label="Results per side", scale=1)
                search_button = gr.Button("Search", variant="primary", elem_id="search")
                if sample_queries:
                    gr.Examples(
                        [[q] for q in sample_queries[:6]], inputs=[query], label="Sample queries"
                    )
                compare_status = gr.Markdown(elem_id="compare-status")
                gr.Markdown(
                    "**vs other**: ▲n ranks n places higher than on the other side, ▼n lower, "
                    "= the same; *only TP on* / *only TP off*: not in the other side's list."
                )
                with gr.Row():
                    with gr.Column():
                        gr.Markdown("### TP on")
                        on_table = gr.Dataframe(
                            headers=_COLUMNS,
                            interactive=False,
                            wrap=True,
                            column_widths=_WIDTHS,
                            elem_id="tp-on",
                        )
                    with gr.Column():
                        gr.Markdown("### TP off")
                        off_table = gr.Dataframe(
                            headers=_COLUMNS,
                            interactive=False,
                            wrap=True,
                            column_widths=_WIDTHS,
                            elem_id="tp-off",
                        )
            with gr.Tab("Evaluate", id="evaluate"):
                choice = gr.Radio(
                    [SAMPLE_CHOICE, UPLOAD_CHOICE], value=SAMPLE_CHOICE, label="Labelled queries"
                )
                beir_files = gr.File(
                    label="BEIR dataset: corpus.jsonl, queries.jsonl and qrels/test.tsv, or a zip",
                    file_count="multiple",
                    file_types=[".zip", ".jsonl", ".tsv"],
                )
                evaluate_button = gr.Button("Evaluate", variant="primary", elem_id="evaluate")
                evaluate_status = gr.Markdown()
                with gr.Row():
                    metrics_table = gr.Dataframe(interactive=False, label="Scores")
                    chart = gr.BarPlot(
                        x="bar",
                        y="score",
                        color="setting",
                        y_lim=[0, 1],
                        sort=None,
                        label="TP on vs TP off",
                    )

        ingest_button.click(on_ingest, [upload], [ingest_status], api_name="ingest")
        sample_button.click(on_sample, None, [ingest_status], api_name="ingest_sample")
        search_event = dict(
            fn=on_compare, inputs=[query, k], outputs=[on_table, off_table, compare_status]
        )
        search_button.click(**search_event, api_name="compare")
        query.submit(**search_event, api_visibility="private")
        evaluate_button.click(
            on_evaluate,
            [choice, beir_files],
            [metrics_table, chart, evaluate_status],
            api_name="evaluate",
        )
        app.load(demo.status, None, [ingest_status], api_name="status")
    return app


def launch(
    app: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    max_file_size: str | int = "20mb",
    block: bool = True,
) -> tuple[Any, str, str]:
    """Serve ``app`` on ``host:port`` (loopback by default), refusing uploads over the limit.

    ``block=False`` returns at once (tests); ``port=None`` takes the first free one from 7860.
    """
    return app.launch(
        server_name=host,
        server_port=port,
        max_file_size=max_file_size,
        prevent_thread_lock=not block,
        show_error=True,
        quiet=not block,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python demo/app.py [options]`` is ``tp-rag demo [options]``."""
    from tp_rag.cli import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
