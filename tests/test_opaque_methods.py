"""Soft tracing's opaque method calls (pruning.tracing.recorded.helper_call), ranks of data-dependent values,
and torchvision's region pooling rules: what lets a two-stage detector's heads prune, each on a small model
whose pruned outputs can be checked."""
from __future__ import annotations

import warnings

import dill
import pytest
import torch
import torchvision
from torch import nn

from pruning import PruningIR
from pruning.rules.helpers import names_read
from pruning.verify import equivalence_error, perturb


def _half_of_each_group(ir: PruningIR) -> list:
    return [label for group in ir.snapshot().groups for label in group[: len(group) // 2]]


def _calls(ir: PruningIR, name: str) -> list:
    return [n for n in ir.snapshot().model.graph.nodes if getattr(n.target, "__name__", "") == name]


class BoxDecoder:
    """Not a module: its method asserts that it gets a tensor, which a traced value is not (torchvision's
    ``BoxCoder.decode``)."""

    def __init__(self) -> None:
        self.scale = 2.0

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        torch._assert(isinstance(codes, torch.Tensor), "expects a tensor")
        return codes * self.scale


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.codes, self.coder = nn.Linear(8, 12), nn.Linear(12, 4), BoxDecoder()

    def forward(self, x):
        return self.coder.decode(self.codes(torch.relu(self.hidden(x))))


class Decodes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(4, 8), Head()

    def forward(self, x):
        return self.head(torch.relu(self.a(x)))


def test_a_helper_object_s_method_becomes_one_opaque_call_and_the_module_around_it_prunes():
    model, x = perturb(Decodes().eval()), torch.randn(3, 4)
    with pytest.warns(UserWarning, match=r"method BoxDecoder.decode of 'head.coder'"):
        ir = PruningIR(model, example_input=x)
    assert len(_calls(ir, "helper_call")) == 1
    sizes = sorted(len(group) for group in ir.snapshot().groups)
    assert sizes == [8, 12]  # before, Head was opaque and only a's 8 outputs... were not even prunable
    labels = _half_of_each_group(ir)
    assert equivalence_error(ir, labels, x, dtype=torch.float64) < 1e-12
    y = torch.randn(5, 4)  # another batch size: the opaque call runs the real method
    restored = dill.loads(dill.dumps(ir))  # the graph's code records the call again when unpickled
    torch.testing.assert_close(restored.snapshot().model(y), model(y))
    torch.testing.assert_close(ir.prune(labels=labels).model(y).shape, model(y).shape)


class Gated(nn.Module):
    """Its ``select`` iterates a tensor (untraceable in a submodule) and reads the gain the forward also uses."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)
        self.gain = nn.Parameter(torch.rand(8) + 0.5)

    def forward(self, x):
        return self.select(self.b(torch.relu(self.a(x)) * self.gain))

    def select(self, y):
        return torch.stack([row + self.gain.sum() for row in y])


class AroundGated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre, self.gated, self.post = nn.Linear(4, 4), Gated(), nn.Linear(3, 2)

    def forward(self, x):
        return self.post(self.gated(self.pre(x)))


def test_a_module_method_kept_opaque_keeps_the_parameters_it_reads():
    model, x = perturb(AroundGated().eval()), torch.randn(3, 4)
    with pytest.warns(UserWarning, match=r"method Gated.select of 'gated'"):
        ir = PruningIR(model, example_input=x)
    assert len(_calls(ir, "helper_call")) == 1
    # gated.a's 8 outputs are scaled by the gain, whose sum select reads: pruning them would change it.
    assert not any("gated.gain" in ir.snapshot().slices(label) for group in ir.snapshot().groups for label in group)
    assert equivalence_error(ir, _half_of_each_group(ir), x, dtype=torch.float64) < 1e-12


class Unbatched(nn.Module):
    """No parameters: a failing method keeps the whole module opaque (tracing around it gains nothing)."""

    def forward(self, x):
        return self.rows(x)

    def rows(self, x):
        return torch.stack([row * 2 for row in x])


def test_a_module_without_parameters_stays_whole():
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 8), Unbatched(), nn.Linear(8, 2)).eval()
    with pytest.warns(UserWarning, match=r"submodule '2' \(Unbatched\)"):
        ir = PruningIR(model, example_input=torch.randn(3, 4))
    assert not _calls(ir, "helper_call")


class RankOfKept(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = self.a(x)
        kept = x[x > 0]  # how many: data-dependent; its rank: not
        if kept.dim() == 1 and h.is_floating_point():
            h = h * 2
        return self.b(h)


def test_the_rank_and_dtype_of_a_data_dependent_value_are_decided():
    model, x = perturb(RankOfKept().eval()), torch.randn(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # traced, nothing opaque
        ir = PruningIR(model, example_input=x)
    assert not ir.snapshot().opaque_ops
    assert equivalence_error(ir, _half_of_each_group(ir), x, dtype=torch.float64) < 1e-12


class Pools(nn.Module):
    """Convolutions, regions pooled from their features by ``roi_align`` (the function or the torch op, which a
    trace records where the function traces through), ``roi_pool``'s op or ``MultiScaleRoIAlign``, a head."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1)
        self.multiscale = torchvision.ops.MultiScaleRoIAlign(["0", "1"], 2, 2) if how == "multiscale" else None
        self.head = nn.Linear(6 * 4, 2)
        self.register_buffer("boxes", torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 2.0, 15.0, 13.0]]))

    def forward(self, x):
        f = self.c(torch.relu(self.a(x)))
        rois = torch.cat([torch.zeros(len(self.boxes), 1), self.boxes], dim=1)
        if self.how == "multiscale":
            pooled = self.multiscale({"0": f, "1": nn.functional.max_pool2d(f, 2)}, [self.boxes], [(16, 16)])
        elif self.how == "align op":
            pooled = torch.ops.torchvision.roi_align(f, rois, 1.0, 2, 2, 2, False)
        elif self.how == "pool op":
            pooled = torch.ops.torchvision.roi_pool(f, rois, 1.0, 2, 2)[0]
        else:
            pooled = torchvision.ops.roi_align(f, [self.boxes], output_size=2, spatial_scale=1.0)
        return self.head(pooled.flatten(1))


