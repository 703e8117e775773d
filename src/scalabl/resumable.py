"""A JSONL output that survives interruption: one record per input item, written to ``OUT.partial``
(appended and flushed batch by batch) beside ``OUT.partial.json`` (the provenance: what the lines
were computed with), and moved to ``OUT`` only once every item has its line. The same command
resumes after the last complete line; a partial output of other settings is refused."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

Item = TypeVar("Item")


def input_digest(path: Path) -> str:
    """SHA-256 of an input file (part of an output's provenance)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def complete_lines(path: Path) -> int:
    """How many lines of a partial output are whole JSON records; a torn last line is cut off."""
    if not path.is_file():
        return 0
    good, keep = 0, 0
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                json.loads(line)
            except json.JSONDecodeError:
                break
            good += 1
            keep += len(line)
    with path.open("r+b") as f:
        f.truncate(keep)
    return good


def write_resumable(
    items: Sequence[Item],
    out: str | Path,
    records: Callable[[Sequence[Item], int], list[dict[str, Any]]],
    *,
    batch_size: int,
    provenance: dict[str, Any],
    overwrite: bool = False,
    progress: bool = True,
    desc: str = "answers",
) -> int:
    """Write ``records(batch, start)`` (one record per item of ``batch``, which begins at index
    ``start`` of ``items``) for every item into ``out``; returns how many items this call computed
    (the rest came from a partial output it resumed).

    ``provenance`` must match a partial output's for it to be resumed; a finished ``out`` is replaced
    only with ``overwrite``. Batches start at multiples of ``batch_size``, resumed or not."""
    out = Path(out)
    partial, meta = out.with_name(out.name + ".partial"), out.with_name(out.name + ".partial.json")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if partial.exists() and meta.is_file() and json.loads(meta.read_text()) != provenance:
        if not overwrite:
            before = json.loads(meta.read_text())
            changed = sorted(k for k in set(before) | set(provenance) if before.get(k) != provenance.get(k))
            raise ValueError(
                f"{partial}: a partial output computed with other settings ({', '.join(changed)} differ); "
                "pass --overwrite to start again"
            )
        partial.unlink()
    if not partial.exists() or not meta.is_file():
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(b"")
        meta.write_text(json.dumps(provenance, indent=2))
    done = complete_lines(partial)
    if done > len(items):
        raise ValueError(f"{partial}: holds {done} records, more than the {len(items)} inputs")
    bar = tqdm(total=len(items), initial=done, desc=desc, unit="q", disable=not progress)
    with partial.open("a", encoding="utf-8") as f:
        for start in range(done, len(items), batch_size):
            batch = items[start : start + batch_size]
            lines = "".join(json.dumps(r) + "\n" for r in records(batch, start))
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
    bar.close()
    os.replace(partial, out)
    meta.unlink()
    return len(items) - done
