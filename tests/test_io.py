"""Atomic writes: a failure inside the block leaves the previous file (or folder) whole and no temp behind.
Claims: one owner at a time, stale ones taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from scalabl.io import FolderInUse, atomic_dir, atomic_path, claim, output_folder, write_json, write_text


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


# ---- output folders: nothing a command did not write is lost ----------------------------------------
OWN = ("result.json", "plots", "*.png")


def test_a_new_or_empty_folder_is_written(tmp_path):
    with output_folder(tmp_path / "new", OWN) as out:
        write_text(out / "result.json", "{}")
    (tmp_path / "empty").mkdir()
    with output_folder(tmp_path / "empty", OWN):
        pass


@pytest.mark.parametrize("existing", ["result.json", "notes.txt"])
def test_a_folder_holding_anything_is_refused_and_left_alone(tmp_path, existing):
    (tmp_path / existing).write_text("keep me")
    refused = pytest.raises(
        FolderInUse, match=rf"{tmp_path}: the folder already holds {existing}.*--overwrite"
    )
    with refused, output_folder(tmp_path, OWN, command="scalabl x"):
        pytest.fail("the block must not run")
    assert (tmp_path / existing).read_text() == "keep me"


def test_overwrite_replaces_own_files_keeps_others_and_drops_stale_own_entries(tmp_path):
    write_text(tmp_path / "result.json", "old")
    write_text(tmp_path / "a.png", "old plot")  # not written again: stale
    write_text(tmp_path / "plots" / "p1.png", "old")  # an own folder rewritten in part: kept
    write_text(tmp_path / "notes.txt", "mine")  # not the command's: kept
    with output_folder(tmp_path, OWN, overwrite=True) as out:
        write_text(out / "result.json", "new")
        write_text(out / "plots" / "p2.png", "new")
    assert (tmp_path / "result.json").read_text() == "new"
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "a.png").exists()
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["p1.png", "p2.png"]


def test_a_failed_block_removes_nothing(tmp_path):
    write_text(tmp_path / "a.png", "old plot")
    with pytest.raises(Boom), output_folder(tmp_path, OWN, overwrite=True):
        raise Boom
    assert (tmp_path / "a.png").read_text() == "old plot"


def test_a_continued_folder_accepts_its_own_entries_only(tmp_path):
    write_text(tmp_path / "result.json", "earlier")
    with output_folder(tmp_path, OWN, continues=True):
        pass
    assert (tmp_path / "result.json").read_text() == "earlier"  # continued, not pruned
    write_text(tmp_path / "notes.txt", "x")
    with pytest.raises(FolderInUse, match="notes.txt"), output_folder(tmp_path, OWN, continues=True):
        pass


def test_a_file_or_an_unwritable_place_is_named(tmp_path):
    write_text(tmp_path / "f", "x")
    with pytest.raises(FolderInUse, match="is a file"), output_folder(tmp_path / "f", OWN):
        pass
    with pytest.raises(OSError, match="is not writable"), output_folder(tmp_path / "f" / "sub", OWN):
        pass
