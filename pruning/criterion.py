"""LossAwareCriterion: calibrate label scores with the group Taylor estimate of the loss change.

Score of a label (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning"):

    score(l) = mean over batches b of ( sum_{w owned by l} dL_b/dw * w )^2

Removing a label sets every weight it owns (producer filters, their bias and norm parameters, the
consumer's input slices; all coupled channels of its group) to zero. To first order that changes the
batch loss by ``-sum g*w`` over exactly those weights, so the inner sum is the estimated loss change of
that removal. It is squared per batch (the sign is noise around a trained minimum; its magnitude is what
matters) and averaged over batches, so the score is in units of loss^2 and means the same thing in every
layer: no per-layer normalisation is applied, because one would rescale a real loss change and break
the cross-layer comparison that global and knapsack selection rely on. Only parameters contribute
(buffers have no gradient); a label owning no parameter with a gradient scores exactly 0, and so does a
dead channel whose weights are all zero or whose activation is always zero.

Cost: per backward, one ``g*w`` product, one reduction per slicing and one ``index_add_`` per parameter,
about the memory traffic of an optimizer step; per forward, one channel sum of each conv/linear input (the
means of ``pruning.compensation``). ``benchmarks/criterion_overhead.py`` (CPU, 2 threads, batch 8, median
of 5, process CPU time, 26 Nov 2026): calibration step / plain forward+backward = 1.009 on resnet50 and
1.006 on vit_b_16, under the 1.2x budget.
"""
from __future__ import annotations

from types import TracebackType
from typing import Any, Callable

import torch
import torch.distributed as dist

from .compensation import InputMeans

__all__ = ["LossAwareCriterion"]


class _Site:
    """One parameter of the snapshot model and the slicings it takes part in.

    Each slicing is ``(dims to sum over, label_index)``: summing ``g*w`` over every dim but the sliced
    one leaves one value per slice, which ``label_index`` scatters onto its label.
    """

    def __init__(self, param: torch.Tensor) -> None:
        self.param = param
        self.slicings: list[tuple[list[int], torch.Tensor]] = []


