"""Data sets as tensors: scikit-learn's bundled digits by default, Fashion-MNIST (or any data set in
MNIST's IDX format) or any torchvision ImageFolder.

`prepare` writes `train.pt`, `val.pt`, `test.pt` (weights-only tensor files, deterministic bytes) and
`meta.json` under one directory; every later stage reads them through `load_split`/`make_loader`.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from stages.artifacts import load_state_dict, read_json, save_state_dict, write_json
from stages.errors import StageError

SPLITS = ("train", "val", "test")
# Where Debian's and Ubuntu's package `dataset-fashion-mnist` installs the four IDX files.
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
IDX_PARTS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 8x8 digits as float32 images in [0, 1], shape (N, 1, 8, 8), and int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    return images, digits.target.astype(np.int64), [str(name) for name in digits.target_names]


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (MNIST's format; gzipped when the name ends in .gz) of unsigned bytes, in its shape."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise StageError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4].hex() or 'missing'}, "
                         "expected 00000801 or 00000803)")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise StageError(f"{path} ends inside its header ({len(data)} bytes for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if array.size != math.prod(dims):
        raise StageError(f"{path} holds {array.size} values, its header says {dims} (a truncated download?)")
    return array.reshape(dims)


def idx_files(root: Path) -> dict[str, Path | None]:
    """Each of the four IDX files of an MNIST-format directory (plain or .gz), None where it is missing."""
    found = {}
    for part in IDX_PARTS:
        found[part] = next((c for c in (root / part, root / f"{part}.gz") if c.is_file()), None)
    return found


def is_idx_dir(root: Path) -> bool:
    """Whether `root` holds all four IDX files of an MNIST-format data set."""
    return all(idx_files(root).values())


def load_idx_arrays(root: Path, image_size: int, classes: list[str] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An MNIST-format directory's train and test images together (``prepare`` splits them with the seed),
    as float32 in [0, 1], shape (N, 1, image_size, image_size): area-averaged when smaller than stored,
    bilinear when larger. `classes` names the labels (default: the label numbers)."""
    files = idx_files(root)
    missing = [part for part, path in files.items() if path is None]
    if missing:
        raise StageError(f"{root} lacks the IDX files {', '.join(missing)} (plain or .gz)")
    images = np.concatenate([read_idx(files["train-images-idx3-ubyte"]), read_idx(files["t10k-images-idx3-ubyte"])])
    targets = np.concatenate([read_idx(files["train-labels-idx1-ubyte"]), read_idx(files["t10k-labels-idx1-ubyte"])])
    if images.ndim != 3 or targets.ndim != 1 or len(images) != len(targets):
        raise StageError(f"{root}: images {images.shape} and labels {targets.shape} do not pair up")
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        shrink = image_size < min(x.shape[-2:])
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="area" if shrink else "bilinear",
                                            **({} if shrink else {"align_corners": False}))
    names = classes or [str(label) for label in range(int(targets.max()) + 1)]
    return x.numpy(), targets.astype(np.int64), names


def load_image_folder_arrays(root: Path, image_size: int, grayscale: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All images of an ImageFolder root, resized and center-cropped to `image_size`, in [0, 1]."""
    from torchvision import datasets, transforms

    if not root.is_dir():
        raise StageError(f"params.yaml: 'data.source' = '{root}' is neither 'digits', 'fashion_mnist' nor an "
                         "existing directory")
    steps = [transforms.Grayscale(1)] if grayscale else [transforms.Lambda(lambda image: image.convert("RGB"))]
    steps += [transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()]
    try:
        folder = datasets.ImageFolder(str(root), transform=transforms.Compose(steps))
    except (FileNotFoundError, RuntimeError) as exc:
        raise StageError(f"params.yaml: 'data.source' = '{root}' is not an ImageFolder (one sub-folder per class): {exc}") from None
    images = np.stack([folder[i][0].numpy() for i in range(len(folder))]).astype(np.float32)
    return images, np.asarray(folder.targets, dtype=np.int64), list(folder.classes)


def split_arrays(
    images: np.ndarray, targets: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A stratified, seeded train/val/test split (same seed, same split)."""
    from sklearn.model_selection import train_test_split

    try:
        rest_x, test_x, rest_y, test_y = train_test_split(
            images, targets, test_size=test_fraction, random_state=seed, stratify=targets
        )
        train_x, val_x, train_y, val_y = train_test_split(
            rest_x, rest_y, test_size=val_fraction / (1.0 - test_fraction), random_state=seed, stratify=rest_y
        )
    except ValueError as exc:
        raise StageError(f"params.yaml: 'data.val_fraction'/'data.test_fraction' cannot split this data set: {exc}") from None
    return {"train": (train_x, train_y), "val": (val_x, val_y), "test": (test_x, test_y)}


def write_splits(splits: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str], source: str, out_dir: Path) -> None:
    """Write each split as a tensor file plus `meta.json` (shape, classes, counts)."""
    for name, (x, y) in splits.items():
        save_state_dict({"x": torch.from_numpy(np.ascontiguousarray(x)), "y": torch.from_numpy(y)}, out_dir / f"{name}.pt")
    sample_shape = list(splits["train"][0].shape[1:])
    write_json(
        {
            "source": source,
            "classes": classes,
            "in_channels": sample_shape[0],
            "input_shape": sample_shape,
            "counts": {name: len(y) for name, (_, y) in splits.items()},
        },
        out_dir / "meta.json",
    )


def read_meta(data_dir: str | Path) -> dict:
    """The `meta.json` written by `prepare`."""
    return read_json(Path(data_dir) / "meta.json")


def load_split(data_dir: str | Path, split: str) -> TensorDataset:
    """One prepared split as a TensorDataset of (image, label)."""
    tensors = load_state_dict(Path(data_dir) / f"{split}.pt")
    return TensorDataset(tensors["x"], tensors["y"])


def make_loader(dataset: TensorDataset, batch_size: int, *, shuffle: bool, seed: int) -> DataLoader:
    """A single-process loader whose shuffling order depends only on `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0)
