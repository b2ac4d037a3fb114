"""Data sets: raw sources in, a cached Parquet dataset with splits out, arrays for the task samplers.

Importing this package registers the built-in data sets' specs (``data.registry.DATASETS``).
"""

from data import cifar, cub, generated, mini_imagenet, omniglot, table, tiered_imagenet  # noqa: F401
from data.dataset import load_splits, manifest_of, preparation_of, prepare, split_arrays, split_names
from data.registry import DATASETS, DataConfig, DatasetSpec, register_dataset
from data.sources import DataError

__all__ = [
    "DATASETS",
    "DataConfig",
    "DataError",
    "DatasetSpec",
    "load_splits",
    "manifest_of",
    "preparation_of",
    "prepare",
    "split_arrays",
    "register_dataset",
    "split_names",
]
