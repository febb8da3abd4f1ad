"""Thin adapter around Torch-Pruning 1.6.1 (the peer), used by the side-by-side benchmarks.

    python -m benchmarks.peer [--model resnet18] [--ratio 0.5] [--importance magnitude|taylor] [--global]

What the adapter does, and nothing more, for every model alike:
- the classifier is kept: every nn.Linear / nn.Conv2d whose output size equals the model's number of
  classes is in ``ignored_layers`` (the peer's own torchvision script does the same with ``== 1000``);
- every nn.MultiheadAttention is declared in ``num_heads`` (the peer needs it to prune attention);
- after ``step()`` a torchvision VisionTransformer gets ``hidden_dim`` updated (the peer's torchvision
  script does this: its forward reads the width from that attribute);
- importance: ``tp.importance.MagnitudeImportance(p=2)`` (the peer's default) or
  ``tp.importance.TaylorImportance()`` fed by loss gradients accumulated over the calibration batches;
- pruning: ``tp.pruner.BasePruner`` with ``pruning_ratio`` (per layer) or ``global_pruning=True``,
  or to a MACs target by bisection on the ratio (``prune_to_macs``), the same search our side uses.
"""
from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

IMPORTANCES = ("magnitude", "taylor")


def importance(name: str):
    if name == "magnitude":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.TaylorImportance()
    raise ValueError(f"importance must be one of {IMPORTANCES}, got {name!r}")


def classifier_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Layers whose output is the class dimension: kept unpruned (the classifier)."""
    kept = []
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            kept.append(module)
        elif isinstance(module, nn.Conv2d) and module.out_channels == num_classes:
            kept.append(module)
    return kept


def build_pruner(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    num_classes: int,
    ratio: float = 0.5,
    importance_name: str = "magnitude",
    global_pruning: bool = False,
    iterative_steps: int = 1,
):
    """The peer's pruner for ``model`` (building it builds the peer's DependencyGraph)."""
    num_heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    return tp.pruner.BasePruner(
        model,
        example_input,
        importance=importance(importance_name),
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        iterative_steps=iterative_steps,
        ignored_layers=classifier_layers(model, num_classes),
        num_heads=num_heads,
    )


def step(pruner) -> nn.Module:
    """One pruning step (importance + surgery), with the peer's torchvision ViT fix-up."""
    pruner.step()
    model = pruner.model
    try:
        from torchvision.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - torchvision is in the bench extra
        VisionTransformer = ()
    if isinstance(model, VisionTransformer):
        model.hidden_dim = model.conv_proj.out_channels
    return model


