"""Containers traced as the example input makes them: iterating an input list, outputs of opaque calls.

fx gives one Proxy for a whole input or a whole output of an opaque call (a leaf module), so common
patterns fail or mislead while tracing:

- ``for image in images:`` over a list input (torchvision's detection models take a list of images)
  cannot iterate a Proxy. With an example input the tracer knows the list's length: it iterates that
  many items, and the graph asserts the length (``size_count``), as for a shape's number of dims.
- ``if state is not None:`` on an output of an opaque module is always true while tracing, since a Proxy
  is not None, although the module returns None for the example (RWKV's state; the targets a detection
  transform returns in eval mode); ``if "masks" in prediction:`` on a dict it returns cannot be traced.
  So the tracer hands the traced code an opaque module's output as the example's output is made: its
  tuples, lists and dicts (exact types) as such, with the None in place, and traced values for the rest.
  The graph asserts what was decided: each None (:func:`is_none`), each sequence's length and each dict's
  keys (:func:`keys_of`), so no other input silently takes another branch.

:func:`is_none` and :func:`keys_of` are graph ops for the reason of :func:`pruning.tracing.sizes.size_count`:
fx traces a GraphModule's code again when unpickling it, and a Python ``is`` on a traced value cannot be
traced.
"""
from __future__ import annotations

import collections
from typing import Any

#: Containers whose items the tracer hands out one by one (their exact types: a subclass may mean more).
SEQUENCES = (tuple, list)
MAPPINGS = (dict, collections.OrderedDict)


def is_none(value: Any) -> bool:
    """``value is None``, as a graph op (the guard of an opaque call's None output)."""
    return value is None


def keys_of(mapping: Any) -> tuple:
    """The keys of a dict in order, as a graph op (the guard of an opaque call's dict output)."""
    return tuple(mapping)


#: Functions the tracer records as graph ops, whenever it traces.
STRUCTURE_GUARDS = (is_none, keys_of)
