"""Data sets: raw sources in, a cached Parquet dataset with splits out, arrays for the task samplers."""

from data.dataset import SPLITS, load_splits, manifest_of, prepare, split_names
from data.sources import DataError

__all__ = ["SPLITS", "DataError", "load_splits", "manifest_of", "prepare", "split_names"]
