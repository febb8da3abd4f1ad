"""params.yaml access: every missing or mistyped key is named in the error."""

import pytest
from click.testing import CliRunner

from stages.cli import cli
from stages.params import Params, ParamsError, flatten, load_params


@pytest.fixture
def params() -> Params:
    return Params({"seed": 0, "select": {"method": "knapsack", "target": 0.5, "n": None, "flag": True}})


def test_missing_key_is_named(params):
    with pytest.raises(ParamsError, match=r"missing key 'select\.ratio' \(no 'ratio' under select\)"):
        params.get_float("select.ratio")
    with pytest.raises(ParamsError, match=r"missing key 'train\.epochs' \(no 'train' under the top level\)"):
        params.get_int("train.epochs")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: p.get_int("select.target"), r"'select\.target' must be an integer, got 0\.5"),
        (lambda p: p.get_int("select.flag"), r"'select\.flag' must be an integer, got True"),
        (lambda p: p.get_float("select.method"), r"'select\.method' must be a number, got 'knapsack'"),
        (lambda p: p.get_float("select.target", min=0.6), r"'select\.target' must be a number in \[0\.6, inf\]"),
        (lambda p: p.get_str("select.method", choices=("uniform", "global")), r"one of 'uniform', 'global'"),
        (lambda p: p.get_str("select.n"), r"'select\.n' must be a non-empty string, got None"),
        (lambda p: p.get_bool("seed"), r"'seed' must be true or false, got 0"),
        (lambda p: p.get_mapping("select.method"), r"'select\.method' must be a mapping"),
    ],
)
def test_mistyped_key_is_named(params, call, message):
    with pytest.raises(ParamsError, match=message):
        call(params)


def test_optional_values(params):
    assert params.get_int("select.n", optional=True) is None
    assert params.get_float("select.target", min=0.0, max=1.0) == 0.5


def test_load_params_errors(tmp_path):
    with pytest.raises(ParamsError, match="parameters file not found"):
        load_params(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("select: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_flatten():
    assert flatten({"a": 1, "b": {"c": {"d": 2}, "e": {}}}) == {"a": 1, "b.c.d": 2, "b.e": {}}


def test_cli_reports_the_key_without_traceback(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("seed: 0\ndata:\n  source: digits\n  val_fraction: 0.15\n")
    result = CliRunner().invoke(cli, ["prepare", "--params", str(params), "--out-dir", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "missing key 'data.test_fraction'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command", ["prepare", "train", "trace", "calibrate", "select", "prune", "finetune", "evaluate"]
)
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "--params" in result.output
