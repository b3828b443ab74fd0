"""The tp-rag demo: ingest documents, compare retrieval with TP on and off, evaluate both.

Start it with ``make demo``, ``tp-rag demo [--model M] [--db DIR]`` or
``python -m tp_rag.demo.app``. In code, ``Demo`` holds the handlers and ``build_app`` lays them
out (one function per tab)::

    demo = Demo(TPEncoder.from_pretrained(), connect(".tp-rag/demo"))
    launch(build_app(demo))

Three tabs: **Ingest** uploads files (or the bundled sample corpus) into a ``TPStore``;
**Compare** searches it with TP on and off side by side; **Evaluate** scores both on labelled
queries (the bundled set, or an uploaded BEIR folder) with nDCG@10, Recall@10 and MRR@10.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported

import gradio as gr
import pandas as pd

from tp_rag.cli.display import describe_change, rank_change
from tp_rag.config import METHODS
from tp_rag.datasets import (
    read_beir_upload,
    read_labelled_documents,
    relevant_only,
)
from tp_rag.demo import SAMPLE
from tp_rag.documents import SUFFIXES
from tp_rag.encoder import TPEncoder
from tp_rag.evaluation import evaluate_retrieval, tp_systems
from tp_rag.ingest import IngestSummary, ingest
from tp_rag.progress import Estimate, Heartbeat, IngestCounts
from tp_rag.store import Hit, TPStore

SAMPLE_CHOICE = "Bundled sample set (32 documents, 13 queries)"
UPLOAD_CHOICE = "Uploaded BEIR folder or zip"
RECALL_AT = 10  # the demo's sets are small: Recall@10 beside nDCG@10 and MRR@10
_COLUMNS = ["#", "similarity", "vs other", "source", "snippet"]
_WIDTHS = ["6%", "19%", "15%", "24%", "36%"]  # "similarity" fits on one line at 1400 px
_SNIPPET = 120  # characters: five results fit on a screen
_NEXT_STEPS = (
    "The collection is empty: upload files and press **Ingest files**, or press **Load the "
    "sample corpus** (32 short documents). Then search them on the **Compare** tab."
)
INTRO = """\
# Token Prepending: retrieval with TP on and off

**Token Prepending (TP)** makes a decoder-only LLM's sentence embedding see the whole sentence,
without training: a placeholder token put before the sentence is overwritten, in the first
layers, with the model's summary of the sentence, so every word can attend to it. This demo
embeds every chunk of your documents twice, with TP on and with TP off, so you can see what
changes.

