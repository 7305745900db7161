"""``--workers N``: N full server processes behind the same HTTP and gRPC ports.

Why replicas (each process with its own decoders, batchers and instances)
rather than front processes feeding one model owner: on CPU hosts the door
(HTTP/gRPC parsing, decoding, answering: about 1 ms of single-threaded Python
per request) is the bottleneck, and replicas scale it with no new hop; the
measurements are in docs/performance.md.

The supervisor is small and synchronous, and imports no model code:

* it opens the HTTP listening socket once and every worker inherits it (one
  accept queue: a worker that exits leaves no queued connection behind), and
  reserves the gRPC port, which every worker binds with ``SO_REUSEPORT``
  (gRPC's default on Linux);
* it creates the control directory (readiness board, control sockets,
  prometheus_client multiprocess files) and removes it at the end;
* SIGTERM/SIGINT: forwarded once to every worker, each of which drains on its
  own (``service/app.py``); the supervisor exits when all have exited;
* a worker that exits unasked is replaced (with a growing delay if it keeps
  dying), its metrics files marked dead and its readiness byte cleared.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from pydantic import SecretStr

from fusionserve.service.config import Settings
from fusionserve.service.peers import WORKER_ENV, WorkerPlace, clear_slot, create_board

log = logging.getLogger("fusionserve.supervisor")

#: The server's settings (JSON, secrets in clear), as the supervisor resolved them.
SETTINGS_ENV = "FUSIONSERVE_WORKER_SETTINGS"

#: A worker that dies sooner than this after its start counts as a crash loop.
_QUICK_DEATH_S = 10.0
_MAX_RESTART_DELAY_S = 30.0
#: A worker that exits this many times in a row without ever becoming ready
#: (a port taken, a broken install) stops the server, as one process would.
_MAX_FAILED_STARTS = 3
_PR_SET_PDEATHSIG = 1


def settings_to_env(settings: Settings) -> str:
    """Every setting as JSON, secrets included (``SecretStr`` would dump as stars)."""
    values = {
        name: value.get_secret_value() if isinstance(value, SecretStr) else value for name, value in settings
    }
    return json.dumps(values, default=str)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """A worker is killed when the supervisor dies without reaping it (killed itself).

    SIGKILL, not SIGTERM: the supervisor forwards SIGTERM itself for a drain;
    this fires only when it is gone, and a worker that is already draining (or
    stuck) must not outlive it holding the ports."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _listen_http(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.http_port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _reserve_grpc_port(settings: Settings) -> tuple[socket.socket, int]:
    """A bound, not listening, SO_REUSEPORT socket: holds the port (0 = any) for the workers."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.grpc_port or 0))
    return sock, int(sock.getsockname()[1])


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float = 0.0
    quick_deaths: int = 0
    was_ready: bool = False
    failed_starts: int = 0


class Supervisor:
    def __init__(self, settings: Settings, repository: Path, count: int) -> None:
        self.settings = settings
        self.repository = repository
        self.count = count
        self._stopping = False
        self._exit_code = 0
        self.control_dir = Path(tempfile.mkdtemp(prefix="fusionserve-"))
        self.metrics_dir = self.control_dir / "metrics"
        self.metrics_dir.mkdir()
        self._workers = [_Worker(i) for i in range(count)]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self._stopping:
            log.info("shutdown requested: draining %d worker process(es)", self.count)
        self._stopping = True
        for w in self._workers:
            if w.proc is not None and w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)

    def _spawn(self, w: _Worker, http_fd: int, grpc_port: int | None) -> None:
        place = WorkerPlace(w.index, self.count, self.control_dir, http_fd, grpc_port)
        env = {
            **os.environ,
            WORKER_ENV: place.to_env(),
            SETTINGS_ENV: settings_to_env(self.settings),
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        }
        cmd = [sys.executable, "-m", "fusionserve.service.supervisor", str(self.repository)]
        w.proc = subprocess.Popen(cmd, env=env, pass_fds=(http_fd,), preexec_fn=_die_with_parent)
        w.started = time.monotonic()
        log.info("worker %d started (pid %d)", w.index, w.proc.pid)

    def _reap(self, w: _Worker) -> None:
        """Worker ``w`` exited: forget its live metrics and readiness; plan its replacement."""
        assert w.proc is not None
        from prometheus_client import multiprocess

        pid, code = w.proc.pid, w.proc.returncode
        w.proc = None
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, str(self.metrics_dir))
        clear_slot(self.control_dir, w.index, self.count)
        if self._stopping:
            log.info("worker %d (pid %d) exited (%s)", w.index, pid, code)
            return
        lived = time.monotonic() - w.started
        w.failed_starts = 0 if w.was_ready else w.failed_starts + 1
        w.was_ready = False
        if w.failed_starts >= _MAX_FAILED_STARTS:
            log.error(
                "worker %d exited %d times before it was ready; stopping the server", w.index, w.failed_starts
            )
            self._exit_code = 1
            self._on_signal(signal.SIGTERM, None)
            return
        w.quick_deaths = w.quick_deaths + 1 if lived < _QUICK_DEATH_S else 0
        delay = min(_MAX_RESTART_DELAY_S, 0.5 * (2**w.quick_deaths - 1))
        w.restart_at = time.monotonic() + delay
        log.error("worker %d (pid %d) exited unasked (%s); replacing it in %.1f s", w.index, pid, code, delay)

    def run(self) -> int:
        http = _listen_http(self.settings)
        grpc_hold: socket.socket | None = None
        grpc_port: int | None = None
        if self.settings.grpc_port is not None:
            grpc_hold, grpc_port = _reserve_grpc_port(self.settings)
        create_board(self.control_dir, self.count)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        log.info(
            "supervising %d worker processes: http=%s:%s grpc=%s",
            self.count,
            self.settings.host,
            http.getsockname()[1],
            grpc_port,
        )
        try:
            for w in self._workers:
                self._spawn(w, http.fileno(), grpc_port)
            board = self.control_dir / "ready"
            while True:
                ready = board.read_bytes()
                for w in self._workers:
                    if w.proc is not None and ready[w.index]:
                        w.was_ready = True
                    if w.proc is not None and w.proc.poll() is not None:
                        self._reap(w)
                    if w.proc is None and not self._stopping and time.monotonic() >= w.restart_at:
                        self._spawn(w, http.fileno(), grpc_port)
                if self._stopping and all(w.proc is None for w in self._workers):
                    break
                time.sleep(0.1)
        finally:
            for w in self._workers:  # only on an error of the supervisor itself
                if w.proc is not None and w.proc.poll() is None:
                    w.proc.kill()
            http.close()
            if grpc_hold is not None:
                grpc_hold.close()
            shutil.rmtree(self.control_dir, ignore_errors=True)
        log.info("stopped")
        return self._exit_code


def worker_main(repository: Path) -> None:
    """One worker process: ``python -m fusionserve.service.supervisor REPO``, started by ``Supervisor``."""
    from fusionserve.service.app import serve
    from fusionserve.service.logs import configure_logging

    place = WorkerPlace.from_env()
    if place is None:
        raise SystemExit("fusionserve.service.supervisor is started by `fusionserve serve --workers N`")
    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    configure_logging(settings.log_level, settings.log_format)
    serve(settings, repository, place)


if __name__ == "__main__":
    worker_main(Path(sys.argv[1]))
