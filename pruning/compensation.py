"""Compensation: make up, in the layers that lose input channels, for what the removed channels carried.

Removing input channel ``c`` of a layer that is affine in its input (convolution, linear) sets ``x_c``
to zero, so its contribution ``W[:, c] * x_c`` goes missing from every output: the next activations shift
and the normalisation statistics after them no longer fit. Two ways to replace ``x_c`` by what the
calibration data predicts for it:

- **mean** (``snapshot.input_means``, recorded by every criterion): ``x_c`` becomes its calibration mean::

      y = W_kept x_kept + (b + sum over removed c of W[:, c] * mean_c)

  exact for a channel that is constant on the data (a dead ReLU unit with a positive bias, say); otherwise
  it removes the mean part of the error and leaves the part that varies around it.
- **regression** (also ``snapshot.input_covariances``, recorded with ``input_covariance=True``): the
  removed channels ``x_R`` become their least-squares prediction from the kept ones at the same position,
  ``x_R ~ A x_K + c`` with ``A = cov(R, K) (cov(K, K) + ridge I)^-1`` and ``c = mean_R - A mean_K``, so::

      y = (W_K + W_R A) x_K + (b + W_R c)

  the kept weights absorb the part of the removed channels that the kept ones explain (a removed channel
  that copies or mixes kept ones is restored exactly, up to the ridge), and the bias takes the rest of the
  mean. It minimises the layer's output error on the calibration data over every choice of new weights of
  this form (the classic channel-pruning reconstruction, He et al. 2017, in closed form, one layer at a
  time on the unpruned model's inputs). ``ridge`` is ``RIDGE + SHRINK * kept / positions`` times the mean
  kept variance: it keeps ``A`` finite where kept channels are (nearly) collinear or dead, and shrinks it
  towards the mean where few calibration positions back many kept channels (a classifier's input, one row
  per image), where an unshrunk fit learns the calibration batches' noise and a held-out input then gets
  worse outputs than with the mean (seen on torchvision models calibrated on 16-96 images). Layers that
  cannot mix their inputs (grouped convolutions) or whose weight is tied to another tensor (a language
  model's head tied to its embedding) get the mean instead.

A convolution applies the substitution at every position of its kernel, exact away from zero-padded
borders. Where a layer without a bias feeds only a BatchNorm, the bias change goes into that norm's running
mean (no new parameter); any other layer without a bias gets one (``pruning.replay`` records which).

The statistics are recorded by the criteria ([`InputStatistics`][]) during calibration, over every call
of each layer in the mode the model is calibrated in (a layer called several times gets one mean and one
covariance over all calls). Which layers take part is the op rules' knowledge
(``Rule.input_channel_dim``/``output_shift``/``mixes_inputs``/``mixed_weight``).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import fx, nn

from .nodes import is_size

if TYPE_CHECKING:  # pragma: no cover
    from .ir import Snapshot


def _compensable(snapshot: "Snapshot") -> list[tuple[fx.Node, nn.Module, Any, int]]:
    """(node, module, rule, input channel dim) of every module call whose rule can be compensated,
    first call of each module only, in graph order."""
    analysis = snapshot.analysis
    modules = dict(snapshot._root.named_modules())
    found, seen = [], set()
    for node in snapshot.graph.nodes:
        rule = analysis.module_rules.get(node.target) if node.op == "call_module" else None
        if rule is None or node.target in seen or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        shape = analysis.shapes.get(node.args[0].name)
        dim = rule.input_channel_dim(modules[node.target], shape) if is_size(shape) else None
        if dim is not None:
            seen.add(node.target)
            found.append((node, modules[node.target], rule, dim))
    return found


class InputStatistics:
    """Sums of every input channel of the snapshot's compensable layers, and with ``covariance`` the sums of
    their products (``x^T x`` over every position) where the layer can mix its inputs, over the forward
    passes made between [`attach`][] and [`detach`][] (forward pre-hooks; no gradient is involved).

    The products cost the work of a linear layer from a layer's inputs to as many outputs per call, and
    ``8 * in_channels^2`` bytes per layer (float64): 32 MiB for a 2048-channel layer."""

    def __init__(self, snapshot: "Snapshot", covariance: bool = False) -> None:
        shapes = snapshot.analysis.shapes
        uses: dict[int, int] = {}
        for _, param in snapshot._root.named_parameters(remove_duplicate=False):
            uses[id(param)] = uses.get(id(param), 0) + 1
        #: (target, module, rule, input channels, products recorded) per layer, in graph order (the same on
        #: every rank)
        self.layers = [(node.target, module, rule, shapes[node.args[0].name][dim],
                        covariance and rule.mixes_inputs(module) and uses.get(id(module.weight)) == 1)
                       for node, module, rule, dim in _compensable(snapshot)]
        self.sums: dict[str, torch.Tensor] = {}
        self.products: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self) -> None:
        """Start recording: a forward pre-hook on every compensable layer."""
        for target, module, rule, _, products in self.layers:
            self._handles.append(module.register_forward_pre_hook(self._make_hook(target, rule, products)))

    def detach(self) -> None:
        """Stop recording: remove the hooks (what was recorded stays)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(self, target: str, rule: Any, products: bool):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor):
                return
            dim = rule.input_channel_dim(module, x.shape)
            with torch.no_grad():
                # summed in float32 at least (float64 would cost ~8% of a resnet50 calibration step on CPU),
                # accumulated over batches in float64
                x = x.detach()
                if products:  # float64 sums: the covariance subtracts their square from the products'
                    sums, square = _moments(x.movedim(dim, -1).reshape(-1, x.shape[dim]))
                    self._add(self.products, target, square)
                else:
                    low = x.dtype in (torch.float16, torch.bfloat16)
                    sums = x.sum(dim=[d for d in range(x.dim()) if d != dim], dtype=torch.float32 if low else None)
                self._add(self.sums, target, sums.double())
            self.counts[target] = self.counts.get(target, 0) + x.numel() // max(x.shape[dim], 1)

        return hook

    @staticmethod
    def _add(totals: dict[str, torch.Tensor], target: str, value: torch.Tensor) -> None:
        totals[target] = value if target not in totals else totals[target] + value.to(totals[target])

    def flat(self, device: torch.device) -> torch.Tensor:
        """Sums of every layer (zeros for one not called), then the products, then the counts, in one
        float64 vector: what a distributed run all-reduces."""
        def part(totals: dict[str, torch.Tensor], target: str, size: int) -> torch.Tensor:
            return (totals[target].flatten().to(device) if target in totals
                    else torch.zeros(size, dtype=torch.float64, device=device))

        sums = [part(self.sums, t, n) for t, _, _, n, _ in self.layers]
        products = [part(self.products, t, n * n) for t, _, _, n, p in self.layers if p]
        counts = torch.tensor([float(self.counts.get(t, 0)) for t, _, _, _, _ in self.layers], dtype=torch.float64,
                              device=device)
        return torch.cat(sums + products + [counts])

    def statistics(self, flat: torch.Tensor
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, int]]:
        """Per layer target, from a [`flat`][] vector (possibly summed over ranks): the mean of each input
        channel, and where products were recorded the channels' covariance matrix (both float64, CPU) and
        the number of positions it was estimated from; layers never called are left out."""
        flat = flat.cpu()
        counts = flat[len(flat) - len(self.layers):].tolist()
        means, covariances, samples, start = {}, {}, {}, 0
        for (target, _, _, channels, _), count in zip(self.layers, counts):
            if count > 0:
                means[target] = flat[start:start + channels] / count
            start += channels
        for (target, _, _, channels, products), count in zip(self.layers, counts):
            if not products:
                continue
            if count > 0:
                mean = means[target]
                covariances[target] = (flat[start:start + channels * channels].view(channels, channels) / count
                                       - torch.outer(mean, mean))
                samples[target] = int(count)
            start += channels * channels
        return means, covariances, samples


