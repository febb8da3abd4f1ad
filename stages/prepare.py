"""Stage `prepare`: the data set as seeded, stratified train/val/test tensor files."""

from __future__ import annotations

from pathlib import Path

from stages.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ROOT,
    is_idx_dir,
    load_digits_arrays,
    load_idx_arrays,
    load_image_folder_arrays,
    split_arrays,
    write_splits,
)
from stages.errors import StageError
from stages.params import Params


def run(params: Params, out_dir: Path) -> None:
    """Load `data.source`, split it with `seed`, write it to `out_dir`.

    Sources: 'digits' (scikit-learn's), 'fashion_mnist' (the IDX files of Debian's `dataset-fashion-mnist`
    package), a directory of MNIST-format IDX files, or an ImageFolder root. Data sets that ship their own
    train/test files are pooled and split like the others, so every source follows `data.*_fraction`."""
    seed = params.get_int("seed", min=0)
    source = params.get_str("data.source")
    val_fraction = params.get_float("data.val_fraction", min=0.0, max=1.0, min_inclusive=False)
    test_fraction = params.get_float("data.test_fraction", min=0.0, max=1.0, min_inclusive=False)
    if val_fraction + test_fraction >= 1.0:
        raise StageError(
            f"params.yaml: 'data.val_fraction' + 'data.test_fraction' = {val_fraction + test_fraction:g} "
            "must leave some training data (sum < 1)"
        )
    if source == "digits":
        images, targets, classes = load_digits_arrays()
    elif source == "fashion_mnist":
        if not is_idx_dir(FASHION_MNIST_ROOT):
            raise StageError(
                f"params.yaml: 'data.source' = 'fashion_mnist' reads {FASHION_MNIST_ROOT}, which lacks the data set: "
                "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or set 'data.source' to a "
                "directory holding the four IDX files")
        images, targets, classes = load_idx_arrays(FASHION_MNIST_ROOT, params.get_int("data.image_size", min=1),
                                                   FASHION_MNIST_CLASSES)
    elif is_idx_dir(Path(source)):
        images, targets, classes = load_idx_arrays(Path(source), params.get_int("data.image_size", min=1))
    else:
        image_size = params.get_int("data.image_size", min=1)
        images, targets, classes = load_image_folder_arrays(Path(source), image_size, params.get_bool("data.grayscale"))
    splits = split_arrays(images, targets, val_fraction, test_fraction, seed)
    write_splits(splits, classes, source, out_dir)
    counts = ", ".join(f"{name} {len(y)}" for name, (_, y) in splits.items())
    print(f"prepare: {source}, {len(classes)} classes, images {tuple(images.shape[1:])}: {counts}")
