"""Evaluation metrics on host NumPy arrays, with scikit-learn's definitions.

Every function takes ``(y_true, y_pred)`` as NumPy arrays (or anything
:func:`numpy.asarray` accepts) and returns a Python float, except
:func:`confusion_matrix` (an int64 matrix) and :func:`classification_report`
(a text table). Classification metrics take class labels; turn a model's
output scores into labels with :func:`scores_to_labels`.

``fit`` and ``evaluate`` accept metrics by name (:data:`METRIC_NAMES`):
``"precision"``, ``"recall"`` and ``"f1"`` there mean the macro average, and
``"f1_micro"``, ``"f1_weighted"``... name the other averages explicitly.
``"mae"`` and ``"mse"`` compare the targets with what the loss models
(probabilities for the cross-entropies); integer class labels are compared as
one-hot rows (:func:`fusednn.nn.data.one_hot`), so ``"mse"`` with categorical
cross-entropy is the Brier score divided by the number of classes.

>>> import numpy as np
>>> from fusednn.nn import metrics
>>> metrics.accuracy([0, 1, 2, 2], [0, 2, 2, 2])
0.75
>>> metrics.f1([0, 1, 1, 0], [0, 1, 0, 0])  # binary: positive class 1
0.6666666666666666
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .data.preprocessing import one_hot

MetricFn = Callable[[np.ndarray, np.ndarray], float]
"""What a metric is: ``(y_true, y_pred) -> float``."""

AVERAGES: tuple[str, ...] = ("binary", "macro", "micro", "weighted")
"""Valid ``average=`` values of :func:`precision`, :func:`recall` and :func:`f1`."""


def _labels_pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check that two label vectors are 1-D, non-empty and of one length."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.ndim != 1:
            raise ValueError(
                f"{name} must be a 1-D vector of class labels, got shape {y.shape}; "
                "turn scores or one-hot rows into labels with scores_to_labels()"
            )
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.shape[0]} vs {y_pred.shape[0]}")
    if y_true.size == 0:
        raise ValueError("y_true and y_pred are empty; metrics need at least one sample")
    return y_true, y_pred


def _values_pair(y_true: Any, y_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check two regression targets: same shape (a vector may meet an ``(N, 1)`` column), non-empty."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.ndim == 1 and y_pred.ndim == 2 and y_pred.shape[1] == 1:
        y_pred = y_pred[:, 0]
    elif y_pred.ndim == 1 and y_true.ndim == 2 and y_true.shape[1] == 1:
        y_true = y_true[:, 0]
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {y_true.shape} vs {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("y_true and y_pred are empty; metrics need at least one sample")
    return y_true, y_pred


def scores_to_labels(scores: Any, threshold: float = 0.0) -> np.ndarray:
    """Turn model outputs into class labels.

    * ``(N, C)`` with ``C > 1`` (logits, probabilities or one-hot rows): the
      arg-max of each row.
    * ``(N,)`` integer labels: returned unchanged.
    * ``(N,)`` or ``(N, 1)`` float scores: ``1`` where ``score > threshold``
      (``0.0`` suits logits; pass ``0.5`` for probabilities).

    >>> scores_to_labels(np.array([[0.1, 2.0], [3.0, -1.0]]))
    array([1, 0])
    """
    scores = np.asarray(scores)
    if scores.ndim == 2 and scores.shape[1] > 1:
        return scores.argmax(axis=1)
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.ndim != 1:
        raise ValueError(f"Expected scores of shape (N,), (N, 1) or (N, C), got {scores.shape}")
    if scores.dtype.kind in "iub":
        return scores.astype(np.int64)
    return (scores > threshold).astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, labels: Sequence[Any] | np.ndarray | None = None) -> np.ndarray:
    """Counts ``C[i, j]`` of samples of true class ``labels[i]`` predicted as ``labels[j]``.

    As ``sklearn.metrics.confusion_matrix``: ``labels`` defaults to the sorted
    union of the labels in ``y_true`` and ``y_pred``; samples whose labels are
    not in ``labels`` are left out.

    Shapes: ``y_true, y_pred (N,)`` → ``(L, L)`` int64 with ``L = len(labels)``.

    >>> confusion_matrix([0, 1, 1], [0, 1, 0])
    array([[1, 0],
           [1, 1]])
    """
    y_true, y_pred = _labels_pair(y_true, y_pred)
    label_array = _label_set(y_true, y_pred, labels)
    n = len(label_array)
    true_index = _positions(label_array, y_true)
    pred_index = _positions(label_array, y_pred)
    keep = (true_index >= 0) & (pred_index >= 0)
    counts = np.bincount(true_index[keep] * n + pred_index[keep], minlength=n * n)
    return counts.reshape(n, n).astype(np.int64)


def _label_set(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[Any] | np.ndarray | None) -> np.ndarray:
    if labels is None:
        return np.union1d(y_true, y_pred)
    label_array = np.asarray(labels)
    if label_array.ndim != 1 or label_array.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got {labels!r}")
    if len(np.unique(label_array)) != label_array.size:
        raise ValueError(f"labels must not repeat, got {labels!r}")
    return label_array


def _positions(label_array: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Index of each ``y`` in ``label_array``, ``-1`` where absent."""
    order = np.argsort(label_array, kind="stable")
    sorted_labels = label_array[order]
    where = np.clip(np.searchsorted(sorted_labels, y), 0, len(sorted_labels) - 1)
    return np.where(sorted_labels[where] == y, order[where], -1)


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of samples whose predicted label equals the true label (``accuracy_score``)."""
    y_true, y_pred = _labels_pair(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


@dataclass(frozen=True)
class _Counts:
    """Per-class true positives, predicted counts and true counts (support)."""

    tp: np.ndarray
    predicted: np.ndarray
    support: np.ndarray


def _counts(
    y_true: Any, y_pred: Any, average: str, pos_label: Any, labels: Sequence[Any] | np.ndarray | None
) -> _Counts:
    """Per-label counts over all samples (scikit-learn's ``multilabel_confusion_matrix`` marginals)."""
    if average not in AVERAGES:
        raise ValueError(f"Unknown average {average!r}; expected one of {', '.join(AVERAGES)}")
    y_true, y_pred = _labels_pair(y_true, y_pred)
    if average == "binary":
        present = np.union1d(y_true, y_pred)
        if len(present) > 2:
            raise ValueError(
                f"average='binary' needs two classes but the labels hold {len(present)}; "
                "choose average='macro', 'micro' or 'weighted'"
            )
        if len(present) == 2 and pos_label not in present:
            raise ValueError(f"pos_label={pos_label!r} is not a label; the labels are {present.tolist()}")
        labels = [pos_label]
    label_array = _label_set(y_true, y_pred, labels)
    n = len(label_array)
    true_index = _positions(label_array, y_true)
    pred_index = _positions(label_array, y_pred)
    hit = (true_index >= 0) & (y_true == y_pred)
    return _Counts(
        tp=np.bincount(true_index[hit], minlength=n),
        predicted=np.bincount(pred_index[pred_index >= 0], minlength=n),
        support=np.bincount(true_index[true_index >= 0], minlength=n),
    )


def _ratio(numerator: np.ndarray, denominator: np.ndarray, zero_division: float) -> np.ndarray:
    numerator = numerator.astype(np.float64)
    denominator = denominator.astype(np.float64)
    out = np.full(numerator.shape, float(zero_division))
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _average(per_class: np.ndarray, counts: _Counts, average: str) -> float:
    if average == "weighted":
        total = counts.support.sum()
        return float(np.dot(per_class, counts.support) / total) if total else 0.0
    return float(per_class.mean())


def _score(
    kind: str, y_true: Any, y_pred: Any, average: str, pos_label: Any, labels: Any, zero_division: float
) -> float:
    counts = _counts(y_true, y_pred, average, pos_label, labels)
    tp, predicted, support = counts.tp, counts.predicted, counts.support
    if average == "micro":
        tp, predicted, support = tp.sum(keepdims=True), predicted.sum(keepdims=True), support.sum(keepdims=True)
    if kind == "precision":
        per_class = _ratio(tp, predicted, zero_division)
    elif kind == "recall":
        per_class = _ratio(tp, support, zero_division)
    else:
        per_class = _ratio(2 * tp, predicted + support, zero_division)
    return _average(per_class, counts, average)


def precision(
    y_true: Any,
    y_pred: Any,
    average: str = "binary",
    pos_label: Any = 1,
    labels: Sequence[Any] | np.ndarray | None = None,
    zero_division: float = 0.0,
) -> float:
    """Precision ``tp / (tp + fp)``, as ``sklearn.metrics.precision_score``.

    ``average``: ``"binary"`` (class ``pos_label`` only; needs two classes),
    ``"macro"`` (unweighted mean over classes), ``"micro"`` (global counts) or
    ``"weighted"`` (mean weighted by each class's support). A class never
    predicted scores ``zero_division``.
    """
    return _score("precision", y_true, y_pred, average, pos_label, labels, zero_division)


def recall(
    y_true: Any,
    y_pred: Any,
    average: str = "binary",
    pos_label: Any = 1,
    labels: Sequence[Any] | np.ndarray | None = None,
    zero_division: float = 0.0,
) -> float:
    """Recall ``tp / (tp + fn)``, as ``sklearn.metrics.recall_score``; ``average`` as in :func:`precision`."""
    return _score("recall", y_true, y_pred, average, pos_label, labels, zero_division)


def f1(
    y_true: Any,
    y_pred: Any,
    average: str = "binary",
    pos_label: Any = 1,
    labels: Sequence[Any] | np.ndarray | None = None,
    zero_division: float = 0.0,
) -> float:
    """F1 ``2 tp / (2 tp + fp + fn)``, as ``sklearn.metrics.f1_score``.

    With ``average="macro"``/``"weighted"`` the per-class F1 scores are averaged
    (not the harmonic mean of averaged precision and recall), as scikit-learn does.
    """
    return _score("f1", y_true, y_pred, average, pos_label, labels, zero_division)


def with_one_hot_labels(fn: MetricFn) -> MetricFn:
    """``fn(y_true, y_pred)`` with class labels ``y_true (N,)`` turned into one-hot rows as wide as ``y_pred``.

    Other targets (one-hot or probability rows) reach ``fn`` unchanged. This is how ``fit``
    compares a categorical model's probabilities with its labels for ``"mae"``/``"mse"``.

    >>> with_one_hot_labels(mse)(np.array([1]), np.array([[0.5, 0.5]]))
    0.25
    """

    def metric(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
        if y_true.ndim == 1 and y_pred.ndim == 2 and y_pred.shape[1] > 1:
            y_true = one_hot(y_true, y_pred.shape[1], dtype=np.float64)
        return fn(y_true, y_pred)

    return metric


def mae(y_true: Any, y_pred: Any) -> float:
    """Mean absolute error ``mean |y_true - y_pred|`` over all elements (``mean_absolute_error``)."""
    y_true, y_pred = _values_pair(y_true, y_pred)
    return float(np.mean(np.abs(y_true - y_pred)))


def mse(y_true: Any, y_pred: Any) -> float:
    """Mean squared error ``mean (y_true - y_pred)^2`` over all elements (``mean_squared_error``)."""
    y_true, y_pred = _values_pair(y_true, y_pred)
    return float(np.mean((y_true - y_pred) ** 2))


def classification_report(
    y_true: Any,
    y_pred: Any,
    labels: Sequence[Any] | np.ndarray | None = None,
    target_names: Sequence[str] | None = None,
    digits: int = 3,
) -> str:
    """A text table of per-class precision, recall, F1 and support, then accuracy and the averages.

    Laid out like ``sklearn.metrics.classification_report``.

    >>> print(classification_report([0, 1, 1], [0, 1, 0], digits=2))  # doctest: +NORMALIZE_WHITESPACE
                  precision    recall  f1-score   support
    <BLANKLINE>
               0       0.50      1.00      0.67         1
               1       1.00      0.50      0.67         2
    <BLANKLINE>
        accuracy                           0.67         3
       macro avg       0.75      0.75      0.67         3
    weighted avg       0.83      0.67      0.67         3
    """
    y_true, y_pred = _labels_pair(y_true, y_pred)
    label_array = _label_set(y_true, y_pred, labels)
    names = [str(label) for label in label_array] if target_names is None else list(target_names)
    if len(names) != len(label_array):
        raise ValueError(f"target_names has {len(names)} names for {len(label_array)} labels")
    counts = _counts(y_true, y_pred, "macro", 1, label_array)
    per_class = {
        "precision": _ratio(counts.tp, counts.predicted, 0.0),
        "recall": _ratio(counts.tp, counts.support, 0.0),
        "f1": _ratio(2 * counts.tp, counts.predicted + counts.support, 0.0),
    }
    width = max(len("weighted avg"), *(len(name) for name in names))
    header = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"

    def row(name: str, values: Sequence[float], support: int) -> str:
        cells = " ".join(f"{value:>9.{digits}f}" for value in values)
        return f"{name:>{width}} {cells} {support:>9d}"

    total = int(counts.support.sum())
    lines = [header, ""]
    for i, name in enumerate(names):
        values = [per_class[key][i] for key in ("precision", "recall", "f1")]
        lines.append(row(name, values, int(counts.support[i])))
    lines.append("")
    lines.append(f"{'accuracy':>{width}} {'':>9} {'':>9} {accuracy(y_true, y_pred):>9.{digits}f} {total:>9d}")
    for average in ("macro", "weighted"):
        values = [_average(per_class[key], counts, average) for key in ("precision", "recall", "f1")]
        lines.append(row(f"{average} avg", values, total))
    return "\n".join(lines)


@dataclass(frozen=True)
class Metric:
    """A metric usable by name in ``fit``: the function and whether it compares class labels."""

    name: str
    fn: MetricFn
    on_labels: bool


def _averaged(fn: Callable[..., float], average: str) -> MetricFn:
    def metric(y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return fn(y_true, y_pred, average=average)

    return metric


def _registry() -> dict[str, Metric]:
    table = {"accuracy": Metric("accuracy", accuracy, True)}
    for base, fn in (("precision", precision), ("recall", recall), ("f1", f1)):
        table[base] = Metric(base, _averaged(fn, "macro"), True)
        for average in ("macro", "micro", "weighted"):
            name = f"{base}_{average}"
            table[name] = Metric(name, _averaged(fn, average), True)
    table["mae"] = Metric("mae", mae, False)
    table["mse"] = Metric("mse", mse, False)
    return table


_METRICS = _registry()
METRIC_NAMES: tuple[str, ...] = tuple(_METRICS)
"""Names accepted by :func:`get_metric` (and by ``fit(metrics=[...])``)."""
VALUE_METRIC_NAMES: tuple[str, ...] = tuple(name for name, metric in _METRICS.items() if not metric.on_labels)
"""The metrics that compare values rather than class labels, so they fit every loss."""


def get_metric(name: str) -> Metric:
    """Look up a metric by name (:data:`METRIC_NAMES`).

    Raises:
        ValueError: the name is unknown; the message lists the valid names.
    """
    try:
        return _METRICS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown metric {name!r}; expected one of {', '.join(METRIC_NAMES)}") from None
