"""Keep a model as it was across tracing and the shape pass.

Some forwards cache tensors on their modules (attention masks, relative position indices, rotary
tables: ``if self.cache is None: self.cache = ...``), or in a container a module holds (timm's LeViT and
EfficientFormer fill ``self.attention_bias_cache[str(x.device)]`` in eval mode). Tracing would leave an
fx Proxy there and the shape pass a fake tensor: the user's model would then fail on its next real call,
and a later trace would read the earlier trace's Proxy (its key, ``str`` of a Proxy, names a node, and the
next trace's node has the same name) and build a graph that refers to another graph's node. Both run
inside :func:`unchanged_attributes`, which also puts back the contents of the dicts, lists and sets that
the modules' attributes hold (and those nested in them).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensor


#: The attributes every ``nn.Module`` has (its tables of parameters, buffers, hooks...): not a model's own state.
_MODULE_TABLES = frozenset(vars(nn.Module()))
_CONTAINERS = (dict, list, set)
_MISSING = object()


class SavedAttributes:
    """Every attribute, parameter, buffer and submodule of a model's modules, and the contents of the
    containers their attributes hold, as they were when made."""

    def __init__(self, root: nn.Module) -> None:
        self._root, self._saved, self._contents = root, _tables(root), _contents(root)

    def restore(self) -> None:
        """Put back every value reassigned since, drop new ones that hold a Proxy or a fake tensor, and put
        back the saved containers' contents (what a forward added to a cache goes, whatever it holds)."""
        _put_back(self._saved, drop=_symbolic)
        refill(self._contents)

    @contextmanager
    def as_before(self) -> Iterator[None]:
        """The saved values for the duration, then the current ones again, without what the block added
        (the size oracle runs the model's code while it is traced, and a forward that reassigned
        ``self.table`` has left a Proxy there)."""
        current, contents = _tables(self._root), _contents(self._root)
        self.restore()
        try:
            yield
        finally:
            _put_back(current, drop=lambda value: True)
            refill(contents)


def _tables(root: nn.Module) -> list:
    return [(module, dict(module.__dict__), dict(module._parameters), dict(module._buffers), dict(module._modules))
            for module in root.modules()]


def _contents(root: nn.Module) -> list[tuple[Any, Any]]:
    """``(container, copy of its contents)`` for every dict, list and set that an attribute of one of
    ``root``'s modules holds, directly or nested in another such container."""
    found: dict[int, tuple[Any, Any]] = {}
    stack = [value for module in root.modules() for key, value in module.__dict__.items()
             if key not in _MODULE_TABLES and isinstance(value, _CONTAINERS)]
    while stack:
        container = stack.pop()
        if id(container) in found:
            continue
        found[id(container)] = (container, dict(container) if isinstance(container, dict) else list(container))
        items = container.values() if isinstance(container, dict) else container
        stack += [item for item in items if isinstance(item, _CONTAINERS)]
    return list(found.values())


def refill(contents: list[tuple[Any, Any]]) -> None:
    """Give every container the saved contents again, where they differ (compared by identity: ``==`` on a
    tensor or a Proxy is no truth value)."""
    for container, before in contents:
        if isinstance(container, dict):
            if len(container) != len(before) or any(container.get(k, _MISSING) is not v for k, v in before.items()):
                container.clear()
                container.update(before)
        elif len(container) != len(before) or any(a is not b for a, b in zip(container, before)):
            if isinstance(container, list):
                container[:] = before
            else:
                container.clear()
                container.update(before)


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
