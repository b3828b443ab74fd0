"""SentEval's transfer-task protocol with scikit-learn: a logistic regression on frozen vectors.

The vectors are features as given (no scaling); the classifier is scikit-learn's
``LogisticRegression`` (L2 penalty, lbfgs) with its inverse regularisation ``C`` chosen from
``C_GRID`` by accuracy:

- ``all.tsv`` (``cv``): outer ``OUTER_FOLDS``-fold stratified shuffled cross-validation; in each
  outer training part, ``C`` is chosen by an inner ``INNER_FOLDS``-fold stratified shuffled
  cross-validation, the classifier refitted on the whole part with it and scored on the
  held-out fold; the figure is the mean over the outer folds (SentEval's ``KFoldClassifier``,
  as scikit-learn's nested ``cross_validate(GridSearchCV(...))``).
- ``train``/``dev``/``test`` (``dev``): each ``C`` is fitted on train and scored on dev; the best
  is refitted on train alone and scored on test (SentEval's ``SplitClassifier``).
- ``train``/``test`` (``train-cv``): ``C`` chosen by the inner cross-validation on train, the
  classifier refitted on train and scored on test.

Every split and every classifier uses the seed ``SEED`` (SentEval's 1111). Accuracy is in
percent.

>>> result = classify(read_classification("transfer/cr"), vectors, index)  # doctest: +SKIP
>>> round(result["accuracy"], 2), result["C"]  # all-MiniLM-L6-v2's vectors  # doctest: +SKIP
(82.75, [2.0, 2.0, 4.0, 4.0, 4.0, 8.0, 2.0, 4.0, 4.0, 4.0])
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tp_rag.datasets import ClassificationTask, LabelledTexts

C_GRID: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""The inverse L2 regularisation strengths tried (SentEval's ``2**t`` for ``t`` in -2..3)."""
OUTER_FOLDS = 10
INNER_FOLDS = 5
SEED = 1111
MAX_ITER = 1000
"""lbfgs iterations per fit; a fit that needs more is counted in ``unconverged_fits``."""

PROTOCOLS: dict[str, str] = {
    "cv": f"{OUTER_FOLDS}-fold cross-validation, C by inner {INNER_FOLDS}-fold cross-validation",
    "dev": "C chosen on dev, accuracy on test",
    "train-cv": f"C by {INNER_FOLDS}-fold cross-validation on train, accuracy on test",
}
"""What each layout's figure means (for reports and tables)."""


def protocol_settings() -> dict[str, Any]:
    """The protocol's constants, for a JSON report."""
    return {
        "classifier": "sklearn LogisticRegression (L2, lbfgs)",
        "C_grid": list(C_GRID),
        "outer_folds": OUTER_FOLDS,
        "inner_folds": INNER_FOLDS,
        "seed": SEED,
        "max_iter": MAX_ITER,
        "layouts": dict(PROTOCOLS),
    }


def fold_count(task: ClassificationTask) -> int:
    """Model selections ``classify`` runs on ``task`` (the unit of its ``on_fold`` calls)."""
    return OUTER_FOLDS if task.protocol == "cv" else 1


def classify(
    task: ClassificationTask,
    vectors: np.ndarray,
    index: dict[str, int],
    *,
    on_fold: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Accuracy of the protocol on ``task``; ``vectors[index[text]]`` embeds ``text``.

    Returns ``accuracy`` (test, %), ``dev_accuracy`` (the mean best inner or dev accuracy, %),
    ``C`` (the chosen value per outer fold, or one value) and ``unconverged_fits``.
    ``on_fold()`` is called after each of the ``fold_count(task)`` model selections.
    """
    from sklearn.exceptions import ConvergenceWarning

    def features(split: LabelledTexts) -> tuple[np.ndarray, np.ndarray]:
        return vectors[[index[text] for text in split.texts]], np.asarray(split.labels)  # (n, d)

    done = on_fold or (lambda: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if task.protocol == "cv":
            result = _nested_cv(*features(task.splits["all"]), done)
        elif task.protocol == "dev":
            result = _dev_selected(
                features(task.splits["train"]),
                features(task.splits["dev"]),
                features(task.splits["test"]),
            )
            done()
        else:
            result = _train_cv(features(task.splits["train"]), features(task.splits["test"]))
            done()
    for warning in caught:  # anything but the convergence notes goes on as usual
        if not issubclass(warning.category, ConvergenceWarning):
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    result["unconverged_fits"] = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return result


def _classifier(c: float = 1.0) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=MAX_ITER, random_state=SEED)


def _inner_search() -> Any:
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    return GridSearchCV(
        _classifier(),
        {"C": list(C_GRID)},
        cv=StratifiedKFold(INNER_FOLDS, shuffle=True, random_state=SEED),
        scoring="accuracy",
        error_score="raise",  # a failed fit stops the run rather than scoring NaN
    )


def _nested_cv(x: np.ndarray, y: np.ndarray, done: Callable[[], None]) -> dict[str, Any]:
    from sklearn.model_selection import StratifiedKFold, cross_validate

    def accuracy(estimator: Any, x_test: np.ndarray, y_test: np.ndarray) -> float:
        score = float(estimator.score(x_test, y_test))
        done()  # scikit-learn scores each outer fold right after fitting it
        return score

    outcome = cross_validate(
        _inner_search(),
        x,
        y,
        cv=StratifiedKFold(OUTER_FOLDS, shuffle=True, random_state=SEED),
        scoring=accuracy,
        return_estimator=True,
        error_score="raise",
    )
    searches = outcome["estimator"]
    return {
        "accuracy": float(np.mean(outcome["test_score"]) * 100),
        "dev_accuracy": float(np.mean([s.best_score_ for s in searches]) * 100),
        "C": [float(s.best_params_["C"]) for s in searches],
    }


def _dev_selected(
    train: tuple[np.ndarray, np.ndarray],
    dev: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
) -> dict[str, Any]:
    from sklearn.model_selection import GridSearchCV, PredefinedSplit

    # One "fold": fit on the train rows (-1), score on the dev rows (0).
    which = np.concatenate([np.full(len(train[1]), -1), np.zeros(len(dev[1]), dtype=int)])
    search = GridSearchCV(
        _classifier(),
        {"C": list(C_GRID)},
        cv=PredefinedSplit(which),
        refit=False,
        error_score="raise",
    )
    search.fit(np.concatenate([train[0], dev[0]]), np.concatenate([train[1], dev[1]]))
    best = float(search.best_params_["C"])
    final = _classifier(best).fit(*train)  # SentEval refits on train alone, not train + dev
    return {
        "accuracy": float(final.score(*test) * 100),
        "dev_accuracy": float(search.best_score_ * 100),
        "C": best,
    }


def _train_cv(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> dict[str, Any]:
    search = _inner_search().fit(*train)
    return {
        "accuracy": float(search.score(*test) * 100),
        "dev_accuracy": float(search.best_score_ * 100),
        "C": float(search.best_params_["C"]),
    }
