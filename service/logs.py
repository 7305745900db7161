"""Structured logging: one JSON object per line, carrying the request id.

The request id lives in a context variable set by the HTTP middleware (and
the gRPC servicers), so every log line of a request can be joined to it.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import os
import re
import sys
import threading
import time
from typing import TextIO

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

#: A client's own request id is kept when it looks like one (no spaces, bounded).
#: ``\Z``, not ``$``: ``$`` also matches before a final newline ("id\n").
SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")

# Request ids: a random per-process prefix and a counter — unique, and far
# cheaper per request than uuid4 (which showed up at 7% of a profile).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


_EXTRA_FIELDS = ("method", "path", "status", "duration_ms", "model", "protocol", "rpc", "code")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key in _EXTRA_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


#: Control characters (C0, DEL, C1) and the Unicode line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``, ...).

    A client chooses paths, model names and header values; in a line-based log
    an unescaped newline in one of them would start a forged log line.
    """
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class TextFormatter(logging.Formatter):
    """One line per record, whatever its fields hold: control characters escaped in every field.

    A traceback follows on lines of its own, each indented with ``  | `` so no
    line of it can pass for a record of its own.
    """

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = escape_control(self.formatMessage(record))
        extras = [
            f"{k}={escape_control(str(getattr(record, k)))}"
            for k in _EXTRA_FIELDS
            if getattr(record, k, None) is not None
        ]
        request_id = request_id_var.get()
        if request_id:
            extras.append(f"request_id={escape_control(request_id)}")
        if extras:
            line = f"{line} {' '.join(extras)}"
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "".join(f"\n  | {escape_control(t)}" for t in trace.splitlines())
        return line


#: ``extra`` key of an access-log record (one line per request or RPC): written in batches.
ACCESS = "access_log"
#: How late an access-log line may be written.
ACCESS_LOG_FLUSH_S = 0.1


class BatchedAccessHandler(logging.StreamHandler):
    """A stream handler that writes access-log lines in batches, every other line at once.

    One ``write`` per request line cost the event loop ~10 % of its CPU under
    a flood of shed requests (py-spy, docs/reliability.md): stderr is
    unbuffered. Access lines (records with ``extra={ACCESS: True}``) are
    formatted at once (the request id is read then) and kept; a background
    thread writes them at most ``flush_s`` later, or the caller does once
    ``max_bytes`` are kept. Any other line writes what is kept and then itself,
    so the order of lines is the order of records, and warnings are never
    late. ``flush`` (``logging.shutdown``, at exit) writes what is kept.
    """

    def __init__(
        self, stream: TextIO, flush_s: float = ACCESS_LOG_FLUSH_S, max_bytes: int = 64 * 1024
    ) -> None:
        super().__init__(stream)
        self.flush_s = flush_s
        self.max_bytes = max_bytes
        self._kept: list[str] = []
        self._kept_bytes = 0
        self._due = threading.Event()
        self._writer: threading.Thread | None = None

    def emit(self, record: logging.LogRecord) -> None:  # called with self.lock held
        try:
            line = self.format(record) + self.terminator
            if getattr(record, ACCESS, False):
                self._kept.append(line)
                self._kept_bytes += len(line)
                if self._kept_bytes >= self.max_bytes:
                    self._write_kept()
                elif not self._due.is_set():
                    self._start_writer()
                    self._due.set()
                return
            self._kept.append(line)
            self._write_kept()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_kept()
        finally:
            self.release()

    def _write_kept(self) -> None:
        """Write every kept line in one call (self.lock held)."""
        if self._kept:
            text = "".join(self._kept)
            self._kept.clear()
            self._kept_bytes = 0
            self.stream.write(text)
        if self.stream and hasattr(self.stream, "flush"):
            self.stream.flush()

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_when_due, name="fs-log", daemon=True)
            self._writer.start()

    def _write_when_due(self) -> None:
        while True:
            self._due.wait()
            time.sleep(self.flush_s)
            self.acquire()
            try:
                self._due.clear()
                self._write_kept()
            except Exception:  # a closed or broken stream: nothing to report it to
                self._kept.clear()
                self._kept_bytes = 0
            finally:
                self.release()


def configure_logging(level: str, fmt: str) -> None:
    handler = BatchedAccessHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).disabled = True
