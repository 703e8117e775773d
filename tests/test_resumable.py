"""The resumable JSONL output: a torn last line is cut, a finished output is kept unless overwritten,
a partial output of other settings is refused, and batches start where one call would start them."""

from __future__ import annotations

import json

import pytest

from scalabl.resumable import complete_lines, write_resumable


def _records(calls: list[tuple[list[int], int]]):
    def records(batch, start):
        calls.append((list(batch), start))
        return [{"x": x} for x in batch]

    return records


def test_a_torn_last_line_is_cut(tmp_path):
    path = tmp_path / "p"
    path.write_text('{"x": 1}\n{"x": 2}\n{"x"')
    assert complete_lines(path) == 2
    assert path.read_text() == '{"x": 1}\n{"x": 2}\n'


def test_resumes_after_the_last_whole_line_in_aligned_batches(tmp_path):
    out = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.partial").write_text('{"x": 0}\n{"x": 1}\n{"x": 2')
    (tmp_path / "out.jsonl.partial.json").write_text(json.dumps({"v": 1}))
    calls: list = []
    done = write_resumable(
        list(range(5)), out, _records(calls), batch_size=2, provenance={"v": 1}, progress=False
    )
    assert done == 3 and calls == [([2, 3], 2), ([4], 4)]
    assert [json.loads(x)["x"] for x in out.read_text().splitlines()] == [0, 1, 2, 3, 4]
    assert (
        not (tmp_path / "out.jsonl.partial").exists() and not (tmp_path / "out.jsonl.partial.json").exists()
    )
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_resumable([1], out, _records([]), batch_size=2, provenance={"v": 1}, progress=False)


def test_a_partial_output_of_other_settings_is_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    (tmp_path / "out.jsonl.partial").write_text('{"x": 0}\n')
    (tmp_path / "out.jsonl.partial.json").write_text(json.dumps({"v": 1, "seed": 0}))
    with pytest.raises(ValueError, match=r"other settings \(seed differ\)"):
        write_resumable(
            [0, 1], out, _records([]), batch_size=2, provenance={"v": 1, "seed": 1}, progress=False
        )
    assert (
        write_resumable(
            [0, 1],
            out,
            _records([]),
            batch_size=2,
            provenance={"v": 1, "seed": 1},
            overwrite=True,
            progress=False,
        )
        == 2
    )
