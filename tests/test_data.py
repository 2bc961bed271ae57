"""Data loading and preprocessing: scalers against scikit-learn, loaders on tiny fixture files, data sets."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import sklearn.preprocessing as skp

from fusednn.nn import data


def write_idx(path: Path, array: np.ndarray, type_code: int = 0x08) -> Path:
    """Write ``array`` in MNIST's IDX format (big-endian header, then big-endian data)."""
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_code]
    payload = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(dtype).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(payload)
    return path


# ------------------------------------------------------------------ scalers


@pytest.mark.parametrize(
    ("ours", "theirs"), [(data.MinMaxScaler, skp.MinMaxScaler), (data.StandardScaler, skp.StandardScaler)]
)
def test_scalers_match_sklearn(ours, theirs) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(40, 5))
    x[:, 2] = 7.0  # a constant feature must not divide by zero
    x_new = rng.normal(size=(6, 5))
    scaler = ours().fit(x)
    reference = theirs().fit(x)
    np.testing.assert_allclose(scaler.transform(x_new), reference.transform(x_new), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(scaler.inverse_transform(scaler.transform(x_new)), x_new, rtol=1e-12)
    restored = ours().load_state_dict(scaler.state_dict())
    np.testing.assert_array_equal(restored.transform(x_new), scaler.transform(x_new))


def test_scaler_keeps_float32_and_converts_integers() -> None:
    x32 = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert data.MinMaxScaler().fit_transform(x32).dtype == np.float32
    scaled = data.MinMaxScaler().fit_transform(np.arange(12).reshape(4, 3))
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled[:, 0], [0, 1 / 3, 2 / 3, 1], rtol=1e-6)


def test_scaler_errors() -> None:
    with pytest.raises(RuntimeError, match="MinMaxScaler is not fitted"):
        data.MinMaxScaler().transform(np.zeros((2, 2)))
    with pytest.raises(RuntimeError, match="not fitted"):
        data.StandardScaler().state_dict()
    with pytest.raises(ValueError, match="fitted on 2 features; x has 3"):
        data.StandardScaler().fit(np.ones((3, 2))).transform(np.ones((3, 3)))
    with pytest.raises(ValueError, match="non-empty 2-D array"):
        data.StandardScaler().fit(np.ones(3))
    with pytest.raises(TypeError, match="must hold numbers"):
        data.StandardScaler().fit(np.array([["a"]]))
    with pytest.raises(ValueError, match="belongs to a 'MinMaxScaler'"):
        data.StandardScaler().load_state_dict(data.MinMaxScaler().fit(np.ones((2, 2))).state_dict())


# ---------------------------------------------------------- one-hot, split


def test_one_hot_matches_sklearn() -> None:
    labels = np.array([2, 0, 1, 2])
    expected = skp.OneHotEncoder(categories=[[0, 1, 2, 3]]).fit_transform(labels[:, None]).toarray()
    np.testing.assert_array_equal(data.one_hot(labels, num_classes=4), expected)
    assert data.one_hot(labels, dtype=np.float64).shape == (4, 3)
    np.testing.assert_array_equal(data.one_hot(np.array([1.0, 0.0])), [[0, 1], [1, 0]])


