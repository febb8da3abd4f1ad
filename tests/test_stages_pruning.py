"""The stages from trace to finetune, in-process on a tiny model: every selection method, bad selection
parameters, and the weights-only rebuild of the pruned model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pruning import PruningIR
from stages import calibrate, finetune, prepare, prune, select, trace, train
from stages.artifacts import load_pickled
from stages.bundle import load_bundle
from stages.errors import StageError
from stages.params import Params

ROOT = Path(__file__).resolve().parents[1]


def _params(**overrides) -> Params:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["model"]["kwargs"] = {"width": 8}
    data["train"]["epochs"] = 1
    data["calibrate"]["batches"] = 2
    data["finetune"].update(epochs=1, bn_batches=2)
    data["select"].update(method="knapsack", target=0.5, target_mode="relative", ratio=None, n=None,
                          latency="macs", channels_constraint=None)
    for key, value in overrides.items():
        section, leaf = key.split("__")
        data[section][leaf] = value
    return Params(data)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Path:
    """A directory with prepared data, a 1-epoch baseline and its calibrated IR."""
    root = tmp_path_factory.mktemp("stages")
    params = _params()
    prepare.run(params, root / "data")
    train.run(params, root / "data", root / "baseline.pt", root / "train.json")
    trace.run(params, root / "data", root / "baseline.pt", root / "ir.pt")
    calibrate.run(params, root / "data", root / "ir.pt", root / "ir_calibrated.pt")
    return root


def _select(root: Path, tmp_path: Path, **overrides) -> tuple[dict, str]:
    select.run(_params(**overrides), root / "data", root / "ir_calibrated.pt", tmp_path / "labels.json",
               tmp_path / "summary.md")
    return json.loads((tmp_path / "labels.json").read_text()), (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize(
    "overrides",
    [
        {"select__method": "knapsack"},
        {"select__method": "uniform"},
        {"select__method": "global"},
        {"select__method": "uniform", "select__ratio": 0.25},
        {"select__method": "global", "select__n": 5},
        {"select__method": "knapsack", "select__channels_constraint": {"multiple_of": 4, "min_channels": 4}},
        {"select__method": "knapsack", "select__latency": "params", "select__target": 0.6},
        {"select__method": "knapsack", "select__steps": 3},
        {"select__method": "uniform", "select__steps": 2},
        {"select__method": "global", "select__steps": 2, "select__bn_batches": 0},
    ],
)
def test_selection_methods_meet_their_target(calibrated, tmp_path, overrides):
    selection, summary = _select(calibrated, tmp_path, **overrides)
    assert selection["labels"] == sorted(set(selection["labels"])) and selection["labels"]
    assert "| layer1.conv1 |" in summary
    if "select__n" in overrides:
        assert len(selection["labels"]) == 5
    elif "select__ratio" not in overrides:
        kept = float(summary.split("% of baseline")[0].rsplit("(", 1)[1])
        assert kept <= 100 * overrides.get("select__target", 0.5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"select__target": 1.5}, r"'select.target' = 1.5 is a fraction of the baseline"),
        ({"select__method": "uniform", "select__target": 0.001}, r"'select.target' cannot be met by this method"),
        ({"select__method": "knapsack", "select__target": 0.001}, r"select \(knapsack\): .*select\.\*"),
        ({"select__channels_constraint": {"multiple": 8}}, r"'select.channels_constraint' has unknown keys"),
        ({"select__method": "random"}, r"'select.method' must be one of 'uniform', 'global', 'knapsack'"),
        ({"select__latency": "flops"}, r"'select.latency' must be one of 'macs', 'params', 'latency'"),
        ({"select__method": "global", "select__n": 5, "select__steps": 2}, r"'select.steps' = 2 works to 'select.target', but 'select.n' is set"),
        ({"select__steps": 0}, r"'select.steps'"),
    ],
)
def test_bad_selection_parameters_are_named(calibrated, tmp_path, overrides, message):
    with pytest.raises(StageError, match=message):
        _select(calibrated, tmp_path, **overrides)
    assert not (tmp_path / "labels.json").exists()


def test_steps_are_deterministic_and_rescored(calibrated, tmp_path):
    """The same params give the same labels; re-scoring between steps changes what the last steps take."""
    first, summary = _select(calibrated, tmp_path / "a", select__steps=3, select__target=0.3)
    again, _ = _select(calibrated, tmp_path / "b", select__steps=3, select__target=0.3)
    once, _ = _select(calibrated, tmp_path / "c", select__target=0.3)
    assert first == again
    assert first["labels"] != once["labels"]
    assert "3 steps (re-scored between steps)" in summary


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_steps_on_cuda(calibrated, tmp_path):
    """Re-scoring and BatchNorm re-estimation run on the device; the labels still meet the target on CPU."""
    params = _params(select__steps=3, select__target=0.3)
    params.data["device"] = "cuda"
    select.run(params, calibrated / "data", calibrated / "ir_calibrated.pt", tmp_path / "labels.json",
               tmp_path / "summary.md")
    kept = float((tmp_path / "summary.md").read_text().split("% of baseline")[0].rsplit("(", 1)[1])
    assert kept <= 30
    prune.run(params, calibrated / "data", calibrated / "ir_calibrated.pt", tmp_path / "labels.json", tmp_path / "pruned")


def test_prune_and_finetune_save_a_rebuildable_model(calibrated, tmp_path):
    params = _params()
    _select(calibrated, tmp_path)
    prune.run(params, calibrated / "data", calibrated / "ir_calibrated.pt", tmp_path / "labels.json", tmp_path / "pruned")
    finetune.run(params, calibrated / "data", tmp_path / "pruned", tmp_path / "finetuned")
    x = torch.load(calibrated / "data" / "test.pt", weights_only=True)["x"][:4]
    for name in ("pruned", "finetuned"):
        exact, safe = load_bundle(tmp_path / name).eval(), load_bundle(tmp_path / name, safe=True).eval()
        assert torch.allclose(exact(x), safe(x), atol=1e-6)
        # both forms run our generated code (unpickling alone gives back fx's), pruning.tracing.codegen
        assert "_layer1 = self.layer1" in exact.code and "_layer1 = self.layer1" in safe.code
    assert json.loads((tmp_path / "finetuned" / "architecture.json").read_text())["rebuild_verified"]


def test_labels_from_another_run_are_refused(calibrated, tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps({"labels": [10_000]}))
    with pytest.raises(StageError, match=r"label indices \[10000\] are not prunable labels"):
        prune.run(_params(), calibrated / "data", calibrated / "ir_calibrated.pt", tmp_path / "labels.json", tmp_path / "p")


def test_magnitude_criterion_runs_the_stages(calibrated, tmp_path):
    """`calibrate.criterion: magnitude`: relative weight norms (mean 1 per group) and the input means, so the
    default `prune.compensate: true` works; re-scoring between steps uses the same criterion; a bad name is
    refused by name."""
    params = _params(calibrate__criterion="magnitude", select__steps=2)
    calibrate.run(params, calibrated / "data", calibrated / "ir.pt", tmp_path / "ir_magnitude.pt")
    ir = load_pickled(tmp_path / "ir_magnitude.pt", PruningIR)
    snapshot = ir.snapshot()
    assert snapshot.input_means
    for group in snapshot.groups:
        assert float(snapshot.scores[[label.index for label in group]].mean()) == pytest.approx(1.0)
    select.run(params, calibrated / "data", tmp_path / "ir_magnitude.pt", tmp_path / "labels.json",
               tmp_path / "summary.md")
    assert "2 steps (re-scored between steps)" in (tmp_path / "summary.md").read_text()
    prune.run(params, calibrated / "data", tmp_path / "ir_magnitude.pt", tmp_path / "labels.json", tmp_path / "pruned")
    with pytest.raises(StageError, match=r"'calibrate.criterion' must be one of 'loss_aware', 'magnitude'"):
        calibrate.run(_params(calibrate__criterion="l1"), calibrated / "data", calibrated / "ir.pt", tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def test_regression_compensation_runs_the_stages(calibrated, tmp_path):
    """`calibrate.input_covariance: true` records the covariances, `prune.compensate: regression` uses them and
    the saved model still rebuilds from its plain description; regression without covariances, or a value that
    is not a compensation, is refused by name."""
    params = _params(calibrate__input_covariance=True, prune__compensate="regression")
    calibrate.run(params, calibrated / "data", calibrated / "ir.pt", tmp_path / "ir_cov.pt")
    assert load_pickled(tmp_path / "ir_cov.pt", PruningIR).snapshot().input_covariances
    _select(calibrated, tmp_path)
    prune.run(params, calibrated / "data", tmp_path / "ir_cov.pt", tmp_path / "labels.json", tmp_path / "pruned")
    x = torch.load(calibrated / "data" / "test.pt", weights_only=True)["x"][:4]
    exact, safe = load_bundle(tmp_path / "pruned").eval(), load_bundle(tmp_path / "pruned", safe=True).eval()
    assert torch.allclose(exact(x), safe(x), atol=1e-6)
    with pytest.raises(StageError, match="set 'calibrate.input_covariance: true' and rerun calibrate"):
        prune.run(params, calibrated / "data", calibrated / "ir_calibrated.pt", tmp_path / "labels.json", tmp_path / "p2")
    with pytest.raises(StageError, match="'prune.compensate' must be true, false, 'mean' or 'regression', got 'lsq'"):
        prune.run(_params(prune__compensate="lsq"), calibrated / "data", tmp_path / "ir_cov.pt", tmp_path / "labels.json",
                  tmp_path / "p3")