**1. Ingest** your documents (or the sample corpus) → **2. Compare** the results of a search with
TP on and off → **3. Evaluate** both on questions with known answers.
"""


# --- the handlers ----------------------------------------------------------------------------


class _IngestBar(IngestCounts):
    """``IngestProgress`` onto a ``gr.Progress``: files read, then chunks embedded with TP on and
    off in counts, with an estimate of the time left (``beat`` refreshes it between batches)."""

    def __init__(self, progress: Any) -> None:
        super().__init__()
        self._progress = progress

    def on_update(self, event: str) -> None:
        if event == "files_found":
            self._progress(0.0, desc=f"reading {self.files} file{'' if self.files == 1 else 's'}")
        elif event == "file_read" and not any(self.embedded.values()):
            name = Path(self.last_file).name
            self._progress(self.fraction, desc=f"read {self.read}/{self.files} files: {name}")
        else:
            self.beat()

    def beat(self) -> None:
        """Show the counts and the time so far (called by a ``Heartbeat`` between batches)."""
        if self.queued:
            self._progress(self.fraction, desc=self.describe())


def _similarity(value: float) -> str:
    return f"{value:.4f}"  # fixed decimals, so the column lines up


def _source(hit: Hit) -> str:
    # A zero-width space after each "/" lets a long path wrap between folders, not mid-word.
    return f"{hit.source} #{hit.chunk_index}".replace("/", "/\u200b")


def _hits_frame(hits: list[Hit], other: list[Hit], side: str) -> pd.DataFrame:
    rows = [
        [
            hit.rank,
            _similarity(hit.similarity),
            describe_change(rank_change(hit, other), side),
            _source(hit),
            hit.snippet(_SNIPPET),
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
        self.sample = sample
        self._client = client
        self._collection = collection
        self._methods: dict[str, tuple[TPEncoder, TPStore]] = {}
        self._use(encoder)

    def _use(self, encoder: TPEncoder) -> None:
        name = self._collection or f"demo-{encoder.config.replace(tp=True).fingerprint()[:12]}"
        self.encoder = encoder
        self.store = TPStore(self._client, name, encoder)
        self._methods[encoder.config.method] = (encoder, self.store)

    def set_method(self, method: str) -> str:
        """Work with TP or HTP from now on, over the same loaded weights (each method has its
        own collections, as its own embedding space); returns the new status.

        The other method's encoder takes that method's default settings for the model and
        this one's device, number format and batch sizes. A demo opened on a named collection
        keeps that collection's method.
        """
        if method not in METHODS:
            raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
        if method not in self._methods:
            current = self.encoder.config
            if self._collection is not None:
                raise ValueError(
                    f"collection `{self._collection}` holds {current.method.upper()} vectors; "
                    f"start the demo without --collection (or with --method {method}) for "
                    f"{method.upper()}"
                )
            self._use(
                TPEncoder.from_pretrained(
                    current.model,
                    method=method,
                    device=self.encoder.device,
                    dtype=self.encoder.dtype,
                    max_length=current.max_length,
                    batch_size=current.batch_size,
                    max_batch_tokens=current.max_batch_tokens,
                    **self.encoder.load_kwargs,
                )
            )
        self.encoder, self.store = self._methods[method]
        return self.status()

    def status(self) -> str:
        """The collection's size, as Markdown, with what to do next when it is empty."""
        on, off = self.store.count()
        text = (
            f"Collection `{self.store.on.name}` holds **{on}** chunk{'' if on == 1 else 's'} "
            "embedded with TP on, "
            f"`{self.store.off.name}` **{off}** with TP off."
        )
        return f"{text}\n\n{_NEXT_STEPS}" if on == 0 else text

    def sample_queries(self) -> list[str]:
        """The sample set's queries when this collection is empty or holds the sample corpus
        (they are examples for it), else none."""
        try:
            data = read_labelled_documents(self.sample)
        except (OSError, ValueError):
            return []  # no sample, no examples
        if self.store.count()[0] == 0:
            return list(data.queries)
        first = next(iter(sorted((self.sample / "docs").iterdir())), None)
        has_sample = first is not None and self.store.source_ids(f"sample/{first.name}")[0]
        return list(data.queries) if has_sample else []

    def _report(self, summary: IngestSummary) -> str:
        lines = [f"**Ingested:** {summary}.", "", self.status()]
        if summary.skipped:
            lines += ["", "**Skipped:**"]
            lines += [f"- `{Path(path).name}`: {reason}" for path, reason in summary.skipped]
        if self.store.count()[0]:
            lines += ["", "**Next:** search your documents on the **Compare** tab."]
        return "\n".join(lines)

    def _ingest(self, paths: list[Path], source_name: Any, progress: Any) -> IngestSummary:
        bar = _IngestBar(progress) if progress is not None else None
        if bar is None:
            return ingest(paths, self.store, source_name=source_name)
        with Heartbeat(bar.beat):  # a first batch on a CPU takes a minute
            return ingest(paths, self.store, source_name=source_name, progress=bar)

    def ingest_files(self, files: Sequence[str | Path] | None, progress: Any = None) -> str:
        """Ingest uploaded files; each is known by its file name (re-uploading replaces it).

        Uploads are deleted once ingested (``build_app`` clears the list too); a list holding
        only files that are gone asks for a new upload instead of failing on a missing file.
        """
        if not files:
            raise ValueError("no files to ingest: upload some first")
        paths = [Path(f) for f in files if Path(f).is_file()]
        if not paths:
            raise ValueError(
                "the uploaded files are gone (uploads are removed once ingested): upload them again"
            )
        return self._report(self._ingest(paths, lambda path: path.name, progress))

    def ingest_sample(self, progress: Any = None) -> str:
        """Ingest the bundled sample corpus (a no-op when it is already in)."""
        docs = self.sample / "docs"
        if not docs.is_dir():
            raise OSError(f"the sample corpus is missing ({docs} does not exist)")
        return self._report(self._ingest([docs], lambda path: f"sample/{path.name}", progress))

    def compare(self, query: str, k: int = 5) -> tuple[pd.DataFrame, pd.DataFrame, str]:
        """The ``k`` best chunks with TP on and with TP off, and a status line."""
        on, off = self.store.search(query, k=int(k))
        if not on:
            note = (
                "Nothing to search yet: the collection is empty. Ingest files or the sample "
                "corpus on the **Ingest** tab first."
            )
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
            try:
                data = read_beir_upload(files)
            except (ValueError, OSError):
                raise
            except Exception as error:  # whatever an upload holds, the page says what failed
                raise ValueError(f"the upload could not be read ({error})") from error
        else:
            data = read_labelled_documents(self.sample)
        # Only queries with a relevant document: one judged all non-relevant would score 0.
        data = relevant_only(data)
        started = time.perf_counter()
        estimate = Estimate("texts")
        what = (
            f"embedding {len(data.documents)} documents and "
            f"{len(data.queries)} queries with TP on and off"
        )
        if progress is not None:
            progress(0.0, desc=what)
        current = [what]

        def report(done: int, total: int, step: str) -> None:
            estimate.update(done, total)
            current[0] = f"embedding {step}: {estimate}"
            progress(estimate.fraction, desc=current[0])

        def beat() -> None:  # between two reports, the time so far still moves
            timing = estimate.timing() if estimate.done else Estimate("").timing()
            progress(estimate.fraction, desc=f"{current[0].partition(', ')[0]}, {timing}")

        with Heartbeat(beat) if progress is not None else contextlib.nullcontext():
            result = evaluate_retrieval(
                tp_systems(self.encoder, store=self.store),
                data,
                recall_at=RECALL_AT,
                progress=report if progress is not None else None,
            )
        return (*_scores(result["metrics"]), _evaluate_note(data, started))