@pytest.mark.parametrize(
    ("labels", "kwargs", "error", "match"),
    [
        ([0, 3], {"num_classes": 3}, ValueError, r"must lie in \[0, 3\)"),
        ([-1, 0], {}, ValueError, "must lie in"),
        ([0.5], {}, TypeError, "must be integers"),
        ([[0, 1]], {}, ValueError, "1-D vector"),
    ],
)
def test_one_hot_errors(labels, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        data.one_hot(np.array(labels), **kwargs)


def test_split_is_seeded_disjoint_and_complete() -> None:
    x = np.arange(200).reshape(100, 2)
    y = np.arange(100)
    x_tr, y_tr, x_va, y_va = data.train_val_split(x, y, 0.25, seed=3)
    assert (len(y_tr), len(y_va)) == (75, 25)
    assert sorted(np.concatenate([y_tr, y_va]).tolist()) == list(range(100))
    np.testing.assert_array_equal(x_va[:, 0] // 2, y_va)  # rows stay paired
    again = data.train_val_split(x, y, 0.25, seed=3)
    np.testing.assert_array_equal(again[3], y_va)
    assert not np.array_equal(data.train_val_split(x, y, 0.25, seed=4)[3], y_va)


def test_stratified_split_keeps_proportions() -> None:
    y = np.repeat([0, 1, 2], [50, 30, 20])
    x = np.arange(100)[:, None]
    _, y_tr, _, y_va = data.train_val_split(x, y, 0.2, seed=0, stratify=True)
    np.testing.assert_array_equal(np.bincount(y_va), [10, 6, 4])
    np.testing.assert_array_equal(np.bincount(y_tr), [40, 24, 16])


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "match"),
    [
        (np.zeros((3, 1)), np.zeros(4), {}, "different numbers of samples"),
        (np.zeros((3, 1)), np.zeros(3), {"val_fraction": 1.0}, "strictly between 0 and 1"),
        (np.zeros((1, 1)), np.zeros(1), {}, "at least 2 samples"),
        (np.zeros((4, 1)), np.zeros((4, 2)), {"stratify": True}, "1-D class labels"),
        (np.zeros((2, 1)), np.array([0, 1]), {"stratify": True}, "leaves the held-out part empty"),
        (np.zeros((4, 1)), np.zeros(4), {"seed": -1}, "seed must be a non-negative integer or None, got -1"),
    ],
)
def test_split_errors(x, y, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        data.train_val_split(x, y, **kwargs)


# ------------------------------------------------------------------ loaders


def test_npz_npy_csv_loaders(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float64).reshape(4, 3) / 2
    y = np.array([0, 1, 1, 2])
    np.savez(tmp_path / "d.npz", X=x, labels=y)
    x_npz, y_npz = data.load_npz(tmp_path / "d.npz")
    np.testing.assert_array_equal(x_npz, x)
    np.testing.assert_array_equal(y_npz, y)

    table = np.column_stack([x, y])
    np.save(tmp_path / "d.npy", table)
    x_npy, y_npy = data.load_npy(tmp_path / "d.npy")
    np.testing.assert_array_equal(x_npy, x)
    assert y_npy.dtype == np.int64

    (tmp_path / "d.csv").write_text("a,b,c,label\n" + "\n".join(",".join(map(str, row)) for row in table))
    x_csv, y_csv = data.load_csv(tmp_path / "d.csv")
    np.testing.assert_array_equal(x_csv, x)
    np.testing.assert_array_equal(y_csv, y)
    x_first, y_first = data.load_csv(tmp_path / "d.csv", label_column=0)
    np.testing.assert_array_equal(y_first, x[:, 0])  # not whole numbers: stays a float target
    assert x_first.shape == (4, 3)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_loader(tmp_path: Path, suffix: str) -> None:
    images = np.arange(3 * 2 * 4, dtype=np.uint8).reshape(3, 2, 4)
    labels = np.array([7, 0, 3], dtype=np.uint8)
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels)
    np.testing.assert_array_equal(data.load_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), images)
    x, y = data.load_idx_pair(*data.find_mnist_files(tmp_path))
    np.testing.assert_array_equal(x, images.reshape(3, 8))
    np.testing.assert_array_equal(y, labels)
    loaded = data.load_dataset(str(tmp_path))
    assert loaded.num_classes == 8 and loaded.x.dtype == np.float32


def test_idx_loader_reads_big_endian_types(tmp_path: Path) -> None:
    values = np.array([[1.5, -2.0], [3.25, 1e6]], dtype=np.float32)
    np.testing.assert_array_equal(data.load_idx(write_idx(tmp_path / "f.idx", values, 0x0D)), values)
    ints = np.array([70000, -3], dtype=np.int32)
    loaded = data.load_idx(write_idx(tmp_path / "i.idx", ints, 0x0C))
    np.testing.assert_array_equal(loaded, ints)
    assert loaded.dtype.isnative


