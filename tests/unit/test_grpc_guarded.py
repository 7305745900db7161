"""``guarded``: the access-log line of a call is written before its answer or status leaves.

Deterministic with a fake context: a test that reads the server's log right
after its call returns (as the integration tests do) must find the line.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

from fusionserve.service.errors import ModelNotFound
from fusionserve.service.grpc.errors import guarded


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.codes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.codes.append(record.__dict__["code"])


class Context:
    """What ``guarded`` uses of a ``grpc.aio.ServicerContext``; ``abort`` notes what was logged."""

    def __init__(self, lines: Lines) -> None:
        self.lines = lines
        self.logged_at_abort: list[str] | None = None
        self.trailing: tuple[tuple[str, str], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", "trace-1"),)

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailing = metadata

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.logged_at_abort = list(self.lines.codes)
        raise grpc.aio.AbortError(f"{code}: {details}")


class Servicer:
    @guarded
    async def Fails(self, request: Any, context: Any) -> Any:
        raise ModelNotFound("model 'nope' is not in the repository", model="nope")

    @guarded
    async def Answers(self, request: Any, context: Any) -> Any:
        return "answer"


@pytest.fixture
def lines() -> Any:
    handler = Lines()
    logger = logging.getLogger("fusionserve.grpc")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


async def test_failed_call_is_logged_once_before_its_status_leaves(lines: Lines) -> None:
    context = Context(lines)
    with pytest.raises(grpc.aio.AbortError):
        await Servicer().Fails(None, context)
    assert context.logged_at_abort == ["NOT_FOUND"]
    assert lines.codes == ["NOT_FOUND"]
    assert context.trailing == (("x-request-id", "trace-1"),)


async def test_answered_call_is_logged_once(lines: Lines) -> None:
    assert await Servicer().Answers(None, Context(lines)) == "answer"
    assert lines.codes == ["OK"]
