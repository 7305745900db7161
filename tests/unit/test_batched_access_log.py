"""The access log is written in batches; every other line at once and in order."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from fusionserve.service.logs import ACCESS, BatchedAccessHandler, JsonFormatter, request_id_var


class CountingStream(io.StringIO):
    """A stream that counts its writes (stderr is unbuffered: each is a system call)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.writes += 1
            return super().write(text)


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, BatchedAccessHandler, CountingStream]]:
    stream = CountingStream()
    handler = BatchedAccessHandler(stream, flush_s=0.05, max_bytes=4096)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.batched")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, handler, stream
    logger.handlers[:] = []


def test_access_lines_are_written_together_a_little_later(
    logged: tuple[logging.Logger, BatchedAccessHandler, CountingStream],
) -> None:
    logger, _, stream = logged
    for i in range(20):
        token = request_id_var.set(f"id-{i}")  # read when the record is made, not when written
        logger.info("request", extra={"status": 200, ACCESS: True})
        request_id_var.reset(token)
    assert stream.writes == 0
    deadline = time.monotonic() + 2
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 20 and stream.writes == 1
    assert all(f'"request_id": "id-{i}"' in line for i, line in enumerate(lines))


def test_any_other_line_is_written_at_once_after_the_kept_ones(
    logged: tuple[logging.Logger, BatchedAccessHandler, CountingStream],
) -> None:
    logger, _, stream = logged
    logger.info("request", extra={"status": 200, ACCESS: True})
    logger.warning("instance restarted")
    lines = stream.getvalue().splitlines()
    assert [line.split('"message": "')[1].split('"')[0] for line in lines] == [
        "request",
        "instance restarted",
    ]


def test_a_full_batch_is_written_by_the_caller(
    logged: tuple[logging.Logger, BatchedAccessHandler, CountingStream],
) -> None:
    logger, handler, stream = logged
    handler.flush_s = 60.0  # only the caller can write it in time
    line = len(JsonFormatter().format(logging.makeLogRecord({"msg": "request", "status": 200}))) + 1
    for _ in range(handler.max_bytes // line + 1):
        logger.info("request", extra={"status": 200, ACCESS: True})
    assert stream.writes == 1  # not waiting for the writer thread


def test_flush_at_exit_writes_what_is_kept(
    logged: tuple[logging.Logger, BatchedAccessHandler, CountingStream],
) -> None:
    logger, handler, stream = logged
    handler.flush_s = 60.0  # the writer thread would not come in time
    logger.info("request", extra={"status": 200, ACCESS: True})
    handler.flush()  # what logging.shutdown() does
    assert '"message": "request"' in stream.getvalue()
