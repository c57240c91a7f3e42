"""Datasets: Fashion-MNIST/MNIST IDX files, image folders (one subfolder per class) and ``.npz`` files.

Everything is loaded into memory as NCHW arrays — uint8 images stay uint8 and are normalised batch by batch when read
(:mod:`edgekd.data.arrays`), float data are normalised once — or, for a model whose input is not an image, as arrays
of its per-sample shape. Splits are deterministic: a seeded permutation carves ``val`` out of ``train``, and a
``test`` split is carved the same way when the source has none. Inputs fed to every image model are

    x_model = (x / 255 − mean) / std        (per channel)

where mean/std are either given (the preprocessing the teacher was trained with) or measured on the train split.
The split sizes, seed, hashes and normalisation are recorded in the run manifest.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from edgekd.data.arrays import NormalizedArray, array_normalization, as_samples, head, is_image_shape, normalization
from edgekd.data.image_folder import decode_images, list_image_folder
from edgekd.errors import DataError

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)


@dataclass
class ArraySplit:
    """One split: ``x`` float32 (N, C, H, W) already normalised — or (N, *input) for a model whose input is not an
    image — and ``y``: int64 (N,) class ids, or the ``outputs`` task's float targets."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def take(self, n: int | None) -> "ArraySplit":
        if n is None or n >= len(self):
            return self
        return ArraySplit(head(self.x, n), self.y[:n])

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(0, len(self), batch_size):
            yield self.x[i : i + batch_size], self.y[i : i + batch_size]


@dataclass
class Dataset:
    train: ArraySplit
    val: ArraySplit
    test: ArraySplit
    num_classes: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------- readers


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:  # type: ignore[operator]
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)", "pass the MNIST/Fashion-MNIST *-ubyte(.gz) files")
    dtype_code, ndim = data[2], data[3]
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise DataError(f"{path}: unknown IDX dtype 0x{dtype_code:02x}", "the file may be corrupt")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataError(f"{path}: IDX payload has {arr.size} values, header says {shape}", "the file is truncated")
    return arr.reshape(shape)


def _find_idx(root: Path, prefix: str, kind: str) -> Path | None:
    for p in sorted(root.iterdir()):
        n = p.name
        if n.startswith(prefix) and kind in n and ("ubyte" in n or n.endswith(".idx")):
            return p
    return None


def load_idx_folder(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    tr_x, tr_y = _find_idx(root, "train", "images"), _find_idx(root, "train", "labels")
    te_x, te_y = _find_idx(root, "t10k", "images"), _find_idx(root, "t10k", "labels")
    if tr_x is None or tr_y is None:
        raise DataError(f"{root} has no train-images/train-labels IDX files", "point --data at the folder holding *-ubyte(.gz)")
    xs = read_idx(tr_x)
    ys = read_idx(tr_y).astype(np.int64)
    xt = read_idx(te_x) if te_x else None
    yt = read_idx(te_y).astype(np.int64) if te_y else None
    return xs, ys, xt, yt


def _to_nchw(x: np.ndarray, channels: int | None) -> np.ndarray:
    """(N,H,W) / (N,H,W,C) / (N,C,H,W) → NCHW. Arrays are taken as given: a channel count other than the model's is
    refused, never averaged or repeated behind the user's back (image folders convert, and say so, when read)."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4:
        raise DataError(f"images must be (N,H,W), (N,C,H,W) or (N,H,W,C); got shape {x.shape}", "reshape the array")
    if channels is not None and x.shape[1] != channels:
        raise DataError(f"data has {x.shape[1]} channel(s), the model wants {channels}",
                        f"convert the arrays to {channels} channel(s) (edgekd does not average or repeat channels)")
    return x


def _check_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Integer class ids ≥ 0, or a DataError: float labels are never cast (regression targets would become 0)."""
    if y.ndim != 1:
        raise DataError(f"labels in {where} have shape {y.shape}; a classifier needs one integer class id per sample",
                        "save y as a 1-D integer array")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels in {where} are {y.dtype}, not integer class ids", "save y as integers (np.int64); "
                        "float targets are not classification labels")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"labels in {where} include {int(y.min())}; class ids start at 0", "relabel the classes 0..C-1")
    return y.astype(np.int64)


def _check_finite(x: np.ndarray, where: str) -> None:
    if np.issubdtype(x.dtype, np.floating):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise DataError(f"{where} holds {bad} NaN/inf value(s)", "clean the data (edgekd does not impute values)")


# ---------------------------------------------------------------------------------------------------- splits


