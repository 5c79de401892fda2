"""Atomic writes and durable record logs."""

from __future__ import annotations

import json
import os

import pytest

from harness.store import RecordLog, atomic_write_json, atomic_write_text, read_json, stable_hash


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "a" / "result.json"
    atomic_write_json(path, {"x": 1})
    atomic_write_json(path, {"x": 2})
    assert read_json(path) == {"x": 2}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # like any file the user creates, not mkstemp's 0600


def test_failed_write_keeps_old_content_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    atomic_write_text(path, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_record_log_drops_torn_last_line_and_appends_after_it(tmp_path):
    path = tmp_path / "records.jsonl"
    log = RecordLog(path)
    log.append({"id": "a", "v": 1})
    log.append({"id": "b", "v": 2})
    with open(path, "a") as f:  # a process killed in the middle of a write
        f.write('{"id": "c", "v"')
    log = RecordLog(path)
    assert log.done() == {"a", "b"}
    log.append({"id": "c", "v": 3})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "c"]


def test_stable_hash_ignores_key_order_but_not_values():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
