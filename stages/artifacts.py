"""Atomic artifact writes and checked loads.

Every file a stage writes goes to a temporary file in the same directory, is flushed and fsynced, and
then renamed over the destination with `os.replace`: a stage killed half-way leaves either the old
file or none, never a truncated one that DVC could cache.

dill/pickle files (the IR, the full pruned model) run code when loaded: `load_pickled` is meant only
for files this pipeline wrote itself. The weights-only files (`save_state_dict`) load without running code.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import dill
import torch

from stages.errors import StageError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; on success it replaces `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that was killed
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make artifacts private
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(obj: Any, path: str | Path) -> None:
    """Write `obj` as indented, key-sorted JSON (stable bytes for DVC)."""
    with atomic_write(path, "w") as handle:
        json.dump(obj, handle, indent=2, sort_keys=True)
        handle.write("\n")


def write_text(text: str, path: str | Path) -> None:
    """Write a text file atomically."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def read_json(path: str | Path) -> Any:
    """Read a JSON artifact, naming the file when it is missing or invalid."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise StageError(f"{path}: not found (run the stage that writes it first, e.g. `dvc repro`)") from None
    except json.JSONDecodeError as exc:
        raise StageError(f"{path}: not valid JSON ({exc}); delete it and rerun its stage") from None


def save_pickled(obj: Any, path: str | Path) -> None:
    """torch.save with dill (IR objects and full models need it); bytes do not depend on the path."""
    with atomic_write(path) as handle:
        torch.save(obj, handle, pickle_module=dill)


def load_pickled(path: str | Path, expected: type | tuple[type, ...]) -> Any:
    """Load a dill file written by this pipeline and check its type. Runs code: never use on foreign files."""
    path = Path(path)
    _check_torch_zip(path)
    try:
        obj = torch.load(path, pickle_module=dill, weights_only=False, map_location="cpu")
    except Exception as exc:
        raise StageError(f"{path}: cannot be loaded ({type(exc).__name__}: {exc}); rerun the stage that writes it") from exc
    if not isinstance(obj, expected):
        names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
        raise StageError(f"{path}: holds a {type(obj).__name__}, expected a {names}")
    return obj


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """Save tensors only, loadable with `torch.load(weights_only=True)` (no code runs)."""
    with atomic_write(path) as handle:
        torch.save({name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}, handle)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a weights-only file; refuses anything but tensors."""
    path = Path(path)
    _check_torch_zip(path)
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        raise StageError(f"{path}: not a weights-only state_dict ({type(exc).__name__}: {exc})") from exc


def _check_torch_zip(path: Path) -> None:
    if not path.is_file():
        raise StageError(f"{path}: not found (run the stage that writes it first, e.g. `dvc repro`)")
    if not zipfile.is_zipfile(path):
        raise StageError(f"{path}: truncated or not a torch.save file; delete it and rerun its stage")
