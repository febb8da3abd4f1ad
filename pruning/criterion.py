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
means of ``pruning.compensation``). ``python -m benchmarks.criterion_overhead`` measures a calibration step
against a plain forward and backward pass (figures in the documentation's benchmarks pages).
"""
from __future__ import annotations

from types import TracebackType
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from .compensation import InputStatistics
from .tracing.state import refill

__all__ = ["LossAwareCriterion"]

_NO_BACKWARD = ("LossAwareCriterion saw no backward pass: inside the 'with' block compute a loss from the "
                "collector's output and call loss.backward()")


class _Site:
    """One parameter of the snapshot model and the slicings it takes part in.

    Each slicing is ``(dims to sum over, label_index)``: summing ``g*w`` over every dim but the sliced
    one leaves one value per slice, which ``label_index`` scatters onto its label.
    """

    def __init__(self, param: torch.Tensor) -> None:
        self.param = param
        self.slicings: list[tuple[list[int], torch.Tensor]] = []


class _KeptState:
    """The buffers and training flags of a model's modules, to put back: which tensor each buffer name holds
    and a copy of its values (a forward may update a buffer in place, as BatchNorm's running statistics, or
    assign a new tensor to it), and each module's ``training``. Costs a copy of every buffer, not of the
    parameters (a calibration pass does not change them)."""

    def __init__(self, root: nn.Module) -> None:
        self._modes = [(module, module.training) for module in root.modules()]
        self._buffers = [(module, dict(module._buffers)) for module in root.modules()]
        self._values = {id(buffer): (buffer, buffer.detach().clone())
                        for _, buffers in self._buffers for buffer in buffers.values() if buffer is not None}

    def restore(self) -> None:
        refill([(module._buffers, buffers) for module, buffers in self._buffers])
        with torch.no_grad():  # every one: kernels that update in place (batch_norm's) do not count a version
            for buffer, values in self._values.values():
                buffer.copy_(values)
        for module, training in self._modes:
            module.training = training


class Collector:
    """What every criterion shares: a context manager that runs the snapshot's model, records the input
    means (and with ``input_covariance`` the input covariances) of its compensable layers
    ([`pruning.compensation`][]) and, under ``torch.distributed``, sums what it recorded over the ranks on
    exit. Subclasses add their hooks and set ``snapshot.scores``.

    The model is left as it was: on exit, normal or by an exception, every buffer of its modules holds again
    the tensor and the values it held on entry (BatchNorm's running statistics and ``num_batches_tracked``
    after train-mode calls, and any state a forward keeps in a buffer, updated in place or assigned), buffers
    registered inside the block are dropped, and every module's train/eval mode is as it was. This keeps a copy
    of the buffers for the duration (not of the parameters, which calibration does not change). What is not
    put back: the gradients that ``backward`` accumulates in the parameters' ``.grad``, as any backward does,
    and attributes that are not buffers.

    ``input_covariance=True`` (an addition to ENOT's ``pruning_v2`` interface) also records, per convolution
    and linear layer that can mix its inputs, the covariance of its input channels, which ``ir.prune`` then
    uses for regression compensation: the pruned model starts much closer to the original. It costs a
    product of each layer's input with itself per forward (the work of a linear layer from its inputs to as
    many outputs: several times the layer itself where it narrows, as a transformer's second MLP layer
    does) and ``8 * in_channels^2`` bytes per layer, kept in the snapshot (and in a saved IR); ``python -m
    benchmarks.criterion_overhead --input-covariance`` measures the time. Off by default for that cost and
    for the memory (a 7B language model's layers would need tens of GiB)."""

    def __init__(self, ir: Any, snapshot_name: str = "main", *, input_covariance: bool = False) -> None:
        self.ir = ir
        self.snapshot_name = snapshot_name
        self.input_covariance = input_covariance
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._active = False
        self._hooked = False
        self._means: InputStatistics | None = None
        self._kept: _KeptState | None = None

    def __enter__(self) -> "Collector":
        if self._active:
            raise RuntimeError(f"{type(self).__name__} is already active; do not nest the same instance")
        self.snapshot = self.ir.snapshot(self.snapshot_name)
        self._kept = _KeptState(self.snapshot.root)
        self._reset()
        self._active = True
        if self.snapshot.analyzed:
            self._register_hooks()
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the snapshot's model on the inputs and return its output."""
        if not self._active:
            raise RuntimeError(f"call the collector inside its 'with {type(self).__name__}(ir) as collector:' block")
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
                self._finish()
        finally:
            if self._means is not None:
                self._means.detach()
                self._means = None
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._reset()
            self._active = self._hooked = False
            self._kept.restore()
            self._kept = None

    def _reset(self) -> None:
        """Forget what the subclass accumulated (on enter and after exit)."""

    def _finish(self) -> None:
        """On a normal exit: set the snapshot's scores and means (collectively, when distributed)."""
        raise NotImplementedError

    def _register_hooks(self) -> None:
        self._means = InputStatistics(self.snapshot, covariance=self.input_covariance)
        self._means.attach()
        self._hooked = True

    def _store_statistics(self, flat: torch.Tensor) -> None:
        """Set the snapshot's input means and covariances from ``_reduce``'s sums (``None`` where none
        were recorded: a recalibration without covariances drops those of an earlier one)."""
        means, covariances, samples = self._means.statistics(flat)
        self.snapshot.input_means = means
        self.snapshot.input_covariances = covariances or None
        self.snapshot.input_samples = samples or None

    def _reduce(self, head: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``head`` (a float64 vector of the subclass's totals) and the input sums (``InputStatistics.flat``),
        each summed over all ranks when a process group is up."""
        if not (dist.is_available() and dist.is_initialized()):
            return head, self._means.flat(head.device)
        nccl = dist.get_backend() == "nccl"  # nccl reduces CUDA tensors only; gloo and mixed groups take CPU ones
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        totals = torch.cat([head.to(device), self._means.flat(device)])
        dist.all_reduce(totals)
        return totals[:len(head)], totals[len(head):]


class LossAwareCriterion(Collector):
    """Context manager that collects group Taylor scores for the labels of one snapshot.

    ``with LossAwareCriterion(ir) as collector: out = collector(x); loss_fn(out, y).backward()``.
    ``collector(*args, **kwargs)`` runs ``ir.snapshot(snapshot_name).run(...)``. Each ``backward()``
    adds ``sum g*w`` per label into the current batch (gradients are read in tensor hooks, so ``.grad``
    and ``zero_grad`` do not matter); each new collector call, and the exit, closes the batch.
    On a normal exit ``snapshot.scores`` becomes a float64 CPU tensor ``[num_labels]``, and
    ``snapshot.input_means`` the mean of every input channel of each convolution and linear layer over
    the calibration forwards (what ``ir.prune`` folds into biases for the channels it removes, see
    [`pruning.compensation`][]), and with ``input_covariance=True`` ``snapshot.input_covariances`` their
    covariances (regression compensation); hooks are always removed, and the model's buffers and modes are put
    back (see [`Collector`][pruning.criterion.Collector]). Any mode (train/eval) and device work; the model is
    not moved.

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

    def _reset(self) -> None:
        self._batch: dict[torch.device, torch.Tensor] = {}
        self._sum_sq: torch.Tensor | None = None
        self._num_batches = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Close the previous batch, then run the snapshot's model on the inputs and return its output."""
        if self._active:
            self._fold_batch()
        return super().__call__(*args, **kwargs)

    def _finish(self) -> None:
        self._fold_batch()
        if self._means is None:  # never analysed: no labels, no hooks, so no backward either
            raise RuntimeError(_NO_BACKWARD)
        labels = self.snapshot.num_labels
        head = torch.zeros(labels + 1, dtype=torch.float64)
        if self._sum_sq is not None:
            head[:-1] = self._sum_sq.cpu()
        head[-1] = self._num_batches
        head, means = self._reduce(head)
        num_batches = int(head[-1].item())
        if num_batches == 0:
            raise RuntimeError(_NO_BACKWARD)
        self.snapshot.scores = (head[:-1] / num_batches).cpu()
        self._store_statistics(means)

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
        super()._register_hooks()

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
