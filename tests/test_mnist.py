"""nanolm.teach.mnist: the idx reader validates what it reads, and the 8k/2k split is seeded and complete."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from nanolm.teach import mnist

COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]




def test_load_shapes_dtypes_counts():
    x, y = mnist.load()
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == COUNTS
    assert 0 < x.mean() < 255 and x.max() == 255


def test_split_is_seeded_disjoint_and_complete():
    a, b, c = mnist.split(8000, seed=0), mnist.split(8000, seed=0), mnist.split(8000, seed=1)
    assert a.x_train.shape == (8000, 28, 28) and a.x_test.shape == (2000, 28, 28)
    assert a.y_train.shape == (8000,) and a.y_test.shape == (2000,)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.y_train, c.y_train)
    # together the two halves are the whole set, each image once
    both = np.bincount(np.concatenate([a.y_train, a.y_test]), minlength=10)
    assert both.tolist() == COUNTS
    x, _ = mnist.load()
    rows = {r.tobytes() for r in x.reshape(len(x), -1)}
    seen = {r.tobytes() for r in np.concatenate([a.x_train, a.x_test]).reshape(10000, -1)}
    assert seen == rows
    with pytest.raises(ValueError, match="n_train"):
        mnist.split(10000)


def _idx(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload


def test_read_idx_roundtrip(tmp_path):
    imgs = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    f = tmp_path / "imgs.gz"
    f.write_bytes(gzip.compress(_idx(0x803, (2, 3, 4), imgs.tobytes())))
    np.testing.assert_array_equal(mnist.read_idx(f), imgs)
    g = tmp_path / "labels"  # plain, not gzipped
    g.write_bytes(_idx(0x801, (3,), bytes([7, 0, 9])))
    assert mnist.read_idx(g).tolist() == [7, 0, 9]


def test_corrupted_header_is_refused(tmp_path):
    bad = tmp_path / "bad-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(_idx(0x1234, (1, 28, 28), bytes(784))))
    with pytest.raises(mnist.MnistError, match="bad magic number 0x00001234"):
        mnist.read_idx(bad)


def test_truncated_and_short_files_are_refused(tmp_path):
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(_idx(0x803, (2, 28, 28), bytes(784))))  # one image of two
    with pytest.raises(mnist.MnistError, match="truncated or corrupted"):
        mnist.read_idx(cut)
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"\x00\x00")
    with pytest.raises(mnist.MnistError, match="too short"):
        mnist.read_idx(tiny)
    notgz = tmp_path / "broken.gz"
    notgz.write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(mnist.MnistError, match="gzip"):
        mnist.read_idx(notgz)
