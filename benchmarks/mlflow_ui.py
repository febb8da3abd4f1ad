"""The MLflow UI as a user sees it after three queued experiments, checked in a headless browser.

1. Copies the pipeline into a temporary git repository with a tiny configuration (few epochs and batches)
   and queues three experiments (knapsack, uniform and global selection at different MACs targets) with
   `dvc exp run --queue` + `dvc queue start`, MLFLOW_TRACKING_URI unset: the runs must reach the project's
   own mlflow.db although DVC runs them in temporary copies.
2. Starts `mlflow ui` on 127.0.0.1 against that store and asserts, from the REST API, that each run's name
   carries its method and target, and from the page (Chromium's DOM after the app has rendered) that the runs
   list shows those names.
3. Chooses the columns a comparison needs (accuracy, MACs, latency and parameter ratios, method, target) the way the
   UI's Share button stores a view (an experiment tag `mlflow.sharedViewState.<key>`, opened with
   `?viewStateShareKey=<key>`) and screenshots the runs list with them.

Needs Debian's chromium (`apt-get install chromium`). Takes a few minutes (three pipeline runs).
Run: .venv/bin/python -m benchmarks.mlflow_ui [--out docs/img/mlflow-runs.png] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from tests.test_pipeline import TINY, _make_repo  # the end-to-end test's repository copy
from tests.test_tracking import run_queue

ROOT = Path(__file__).resolve().parents[1]

EXPERIMENTS = [
    ["select.method=knapsack", "select.target=0.5"],
    ["select.method=uniform", "select.target=0.5"],
    ["select.method=global", "select.target=0.35"],
]
COLUMNS = [
    "metrics.`accuracy.finetuned`", "metrics.`ratio.macs`", "metrics.`ratio.latency`", "metrics.`ratio.params`",
    "params.`select.method`", "params.`select.target`",
]
SHARE_KEY = "pruning-comparison"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1900,560", "--virtual-time-budget=20000"]


def queued_store(work: Path) -> Path:
    """Run the three experiments from a queue in a fresh pipeline copy; returns the project's mlflow.db."""
    overrides = {key: value for key, value in TINY.items() if not key.startswith("mlflow.")}  # derived names
    repo, env = _make_repo(work, overrides)
    del env["MLFLOW_TRACKING_URI"]
    started = time.monotonic()
    run_queue(repo, env, *EXPERIMENTS, timeout=1800)
    print(f"three queued experiments: {time.monotonic() - started:.0f} s")
    store = repo / "mlflow.db"
    assert store.is_file(), "the queued runs left no mlflow.db in the project"
    return store


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _api(base: str, endpoint: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{endpoint}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _chromium(url: str, profile: Path, *args: str) -> str:
    proc = subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
                          capture_output=True, text=True, timeout=180, check=True)
    return proc.stdout


def check_ui(store: Path, out: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri",
                               f"sqlite:///{store}", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5).read()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow ui did not start"
                time.sleep(1)

        experiments = _api(base, "experiments/search", {"max_results": 100})["experiments"]
        (experiment,) = [e for e in experiments if e["name"] != "Default"]
        runs = _api(base, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        assert len(runs) == len(EXPERIMENTS), [run["info"]["run_name"] for run in runs]
        names = []
        for run in runs:
            params = {p["key"]: p["value"] for p in run["data"]["params"]}
            name = run["info"]["run_name"]
            method, target = params["select.method"], f"macs={float(params['select.target']):.0%}"
            assert name.split()[:2] == [method, target], f"run name {name!r} does not start with {method} {target}"
            description = {t["key"]: t["value"] for t in run["data"]["tags"]}["mlflow.note.content"]
            assert description.startswith(f"{method} selection to {target}"), description
            names.append(name)
            print(f"run {name!r}: {description}")

        view = {"selectedColumns": COLUMNS, "orderByKey": "attributes.start_time", "orderByAsc": True}
        _api(base, "experiments/set-experiment-tag", {"experiment_id": experiment["experiment_id"],
                                                      "key": f"mlflow.sharedViewState.{SHARE_KEY}",
                                                      "value": json.dumps(view)})
        url = f"{base}/#/experiments/{experiment['experiment_id']}/runs?viewStateShareKey={SHARE_KEY}"
        # One new profile for both visits: the first opens MLflow's assistant panel once (and notes that in
        # the profile's localStorage), so the screenshot shows the runs list at full width.
        profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
        dom = _chromium(url, profile, "--dump-dom")
        missing = [name for name in names if name not in dom]
        assert not missing, f"the runs page does not show {missing}"
        shown = [key.split("`")[1] for key in COLUMNS if key.split("`")[1] in dom]
        print(f"runs page lists {names}; chosen columns shown: {shown}")
        out.parent.mkdir(parents=True, exist_ok=True)
        _chromium(url, profile, f"--screenshot={out.resolve()}")
        shutil.rmtree(profile)
        print(f"screenshot of {url}: {out}")
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mlflow-runs.png")
    parser.add_argument("--keep", type=Path, help="work in this (new) directory and keep it, e.g. to rerun --store")
    parser.add_argument("--store", type=Path, help="an mlflow.db from an earlier --keep run: skip the pipeline runs")
    args = parser.parse_args()
    assert shutil.which("chromium"), "needs Debian's chromium: apt-get install chromium"
    if args.store:
        check_ui(args.store.resolve(), args.out)
        return
    work = Path(tempfile.mkdtemp(prefix="mlflow-ui-")) if args.keep is None else args.keep.resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        check_ui(queued_store(work), args.out)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
