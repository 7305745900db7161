"""One worker process among several: shared readiness and repository changes.

The supervisor (``service/supervisor.py``) starts N full server processes that
share the listening sockets; a request lands on any one of them. Three things
must still look like one server:

* **Readiness** — a board of N bytes in a shared file (``ready``), one per
  worker slot: the worker sets its byte once its models are loaded and it
  accepts work, clears it when it drains; the supervisor clears the byte of a
  process that died. ``/health/ready`` (and the gRPC and V2 health checks)
  is true only when the local process is ready *and* every byte is set. N
  more bytes say which processes are computing a batch (adaptive intra-op
  threads, ``service/runtimes/occupancy.py``), and N more which processes have
  reached the close step of their shutdown (the listener is shared: it may
  refuse new connections only when none of them is still draining).
* **Repository load/unload** — the process that receives the call does it
  locally, then sends it to every other worker over its control socket
  (``worker-<i>.sock``, one JSON line each way) and appends it to
  ``models.log``; a worker started later (a replaced crash) replays that log
  after its own start-up load, so it serves the same models as the others.
* **Metrics** — prometheus_client's multiprocess files (``service/metrics.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import mmap
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from fusionserve.service.runtimes.occupancy import OCCUPANCY

log = logging.getLogger("fusionserve.peers")

#: The environment variable that carries a worker's place (JSON), set by the supervisor.
WORKER_ENV = "FUSIONSERVE_WORKER"

Handler = Callable[[str, str], Awaitable[None]]


@dataclass(frozen=True)
class WorkerPlace:
    """What the supervisor tells one worker process."""

    index: int
    count: int
    control_dir: Path
    http_fd: int
    grpc_port: int | None

    def to_env(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "count": self.count,
                "control_dir": str(self.control_dir),
                "http_fd": self.http_fd,
                "grpc_port": self.grpc_port,
            }
        )

    @classmethod
    def from_env(cls) -> WorkerPlace | None:
        raw = os.environ.get(WORKER_ENV)
        if not raw:
            return None
        data = json.loads(raw)
        return cls(
            index=int(data["index"]),
            count=int(data["count"]),
            control_dir=Path(data["control_dir"]),
            http_fd=int(data["http_fd"]),
            grpc_port=data["grpc_port"],
        )


#: Regions of the board, each ``count`` bytes long, one byte per worker slot.
_READY, _BUSY, _CLOSING = 0, 1, 2
_REGIONS = 3


def create_board(control_dir: Path, count: int) -> Path:
    """The supervisor's side: an all-zero board of ``count`` readiness bytes, ``count``
    busy bytes (``service/runtimes/occupancy.py``) and ``count`` closing bytes."""
    path = control_dir / "ready"
    path.write_bytes(bytes(_REGIONS * count))
    return path


def clear_slot(control_dir: Path, index: int, count: int) -> None:
    """The supervisor's side: worker ``index`` died: not ready, not busy, and holding
    no drain open (its replacement clears the closing byte when it starts)."""
    with (control_dir / "ready").open("r+b") as f:
        for region, value in ((_READY, b"\0"), (_BUSY, b"\0"), (_CLOSING, b"\1")):
            f.seek(region * count + index)
            f.write(value)


class Peers:
    """This worker's view of the others."""

    def __init__(self, place: WorkerPlace) -> None:
        self.place = place
        self._file = (place.control_dir / "ready").open("r+b")
        self._board = mmap.mmap(self._file.fileno(), _REGIONS * place.count)
        self._server: asyncio.AbstractServer | None = None
        self._board[_CLOSING * place.count + place.index] = 0
        OCCUPANCY.share(
            self._board, _BUSY * place.count, place.index, place.count, place.control_dir / "calibrate.lock"
        )

    # -- readiness ---------------------------------------------------------
    def set_ready(self, ready: bool) -> None:
        self._board[self.place.index] = 1 if ready else 0

    def all_ready(self) -> bool:
        return self._board[: self.place.count].count(0) == 0

    # -- shutdown ----------------------------------------------------------
    def set_closing(self) -> None:
        """This worker's drain is over: it no longer needs the listener to take new connections."""
        self._board[_CLOSING * self.place.count + self.place.index] = 1

    def all_closing(self) -> bool:
        """Every worker's drain is over (or the worker is gone): the listener may refuse."""
        start = _CLOSING * self.place.count
        return self._board[start : start + self.place.count].count(0) == 0

    # -- repository changes ------------------------------------------------
    def _socket(self, index: int) -> Path:
        return self.place.control_dir / f"worker-{index}.sock"

    async def serve_control(self, handler: Handler) -> None:
        """Answer other workers' load/unload calls with ``handler(op, model)``."""

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                message = json.loads(await reader.readline())
                await handler(str(message["op"]), str(message["model"]))
                reply: dict[str, object] = {"ok": True}
            except Exception as exc:  # reported to the caller
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()

        path = self._socket(self.place.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server = await asyncio.start_unix_server(answer, path=str(path))

    async def broadcast(self, op: str, model: str) -> None:
        """Record ``op`` on ``model`` and make every other live worker do it too.

        A worker that cannot be reached (starting, or being replaced) replays
        the record when it starts; a worker that fails the call is logged.
        """
        self._record(op, model)
        others = [i for i in range(self.place.count) if i != self.place.index]
        results = await asyncio.gather(*(self._call(i, op, model) for i in others), return_exceptions=True)
        for index, result in zip(others, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("worker %d did not take %s %s: %s", index, op, model, result)

    async def _call(self, index: int, op: str, model: str) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self._socket(index)))
        except (FileNotFoundError, ConnectionRefusedError):
            return  # not up: it replays models.log when it starts
        try:
            writer.write(json.dumps({"op": op, "model": model}).encode() + b"\n")
            await writer.drain()
            reply = json.loads(await reader.readline())
        finally:
            writer.close()
        if not reply.get("ok"):
            raise RuntimeError(reply.get("error", "failed"))

    def _record(self, op: str, model: str) -> None:
        with (self.place.control_dir / "models.log").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(json.dumps({"op": op, "model": model}) + "\n")

    def recorded(self) -> list[tuple[str, str]]:
        """Every load/unload made since the server started, oldest first."""
        path = self.place.control_dir / "models.log"
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return []
        changes = []
        for line in lines:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                item = json.loads(line)
                changes.append((str(item["op"]), str(item["model"])))
        return changes

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            self._socket(self.place.index).unlink()
        with contextlib.suppress(ValueError, BufferError):
            self._board[self.place.index] = 0
        OCCUPANCY.unshare()
        with contextlib.suppress(BufferError):
            self._board.close()
        self._file.close()