def split_indices(n: int, seed: int, val_fraction: float, test_fraction: float, carve_test: bool,
                  limit: int | None, where: Any) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(test, val, train) indices from one seeded permutation: ``test`` (when the source has none) first, then
    ``val``, the rest train (cut to ``limit``)."""
    order = np.random.default_rng(seed).permutation(n)
    test_idx = None
    if carve_test:
        n_test = max(1, int(round(n * test_fraction)))
        test_idx, order = order[:n_test], order[n_test:]
    n_val = max(1, int(round(len(order) * val_fraction)))
    if len(order) - n_val < 1:
        raise DataError(f"dataset {where} has too few samples ({n}) to split", "add samples")
    val_idx, train_idx = order[:n_val], order[n_val:]
    return test_idx, val_idx, (train_idx[:limit] if limit is not None else train_idx)


# ---------------------------------------------------------------------------------------------------- entry point


def resolve_data_path(spec: str | Path) -> Path:
    """``fashion-mnist`` → the Debian package's folder; anything else is a path."""
    if str(spec).lower() in ("fashion-mnist", "fashion_mnist", "fmnist"):
        for d in FASHION_MNIST_DIRS:
            if Path(d).is_dir():
                return Path(d)
        raise DataError("Fashion-MNIST is not installed", "run: apt-get install dataset-fashion-mnist (or pass --data PATH)")
    p = Path(spec).expanduser().resolve()
    if not p.exists():
        raise DataError(f"data path {p} does not exist", "pass --data with an IDX folder, an image folder or a .npz file")
    return p


