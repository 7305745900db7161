"""An answer's head and body leave in one write; bytes keep their order whatever the app sends."""

from __future__ import annotations

import asyncio
from typing import cast

from fusionserve.service.http.transport import OneWriteAnswers


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _answers() -> tuple[OneWriteAnswers, RecordingTransport]:
    real = RecordingTransport()
    return OneWriteAnswers(cast(asyncio.Transport, real)), real


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_head_and_body_leave_together() -> None:
    answers, real = _answers()
    answers.write(HEAD)
    assert real.writes == []
    answers.write(b"{}")
    assert real.writes == [HEAD + b"{}"]


def test_100_continue_is_never_held() -> None:
    answers, real = _answers()
    answers.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert real.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]


def test_a_large_body_follows_its_head_in_order() -> None:
    answers, real = _answers()
    body = b"x" * (OneWriteAnswers.JOIN_MAX + 1)
    answers.write(HEAD)
    answers.write(body)
    assert real.writes == [HEAD, body]


def test_close_and_flush_send_a_held_head_first_and_discard_drops_it() -> None:
    answers, real = _answers()
    answers.write(HEAD)
    answers.close()
    assert real.writes == [HEAD] and real.closed and answers.is_closing()
    answers, real = _answers()
    answers.write(HEAD)
    answers.discard()
    answers.flush()
    assert real.writes == []


def test_streamed_chunks_after_the_head_pass_straight_through() -> None:
    answers, real = _answers()
    for chunk in (HEAD, b"a", b"b", b"c"):
        answers.write(chunk)
    assert real.writes == [HEAD + b"a", b"b", b"c"]
