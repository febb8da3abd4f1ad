"""LossAwareCriterion under torch.distributed: 2 gloo ranks on CPU calibrate one shard each and end with the
scores of one process over the union, the same selections and the same pruned model."""
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
from stages import calibrate, prepare, trace, train
from stages.artifacts import load_pickled
from stages.distributed import process_group
from stages.errors import StageError
from stages.params import Params

WORLD_SIZE = 2
TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out_dir: Path, ddp: bool) -> list[dict]:
    """Start WORLD_SIZE rank processes (env:// rendezvous on a free port); return each rank's results."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(WORLD_SIZE),
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1])]))
    script = Path(__file__).with_name("distributed_calibration.py")
    args = [sys.executable, str(script), "--out-dir", str(out_dir)] + (["--ddp"] if ddp else [])
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


@pytest.mark.parametrize("ddp", [False, True], ids=["plain", "ddp"])
def test_ranks_match_one_process_over_the_union(tmp_path: Path, ddp: bool) -> None:
    reference = run(rank=0, world_size=1, ddp=False)
    ranks = launch(tmp_path, ddp)
    for result in ranks:
        assert torch.equal(result["scores"], ranks[0]["scores"])  # every rank holds the same scores
        torch.testing.assert_close(result["scores"], reference["scores"], rtol=1e-6, atol=0)
        assert result["uniform"] == reference["uniform"]
        assert result["global"] == reference["global"]
        assert result["pruned"].keys() == reference["pruned"].keys()
        for name, tensor in result["pruned"].items():
            assert torch.equal(tensor, ranks[0]["pruned"][name]), name
            torch.testing.assert_close(tensor, reference["pruned"][name], rtol=0, atol=0)


def test_calibrate_stage_under_torchrun_matches_one_process(tmp_path: Path) -> None:
    """`torchrun --nproc_per_node 2 -m stages.cli calibrate` (5 batches: uneven shards) equals one process."""
    root = Path(__file__).resolve().parents[1]
    data = yaml.safe_load((root / "params.yaml").read_text())
    data["model"]["kwargs"] = {"width": 8}
    data["train"]["epochs"] = 1
    data["calibrate"]["batches"] = 5
    params = Params(data)
    prepare.run(params, tmp_path / "data")
    train.run(params, tmp_path / "data", tmp_path / "baseline.pt", tmp_path / "train.json")
    trace.run(params, tmp_path / "data", tmp_path / "baseline.pt", tmp_path / "ir.pt")
    calibrate.run(params, tmp_path / "data", tmp_path / "ir.pt", tmp_path / "one.pt")
    data["distributed"]["world_size"] = WORLD_SIZE
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    torchrun = Path(sys.executable).with_name("torchrun")
    subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", str(WORLD_SIZE), "-m", "stages.cli", "calibrate",
                    "--params", str(tmp_path / "params.yaml"), "--data-dir", str(tmp_path / "data"),
                    "--ir-path", str(tmp_path / "ir.pt"), "--out-path", str(tmp_path / "two.pt")],
                   cwd=root, check=True, timeout=TIMEOUT_S, capture_output=True)
    one, two = (load_pickled(tmp_path / name, PruningIR).snapshot().scores for name in ("one.pt", "two.pt"))
    torch.testing.assert_close(two, one, rtol=1e-6, atol=0)


def test_stage_refuses_a_world_size_it_was_not_launched_with(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    data["distributed"]["world_size"] = 2
    with pytest.raises(StageError, match=r"'distributed.world_size' is 2 but this run has WORLD_SIZE=1"), \
            process_group(Params(data), torch.device("cpu")):
        pass
