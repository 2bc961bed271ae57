"""Feature scaling, one-hot encoding and a seeded train/validation split, on host NumPy arrays.

The scalers follow scikit-learn's ``fit`` / ``transform`` protocol and its
definitions; their fitted statistics round-trip through :meth:`state_dict` so a
checkpoint can carry the preprocessing a model was trained with.

>>> import numpy as np
>>> from fusednn.nn.data import StandardScaler
>>> x = np.array([[0.0, 10.0], [2.0, 30.0]])
>>> StandardScaler().fit(x).transform(x)
array([[-1., -1.],
       [ 1.,  1.]])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...backends.base import check_label_range
from ..validation import check_seed


def _as_matrix(x: Any, name: str = "x") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (samples, features), got shape {x.shape}")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {x.dtype.name!r}")
    return x


class _Scaler:
    """Shared protocol: an affine map ``x * scale + offset`` per feature, fitted on training data."""

    _fields: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.scale_: np.ndarray | None = None
        self.offset_: np.ndarray | None = None

    def _fit_statistics(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def fit(self, x: Any) -> _Scaler:
        """Learn the per-feature statistics of ``x (N, F)``; returns ``self``."""
        self._fit_statistics(_as_matrix(x).astype(np.float64))
        return self

    def _require_fitted(self) -> tuple[np.ndarray, np.ndarray]:
        """The fitted ``(scale_, offset_)``."""
        if self.scale_ is None or self.offset_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(x) first")
        return self.scale_, self.offset_

    def _check_fitted(self, x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``x`` as a matrix with the fitted number of features, and the fitted ``(scale_, offset_)``."""
        scale, offset = self._require_fitted()
        x = _as_matrix(x)
        if x.shape[1] != scale.shape[0]:
            raise ValueError(f"{type(self).__name__} was fitted on {scale.shape[0]} features; x has {x.shape[1]}")
        return x, scale, offset

    def transform(self, x: Any) -> np.ndarray:
        """Scale ``x (N, F)``; float32/float64 inputs keep their dtype, other numbers become float32."""
        x, scale, offset = self._check_fitted(x)
        dtype = x.dtype if x.dtype.kind == "f" and x.dtype.itemsize >= 4 else np.float32
        # Statistics in the data's dtype: no float64 temporary of a (possibly huge) float32 array.
        out = x.astype(dtype, copy=True)
        out *= scale.astype(dtype)
        out += offset.astype(dtype)
        return out

    def fit_transform(self, x: Any) -> np.ndarray:
        """``fit(x)`` then ``transform(x)``."""
        return self.fit(x).transform(x)

    def inverse_transform(self, x: Any) -> np.ndarray:
        """Undo :meth:`transform`."""
        x, scale, offset = self._check_fitted(x)
        return ((x - offset) / scale).astype(x.dtype if x.dtype.kind == "f" else np.float32, copy=False)

    def state_dict(self) -> dict[str, Any]:
        """The fitted statistics as JSON-able lists (for checkpoints' ``extra``)."""
        scale, offset = self._require_fitted()
        return {"type": type(self).__name__, "scale": scale.tolist(), "offset": offset.tolist()}

    @property
    def n_features_in_(self) -> int:
        """The number of features seen by :meth:`fit` (scikit-learn's name)."""
        return int(self._require_fitted()[0].shape[0])

    def load_state_dict(self, state: dict[str, Any]) -> _Scaler:
        """Restore statistics saved by :meth:`state_dict`; returns ``self``.

        Raises:
            ValueError: ``state`` is not such a dict: another scaler's, a missing
                field, lists of other lengths or shapes, non-numbers, non-finite
                values, or a zero scale. Nothing is changed then.
        """
        if not isinstance(state, dict):
            raise ValueError(f"A scaler state must be a dict, got {type(state).__name__}")
        if state.get("type") != type(self).__name__:
            raise ValueError(f"This state belongs to a {state.get('type')!r}, not a {type(self).__name__}")
        scale, offset = (_statistic(state, key) for key in ("scale", "offset"))
        if scale.shape != offset.shape:
            raise ValueError(f"Scaler state has {scale.shape[0]} scales but {offset.shape[0]} offsets")
        if np.any(scale == 0):
            raise ValueError("Scaler state has a zero scale; it would map a feature to a constant")
        self.scale_, self.offset_ = scale, offset
        return self


