"""prepare: a seeded, stratified, disjoint split of digits or of an ImageFolder."""

import numpy as np
import pytest
from PIL import Image

from stages import prepare
from stages.data import load_digits_arrays, load_split, read_meta, split_arrays
from stages.errors import StageError
from stages.params import Params


def _params(source: str, **data) -> Params:
    return Params({"seed": 3, "data": {"source": source, "val_fraction": 0.2, "test_fraction": 0.2,
                                       "image_size": 8, "grayscale": True, **data}})


def test_digits_split_is_seeded_disjoint_and_stratified():
    images, targets, classes = load_digits_arrays()
    assert images.shape[1:] == (1, 8, 8) and 0.0 <= images.min() and images.max() <= 1.0
    first = split_arrays(images, targets, 0.15, 0.15, seed=0)
    again = split_arrays(images, targets, 0.15, 0.15, seed=0)
    other = split_arrays(images, targets, 0.15, 0.15, seed=1)
    assert all(np.array_equal(first[s][0], again[s][0]) for s in first)
    assert not np.array_equal(first["test"][1], other["test"][1])
    assert sum(len(y) for _, y in first.values()) == len(targets)
    rows = {name: {x.tobytes() for x in xs} for name, (xs, _) in first.items()}
    assert not rows["train"] & rows["test"] and not rows["val"] & rows["test"]
    assert set(first["test"][1]) == set(range(10)) and len(classes) == 10


def test_prepare_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "raw" / cls).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "raw" / cls / f"{i}.png")
    prepare.run(_params(str(tmp_path / "raw")), tmp_path / "out")
    meta = read_meta(tmp_path / "out")
    assert meta["classes"] == ["cat", "dog"] and meta["input_shape"] == [1, 8, 8]
    assert meta["counts"] == {"train": 12, "val": 4, "test": 4}
    assert load_split(tmp_path / "out", "train").tensors[0].shape == (12, 1, 8, 8)


def test_prepare_errors_name_the_key(tmp_path):
    with pytest.raises(StageError, match="'data.source' = '.*missing' is neither 'digits'"):
        prepare.run(_params(str(tmp_path / "missing")), tmp_path / "out")
    with pytest.raises(StageError, match="'data.val_fraction' \\+ 'data.test_fraction' = 1"):
        prepare.run(_params("digits", val_fraction=0.5, test_fraction=0.5), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _write_idx(path, array: np.ndarray) -> None:
    import gzip
    import struct

    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_prepare_idx_directory_pools_splits_and_shrinks_by_area(tmp_path):
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (40, 4, 4)), "t10k": rng.integers(0, 256, (10, 4, 4))}
    labels = {"train": np.arange(40) % 5, "t10k": np.arange(10) % 5}
    (tmp_path / "idx").mkdir()
    for part in ("train", "t10k"):
        _write_idx(tmp_path / "idx" / f"{part}-images-idx3-ubyte.gz", images[part])
        _write_idx(tmp_path / "idx" / f"{part}-labels-idx1-ubyte.gz", labels[part])
    prepare.run(_params(str(tmp_path / "idx"), image_size=2), tmp_path / "out")
    meta = read_meta(tmp_path / "out")
    assert meta["classes"] == ["0", "1", "2", "3", "4"] and meta["input_shape"] == [1, 2, 2]
    assert meta["counts"] == {"train": 30, "val": 10, "test": 10}
    # Each pixel is the mean of its 2x2 block of the stored image, scaled to [0, 1]: find every output row's source.
    everything = np.concatenate([images["train"], images["t10k"]]).astype(np.float32) / 255.0
    pooled = everything.reshape(50, 2, 2, 2, 2).mean(axis=(2, 4))
    seen = []
    for split in ("train", "val", "test"):
        x, y = load_split(tmp_path / "out", split).tensors
        for image, label in zip(x.numpy(), y.numpy()):
            match = np.flatnonzero(np.abs(pooled - image[0]).reshape(50, -1).max(1) < 1e-6)
            assert len(match) == 1 and np.concatenate([labels["train"], labels["t10k"]])[match[0]] == label
            seen.append(match[0])
    assert sorted(seen) == list(range(50))


def test_idx_errors_name_the_file_and_the_fix(tmp_path, monkeypatch):
    from stages import data

    bad = tmp_path / "bad"
    bad.mkdir()
    for part in data.IDX_PARTS:
        (bad / part).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")  # says 5 values, holds 2
    with pytest.raises(StageError, match="holds 2 values, its header says \\(5,\\)"):
        prepare.run(_params(str(bad)), tmp_path / "out")
    (bad / data.IDX_PARTS[0]).write_bytes(b"\x00\x00\x08\x03\x00\x00")  # 3 dimensions, header cut short
    with pytest.raises(StageError, match="ends inside its header \\(6 bytes for 3 dimensions\\)"):
        prepare.run(_params(str(bad)), tmp_path / "out")
    (bad / data.IDX_PARTS[0]).write_bytes(b"PK\x03\x04")
    with pytest.raises(StageError, match="is not an IDX file of unsigned bytes \\(magic 504b0304"):
        prepare.run(_params(str(bad)), tmp_path / "out")
    monkeypatch.setattr(prepare, "FASHION_MNIST_ROOT", tmp_path / "absent")
    with pytest.raises(StageError, match="apt-get install dataset-fashion-mnist"):
        prepare.run(_params("fashion_mnist"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
