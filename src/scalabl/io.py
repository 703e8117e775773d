"""Atomic file writes (a reader never sees a half-written result, checkpoint or cache entry), the
write rule of output folders (nothing a command did not write is lost), and claim files (several
processes share one queue of work)."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 and some writers (safetensors) re-create the file: set the mode last,
        # so results read like normal files
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds.

    Used for caches (a converted model) so an interrupted write never leaves a broken folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@contextmanager
def claim(path: str | os.PathLike) -> Iterator[bool]:
    """Try to claim a unit of work by creating ``path`` exclusively; yield whether this process got it.

    The file holds the owner's host and pid, and is removed when the block ends. A claim left by a
    process of this host that no longer runs (killed, crashed) is stale and is taken over; a claim
    from another host is always respected (delete the file by hand if that host is gone).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    owned = False
    for _ in range(2):  # the second try follows the removal of a stale claim
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                owner = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                break  # being written or just removed by its owner: not ours this time
            pid = owner.get("pid") if isinstance(owner, dict) else None
            if not isinstance(pid, int) or owner.get("host") != me["host"] or pid <= 0 or _alive(pid):
                break  # a live claim, another host's, or one we cannot read: leave it
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        owned = True
        break
    try:
        yield owned
    finally:
        if owned:
            path.unlink(missing_ok=True)


class FolderInUse(FileExistsError):
    """A command was pointed at a folder holding files it did not write (see :func:`output_folder`)."""


def _stamps(entry: Path) -> set[tuple[int, int]]:
    """(inode, mtime) of every file at or under ``entry``: a file written anew has a new pair."""
    files = [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
    stamps = set()
    for p in files:
        st = p.stat()
        stamps.add((st.st_ino, st.st_mtime_ns))
    return stamps


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@contextmanager
def output_folder(
    path: str | os.PathLike,
    own: tuple[str, ...],
    *,
    overwrite: bool = False,
    continues: bool = False,
    command: str = "this command",
) -> Iterator[Path]:
    """The write rule of every command that writes a folder: nothing it did not write is lost.

    ``own`` names (``fnmatch`` patterns of top-level entries) what the command writes there. A
    folder that holds anything at all, an earlier run's files included, is refused with a
    :class:`FolderInUse` naming it and the ``--overwrite`` flag, unless ``continues`` (a bench grid
    resumes in its own folder: then only entries that are not its own are refused). With
    ``overwrite`` the command writes its files over the old ones (each atomically, as every writer
    here does) and, when the block succeeds, removes its own entries of the earlier run that it did
    not write again (a stale checkpoint or plot); entries that are not its own are never touched.
    """
    path = Path(path)
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if path.exists() and not path.is_dir():
        raise FolderInUse(f"{path}: is a file, not a folder; choose another output folder")
    blocking = [e for e in entries if not (continues and _matches(e, own))]
    if blocking and not overwrite:
        shown = ", ".join(blocking[:4]) + (f" and {len(blocking) - 4} more" if len(blocking) > 4 else "")
        raise FolderInUse(
            f"{path}: the folder already holds {shown}, which {command} did not write now; "
            "choose a new folder, or pass --overwrite to replace the files it writes there "
            "(everything else is kept)"
        )
    before = {} if continues else {e: _stamps(path / e) for e in entries if _matches(e, own)}
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"output folder {path} is not writable: {err}") from err
    yield path
    for name, stamps in before.items():
        entry = path / name
        if entry.exists() and _stamps(entry) <= stamps:  # nothing in it written by this run: stale
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