def taylor_gradients(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Loss gradients summed over ``batches`` (what TaylorImportance reads from ``.grad``), by parameter name.

    Runs on a copy in the model's current mode, so neither its gradients nor its BatchNorm statistics change.
    """
    work = copy.deepcopy(model)
    work.zero_grad(set_to_none=True)
    for x, y in batches:
        F.cross_entropy(work(x), y).backward()
    return {name: p.grad.detach().clone() for name, p in work.named_parameters() if p.grad is not None}


def prune(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    num_classes: int,
    ratio: float,
    importance_name: str = "magnitude",
    global_pruning: bool = False,
    calibration: list | None = None,
    gradients: dict[str, torch.Tensor] | None = None,
    copy_model: bool = True,
    iterative_steps: int = 1,
    between_steps: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """A pruned copy (or, ``copy_model=False``, ``model`` itself) at ``ratio``.

    Taylor importance reads ``gradients`` (from ``taylor_gradients``), computed here from ``calibration``
    when not given. ``iterative_steps`` > 1 is the peer's iterative mode (``step()`` that many times, the
    ratio growing linearly to ``ratio``): before each later step ``between_steps(model)`` runs (e.g.
    BatchNorm re-estimation) and Taylor gradients are taken again on the pruned model.
    """
    if importance_name == "taylor" and gradients is None:
        if not calibration:
            raise ValueError("Taylor importance needs calibration batches or gradients")
        gradients = taylor_gradients(model, calibration)
    if copy_model:
        model = copy.deepcopy(model)
    pruner = build_pruner(model, example_input, num_classes=num_classes, ratio=ratio,
                          importance_name=importance_name, global_pruning=global_pruning,
                          iterative_steps=iterative_steps)
    for number in range(iterative_steps):
        if number and between_steps is not None:
            between_steps(model)
        if importance_name == "taylor":
            if number:
                gradients = taylor_gradients(model, calibration)
            for name, p in model.named_parameters():
                p.grad = gradients[name].clone() if name in gradients else None
        model = step(pruner)
        model.zero_grad(set_to_none=True)
    return model


def prune_to_cost(
    model: nn.Module,
    example_input: torch.Tensor,
    cost: Callable[[nn.Module], float],
    target: float,
    *,
    num_classes: int,
    importance_name: str = "magnitude",
    global_pruning: bool = False,
    calibration: list | None = None,
    grid: float = 0.05,
    steps: int = 8,
    iterative_steps: int = 1,
    between_steps: Callable[[nn.Module], None] | None = None,
) -> tuple[nn.Module, float]:
    """The least-pruned model whose ``cost`` is <= ``target``: returns (model, ratio).

    The peer's cost is not monotone in the ratio near 1 (a ratio that would empty layers prunes nothing,
    or fails), so: the smallest ratio on a grid (``grid`` steps in (0, 1)) that works and meets the target,
    then ``steps`` of bisection between it and the grid point below. Raises RuntimeError if none does.
    ``iterative_steps`` and ``between_steps``: as in ``prune``, for every ratio tried.
    """
    gradients = taylor_gradients(model, calibration) if importance_name == "taylor" else None

    def attempt(r: float):
        try:
            candidate = prune(model, example_input, num_classes=num_classes, ratio=r, importance_name=importance_name,
                              global_pruning=global_pruning, gradients=gradients, calibration=calibration,
                              iterative_steps=iterative_steps, between_steps=between_steps)
        except Exception as error:  # noqa: BLE001 - the peer failing at a ratio is an outcome
            return None, f"ratio {r:.3f}: {type(error).__name__}: {error}"
        value = cost(candidate)
        return (candidate, None) if value <= target else (None, f"ratio {r:.3f}: cost {value:.6g} > {target:.6g}")

    low, best, best_ratio, errors = 0.0, None, None, []
    for k in range(1, round(1 / grid)):
        candidate, error = attempt(k * grid)
        if candidate is not None:
            best, best_ratio = candidate, k * grid
            break
        low = k * grid
        errors.append(error)
    if best is None:
        raise RuntimeError(f"peer found no ratio meeting cost {target:.6g}; closest tries: {'; '.join(errors[-2:])}")
    high = best_ratio
    for _ in range(steps):
        middle = (low + high) / 2
        candidate, _error = attempt(middle)
        if candidate is not None:
            high, best, best_ratio = middle, candidate, middle
        else:
            low = middle
    return best, best_ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18", help="a torchvision model name")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--importance", choices=IMPORTANCES, default="magnitude")
    parser.add_argument("--global", dest="global_pruning", action="store_true")
    args = parser.parse_args()
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model).eval()
    x = torch.randn(1, 3, 299 if args.model == "inception_v3" else 224, 299 if args.model == "inception_v3" else 224)
    calibration = [(torch.randn(2, *x.shape[1:]), torch.randint(0, 1000, (2,)))] if args.importance == "taylor" else None
    before = sum(p.numel() for p in model.parameters())
    started = time.perf_counter()
    pruned = prune(model, x, num_classes=1000, ratio=args.ratio, importance_name=args.importance,
                   global_pruning=args.global_pruning, calibration=calibration, copy_model=False)
    seconds = time.perf_counter() - started
    with torch.no_grad():
        out = pruned.eval()(x)
    after = sum(p.numel() for p in pruned.parameters())
    print(f"{args.model}: peer pruned in {seconds:.2f}s, params {after / before:.3f} of baseline, output {tuple(out.shape)}")


if __name__ == "__main__":
    main()
