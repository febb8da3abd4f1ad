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
