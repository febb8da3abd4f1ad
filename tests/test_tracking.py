"""MLflow tracking of the pipeline: the default store is the project's own wherever DVC runs the stage (a
queued experiment runs in a temporary copy), and runs and names say what was tried."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from stages.errors import StageError
from stages.params import Params
from stages.tracking import artifact_location, mlflow_names, run_description, run_name, tracking_uri

ROOT = Path(__file__).resolve().parents[1]


def _params(**overrides) -> Params:
    """params.yaml with `overrides` (dotted keys) applied."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = value
    return Params(data)


@pytest.fixture
def dvc_copy(tmp_path, monkeypatch):
    """The environment a queued experiment's stage sees: cwd in DVC's temporary copy, DVC_ROOT the project."""
    project = tmp_path / "project"
    copy = project / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(project))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return project


def test_default_store_is_the_projects_in_a_dvc_copy(dvc_copy):
    assert tracking_uri() == f"sqlite:///{dvc_copy.resolve() / 'mlflow.db'}"
    location = artifact_location(tracking_uri(), "pruning-x")
    assert location == (dvc_copy.resolve() / "mlruns" / "pruning-x").as_uri()


def test_default_store_without_dvc_is_the_working_directorys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_explicit_uri_wins_but_not_a_relative_one_in_a_copy(dvc_copy, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert tracking_uri() == f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert artifact_location("http://127.0.0.1:5000", "x") is None  # a tracking server keeps its own artifacts
    for relative in ("sqlite:///mlflow.db", "mlruns", "file:mlruns"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", relative)
        with pytest.raises(StageError, match="temporary copy .* unset MLFLOW_TRACKING_URI"):
            tracking_uri()
    monkeypatch.chdir(dvc_copy)  # `dvc repro` in the project itself: a relative URI means the project's
    assert tracking_uri() == "file:mlruns"


def test_names_follow_the_model_and_data_unless_params_name_them():
    assert mlflow_names(_params()) == ("pruning-digits_resnet-digits", "digits_resnet-digits-pruned")
    own = _params(**{"model.name": "mypkg.nets:small_net", "data.source": "data/raw/flowers"})
    assert mlflow_names(own) == ("pruning-mypkg.nets.small_net-flowers", "mypkg.nets.small_net-flowers-pruned")
    named = _params(**{"mlflow.experiment": "mine", "mlflow.registered_model": "my-model"})
    assert mlflow_names(named) == ("mine", "my-model")


def test_run_name_says_what_was_tried():
    assert run_name(_params()) == "knapsack macs=50% on digits_resnet"
    assert run_name(_params(**{"select.method": "uniform", "select.ratio": 0.3})) == "uniform ratio=0.3 on digits_resnet"
    assert (run_name(_params(**{"select.method": "global", "select.target": 0.4, "select.latency": "params",
                                "select.steps": 3, "calibrate.criterion": "magnitude"}))
            == "global params=40% steps=3 magnitude on digits_resnet")
    assert (run_name(_params(**{"select.target_mode": "absolute", "select.target": 2.5, "select.latency": "latency"}))
            == "knapsack latency=2.5 on digits_resnet")
    metrics = {"accuracy": {"baseline": 0.99, "pruned": 0.9, "finetuned": 0.98},
               "ratio": {"macs": 0.49, "params": 0.45, "latency": 0.7}}
    description = run_description(_params(), metrics)
    assert "\n" not in description
    assert "knapsack selection to macs=50% of digits_resnet on digits" in description and "0.9800 fine-tuned" in description


STAGE_SCRIPT = """\
from pathlib import Path

import torch

from stages.params import load_params
from stages.tracking import log_pipeline_run, mlflow_names, run_name, tracking_uri

params = load_params()
experiment, registered = mlflow_names(params)
torch.manual_seed(0)
run_id, version = log_pipeline_run(
    uri=tracking_uri(), experiment=experiment, run_name=run_name(params), description="queued",
    params={"select.target": params.get("select.target")}, metrics={"ratio.macs": params.get("select.target")},
    tags={}, artifacts=[(Path("params.yaml"), None)], model=torch.nn.Linear(4, 2), example=torch.zeros(2, 4),
    registered_model=registered)
Path("out.txt").write_text(run_id)
"""


def _env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for role in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{role}_NAME"], env[f"GIT_{role}_EMAIL"] = "test", "test@example.com"
    return env


def _run(repo: Path, env: dict, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def run_queue(repo: Path, env: dict, *experiments: list[str], timeout: float = 600) -> None:
    """`dvc exp run --queue -S ...` per experiment, then `dvc queue start` and wait until all succeeded."""
    for overrides in experiments:
        _run(repo, env, "dvc", "exp", "run", "--queue", *[arg for value in overrides for arg in ("-S", value)])
    # The worker DVC starts keeps the command's stdout and stderr open: with pipes, run() would wait for it.
    with (repo / ".dvc" / "tmp" / "queue-start.log").open("w") as log:
        subprocess.run(["dvc", "queue", "start"], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    deadline = time.monotonic() + timeout
    while True:
        status = _run(repo, env, "dvc", "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status.count("Success") == len(experiments), status


def test_queued_experiments_log_into_the_projects_store(tmp_path):
    """Two queued experiments whose stage logs a run and a model version the way `evaluate` does: both
    land in the project's mlflow.db and mlruns/, which outlive DVC's temporary copies."""
    import mlflow
    from mlflow.tracking import MlflowClient

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "stages", repo / "stages", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "params.yaml", repo / "params.yaml")
    (repo / "log_run.py").write_text(STAGE_SCRIPT)
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"log": {
        "cmd": "python log_run.py", "deps": ["log_run.py", "stages"], "params": ["select", "mlflow"],
        "outs": ["out.txt"]}}}))
    (repo / ".gitignore").write_text("mlflow.db\nmlruns/\n__pycache__/\n")
    env = _env()
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "."], ["git", "commit", "-qm", "init"]):
        _run(repo, env, *cmd)

    run_queue(repo, env, ["select.target=0.4"], ["select.target=0.6"])

    assert not list((repo / ".dvc" / "tmp" / "exps").glob("tmp*")), "DVC's temporary copies are gone"
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("pruning-digits_resnet-digits")
    assert experiment is not None, "the queued runs did not reach the project's store"
    assert Path(experiment.artifact_location.removeprefix("file://")).is_relative_to(repo / "mlruns")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["knapsack macs=40% on digits_resnet", "knapsack macs=60% on digits_resnet"]
    assert sorted(run.data.tags["mlflow.note.content"] for run in runs) == ["queued", "queued"]
    versions = client.search_model_versions("name='digits_resnet-digits-pruned'")
    assert sorted(int(version.version) for version in versions) == [1, 2]
    mlflow.set_tracking_uri(uri)
    for run in runs:
        assert {artifact.path for artifact in client.list_artifacts(run.info.run_id)} == {"params.yaml"}
    model = mlflow.pytorch.load_model("models:/digits_resnet-digits-pruned/2")
    assert model(torch.zeros(3, 4)).shape == (3, 2)


@pytest.mark.slow
def test_queued_pipeline_runs_reach_the_projects_store(tmp_path):
    """The real pipeline, queued twice with no MLFLOW_TRACKING_URI: both runs and model versions are in
    the project's mlflow.db, named by what they tried, their artifacts in the project's mlruns/."""
    from mlflow.tracking import MlflowClient
    from test_pipeline import TINY, _make_repo

    repo, env = _make_repo(tmp_path, TINY)
    del env["MLFLOW_TRACKING_URI"]
    run_queue(repo, env, ["select.target=0.6"], ["select.method=uniform", "select.target=0.6"])

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(TINY["mlflow.experiment"])
    assert experiment is not None, "the queued runs did not reach the project's store"
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["knapsack macs=60% on digits_resnet", "uniform macs=60% on digits_resnet"]
    for run in runs:
        assert Path(run.info.artifact_uri.removeprefix("file://")).is_relative_to(repo / "mlruns")
        assert "summary.md" in {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert len(client.search_model_versions(f"name='{TINY['mlflow.registered_model']}'")) == 2
