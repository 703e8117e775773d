"""Atomic writes: a failure inside the block leaves the previous file (or folder) whole and no temp behind.
Claims: one owner at a time, stale ones taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from scalabl.io import atomic_dir, atomic_path, claim, write_json, write_text


class Boom(Exception):
    pass


def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"old": 1})
    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text('{"new": ')  # half a file
        raise Boom
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_atomic_path_replaces_on_success_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "report.md"
    write_text(target, "first")
    write_text(target, "second")
    assert target.read_text() == "second"
    assert target.stat().st_mode & 0o044  # readable by others, not mkstemp's 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.md"]


def test_atomic_dir_keeps_the_old_folder_when_the_write_fails(tmp_path):
    target = tmp_path / "cache"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(Boom), atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
        raise Boom
    assert [p.name for p in target.iterdir()] == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_files_rewritten_by_their_writer_get_normal_permissions(tmp_path):
    import torch
    from safetensors.torch import save_file

    target = tmp_path / "adapter.safetensors"
    with atomic_path(target) as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))
    assert target.stat().st_mode & 0o044


def test_a_claim_is_exclusive_and_released(tmp_path):
    path = tmp_path / "claims" / "g"
    with claim(path) as first:
        assert first and json.loads(path.read_text()) == {"host": socket.gethostname(), "pid": os.getpid()}
        with claim(path) as second:
            assert not second  # held by a live process (this one)
        assert path.exists()  # the loser does not remove the owner's claim
    assert not path.exists()
    with claim(path) as again:
        assert again


def test_a_stale_claim_of_this_host_is_taken_over_and_another_hosts_is_respected(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / "stale"
    stale.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    with claim(stale) as ours:
        assert ours and json.loads(stale.read_text())["pid"] == os.getpid()
    foreign = tmp_path / "foreign"
    foreign.write_text(json.dumps({"host": socket.gethostname() + "-elsewhere", "pid": int(dead.stdout)}))
    with claim(foreign) as ours:
        assert not ours
    assert foreign.exists()
    half = tmp_path / "half"
    half.write_text("")  # its owner is still writing it
    with claim(half) as ours:
        assert not ours
