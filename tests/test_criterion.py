"""LossAwareCriterion: exact group Taylor scores, dead channels, hook hygiene and errors."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pruning import PruningIR
from pruning.criterion import LossAwareCriterion


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def batches(n: int = 3, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(n)]


def make_ir(seed: int = 0, analyse: bool = True) -> PruningIR:
    torch.manual_seed(seed)
    return PruningIR(Net(), example_input=torch.randn(2, 3, 8, 8) if analyse else None)


def calibrate(ir: PruningIR, data=None) -> torch.Tensor:
    with LossAwareCriterion(ir) as collector:
        for x, y in data or batches():
            F.cross_entropy(collector(x), y).backward()
    return ir.snapshot().scores


def label_of(snapshot, name: str, dim: int, position: int) -> int:
    site = next(s for s in snapshot.param_sites if s.name == name and s.dim == dim)
    return int(site.label_index[position])


def test_scores_match_group_taylor_formula():
    ir = make_ir()
    data = batches(3)
    scores = calibrate(ir, data)
    snapshot = ir.snapshot()
    assert scores.dtype == torch.float64 and scores.device.type == "cpu"
    assert scores.shape == (snapshot.num_labels,)
    model = snapshot.model
    params = dict(model.named_parameters())
    expected = np.zeros(snapshot.num_labels)
    for x, y in data:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()))
        gw = {name: (g * p).detach().double() for (name, p), g in zip(params.items(), grads)}
        per_label = np.zeros(snapshot.num_labels)
        for site in snapshot.param_sites:
            if site.name not in gw:
                continue
            for position, label in enumerate(site.label_index):
                per_label[label] += gw[site.name].select(site.dim, position).sum().item()
        expected += per_label**2
    np.testing.assert_allclose(scores.numpy(), expected / len(data), rtol=1e-4, atol=1e-12)


def test_dead_channel_scores_exactly_zero():
    ir = make_ir()
    snapshot = ir.snapshot()
    with torch.no_grad():  # channel 3 of conv1 outputs zero after bn1 and relu
        snapshot.model.get_parameter("conv1.weight")[3] = 0
        snapshot.model.get_parameter("conv1.bias")[3] = 0
        snapshot.model.get_parameter("bn1.weight")[3] = 0
        snapshot.model.get_parameter("bn1.bias")[3] = 0
    scores = calibrate(ir)
    dead = label_of(snapshot, "conv1.weight", 0, 3)
    group = next(g for g in snapshot.groups if any(label.index == dead for label in g))
    assert scores[dead].item() == 0.0
    assert all(scores[label.index] > 0 for label in group if label.index != dead)


def test_independent_of_grad_and_zero_grad():
    ir = make_ir()
    first = calibrate(ir).clone()
    second = calibrate(ir)  # .grad now holds the first run's sums; scores must not see them
    torch.testing.assert_close(first, second)


def test_unanalysed_ir_analyses_on_first_call_and_eval_mode_works():
    ir = make_ir(analyse=False)
    ir.snapshot().model.eval()
    scores = calibrate(ir)
    assert scores.shape == (ir.snapshot().num_labels,) and scores.sum() > 0


def test_hooks_removed_and_scores_untouched_on_exception():
    ir = make_ir()
    params = list(ir.snapshot().model.parameters())
    with pytest.raises(KeyError):
        with LossAwareCriterion(ir) as collector:
            x, y = batches(1)[0]
            F.cross_entropy(collector(x), y).backward()
            assert any(p._backward_hooks for p in params)
            raise KeyError("user error")
    assert not any(p._backward_hooks for p in params)
    assert ir.snapshot().scores is None


def test_no_backward_raises_and_removes_hooks():
    ir = make_ir()
    with pytest.raises(RuntimeError, match=r"loss\.backward\(\)"):
        with LossAwareCriterion(ir) as collector:
            collector(batches(1)[0][0])
    assert not any(p._backward_hooks for p in ir.snapshot().model.parameters())
    assert ir.snapshot().scores is None


def test_frozen_parameters_are_skipped():
    ir = make_ir()
    model = ir.snapshot().model
    model.get_parameter("conv1.weight").requires_grad_(False)
    scores = calibrate(ir)
    assert torch.isfinite(scores).all() and scores.sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    ir_cpu = make_ir()
    ir_gpu = make_ir()
    ir_gpu.snapshot().model.cuda()
    cpu = calibrate(ir_cpu)
    gpu = calibrate(ir_gpu, [(x.cuda(), y.cuda()) for x, y in batches()])
    assert gpu.device.type == "cpu"
    torch.testing.assert_close(cpu, gpu, rtol=1e-3, atol=1e-10)


class Counter(nn.Module):
    """Counts its calls in a buffer it replaces (not updates in place) on each call: state a forward keeps."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls = self.calls + 1
        return x


class StatefulNet(Net):
    """Net whose BatchNorms update their statistics in train mode, with a Counter (a leaf) on its output."""

    def __init__(self) -> None:
        super().__init__()
        self.count = Counter()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.count(super().forward(x))


def run_collector(ir: PruningIR, criterion: str, data, fail: bool = False) -> None:
    from pruning import MagnitudeCriterion

    with (LossAwareCriterion if criterion == "loss_aware" else MagnitudeCriterion)(ir) as collector:
        for x, y in data:
            out = collector(x)
            if criterion == "loss_aware":
                F.cross_entropy(out, y).backward()
            if fail:
                raise KeyError("user error")


def stateful(mode: str, analyse: bool = True) -> tuple[nn.Module, PruningIR, dict[str, torch.Tensor]]:
    """The user's model in ``mode``, its IR (sharing its modules) and a copy of its state_dict."""
    torch.manual_seed(0)
    model = StatefulNet().train(mode == "train")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    ir = PruningIR(model, leaf_modules=[Counter], example_input=torch.randn(2, 3, 8, 8) if analyse else None)
    return model, ir, before


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in after.items():
        assert torch.equal(tensor, before[name]), name


@pytest.mark.parametrize("analyse", [True, False], ids=["example", "lazy"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("criterion", ["loss_aware", "magnitude"])
def test_calibration_leaves_the_users_state_dict_bit_identical(criterion, mode, analyse):
    # BatchNorm's running statistics and num_batches_tracked (train mode) and the Counter's buffer (both modes,
    # replaced by assignment) changed in the user's model, which shares its modules with the IR.
    model, ir, before = stateful(mode, analyse)
    calls = model.count.calls
    run_collector(ir, criterion, batches())
    assert_same_state(model, before)
    assert model.count.calls is calls  # the tensor the user's model held, not a copy of it
    assert all(m.training == (mode == "train") for m in model.modules())
    assert ir.snapshot().scores is not None


@pytest.mark.parametrize("criterion", ["loss_aware", "magnitude"])
def test_calibration_leaves_the_model_as_it_was_on_an_exception(criterion):
    model, ir, before = stateful("train")
    with pytest.raises(KeyError):
        run_collector(ir, criterion, batches(), fail=True)
    assert_same_state(model, before)
    assert all(m.training for m in model.modules())


def test_calibration_restores_every_modules_mode():
    model, ir, before = stateful("train")
    model.bn2.eval()  # a mixed model: frozen statistics in one layer
    modes = {name: m.training for name, m in model.named_modules()}
    with LossAwareCriterion(ir) as collector:
        ir.snapshot().model.eval()  # the user switches modes inside the block
        x, y = batches(1)[0]
        F.cross_entropy(collector(x), y).backward()
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert_same_state(model, before)