def _statistic(state: dict[str, Any], key: str) -> np.ndarray:
    """``state[key]`` as a non-empty 1-D float64 vector of finite numbers."""
    if key not in state:
        raise ValueError(f"Scaler state has no {key!r}")
    try:
        values = np.asarray(state[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"Scaler state {key!r} must be a list of numbers, got {state[key]!r:.60}") from None
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"Scaler state {key!r} must be a non-empty list of numbers, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"Scaler state {key!r} holds non-finite values")
    return values


class MinMaxScaler(_Scaler):
    """Scale each feature to ``[0, 1]`` on the training data, as ``sklearn.preprocessing.MinMaxScaler``.

    ``x' = (x - min) / (max - min)``; a constant feature gets range 1 (so it maps to 0).

    >>> MinMaxScaler().fit_transform(np.array([[1.0], [3.0], [2.0]])).ravel()
    array([0. , 1. , 0.5])
    """

    def _fit_statistics(self, x: np.ndarray) -> None:
        low, high = x.min(axis=0), x.max(axis=0)
        span = high - low
        span[span == 0] = 1.0
        self.scale_ = 1.0 / span
        self.offset_ = -low * self.scale_


class StandardScaler(_Scaler):
    """Standardise each feature to zero mean and unit variance, as ``sklearn.preprocessing.StandardScaler``.

    ``x' = (x - mean) / std`` with the population standard deviation (``ddof=0``);
    a constant feature gets ``std = 1``.
    """

    def _fit_statistics(self, x: np.ndarray) -> None:
        mean, std = x.mean(axis=0), x.std(axis=0)
        std[std == 0] = 1.0
        self.scale_ = 1.0 / std
        self.offset_ = -mean * self.scale_


SCALERS: dict[str, type[_Scaler]] = {"minmax": MinMaxScaler, "standard": StandardScaler}
"""Scalers by the names the command line uses."""


def one_hot(labels: Any, num_classes: int | None = None, dtype: Any = np.float32) -> np.ndarray:
    """Encode integer labels ``(N,)`` in ``[0, C)`` as rows of a ``(N, C)`` identity.

    ``num_classes`` defaults to ``max(labels) + 1``.

    >>> one_hot([0, 2, 1])
    array([[1., 0., 0.],
           [0., 0., 1.],
           [0., 1., 0.]], dtype=float32)
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D vector, got shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind != "f" or not np.all(labels == np.round(labels)):
            raise TypeError(f"labels must be integers, got dtype {labels.dtype.name!r}")
        labels = labels.astype(np.int64)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    check_label_range(labels, num_classes, "labels")
    out = np.zeros((labels.shape[0], num_classes), dtype=dtype)
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def train_val_split(
    x: Any, y: Any, val_fraction: float = 0.1, seed: int = 0, stratify: bool = False, *, name: str = "val_fraction"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split ``(x, y)`` into ``(x_train, y_train, x_val, y_val)`` by a seeded permutation.

    ``val_fraction`` of the rows (rounded, at least one) go to validation. With
    ``stratify=True`` each class is split on its own so both parts keep the
    class proportions (``y`` must then be labels). The same ``seed`` gives the
    same split on every machine (NumPy's ``Generator`` with PCG64). ``name`` is
    what error messages call ``val_fraction``: a caller such as the command line
    passes the flag its user typed (``"--test-split"``).

    >>> x, y = np.arange(20).reshape(10, 2), np.arange(10) % 2
    >>> [part.shape[0] for part in train_val_split(x, y, 0.2, seed=0)]
    [8, 8, 2, 2]
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y hold different numbers of samples: {x.shape[0]} vs {y.shape[0]}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {val_fraction}")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"{name}={val_fraction}: need at least 2 samples to split, got {n}")
    rng = np.random.default_rng(check_seed(seed))
    if stratify:
        if y.ndim != 1:
            raise ValueError(f"stratify=True needs 1-D class labels, got y of shape {y.shape}")
        val_parts, train_parts = [], []
        labels, counts = np.unique(y, return_counts=True)
        for label in labels:
            members = rng.permutation(np.flatnonzero(y == label))
            n_val = int(round(val_fraction * len(members)))
            val_parts.append(members[:n_val])
            train_parts.append(members[n_val:])
        val_index = rng.permutation(np.concatenate(val_parts))
        train_index = rng.permutation(np.concatenate(train_parts))
        if len(val_index) == 0 or len(train_index) == 0:  # every class rounded the same way
            raise ValueError(
                f"{name}={val_fraction} leaves the {'held-out' if len(val_index) == 0 else 'training'} part empty: "
                f"{n} rows split per class into {len(train_index)} training and {len(val_index)} held-out rows "
                f"(the largest of {len(labels)} classes has {int(counts.max())} rows)"
            )
    else:
        order = rng.permutation(n)
        n_val = min(max(int(round(val_fraction * n)), 1), n - 1)  # never empties either part
        val_index, train_index = order[:n_val], order[n_val:]
    return x[train_index], y[train_index], x[val_index], y[val_index]
