"""Containers traced as the example makes them (pruning.tracing.structure), data-dependent sizes left
undecided, and soft tracing's leaf functions reached through a method: what torchvision's detection models
need, each on a small model whose pruned outputs can be checked."""
from __future__ import annotations

import io
import warnings

import dill
import pytest
import torch
import torchvision
from torch import nn

from pruning import PruningIR
from pruning.tracing.structure import is_none, keys_of
from pruning.verify import equivalence_error, perturb


def _half_of_each_group(ir: PruningIR) -> list:
    return [label for group in ir.snapshot().groups for label in group[: len(group) // 2]]


class Around(nn.Module):
    """``inner`` between a prunable pair of layers (whose 8 hidden channels prune) and a head."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.a, self.c, self.inner, self.b = nn.Linear(4, 8), nn.Linear(8, 6), inner, nn.Linear(6, 2)

    def features(self, x):
        return self.c(torch.relu(self.a(x)))


class ReturnsNoState(nn.Module):
    """Soft tracing keeps it opaque (a branch on values); it returns (output, None), or a state if asked."""

    def __init__(self) -> None:
        super().__init__()
        self.with_state = False

    def forward(self, x):
        if x.sum() > 0:
            x = x * 2
        return x, (x.mean(-1, keepdim=True) if self.with_state else None)


class ChecksTheState(Around):
    def __init__(self) -> None:
        super().__init__(ReturnsNoState())

    def forward(self, x):
        y, state = self.inner(self.features(x))
        if state is not None:  # a Proxy is never None: before, this way was traced and the graph failed
            y = y + state
        return self.b(y)


def test_a_none_output_of_an_opaque_module_is_none_in_the_trace_and_asserted():
    model, x = perturb(ChecksTheState().eval()), torch.randn(3, 4)
    with pytest.warns(UserWarning, match="soft tracing: submodule 'inner'"):
        ir = PruningIR(model, example_input=x)
    graph = ir.snapshot().model.graph
    assert any(n.target is is_none for n in graph.nodes)
    torch.testing.assert_close(ir.snapshot().model(x), model(x))
    labels = _half_of_each_group(ir)
    assert labels and equivalence_error(ir, labels, x, dtype=torch.float64) < 1e-12
    pruned = ir.prune(labels=labels).model
    pruned.inner.with_state = True  # the module now returns a state: the traced way no longer holds
    with pytest.raises(AssertionError, match="opaque being None"):
        pruned(x)


class ReturnsParts(nn.Module):
    """Opaque (a branch on values); returns a dict whose keys the caller tests, and a list."""

    def forward(self, x):
        if x.sum() > 0:
            x = x + 1
        return {"features": x, "scale": x.abs().mean()}, [x, x * 2]


class ReadsParts(Around):
    def __init__(self) -> None:
        super().__init__(ReturnsParts())

    def forward(self, x):
        parts, pair = self.inner(self.features(x))
        y = parts["features"] * parts["scale"] if "scale" in parts else parts["features"]
        for extra in pair:
            y = y + extra
        return self.b(y)


def test_dicts_and_lists_an_opaque_module_returns_can_be_tested_and_iterated():
    model, x = perturb(ReadsParts().eval()), torch.randn(3, 4)
    with pytest.warns(UserWarning, match="soft tracing: submodule 'inner'"):
        ir = PruningIR(model, example_input=x)
    graph = ir.snapshot().model.graph
    assert any(n.target is keys_of for n in graph.nodes)
    torch.testing.assert_close(ir.snapshot().model(x), model(x))
    restored = dill.loads(dill.dumps(ir))  # fx traces the code again to unpickle: the guards are graph ops
    torch.testing.assert_close(restored.snapshot().model(x), model(x))


class PerImage(nn.Module):
    """Takes a list of images of any sizes, as torchvision's detection models do."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, images: list[torch.Tensor]):
        sizes = [image.shape[-2:] for image in images]
        pooled = [self.b(torch.relu(self.a(image[None]))).mean((2, 3)) for image in images]
        return torch.cat(pooled), sizes


def test_an_input_list_is_iterated_as_long_as_the_example_and_its_length_asserted():
    model = perturb(PerImage().eval())
    images = [torch.randn(3, 10, 12), torch.randn(3, 7, 9)]
    ir = PruningIR(model, example_input=(images,))  # the list is the first positional input
    labels = _half_of_each_group(ir)
    assert labels and equivalence_error(ir, labels, images, dtype=torch.float64) < 1e-12
    pruned = ir.prune(labels=labels).model
    other = [torch.randn(3, 5, 6), torch.randn(3, 8, 8)]  # other sizes, same number of images
    out, sizes = pruned(other)
    assert out.shape == (2, 4) and [tuple(s) for s in sizes] == [(5, 6), (8, 8)]
    with pytest.raises(AssertionError, match=r"number of items of a tuple or list \(here 2"):
        pruned(other[:1])


class KeepsPositives(nn.Module):
    """How many values pass a threshold depends on the data: a branch on that count is not a size branch."""

    def forward(self, x):
        kept = x[x > 0]
        if kept.shape[0] > 10:
            return x * 2
        return x


class ThresholdsInside(Around):
    def __init__(self) -> None:
        super().__init__(KeepsPositives())

    def forward(self, x):
        return self.b(self.inner(self.features(x)))


def test_a_branch_on_a_data_dependent_size_is_not_decided_for_the_example():
    model, x = ThresholdsInside().eval(), torch.randn(8, 4)
    with pytest.warns(UserWarning, match="soft tracing: submodule 'inner'"):  # opaque, as before size branches
        ir = PruningIR(model, example_input=x)
    assert not any(n.target is torch._assert for n in ir.snapshot().model.graph.nodes)
    for sign in (1.0, -1.0):  # the two ways: the traced graph follows the model's code on both
        y = sign * torch.ones(8, 4) * 10
        torch.testing.assert_close(ir.snapshot().model(y), model(y))


def _topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A private module-level helper with a branch on values, as torchvision's ``_topk_min``."""
    return scores.topk(min(k, int((scores > 0).sum()) or 1), dim=-1).values


class Postprocess:
    """Not a module: its method calls the helper, so fx never sees the helper in a forward's globals."""

    def run(self, scores: torch.Tensor) -> torch.Tensor:
        return _topk(scores, 3)


class Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 6)
        self.post = Postprocess()

    def forward(self, x):
        return self.post.run(self.b(torch.relu(self.a(x))))


def test_a_helper_reached_through_a_method_becomes_an_opaque_call_and_survives_pickling():
    model, x = perturb(Detector().eval()), torch.randn(2, 4)
    with pytest.warns(UserWarning, match=r"soft tracing: function .*_topk"):
        ir = PruningIR(model, example_input=x)
    assert any(getattr(n.target, "__name__", "") == "_topk" for n in ir.snapshot().model.graph.nodes)
    labels = _half_of_each_group(ir)
    assert labels and equivalence_error(ir, labels, x, dtype=torch.float64) < 1e-12
    restored = dill.loads(dill.dumps(ir))
    torch.testing.assert_close(restored.snapshot().model(x), model(x))


class LoopsOverRows(nn.Module):
    """The model's own forward iterates a tensor and counts with a size, as SSD's postprocessing does."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        scores = self.b(torch.relu(self.a(x)))
        out = []
        for row in scores:
            out.append(torch.stack([row[c] * c for c in range(1, scores.size(-1))], dim=row.dim() - 1))
        return out


def test_the_top_level_forward_may_iterate_a_tensor_and_count_with_its_sizes():
    model, x = perturb(LoopsOverRows().eval()), torch.randn(2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ir = PruningIR(model, example_input=x)
    labels = _half_of_each_group(ir)
    assert labels and equivalence_error(ir, labels, x, dtype=torch.float64) < 1e-12
    with pytest.raises(AssertionError, match="example input"):  # the batch size is pinned, and asserted
        ir.snapshot().model(torch.randn(3, 4))


class IteratesInside(nn.Module):
    def forward(self, x):
        return torch.stack([row * 2 for row in x])


class WithInnerLoop(Around):
    def __init__(self) -> None:
        super().__init__(IteratesInside())

    def forward(self, x):
        return self.b(self.inner(self.features(x)))


def test_a_submodule_iterating_a_tensor_stays_opaque_rather_than_pinning_the_batch():
    model = WithInnerLoop().eval()
    with pytest.warns(UserWarning, match="soft tracing: submodule 'inner'"):
        ir = PruningIR(model, example_input=torch.randn(2, 4))
    y = torch.randn(5, 4)
    torch.testing.assert_close(ir.snapshot().model(y), model(y))


def test_an_empty_output_counts_as_no_difference():
    class NoDetections(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            y = self.b(self.a(x))
            return y, y[:0]

    model, x = perturb(NoDetections().eval()), torch.randn(3, 4)
    ir = PruningIR(model, example_input=x)
    assert equivalence_error(ir, _half_of_each_group(ir), x, dtype=torch.float64) < 1e-12


@pytest.mark.parametrize("build, opaque, kept", [
    (lambda: torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, score_thresh=0.0), set(), 0.5),
    # Its box decoding, proposal filtering and NMS are opaque calls; its heads prune (fc6 is most of it).
    (lambda: torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0), {"decode", "filter_proposals"}, 0.3),
])
def test_torchvision_detectors_prune_and_detect_on_other_images(build, opaque, kept):
    torch.manual_seed(0)
    model = perturb(build().eval())
    images, other = [torch.rand(3, 224, 224)], [torch.rand(3, 200, 240)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # soft tracing names the heads it keeps opaque
        ir = PruningIR(model, example_input=(images,))
    snapshot = ir.snapshot()
    assert {op.split(" (", 1)[1].rstrip(")").rsplit(".", 1)[-1] for op in snapshot.opaque_ops} == opaque
    with torch.no_grad():
        expected, traced = model(other), snapshot.model(other)
    assert len(expected[0]["boxes"]) > 0
    for a, b in zip(expected, traced):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    labels = _half_of_each_group(ir)
    assert equivalence_error(ir, labels, other, dtype=torch.float64) < 1e-10
    pruned = ir.prune(labels=labels).model
    assert sum(p.numel() for p in pruned.parameters()) < kept * sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert pruned(other)[0]["boxes"].shape[1] == 4


class ReassignsItsTable(Around):
    """Its forward reassigns a tensor attribute, as CTRL's does with its position table: while traced, a
    Proxy sits there, which the size oracle must not run on."""

    def __init__(self) -> None:
        super().__init__(ReturnsNoState())
        self.table = torch.randn(6)

    def forward(self, x):
        self.table = self.table.to(x.dtype)
        y, state = self.inner(self.features(x) + self.table)
        if state is not None:
            y = y + state
        return self.b(y)


def test_the_example_s_values_are_computed_on_the_model_as_it_was_before_tracing():
    model, x = perturb(ReassignsItsTable().eval()), torch.randn(3, 4)
    with pytest.warns(UserWarning, match="soft tracing: submodule 'inner'"):
        ir = PruningIR(model, example_input=x)
    assert isinstance(model.table, torch.Tensor) and not isinstance(model.table, torch.fx.Proxy)
    assert any(n.target is is_none for n in ir.snapshot().model.graph.nodes)
    torch.testing.assert_close(ir.snapshot().model(x), model(x))


class FlattensRegions(nn.Module):
    """A detector's box head: region features flattened into linear layers; no region may be proposed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc6, self.fc7 = nn.Conv2d(3, 4, 3), nn.Linear(4 * 4, 8), nn.Linear(8, 2)

    def forward(self, regions):
        return self.fc7(torch.relu(self.fc6(self.conv(regions).flatten(start_dim=1))))


def test_an_empty_batch_example_prunes_like_a_full_one():
    model = perturb(FlattensRegions().eval())
    full = PruningIR(model, example_input=torch.randn(3, 3, 4, 4))
    empty = PruningIR(model, example_input=torch.randn(0, 3, 4, 4))
    assert [len(g) for g in empty.snapshot().groups] == [len(g) for g in full.snapshot().groups] == [4, 8]
    x = torch.randn(5, 3, 4, 4)
    torch.testing.assert_close(empty.prune(labels=_half_of_each_group(empty)).model(x),
                               full.prune(labels=_half_of_each_group(full)).model(x))


class OptionalTargets(nn.Module):
    """A detector's signature: ``targets=None``, fixed at its default while traced (fx guards it)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x, targets=None):
        y = self.b(torch.relu(self.a(x)))
        return y if targets is None else (y - targets).square().mean()


def test_unpickling_a_graph_with_a_none_default_leaves_later_traces_working():
    model, x = perturb(OptionalTargets().eval()), torch.randn(3, 4)
    ir = PruningIR(model, example_input=x)
    restored = dill.loads(dill.dumps(ir))  # fx traces the generated code again
    buffer = io.BytesIO()
    torch.save(restored.prune(labels=_half_of_each_group(restored)).model, buffer)  # plain pickle: traced again
    buffer.seek(0)
    pruned = torch.load(buffer, weights_only=False)
    assert pruned(x).shape == (3, 2)
    with pytest.raises(AssertionError, match="specialized to have value None"):  # the guard is still there
        pruned(x, torch.zeros(3, 2))
    again = PruningIR(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), example_input=x)  # failed: KeyError
    assert again.snapshot().groups
