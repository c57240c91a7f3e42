"""Samples in memory: uint8 images normalised lazily as they are read, the model input's normalisation, and inputs
that are not images (issue #19: memory at 224 px, audio and other arrays).

Inputs fed to every image model are ``x_model = (x / 255 − mean) / std`` per channel, with mean/std given (the
teacher's preprocessing) or measured on the train split; inputs that are not images are used as given unless mean/std
are given. Image splits keep their uint8 samples (:class:`NormalizedArray`) and normalise a batch when it is read.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgekd.errors import DataError


class NormalizedArray:
    """Samples kept as read — uint8 images, a quarter of float32's memory — and normalised when read: ``a[i:j]``,
    ``a[idx]`` and ``a[i]`` return float32 ``(x / 255 − mean) / std`` for those samples only (issue #19: 1,600
    RGB images at 224 px are 963 MB as float32, 241 MB as uint8). ``np.asarray(a)`` materialises every sample.
    Consumers read batches by slicing, as they would an array; nothing writes into a split."""

    dtype = np.dtype(np.float32)

    def __init__(self, raw: np.ndarray, norm: Any) -> None:
        self.raw = raw
        self.norm = norm

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.raw.shape)

    @property
    def ndim(self) -> int:
        return self.raw.ndim

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):  # a[i:j, c] and the like: the samples first, then the rest of the key
            head, rest = key[0], key[1:]
            out = self[head]
            return out[rest] if isinstance(head, (int, np.integer)) else out[(slice(None), *rest)]
        if isinstance(key, (int, np.integer)):
            return self.norm(self.raw[[int(key)]])[0]
        return self.norm(self.raw[key])

    def subset(self, key: Any) -> "NormalizedArray":
        """The same lazy view of some samples (``take``, seeded subsets) without normalising them."""
        return NormalizedArray(self.raw[key], self.norm)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.norm(self.raw)
        return out if dtype is None else out.astype(dtype)


def head(x: Any, n: int) -> Any:
    """The first ``n`` samples of a split's ``x``, still lazy when it is a :class:`NormalizedArray`."""
    return x.subset(slice(0, n)) if isinstance(x, NormalizedArray) else x[:n]


def is_image_shape(sample_shape: Sequence[int] | None) -> bool:
    """Whether a model's per-sample input is an image (C, H, W): only then do resizing, channel conversion, per-channel
    statistics, flips/shifts and image synthesis apply."""
    return sample_shape is None or len(sample_shape) == 3


def as_samples(x: np.ndarray, sample_shape: Sequence[int], where: str) -> np.ndarray:
    """Non-image data (audio, tabular rows, sequences): any array whose per-sample shape is the model's input; an
    ``(N, L)`` array feeds a ``(1, L)`` input as it is (the singleton axis added)."""
    want = tuple(int(d) for d in sample_shape)
    if tuple(x.shape[1:]) == want:
        return x
    if x.ndim >= 2 and tuple(d for d in want if d != 1) == tuple(d for d in x.shape[1:] if d != 1) and \
            int(np.prod(x.shape[1:])) == int(np.prod(want)):
        return x.reshape((len(x), *want))  # the same values with singleton axes added or dropped
    raise DataError(f"samples in {where} have shape {tuple(x.shape[1:])}; the model's input is {want} per sample",
                    "save x as (N, " + ", ".join(map(str, want)) + "), or pass the right --input-shape")


def array_normalization(sample_shape: Sequence[int], mean: Sequence[float] | None, std: Sequence[float] | None):  # noqa: ANN201
    """(mean, std, where they came from, ``norm(a)``) for non-image inputs: the given statistics — one value, or one
    per entry of the first per-sample axis — else none at all (the data are used as given: a waveform's or a feature
    vector's scale is the model's, and statistics measured on the data would change what the teacher sees)."""
    if mean is None or std is None:
        def as_given(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(to_unit_float(a))

        return None, None, "none: the input is not an image, so the data are used as given (uint8 scaled to 0..1)", as_given
    if len(mean) not in (1, sample_shape[0]) or len(std) != len(mean):
        raise DataError(f"--mean/--std have {len(mean)}/{len(std)} values; this input {tuple(sample_shape)} takes 1 or "
                        f"{sample_shape[0]}", "pass one value, or one per entry of the first axis")
    shape = (1, len(mean)) + (1,) * (len(sample_shape) - 1)
    m, s = np.asarray(mean, np.float32).reshape(shape), np.asarray(std, np.float32).reshape(shape)

    def norm(a: np.ndarray) -> np.ndarray:
        out = np.ascontiguousarray(to_unit_float(a))
        out -= m
        out /= s
        return out

    return list(mean), list(std), "given or recorded in the model file", norm


def to_unit_float(x: np.ndarray) -> np.ndarray:
    """uint8 0..255 → [0, 1]; float data is taken as already in [0, 1] (or any range the user chose)."""
    out = x.astype(np.float32)  # a copy; scaled in place, so a batch costs one float array, not two
    if x.dtype == np.uint8:
        out /= 255.0
    return out


def channel_stats(x: np.ndarray, chunk: int = 1024) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of NCHW samples on the 0..1 scale (uint8 / 255), in chunks: no float copy of the
    whole split. Σx and Σx² in float64, std = √(E[x²] − E[x]²) + 1e-8."""
    c = x.shape[1]
    s1, s2 = np.zeros(c), np.zeros(c)
    for i in range(0, len(x), chunk):
        b = to_unit_float(x[i : i + chunk]).astype(np.float64)
        s1 += b.sum(axis=(0, 2, 3))
        s2 += (b * b).sum(axis=(0, 2, 3))
    n = len(x) * int(np.prod(x.shape[2:]))
    mean = s1 / n
    return mean.tolist(), (np.sqrt(np.maximum(s2 / n - mean * mean, 0.0)) + 1e-8).tolist()


def normalization(x_train: np.ndarray, mean: Sequence[float] | None, std: Sequence[float] | None):  # noqa: ANN201
    """(mean, std, where they came from, ``norm(a)``) for NCHW data in [0, 1]: the given statistics, else the
    train split's own; ``norm`` maps uint8 or [0, 1] arrays to the model's input, (x − mean) / std."""
    if mean is None or std is None:
        mean, std = channel_stats(x_train)
        source = "measured on the train split: no mean/std given or recorded in the model file"
    else:
        source = "given or recorded in the model file"
    m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, -1, 1, 1)

    def norm(a: np.ndarray) -> np.ndarray:  # in place on the float copy: one array of the split's size, not three
        out = np.ascontiguousarray(to_unit_float(a))  # a new array (astype copies), so it may be changed
        out -= m
        out /= s
        return out

    return mean, std, source, norm
