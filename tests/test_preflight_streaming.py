"""Streaming datasets that fail mid-stream: retried with exponential backoff, resumed at the same row (every row once,
in order), and a permanent failure is one line naming the dataset, the split and what to try."""

from __future__ import annotations

import pytest

import harness.data as data
from harness import DocumentSource, HarnessError, load_documents
from harness.data import StreamFailed, is_transient, resumable_rows

from .conftest import DATA

ROWS = [{"id": f"r{i}", "text": f"row {i}"} for i in range(20)]


class HTTPError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"{status} Client Error")
        self.response = type("Response", (), {"status_code": status})()


def flaky(failures: list[tuple[int, Exception]]):
    """An opener over ROWS that raises ``error`` once the stream reaches row ``at`` (one entry per failure)."""
    opened: list[int] = []

    def open_at(position: int):
        opened.append(position)
        for i in range(position, len(ROWS)):
            if failures and failures[0][0] == i:
                raise failures.pop(0)[1]
            yield ROWS[i]

    return open_at, opened


def test_connection_reset_and_403_resume_at_the_same_row():
    open_at, opened = flaky([(3, ConnectionResetError("reset by peer")), (3, HTTPError(403)),
                             (11, ConnectionResetError("reset by peer"))])
    sleeps: list[float] = []
    rows = list(resumable_rows(open_at, "test", retries=3, base_s=0.5, max_s=60, sleep=sleeps.append))
    assert rows == ROWS  # every row once, in order
    assert opened == [0, 3, 3, 11]
    # Two failures in a row back off 0.5 s then 1 s; rows read in between reset the backoff.
    assert sleeps == [0.5, 1.0, 0.5]


def test_backoff_is_capped_and_retries_run_out():
    open_at, _ = flaky([(5, ConnectionResetError("reset"))] * 10)
    sleeps: list[float] = []
    with pytest.raises(StreamFailed) as failed:
        list(resumable_rows(open_at, "test", retries=4, base_s=1, max_s=3, sleep=sleeps.append))
    assert sleeps == [1, 2, 3, 3]
    assert failed.value.position == 5 and failed.value.retries == 4


def test_permanent_errors_are_not_retried():
    assert is_transient(HTTPError(503)) and is_transient(HTTPError(429)) and not is_transient(HTTPError(404))
    assert not is_transient(HarnessError("already explained"))
    open_at, opened = flaky([(2, HTTPError(404))])
    sleeps: list[float] = []
    with pytest.raises(StreamFailed):
        list(resumable_rows(open_at, "test", retries=5, sleep=sleeps.append))
    assert sleeps == [] and opened == [0]


def test_load_documents_resumes_a_real_stream_from_its_saved_state(monkeypatch):
    """A local jsonl streamed through `datasets`, failing twice mid-stream: the same documents as an unbroken read,
    and the reopened stream starts from the iteration state saved before the failure (not from the first row)."""
    source = DocumentSource(dataset="json", data_files=[DATA / "test.jsonl"], split="test", streaming=True, limit=60)
    expected = load_documents(source)
    pulled: list[list[str]] = []  # ids the underlying stream produced, per opening
    fail_on = {expected[25].id, expected[47].id}  # each fails once, when the stream reaches it
    real_iter = data._iter_rows

    def failing_iter(ds):
        pulled.append([])
        for row in real_iter(ds):
            pulled[-1].append(row["id"])
            if row["id"] in fail_on:
                fail_on.discard(row["id"])
                raise ConnectionResetError("connection reset by peer")
            yield row

    monkeypatch.setattr(data, "_iter_rows", failing_iter)
    monkeypatch.setattr(data, "STATE_EVERY", 10)
    monkeypatch.setattr(data, "RETRY_BASE_S", 0.0)
    assert [(d.id, d.text) for d in load_documents(source)] == [(d.id, d.text) for d in expected]
    assert len(pulled) == 3
    # Reopened at the state saved after row 20 (resp. 40): it reads row 20 onwards again, not row 0.
    assert pulled[1][0] == expected[20].id and pulled[2][0] == expected[40].id


def test_permanent_stream_failure_is_one_line(monkeypatch):
    source = DocumentSource(dataset="json", data_files=[DATA / "test.jsonl"], split="test", streaming=True)

    def always_failing(ds):
        yield next(iter(ds))
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(data, "_iter_rows", always_failing)
    monkeypatch.setattr(data, "STREAM_RETRIES", 2)
    monkeypatch.setattr(data, "RETRY_BASE_S", 0.0)
    with pytest.raises(HarnessError) as err:
        load_documents(source)
    message = str(err.value)
    assert "\n" not in message
    assert "dataset 'json' (split 'test'): the stream failed at row 1 after 2 retries" in message
    assert "ConnectionResetError" in message and "local copy" in message and "another `split:`" in message
