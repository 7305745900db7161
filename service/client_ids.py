"""Ids a client puts in a message body (V2 ``id``, native ``request_id``): plain and short, or refused.

The server echoes these ids in its answer and tags log lines with them, so an
unbounded one has the server copy megabytes into every answer (and a log) on
a client's say. They follow the rule of the ``x-request-id`` header (1-128
characters of ``[A-Za-z0-9._:-]``, ``fusionserve.service.logs.SAFE_REQUEST_ID``), but
unlike the header a bad one is refused rather than replaced: the id is the
client's key for matching answers to requests (Triton clients send "1" or a
uuid), and a replaced one would silently match nothing.
"""

from __future__ import annotations

from fusionserve.service.errors import InvalidInput
from fusionserve.service.logs import SAFE_REQUEST_ID

RULE = "at most 128 characters of [A-Za-z0-9._:-]"


def is_plain_id(value: str) -> bool:
    """Whether ``value`` may be echoed: empty (no id) or within the rule."""
    return not value or SAFE_REQUEST_ID.match(value) is not None


def check_client_id(value: str, field: str = "id") -> str:
    """``value`` when it may be echoed; otherwise ``InvalidInput`` naming ``field`` (never the value)."""
    if is_plain_id(value):
        return value
    raise InvalidInput(f"'{field}' must be {RULE} ({len(value)} characters given)", field=field)


def echoable_id(value: str) -> str:
    """``value`` when it may be echoed, else empty: for answers that report a refusal."""
    return value if is_plain_id(value) else ""
