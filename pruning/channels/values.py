"""Values that flow through propagation besides per-dim channel ids."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SizeOf:
    """The value of a size read from a tensor (``x.shape``, ``x.size(1)``, or arithmetic on them):
    the channel ids of the dims it was read from. An op whose output shape follows such a size would
    go wrong if those channels were pruned, unless its rule rewrites the size (reshapes do)."""

    ids: tuple
    scalar: bool
