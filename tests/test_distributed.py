"""LossAwareCriterion (and MagnitudeCriterion's means) under torch.distributed: 2 gloo ranks on CPU calibrate
one shard each and end with the scores of one process over the union, the same selections and the same
pruned model."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from distributed_calibration import run

from pruning import PruningIR
from stages import calibrate, finetune, prepare, prune, select, trace, train
from stages.artifacts import load_pickled, load_state_dict
from stages.distributed import process_group
from stages.errors import StageError
from stages.params import Params

ROOT = Path(__file__).resolve().parents[1]
WORLD_SIZE = 2
TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out_dir: Path, ddp: bool, criterion: str = "loss_aware", covariance: bool = False,
           train: bool = False) -> list[dict]:
    """Start WORLD_SIZE rank processes (env:// rendezvous on a free port); return each rank's results."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(WORLD_SIZE),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1]),
                                           *filter(None, [os.environ.get("PYTHONPATH")])]))
    script = Path(__file__).with_name("distributed_calibration.py")
    args = [sys.executable, str(script), "--out-dir", str(out_dir), "--criterion", criterion] + (["--ddp"] if ddp else [])
    args += (["--covariance"] if covariance else []) + (["--train"] if train else [])
    procs = [subprocess.Popen(args, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stderr=subprocess.PIPE, text=True)
             for r in range(WORLD_SIZE)]
    try:
        errors = [p.communicate(timeout=TIMEOUT_S)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, err in zip(procs, errors):
        assert p.returncode == 0, err
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD_SIZE)]


@pytest.mark.parametrize("ddp, criterion, covariance, train",
                         [(False, "loss_aware", False, False), (True, "loss_aware", False, False),
                          (False, "magnitude", False, False), (False, "loss_aware", True, False),
                          (False, "loss_aware", False, True), (False, "magnitude", False, True)],
                         ids=["plain", "ddp", "magnitude", "covariance", "train", "magnitude-train"])
def test_ranks_match_one_process_over_the_union(tmp_path: Path, ddp: bool, criterion: str, covariance: bool,
                                                train: bool) -> None:
    # "pruned" is the whole state_dict, buffers included: in train mode each rank's shard moved the BatchNorm
    # statistics of its model differently, until the criterion put them back on exit.
    reference = run(rank=0, world_size=1, ddp=False, criterion=criterion, covariance=covariance, train=train)
    ranks = launch(tmp_path, ddp, criterion, covariance, train)
    for result in ranks:
        assert torch.equal(result["scores"], ranks[0]["scores"])  # every rank holds the same scores
        torch.testing.assert_close(result["scores"], reference["scores"], rtol=1e-6, atol=0)
        assert result["input_means"].keys() == reference["input_means"].keys()
        for name, means in result["input_means"].items():  # what compensation folds into biases
            torch.testing.assert_close(means, reference["input_means"][name], rtol=1e-9, atol=1e-12)
        assert (result["input_covariances"] is None) == (not covariance)
        for name, matrix in (result["input_covariances"] or {}).items():  # what regression compensation solves with
            torch.testing.assert_close(matrix, reference["input_covariances"][name], rtol=1e-9, atol=1e-9)
        assert result["uniform"] == reference["uniform"]
        assert result["global"] == reference["global"]
        assert result["pruned"].keys() == reference["pruned"].keys()
        for name, tensor in result["pruned"].items():
            assert torch.equal(tensor, ranks[0]["pruned"][name]), name
            # summed in another order, the covariances differ in the last bits, and so may the regression
            torch.testing.assert_close(tensor, reference["pruned"][name], rtol=1e-5 if covariance else 0,
                                       atol=1e-6 if covariance else 0)


def tiny_params(**sections: dict) -> dict:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["model"]["kwargs"] = {"width": 8}
    data["train"]["epochs"] = 1
    data["calibrate"]["batches"] = 5  # odd: uneven shards
    data["finetune"].update(epochs=0, bn_batches=5)  # epochs 0: the saved model is the BatchNorm re-estimate
    for section, values in sections.items():
        data[section].update(values)
    return data


def torchrun(stage: str, data: dict, root: Path, *options: str) -> None:
    """`torchrun --nproc_per_node WORLD_SIZE -m stages.cli <stage>` with `data` as params.yaml."""
    data = {**data, "distributed": {"world_size": WORLD_SIZE}}
    (root / "params.yaml").write_text(yaml.safe_dump(data))
    command = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", str(WORLD_SIZE),
               "-m", "stages.cli", stage, "--params", str(root / "params.yaml"), *options]
    proc = subprocess.run(command, cwd=ROOT, timeout=TIMEOUT_S, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared digits, a 1-epoch baseline, its IR calibrated in one process, selected and pruned."""
    root = tmp_path_factory.mktemp("stages")
    params = Params(tiny_params())
    prepare.run(params, root / "data")
    train.run(params, root / "data", root / "baseline.pt", root / "train.json")
    trace.run(params, root / "data", root / "baseline.pt", root / "ir.pt")
    calibrate.run(params, root / "data", root / "ir.pt", root / "one.pt")
    select.run(params, root / "data", root / "one.pt", root / "labels.json", root / "summary.md")
    prune.run(params, root / "data", root / "one.pt", root / "labels.json", root / "pruned")
    return root


def test_calibrate_stage_under_torchrun_matches_one_process(pruned: Path) -> None:
    torchrun("calibrate", tiny_params(), pruned, "--data-dir", str(pruned / "data"), "--ir-path", str(pruned / "ir.pt"),
             "--out-path", str(pruned / "two.pt"))
    one, two = (load_pickled(pruned / name, PruningIR).snapshot().scores for name in ("one.pt", "two.pt"))
    torch.testing.assert_close(two, one, rtol=1e-6, atol=0)


def test_finetune_stage_under_torchrun_reestimates_batchnorm_like_one_process(pruned: Path) -> None:
    finetune.run(Params(tiny_params()), pruned / "data", pruned / "pruned", pruned / "ft_one")
    torchrun("finetune", tiny_params(), pruned, "--data-dir", str(pruned / "data"), "--pruned-dir",
             str(pruned / "pruned"), "--out-dir", str(pruned / "ft_two"))
    one, two = (load_state_dict(pruned / name / "state_dict.pt") for name in ("ft_one", "ft_two"))
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)


def test_stage_refuses_a_world_size_it_was_not_launched_with(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    data = tiny_params(distributed={"world_size": 2})
    with pytest.raises(StageError, match=r"'distributed.world_size' is 2 but this run has WORLD_SIZE=1"), \
            process_group(Params(data), torch.device("cpu")):
        pass
