"""Datasets and splits (see :mod:`edgekd.data.datasets`)."""

from edgekd.data.datasets import ArraySplit, Dataset, load_dataset, read_idx, resolve_data_path

__all__ = ["ArraySplit", "Dataset", "load_dataset", "read_idx", "resolve_data_path"]