def _moments(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The column sums and ``rows^T rows`` of one batch's rows, in float64; the products from the centred
    rows (a float32 product at most) plus the product of their mean: raw float32 products (or float32
    sums) lose a channel's variance to rounding where it is small against its mean (a near-constant
    channel, a squeeze-and-excitation block's pooled input), and the regression then solves with noise."""
    rows = rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows
    sums = rows.sum(0, dtype=torch.float64)
    mean = sums / max(len(rows), 1)
    centred = rows - mean.to(rows.dtype)
    return sums, (centred.T @ centred).double() + len(rows) * torch.outer(mean, mean)


#: ridge of the regression, relative to the mean variance of the kept channels
RIDGE = 1e-3
#: more ridge where the covariance rests on few positions per kept channel: ``SHRINK * kept / positions``
SHRINK = 0.25
#: what ``ir.prune(compensate=...)`` takes besides True/False/None
METHODS = ("mean", "regression")


@dataclasses.dataclass
class Compensation:
    """What [`plan`][] changes: ``shifts`` are ``(module target, attribute, value over the kept output
    channels)`` added once the model is sliced (a ``bias``, or a BatchNorm's ``running_mean``); ``weights``
    are new values of whole (unsliced) weights by parameter name, sliced in place of the old ones."""

    shifts: list[tuple[str, str, torch.Tensor]]
    weights: dict[str, torch.Tensor]


def method(snapshot: "Snapshot", compensate: bool | str | None) -> str | None:
    """The compensation ``ir.prune(compensate=...)`` asks for on ``snapshot``: ``None`` (the default) picks
    the best the snapshot's statistics allow (regression with covariances, else mean with means, else
    none); ``True`` the same, but a snapshot without means is an error; ``False`` none; ``"mean"`` or
    ``"regression"`` that one (regression needs the covariances)."""
    if compensate is None or compensate is True:
        if snapshot.input_covariances:
            return "regression"
        if snapshot.input_means is not None:
            return "mean"
        if compensate is None:
            return None
        raise ValueError(
            f"snapshot {snapshot.name!r} has no calibration means to compensate with: calibrate with "
            "LossAwareCriterion (or call a MagnitudeCriterion on inputs) first, or prune with compensate=False")
    if compensate is False:
        return None
    if compensate not in METHODS:
        raise ValueError(f"compensate must be None, True, False, 'mean' or 'regression', got {compensate!r}")
    if compensate == "regression" and not snapshot.input_covariances:
        raise ValueError(
            f"compensate='regression' needs the input covariances of snapshot {snapshot.name!r}: calibrate with "
            "LossAwareCriterion(ir, input_covariance=True) (or MagnitudeCriterion(ir, input_covariance=True) "
            "called on inputs), or prune with compensate='mean'")
    return compensate


def regression(covariance: torch.Tensor, kept: np.ndarray, removed: np.ndarray, samples: int) -> torch.Tensor:
    """``A`` (removed x kept): the ridge least-squares prediction of the removed channels from the kept ones,
    from their ``covariance`` (float64) estimated over ``samples`` positions."""
    kk = covariance[np.ix_(kept, kept)]
    shrink = RIDGE + SHRINK * len(kept) / max(samples, 1)
    ridge = shrink * kk.diagonal().mean().clamp_min(torch.finfo(torch.float64).tiny) if len(kept) else 0.0
    return torch.linalg.solve(kk + ridge * torch.eye(len(kept), dtype=kk.dtype), covariance[np.ix_(kept, removed)]).T


def plan(snapshot: "Snapshot", keep_label: np.ndarray, how: str = "mean") -> Compensation:
    """What compensation (``how``: ``"mean"`` or ``"regression"``, see the module docstring) changes in each
    layer that loses input channels, computed from the unpruned weights.

    A bias change goes to the layer's ``bias``, except where the layer has none and its output goes only into
    a BatchNorm (each called once): that norm's ``running_mean`` takes it instead (subtracted, which is the
    same in eval mode; in train mode a BatchNorm removes any constant shift anyway), so the pruned model gets
    no new parameter and no extra add.
    """
    analysis = snapshot.analysis
    keep_id = keep_label[analysis.label_of_id]
    means = snapshot.input_means
    covariances = (snapshot.input_covariances or {}) if how == "regression" else {}
    samples = snapshot.input_samples or {}
    modules = dict(snapshot._root.named_modules())
    calls: dict[str, int] = {}
    for node in snapshot.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    out = Compensation([], {})
    for node, module, rule, dim in _compensable(snapshot):
        in_ids = analysis.node_ids.get(node.args[0].name) or ()
        in_ids = in_ids[dim] if len(in_ids) > dim else None
        if in_ids is None or keep_id[in_ids].all():
            continue
        if means is None or node.target not in means:
            raise ValueError(
                f"layer '{node.target}' loses input channels but snapshot {snapshot.name!r} has no calibration "
                "mean for its inputs: calibrate with LossAwareCriterion (or call a MagnitudeCriterion on "
                "inputs) first, or prune with compensate=False")
        removed = ~keep_id[in_ids]
        constant = means[node.target] * torch.from_numpy(removed)
        if node.target in covariances:
            kept, gone = np.flatnonzero(~removed), np.flatnonzero(removed)
            predict = regression(covariances[node.target], kept, gone, samples[node.target])
            mix = torch.eye(len(removed), dtype=torch.float64)
            mix[gone] = 0.0
            mix[np.ix_(gone, kept)] = predict
            out.weights[f"{node.target}.weight"] = rule.mixed_weight(module, mix.to(module.weight.device))
            constant[gone] = means[node.target][gone] - predict @ means[node.target][kept]
        shift = rule.output_shift(module, constant)
        out_ids = analysis.node_ids.get(node.name) or ()
        out_ids = out_ids[dim] if len(out_ids) > dim else None
        if out_ids is not None:
            shift = shift[torch.from_numpy(keep_id[out_ids])]
        norm = _sole_batchnorm(node, dim, modules, calls) if module.bias is None else None
        out.shifts.append((node.target, "bias", shift) if norm is None else (norm, "running_mean", -shift))
    return out


def _sole_batchnorm(node: fx.Node, dim: int, modules: dict[str, nn.Module], calls: dict[str, int]) -> str | None:
    """The target of the BatchNorm that alone takes ``node``'s output over the same channel dim (both
    called once), or None."""
    users = list(node.users)
    if len(users) != 1 or calls[node.target] != 1:
        return None
    user = users[0]
    norm = modules.get(user.target) if user.op == "call_module" else None
    if (not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.running_mean is None or dim != 1
            or calls[user.target] != 1 or user.args[:1] != (node,)):
        return None
    return user.target


def apply(shifts: list[tuple[str, str, torch.Tensor]], module_of) -> None:
    """Add a [`plan`][]'s shifts to the sliced modules (``module_of(target)``); a layer without a bias
    that is planned one gets it."""
    with torch.no_grad():
        for target, attribute, value in shifts:
            module = module_of(target)
            if attribute == "bias":
                add_to_bias(module, value)
            else:
                getattr(module, attribute).add_(value.to(getattr(module, attribute)))


def add_to_bias(module: nn.Module, shift: torch.Tensor) -> None:
    """Add ``shift`` to ``module.bias``, giving the module a bias if it has none."""
    with torch.no_grad():
        if module.bias is None:
            module.bias = nn.Parameter(shift.to(module.weight).clone(), requires_grad=module.weight.requires_grad)
        else:
            module.bias.add_(shift.to(module.bias))
