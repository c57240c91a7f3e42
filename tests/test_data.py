from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekd.data import load_dataset, read_idx
from edgekd.errors import DataError


def test_idx_folder_splits_and_normalises(idx_dir: Path) -> None:
    ds = load_dataset(idx_dir, val_fraction=0.25)
    assert ds.meta["format"] == "idx" and ds.num_classes == 10
    assert (len(ds.train), len(ds.val), len(ds.test)) == (90, 30, 40)
    assert ds.train.x.shape[1:] == (1, 28, 28) and ds.train.x.dtype == np.float32
    x = np.asarray(ds.train.x)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3


def test_uint8_splits_stay_uint8_and_read_as_the_normalised_floats(idx_dir: Path) -> None:
    from edgekd.data.arrays import NormalizedArray

    ds = load_dataset(idx_dir, mean=[0.5], std=[0.25])
    raw = read_idx(idx_dir / "t10k-images-idx3-ubyte.gz")
    assert isinstance(ds.test.x, NormalizedArray) and ds.test.x.raw.dtype == np.uint8
    assert ds.test.x.nbytes * 4 == np.asarray(ds.test.x).nbytes  # a quarter of the float32 split's memory
    want = ((raw / 255.0 - 0.5) / 0.25).astype(np.float32)[:, None]
    idx = np.array([7, 0, 3])
    for got, ref in ((ds.test.x[2:9], want[2:9]), (ds.test.x[idx], want[idx]), (ds.test.x[5], want[5]),
                     (ds.test.x[-1], want[-1]), (ds.test.x[1:4, 0], want[1:4, 0]), (np.asarray(ds.test.x), want)):
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-6)
    head = ds.test.take(5)
    assert isinstance(head.x, NormalizedArray) and len(head) == 5
    np.testing.assert_allclose(head.x[:], want[:5], atol=1e-6)


def test_split_is_deterministic_and_seeded(idx_dir: Path) -> None:
    a, b = load_dataset(idx_dir), load_dataset(idx_dir)
    c = load_dataset(idx_dir, seed=1)
    assert np.array_equal(a.val.y, b.val.y) and np.array_equal(a.train.x, b.train.x)
    assert not np.array_equal(a.val.x, c.val.x)


def test_given_normalisation_is_used(idx_dir: Path) -> None:
    ds = load_dataset(idx_dir, mean=[0.5], std=[0.25])
    raw = read_idx(idx_dir / "t10k-images-idx3-ubyte.gz")
    assert np.allclose(ds.test.x[:, 0], (raw / 255.0 - 0.5) / 0.25, atol=1e-5)
    assert ds.meta["normalize"]["source"] == "given or recorded in the model file"


def test_npz_with_and_without_test_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (50, 8, 8, 3), dtype=np.uint8)  # NHWC
    y = np.arange(50) % 5
    np.savez(tmp_path / "a.npz", x=x, y=y)
    ds = load_dataset(tmp_path / "a.npz")
    assert ds.input_shape == (3, 8, 8) and len(ds.test) == 5 and len(ds.train) + len(ds.val) == 45
    np.savez(tmp_path / "b.npz", x=x, y=y, x_test=x[:7], y_test=y[:7])
    assert len(load_dataset(tmp_path / "b.npz").test) == 7
    np.savez(tmp_path / "c.npz", images=x)
    with pytest.raises(DataError, match="'x' and 'y'"):
        load_dataset(tmp_path / "c.npz")


def test_image_folder(tmp_path: Path) -> None:
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.fromarray(np.full((10, 12), 40 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    ds = load_dataset(tmp_path, channels=1, size=(28, 28))
    assert ds.meta["classes"] == ["cat", "dog"] and ds.input_shape == (1, 28, 28)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 12


def test_empty_and_missing_data(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "empty" / "classA").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_real_fashion_mnist(fmnist: Path) -> None:
    ds = load_dataset("fashion-mnist")
    assert ds.meta["sizes"] == {"train": 55000, "val": 5000, "test": 10000}
    assert sorted(np.unique(ds.test.y).tolist()) == list(range(10))


@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center-crop"])
def test_resize_modes_on_a_known_image(tmp_path: Path, mode: str) -> None:
    """A 20×40 (H×W) image, left half black, right half white, fitted to 10×10: stretch keeps both halves side by side,
    letterbox pads 2.5 rows of black above and below a 5-row band, center-crop keeps the middle 20×20 (half and half)."""
    from PIL import Image

    from edgekd.data.image_folder import fit_image

    a = np.zeros((20, 40), np.uint8)
    a[:, 20:] = 255
    out = np.asarray(fit_image(Image.fromarray(a, "L"), (10, 10), mode), np.float32) / 255
    assert out.shape == (10, 10)
    if mode == "stretch":
        assert out[:, :5].max() < 0.1 and out[:, 5:].min() > 0.9
    elif mode == "letterbox":
        assert out[:2].max() == 0 and out[-2:].max() == 0  # padding rows
        assert out[4, 7] > 0.9 and out[4, 2] < 0.1  # the band keeps both halves
    else:
        assert out[:, :4].max() < 0.1 and out[:, 6:].min() > 0.9  # the centre: left black, right white, full height


def test_image_folder_resize_is_recorded(tmp_path: Path) -> None:
    from PIL import Image

    for c in range(2):
        (tmp_path / f"c{c}").mkdir()
        for i in range(4):
            Image.fromarray(np.full((30, 40), 50 * c, np.uint8), "L").save(tmp_path / f"c{c}" / f"{i}.png")
    ds = load_dataset(tmp_path, channels=1, size=(28, 28), resize="letterbox")
    assert ds.input_shape == (1, 28, 28) and ds.meta["resize"] == "letterbox"


def test_an_image_folder_decodes_only_the_images_its_splits_use(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """--data-limit / --eval-limit on a folder of photos: the unused images are never decoded (memory and time), and
    the test subset of a train/ + test/ layout is a seeded sample of every class, not the first classes."""
    from PIL import Image

    import edgekd.data.datasets as dsmod

    for split, n in (("train", 30), ("test", 10)):
        for c in range(4):
            (tmp_path / split / f"c{c}").mkdir(parents=True)
            for i in range(n):  # each pixel value names its class and index, so a decoded image can be traced
                Image.fromarray(np.full((8, 8), 10 * c + i % 10, np.uint8), "L").save(tmp_path / split / f"c{c}" / f"{i}.png")
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: (opened.append(str(p)), real_open(p, *a, **k))[1])
    ds = dsmod.load_dataset(tmp_path, channels=1, size=(8, 8), limit=12, test_limit=8, val_fraction=0.1)
    n_val = round(120 * 0.1)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (12, n_val, 8)
    assert len(opened) == 12 + n_val + 8  # not 120 + 40
    assert len(set(ds.test.y.tolist())) >= 3  # a sample of the classes (the first 8 files are all class 0)
    # the labels still belong to their images after the re-indexing: pixel // 10 is the class
    for split in (ds.train, ds.val, ds.test):
        px = np.round(split.x[:, 0, 0, 0] * ds.meta["normalize"]["std"][0] + ds.meta["normalize"]["mean"][0], 4)
        assert np.array_equal((np.round(px * 255) // 10).astype(int), split.y)
