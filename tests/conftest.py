from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

DEMO_TEACHER = REPO / "examples" / "fmnist_teacher.pt2"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def free_port() -> int:
    """A TCP port nothing listens on now (for torchrun's rendezvous), instead of a fixed one that may be taken."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_idx(path: Path, arr: np.ndarray) -> None:
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[arr.dtype.type], arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


@pytest.fixture(scope="session")
def fmnist() -> Path:
    if not FMNIST.is_dir():
        pytest.fail("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist (the README setup does this)")
    return FMNIST


@pytest.fixture(scope="session")
def demo_teacher() -> Path:
    assert DEMO_TEACHER.is_file(), "examples/fmnist_teacher.pt2 is committed; run examples/train_teacher.py to rebuild it"
    return DEMO_TEACHER


@pytest.fixture()
def idx_dir(tmp_path: Path) -> Path:
    """A real IDX folder: 120 train + 40 test 28×28 images made from 10 class-dependent patterns."""
    rng = np.random.default_rng(0)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n, dtype=np.uint8) % 10
        x = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(y):
            x[i, 2 * c : 2 * c + 6, :] = 250
        return x, y

    xt, yt = make(120)
    xe, ye = make(40)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", xt)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", yt)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", xe)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", ye)
    return tmp_path
