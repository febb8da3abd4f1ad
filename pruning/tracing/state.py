"""Keep a model as it was across tracing and the shape pass.

Some forwards cache tensors on their modules (attention masks, relative position indices, rotary
tables: ``if self.cache is None: self.cache = ...``). Tracing would leave an fx Proxy there and the
shape pass a fake tensor, and the user's model would then fail on its next real call. Both run inside
:func:`unchanged_attributes`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensor


class SavedAttributes:
    """Every attribute, parameter, buffer and submodule of a model's modules, as they were when made."""

    def __init__(self, root: nn.Module) -> None:
        self._root, self._saved = root, _tables(root)

    def restore(self) -> None:
        """Put back every value reassigned since, and drop new ones that hold a Proxy or a fake tensor."""
        _put_back(self._saved, drop=_symbolic)

    @contextmanager
    def as_before(self) -> Iterator[None]:
        """The saved values for the duration, then the current ones again, without what the block added
        (the size oracle runs the model's code while it is traced, and a forward that reassigned
        ``self.table`` has left a Proxy there)."""
        current = _tables(self._root)
        self.restore()
        try:
            yield
        finally:
            _put_back(current, drop=lambda value: True)


def _tables(root: nn.Module) -> list:
    return [(module, dict(module.__dict__), dict(module._parameters), dict(module._buffers), dict(module._modules))
            for module in root.modules()]


def _put_back(saved: list, drop: Callable[[Any], bool]) -> None:
    """Put back the saved tables' values, deleting keys they lack whose value ``drop`` accepts."""
    for module, attributes, parameters, buffers, modules in saved:
        for table, before in ((module._parameters, parameters), (module._buffers, buffers),
                              (module._modules, modules), (module.__dict__, attributes)):
            for key in [k for k in table if k not in before and drop(table[k])]:
                del table[key]
            for key, value in before.items():
                if table.get(key, value) is not value or key not in table:
                    table[key] = value


@contextmanager
def unchanged_attributes(root: nn.Module) -> Iterator[SavedAttributes]:
    """On exit, put back every attribute, parameter, buffer and submodule of ``root``'s modules that
    the block reassigned, and drop new ones that hold a Proxy or a fake tensor. New real values stay:
    the tracer stores the constant tensors its graph reads on the root (``_tensor_constant0``...).
    Yields the saved state (``as_before`` shows it to code run inside the block)."""
    saved = SavedAttributes(root)
    try:
        yield saved
    finally:
        saved.restore()


def _symbolic(value: Any) -> bool:
    """A value made by tracing or by running on fake tensors."""
    return isinstance(value, (fx.Proxy, FakeTensor))


@contextmanager
def eval_mode(root: nn.Module) -> Iterator[None]:
    """Without gradients and in eval mode (BatchNorm statistics untouched, batch-size-1 inputs accepted), with
    every module's mode as it was afterwards (a model already in eval mode is not touched: setting modes costs
    more than the shape pass itself on small models)."""
    modes = {m: m.training for m in root.modules()}
    if any(modes.values()):
        root.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes.items():
            if module.training != mode:
                module.training = mode


@contextmanager
def evaluated(root: nn.Module) -> Iterator[None]:
    """Run ``root`` as the shape pass does: in :func:`eval_mode`, with its attributes as they were afterwards
    (:func:`unchanged_attributes`)."""
    with eval_mode(root), unchanged_attributes(root):
        yield
