"""Keep a model as it was across tracing and the shape pass.

Some forwards cache tensors on their modules (attention masks, relative position indices, rotary
tables: ``if self.cache is None: self.cache = ...``). Tracing would leave an fx Proxy there and the
shape pass a fake tensor, and the user's model would then fail on its next real call. Both run inside
:func:`unchanged_attributes`, which puts every module's attributes, parameters, buffers and submodules
back as they were.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def unchanged_attributes(root: nn.Module) -> Iterator[None]:
    """On exit, undo every attribute, parameter, buffer and submodule assignment made on ``root``'s
    modules inside the block (values are restored as the same objects; tensors changed in place are
    not copied back, which neither pass does)."""
    saved = [(module, dict(module.__dict__), dict(module._parameters), dict(module._buffers), dict(module._modules))
             for module in root.modules()]
    try:
        yield
    finally:
        for module, attributes, parameters, buffers, modules in saved:
            for table, before in ((module._parameters, parameters), (module._buffers, buffers),
                                  (module._modules, modules), (module.__dict__, attributes)):
                if table.keys() != before.keys() or any(table[k] is not v for k, v in before.items()):
                    table.clear()
                    table.update(before)
