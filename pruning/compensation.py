"""Mean compensation: fold the calibration mean of removed input channels into the consumer's bias.

Removing input channel ``c`` of a layer that is affine in its input (convolution, linear) sets ``x_c``
to zero, so its average contribution ``W[:, c] * mean(x_c)`` goes missing from every output: the next
activations shift and the normalisation statistics after them no longer fit. Pruning with compensation
replaces ``x_c`` by its calibration mean instead::

    y = W_kept x_kept + (b + sum over removed c of W[:, c] * mean_c)

For a channel that is constant on the data (a dead ReLU unit with a positive bias, say) this is exact;
otherwise it removes the mean part of the error and leaves the part that varies around it. A
convolution applies the full kernel sum, exact away from zero-padded borders. Where a layer without a bias
feeds only a BatchNorm, the shift goes into that norm's running mean (no new parameter); any other layer
without a bias gets one (``pruning.replay`` records which).

The means are recorded by :class:`pruning.LossAwareCriterion` during calibration (``InputMeans``), over
every call of each layer in the mode the model is calibrated in (a layer called several times gets one
mean over all calls), and kept in ``snapshot.input_means``. Which layers take part is the op rules'
knowledge (``Rule.input_channel_dim``/``Rule.output_shift``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import fx, nn

from .rules.base import is_size

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


class InputMeans:
    """Sums of every input channel of the snapshot's compensable layers, over the forward passes made
    between :meth:`attach` and :meth:`detach` (forward pre-hooks; no gradient is involved)."""

    def __init__(self, snapshot: "Snapshot") -> None:
        shapes = snapshot.analysis.shapes
        #: (target, module, rule, input channels) per layer, in graph order (the same on every rank)
        self.layers = [(node.target, module, rule, shapes[node.args[0].name][dim])
                       for node, module, rule, dim in _compensable(snapshot)]
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self) -> None:
        for target, module, rule, _ in self.layers:
            self._handles.append(module.register_forward_pre_hook(self._make_hook(target, rule)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _make_hook(self, target: str, rule: Any):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor):
                return
            dim = rule.input_channel_dim(module, x.shape)
            with torch.no_grad():
                # summed in float32 at least (float64 would cost ~8% of a resnet50 calibration step on CPU),
                # accumulated over batches in float64
                low = x.dtype in (torch.float16, torch.bfloat16)
                sums = x.detach().sum(dim=[d for d in range(x.dim()) if d != dim],
                                      dtype=torch.float32 if low else None).double()
            self.sums[target] = sums if target not in self.sums else self.sums[target] + sums.to(self.sums[target])
            self.counts[target] = self.counts.get(target, 0) + x.numel() // max(x.shape[dim], 1)

        return hook

    def flat(self, device: torch.device) -> torch.Tensor:
        """Sums of every layer (zeros for one not called) then the counts, in one float64 vector: what
        a distributed run all-reduces."""
        parts = [self.sums[t].to(device) if t in self.sums else torch.zeros(n, dtype=torch.float64, device=device)
                 for t, _, _, n in self.layers]
        counts = torch.tensor([float(self.counts.get(t, 0)) for t, _, _, _ in self.layers], dtype=torch.float64,
                              device=device)
        return torch.cat(parts + [counts])

    def means(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per layer target: the mean of each input channel (float64, CPU), from a :meth:`flat` vector
        (possibly summed over ranks); layers never called are left out."""
        flat = flat.cpu()
        counts = flat[len(flat) - len(self.layers):].tolist()
        out, start = {}, 0
        for (target, _, _, channels), count in zip(self.layers, counts):
            if count > 0:
                out[target] = flat[start:start + channels] / count
            start += channels
        return out


def plan(snapshot: "Snapshot", keep_label: np.ndarray) -> list[tuple[str, str, torch.Tensor]]:
    """What compensation adds where, once the model is sliced: ``(module target, attribute, value over the
    kept output channels)`` for each layer that loses input channels.

    The attribute is the layer's ``bias``, except where the layer has none and its output goes only into a
    BatchNorm (each called once): that norm's ``running_mean`` takes the shift instead (subtracted, which is
    the same in eval mode; in train mode a BatchNorm removes any constant shift anyway), so the pruned model
    gets no new parameter and no extra add.
    """
    analysis = snapshot.analysis
    keep_id = keep_label[analysis.label_of_id]
    means = snapshot.input_means
    modules = dict(snapshot._root.named_modules())
    calls: dict[str, int] = {}
    for node in snapshot.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    out = []
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
        removed = torch.from_numpy(~keep_id[in_ids])
        shift = rule.output_shift(module, means[node.target] * removed)
        out_ids = analysis.node_ids.get(node.name) or ()
        out_ids = out_ids[dim] if len(out_ids) > dim else None
        if out_ids is not None:
            shift = shift[torch.from_numpy(keep_id[out_ids])]
        norm = _sole_batchnorm(node, dim, modules, calls) if module.bias is None else None
        out.append((node.target, "bias", shift) if norm is None else (norm, "running_mean", -shift))
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


def apply(plan: list[tuple[str, str, torch.Tensor]], module_of) -> None:
    """Add a :func:`plan`'s values to the sliced modules (``module_of(target)``); a layer without a bias
    that is planned one gets it."""
    with torch.no_grad():
        for target, attribute, value in plan:
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
