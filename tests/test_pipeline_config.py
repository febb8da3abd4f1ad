"""dvc.yaml against the code and against a user's fresh clone: each stage's deps cover the files it imports,
metrics are committed to git, and `dvc plots show` renders without a network."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.plots import channels_figure, tradeoff_figure

ROOT = Path(__file__).resolve().parents[1]


def _dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _resolve(entry: str | dict, paths: dict[str, str]) -> str:
    """A deps/outs entry's path with dvc.yaml's `${paths.*}` variables filled in."""
    path = entry if isinstance(entry, str) else next(iter(entry))
    return re.sub(r"\$\{paths\.(\w+)\}", lambda match: paths[match.group(1)], path)


def _module_file(module: str) -> Path | None:
    """The repository file that defines `module` (a module or a package's __init__.py), if any."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """Every module `path` imports anywhere (functions included), relative imports made absolute; for
    `from package import name` both `package` and `package.name` (name may be a submodule)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module.removesuffix(".__init__") if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


def import_closure(*modules: str) -> set[Path]:
    """The repository files that importing `modules` executes: each module, its parent packages'
    __init__.py files, and the same for what they import, transitively."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        parts = todo.pop().split(".")
        for depth in range(1, len(parts) + 1):
            path = _module_file(".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(_imported_modules(path))
    return seen


def _stage_modules(cmd: str) -> tuple[str, str]:
    """`python -m stages.cli <stage>` (or torchrun ... -m stages.cli <stage>) runs stages.cli, which imports
    stages.<stage>."""
    match = re.search(r"-m stages\.cli (\w+)", cmd)
    assert match, f"not a stages.cli command: {cmd}"
    return "stages.cli", f"stages.{match.group(1)}"


STAGES = _dvc_yaml()["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_are_its_import_closure(name):
    data = _dvc_yaml()
    (paths,) = [entry["paths"] for entry in data.get("vars", []) if "paths" in entry] or [{}]
    stage = data["stages"][name]
    deps = [ROOT / _resolve(dep, paths) for dep in stage["deps"]]
    closure = import_closure(*_stage_modules(stage["cmd"]))

    uncovered = sorted(str(path.relative_to(ROOT)) for path in closure
                       if not any(path == dep or dep in path.parents for dep in deps))
    assert not uncovered, f"dvc.yaml stage {name!r}: deps miss files its command imports: {uncovered}"
    # The pipeline's own code only: a model of the user's own (`model.name: pkg.mod:factory`) is imported
    # dynamically, so its file is a dep the imports do not show.
    code_deps = [dep for dep in deps if dep.relative_to(ROOT).parts[0] in ("stages", "pruning")]
    unused = sorted(str(dep.relative_to(ROOT)) for dep in code_deps
                    if not any(path == dep or dep in path.parents for path in closure))
    assert not unused, f"dvc.yaml stage {name!r}: deps list code its command never imports: {unused}"


def test_import_closure_follows_relative_imports_and_packages():
    closure = {str(path.relative_to(ROOT)) for path in import_closure("stages.bundle")}
    # stages.bundle imports pruning.tracing.codegen: the pruning and pruning.tracing packages run too,
    # and pruning/__init__.py's relative imports (`from .ir import ...`) bring in the rest of the library.
    assert {"stages/__init__.py", "stages/bundle.py", "stages/models.py", "pruning/__init__.py",
            "pruning/tracing/__init__.py", "pruning/tracing/codegen.py", "pruning/ir.py"} <= closure
    assert "stages/evaluate.py" not in closure


def _metric_and_plot_data(data: dict) -> list[tuple[str, str, dict | None]]:
    """(stage, path, options) of every metrics file and JSON plot-data output (under plots/) of dvc.yaml."""
    paths = next((entry["paths"] for entry in data.get("vars", []) if "paths" in entry), {})
    found = []
    for name, stage in data["stages"].items():
        plot_data = [out for out in stage.get("outs", []) if re.fullmatch(r"plots/.*\.json", _resolve(out, paths))]
        for entry in stage.get("metrics", []) + plot_data:
            found.append((name, _resolve(entry, paths), None if isinstance(entry, str) else next(iter(entry.values()))))
    return found


def _git(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)


def test_metrics_are_committed_so_a_fresh_clone_shows_them(tmp_path):
    """In a fresh clone (no DVC cache, no remote) `dvc metrics show` must read main's metrics from git."""
    if _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout")
    found = _metric_and_plot_data(_dvc_yaml())
    assert {path for _, path, _ in found} >= {"metrics.json", "artifacts/train_metrics.json"}
    for stage, path, options in found:
        assert options and options.get("cache") is False, f"dvc.yaml stage {stage!r}: {path} needs `cache: false`"
        assert _git("ls-files", "--error-unmatch", path).returncode == 0, f"{path} is not committed to git"

    clone = tmp_path / "clone"
    assert _git("clone", "-q", str(ROOT), str(clone)).returncode == 0
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["dvc", "metrics", "show", "--json"], cwd=clone, env=env, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    (revision,) = shown.values()
    assert "error" not in revision, revision
    files = revision["data"]
    assert 0.0 < files["metrics.json"]["data"]["accuracy"]["finetuned"] <= 1.0
    assert 0.0 < files["artifacts/train_metrics.json"]["data"]["val_accuracy"] <= 1.0


def _plot_files(data: dict) -> dict[str, set[str]]:
    """The files dvc.yaml's top-level `plots` draw from, each with the data fields it reads (none for images)."""
    paths = next((entry["paths"] for entry in data.get("vars", []) if "paths" in entry), {})
    files: dict[str, set[str]] = {}
    for entry in data["plots"]:
        if isinstance(entry, str):
            files.setdefault(_resolve(entry, paths), set())
            continue
        for config in entry.values():
            fields = {config["x"]} if isinstance(config.get("x"), str) else set()
            for source, read in config["y"].items():
                files.setdefault(_resolve(source, paths), set()).update(fields, [read] if isinstance(read, str) else read)
    return files


def test_plots_show_renders_offline(tmp_path):
    """`dvc plots show` of the pipeline's plots writes HTML with no external URL, its images stored beside it."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, repo / name)
    files = _plot_files(_dvc_yaml())
    for path, fields in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".png"):  # drawn by the stage's own code where it is one of evaluate's plots
            channels_figure([{"layer": "conv1", "before": 16, "after": 8}], repo / path)
        else:
            (repo / path).write_text(json.dumps([{field: float(row) for field in fields} for row in range(3)]))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "plots", "show", "-o", "out"]):
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{cmd}: {proc.stdout}{proc.stderr}"

    html = (repo / "out" / "index.html").read_text()
    assert not re.findall(r"(?:https?:)?//[\w.-]+", html), "dvc plots show loads something from the network"
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == len(files)
    assert all(any(src.endswith(Path(path).name) for src in sources) for path in files), sources
    assert all((repo / "out" / src).is_file() for src in sources)


def test_evaluate_draws_the_declared_png_plots(tmp_path):
    """The image plots dvc.yaml declares are the PNG files evaluate writes (stages.plots draws them)."""
    data = _dvc_yaml()
    images = {path for path in _plot_files(data) if path.endswith(".png")}
    (paths,) = [entry["paths"] for entry in data["vars"] if "paths" in entry]
    outs = {_resolve(entry, paths) for entry in data["stages"]["evaluate"]["outs"]}
    assert images == {paths["channels_plot"], paths["tradeoff_plot"]} and images <= outs
    channels_figure([{"layer": "conv1", "before": 16, "after": 8}], tmp_path / "channels.png")
    tradeoff_figure([{"model": "baseline", "accuracy": 0.9, "latency_ms": 1.0}], tmp_path / "tradeoff.png")
    for name in ("channels.png", "tradeoff.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_cli_defaults_are_the_paths_dvc_yaml_passes():
    """`pruning <stage>` with no path options does what `dvc repro <stage>` does: both read dvc.yaml's paths."""
    import click

    from stages.cli import cli, pipeline_paths

    data = _dvc_yaml()
    paths = pipeline_paths(ROOT / "dvc.yaml")
    for name, stage in data["stages"].items():
        passed = dict(re.findall(r"--([\w-]+) \$\{paths\.(\w+)\}", stage["cmd"]))
        options = {param.opts[0].removeprefix("--"): param for param in cli.commands[name].params
                   if isinstance(param.type, click.Path) and param.name != "params_path"}
        assert set(passed) == set(options) - {"lock-path"}, f"stage {name!r}: dvc.yaml passes {sorted(passed)}"
        for option, key in passed.items():
            assert options[option].default == Path(paths[key]), f"stage {name!r}: --{option} default"