def load_dataset(
    spec: str | Path,
    *,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    val_fraction: float = 1 / 12,
    test_fraction: float = 0.1,
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    limit: int | None = None,
    resize: str = "stretch",
    labels: str = "classes",
    test_limit: int | None = None,
    sample_shape: Sequence[int] | None = None,
) -> Dataset:
    """Load ``spec`` (IDX folder, image folder, .npz, or ``fashion-mnist``) into normalised train/val/test splits.

    ``labels="classes"``: ``y`` holds integer class ids (checked). ``labels="targets"`` (the ``outputs`` task): ``y``
    holds whatever targets an ``.npz`` carries, of any shape and dtype, cast to float32 and never to integers; an
    ``.npz`` without ``y`` — and an IDX or image folder, whose labels are class ids — give targets of width 0.
    ``limit`` cuts the train split, ``test_limit`` the test split (of an image folder's own test set, a seeded
    sample); an image folder decodes only the images these splits use. ``sample_shape`` (the model's per-sample input)
    that is not (C, H, W) takes the data as arrays of that shape (:func:`edgekd.data.arrays.as_samples`), with no image step."""
    root = resolve_data_path(spec)
    classes: list[str] | None = None
    x_test = y_test = None
    targets = labels == "targets"

    def read_y(z: Any, key: str, n: int) -> np.ndarray:
        if not targets:
            return _check_labels(z[key], root.name if key == "y" else f"{root.name} ({key})")
        if key not in z:
            return np.zeros((n, 0), np.float32)
        y_ = z[key]
        if not (np.issubdtype(y_.dtype, np.floating) or np.issubdtype(y_.dtype, np.integer) or y_.dtype == bool):
            raise DataError(f"targets {key} in {root.name} are {y_.dtype}, not numbers", "save y as a float array")
        _check_finite(y_, f"{root.name} ({key})")
        return y_.astype(np.float32)

    if root.is_file():
        if root.suffix != ".npz":
            raise DataError(f"unsupported data file {root.name}", "use a .npz with arrays x and y, an IDX folder or an image folder")
        with np.load(root, allow_pickle=False) as z:
            if "x" not in z or ("y" not in z and not targets):
                raise DataError(f"{root.name} lacks arrays 'x' and 'y' (has {sorted(z.files)})", "save with np.savez(path, x=images, y=labels)")
            x = z["x"]
            y = read_y(z, "y", len(x))
            if "x_test" in z and ("y_test" in z or (targets and "y" not in z)):
                x_test = z["x_test"]
                y_test = read_y(z, "y_test", len(x_test))
            _check_finite(x, root.name)
            if x_test is not None:
                _check_finite(x_test, f"{root.name} (x_test)")
            if "normalized" in z and bool(z["normalized"]) and mean is None and is_image_shape(sample_shape):
                # edgekd synth output: already in the model's input space
                mean = [0.0] * int(_to_nchw(x[:1], channels).shape[1])
                std = [1.0] * len(mean)
        fmt = "npz"
    elif root.is_dir() and _find_idx(root, "train", "images") is not None:
        x, y, x_test, y_test = load_idx_folder(root)
        fmt = "idx"
    elif root.is_dir():
        # listed now, decoded after the split: only the images the run uses (the train limit, val, the test set)
        folder = root / "train" if (root / "train").is_dir() else root
        files, y, classes = list_image_folder(folder)
        x = files  # type: ignore[assignment]
        if folder != root and (root / "test").is_dir():
            test_files, y_test, _ = list_image_folder(root / "test")
            # the folder lists the test set class by class: a seeded order makes its first N (--eval-limit) a
            # sample of every class, not the first classes
            perm = np.random.default_rng(seed).permutation(len(test_files))[:test_limit]
            x_test, y_test = [test_files[i] for i in perm], y_test[perm]  # type: ignore[assignment]
        fmt = "image-folder"
    else:
        raise DataError(f"cannot read data at {root}", "pass an IDX folder, an image folder or a .npz file")

    image = is_image_shape(sample_shape)
    if not image:
        assert sample_shape is not None
        if fmt == "image-folder":
            raise DataError(f"{root} is an image folder; the model's input is {tuple(sample_shape)} per sample, not an "
                            "image", "pass a .npz whose x is (N, " + ", ".join(map(str, sample_shape)) + ")")
        x = as_samples(x, sample_shape, root.name)
        if x_test is not None:
            x_test = as_samples(x_test, sample_shape, f"{root.name} (x_test)")
    if targets and fmt != "npz":  # class ids of an IDX or image folder are not targets of a non-classifier
        y = np.zeros((len(y), 0), np.float32)
        y_test = None if y_test is None else np.zeros((len(y_test), 0), np.float32)
    if len(y) == 0:
        raise DataError(f"dataset {root} is empty", "add samples")
    if len(x) != len(y):
        raise DataError(f"{len(x)} samples but {len(y)} targets in {root}", "fix the dataset")
    n_classes = len(np.unique(y)) if not targets else 0
    if not targets and n_classes < 2:
        raise DataError(f"dataset {root} has one class only ({classes[0] if classes else int(y[0])}); a classifier "
                        "cannot be scored on it", "add samples of the other classes")
    if len(x) != len(y):
        raise DataError(f"{len(x)} images but {len(y)} labels in {root}", "fix the dataset")
    test_idx, val_idx, train_idx = split_indices(len(y), seed, val_fraction, test_fraction, x_test is None, limit, root)
    if test_idx is not None and test_limit:
        test_idx = test_idx[:test_limit]
    if fmt == "image-folder":
        used = np.unique(np.concatenate([i for i in (test_idx, val_idx, train_idx) if i is not None]))
        at = np.full(len(y), -1, np.int64)
        at[used] = np.arange(len(used))
        x = decode_images([files[i] for i in used], channels, size, resize, folder.name)
        y = y[used]
        test_idx, val_idx, train_idx = (None if test_idx is None else at[test_idx]), at[val_idx], at[train_idx]
        if x_test is not None:
            x_test = decode_images(x_test, channels, size or tuple(x.shape[1:3]), resize, "test")  # type: ignore[arg-type]
    if image:
        x = _to_nchw(x, channels)
        if x_test is not None:
            x_test = _to_nchw(x_test, channels)
    if test_idx is not None:
        x_test, y_test = x[test_idx], y[test_idx]
    if image:
        mean, std, norm_source, norm = normalization(x[train_idx], mean, std)
    else:
        assert sample_shape is not None
        mean, std, norm_source, norm = array_normalization(sample_shape, mean, std)

    def split_x(a: np.ndarray) -> Any:
        # uint8 samples stay uint8 and are normalised batch by batch when read; float data are normalised once
        return NormalizedArray(a, norm) if a.dtype == np.uint8 else norm(a)
    num_classes = 0 if targets else int(max(y.max(), y_test.max() if len(y_test) else 0) + 1)  # type: ignore[union-attr]
    ds = Dataset(
        train=ArraySplit(split_x(x[train_idx]), y[train_idx]),
        val=ArraySplit(split_x(x[val_idx]), y[val_idx]),
        test=ArraySplit(split_x(x_test), y_test),  # type: ignore[arg-type]
        num_classes=num_classes,
    )
    ds.meta = {
        "source": str(root),
        "format": fmt,
        "classes": classes,
        "num_classes": num_classes,
        "input_shape": list(ds.input_shape),
        "sizes": {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)},
        "split_seed": seed,
        "val_fraction": val_fraction,
        "test_split": "source" if fmt == "idx" or x_test is not None else f"seeded {test_fraction}",
        "normalize": {"mean": None if mean is None else [float(v) for v in mean],
                      "std": None if std is None else [float(v) for v in std], "source": norm_source},
        "resize": resize if fmt == "image-folder" else None,
    }
    if not image:
        ds.meta["image_steps_skipped"] = "resize, channel conversion, per-channel statistics, flips and shifts"
    if targets:
        ds.meta["classes"], ds.meta["labels"] = None, ("targets of shape " + str(tuple(y.shape[1:])) if y.ndim == 1 or y.shape[1]
                                                      else "none")
    return ds
