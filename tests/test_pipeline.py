"""The real pipeline end to end: `dvc repro` in a temporary copy of the repo, real MLflow on SQLite.

A tiny configuration (few epochs and batches) keeps each run to about a minute on 2 CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from stages.artifacts import load_pickled, load_state_dict
from stages.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]
COPIED = ["stages", "pruning", "dvc.yaml", "params.yaml", ".dvc/config", ".dvcignore", ".gitignore", "data/raw"]
TINY = {
    "train.epochs": 3,
    "calibrate.batches": 2,
    "finetune.epochs": 1,
    "finetune.bn_batches": 2,
    "latency.warmup": 1,
    "latency.repeats": 3,
    "mlflow.experiment": "e2e",
    "mlflow.registered_model": "e2e-pruned",
}
DETERMINISTIC = [
    "artifacts/baseline.pt",
    "artifacts/select/labels.json",
    "artifacts/pruned/state_dict.pt",
    "artifacts/finetuned/state_dict.pt",
]


def _make_repo(tmp_path: Path, overrides: dict) -> tuple[Path, dict]:
    """Copy the pipeline files, apply `overrides` (dotted keys) to params.yaml, commit; returns (repo, env)."""
    repo = tmp_path / "repo"
    for name in COPIED:
        source, target = ROOT / name, repo / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        assert leaf in node, f"params.yaml has no {key}"
        node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    for cmd in (["git", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "pipeline"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True)
    return repo, env


def _dvc(repo: Path, env: dict, *args: str) -> str:
    proc = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def _digests(repo: Path) -> dict[str, str]:
    return {name: hashlib.sha256((repo / name).read_bytes()).hexdigest() for name in DETERMINISTIC}


def test_repro_tracks_registers_and_is_deterministic(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    repo, env = _make_repo(tmp_path, TINY)
    _dvc(repo, env, "repro")

    metrics = json.loads((repo / "metrics.json").read_text())
    assert set(metrics) == {"accuracy", "accuracy_drop", "latency_ms", "macs", "params", "ratio"}
    assert all(0.0 <= value <= 1.0 for value in metrics["accuracy"].values())
    assert metrics["ratio"]["macs"] <= 0.5
    assert metrics["macs"]["finetuned"] < metrics["macs"]["baseline"]
    assert all(value > 0 for value in metrics["latency_ms"].values())
    channels = json.loads((repo / "plots/channels.json").read_text())
    assert channels and all(row["after"] <= row["before"] for row in channels)

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("e2e")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "knapsack macs=50% on digits_resnet"
    assert run.data.tags["mlflow.note.content"].startswith("knapsack selection to macs=50% of digits_resnet on digits")
    assert run.data.metrics["accuracy.finetuned"] == metrics["accuracy"]["finetuned"]
    assert run.data.metrics["ratio.macs"] == metrics["ratio"]["macs"]
    assert any(key.startswith("kept_ratio.") for key in run.data.metrics)
    assert run.data.params["select.method"] == "knapsack" and run.data.params["train.epochs"] == "3"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
    assert run.data.tags["git.commit"] == head
    assert {"dvc.stage.train", "dvc.stage.select", "dvc.stage.finetune"} <= set(run.data.tags)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.md", "metrics.json", "plots", "safe_model"} <= artifacts
    (version,) = client.search_model_versions("name='e2e-pruned'")
    assert version.run_id == run.info.run_id
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    registered = mlflow.pytorch.load_model(f"models:/e2e-pruned/{version.version}")
    x = load_state_dict(repo / "data/prepared/test.pt")["x"][:5]
    expected = load_bundle(repo / "artifacts/finetuned", safe=True).eval()(x)
    assert torch.allclose(registered(x), expected, atol=1e-5)

    started = time.monotonic()
    second = _dvc(repo, env, "repro")
    assert time.monotonic() - started < 30
    assert "Running stage" not in second and "up to date" in second

    first = _digests(repo)
    _dvc(repo, env, "repro", "--force", "finetune")  # every stage up to finetune again, from scratch
    assert _digests(repo) == first, "same seed must give byte-identical labels and weights"


def _stage_process(dvc_pid: int, stage: str):
    import psutil

    for child in psutil.Process(dvc_pid).children(recursive=True):
        try:
            if "stages.cli" in child.cmdline() and stage in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def _check_cache(repo: Path) -> None:
    """Every object in the DVC cache hashes to its own name (no truncated file was cached)."""
    objects = [p for p in (repo / ".dvc/cache/files/md5").rglob("*") if p.is_file()]
    assert objects
    for path in objects:
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        assert digest == path.parent.name + path.name.removesuffix(".dir"), f"corrupt cache object {path}"


def test_killed_stage_then_repro_completes(tmp_path):
    repo, env = _make_repo(tmp_path, {**TINY, "train.epochs": 200})
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    victim = None
    while victim is None:
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()
        if "epoch/s" in (tmp_path / "killed.log").read_text() or "s/epoch" in (tmp_path / "killed.log").read_text():
            victim = _stage_process(proc.pid, "train")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the training stage die at once, as in a crash
    proc.wait()
    log.close()
    assert not (repo / "artifacts/baseline.pt").exists()
    _check_cache(repo)

    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace("epochs: 200", "epochs: 3"))
    _dvc(repo, env, "repro")
    assert "up to date" in _dvc(repo, env, "status")
    _check_cache(repo)
    assert not list(repo.rglob("*.tmp"))
    load_state_dict(repo / "artifacts/baseline.pt")
    load_pickled(repo / "artifacts/ir_calibrated.pt", object)
    load_bundle(repo / "artifacts/finetuned", safe=True)
    json.loads((repo / "metrics.json").read_text())


@pytest.mark.slow
def test_exp_run_sets_parameters(tmp_path):
    repo, env = _make_repo(tmp_path, TINY)
    _dvc(repo, env, "exp", "run", "-n", "uniform-60", "-S", "select.method=uniform", "-S", "select.target=0.6")
    assert json.loads((repo / "metrics.json").read_text())["ratio"]["macs"] <= 0.6
    table = _dvc(repo, env, "exp", "show", "--csv")
    assert "uniform-60" in table and "uniform" in table
