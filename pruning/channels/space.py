"""Channel ids and the equivalences between them.

Every prunable dimension met during propagation (an output channel of a convolution, a feature of a
linear layer, a dimension of a bare parameter) gets fresh integer ids, one per element. Rules record
that two ids must be pruned together (``merge``) or must never be pruned (``block``). At the end the
connected components of the merge graph are the *labels*; a label containing a blocked id is
unprunable. Everything is kept as flat numpy arrays so that a whole channel axis is one call.
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


class ChannelSpace:
    """Allocates channel ids and records merges and blocks between them."""

    def __init__(self) -> None:
        self.size = 0
        self._merge_a: list[np.ndarray] = []
        self._merge_b: list[np.ndarray] = []
        self._blocked: list[np.ndarray] = []
        #: what was being propagated (``current``) at each ``block`` call
        self.block_causes: list[object] = []
        #: what is being propagated (a graph node)
        self.current: object = None
        self._normalized: list[np.ndarray] = []

    def fresh(self, count: int) -> np.ndarray:
        """Return ``count`` new ids."""
        ids = np.arange(self.size, self.size + count, dtype=np.int64)
        self.size += count
        return ids

    def merge(self, a: np.ndarray, b: np.ndarray) -> None:
        """Require ``a[i]`` and ``b[i]`` to be pruned together (``b`` may broadcast)."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        if a.shape != b.shape:
            a, b = np.broadcast_arrays(a, b)
        self._merge_a.append(a.ravel())
        self._merge_b.append(b.ravel())

    def block(self, ids: np.ndarray) -> None:
        """Forbid pruning of the labels that contain any of ``ids``."""
        self._blocked.append(np.asarray(ids, dtype=np.int64).ravel())
        self.block_causes.append(self.current)

    def normalized(self, ids: np.ndarray) -> None:
        """Note that ``ids`` enter statistics over channels (LayerNorm): removing them is not exact."""
        self._normalized.append(np.asarray(ids, dtype=np.int64).ravel())

    def components(self) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
        """Return (label of each id, number of labels, blocked flag, normalized flag per label).

        Labels are numbered in order of their smallest id, so numbering is deterministic.
        """
        n = self.size
        if self._merge_a:
            a = np.concatenate(self._merge_a)
            b = np.concatenate(self._merge_b)
        else:
            a = b = np.zeros(0, dtype=np.int64)
        # float64 CSR is the form connected_components works on; handing it over avoids its own
        # (slower) conversion from other layouts and dtypes.
        graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)).tocsr()
        count, comp = connected_components(graph, directed=False)
        label = comp.astype(np.int64, copy=False)
        # Number components by their first (smallest) id for a stable, readable order. scipy's
        # search already numbers them so (it starts from ids in ascending order); renumber only if
        # a future version does not: each id's label may exceed the labels before it by one at most.
        if n and (label[0] != 0 or (label[1:] > np.maximum.accumulate(label)[:-1] + 1).any()):
            first = np.full(count, n, dtype=np.int64)
            np.minimum.at(first, label, np.arange(n))
            rank = np.empty(count, dtype=np.int64)
            rank[np.argsort(first, kind="stable")] = np.arange(count)
            label = rank[label]
        return label, count, self._flags(label, count, self._blocked), self._flags(
            label, count, self._normalized)

    def first_blocks(self, label: np.ndarray, count: int) -> np.ndarray:
        """For each label, the number of the first ``block`` call that fixed it (-1: none); ``block_causes``
        holds what was being propagated at each call, so a report can say what keeps channels whole."""
        first = np.full(count, len(self._blocked), dtype=np.int64)
        if self._blocked:
            calls = np.repeat(np.arange(len(self._blocked)), [len(ids) for ids in self._blocked])
            np.minimum.at(first, label[np.concatenate(self._blocked)], calls)
        first[first == len(self._blocked)] = -1
        return first

    @staticmethod
    def _flags(label: np.ndarray, count: int, marked: list[np.ndarray]) -> np.ndarray:
        flags = np.zeros(count, dtype=bool)
        if marked:
            flags[label[np.concatenate(marked)]] = True
        return flags
