"""Atomic writes survive a SIGKILL mid-write; weights-only files are deterministic and refuse code."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from stages.artifacts import atomic_write, load_pickled, load_state_dict, save_pickled, save_state_dict
from stages.errors import StageError

ROOT = Path(__file__).resolve().parents[1]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_sigkill_mid_write_leaves_old_file(tmp_path):
    target = tmp_path / "big.bin"
    target.write_bytes(b"old")
    started = tmp_path / "started"
    writer = textwrap.dedent(
        f"""
        import time
        from stages.artifacts import atomic_write
        with atomic_write({str(target)!r}) as handle:
            handle.write(b"x" * 1000)
            handle.flush()
            open({str(started)!r}, "w").close()
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "writer did not start"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == b"old"


def test_state_dict_bytes_do_not_depend_on_the_path(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    save_state_dict(state, tmp_path / "a.pt")
    save_state_dict(state, tmp_path / "other_name.pt")
    digest = [hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() for name in ("a.pt", "other_name.pt")]
    assert digest[0] == digest[1]
    assert torch.equal(load_state_dict(tmp_path / "a.pt")["w"], state["w"])


def test_weights_only_load_refuses_pickled_objects(tmp_path):
    save_pickled(torch.nn.Linear(2, 2), tmp_path / "model.pt")
    with pytest.raises(StageError, match="not a weights-only state_dict"):
        load_state_dict(tmp_path / "model.pt")


def test_truncated_and_foreign_files_are_named(tmp_path):
    save_pickled(torch.nn.Linear(2, 2), tmp_path / "model.pt")
    data = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(StageError, match="cut.pt: truncated or not a torch.save file"):
        load_pickled(tmp_path / "cut.pt", torch.nn.Module)
    with pytest.raises(StageError, match="model.pt: holds a Linear, expected a Conv2d"):
        load_pickled(tmp_path / "model.pt", torch.nn.Conv2d)
    with pytest.raises(StageError, match="absent.pt: not found"):
        load_state_dict(tmp_path / "absent.pt")


def test_leftover_temp_file_of_a_killed_writer_is_removed(tmp_path):
    (tmp_path / ".out.bin.abc123.tmp").write_bytes(b"half")
    with atomic_write(tmp_path / "out.bin") as handle:
        handle.write(b"new")
    assert os.listdir(tmp_path) == ["out.bin"]
