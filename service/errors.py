"""The error vocabulary of the core.

Every failure a request can meet is one of these types. They carry a stable
``code`` and a human message, and know nothing about HTTP or gRPC: each door
maps them once (``service/http/errors.py``, ``service/grpc/errors.py``).
"""

from __future__ import annotations

from typing import Any

#: The most of a client-given name an error message repeats back.
SHOWN_CHARS = 128


def shown(value: str) -> str:
    """``repr(value)``, cut to ``SHOWN_CHARS``: an error names what was wrong without echoing megabytes."""
    return repr(value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "...")


class FusionServeError(Exception):
    """Base of every error the core raises on purpose."""

    code: str = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class InvalidInput(FusionServeError):
    """The client sent something malformed or inconsistent (HTTP 400)."""

    code = "invalid_input"


class UnsupportedMediaType(InvalidInput):
    """A payload is not of a type we can decode (HTTP 415)."""

    code = "unsupported_media_type"


class LimitExceeded(InvalidInput):
    """An input is over one of the configured bounds (HTTP 413)."""

    code = "limit_exceeded"


class UnprocessableInput(InvalidInput):
    """Well-formed but semantically unusable (HTTP 422), e.g. no modality."""

    code = "unprocessable"


class ModelNotFound(FusionServeError):
    """Unknown model or version (HTTP 404)."""

    code = "not_found"


class NotReady(FusionServeError):
    """The server or model cannot take work now: loading or draining (HTTP 503)."""

    code = "unavailable"


class PermissionDenied(FusionServeError):
    """The server's settings forbid the call, whoever makes it (HTTP 403, PERMISSION_DENIED)."""

    code = "permission_denied"


class LoadFailed(FusionServeError):
    """A repository load found the entry broken; what served before still serves (HTTP 400)."""

    code = "load_failed"


class Overloaded(FusionServeError):
    """The model's queue is full; the request was shed (HTTP 429)."""

    code = "overloaded"


class DeadlineExceeded(FusionServeError):
    """The request's deadline passed before it could be answered (HTTP 504)."""

    code = "deadline_exceeded"


class InternalError(FusionServeError):
    """A real fault on our side (HTTP 500)."""

    code = "internal"


class ConfigError(FusionServeError):
    """A model-repository entry is malformed; names the file and the field."""

    code = "config_error"


def brief(value: Any, limit: int = 80) -> str:
    """A short, always-computable ``repr`` of a client's value for an error message.

    Never fails and never grows with the input: nesting, long strings and
    huge integers (whose ``repr`` raises past 4,300 digits) are elided.
    """
    import reprlib

    shortener = reprlib.Repr()
    shortener.maxlevel, shortener.maxlist, shortener.maxdict = 3, 6, 6
    shortener.maxstring, shortener.maxother, shortener.maxlong = limit, limit, 40
    try:
        text = shortener.repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