class LossAwareCriterion:
    """Context manager that collects group Taylor scores for the labels of one snapshot.

    ``with LossAwareCriterion(ir) as collector: out = collector(x); loss_fn(out, y).backward()``.
    ``collector(*args, **kwargs)`` runs ``ir.snapshot(snapshot_name).run(...)``. Each ``backward()``
    adds ``sum g*w`` per label into the current batch (gradients are read in tensor hooks, so ``.grad``
    and ``zero_grad`` do not matter); each new collector call, and the exit, closes the batch.
    On a normal exit ``snapshot.scores`` becomes a float64 CPU tensor ``[num_labels]``, and
    ``snapshot.input_means`` the mean of every input channel of each convolution and linear layer over
    the calibration forwards (what ``ir.prune`` folds into biases for the channels it removes, see
    :mod:`pruning.compensation`); hooks are always removed. Any mode (train/eval) and device work; the
    model is not moved.

    Distributed (``torch.distributed`` initialized): every rank runs its own collector over its shard of
    the calibration batches, calling ``collector(x)`` as above. The collector runs the snapshot model
    directly, so wrapping ``ir.snapshot().model`` in ``DistributedDataParallel`` is optional and its gradient
    averaging is bypassed (calibration takes no optimizer step; the hooks read each rank's own gradients).
    On exit the squared sums and batch counts are all-reduced (SUM), so every rank holds the scores one
    process would compute over the union of the shards, batch for batch. The all-reduce is a collective:
    it runs only on a normal exit and every rank must reach it (a rank with an empty shard is fine if its
    snapshot is analysed, e.g. ``PruningIR(model, example_input=x)``). A rank that leaves with an exception
    skips it and re-raises; the other ranks then wait in the all-reduce until the process group's timeout,
    or until ``torchrun`` stops them when that rank's process exits.
    """

    def __init__(self, ir: Any, snapshot_name: str = "main") -> None:
        self.ir = ir
        self.snapshot_name = snapshot_name
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._batch: dict[torch.device, torch.Tensor] = {}
        self._sum_sq: torch.Tensor | None = None
        self._num_batches = 0
        self._active = False
        self._hooked = False
        self._means: InputMeans | None = None

    def __enter__(self) -> "LossAwareCriterion":
        if self._active:
            raise RuntimeError("LossAwareCriterion is already active; do not nest the same instance")
        self.snapshot = self.ir.snapshot(self.snapshot_name)
        self._batch, self._sum_sq, self._num_batches = {}, None, 0
        self._active = True
        if self.snapshot.analyzed:
            self._register_hooks()
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Close the previous batch, then run the snapshot's model on the inputs and return its output."""
        if not self._active:
            raise RuntimeError("call the collector inside its 'with LossAwareCriterion(ir) as collector:' block")
        self._fold_batch()
        if not self._hooked:  # labels exist only once the snapshot has seen an input
            self.snapshot.analyze(*args, **kwargs)
            self._register_hooks()
        return self.snapshot.run(*args, **kwargs)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._fold_batch()
                sum_sq, num_batches, means = self._totals() if self._means is not None else (None, 0, None)
                if num_batches == 0:
                    raise RuntimeError(
                        "LossAwareCriterion saw no backward pass: inside the 'with' block compute a loss "
                        "from the collector's output and call loss.backward()"
                    )
                self.snapshot.scores = (sum_sq / num_batches).cpu()
                self.snapshot.input_means = self._means.means(means)
        finally:
            if self._means is not None:
                self._means.detach()
                self._means = None
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._batch, self._sum_sq = {}, None
            self._active = self._hooked = False

    def _totals(self) -> tuple[torch.Tensor | None, int, torch.Tensor]:
        """The squared-sum accumulator, the batch count and the input sums (``InputMeans.flat``), summed
        over all ranks when a process group is up."""
        if not (dist.is_available() and dist.is_initialized()):
            return self._sum_sq, self._num_batches, self._means.flat(torch.device("cpu"))
        nccl = dist.get_backend() == "nccl"  # nccl reduces CUDA tensors only; gloo and mixed groups take CPU ones
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        labels = self.snapshot.num_labels
        totals = torch.zeros(labels + 1, dtype=torch.float64, device=device)
        if self._sum_sq is not None:
            totals[:-1] = self._sum_sq
        totals[-1] = self._num_batches
        totals = torch.cat([totals, self._means.flat(device)])
        dist.all_reduce(totals)
        return totals[:labels], int(totals[labels].item()), totals[labels + 1:]

    def _register_hooks(self) -> None:
        model = self.snapshot.model
        params = dict(model.named_parameters(remove_duplicate=False))
        sites: dict[int, _Site] = {}
        for ps in self.snapshot.param_sites:
            param = params.get(ps.name)
            if param is None or not param.requires_grad:  # buffers and frozen weights have no gradient
                continue
            site = sites.setdefault(id(param), _Site(param))
            index = torch.as_tensor(ps.label_index, dtype=torch.long, device=param.device)
            site.slicings.append(([d for d in range(param.dim()) if d != ps.dim], index))
        self._num_labels = self.snapshot.num_labels
        for site in sites.values():
            self._handles.append(site.param.register_hook(self._make_hook(site)))
        self._means = InputMeans(self.snapshot)
        self._means.attach()
        self._hooked = True

    def _make_hook(self, site: _Site) -> Callable[[torch.Tensor], None]:
        param = site.param

        def hook(grad: torch.Tensor) -> None:
            with torch.no_grad():
                gw = grad * param
                acc = self._batch.get(gw.device)
                if acc is None:
                    acc = self._batch[gw.device] = torch.zeros(self._num_labels, device=gw.device)
                for other, index in site.slicings:
                    per_slice = gw.sum(dim=other) if other else gw
                    acc.index_add_(0, index, per_slice.float())

        return hook

    def _fold_batch(self) -> None:
        """Add the finished batch's squared per-label sums to the running total."""
        if not self._batch:
            return
        accs = list(self._batch.values())
        total = accs[0].double()
        for acc in accs[1:]:
            total = total + acc.double().to(total.device)
        self._sum_sq = total.square() if self._sum_sq is None else self._sum_sq + total.square()
        self._num_batches += 1
        self._batch = {}