def test_idx_errors(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "good.idx", np.zeros((4, 2), dtype=np.uint8))
    truncated = tmp_path / "truncated.idx"
    truncated.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated.idx.*truncated or padded"):
        data.load_idx(truncated)
    (tmp_path / "foreign.idx").write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="foreign.idx.*not an IDX file"):
        data.load_idx(tmp_path / "foreign.idx")
    (tmp_path / "short.idx").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(ValueError, match="short.idx.*header"):
        data.load_idx(tmp_path / "short.idx")
    labels = write_idx(tmp_path / "labels.idx", np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="has 4 images but .*labels.idx.* has 3 labels"):
        data.load_idx_pair(good, labels)
    with pytest.raises(FileNotFoundError, match="No train-images-idx3-ubyte"):
        data.find_mnist_files(tmp_path)


def test_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        data.load_npz(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz' is not a readable .npz archive: it is not a zip file"):
        data.load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "nokeys.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="no features array"):
        data.load_npz(tmp_path / "nokeys.npz")
    np.savez(tmp_path / "mismatch.npz", x=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(ValueError, match="'x' has 3 rows but 'y' has 2"):
        data.load_npz(tmp_path / "mismatch.npz")
    (tmp_path / "words.csv").write_text("a,b\n1,x\n")
    with pytest.raises(ValueError, match="words.csv.*not a numeric CSV"):
        data.load_csv(tmp_path / "words.csv")
    np.save(tmp_path / "vector.npy", np.zeros(3))
    with pytest.raises(ValueError, match="expected a 2-D table"):
        data.load_npy(tmp_path / "vector.npy")
    np.save(tmp_path / "table.npy", np.zeros((3, 2)))
    with pytest.raises(ValueError, match="label_column=5 is out of range"):
        data.load_npy(tmp_path / "table.npy", label_column=5)


# ---------------------------------------------------------------- datasets


def test_digits_matches_sklearn() -> None:
    from sklearn.datasets import load_digits

    digits = data.load_dataset("digits")
    reference = load_digits()
    assert digits.x.shape == (1797, 64) and digits.x.dtype == np.float32 and digits.num_classes == 10
    np.testing.assert_array_equal(digits.x, reference.data)
    np.testing.assert_array_equal(digits.y, reference.target)


def test_xor_labels_follow_the_rule() -> None:
    xor = data.load_dataset("xor", rows=500, seed=1)
    expected = (xor.x[:, 0] > 0.5) != (xor.x[:, 1] > 0.5)
    np.testing.assert_array_equal(xor.y, expected)
    np.testing.assert_array_equal(data.xor(rows=500, seed=1).x, xor.x)


def test_synthetic_is_seeded_balanced_and_prefix_stable() -> None:
    rows = data.SYNTHETIC_CHUNK_ROWS + 1000  # crosses a chunk boundary
    big = data.synthetic(rows=rows, features=8, classes=4, seed=5)
    small = data.synthetic(rows=1000, features=8, classes=4, seed=5)
    np.testing.assert_array_equal(big.x[:1000], small.x)
    np.testing.assert_array_equal(big.y[:1000], small.y)
    other = data.synthetic(rows=1000, features=8, classes=4, seed=6)
    assert not np.array_equal(other.y, small.y)
    share = np.bincount(big.y, minlength=4) / rows
    assert share.min() > 0.15, share  # offsets keep the classes near 1/4 each
    assert big.x.dtype == np.float32 and big.num_classes == 4
    # A teacher-labelled task is learnable: a linear classifier already beats chance by far.
    from sklearn.linear_model import LogisticRegression

    score = LogisticRegression(max_iter=300).fit(big.x[:4000], big.y[:4000]).score(big.x[4000:8000], big.y[4000:8000])
    assert score > 0.5
    noisy = data.synthetic(rows=1000, features=8, classes=4, seed=5, label_noise=1.0)
    assert np.mean(noisy.y == small.y) < 0.5


def test_load_dataset_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "r.npz", x=np.ones((5, 2)), y=np.linspace(0, 1, 5))
    regression = data.load_dataset(str(tmp_path / "r.npz"))
    assert regression.num_classes is None and regression.y.dtype == np.float64
    images = write_idx(tmp_path / "img.idx", np.zeros((2, 3, 3), dtype=np.uint8))
    labels = write_idx(tmp_path / "lab.idx", np.array([1, 4], dtype=np.uint8))
    loaded = data.load_dataset(str(images), labels=str(labels))
    assert loaded.x.shape == (2, 9) and loaded.num_classes == 5


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("nowhere.npz",), {}, FileNotFoundError, "Unknown data set 'nowhere.npz'"),
        (("digits",), {"rows": 10}, ValueError, "fixed size"),
        (("xor",), {"rows": 0}, ValueError, "rows must be a positive integer"),
        (("synthetic",), {"classes": 1}, ValueError, "classes must be at least 2"),
        (("synthetic",), {"label_noise": 2.0}, ValueError, r"label_noise must lie in \[0, 1\]"),
        (("synthetic",), {"colour": 2}, TypeError, "colour"),
    ],
)
def test_load_dataset_errors(args, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        data.load_dataset(*args, **kwargs)


def test_load_dataset_unknown_format_and_bad_labels(tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(b"\x00")
    with pytest.raises(ValueError, match="Cannot tell how to read"):
        data.load_dataset(str(tmp_path / "data.bin"))
    np.savez(tmp_path / "neg.npz", x=np.ones((2, 2)), y=np.array([-1, 0]))
    with pytest.raises(ValueError, match="class labels must be >= 0"):
        data.load_dataset(str(tmp_path / "neg.npz"))
    np.savez(tmp_path / "nolabels.npz", x=np.ones((2, 2)))
    with pytest.raises(ValueError, match="holds no labels"):
        data.load_dataset(str(tmp_path / "nolabels.npz"))


# ------------------------------------------------------- task, bad tables


def write_table(path: Path, table: np.ndarray) -> str:
    """A CSV with a header line, as a user would export one."""
    header = ",".join(f"c{i}" for i in range(table.shape[1]))
    np.savetxt(path, table, delimiter=",", header=header, comments="")
    return str(path)


def test_task_choice_keeps_whole_number_regression_targets(tmp_path: Path) -> None:
    prices = np.arange(40) * 250.0 + 1000  # whole numbers, but quantities
    path = write_table(tmp_path / "prices.csv", np.column_stack([np.linspace(0, 1, 40), prices]))
    guessed = data.load_dataset(path)
    assert guessed.task == "classification" and guessed.num_classes == 10751
    assert guessed.task_reason == "the label column holds whole numbers only (1000..10750)"
    regression = data.load_dataset(path, task="regression")
    assert regression.task == "regression" and regression.num_classes is None and regression.task_reason == ""
    assert regression.y.dtype == regression.x.dtype == np.float64
    np.testing.assert_array_equal(regression.y, prices)
    huge = write_table(tmp_path / "huge.csv", np.column_stack([np.ones(3), [1e20, 2e20, 3e20]]))
    assert data.load_dataset(huge).task == "regression"  # int64 cannot hold them: no wrapped-around labels


def test_task_choice_on_arrays_and_builtins(tmp_path: Path) -> None:
    np.savez(tmp_path / "floats.npz", x=np.ones((4, 2)), y=np.array([0.0, 1.0, 1.0, 0.0]))
    stored = data.load_dataset(str(tmp_path / "floats.npz"))
    assert stored.task == "regression" and stored.task_reason == "the targets are stored as floats (float64)"
    labels = data.load_dataset(str(tmp_path / "floats.npz"), task="classification")
    assert labels.num_classes == 2 and labels.y.dtype == np.int64
    np.savez(tmp_path / "ints.npz", x=np.ones((3, 2)), y=np.array([2, 0, 1]))
    integers = data.load_dataset(str(tmp_path / "ints.npz"))
    assert integers.task_reason == "the targets are stored as integers (int64, 0..2)"
    xor = data.load_dataset("xor", rows=6, task="regression")
    assert xor.num_classes is None and xor.y.dtype == np.float32
    assert data.load_dataset("xor", rows=6).task_reason == "xor is a classification data set"


@pytest.mark.parametrize(
    ("y", "kwargs", "match"),
    [
        ([0.5, 1.0, 0.0], {"task": "classification"}, r"whole-number class labels, found 0.5 in row 0"),
        ([[0, 1], [1, 0], [0, 1]], {"task": "classification"}, "one class label per row"),
        ([1, 1, 1], {}, "at least 2 classes, but every label is 1"),
        ([-1, 0, 1], {}, "class labels must be >= 0, found -1; pass task='regression'"),
        ([0, 1, 0], {"task": "ordinal"}, "task must be one of 'auto', 'classification', 'regression'"),
    ],
)
def test_task_errors(tmp_path: Path, y: list, kwargs: dict, match: str) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones((3, 2)), y=np.array(y))
    with pytest.raises(ValueError, match=match):
        data.load_dataset(str(tmp_path / "d.npz"), **kwargs)


def test_a_table_without_feature_columns_is_named(tmp_path: Path) -> None:
    path = write_table(tmp_path / "labels_only.csv", np.arange(6.0)[:, None])
    with pytest.raises(ValueError, match=r"labels_only.csv' has a single column.*a feature column is missing"):
        data.load_dataset(path)
    np.save(tmp_path / "column.npy", np.zeros((4, 1)))
    with pytest.raises(ValueError, match="column.npy' has a single column"):
        data.load_npy(tmp_path / "column.npy")
    np.savez(tmp_path / "empty.npz", x=np.zeros((4, 0)), y=np.arange(4))
    with pytest.raises(ValueError, match=r"empty.npz' has no feature column: x has shape \(4, 0\)"):
        data.load_dataset(str(tmp_path / "empty.npz"))


def test_non_finite_file_data_is_rejected_with_its_row_and_column(tmp_path: Path) -> None:
    table = np.column_stack([np.ones((5, 3)), np.arange(5) % 2])
    table[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"features hold nan at row 3, column 1 .*drop or fill in"):
        data.load_dataset(write_table(tmp_path / "gaps.csv", table))
    np.savez(tmp_path / "inf.npz", x=np.ones((3, 2)), y=np.array([0.5, np.inf, 1.0]))
    with pytest.raises(ValueError, match="inf.npz': the targets hold inf at row 1"):
        data.load_dataset(str(tmp_path / "inf.npz"))


def test_a_binary_file_named_csv_is_named(tmp_path: Path) -> None:
    (tmp_path / "image.csv").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ValueError, match="image.csv' is not a numeric CSV table"):
        data.load_csv(tmp_path / "image.csv")


