"""Data for training: built-in data sets, file loaders, scalers, one-hot encoding and splits.

Everything here works on host NumPy arrays; ``fit`` moves data to the model's device.

>>> from fusednn.nn.data import load_dataset, train_val_split, MinMaxScaler
>>> data = load_dataset("digits")
>>> x_train, y_train, x_val, y_val = train_val_split(data.x, data.y, 0.2, seed=0, stratify=True)
>>> scaler = MinMaxScaler().fit(x_train)
>>> float(scaler.transform(x_train).max())
1.0
"""

from .datasets import BUILTIN_DATASETS, SYNTHETIC_CHUNK_ROWS, TASKS, Dataset, digits, load_dataset, synthetic, xor
from .files import find_mnist_files, load_csv, load_idx, load_idx_pair, load_npy, load_npz
from .preprocessing import SCALERS, MinMaxScaler, StandardScaler, one_hot, train_val_split

__all__ = [
    "BUILTIN_DATASETS",
    "SCALERS",
    "SYNTHETIC_CHUNK_ROWS",
    "TASKS",
    "Dataset",
    "MinMaxScaler",
    "StandardScaler",
    "digits",
    "find_mnist_files",
    "load_csv",
    "load_dataset",
    "load_idx",
    "load_idx_pair",
    "load_npy",
    "load_npz",
    "one_hot",
    "synthetic",
    "train_val_split",
    "xor",
]
