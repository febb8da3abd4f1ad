"""Property-based checks on random architectures (hypothesis).

CI runs a bounded number of examples; ``HYPOTHESIS_PROFILE=nightly`` runs hundreds.
"""
from __future__ import annotations

import io
import os

import dill
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from pruning import PruningIR
from pruning.verify import equivalence_error, perturb

from random_nets import BLOCKS, RandomNet

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=400, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

architectures = st.tuples(
    st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=5),
    st.lists(st.integers(2, 12), min_size=5, max_size=5),
    st.booleans(),
    st.integers(0, 2**16),
)


def build(arch):
    kinds, widths, flatten_head, seed = arch
    torch.manual_seed(seed)
    model = perturb(RandomNet(kinds, widths, flatten_head).eval(), seed=seed)
    x = torch.randn(2, 3, 6, 6)
    return model, x, np.random.default_rng(seed)


def random_selection(snapshot, rng, exact_only: bool):
    """A random subset of every group, never the whole group."""
    chosen = []
    for group in snapshot.analysis.groups:
        usable = [i for i in group if not (exact_only and snapshot.analysis.normalized[i])]
        if len(usable) == len(group):
            usable = usable[1:]
        if usable:
            count = rng.integers(0, len(usable) + 1)
            chosen += [snapshot.label(i) for i in rng.choice(usable, size=count, replace=False)]
    return chosen


@given(architectures)
def test_dead_labels_prune_exactly(arch):
    model, x, rng = build(arch)
    ir = PruningIR(model, example_input=x)
    labels = random_selection(ir.snapshot(), rng, exact_only=True)
    assert equivalence_error(ir, labels, x) < 1e-4


@given(architectures)
def test_random_pruning_runs_trains_and_round_trips(arch):
    model, x, rng = build(arch)
    ir = PruningIR(model, example_input=x)
    labels = random_selection(ir.snapshot(), rng, exact_only=False)
    pruned = ir.prune(labels=labels)
    net = pruned.model.train()
    out = net(x)
    assert out.shape == (2, 5)
    out.square().mean().backward()
    torch.optim.SGD(net.parameters(), lr=0.01).step()
    buffer = io.BytesIO()
    torch.save(pruned, buffer, pickle_module=dill)
    buffer.seek(0)
    loaded = torch.load(buffer, pickle_module=dill, weights_only=False)
    net.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x), net(x))
    assert [l.index for l in loaded.snapshot().labels] == [l.index for l in pruned.snapshot().labels]