def test_split_errors_name_the_caller_s_argument_and_the_rows() -> None:
    x, y = np.zeros((40, 1)), np.arange(40) % 2
    expected = (
        r"--test-split=0.01 leaves the held-out part empty: 40 rows split per class into 40 training and 0 "
        r"held-out rows \(the largest of 2 classes has 20 rows\)"
    )
    with pytest.raises(ValueError, match=expected):
        data.train_val_split(x, y, 0.01, stratify=True, name="--test-split")
    with pytest.raises(ValueError, match="--val-split=0.99 leaves the training part empty"):
        data.train_val_split(x, y, 0.99, stratify=True, name="--val-split")
    with pytest.raises(ValueError, match="--val-split=0.5: need at least 2 samples to split, got 1"):
        data.train_val_split(x[:1], y[:1], 0.5, name="--val-split")


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ("StandardScaler", "must be a dict, got str"),
        ({"type": "StandardScaler", "offset": [0.0]}, "has no 'scale'"),
        ({"type": "StandardScaler", "scale": [1.0, 2.0], "offset": [0.0]}, "2 scales but 1 offsets"),
        ({"type": "StandardScaler", "scale": "wide", "offset": [0.0]}, "'scale' must be a list of numbers"),
        ({"type": "StandardScaler", "scale": [[1.0]], "offset": [[0.0]]}, r"non-empty list of numbers, got shape"),
        ({"type": "StandardScaler", "scale": [np.nan], "offset": [0.0]}, "'scale' holds non-finite values"),
        ({"type": "StandardScaler", "scale": [0.0], "offset": [0.0]}, "zero scale"),
    ],
)
def test_scaler_state_is_checked_before_it_is_used(state, match: str) -> None:
    scaler = data.StandardScaler().fit(np.array([[1.0], [3.0]]))
    with pytest.raises(ValueError, match=match):
        scaler.load_state_dict(state)
    np.testing.assert_array_equal(scaler.transform(np.array([[1.0]])), [[-1.0]])  # left as it was
    assert scaler.n_features_in_ == 1


@pytest.mark.parametrize("make", [lambda: data.xor(seed=-1), lambda: data.synthetic(rows=8, seed=-1)])
def test_generated_data_sets_name_a_bad_seed(make) -> None:
    with pytest.raises(ValueError, match="seed must be a non-negative integer or None, got -1"):
        make()