@pytest.mark.parametrize("how", ["function", "align op", "pool op", "multiscale"])
def test_region_pooling_passes_the_feature_channels(how):
    model, x = perturb(Pools(how).eval()), torch.randn(1, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # roi_align is one call (soft tracing's), which its rule reads
        ir = PruningIR(model, example_input=x)
    assert not ir.snapshot().opaque_ops
    restored = dill.loads(dill.dumps(ir))
    torch.testing.assert_close(restored.snapshot().model(x), model(x))
    assert sorted(len(group) for group in ir.snapshot().groups) == [6, 8]  # c's outputs reach the head
    labels = _half_of_each_group(ir)
    assert equivalence_error(ir, labels, x, dtype=torch.float64) < 1e-12
    pruned = ir.prune(labels=labels).model
    assert pruned.head.in_features == 3 * 4


def _applied(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Soft tracing keeps it one opaque call (a branch on values); it runs the layer it is given."""
    return layer(x) if x.sum() > 0 else layer(-x)


class PassesALayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.mid, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.c(torch.relu(self.b(torch.relu(self.mid(h))))) + _applied(self.mid, h).sum(-1, keepdim=True)


def test_a_submodule_given_to_an_opaque_call_keeps_its_channels():
    model, x = perturb(PassesALayer().eval()), torch.randn(3, 4)
    with pytest.warns(UserWarning, match="soft tracing: function .*_applied"):
        ir = PruningIR(model, example_input=x)
    slices = [ir.snapshot().slices(label) for group in ir.snapshot().groups for label in group]
    assert slices and not any(name.startswith("mid.") for s in slices for name in s)  # b's 6 prune
    assert equivalence_error(ir, _half_of_each_group(ir), x, dtype=torch.float64) < 1e-12


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_detector_traced_and_pruned_on_the_cpu_runs_on_cuda():
    torch.manual_seed(0)
    model = perturb(torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0).eval())
    images = [torch.rand(3, 224, 224)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # soft tracing names the methods it keeps opaque
        ir = PruningIR(model, example_input=(images,))
    pruned = ir.prune(labels=_half_of_each_group(ir)).model
    with torch.no_grad():
        on_cpu = pruned(images)
        on_cuda = pruned.cuda()([image.cuda() for image in images])
    assert len(on_cuda[0]["boxes"]) > 0 and on_cuda[0]["boxes"].device.type == "cuda"
    # (box order among near-equal scores may differ between devices: compare the best score)
    torch.testing.assert_close(on_cuda[0]["scores"].max().cpu(), on_cpu[0]["scores"].max(), rtol=1e-3, atol=1e-4)


class ReadsThroughAProperty:
    @property
    def table(self):
        return self.layer.weight

    @classmethod
    def unused(cls):
        return None


def test_names_read_follow_methods_properties_and_comprehensions():
    class Holder(ReadsThroughAProperty):
        def run(self, xs):
            return [x @ self.table for x in xs] + [self.helper()]

        def helper(self):
            return self.other

    names = names_read(Holder, "run")
    assert {"layer", "weight", "other"} <= names and "unused" not in names


def _padded(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Reads only the layer's geometry (as transformers' ``apply_tf_padding``); a branch on values keeps it
    opaque."""
    pad = conv.kernel_size[0] // 2 if x.abs().sum() > 0 else 0
    return nn.functional.pad(x, (pad, pad, pad, pad))


class PadsForALayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.conv, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 3), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.conv(_padded(torch.relu(self.a(x)), self.conv))))


def test_a_submodule_given_to_an_opaque_call_that_reads_only_its_geometry_still_prunes():
    model, x = perturb(PadsForALayer().eval()), torch.randn(1, 3, 8, 8)
    with pytest.warns(UserWarning, match="soft tracing: function .*_padded"):
        ir = PruningIR(model, example_input=x)
    assert [len(group) for group in ir.snapshot().groups] == [6]  # conv's outputs (its input enters _padded)
    assert equivalence_error(ir, _half_of_each_group(ir), x, dtype=torch.float64) < 1e-12
