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
from distributed_calibration import run

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

