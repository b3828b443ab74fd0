"""Metrics shared by evaluation, tuning and the demo: STS Spearman and retrieval figures.

- STS: Spearman correlation x100 between the cosine similarity of each pair and its gold score.
- Retrieval: exact cosine search (``rank_documents``), scored by ``pytrec_eval`` (trec_eval):
  nDCG@10 (``ndcg_cut.10``), Recall@k (``recall.k``) and MRR@10 (``recip_rank`` over each
  query's top 10), averaged over the judged queries.

>>> retrieval_metrics({"q": {"d2": 0.9, "d1": 0.8}}, {"q": {"d1": 1}}, recall_at=10)["MRR@10"]
0.5
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from tp_rag.vectors import unit_rows

if TYPE_CHECKING:
    from tp_rag.datasets import RetrievalSet, StsPairs

RETRIEVAL_METRICS: tuple[str, ...] = ("nDCG@10", "Recall@100", "MRR@10")
"""The retrieval figures of ``tp-rag eval retrieval``, in table order."""

RETRIEVAL_DEPTH = 100  # documents kept per query: enough for Recall@100 (more for a deeper cutoff)


def text_index(texts: Iterable[str]) -> tuple[list[str], dict[str, int]]:
    """Unique texts in first-seen order and each text's row among them."""
    index: dict[str, int] = {}
    for text in texts:
        index.setdefault(text, len(index))
    return list(index), index


def sts_spearman(pairs: StsPairs, vectors: np.ndarray, index: dict[str, int]) -> float:
    """Spearman x100 of pair cosines against gold; ``vectors[index[text]]`` embeds ``text``."""
    from scipy.stats import spearmanr

    first = unit_rows(vectors[[index[s] for s in pairs.sentences1]])  # (n, d)
    second = unit_rows(vectors[[index[s] for s in pairs.sentences2]])  # (n, d)
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
