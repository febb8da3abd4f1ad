"""MagnitudeCriterion: data-free label scores from the weights each label owns.

Score of a label: the squared L2 norm of every parameter element it owns (the producers' filters, their
biases and norm weights, the consumers' input slices, for all channels coupled in its group), divided by
the mean of that norm over its group. So 1.0 is an average channel of its layer and a channel whose
weights are all zero scores 0.

Why relative: raw norms are not comparable across layers (fan-in, initialisation, weight decay and the
normalisation after a layer set their scale), so ``GlobalScoreLabelSelector`` and
``KnapsackLabelSelector`` compare how weak a channel is *within its layer*; ``UniformLabelSelector``
ranks within groups only and sees the same order as with raw norms. Loss-aware scores
([`LossAwareCriterion`][]) are the ones that compare layers by what their removal costs.
Pair it with the uniform (or global) selector: the knapsack trades a channel's score against its cost, and
relative norms carry no cost information, so it can nearly empty a layer (measured in the documentation's
benchmarks, "Calibration and selection").

The criterion needs no loss and no data: on an analysed IR (``PruningIR(model, example_input=x)``) an
empty ``with MagnitudeCriterion(ir): pass`` scores it. Forward passes through the collector (no backward)
record the input means that ``ir.prune`` folds into biases ([`pruning.compensation`][]); without them
it prunes plainly.
"""
from __future__ import annotations

from typing import Any

import torch

from .criterion import Collector

__all__ = ["MagnitudeCriterion"]


def magnitude_scores(snapshot: Any) -> torch.Tensor:
    """Per label: squared L2 norm of the parameter elements it owns over its group's mean (float64, CPU)."""
    params = dict(snapshot.model.named_parameters(remove_duplicate=False))
    norms = torch.zeros(snapshot.num_labels, dtype=torch.float64)
    with torch.no_grad():
        for site in snapshot.param_sites:
            param = params.get(site.name)
            if param is None:  # a buffer (running statistics): not a weight
                continue
            squares = param.detach().float().square()
            per_slice = squares.sum(dim=[d for d in range(param.dim()) if d != site.dim]) if param.dim() > 1 else squares
            norms.index_add_(0, torch.as_tensor(site.label_index, dtype=torch.long), per_slice.double().cpu())
    scores = norms.clone()
    for group in snapshot.analysis.groups:
        index = torch.as_tensor(group, dtype=torch.long)
        mean = norms[index].mean()
        if mean > 0:
            scores[index] = norms[index] / mean
    return scores


class MagnitudeCriterion(Collector):
    """Context manager that scores the labels of one snapshot by the magnitude of their weights.

    ``with MagnitudeCriterion(ir) as collector: collector(x)`` (any number of calls, none included).
    ``collector(*args, **kwargs)`` runs ``ir.snapshot(snapshot_name).run(...)`` without autograd and
    returns its output; the calls only record input means. On a normal exit ``snapshot.scores`` becomes
    the relative weight norms (see the module docstring; they are read from the weights at exit) and
    ``snapshot.input_means`` the calibration means of the calls (``None`` when there were none, so
    ``ir.prune`` then prunes without compensation); hooks are always removed, and the model's buffers and modes
    are put back (see [`Collector`][pruning.criterion.Collector]). Any mode and device.

    The snapshot must have labels: build the IR with ``example_input`` or call the collector once;
    otherwise the exit raises. Distributed (``torch.distributed`` initialized): every rank calls the
    collector on its shard and the means are all-reduced on exit, a collective every rank must reach,
    as with [`LossAwareCriterion`][].
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return super().__call__(*args, **kwargs)

    def _finish(self) -> None:
        if self._means is None:
            raise RuntimeError(
                f"snapshot {self.snapshot_name!r} has no labels yet: build the IR with example_input "
                "(PruningIR(model, example_input=x)) or call the collector on an input inside the 'with' block"
            )
        _, means = self._reduce(torch.zeros(0, dtype=torch.float64))
        self.snapshot.scores = magnitude_scores(self.snapshot)
        self._store_statistics(means)
        self.snapshot.input_means = self.snapshot.input_means or None
