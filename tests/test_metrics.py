"""Metrics against scikit-learn's definitions on random and edge-case labels."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics as skm
from hypothesis import given, settings
from hypothesis import strategies as st

from fusednn.nn import metrics

label_pairs = st.integers(1, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 4), min_size=n, max_size=n),
        st.lists(st.integers(0, 4), min_size=n, max_size=n),
    )
)


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")  # sklearn's note, not ours
@settings(max_examples=40, deadline=None)
@given(label_pairs)
def test_classification_metrics_match_sklearn(pair: tuple[list[int], list[int]]) -> None:
    y_true, y_pred = np.array(pair[0]), np.array(pair[1])
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(skm.accuracy_score(y_true, y_pred))
    np.testing.assert_array_equal(metrics.confusion_matrix(y_true, y_pred), skm.confusion_matrix(y_true, y_pred))
    for ours, theirs in (
        (metrics.precision, skm.precision_score),
        (metrics.recall, skm.recall_score),
        (metrics.f1, skm.f1_score),
    ):
        for average in ("macro", "micro", "weighted"):
            expected = theirs(y_true, y_pred, average=average, zero_division=0.0)
            assert ours(y_true, y_pred, average=average) == pytest.approx(expected), (ours.__name__, average)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=30))
def test_binary_average_matches_sklearn(pairs: list[tuple[int, int]]) -> None:
    y_true, y_pred = np.array(pairs).T
    for ours, theirs in (
        (metrics.precision, skm.precision_score),
        (metrics.recall, skm.recall_score),
        (metrics.f1, skm.f1_score),
    ):
        assert ours(y_true, y_pred) == pytest.approx(theirs(y_true, y_pred, zero_division=0.0))
        assert ours(y_true, y_pred, pos_label=0) == pytest.approx(theirs(y_true, y_pred, pos_label=0, zero_division=0))


def test_explicit_labels_match_sklearn() -> None:
    y_true = np.array([0, 1, 2, 2, 3, 1])
    y_pred = np.array([0, 2, 2, 1, 3, 3])
    labels = [3, 1, 2]
    np.testing.assert_array_equal(
        metrics.confusion_matrix(y_true, y_pred, labels=labels), skm.confusion_matrix(y_true, y_pred, labels=labels)
    )
    for average in ("macro", "micro", "weighted"):
        assert metrics.f1(y_true, y_pred, average=average, labels=labels) == pytest.approx(
            skm.f1_score(y_true, y_pred, average=average, labels=labels)
        )


def test_string_labels() -> None:
    y_true = np.array(["cat", "dog", "dog", "eel"])
    y_pred = np.array(["cat", "cat", "dog", "eel"])
    np.testing.assert_array_equal(metrics.confusion_matrix(y_true, y_pred), skm.confusion_matrix(y_true, y_pred))
    assert metrics.recall(y_true, y_pred, average="macro") == pytest.approx(
        skm.recall_score(y_true, y_pred, average="macro")
    )


def test_regression_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    assert metrics.mae(y_true, y_pred) == pytest.approx(skm.mean_absolute_error(y_true, y_pred))
    assert metrics.mse(y_true, y_pred) == pytest.approx(skm.mean_squared_error(y_true, y_pred))
    # A (N,) target meets an (N, 1) prediction, as a one-output regression model emits.
    assert metrics.mse(y_true[:, 0], y_pred[:, :1]) == pytest.approx(skm.mean_squared_error(y_true[:, 0], y_pred[:, 0]))


def test_classification_report_numbers_match_sklearn() -> None:
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
    report = metrics.classification_report(y_true, y_pred, target_names=["a", "b", "c"], digits=4)
    expected = skm.classification_report(y_true, y_pred, output_dict=True, target_names=["a", "b", "c"])
    rows = {line[:12].strip(): line[12:].split() for line in report.splitlines() if line.strip()}
    for name in ("a", "b", "c", "macro avg", "weighted avg"):
        got = [float(v) for v in rows[name]]
        want = [expected[name][key] for key in ("precision", "recall", "f1-score", "support")]
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert float(rows["accuracy"][0]) == pytest.approx(expected["accuracy"], abs=1e-4)


def test_scores_to_labels() -> None:
    np.testing.assert_array_equal(metrics.scores_to_labels(np.array([[0.1, 2.0, 0.3], [3.0, -1.0, 0.0]])), [1, 0])
    np.testing.assert_array_equal(metrics.scores_to_labels(np.array([[-0.5], [0.5]])), [0, 1])
    np.testing.assert_array_equal(metrics.scores_to_labels(np.array([0.4, 0.6]), threshold=0.5), [0, 1])
    np.testing.assert_array_equal(metrics.scores_to_labels(np.array([2, 0, 1])), [2, 0, 1])


def test_get_metric() -> None:
    f1_weighted = metrics.get_metric("f1_weighted")
    assert f1_weighted.on_labels
    y_true, y_pred = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 2])
    assert f1_weighted.fn(y_true, y_pred) == pytest.approx(skm.f1_score(y_true, y_pred, average="weighted"))
    assert metrics.get_metric("f1").fn(y_true, y_pred) == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert not metrics.get_metric("mae").on_labels


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: metrics.accuracy([0, 1], [0]), "differ in length"),
        (lambda: metrics.accuracy([], []), "empty"),
        (lambda: metrics.accuracy([[0, 1]], [[0, 1]]), "1-D vector"),
        (lambda: metrics.f1([0, 1, 2], [0, 1, 1]), "average='binary' needs two classes"),
        (lambda: metrics.f1([0, 2], [0, 2]), "pos_label=1 is not a label"),
        (lambda: metrics.f1([0, 1], [0, 1], average="mean"), "Unknown average 'mean'"),
        (lambda: metrics.confusion_matrix([0, 1], [0, 1], labels=[]), "non-empty"),
        (lambda: metrics.confusion_matrix([0, 1], [0, 1], labels=[1, 1]), "must not repeat"),
        (lambda: metrics.mse(np.zeros((3, 2)), np.zeros((3, 3))), "differ in shape"),
        (lambda: metrics.classification_report([0, 1], [0, 1], target_names=["a"]), "1 names for 2 labels"),
        (lambda: metrics.scores_to_labels(np.zeros((2, 2, 2))), "Expected scores"),
        (lambda: metrics.get_metric("auc"), "Unknown metric 'auc'"),
    ],
)
def test_bad_input_raises(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