_SCORE_COLUMNS = ["metric", "TP on", "TP off", "TP on − TP off"]


def _scores(scores: dict[str, dict[str, float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The metrics table (fixed decimals) and the chart's data. ``scores``' first two columns
    are the placeholder on and off ("HTP on"/"HTP off" for HTP): both are the page's "TP on"
    and "TP off", the comparison it makes for either method."""
    on, off = list(scores)[:2]
    scores = {"TP on": scores[on], "TP off": scores[off]}
    metrics = list(scores["TP on"])
    table = pd.DataFrame(
        [
            [
                metric,
                f"{scores['TP on'][metric]:.4f}",
                f"{scores['TP off'][metric]:.4f}",
                f"{scores['TP on'][metric] - scores['TP off'][metric]:+.4f}",
            ]
            for metric in metrics
        ],
        columns=_SCORE_COLUMNS,
    )
    chart = pd.DataFrame(
        [
            {"bar": f"{metric}, {side}", "score": scores[side][metric], "setting": side}
            for metric in metrics
            for side in ("TP on", "TP off")
        ]
    )
    return table, chart


def _evaluate_note(data: Any, started: float) -> str:
    return (
        f"{data.name}: {len(data.queries)} queries over {len(data.documents)} "
        f"documents, exact search, {time.perf_counter() - started:.1f} s. "
        "Metrics by pytrec_eval; higher is better."
    )


# --- the app ---------------------------------------------------------------------------------


METRICS_HELP = """\
Each question has known relevant documents. For each question, the documents are ranked by
cosine similarity, and the ranking is scored (0 to 1, higher is better), then averaged:
**nDCG@10** rewards relevant documents near the top of the first 10, weighing graded labels;
**Recall@10** is the share of the relevant documents found in the first 10; **MRR@10** is
1 / the rank of the first relevant document (0 if it is not in the first 10). The set's own
documents are embedded for this, with TP on and off; a text already in your ingested
collection (as the sample's are after **Load the sample corpus**) reuses its stored vectors.
Nothing is written to the collection.
"""

CSS = """
#tp-on [data-testid^="cell-"][data-testid$="-3"],
#tp-off [data-testid^="cell-"][data-testid$="-3"] { word-break: normal; overflow-wrap: normal; }
"""
"""Paths in the source column wrap between folders (at the zero-width spaces), not mid-word."""

CLEAR_TOASTS = "() => document.querySelectorAll('.toast-close').forEach((b) => b.click())"
"""Run in the browser when a button is pressed: an old warning does not stay over new results."""


def _shown_in_page(status_output: int, outputs: int) -> Callable[..., Any]:
    """Show expected problems (bad input, missing files) in the page: a warning and a line in
    the status output, leaving the other outputs (earlier results) as they were."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)  # gradio reads the signature (inputs, gr.Progress)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except (ValueError, OSError) as error:
                message = str(error)
                gr.Warning(message)
                results: list[Any] = [gr.skip()] * outputs
                results[status_output] = f"**Not done:** {message}."
                return results[0] if outputs == 1 else tuple(results)

        return wrapped

    return decorate


def _remove_uploads(files: Sequence[str | Path] | None) -> None:
    """Delete uploaded files from Gradio's upload folder once they have been processed."""
    from gradio.utils import get_upload_folder

    folder = Path(get_upload_folder()).resolve()
    for file in files or []:
        path = Path(file).resolve()
        if folder in path.parents:  # only Gradio's copies, never a file of the user's own
            path.unlink(missing_ok=True)
            if path.parent != folder and path.parent.is_dir() and not any(path.parent.iterdir()):
                path.parent.rmdir()  # Gradio keeps each upload in a folder of its own


def _press(button: Any, handler: Callable[..., Any], inputs: Any, outputs: Any, **kw: Any) -> Any:
    """``button.click(handler, ...)``, closing any warning left from an earlier press first."""
    button.click(None, None, None, js=CLEAR_TOASTS, api_visibility="private")
    return button.click(handler, inputs, outputs, **kw)


def settings_lines(demo: Demo) -> list[str]:
    """What the settings panel shows, one line per setting (add a setting here)."""
    config = demo.encoder.config
    last_tp = config.tp_stop - 1
    layers = (
        f"before layer {config.tp_start}"
        if last_tp == config.tp_start
        else f"before layers {config.tp_start}–{last_tp}"
    )
    return [
        f"**Model:** `{config.model}` ({demo.encoder.dtype} on {demo.encoder.device}: "
        f"{demo.encoder.dtype_reason})",
        f"**Method:** {config.method.upper()}, {config.pooling} pooling",
        f"**TP:** {layers} (0-based)",
        f"**Readout layer:** {config.output_layer}",
        f"**Prompt:** `{config.prompt}`"
        + (f", queries `{config.query_prompt}`" if config.query_prompt else ""),
        f"**Collections:** `{demo.store.on.name}` (TP on) and `{demo.store.off.name}` (TP off)",
    ]


METHOD_CHOICES = [("TP: sentences and short texts", "tp"), ("HTP: passages", "htp")]
METHOD_HELP = (
    "**TP** puts one placeholder before the whole text: made for sentences and short texts. "
    "**HTP** (hierarchical TP) puts one before each sentence and averages the text's tokens: "
    "made for passages of several sentences. Each method has its own collections; switching "
    "loads no second copy of the weights. Which is better on your data: "
    "`tp-rag eval retrieval --method tp,htp`."
)


def settings_panel(demo: Demo) -> tuple[Any, Any]:
    """The "Model and settings" panel: the method choice and the settings of
    ``settings_lines``; returns the choice and the settings text (``build_app`` wires them)."""
    with gr.Accordion("Model and settings", open=False, elem_id="settings"):
        method = gr.Radio(
            METHOD_CHOICES, value=demo.encoder.config.method, label="Method", elem_id="method"
        )
        gr.Markdown(METHOD_HELP)
        settings = gr.Markdown("\n\n".join(settings_lines(demo)), elem_id="settings-lines")
    return method, settings


def ingest_tab(demo: Demo) -> Any:
    """Tab 1: upload files or load the sample corpus; returns the status output."""
    with gr.Tab("1. Ingest", id="ingest"):
        gr.Markdown(
            f"Upload {', '.join(SUFFIXES)} files, or load the bundled sample corpus. "
            "Each file is split into chunks and every chunk is embedded twice, with TP on "
            "and off; on a CPU this takes a while, and the bar shows the chunks done and "
            "the time left. Files already ingested unchanged are skipped."
        )
        upload = gr.File(
            label=f"Documents ({', '.join(SUFFIXES)})",
            file_count="multiple",
            file_types=list(SUFFIXES),
            elem_id="upload",
        )
        with gr.Row():
            ingest_button = gr.Button("Ingest files", variant="primary", elem_id="ingest")
            sample_button = gr.Button("Load the sample corpus", elem_id="load-sample")
        status = gr.Markdown(elem_id="ingest-status")

    @_shown_in_page(0, 1)
    def on_ingest(files: list[str] | None, progress: gr.Progress = gr.Progress()) -> str:  # noqa: B008
        try:
            return demo.ingest_files(files, progress)
        finally:
            _remove_uploads(files)

    @_shown_in_page(0, 1)
    def on_sample(progress: gr.Progress = gr.Progress()) -> str:  # noqa: B008
        return demo.ingest_sample(progress)

    # The uploads are deleted once ingested: the list is cleared, so a second press (or new
    # uploads) never refers to them.
    _press(ingest_button, on_ingest, [upload], [status], api_name="ingest").then(
        lambda: None, None, [upload], api_visibility="private"
    )
    _press(sample_button, on_sample, None, [status], api_name="ingest_sample")
    return status


def compare_tab(demo: Demo) -> None:
    """Tab 2: one query, the results with TP on and off side by side."""
    with gr.Tab("2. Compare", id="compare"):
        with gr.Row():
            query = gr.Textbox(
                label="Query",
                placeholder="Ask something about your documents",
                scale=4,
                elem_id="query",
            )
            k = gr.Slider(1, 20, value=5, step=1, label="Results per side", scale=1, min_width=220)
        search_button = gr.Button("Search", variant="primary", elem_id="search")
        examples = demo.sample_queries()
        if examples:
            gr.Examples(
                [[q] for q in examples[:6]],
                inputs=[query],
                label="Sample queries (for the sample corpus)",
            )
        status = gr.Markdown(elem_id="compare-status")
        gr.Markdown(
            "**similarity**: cosine similarity of the query's vector and the chunk's "
            "(closer to 1 = closer in meaning; compare the order, not the values, across "
            "sides). **vs other**: ▲n ranks n places higher than on the other side, ▼n "
            "lower, = the same; *only TP on* / *only TP off*: not in the other side's "
            "list.",
            elem_id="compare-help",
        )
        with gr.Row():
            tables = []
            for side, elem_id in (("TP on", "tp-on"), ("TP off", "tp-off")):
                with gr.Column(min_width=600):  # side by side when wide, else stacked
                    gr.Markdown(f"### {side}")
                    tables.append(
                        gr.Dataframe(
                            headers=_COLUMNS,
                            interactive=False,
                            wrap=True,
                            column_widths=_WIDTHS,
                            max_height=1200,
                            elem_id=elem_id,
                        )
                    )

    @_shown_in_page(2, 3)
    def on_compare(query: str, k: float) -> tuple[pd.DataFrame, pd.DataFrame, str]:
        return demo.compare(query, int(k))

    outputs = [*tables, status]
    _press(search_button, on_compare, [query, k], outputs, api_name="compare")
    query.submit(on_compare, [query, k], outputs, api_visibility="private")


def evaluate_tab(demo: Demo) -> None:
    """Tab 3: TP on and off scored on labelled queries (the sample set or an upload)."""
    with gr.Tab("3. Evaluate", id="evaluate"):
        gr.Markdown(METRICS_HELP, elem_id="metrics-help")
        choice = gr.Radio(
            [SAMPLE_CHOICE, UPLOAD_CHOICE], value=SAMPLE_CHOICE, label="Labelled queries"
        )
        beir_files = gr.File(
            label="BEIR dataset: corpus.jsonl, queries.jsonl and qrels/test.tsv, or a zip",
            file_count="multiple",
            file_types=[".zip", ".jsonl", ".tsv"],
        )
        evaluate_button = gr.Button("Evaluate", variant="primary", elem_id="evaluate")
        status = gr.Markdown(elem_id="evaluate-status")
        with gr.Row():
            table = gr.Dataframe(
                headers=_SCORE_COLUMNS,
                interactive=False,
                label="Scores",
                elem_id="scores",
                min_width=360,
            )
            chart = gr.BarPlot(
                x="bar",
                y="score",
                color="setting",
                x_title="metric, TP on / off",
                y_title="score (higher is better)",
                color_title="Token Prepending",
                color_map={"TP on": "#ea580c", "TP off": "#64748b"},
                y_lim=[0, 1],
                sort=[
                    f"{metric}, {side}"
                    for metric in ("nDCG@10", f"Recall@{RECALL_AT}", "MRR@10")
                    for side in ("TP on", "TP off")
                ],
                x_label_angle=-30,
                label="TP on vs TP off",
                min_width=360,
                elem_id="chart",
            )

    @_shown_in_page(2, 3)
    def on_evaluate(
        choice: str,
        files: list[str] | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[pd.DataFrame, pd.DataFrame, str]:
        try:
            return demo.evaluate(choice, files, progress)
        finally:
            _remove_uploads(files)

    _press(
        evaluate_button,
        on_evaluate,
        [choice, beir_files],
        [table, chart, status],
        api_name="evaluate",
    )


def build_app(demo: Demo) -> gr.Blocks:
    """The ``gr.Blocks`` app: the settings panel, then tabs Ingest, Compare and Evaluate over
    ``demo``'s handlers.

    API names (for ``gradio_client``): ``/ingest``, ``/ingest_sample``, ``/compare``,
    ``/evaluate``, ``/status``, ``/method``. Bad input (an empty query, no upload) does not
    raise: the status output (the last one) says what is wrong, and the other outputs are left
    as they were.
    """
    # Uploads are deleted once processed; delete_cache also clears, every hour, any left
    # over for an hour (uploaded but never processed).
    with gr.Blocks(
        title="tp-rag: retrieval with Token Prepending on and off",
        delete_cache=(3600, 3600),
    ) as app:
        gr.Markdown(INTRO, elem_id="intro")
        method, settings = settings_panel(demo)
        with gr.Tabs() as tabs:
            ingest_status = ingest_tab(demo)
            compare_tab(demo)
            evaluate_tab(demo)

        @_shown_in_page(1, 2)
        def on_method(choice: str) -> tuple[str, str]:
            status = demo.set_method(choice)
            return "\n\n".join(settings_lines(demo)), status

        method.change(on_method, [method], [settings, ingest_status], api_name="method")
        # A warning about one tab's input does not follow the user to another tab.
        tabs.select(None, None, None, js=CLEAR_TOASTS, api_visibility="private")
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
        css=CSS,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tp_rag.demo.app [options]`` is ``tp-rag demo [options]``."""
    from tp_rag.cli import main as cli_main

    return cli_main(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
